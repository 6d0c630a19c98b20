// Internal to lookalike_image: GIFs through giflib, so that the first frame's pixels are the ones
// Pillow 9.4 gives with Image.open(f).convert("RGB") (libvips' gifload renders transparent and
// uncovered pixels as RGBA 0,0,0,0, which become black once alpha is dropped).
#pragma once

#include <cstdint>
#include <string>

#include "image/decode.h"
#include "image/formats.h"

namespace lookalike::image::detail {

// The canvas PIL decodes the first frame onto: the logical screen, widened to hold the first
// frame when the frame reaches past it (Pillow enlarges the image then; so do we).
struct GifCanvas {
  int width = 0;
  int height = 0;
};

// Reads up to the first frame's image descriptor (no pixels). Throws DecodeError naming `name`:
// "image is 0 pixels wide or high (GIF logical screen): zero size", "cannot read gif header:
// giflib: <cause>", "corrupt image data (gif, no image in the file)", ...
GifCanvas read_gif_canvas(Bytes bytes, const std::string& name);

// The first frame as 8-bit RGB, as PIL gives it:
// - pixel index i takes the frame's local colour table, else the global one; an index at or past
//   the table's size (or any index when there is no table) is grey (i, i, i);
// - transparency is ignored: a transparent pixel keeps its index's colour (convert("RGB") of a
//   "P" image drops the "transparency" info);
// - canvas pixels the frame does not cover get the transparent index's colour when the frame
//   has one, else index 0's colour (Pillow fills the frame-0 canvas with the transparent index,
//   else leaves it 0; the logical screen's background index is not used).
// The canvas is checked against options' max_pixels and max_aspect_ratio before any pixel is
// decoded; `width`/`height` are set to it then (for decode_buffer's out-of-memory message).
// Throws DecodeError naming `name`: "truncated file (gif, giflib: ...)", "corrupt image data
// (gif, giflib: ...)", the limits' messages, or those of read_gif_canvas.
RgbImage decode_gif(Bytes bytes, const std::string& name, const DecodeOptions& options,
                    std::int64_t& width, std::int64_t& height);

}  // namespace lookalike::image::detail
