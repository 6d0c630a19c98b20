#include "image/thumbnail.h"

#include <vips/vips.h>

#include <stdexcept>

#include "image/decode.h"
#include "image/formats.h"
#include "image/image.h"

namespace lookalike::image {

namespace {

std::string vips_message() {
  char* raw = vips_error_buffer_copy();  // copies and clears the process-wide buffer
  std::string msg = raw ? raw : "";
  g_free(raw);
  for (char& c : msg) c = (c == '\n') ? ' ' : c;
  while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
  return msg.empty() ? "unknown libvips error" : msg;
}

struct Unref {
  VipsImage* image = nullptr;
  ~Unref() {
    if (image) g_object_unref(image);
  }
};

}  // namespace

std::vector<std::uint8_t> thumbnail_jpeg(std::span<const std::uint8_t> bytes,
                                         const std::string& name, int size) {
  if (size < kMinThumbnailSize || size > kMaxThumbnailSize) {
    throw std::invalid_argument(
        "thumbnail size must be between " + std::to_string(kMinThumbnailSize) + " and " +
        std::to_string(kMaxThumbnailSize) + ", got " + std::to_string(size));
  }
  // The decoder's own words for what is not an image (libvips says "VipsForeignLoad: buffer
  // is not in a known format").
  if (bytes.empty()) throw DecodeError(name, "empty file (0 bytes)");
  if (!detail::sniff(bytes)) throw DecodeError(name, detail::describe_unrecognised(bytes));
  init_decoder();
  Unref thumb;
  // VIPS_SIZE_DOWN: only ever shrink. The buffer is not copied: it outlives the call.
  if (vips_thumbnail_buffer(const_cast<std::uint8_t*>(bytes.data()), bytes.size(), &thumb.image,
                            size, "height", size, "size", VIPS_SIZE_DOWN, nullptr) != 0) {
    throw DecodeError(name, "thumbnail: " + vips_message());
  }
  void* buf = nullptr;
  std::size_t len = 0;
  if (vips_jpegsave_buffer(thumb.image, &buf, &len, "Q", 80, "strip", TRUE, nullptr) != 0) {
    throw DecodeError(name, "thumbnail: " + vips_message());
  }
  const auto* p = static_cast<const std::uint8_t*>(buf);
  std::vector<std::uint8_t> out(p, p + len);
  g_free(buf);
  return out;
}

}  // namespace lookalike::image
