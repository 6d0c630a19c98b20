// Reading and hashing input files.
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

namespace lookalike::pipeline {

// Whole file in memory. Throws std::runtime_error "<path>: <cause>" (missing, unreadable,
// a directory).
std::vector<std::uint8_t> read_file(const std::filesystem::path& path);

// XXH3-128 of `bytes` (xxHash, Yann Collet), as 32 lowercase hex digits: the catalog's content
// hash. Non-cryptographic: it detects changed files, it does not authenticate them.
std::string content_hash(std::span<const std::uint8_t> bytes);

// File modification time in ns since the Unix epoch (0 when it cannot be read).
std::int64_t mtime_ns(const std::filesystem::path& path);

// Absolute, lexically normal form of `path` (no symlink resolution, like fd and ripgrep).
std::filesystem::path normalize_path(const std::filesystem::path& path);

}  // namespace lookalike::pipeline
