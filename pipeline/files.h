// Reading and hashing input files.
#pragma once

#include <cstdint>
#include <filesystem>
#include <initializer_list>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace lookalike::pipeline {

// read_file's default size limit: 256 MiB, as image::DecodeOptions::max_file_bytes.
inline constexpr std::int64_t kDefaultMaxReadBytes = std::int64_t(256) << 20;

// Whole file in memory. `path` (symlinks followed) must be a regular file of at most
// `max_bytes`: both are checked with stat() before the file is opened, so a FIFO, socket or
// device is never opened (cannot block) and an oversized (or sparse) file is never read. For
// images prefer image::read_image_file, which also checks the format and pixel count first.
// Throws std::runtime_error "<path>: <cause>", the cause one of "<errno text>" (missing,
// unreadable), "broken symlink (its target T does not exist)", "symlink loop (too many levels
// of symbolic links)", "not a regular file (a directory|FIFO|socket|character device|block
// device)", "file is N bytes, over the limit of M", "read error: <errno text>".
std::vector<std::uint8_t> read_file(const std::filesystem::path& path,
                                    std::int64_t max_bytes = kDefaultMaxReadBytes);

// File names and manifest cells are bytes; JSON needs UTF-8. lookalike's JSON outputs carry a
// path as "path": utf8_display(bytes), plus "path_bytes": base64(bytes) only when
// !is_valid_utf8(bytes) (like ripgrep's {"bytes": ...} for non-UTF-8 paths), so that the exact
// name can be recovered.

// True when `bytes` is well-formed UTF-8 (RFC 3629: no overlong forms, no surrogates
// U+D800..U+DFFF, nothing above U+10FFFF, no truncated sequence).
bool is_valid_utf8(std::string_view bytes);

// `bytes` as valid UTF-8 for display: each ill-formed sequence becomes U+FFFD, one per maximal
// subpart (Unicode 15 section 3.9, "U+FFFD Substitution of Maximal Subparts", as Python's
// bytes.decode("utf-8", "replace") and the WHATWG decoder do). Valid input comes back as is.
std::string utf8_display(std::string_view bytes);

// Text to place in XML or HTML (the map's SVG, eval's plots, the /docs page): utf8_display of
// `raw`, with & < > " ' as character references and the control characters XML 1.0 forbids
// (all below U+0020 but tab and newline) dropped.
std::string markup_text(std::string_view raw);

// Base64 (RFC 4648 section 4: A-Z a-z 0-9 + /, '=' padding, no line breaks) of `bytes`.
std::string base64(std::string_view bytes);

// XXH3-128 of `bytes` (xxHash, Yann Collet), as 32 lowercase hex digits: the catalog's content
// hash. Non-cryptographic: it detects changed files, it does not authenticate them.
std::string content_hash(std::span<const std::uint8_t> bytes);

// Writes the concatenation of `parts` to `path` atomically: `path` + `tmp_suffix`, fsync,
// rename over `path`, fsync of the folder. Throws std::runtime_error naming the temporary file
// and the cause; the temporary file is removed then, and `path` is untouched.
void write_file_atomically(const std::filesystem::path& path,
                           std::initializer_list<std::span<const std::uint8_t>> parts,
                           const std::string& tmp_suffix = ".tmp");

// File modification time in ns since the Unix epoch (0 when it cannot be read).
std::int64_t mtime_ns(const std::filesystem::path& path);

// Absolute, lexically normal form of `path` (no symlink resolution, like fd and ripgrep).
// Throws std::invalid_argument "an empty path names no file or folder" for an empty `path`.
std::filesystem::path normalize_path(const std::filesystem::path& path);

}  // namespace lookalike::pipeline
