// `lookalike bench-index`: see eval/bench_index.h for what is measured and how.
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>
#include <iostream>
#include <map>
#include <memory>

#include "cli/commands.h"
#include "eval/bench_index.h"
#include "eval/plot_svg.h"

namespace lookalike::cli {

namespace {

struct BenchIndexArgs {
  eval::BenchIndexOptions options;
  std::filesystem::path plot;
};

void add_options(CLI::App& cmd, BenchIndexArgs& a) {
  auto& o = a.options;
  cmd.add_option("--sizes", o.sizes,
                 "Vector counts, comma-separated (1..1000000; default 1000,10000,100000)")
      ->delimiter(',');
  cmd.add_option("--dim", o.dim, "Dimension of the generated vectors (default 512)");
  cmd.add_option("--queries", o.queries, "Queries per size (default 200)");
  cmd.add_option("-k,--k", o.k, "Neighbours per query; recall@k (default 10)");
  cmd.add_option(
      "--threads", o.threads,
      "OpenMP threads for batched search and ground truth, 0..1024 (default: all cores)");
  cmd.add_option("--seed", o.seed, "Seed of the generated data, queries and filter (default 42)");
  cmd.add_option("--filter-fraction", o.filter_fraction,
                 "Share of ids the filtered runs keep (default 0.01)");
  cmd.add_option("--index-spec", o.specs,
                 "FAISS factory string to measure (repeatable; default: Flat, IVF<nlist>,Flat, "
                 "HNSW32, IVF<nlist>,PQ<dim/8>)")
      ->expected(1)
      ->allow_extra_args(false)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  cmd.add_option("--max-hnsw", o.max_hnsw,
                 "Skip HNSW32 above this many vectors (default 200000: its build is slow)");
  cmd.add_option("--nlist", o.nlist,
                 "IVF lists of the default specs (default: the power of two nearest 4 sqrt(n))");
  cmd.add_option("--pq-m", o.pq_m, "IVF-PQ sub-quantizers (default dim/8)");
  cmd.add_option("--clusters", o.clusters,
                 "Mixture centres of the generated data (default sqrt(n))");
  cmd.add_option("--single-budget", o.single_budget_s,
                 "Seconds one single-query measurement may take (default 3)");
  cmd.add_option("--from-collection", o.from_collection,
                 "Benchmark this collection's stored vectors instead of generated ones");
  cmd.add_flag("--quick", o.quick, "A small parameter sweep");
  cmd.add_option("--plot", a.plot, "Write recall@k against single-query QPS as SVG to this file");
}

std::vector<eval::PlotSeries> plot_series(const eval::BenchResult& r) {
  std::vector<eval::PlotSeries> out;
  std::map<std::pair<std::string, std::int64_t>, std::size_t> at;
  for (const auto& row : r.rows) {
    if (!row.recall || !row.single_qps) continue;
    const auto key = std::make_pair(row.method, row.size);
    auto [it, fresh] = at.emplace(key, out.size());
    if (fresh) out.push_back({fmt::format("{} (n={})", row.method, row.size), {}});
    out[it->second].points.emplace_back(*row.single_qps, *row.recall);
  }
  return out;
}

int write_plot(const std::filesystem::path& plot, const eval::BenchResult& result) {
  if (plot.empty()) return kOk;
  try {
    eval::write_recall_qps_svg(
        plot, plot_series(result),
        fmt::format("recall@{} against single-query QPS, d = {}", result.k, result.dim));
    return kOk;
  } catch (const std::exception& e) {
    std::cerr << "lookalike: error: " << e.what() << "\n";
    return kError;
  }
}

// Before any work: option ranges (exit 2) and a --plot file that could not be written (exit 1).
int check_args(const BenchIndexArgs& a) {
  try {
    eval::validate(a.options);
  } catch (const eval::BenchOptionError& e) {
    std::cerr << "lookalike: error: " << e.what() << "\n";
    return kUsage;
  }
  try {
    if (!a.plot.empty()) eval::check_plot_path(a.plot);
  } catch (const std::exception& e) {
    std::cerr << "lookalike: error: " << e.what() << "\n";
    return kError;
  }
  return kOk;
}

int run(const GlobalOptions& g, BenchIndexArgs& a) {
  auto& o = a.options;
  if (o.threads == 0) o.threads = g.threads;
  if (!g.quiet)
    o.progress = [](const std::string& line) { fmt::print(stderr, "bench-index: {}\n", line); };
  if (const int code = check_args(a); code != kOk) return code;
  eval::BenchResult result;
  try {
    result = eval::run_bench_index(o);
  } catch (const eval::BenchOptionError& e) {
    std::cerr << "lookalike: error: " << e.what() << "\n";
    return kUsage;
  } catch (const std::exception& e) {
    std::cerr << "lookalike: error: " << e.what() << "\n";
    return kError;
  }
  // The results first: a plot that cannot be written must not cost the measurements.
  std::cout << (g.json ? eval::to_json(result) + "\n" : eval::format_table(result));
  std::cout.flush();
  return write_plot(a.plot, result);
}

}  // namespace

Subcommand add_bench_index_command(CLI::App& app, const GlobalOptions& g) {
  auto args = std::make_shared<BenchIndexArgs>();
  Subcommand s;
  s.app = app.add_subcommand(
      "bench-index",
      "Build time, memory, recall@10 and QPS of index types on generated or stored vectors");
  add_options(*s.app, *args);
  s.run = [&g, args] { return run(g, *args); };
  return s;
}

}  // namespace lookalike::cli
