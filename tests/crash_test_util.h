// What the crash-test writer writes, so that the test can recompute it.
#pragma once

#include <string>
#include <vector>

#include "store/catalog.h"
#include "tests/store_test_util.h"

namespace lookalike::testing {

inline constexpr int kCrashDim = 1280;
inline constexpr int kCrashBatch = 8;

inline store::CatalogConfig crash_config() {
  return {"crash-model@0000000000000000", "crash-model", kCrashDim, "cosine", "Flat"};
}

inline std::string crash_path(int batch, int j) {
  return "/crash/b" + std::to_string(batch) + "/i" + std::to_string(j);
}

inline std::vector<float> crash_vector(int batch, int j) {
  return seeded_vector(static_cast<std::uint64_t>(batch) * kCrashBatch + j + 1, kCrashDim);
}

inline std::vector<store::Put> crash_batch(int batch) {
  std::vector<store::Put> puts;
  for (int j = 0; j < kCrashBatch; ++j) {
    store::Put p;
    p.record.path = crash_path(batch, j);
    p.record.content_hash = std::to_string(batch) + "/" + std::to_string(j);
    p.record.metadata = "{\"batch\":" + std::to_string(batch) + "}";
    p.embedding = crash_vector(batch, j);
    puts.push_back(std::move(p));
  }
  return puts;
}

}  // namespace lookalike::testing
