// The `lookalike` subcommands: argument structs in, engine calls, printing out. Each returns the
// process exit code (see docs/cli.md):
//   0 ok; 1 error, nothing stored was changed; 2 usage; 3 partial (some inputs failed, the rest
//   was done); 4 error after some batches were committed (they are kept; run again to finish);
//   130 interrupted (Ctrl-C or SIGTERM; committed work kept).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

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
  int decode_threads = 1;
  int batch_size = 32;
  std::int64_t max_pixels = 89'478'485;
  bool json = false;
  bool quiet = false;
};

struct IndexArgs {
  std::vector<std::filesystem::path> inputs;
  bool prune = false;
  std::string metric = "cosine";
  std::string factory = "Flat";
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
};
struct EmbedArgs {
  std::vector<std::filesystem::path> images;
  std::filesystem::path npy;
};
struct RemoveArgs {
  std::vector<std::filesystem::path> paths;
  std::vector<std::int64_t> ids;
};

int run_index(const GlobalOptions& g, const IndexArgs& a);
int run_search(const GlobalOptions& g, const SearchArgs& a);
int run_embed(const GlobalOptions& g, const EmbedArgs& a);
int run_info(const GlobalOptions& g);
int run_remove(const GlobalOptions& g, const RemoveArgs& a);
int run_models(const GlobalOptions& g);

}  // namespace lookalike::cli
