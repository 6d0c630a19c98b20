// `lookalike map`: a 2-D map of the collection's embeddings as SVG/PNG and/or JSON Lines; see
// viz/map.h for the method and docs/map.md for the output.
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/output.h"
#include "store/catalog.h"
#include "store/collection.h"
#include "viz/map.h"

namespace lookalike::cli {

namespace {

using nlohmann::json;

struct MapArgs {
  std::filesystem::path out;
  std::string method = "pca";
  std::string color_by;
  std::vector<std::string> where;
  std::int64_t sample = viz::kDefaultSample;
  std::uint64_t seed = 0;
  double perplexity = 30;
  int iterations = 1000;
  viz::MapStyle style;
  bool json = false;
};

json summary_json(const viz::CollectionMap& m, const MapArgs& a, double seconds) {
  json groups = json::array();
  for (const auto& g : m.groups)
    groups.push_back({{"name", g.name}, {"count", g.count}, {"color", g.color}});
  json out = {{"type", "map"},
              {"collection", m.collection},
              {"model", m.model},
              {"method", viz::method_name(m.method)},
              {"points", m.points.size()},
              {"matching", m.matching},
              {"generation", m.generation},
              {"color_by", m.color_by},
              {"groups", groups},
              {"seed", a.seed},
              {"projection_seconds", m.projection_seconds},
              {"seconds", seconds},
              {"warnings", m.warnings}};
  if (m.method == viz::Method::Pca) {
    out["explained_variance_ratio"] = m.explained_ratio;
    out["sign_convention"] = "each axis's largest-|value| loading is positive";
  } else {
    out.update({{"perplexity", m.perplexity},
                {"iterations", a.iterations},
                {"learning_rate", m.learning_rate},
                {"kl_divergence", m.kl_divergence}});
  }
  if (!a.out.empty()) set_path(out, "out", a.out.string());
  return out;
}

json point_json(const viz::MapPoint& p) {
  json out = {{"type", "point"}, {"id", p.id}};
  set_path(out, "path", p.path);
  out.update({{"group", p.group}, {"x", p.x}, {"y", p.y}, {"thumbnail", p.thumbnail}});
  return out;
}

void print_human(const viz::CollectionMap& m, const MapArgs& a, double seconds) {
  std::cout << fmt::format("{} of {} ({} matching), {} of {}, coloured by {}\n",
                           plural(static_cast<std::int64_t>(m.points.size()), "point"),
                           m.collection, plural(m.matching, "image"),
                           m.method == viz::Method::Pca ? "PCA" : "t-SNE", m.model, m.color_by);
  if (m.method == viz::Method::Pca && m.explained_ratio.size() == 2) {
    std::cout << fmt::format("explained variance: PC1 {:.2f}%, PC2 {:.2f}%\n",
                             100 * m.explained_ratio[0], 100 * m.explained_ratio[1]);
  } else if (m.method == viz::Method::Tsne) {
    std::cout << fmt::format("perplexity {:g}, {}, KL divergence {:.4f}\n", m.perplexity,
                             plural(a.iterations, "iteration"), m.kl_divergence);
  }
  for (const auto& g : m.groups)
    std::cout << fmt::format("  {:>6}  {}  {}\n", g.count, g.color, terminal_text(g.name));
  std::cout << fmt::format("wrote {} in {:.1f} s (projection {:.1f} s)\n",
                           terminal_text(a.out.string()), seconds, m.projection_seconds);
}

int run(const GlobalOptions& g, const MapArgs& a) {
  const auto start = std::chrono::steady_clock::now();
  const bool json_out = g.json || a.json;
  viz::MapOptions o;
  try {
    if (a.out.empty() && !json_out) {
      throw viz::MapUsageError("give --out FILE.svg|FILE.png, or --json for the coordinates");
    }
    if (!a.out.empty()) viz::check_output(a.out);
    o.filter = store::parse_where(a.where);
  } catch (const viz::MapUsageError& e) {
    spdlog::error("{}", e.what());
    return kUsage;
  } catch (const store::StoreError& e) {  // a --where term
    spdlog::error("{}", e.what());
    return kUsage;
  } catch (const viz::MapError& e) {
    spdlog::error("{}", e.what());
    return kError;
  }
  if (!store::Collection::exists(g.collection)) {
    spdlog::error("{}: no collection here", g.collection.string());
    return kError;
  }
  o.method = a.method == "tsne" ? viz::Method::Tsne : viz::Method::Pca;
  o.color_by = a.color_by;
  o.sample = a.sample;
  o.seed = a.seed;
  o.perplexity = a.perplexity;
  o.iterations = a.iterations;
  apply_run_settings(g, o);
  auto catalog = store::Catalog::open_read_only(g.collection / "catalog.db");
  const auto name = std::filesystem::absolute(g.collection).lexically_normal().filename().string();
  viz::CollectionMap map;
  try {
    map = viz::build_map(*catalog, name.empty() ? g.collection.string() : name, o);
    if (!a.out.empty()) {
      viz::choose_thumbnails(map, a.style);
      viz::write_map(a.out, viz::render_svg(map, a.style));
    }
  } catch (const viz::MapUsageError& e) {
    spdlog::error("{}", e.what());
    return kUsage;
  } catch (const viz::MapError& e) {
    spdlog::error("{}", e.what());
    return kError;
  }
  for (const auto& w : map.warnings) spdlog::warn("{}", w);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (json_out) {
    print_record(summary_json(map, a, seconds));
    for (const auto& p : map.points) print_record(point_json(p));
  } else if (!g.quiet) {
    print_human(map, a, seconds);
  }
  return kOk;
}

}  // namespace

Subcommand add_map_command(CLI::App& app, const GlobalOptions& g) {
  auto a = std::make_shared<MapArgs>();
  Subcommand s;
  s.app = app.add_subcommand(
      "map",
      "A 2-D map of the collection's embeddings (PCA or t-SNE) as SVG or PNG, coloured by "
      "folder or a metadata field, with thumbnails");
  auto* c = s.app;
  c->add_option("--out", a->out, "Picture to write: FILE.svg or FILE.png");
  c->add_option("--method", a->method, "pca (exact, default) or tsne (exact, up to 5,000 points)")
      ->check(CLI::IsMember({"pca", "tsne"}));
  c->add_option("--color-by", a->color_by,
                "Metadata field whose value colours the points (default: the file's folder)");
  c->add_option("--where", a->where,
                "Only images whose metadata matches (as search --where); repeatable")
      ->expected(1)
      ->allow_extra_args(false)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  c->add_option("--sample", a->sample,
                fmt::format("At most this many points, a seeded sample (default {}; 0 = all for "
                            "PCA; t-SNE at most {})",
                            viz::kDefaultSample, viz::kMaxTsnePoints))
      ->check(CLI::Validator(  // CLI11's NonNegativeNumber printed its range as 0.000000 to 1.8e308
          [](std::string& v) {
            return !v.empty() && v.front() == '-' ? "must be 0 or more, got " + v : std::string();
          },
          "COUNT"));
  c->add_option("--seed", a->seed, "Seed of the sample and of t-SNE's start (default 0)");
  c->add_option("--perplexity", a->perplexity, "t-SNE perplexity (default 30)")
      ->check(CLI::Range(1.0, 1e6));
  c->add_option("--iterations", a->iterations, "t-SNE gradient steps (default 1000)")
      ->check(CLI::Range(1, 100000));
  c->add_option(
       "--thumbnails", a->style.thumbnails,
       fmt::format("Thumbnails drawn at their points (default {}; 0 = none)", a->style.thumbnails))
      ->check(CLI::Range(0, 1000));
  c->add_option(
       "--thumbnail-size", a->style.thumbnail_size,
       fmt::format("Thumbnails' longest side in pixels (default {})", a->style.thumbnail_size))
      ->check(CLI::Range(16, 256));
  c->add_option("--width", a->style.width,
                fmt::format("Picture width in pixels (default {})", a->style.width))
      ->check(CLI::Range(400, 10000));
  c->add_option("--height", a->style.height,
                fmt::format("Picture height in pixels (default {})", a->style.height))
      ->check(CLI::Range(300, 10000));
  c->add_flag("--json", a->json,
              "JSON Lines: a {\"type\": \"map\"} summary, then a {\"type\": \"point\"} per point");
  s.run = [&g, a] { return run(g, *a); };
  return s;
}

}  // namespace lookalike::cli
