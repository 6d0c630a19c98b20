// Decoded pixels and the errors raised while decoding.
#pragma once

#include <cstdint>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace lookalike::image {

// 8-bit RGB pixels: height x width x 3, row-major, interleaved (R, G, B), no row padding.
struct RgbImage {
  int width = 0;
  int height = 0;
  std::vector<std::uint8_t> pixels;  // size width * height * 3
};

// Raised for any file that cannot become an RgbImage (or a model input): not a regular file, not
// an image, truncated, corrupt, unsupported, over a size limit, or out of memory. what() reads
// "<file>: <reason>" ("<reason>" alone when no file name was given).
class DecodeError : public std::runtime_error {
 public:
  DecodeError(std::string file, std::string reason)
      : std::runtime_error(file.empty() ? reason : file + ": " + reason),
        file_(std::move(file)),
        reason_(std::move(reason)) {}
  const std::string& file() const { return file_; }
  const std::string& reason() const { return reason_; }

 private:
  std::string file_;
  std::string reason_;
};

}  // namespace lookalike::image
