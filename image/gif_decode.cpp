#include "image/gif_decode.h"

#include <gif_lib.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <memory>
#include <vector>

namespace lookalike::image::detail {
namespace {

// giflib reads through a callback: this is its cursor over the bytes already in memory.
struct Cursor {
  Bytes bytes;
  std::size_t at = 0;
};

int read_bytes(GifFileType* gif, GifByteType* dst, int n) {
  auto* c = static_cast<Cursor*>(gif->UserData);
  const std::size_t take =
      std::min<std::size_t>(std::size_t(std::max(n, 0)), c->bytes.size() - c->at);
  std::memcpy(dst, c->bytes.data() + c->at, take);
  c->at += take;
  return int(take);
}

struct GifClose {
  void operator()(GifFileType* gif) const {
    int err = 0;
    DGifCloseFile(gif, &err);
  }
};

std::string giflib_error(int code) {
  const char* text = GifErrorString(code);
  return "giflib: " + (text ? std::string(text) : "error " + std::to_string(code));
}

// A failure after the screen descriptor is the file's data: cut short, or not valid GIF.
[[noreturn]] void data_failure(const GifFileType* gif, const std::string& name) {
  const bool cut = gif->Error == D_GIF_ERR_READ_FAILED || gif->Error == D_GIF_ERR_EOF_TOO_SOON;
  throw DecodeError(name, std::string(cut ? "truncated file" : "corrupt image data") + " (gif, " +
                              giflib_error(gif->Error) + ")");
}

// A GIF opened and read up to its first frame's pixels.
struct FirstFrame {
  Cursor cursor;
  std::unique_ptr<GifFileType, GifClose> gif;
  int transparent = NO_TRANSPARENT_COLOR;
  GifCanvas canvas;
};

// Pillow takes the transparent index from any graphic control extension before the frame whose
// flag says so (a later one without the flag does not clear it); so do we.
void read_extension(FirstFrame& f, const std::string& name) {
  GifFileType* gif = f.gif.get();
  int code = 0;
  GifByteType* block = nullptr;
  if (DGifGetExtension(gif, &code, &block) == GIF_ERROR) data_failure(gif, name);
  if (code == GRAPHICS_EXT_FUNC_CODE && block != nullptr) {
    GraphicsControlBlock gcb{};
    if (DGifExtensionToGCB(block[0], block + 1, &gcb) == GIF_OK &&
        gcb.TransparentColor != NO_TRANSPARENT_COLOR) {
      f.transparent = gcb.TransparentColor;
    }
  }
  while (block != nullptr) {
    if (DGifGetExtensionNext(gif, &block) == GIF_ERROR) data_failure(gif, name);
  }
}

void read_to_first_frame(FirstFrame& f, const std::string& name) {
  GifFileType* gif = f.gif.get();
  for (;;) {
    GifRecordType type = UNDEFINED_RECORD_TYPE;
    if (DGifGetRecordType(gif, &type) == GIF_ERROR) {
      // Pillow skips a stray byte between blocks (giflib has consumed it); anything else fails.
      if (gif->Error == D_GIF_ERR_WRONG_RECORD) continue;
      data_failure(gif, name);
    }
    if (type == TERMINATE_RECORD_TYPE) {
      throw DecodeError(name, "corrupt image data (gif, no image in the file)");
    }
    if (type == IMAGE_DESC_RECORD_TYPE) break;
    if (type == EXTENSION_RECORD_TYPE) read_extension(f, name);
  }
  if (DGifGetImageDesc(gif) == GIF_ERROR) data_failure(gif, name);
  const GifImageDesc& frame = gif->Image;
  f.canvas = {std::max(gif->SWidth, frame.Left + frame.Width),
              std::max(gif->SHeight, frame.Top + frame.Height)};
}

void open_first_frame(FirstFrame& f, Bytes bytes, const std::string& name) {
  if (gif_zero_screen(bytes)) {
    throw DecodeError(name, "image is 0 pixels wide or high (GIF logical screen): zero size");
  }
  f.cursor = {bytes, 0};
  int err = 0;
  f.gif.reset(DGifOpen(&f.cursor, read_bytes, &err));
  if (!f.gif) throw DecodeError(name, "cannot read gif header: " + giflib_error(err));
  read_to_first_frame(f, name);
}

using Palette = std::array<std::uint8_t, 256 * 3>;

// PIL's palette for the frame: the table's colours, grey (i, i, i) past its end or with no table
// (Pillow then opens the GIF as mode "L", whose values are the indices).
Palette palette_of(const ColorMapObject* map) {
  Palette p{};
  for (int i = 0; i < 256; ++i) {
    const bool listed = map != nullptr && i < map->ColorCount;
    p[i * 3] = listed ? map->Colors[i].Red : std::uint8_t(i);
    p[i * 3 + 1] = listed ? map->Colors[i].Green : std::uint8_t(i);
    p[i * 3 + 2] = listed ? map->Colors[i].Blue : std::uint8_t(i);
  }
  return p;
}

void fill(RgbImage& rgb, const Palette& p, int index) {
  for (std::size_t i = 0; i < rgb.pixels.size(); i += 3) {
    std::memcpy(rgb.pixels.data() + i, p.data() + index * 3, 3);
  }
}

// Decodes the frame's next stored row into canvas row `y` (of the frame).
void read_row(GifFileType* gif, std::vector<GifPixelType>& line, int y, const Palette& p,
              RgbImage& rgb, const std::string& name) {
  const GifImageDesc& frame = gif->Image;
  if (DGifGetLine(gif, line.data(), frame.Width) == GIF_ERROR) data_failure(gif, name);
  std::uint8_t* dst = rgb.pixels.data() + (std::size_t(frame.Top + y) * rgb.width + frame.Left) * 3;
  for (int x = 0; x < frame.Width; ++x) std::memcpy(dst + x * 3, p.data() + line[x] * 3, 3);
}

// An interlaced frame stores its rows in four passes (GIF89a, appendix E): every 8th row from 0,
// every 8th from 4, every 4th from 2, every 2nd from 1. giflib returns them as stored.
void read_frame(GifFileType* gif, const Palette& p, RgbImage& rgb, const std::string& name) {
  const GifImageDesc& frame = gif->Image;
  if (frame.Width <= 0 || frame.Height <= 0) return;
  std::vector<GifPixelType> line(std::size_t(frame.Width));
  if (!frame.Interlace) {
    for (int y = 0; y < frame.Height; ++y) read_row(gif, line, y, p, rgb, name);
    return;
  }
  static constexpr std::array<std::array<int, 2>, 4> passes = {{{0, 8}, {4, 8}, {2, 4}, {1, 2}}};
  for (const auto& [start, step] : passes) {
    for (int y = start; y < frame.Height; y += step) read_row(gif, line, y, p, rgb, name);
  }
}

}  // namespace

GifCanvas read_gif_canvas(Bytes bytes, const std::string& name) {
  FirstFrame f;
  open_first_frame(f, bytes, name);
  return f.canvas;
}

RgbImage decode_gif(Bytes bytes, const std::string& name, const DecodeOptions& options,
                    std::int64_t& width, std::int64_t& height) {
  FirstFrame f;
  open_first_frame(f, bytes, name);
  width = f.canvas.width;
  height = f.canvas.height;
  check_pixel_limit(width, height, options, name);
  const GifImageDesc& frame = f.gif->Image;
  const Palette p = palette_of(frame.ColorMap != nullptr ? frame.ColorMap : f.gif->SColorMap);
  RgbImage rgb{f.canvas.width, f.canvas.height, {}};
  rgb.pixels.resize(std::size_t(rgb.width) * std::size_t(rgb.height) * 3);
  // Pillow fills frame 0's canvas with the transparent index, else leaves it at index 0.
  fill(rgb, p, f.transparent != NO_TRANSPARENT_COLOR ? f.transparent : 0);
  read_frame(f.gif.get(), p, rgb, name);
  return rgb;
}

}  // namespace lookalike::image::detail
