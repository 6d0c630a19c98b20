// Internal to train/: checks and messages that `train` (train.cpp) and `reembed` (reembed.cpp)
// share.
#pragma once

#include <cstddef>
#include <filesystem>
#include <string>
#include <vector>

namespace lookalike::train::detail {

// Before any work: the folder that will hold `out` must exist (it is not created, as for map
// --out and embed --npy, so that a typo does not make folders), be a folder, and be writable.
// Throws TrainError naming `out` and the folder.
void check_out_parent(const std::filesystem::path& out);

// The first `count` of `failed` ("<file>: <reason>") joined by "; ", with "(and N more)" when
// there are more: the likely causes, named in an error that ends a run.
std::string first_causes(const std::vector<std::string>& failed, std::size_t count = 3);

}  // namespace lookalike::train::detail
