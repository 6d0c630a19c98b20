// The `lookalike` subcommands: argument structs in, engine calls, printing out. Each returns the
// process exit code (see docs/cli.md):
//   0 ok; 1 error, nothing stored was changed; 2 usage; 3 partial (some inputs failed, the rest
//   was done); 4 error after some batches were committed (they are kept; run again to finish);
//   130 interrupted (Ctrl-C or SIGTERM; committed work kept).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

namespace CLI {
class App;
}
namespace lookalike::engine {
struct EngineOptions;
}

namespace lookalike::cli {

enum ExitCode : int {
  kOk = 0,
  kError = 1,
  kUsage = 2,
  kPartial = 3,
  kCommittedThenFailed = 4,
  kInterrupted = 130
};

struct GlobalOptions {
  std::filesystem::path collection;  // --collection, $LOOKALIKE_COLLECTION, ./lookalike-data
  std::string model;                 // --model NAME|PATH; empty = the collection's, else default
  int threads = 0;                   // LibTorch intra-op threads; 0 = all cores
  std::string precision = "auto";    // --precision, $LOOKALIKE_PRECISION (docs/precision.md)
  int decode_threads = 1;
  int batch_size = 32;
  int passes = 0;  // --passes: forward passes side by side in bulk work; 0 = auto
  std::int64_t max_pixels = 89'478'485;
  bool json = false;
  bool quiet = false;
};

// --nprobe / --ef-search / --rerank: per query (search) or collection defaults (index, reindex).
struct SearchParamArgs {
  int nprobe = 0;
  int ef_search = 0;
  int rerank = 0;
};

struct IndexArgs {
  std::vector<std::filesystem::path> inputs;
  bool prune = false;
  std::string metric = "cosine";
  std::string factory = "Flat";    // --index-spec (or its older name --index-factory), or "auto"
  std::int64_t memory_budget = 0;  // bytes, for auto
  SearchParamArgs params;
  bool metric_given = false;  // --metric/--index-factory only shape new collections
  bool factory_given = false;
  std::string file_column;
  bool hidden = false;
};
struct SearchArgs {
  std::vector<std::filesystem::path> images;
  std::vector<std::int64_t> ids;
  int k = 10;
  bool include_self = false;
  double min_score = 0;
  bool min_score_given = false;
  std::vector<std::string> where;  // metadata terms, see store::parse_where
  SearchParamArgs params;
};
struct ReindexArgs {
  std::string spec;                // factory string or "auto"
  std::int64_t memory_budget = 0;  // bytes, for auto
  SearchParamArgs params;
};
struct EmbedArgs {
  std::vector<std::filesystem::path> images;
  std::filesystem::path npy;
};
struct RemoveArgs {
  std::vector<std::filesystem::path> paths;
  std::vector<std::int64_t> ids;
};

struct ServeArgs {
  std::string host = "127.0.0.1";
  int port = 8080;
  int workers = 32;
  int worker_nice = 0;
  double max_upload_mb = 20;
  std::string api_key;  // --api-key, else $LOOKALIKE_API_KEY
  bool private_reads = false;
  std::vector<std::string> cors_origins;
  std::vector<std::string> allowed_hosts;
  int read_timeout_s = 10;
  int write_timeout_s = 10;
  int request_timeout_s = 60;
  int shutdown_timeout_s = 30;
  std::filesystem::path web_dir;
  double max_aspect_ratio = 100;
  double batch_wait_ms = 2;  // engine::EngineOptions::batch_wait
};

// The engine options every subcommand opens its engine with (collection, model, threads,
// precision, decode threads, batch size, passes, pixel limit), from the global options.
engine::EngineOptions engine_options(const GlobalOptions& g);

// The global run settings (--threads, and where the command's options have them
// --decode-threads, --batch-size, --max-pixels) copied into a command's own options struct.
template <class Options>
void apply_run_settings(const GlobalOptions& g, Options& o) {
  o.threads = g.threads;
  if constexpr (requires { o.decode_threads; }) o.decode_threads = g.decode_threads;
  if constexpr (requires { o.batch_size; }) o.batch_size = g.batch_size;
  if constexpr (requires { o.passes; }) o.passes = g.passes;
  if constexpr (requires { o.max_pixels; }) o.max_pixels = g.max_pixels;
}

// A subcommand that registers its own options (in its own file): main() calls run() when the
// subcommand was given, after parsing, with the global options filled in.
struct Subcommand {
  CLI::App* app = nullptr;
  std::function<int()> run;
};
// `lookalike eval` (cli/eval_command.cpp) and `lookalike bench-index`
// (cli/bench_index_command.cpp). `g` is read when run() is called.
Subcommand add_eval_command(CLI::App& app, const GlobalOptions& g);
Subcommand add_bench_index_command(CLI::App& app, const GlobalOptions& g);
// `lookalike duplicates` (cli/duplicates_command.cpp).
Subcommand add_duplicates_command(CLI::App& app, const GlobalOptions& g);
// `lookalike map` (cli/map_command.cpp).
Subcommand add_map_command(CLI::App& app, const GlobalOptions& g);
// `lookalike train` and `lookalike reembed` (cli/train_command.cpp, train/train.h).
Subcommand add_train_command(CLI::App& app, const GlobalOptions& g);
Subcommand add_reembed_command(CLI::App& app, const GlobalOptions& g);

int run_serve(const GlobalOptions& g, const ServeArgs& a);
int run_index(const GlobalOptions& g, const IndexArgs& a);
int run_search(const GlobalOptions& g, const SearchArgs& a);
int run_reindex(const GlobalOptions& g, const ReindexArgs& a);
int run_embed(const GlobalOptions& g, const EmbedArgs& a);
int run_info(const GlobalOptions& g);
int run_remove(const GlobalOptions& g, const RemoveArgs& a);
int run_models(const GlobalOptions& g);
// `lookalike models calibrate`: fidelity and speed of each precision, recorded in the card.
struct CalibrateArgs {
  std::filesystem::path images;
  std::vector<std::string> precisions;
  std::int64_t limit = 0;
  bool dry_run = false;
};
int run_calibrate(const GlobalOptions& g, const CalibrateArgs& a);

}  // namespace lookalike::cli
