// lookalike: index folders or CSV catalogues of images with a pretrained network and search
// them by example. Usage: docs/cli.md, or `lookalike --help`.
#include <fmt/format.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <iostream>
#include <memory>
#include <regex>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "engine/engine.h"

namespace {

// Edit distance (Levenshtein), for "did you mean".
std::size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diagonal = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] != b[j - 1] ? 1 : 0)});
      diagonal = up;
    }
  }
  return row[b.size()];
}

// The names of `app`'s commands, in the order they were added.
std::vector<std::string> command_names(const CLI::App& app) {
  std::vector<std::string> names;
  for (const CLI::App* sub : app.get_subcommands([](const CLI::App*) { return true; }))
    names.push_back(sub->get_name());
  return names;
}

// "lookalike: 'serch' is not a command; did you mean 'search'? Commands: index, search, ..."
std::string unknown_command_message(const CLI::App& app, const std::string& word) {
  const auto names = command_names(app);
  std::string closest;
  std::size_t best = 3;  // suggest only within two edits
  for (const auto& name : names) {
    if (const std::size_t d = edit_distance(word, name); d < best) {
      best = d;
      closest = name;
    }
  }
  return fmt::format(
      "lookalike: error: '{}' is not a command{}\nCommands: {} (lookalike --help "
      "says more)\n",
      word, closest.empty() ? "" : "; did you mean '" + closest + "'?", fmt::join(names, ", "));
}

// The commands a parse reached, outermost first (`models calibrate`: models, then calibrate).
std::vector<const CLI::App*> parsed_chain(const CLI::App& app) {
  std::vector<const CLI::App*> chain{&app};
  for (;;) {
    const auto subs = chain.back()->get_subcommands();
    if (subs.empty()) return chain;
    chain.push_back(subs.front());
  }
}

// "an integer", "a number", ... for an option's CLI11 type name ("INT", "FLOAT:FLOAT in [0 -
// 1]"); empty when unknown.
std::string kind_of_value(const CLI::Option& opt) {
  const std::string type = opt.get_type_name().substr(0, opt.get_type_name().find(':'));
  if (type == "INT") return "an integer";
  if (type == "UINT") return "a whole number (0 or more)";
  if (type == "FLOAT") return "a number";
  return {};
}

// CLI11's own usage errors in the project's words: "lookalike: error: ..." (as every error),
// the options and positionals as --help and docs/cli.md name them, what a value should have
// been ("--id: 'abc' is not an integer" for CLI11's "Could not convert: --id = abc"), and where
// to read more.
std::string usage_error_message(const CLI::App& app, const CLI::ParseError& e) {
  const auto chain = parsed_chain(app);
  // What the named option's value should be ("an integer"), innermost command first.
  auto kind_for = [&](const std::string& name) -> std::string {
    for (auto it = chain.rbegin(); it != chain.rend(); ++it) {
      if (const CLI::Option* opt = (*it)->get_option_no_throw(name)) return kind_of_value(*opt);
    }
    return {};
  };
  std::string command = "lookalike";
  for (std::size_t i = 1; i < chain.size(); ++i) command += " " + chain[i]->get_name();
  std::string message = e.what();
  std::smatch m;
  static const std::regex conversion(R"(^Could not convert: (\S+) = ([\s\S]*)$)");
  // CLI::Range's message, also for a value that is no number at all ("--threads abc").
  static const std::regex range(R"(^(\S+): Value ([\s\S]*) not in range (\S+) to (\S+)$)");
  if (std::regex_match(message, m, conversion)) {
    const std::string kind = kind_for(m[1].str());
    message = fmt::format("{}: '{}' is not {}", m[1].str(), m[2].str(),
                          kind.empty() ? "a valid value" : kind);
  } else if (std::regex_match(message, m, range)) {
    const std::string kind = kind_for(m[1].str());
    double value = 0;
    const std::string text = m[2].str();
    const auto [at, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    const bool numeric = ec == std::errc() && at == text.data() + text.size();
    message = numeric || kind.empty() ? fmt::format("{}: {} is out of range ({} to {})", m[1].str(),
                                                    text, m[3].str(), m[4].str())
                                      : fmt::format("{}: '{}' is not {}", m[1].str(), text, kind);
  } else if (message == "A subcommand is required") {
    message = fmt::format("give a command: {}", fmt::join(command_names(*chain.back()), ", "));
  } else if (!message.empty() && message[0] >= 'A' && message[0] <= 'Z' &&
             (message.size() < 2 || (message[1] >= 'a' && message[1] <= 'z'))) {
    message[0] = static_cast<char>(message[0] - 'A' + 'a');  // "The following arguments ..."
  }
  return fmt::format("lookalike: error: {}\nRun '{} --help' for more information.\n", message,
                     command);
}

// --help shows every option's default, as CLI11 captures it from the variable (for options
// whose text does not already say it), in the house style "(default 10)" at the end of the
// description rather than CLI11's "INT=10"; empty defaults (a string, a vector) show nothing.
class HelpFormatter : public CLI::Formatter {
 public:
  std::string make_option_opts(const CLI::Option* opt) const override {
    // CLI::Formatter::make_option_opts without "=DEFAULT".
    std::string out;
    if (!opt->get_option_text().empty()) return " " + opt->get_option_text();
    if (opt->get_type_size() != 0) {
      if (!opt->get_type_name().empty()) out += " " + get_label(opt->get_type_name());
      if (opt->get_expected_max() == CLI::detail::expected_max_vector_size)
        out += " ...";
      else if (opt->get_expected_min() > 1)
        out += " x " + std::to_string(opt->get_expected());
      if (opt->get_required()) out += " " + get_label("REQUIRED");
    }
    if (!opt->get_envname().empty())
      out += " (" + get_label("Env") + ":" + opt->get_envname() + ")";
    return out;
  }
  std::string make_option_desc(const CLI::Option* opt) const override {
    std::string desc = opt->get_description();
    const std::string value = opt->get_default_str();
    if (opt->get_type_size() == 0 || opt->get_required() || value.empty() || value == "[]" ||
        desc.find("default") != std::string::npos || desc.find("Default") != std::string::npos)
      return desc;
    return desc + " (default " + value + ")";
  }
};

}  // namespace

namespace {

using namespace lookalike::cli;

void add_search_params(CLI::App& cmd, SearchParamArgs& p, const std::string& scope) {
  cmd.add_option("--nprobe", p.nprobe, scope + "IVF lists visited per query")
      ->check(CLI::Range(1, 1 << 20));
  cmd.add_option("--ef-search", p.ef_search, scope + "HNSW candidate list size (efSearch)")
      ->check(CLI::Range(1, 1 << 20));
  cmd.add_option("--rerank", p.rerank,
                 scope + "candidates re-scored exactly from the stored vectors (PQ, SQ indexes)")
      ->check(CLI::Range(1, 10000));
}

std::filesystem::path default_collection() {
  const char* env = std::getenv("LOOKALIKE_COLLECTION");
  return env != nullptr && *env != '\0' ? std::filesystem::path(env) : "lookalike-data";
}

// $LOOKALIKE_PRECISION when --precision is not given; false (after saying why, naming the
// variable: the user did not type the bad value on this command line) for an unknown value.
bool precision_from_env(GlobalOptions& g) {
  const char* env = std::getenv("LOOKALIKE_PRECISION");
  if (env == nullptr || *env == '\0') return true;
  const std::string value = env;
  if (value == "auto" || value == "fp32" || value == "bf16" || value == "int8") {
    g.precision = value;
    return true;
  }
  std::cerr << "lookalike: error: LOOKALIKE_PRECISION='" << value
            << "' is not a precision (auto, fp32, bf16 or int8); fix or unset it, or pass "
               "--precision\n";
  return false;
}

}  // namespace

static int run(int argc, char** argv) {
  // Messages go to stderr: stdout carries results (and JSON) only.
  spdlog::set_default_logger(spdlog::stderr_color_mt("lookalike"));
  spdlog::set_pattern("lookalike: %^%l%$: %v");
  CLI::App app{
      "lookalike: find similar images with a pretrained network, exact or approximate "
      "vector search, from one binary"};
  // Before any option or command: both are inherited by the commands added below.
  app.option_defaults()->always_capture_default();
  app.formatter(std::make_shared<HelpFormatter>());
  app.require_subcommand(1);
  app.fallthrough();
  app.set_version_flag("--version",
                       "lookalike 0.1.0 (" + lookalike::engine::allocator_name() + ")");

  GlobalOptions g;
  g.collection = default_collection();
  app.add_option("-c,--collection", g.collection,
                 "Collection folder (default: $LOOKALIKE_COLLECTION, else ./lookalike-data)");
  app.add_option("-m,--model", g.model,
                 "Model name (looked up in $LOOKALIKE_MODELS, ~/.local/share/lookalike/models) or "
                 "path to a .pt archive; default: the collection's model, else mobilenet_v2");
  app.add_option("--threads", g.threads, "Inference threads (default 0 = all cores)")
      ->check(CLI::Range(0, 1024));
  // $LOOKALIKE_PRECISION is read after parsing (precision_from_env), not by CLI11's envname,
  // whose error for a bad value names only --precision.
  app.add_option("--precision", g.precision,
                 "Inference precision: auto (fastest that this CPU runs and whose measured "
                 "fidelity meets the bar, else fp32), fp32, bf16, int8 (default: "
                 "$LOOKALIKE_PRECISION, else auto)")
      ->check(CLI::IsMember({"auto", "fp32", "bf16", "int8"}));
  app.add_option("--decode-threads", g.decode_threads, "Image decoding threads")
      ->check(CLI::Range(1, 64));
  app.add_option("--batch-size", g.batch_size, "Images per forward pass")
      ->check(CLI::Range(1, 1024));
  app.add_option(
         "--passes", g.passes,
         "Forward passes side by side when embedding many images, each on its share of "
         "--threads (default 0 = auto: 2 given two threads and two batches, else 1); searches "
         "use all threads")
      ->check(CLI::Range(0, 16));
  app.add_option("--max-pixels", g.max_pixels,
                 "Refuse images with more pixels (decompression-bomb guard; default 89478485, "
                 "PIL's limit)")
      ->check(CLI::Validator(
          [](std::string& value) -> std::string {
            std::int64_t n = 0;
            const char* end = value.data() + value.size();
            const auto [at, ec] = std::from_chars(value.data(), end, n);
            if (ec == std::errc() && at == end && n >= 1) return {};
            return "must be a whole number of pixels, at least 1 (default 89478485), got " + value;
          },
          "PIXELS>=1"));
  app.add_flag("--json", g.json, "Machine-readable JSON output on stdout");
  app.add_flag("-q,--quiet", g.quiet, "No progress output");

  IndexArgs ia;
  auto* index = app.add_subcommand("index", "Add or update folders, image files or CSV manifests");
  // Positionals are named as --help and docs/cli.md spell them: CLI11's "PATH is required".
  index->add_option("PATH", ia.inputs, "Folders (recursive), image files or CSV manifests")
      ->required();
  index->add_flag("--prune", ia.prune,
                  "Remove entries whose file no longer exists, under the given paths only (never "
                  "under a path that failed)");
  index->add_option("--metric", ia.metric, "New collections: cosine or l2")
      ->check(CLI::IsMember({"cosine", "l2"}));
  index->add_option("--index-spec,--index-factory", ia.factory,
                    "New collections: FAISS factory string (Flat, IVF1024,Flat, IVF1024,PQ32, "
                    "IVF1024,SQ8, HNSW32, SQ8, ...) or auto (picked by size and --memory-budget)");
  index
      ->add_option("--memory-budget", ia.memory_budget,
                   "With --index-spec auto: index memory to stay within (e.g. 2GB, 512MiB; "
                   "default: no budget)")
      ->transform(CLI::AsSizeValue(false));
  add_search_params(*index, ia.params, "Collection default: ");
  index->add_option("--file-column", ia.file_column, "CSV manifests: column with the image path");
  index->add_flag("--hidden", ia.hidden, "Include hidden files and folders");

  SearchArgs sa;
  auto* search = app.add_subcommand("search", "Find the images most similar to a query image");
  search->add_option("IMAGE", sa.images, "Query image files");
  // expected(1): `--id 1 photo.jpg` is id 1 and the query photo.jpg, not two ids.
  search->add_option("--id", sa.ids, "Query with an indexed image's id (repeatable)")
      ->expected(1)
      ->allow_extra_args(false)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  search->add_option("-k,--top-k", sa.k, "Results per query (1-10000; default 10)");
  search->add_option("--min-score", sa.min_score,
                     "Only results with cosine similarity >= this (l2: distance <= this; default: "
                     "no limit)");
  search
      ->add_option("--where", sa.where,
                   "Only images whose metadata matches: field=value, \"field IN [a, b]\", "
                   "\"price<50\" (<, <=, >, >=); repeatable, all must hold")
      ->expected(1)
      ->allow_extra_args(false)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  search->add_flag("--include-self", sa.include_self,
                   "With --id: keep the query image itself in the results");
  add_search_params(*search, sa.params, "This query (default: the collection's): ");

  ReindexArgs rx;
  auto* reindex = app.add_subcommand(
      "reindex", "Rebuild the index with another spec from the stored vectors (no re-embedding)");
  reindex->add_option("--index-spec", rx.spec, "FAISS factory string, or auto")->required();
  reindex
      ->add_option("--memory-budget", rx.memory_budget,
                   "With auto: index memory to stay within (e.g. 2GB, 512MiB; default: no "
                   "budget)")
      ->transform(CLI::AsSizeValue(false));
  add_search_params(*reindex, rx.params, "Collection default: ");

  EmbedArgs ea;
  auto* embed = app.add_subcommand("embed", "Print the embeddings of image files, in input order");
  embed->add_option("IMAGE", ea.images, "Image files")->required();
  embed->add_option("--npy", ea.npy, "Write an n x dim float32 NumPy .npy file instead");

  auto* info = app.add_subcommand("info", "Describe the collection");

  RemoveArgs ra;
  auto* remove =
      app.add_subcommand("remove", "Remove images (a file, or every file under a folder)");
  remove->add_option("PATH", ra.paths, "Indexed files or folders");
  remove->add_option("--id", ra.ids, "Image ids (repeatable)")
      ->expected(1)
      ->allow_extra_args(false)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);

  auto* models = app.add_subcommand("models", "List installed models and their cards");
  CalibrateArgs ca;
  auto* calibrate = models->add_subcommand(
      "calibrate",
      "Measure each reduced-precision archive of --model against FP32 on your photos (cosine, "
      "Recall@1, mAP, images/s) and record it in the model card for --precision auto");
  calibrate
      ->add_option("PHOTOS", ca.images,
                   "Folder of photos (a folder per class adds Recall@1 and mAP) or CSV")
      ->required();
  calibrate
      ->add_option("--precisions", ca.precisions,
                   "Precisions to measure (default: every one the card lists)")
      ->delimiter(',')
      ->check(CLI::IsMember({"bf16", "int8"}));
  calibrate
      ->add_option("--limit", ca.limit, "At most this many photos, spread evenly (default 0 = all)")
      ->check(CLI::NonNegativeNumber);
  calibrate->add_flag("--dry-run", ca.dry_run, "Measure and print, leave the card as it is");

  ServeArgs sv;
  auto* serve = app.add_subcommand(
      "serve", "HTTP API and web page over the collection (docs/api.md); stops on SIGTERM/SIGINT");
  serve->add_option("--host", sv.host, "Address to bind (default 127.0.0.1: this machine only)");
  serve->add_option("--port", sv.port, "TCP port (default 8080; 0 = any free port)")
      ->check(CLI::Range(0, 65535));
  serve->add_option("--workers", sv.workers, "HTTP worker threads (default 32)")
      ->check(CLI::Range(1, 1024));
  serve
      ->add_option("--worker-nice", sv.worker_nice,
                   "Lower the HTTP workers' CPU priority by this much, so that forward passes "
                   "keep their cores (default 0 = off; docs/api.md)")
      ->check(CLI::Range(0, 19));
  serve->add_option("--max-upload-mb", sv.max_upload_mb, "Request body limit in MB (default 20)")
      ->check(CLI::Range(0.001, 4096.0));
  serve->add_option("--api-key", sv.api_key,
                    "Key that writes need (Authorization: Bearer KEY); default $LOOKALIKE_API_KEY");
  serve->add_flag("--private", sv.private_reads, "Reads need the API key too");
  serve
      ->add_option("--cors-origin", sv.cors_origins,
                   "Allow browser requests from this origin (repeatable; * for any)")
      ->expected(1)
      ->allow_extra_args(false)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  // The variable lets a container image name its hosts (the Dockerfile: it binds 0.0.0.0, where
  // no name is checked by default, and is published on 127.0.0.1); the command line wins.
  serve
      ->add_option("--allowed-host", sv.allowed_hosts,
                   "A name the Host header may give (repeatable, or comma-separated; * for any). "
                   "Default: $LOOKALIKE_ALLOWED_HOSTS (comma-separated), else on a loopback "
                   "--host 127.0.0.1, localhost and ::1 only, else any")
      ->envname("LOOKALIKE_ALLOWED_HOSTS")
      ->delimiter(',')
      ->transform([](const std::string& name) {
        const auto first = name.find_first_not_of(" \t");
        if (first == std::string::npos) return std::string();
        return name.substr(first, name.find_last_not_of(" \t") - first + 1);
      })
      ->expected(1)
      ->allow_extra_args(false)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  serve
      ->add_option("--read-timeout-s", sv.read_timeout_s, "Seconds one read from a client may wait")
      ->check(CLI::Range(1, 3600));
  serve
      ->add_option("--write-timeout-s", sv.write_timeout_s,
                   "Seconds one write to a client may wait")
      ->check(CLI::Range(1, 3600));
  serve
      ->add_option("--request-timeout-s", sv.request_timeout_s,
                   "Seconds a client may take to send a whole request (headers and body)")
      ->check(CLI::Range(1, 86400));
  serve
      ->add_option("--shutdown-timeout-s", sv.shutdown_timeout_s,
                   "Seconds requests in flight may take to finish after SIGTERM")
      ->check(CLI::Range(0, 3600));
  serve
      ->add_option("--max-aspect-ratio", sv.max_aspect_ratio,
                   "Refuse uploads and query images longer than this many times their width "
                   "(or the reverse), 422 (default 100; 0 = no limit)")
      ->check(CLI::Range(0.0, 1e9));
  serve
      ->add_option("--batch-wait-ms", sv.batch_wait_ms,
                   "How long a lone embed request waits for others to batch with (default 2)")
      ->check(CLI::Range(0.0, 1000.0));
  serve->add_option("--web-dir", sv.web_dir,
                    "Development: serve the web page from this folder instead of the binary");

  Subcommand eval = add_eval_command(app, g);
  Subcommand bench_index = add_bench_index_command(app, g);
  Subcommand duplicates = add_duplicates_command(app, g);
  Subcommand map = add_map_command(app, g);
  Subcommand train = add_train_command(app, g);
  Subcommand reembed = add_reembed_command(app, g);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // A mistyped command ("serch") reaches CLI11 as an unmatched argument, and its message,
    // "A subcommand is required", does not name it.
    if (app.get_subcommands().empty() && !app.remaining().empty()) {
      std::cerr << unknown_command_message(app, app.remaining().front());
      return kUsage;
    }
    if (e.get_exit_code() == 0) {  // --help, --version
      app.exit(e);
      return kOk;
    }
    std::cerr << usage_error_message(app, e);
    return kUsage;
  }

  if (app.count("--precision") == 0 && !precision_from_env(g)) return kUsage;

  // Commands whose decode threads share the cores with the model's OpenMP threads: those
  // threads should sleep, not spin, between parallel regions (engine.h; may re-execute).
  // `serve`, whose passes are small, spins briefly instead.
  // `index` measured faster with it than libgomp's default in 6 of 7 interleaved pairs
  // (docs/api.md).
  if (*index || *reindex || *eval.app || *train.app || *reembed.app)
    lookalike::engine::use_passive_omp_wait(argv);
  if (*serve) lookalike::engine::use_short_omp_spin(argv);  // small batches: engine.h

  try {
    if (*index) {
      ia.metric_given = index->count("--metric") > 0;
      ia.factory_given = index->count("--index-factory") > 0;
      return run_index(g, ia);
    }
    if (*search) {
      sa.min_score_given = search->count("--min-score") > 0;
      if (sa.images.empty() && sa.ids.empty()) {
        std::cerr << "lookalike: error: give a query IMAGE or --id ID\n";
        return kUsage;
      }
      return run_search(g, sa);
    }
    if (*reindex) return run_reindex(g, rx);
    if (*embed) return run_embed(g, ea);
    if (*info) return run_info(g);
    if (*remove) {
      if (ra.paths.empty() && ra.ids.empty()) {
        std::cerr << "lookalike: error: give a PATH or --id ID\n";
        return kUsage;
      }
      return run_remove(g, ra);
    }
    if (*calibrate) return run_calibrate(g, ca);
    if (*models) return run_models(g);
    if (*serve) return run_serve(g, sv);
    if (*eval.app) return eval.run();
    if (*bench_index.app) return bench_index.run();
    if (*duplicates.app) return duplicates.run();
    if (*map.app) return map.run();
    if (*train.app) return train.run();
    if (*reembed.app) return reembed.run();
  } catch (const lookalike::engine::EngineError& e) {
    spdlog::error("{}", e.what());
    return e.kind() == lookalike::engine::EngineError::Kind::Invalid ? kUsage : kError;
  } catch (const std::bad_alloc&) {
    spdlog::error("out of memory");
    return kError;
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
    return kError;
  }
  return kUsage;
}

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {  // set-up failures outside the commands' own handling
    std::fprintf(stderr, "lookalike: error: %s\n", e.what());
    return kError;
  }
}
