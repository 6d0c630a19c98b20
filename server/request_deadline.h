// Ends connections whose client is too slow to send a request. cpp-httplib's read timeout
// bounds each recv(), not a request: a client that sent one header line every 3 s held a worker
// thread for as long as it liked, and 40 such connections took every worker of `serve` (review of
// 2026-12-05; tests/e2e/server_api.py now checks that a trickling client is cut off).
//
// A watchdog thread looks at the process's connected TCP sockets once a second (/proc/self/fd).
// A connection whose peer has no request in a handler, and has had none complete for `limit`
// (counted from its previous response's end, or from when the watchdog last saw bytes waiting
// unread on it: a connection queued behind busy workers is not being read, and keeps its place),
// is shut down (shutdown(2)): the worker's read fails and the worker is free. httplib reads the
// headers and the body before it calls a handler, so the limit covers sending a whole request.
// A request is in a handler from the handler's start until its response is written (the
// connection loop, server/connection.h, calls end()): a client reading a large response slowly is
// not cut off (a 14 MB file read slowly was, when end() came as the handler returned). Idle
// keep-alive connections are closed sooner by httplib's keep-alive timeout.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <string>
#include <thread>

namespace lookalike::server {

// The numeric address (inet_ntop) and port of a socket's remote end (peer) or its own; false
// for a socket that is not connected over IP. The peers RequestDeadline is told of are named so.
bool socket_address(int fd, bool peer, std::string& addr, int& port);

class RequestDeadline {
 public:
  explicit RequestDeadline(std::chrono::seconds limit);
  ~RequestDeadline();  // stops the watchdog
  RequestDeadline(const RequestDeadline&) = delete;
  RequestDeadline& operator=(const RequestDeadline&) = delete;

  // A handler starts a request from this peer (Request::remote_addr and remote_port: the
  // numeric address and the port, socket_address's); its response has been written.
  void begin(const std::string& addr, int port);
  void end(const std::string& addr, int port);
  // Shuts down every client connection now (used when the shutdown grace has passed). Returns
  // how many.
  int close_all();

 private:
  void watch();

  std::chrono::seconds limit_;
  std::mutex mu_;
  std::condition_variable wake_;
  bool stop_ = false;
  std::map<std::string, int> busy_;  // peer -> handlers running
  std::map<std::string, std::chrono::steady_clock::time_point> last_end_;  // peer -> last end
  std::map<ino_t, std::chrono::steady_clock::time_point> clock_start_;     // socket -> clock start
  std::thread thread_;
};

}  // namespace lookalike::server
