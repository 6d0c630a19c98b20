// read_image_file: everything that can be refused about a file is refused before its bytes are
// read, so that a FIFO cannot block, a sparse 3 GB file costs nothing, and a bomb's size is
// known from its first block.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <system_error>

#include "image/decode.h"
#include "image/formats.h"

namespace lookalike::image {
namespace {

// Enough for the header of every format head_dimensions reads, short of JPEGs with very large
// APPn segments (their size is then checked by the decoder after the whole read).
constexpr std::size_t kHeadBytes = 64 * 1024;

std::string errno_text(int err) { return std::error_code(err, std::generic_category()).message(); }

struct Fd {
  int fd;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

void check_file(const struct stat& st, const DecodeOptions& options, const std::string& name) {
  if (!S_ISREG(st.st_mode)) {
    throw DecodeError(name, std::string("not a regular file (") + file_kind(st.st_mode) + ")");
  }
  if (st.st_size > options.max_file_bytes) {
    throw DecodeError(name, "file is " + std::to_string(st.st_size) + " bytes, over the limit of " +
                                std::to_string(options.max_file_bytes) + " (the file size limit)");
  }
  if (st.st_size == 0) throw DecodeError(name, "empty file (0 bytes)");
}

// Reads up to `n` bytes at `dst`; fewer only at end of file.
std::size_t read_up_to(int fd, std::uint8_t* dst, std::size_t n, const std::string& name) {
  std::size_t got = 0;
  while (got < n) {
    const ssize_t r = ::read(fd, dst + got, n - got);
    if (r == 0) break;
    if (r < 0) {
      if (errno == EINTR) continue;
      throw DecodeError(name, "read error: " + errno_text(errno));
    }
    got += std::size_t(r);
  }
  return got;
}

std::vector<std::uint8_t> read_after_checks(const std::filesystem::path& path,
                                            const DecodeOptions& options, bool check_pixels,
                                            const std::string& name) {
  struct stat st {};
  // stat() before open(): a FIFO or a device is never opened (opening one can block or have
  // side effects). The fstat() after open() catches a file swapped in between.
  if (::stat(path.c_str(), &st) != 0)
    throw DecodeError(name, "cannot open: " + stat_failure(path, errno));
  check_file(st, options, name);
  Fd file{::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY)};
  if (file.fd < 0) throw DecodeError(name, "cannot open: " + errno_text(errno));
  if (::fstat(file.fd, &st) != 0) throw DecodeError(name, "cannot stat: " + errno_text(errno));
  check_file(st, options, name);

  const auto size = std::size_t(st.st_size);
  std::vector<std::uint8_t> bytes(std::min(size, kHeadBytes));
  bytes.resize(read_up_to(file.fd, bytes.data(), bytes.size(), name));
  if (bytes.empty()) throw DecodeError(name, "empty file (0 bytes)");
  const auto format = detail::sniff(bytes);
  if (!format) throw DecodeError(name, detail::describe_unrecognised(bytes));
  if (check_pixels) {
    if (auto dims = detail::head_dimensions(*format, bytes)) {
      detail::check_pixel_limit((*dims)[0], (*dims)[1], options, name);
    }
  }
  if (bytes.size() == kHeadBytes && size > kHeadBytes) {
    bytes.resize(size);
    bytes.resize(kHeadBytes +
                 read_up_to(file.fd, bytes.data() + kHeadBytes, size - kHeadBytes, name));
  }
  return bytes;
}

}  // namespace

const char* file_kind(unsigned mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  return "an unknown kind of file";
}

std::string stat_failure(const std::filesystem::path& path, int err) {
  if (err == ELOOP) return "symlink loop (too many levels of symbolic links)";
  struct stat link {};
  if (err == ENOENT && ::lstat(path.c_str(), &link) == 0 && S_ISLNK(link.st_mode)) {
    std::error_code ec;
    const auto target = std::filesystem::read_symlink(path, ec);
    return "broken symlink (its target " + (ec ? "?" : target.string()) + " does not exist)";
  }
  return errno_text(err);
}

namespace detail {

std::vector<std::uint8_t> read_checked(const std::filesystem::path& path,
                                       const DecodeOptions& options, bool check_pixels) {
  check_options(options);
  const std::string name = path.string();
  try {
    return read_after_checks(path, options, check_pixels, name);
  } catch (const std::bad_alloc&) {
    throw DecodeError(name, "out of memory reading the file");
  }
}

}  // namespace detail

std::vector<std::uint8_t> read_image_file(const std::filesystem::path& path,
                                          const DecodeOptions& options) {
  return detail::read_checked(path, options, true);
}

std::string sniff_format(std::span<const std::uint8_t> head) {
  const auto format = detail::sniff(head);
  return format ? detail::format_name(*format) : "";
}

}  // namespace lookalike::image
