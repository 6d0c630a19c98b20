#include "server/request_deadline.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <spdlog/spdlog.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <charconv>
#include <filesystem>
#include <set>
#include <vector>

namespace lookalike::server {

namespace {

using Clock = std::chrono::steady_clock;

std::string peer_key(const std::string& addr, int port) {
  return addr + " " + std::to_string(port);
}

struct Connection {
  int fd;
  ino_t inode;
  std::string peer;  // peer_key of the remote end
};

// The process's connected TCP sockets (IPv4 and IPv6) and their peers.
std::vector<Connection> tcp_connections() {
  std::vector<Connection> out;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd", ec)) {
    const auto name = entry.path().filename().string();
    int fd = -1;
    if (std::from_chars(name.data(), name.data() + name.size(), fd).ec != std::errc()) continue;
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode)) continue;
    int type = 0;
    socklen_t len = sizeof(type);
    if (::getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0 || type != SOCK_STREAM) continue;
    std::string addr;
    int port = 0;
    if (!socket_address(fd, true, addr, port)) continue;  // a listener, or not IP
    out.push_back({fd, st.st_ino, peer_key(addr, port)});
  }
  return out;
}

}  // namespace

bool socket_address(int fd, bool peer, std::string& addr, int& port) {
  sockaddr_storage a{};
  socklen_t len = sizeof(a);
  auto* sa = reinterpret_cast<sockaddr*>(&a);
  if ((peer ? ::getpeername(fd, sa, &len) : ::getsockname(fd, sa, &len)) != 0) return false;
  char text[INET6_ADDRSTRLEN] = {};
  if (a.ss_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(&a);
    ::inet_ntop(AF_INET, &in->sin_addr, text, sizeof(text));
    port = ntohs(in->sin_port);
  } else if (a.ss_family == AF_INET6) {
    const auto* in = reinterpret_cast<const sockaddr_in6*>(&a);
    ::inet_ntop(AF_INET6, &in->sin6_addr, text, sizeof(text));
    port = ntohs(in->sin6_port);
  } else {
    return false;
  }
  addr = text;
  return true;
}

RequestDeadline::RequestDeadline(std::chrono::seconds limit)
    : limit_(limit), thread_([this] { watch(); }) {}

RequestDeadline::~RequestDeadline() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

void RequestDeadline::begin(const std::string& addr, int port) {
  std::lock_guard lock(mu_);
  ++busy_[peer_key(addr, port)];
}

void RequestDeadline::end(const std::string& addr, int port) {
  const auto key = peer_key(addr, port);
  std::lock_guard lock(mu_);
  if (auto it = busy_.find(key); it != busy_.end() && --it->second <= 0) busy_.erase(it);
  last_end_[key] = Clock::now();
}

int RequestDeadline::close_all() {
  int n = 0;
  for (const auto& c : tcp_connections()) n += ::shutdown(c.fd, SHUT_RDWR) == 0 ? 1 : 0;
  return n;
}

void RequestDeadline::watch() {
  std::unique_lock lock(mu_);
  while (!wake_.wait_for(lock, std::chrono::seconds(1), [this] { return stop_; })) {
    lock.unlock();
    const auto connections = tcp_connections();  // outside the lock: handlers go on meanwhile
    lock.lock();
    const auto now = Clock::now();
    std::set<ino_t> live;
    std::set<std::string> peers;
    for (const auto& c : connections) {
      live.insert(c.inode);
      peers.insert(c.peer);
      auto& seen = clock_start_.try_emplace(c.inode, now).first->second;
      // Bytes waiting unread: the connection is queued for a worker (a whole request may be
      // there), not being read by one. Its clock starts when a worker takes it.
      int unread = 0;
      if (::ioctl(c.fd, FIONREAD, &unread) != 0) continue;
      if (unread > 0) seen = now;
      if (busy_.count(c.peer)) continue;
      auto since = seen;
      if (auto it = last_end_.find(c.peer); it != last_end_.end())
        since = std::max(since, it->second);
      if (now - since < limit_) continue;
      if (::shutdown(c.fd, SHUT_RDWR) == 0) {
        spdlog::warn("closed the connection from {}: no complete request in {} s", c.peer,
                     limit_.count());
      }
    }
    std::erase_if(clock_start_, [&](const auto& kv) { return !live.count(kv.first); });
    std::erase_if(last_end_, [&](const auto& kv) { return !peers.count(kv.first); });
  }
}

}  // namespace lookalike::server
