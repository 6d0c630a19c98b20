#include "server/connection.h"

#include <poll.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace lookalike::server {

namespace {

using Clock = std::chrono::steady_clock;

thread_local bool t_close_after_response = false;

constexpr std::size_t kBufferBytes = 16 * 1024;
// Header lines longer than this pass unexamined (httplib refuses lines over
// CPPHTTPLIB_HEADER_MAX_LENGTH, 8,192 bytes, itself).
constexpr std::size_t kMaxExaminedLine = 8 * 1024;
// How long a connection closed before its request's body was read reads and drops what the
// client still sends (see close_after_response).
constexpr auto kLinger = std::chrono::seconds(2);

int to_ms(time_t sec, time_t usec) { return static_cast<int>(sec * 1000 + usec / 1000); }

// poll(2) for `events` up to `ms`; true when the socket is ready (or hung up: the read or
// write then says so).
bool wait_for(int fd, short events, int ms) {
  pollfd p{fd, events, 0};
  int n = 0;
  do {
    n = ::poll(&p, 1, ms);
  } while (n < 0 && errno == EINTR);
  return n > 0;
}

// A "Range:" header line (any case) whose value httplib would refuse with 416 before routing.
// Values with '%' count as refused too: httplib may percent-decode header values first, and a
// Range that is dropped is only ignored (RFC 9110 14.2: a server may ignore Range).
bool unparsable_range(std::string_view line) {
  constexpr std::string_view kName = "range:";
  if (line.size() < kName.size() || strncasecmp(line.data(), kName.data(), kName.size()) != 0) {
    return false;
  }
  auto value = line.substr(kName.size());
  const auto first = value.find_first_not_of(" \t");
  const auto last = value.find_last_not_of(" \t\r\n");
  if (first == std::string_view::npos || last < first) return true;
  value = value.substr(first, last - first + 1);
  httplib::Ranges ranges;
  return value.find('%') != std::string_view::npos ||
         !httplib::detail::parse_range_header(std::string(value), ranges);
}

// A connected socket as httplib's Stream (what its SocketStream does, with the same timeouts)
// that, while a request's head is read, drops Range header lines httplib cannot parse.
class ConnectionStream final : public httplib::Stream {
 public:
  ConnectionStream(int fd, int read_ms, int write_ms)
      : fd_(fd), read_ms_(read_ms), write_ms_(write_ms), raw_(kBufferBytes) {}

  // The next bytes read start a request: its request line, then header lines to examine.
  void start_request() { mode_ = Mode::RequestLine; }
  bool has_buffered() const { return pos_ < end_ || out_pos_ < out_.size(); }

  bool is_readable() const override { return has_buffered() || wait_for(fd_, POLLIN, read_ms_); }
  bool is_writable() const override { return wait_for(fd_, POLLOUT, write_ms_); }

  ssize_t read(char* ptr, size_t size) override {
    while (mode_ != Mode::Body && out_pos_ == out_.size()) {
      const auto r = next_head_line();
      if (r <= 0) return r;
    }
    if (out_pos_ < out_.size()) return take(out_, out_pos_, out_.size(), ptr, size);
    if (pos_ == end_ && size >= raw_.size()) return receive(ptr, size);  // a body's large read
    if (pos_ == end_) {
      const auto n = fill();
      if (n <= 0) return n;
    }
    return take(raw_, pos_, end_, ptr, size);
  }

  ssize_t write(const char* ptr, size_t size) override {
    if (!is_writable()) return -1;
    ssize_t n = 0;
    do {
      n = ::send(fd_, ptr, size, MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    return n;
  }

  void get_remote_ip_and_port(std::string& ip, int& port) const override {
    socket_address(fd_, true, ip, port);
  }
  void get_local_ip_and_port(std::string& ip, int& port) const override {
    socket_address(fd_, false, ip, port);
  }
  socket_t socket() const override { return fd_; }

 private:
  enum class Mode { RequestLine, Headers, Body };

  template <class Buffer>
  static ssize_t take(const Buffer& from, std::size_t& pos, std::size_t end, char* ptr,
                      size_t size) {
    const auto n = std::min(size, end - pos);
    std::memcpy(ptr, from.data() + pos, n);
    pos += n;
    return static_cast<ssize_t>(n);
  }

  // recv(2) after waiting up to the read timeout: -1 when nothing came in time.
  ssize_t receive(char* ptr, size_t size) {
    if (!wait_for(fd_, POLLIN, read_ms_)) return -1;
    ssize_t n = 0;
    do {
      n = ::recv(fd_, ptr, size, 0);
    } while (n < 0 && errno == EINTR);
    return n;
  }

  // Appends what the socket has to raw_ (moving the unread part to its start when full).
  ssize_t fill() {
    if (pos_ == end_) {
      pos_ = end_ = 0;
    } else if (end_ == raw_.size()) {
      std::memmove(raw_.data(), raw_.data() + pos_, end_ - pos_);
      end_ -= pos_;
      pos_ = 0;
    }
    const auto n = receive(raw_.data() + end_, raw_.size() - end_);
    if (n > 0) end_ += static_cast<std::size_t>(n);
    return n;
  }

  // The next line of the request's head into out_ (left empty for a dropped line), or the end
  // of the head: returns 1, or fill()'s result when the socket ends or times out first.
  ssize_t next_head_line() {
    out_.clear();
    out_pos_ = 0;
    for (;;) {
      const auto* begin = raw_.data() + pos_;
      const auto* end = raw_.data() + end_;
      const auto* nl = std::find(begin, end, '\n');
      if (nl != end) {
        const std::string_view line(begin, static_cast<std::size_t>(nl + 1 - begin));
        pos_ += line.size();
        examine(line);
        return 1;
      }
      if (end_ - pos_ >= kMaxExaminedLine) {  // too long to be a header httplib takes
        mode_ = Mode::Body;
        return 1;
      }
      const auto n = fill();
      if (n <= 0) {
        if (pos_ == end_) return n;
        mode_ = Mode::Body;  // hand out the partial line; the next read reports the end
        return 1;
      }
    }
  }

  void examine(std::string_view line) {
    if (mode_ == Mode::RequestLine) {
      mode_ = Mode::Headers;
    } else if (line == "\r\n" || line == "\n") {
      mode_ = Mode::Body;  // the head ends; the body, if any, passes as it is
    } else if (unparsable_range(line)) {
      return;
    }
    out_.assign(line);
  }

  int fd_;
  int read_ms_;
  int write_ms_;
  Mode mode_ = Mode::Body;
  std::vector<char> raw_;  // bytes from the socket: [pos_, end_) not handed out yet
  std::size_t pos_ = 0;
  std::size_t end_ = 0;
  std::string out_;  // the head line being handed out: [out_pos_, size) left
  std::size_t out_pos_ = 0;
};

// Closing a socket with unread bytes makes the kernel send a reset, and a client still sending
// its body may then lose the response it was sent: stop writing, then read and drop what comes
// for a moment, as servers' "lingering close" does.
void linger(int fd) {
  ::shutdown(fd, SHUT_WR);
  const auto until = Clock::now() + kLinger;
  std::vector<char> sink(kBufferBytes);
  for (auto now = Clock::now(); now < until; now = Clock::now()) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - now);
    if (!wait_for(fd, POLLIN, static_cast<int>(left.count()) + 1)) return;
    if (::recv(fd, sink.data(), sink.size(), 0) <= 0) return;
  }
}

}  // namespace

void close_after_response() { t_close_after_response = true; }

bool HttpServer::wait_for_request(int fd) const {
  // In slices, so that a stopping server does not wait out the keep-alive timeout.
  const auto until = Clock::now() + std::chrono::seconds(keep_alive_timeout_sec_);
  while (svr_sock_ != INVALID_SOCKET) {
    if (wait_for(fd, POLLIN, 100)) return true;
    if (Clock::now() >= until) return false;
  }
  return false;
}

bool HttpServer::process_and_close_socket(socket_t sock) {
  ConnectionStream strm(sock, to_ms(read_timeout_sec_, read_timeout_usec_),
                        to_ms(write_timeout_sec_, write_timeout_usec_));
  std::string addr;
  int port = 0;
  strm.get_remote_ip_and_port(addr, port);
  bool ret = false;
  t_close_after_response = false;
  for (auto left = keep_alive_max_count_; left > 0 && svr_sock_ != INVALID_SOCKET; --left) {
    if (!strm.has_buffered() && !wait_for_request(sock)) break;
    strm.start_request();
    bool connection_closed = false;
    ret = process_request(strm, left == 1, connection_closed, nullptr);
    deadline_.end(addr, port);  // the response is written: the next request's time starts
    if (!ret || connection_closed || t_close_after_response) break;
  }
  if (t_close_after_response) linger(sock);
  t_close_after_response = false;
  ::shutdown(sock, SHUT_RDWR);
  ::close(sock);
  return ret;
}

}  // namespace lookalike::server
