#include "image/jpeg_fast.h"

// jpeglib.h needs FILE and size_t declared first.
#include <jerror.h>
#include <jpeglib.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <csetjmp>
#include <cstdio>
#include <vector>

namespace lookalike::image::detail {
namespace {

// libjpeg reports fatal errors through error_exit, which must not return; longjmp back to
// run() is the documented way out (an exception through C frames is not).
struct Job {
  jpeg_error_mgr err;  // first member: libjpeg hands back &err, which is also the Job
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX] = {};
  bool truncated = false;
  bool unsupported = false;
  const std::uint8_t* data = nullptr;
  unsigned long size = 0;
  int shrink = 1;
  std::vector<std::uint8_t>* pixels = nullptr;
  std::vector<JSAMPROW> rows;  // here, not in run(): longjmp would skip its destructor
  const RowRange* wanted = nullptr;
  int width = 0;
  int height = 0;
};

Job& job_of(j_common_ptr cinfo) { return *reinterpret_cast<Job*>(cinfo->err); }

[[noreturn]] void on_error(j_common_ptr cinfo) {
  Job& job = job_of(cinfo);
  cinfo->err->format_message(cinfo, job.message);
  std::longjmp(job.jump, 1);
}

void on_message(j_common_ptr cinfo, int level) {
  if (level >= 0) return;  // trace output
  Job& job = job_of(cinfo);
  cinfo->err->format_message(cinfo, job.message);
  // Running out of data makes libjpeg grey-fill the rest: refuse, as a truncated file.
  if (cinfo->err->msg_code == JWRN_JPEG_EOF) {
    job.truncated = true;
    std::longjmp(job.jump, 1);
  }
  ++cinfo->err->num_warnings;
  spdlog::debug("libjpeg warning: {}", job.message);
}

// Handing libjpeg every remaining row at once lets it upsample straight into the image
// instead of through its one-row spare buffer.
void allocate_rows(Job& job) {
  const std::size_t stride = std::size_t(job.width) * 3;
  job.pixels->resize(stride * job.height);
  job.rows.resize(job.height);
  for (int y = 0; y < job.height; ++y) job.rows[y] = job.pixels->data() + std::size_t(y) * stride;
}

// Only trivially destructible locals here: longjmp skips destructors.
bool run(Job& job) {
  jpeg_decompress_struct cinfo;
  cinfo.err = jpeg_std_error(&job.err);
  job.err.error_exit = on_error;
  job.err.emit_message = on_message;
  jpeg_create_decompress(&cinfo);
  if (setjmp(job.jump)) {
    jpeg_destroy_decompress(&cinfo);
    return false;
  }
  jpeg_mem_src(&cinfo, job.data, job.size);
  jpeg_read_header(&cinfo, TRUE);
  const J_COLOR_SPACE in = cinfo.jpeg_color_space;
  if (in != JCS_YCbCr && in != JCS_RGB && in != JCS_GRAYSCALE) {
    job.unsupported = true;
    jpeg_destroy_decompress(&cinfo);
    return false;
  }
  cinfo.out_color_space = JCS_RGB;  // libjpeg-turbo replicates greyscale into R, G, B
  cinfo.scale_num = 1;
  cinfo.scale_denom = job.shrink;
  jpeg_start_decompress(&cinfo);
  job.width = int(cinfo.output_width);
  job.height = int(cinfo.output_height);
  JDIMENSION first = 0, last = cinfo.output_height;
  // A C++ exception (std::bad_alloc, or one from the row callback) must not leave libjpeg's
  // memory behind; no libjpeg call is made in here, so no longjmp can cross the try.
  try {
    allocate_rows(job);
    if (job.wanted != nullptr && *job.wanted) {
      auto [f, l] = (*job.wanted)(job.width, job.height);
      first = JDIMENSION(std::clamp(f, 0, job.height));
      last = JDIMENSION(std::clamp(l, int(first), job.height));
    }
  } catch (...) {
    jpeg_destroy_decompress(&cinfo);
    throw;
  }
  // Skipped rows are still entropy-decoded (a truncated file is still refused); only their
  // IDCT, upsampling and colour conversion are saved (~20% of a 3:4 photo's decode time).
  if (first > 0) jpeg_skip_scanlines(&cinfo, first);
  while (cinfo.output_scanline < last) {
    jpeg_read_scanlines(&cinfo, job.rows.data() + cinfo.output_scanline,
                        last - cinfo.output_scanline);
  }
  // libjpeg-turbo's jpeg_skip_scanlines does not decode at all when the skip reaches the last
  // row, so a corrupt tail would pass unseen: skip to the last row, then decode that one.
  if (last < cinfo.output_height) {
    if (cinfo.output_height - last > 1) {
      jpeg_skip_scanlines(&cinfo, cinfo.output_height - last - 1);
    }
    JSAMPROW tail = job.rows[cinfo.output_height - 1];
    jpeg_read_scanlines(&cinfo, &tail, 1);
  }
  jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  return true;
}

}  // namespace

std::optional<RgbImage> decode_plain_jpeg(std::span<const std::uint8_t> bytes, int shrink,
                                          const std::string& name, const RowRange& rows) {
  RgbImage out;
  Job job;
  job.data = bytes.data();
  job.size = static_cast<unsigned long>(bytes.size());
  job.shrink = shrink;
  job.pixels = &out.pixels;
  job.wanted = &rows;
  if (run(job)) {
    out.width = job.width;
    out.height = job.height;
    return out;
  }
  if (job.unsupported) return std::nullopt;
  throw DecodeError(name, std::string(job.truncated ? "truncated file" : "corrupt image data") +
                              " (jpeg: " + job.message + ")");
}

}  // namespace lookalike::image::detail
