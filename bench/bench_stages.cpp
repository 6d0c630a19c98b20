// Decode-only and embed-only rates for the files in a list, measured in one process, so that
// bench/run.sh can compare them with `lookalike index` end to end and the Python reference.
//
// usage: bench_stages MODEL.pt FILELIST [--threads N] [--batch-size 32] [--precision auto]
//                     [--prepack on|off] [--channels-last-input on|off]
//                     [--concurrent-passes P] [--decode-beside D]
// Prints one JSON object: decode_ms_per_image (decode + preprocess + perceptual hash, one
// thread: what the indexer's decode worker does for an image it embeds, pipeline/indexer.cpp),
// embed_ms_per_image (forward pass only, N threads), their rates (images/s) and the ratio of
// decode time to embed time, in wall time and in CPU time.
// --concurrent-passes P runs the passes P at a time on N / P threads each (docs/engine.md,
// "Passes side by side"); --decode-beside D decodes every photo again on D threads while the
// passes run, so embed_images_per_s is the model's rate while decoding takes its share of the
// cores (both_images_per_s: until both are done).
#include <dlfcn.h>
#include <fmt/format.h>
#include <malloc.h>

#include <atomic>
#include <chrono>
#include <exception>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "dedup/phash.h"
#include "image/decode.h"
#include "image/preprocess.h"
#include "model/embedding_model.h"
#include "pipeline/batch_runner.h"
#include "pipeline/files.h"

using namespace lookalike;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

std::vector<std::string> read_list(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path + ": cannot read the file list");
  std::vector<std::string> files;
  for (std::string line; std::getline(in, line);) {
    if (!line.empty()) files.push_back(line);
  }
  return files;
}

}  // namespace

static int run(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: bench_stages MODEL.pt FILELIST [--threads N] [--batch-size B] "
                 "[--precision auto|fp32|bf16] [--prepack on|off] [--channels-last-input on|off] "
                 "[--concurrent-passes P] [--decode-beside D]\n";
    return 2;
  }
  int threads = static_cast<int>(std::thread::hardware_concurrency());
  int batch = 32;
  std::string precision = "auto";
  bool prepack = true;
  bool channels_last = true;
  int passes = 1;         // forward passes run side by side, each on threads / passes threads
  int decode_beside = 0;  // threads decoding beside the passes
  for (int i = 3; i + 1 < argc; i += 2) {
    std::string flag = argv[i];
    if (flag == "--threads") threads = std::stoi(argv[i + 1]);
    if (flag == "--batch-size") batch = std::stoi(argv[i + 1]);
    if (flag == "--precision") precision = argv[i + 1];
    if (flag == "--prepack") prepack = std::string(argv[i + 1]) != "off";
    if (flag == "--channels-last-input") channels_last = std::string(argv[i + 1]) != "off";
    if (flag == "--concurrent-passes") passes = std::stoi(argv[i + 1]);
    if (flag == "--decode-beside") decode_beside = std::stoi(argv[i + 1]);
  }
  // As engine::setup_process does for the lookalike binary: glibc's heap tuned for reuse, unless
  // this program runs on jemalloc (lookalike_allocator; docs/engine.md, "Memory").
  if (dlsym(RTLD_DEFAULT, "mallctl") == nullptr) {
    mallopt(M_MMAP_MAX, 0);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
    mallopt(M_ARENA_MAX, 1);  // the passes run on threads of their own
  }
  auto files = read_list(argv[2]);
  image::init_decoder();
  model::ModelOptions options;
  options.threads = pipeline::threads_per_pass(threads, passes);
  options.max_batch = batch;
  options.precision = precision;
  options.prepack = prepack;
  options.channels_last_input = channels_last;
  // Loaded on a thread that ends, so that no OpenMP team outlives it (docs/engine.md, "OpenMP
  // teams"): the passes below run on threads of their own.
  std::unique_ptr<model::EmbeddingModel> model;
  std::thread([&] { model = model::EmbeddingModel::load(argv[1], options); }).join();
  auto spec = model->preprocess_spec();
  const int side = model->card().input_size;
  const std::size_t per_image = 3ull * side * side;
  image::DecodeOptions decode;
  // As the indexer decodes: the whole frame (no rows_for), since the pHash is computed from it.
  decode.min_shorter_side = spec.resize_shorter;

  // Files are read once up front: the stages below time decoding, not the disk.
  std::vector<std::vector<std::uint8_t>> bytes;
  for (const auto& f : files) bytes.push_back(pipeline::read_file(f));

  std::vector<float> inputs(per_image * files.size());
  double jpeg_s = 0, preprocess_s = 0, phash_s = 0;
  std::atomic<std::uint64_t> sink = 0;  // keeps the hashes from being optimised away
  for (std::size_t i = 0; i < files.size(); ++i) {
    auto t0 = Clock::now();
    auto img = image::decode_buffer(bytes[i], files[i], decode);
    auto t1 = Clock::now();
    image::preprocess(img.rgb, img.source_width, img.source_height, spec, &inputs[i * per_image]);
    auto t2 = Clock::now();
    sink ^= dedup::picture_hash(img.rgb).full;
    jpeg_s += std::chrono::duration<double>(t1 - t0).count();
    preprocess_s += std::chrono::duration<double>(t2 - t1).count();
    phash_s += seconds_since(t2);
  }
  double decode_s = jpeg_s + preprocess_s + phash_s;

  // Warm-up, twice as bench/python_precision.py does: TorchScript's profiling executor
  // optimises the graph on the second call with a given shape. Each pass thread warms up its own
  // OpenMP team.
  auto warm_up = [&] {
    for (int i = 0; i < 2; ++i) model->embed(inputs.data(), std::min<int>(batch, files.size()));
  };
  auto run_share = [&](int p) {  // every passes-th batch, from batch p
    std::size_t b = 0;
    for (std::size_t i = 0; i < files.size(); i += batch, ++b) {
      if (static_cast<int>(b % passes) != p) continue;
      int n = static_cast<int>(std::min<std::size_t>(batch, files.size() - i));
      model->embed(&inputs[i * per_image], n);
    }
  };
  std::vector<std::thread> pass_threads;
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  for (int p = 0; p < passes; ++p) {
    pass_threads.emplace_back([&, p] {
      warm_up();
      ++ready;
      while (!go) std::this_thread::yield();
      run_share(p);
    });
  }
  while (ready < passes) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  // --decode-beside D: D threads decode every file again while the passes run: the cores are
  // shared as in `lookalike index`, without the dependency of a pass on its decoded inputs.
  std::vector<std::thread> decoders;
  std::vector<float> scratch(per_image * std::max(1, decode_beside));
  auto t0 = Clock::now();
  go = true;
  for (int d = 0; d < decode_beside; ++d) {
    decoders.emplace_back([&, d] {
      for (std::size_t i = d; i < files.size(); i += decode_beside) {
        auto img = image::decode_buffer(bytes[i], files[i], decode);
        image::preprocess(img.rgb, img.source_width, img.source_height, spec,
                          &scratch[d * per_image]);
        sink ^= dedup::picture_hash(img.rgb).full;
      }
    });
  }
  for (auto& t : pass_threads) t.join();
  double embed_s = seconds_since(t0);
  for (auto& t : decoders) t.join();
  double both_s = seconds_since(t0);

  const double n = static_cast<double>(files.size());
  nlohmann::json out = {
      {"images", files.size()},
      {"model", model->id()},
      {"precision", model::to_string(model->precision().precision)},
      {"threads", model->threads()},  // of each pass
      {"concurrent_passes", passes},
      {"batch_size", batch},
      {"channels_last_input", spec.channels_last},
      {"decode_only_ms_per_image", 1000 * jpeg_s / n},
      {"preprocess_only_ms_per_image", 1000 * preprocess_s / n},
      {"phash_ms_per_image", 1000 * phash_s / n},
      {"phash_sink", sink & 1},
      {"decode_ms_per_image", 1000 * decode_s / n},
      {"decode_images_per_s", n / decode_s},
      {"embed_ms_per_image", 1000 * embed_s / n},
      {"embed_images_per_s", n / embed_s},
      {"both_images_per_s", n / both_s},
      {"decode_share_of_embed", decode_s / embed_s},
      // CPU time: the passes keep threads x passes cores busy, decoding one.
      {"decode_share_of_embed_cpu", decode_s / (embed_s * model->threads() * passes)}};
  std::cout << out.dump(2) << "\n";
  return 0;
}

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {  // a bad model, file list or flag value
    std::cerr << "bench_stages: error: " << e.what() << "\n";
    return 1;
  }
}
