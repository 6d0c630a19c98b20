// The connection loop of `serve`: cpp-httplib's Server with its per-connection loop replaced
// (Server::process_and_close_socket is virtual), for three things httplib 0.11.4 gives no hook
// for:
//  - A Range header httplib cannot parse ("bytes=1-0", "foo", "items=0-1") made it answer 416
//    "HTTP error" before routing, on every route, uploads and deletes included. RFC 9110 14.2:
//    such a header is ignored. The loop drops it before httplib reads it.
//  - The request deadline (RequestDeadline) must cover receiving a request only. A handler's end
//    is not the response's: httplib writes the response after the handler returns, and a client
//    reading a large file slowly was cut off at the deadline mid-file. The loop tells the
//    deadline that the connection waits for its next request once the response is written.
//  - A response can close the connection (close_after_response): httplib kept it open whatever
//    the response's Connection header said, and a request body it had not read (refused before
//    reading) was then taken for the next request.
#pragma once

#include <httplib.h>

#include "server/request_deadline.h"

namespace lookalike::server {

// Asks the connection loop to close the connection once the response to the request being
// handled on this thread is written, after reading and dropping what the client still sends
// for a moment (so that it sees the response, not a reset). For responses sent before the
// request's body was read. Only on a worker thread of HttpServer.
void close_after_response();

class HttpServer : public httplib::Server {
 public:
  explicit HttpServer(RequestDeadline& deadline) : deadline_(deadline) {}

 private:
  // httplib's loop (keep-alive count and timeout, stop on shutdown) over ConnectionStream.
  bool process_and_close_socket(socket_t sock) override;
  // Waits up to the keep-alive timeout for the next request; false when none comes or the
  // server stops meanwhile.
  bool wait_for_request(int fd) const;

  RequestDeadline& deadline_;
};

}  // namespace lookalike::server
