// `lookalike serve`: the HTTP API, the web page and the metrics over one engine::Engine.
// Routes, bodies and error statuses: docs/api.md. Every route calls the engine; nothing here
// searches or indexes by itself.
//
// Threads: cpp-httplib's worker pool (`workers` threads) runs the handlers. Searches run in
// parallel; uploads, patches and deletes are serialised by the engine; concurrent uploads and
// searches by image are embedded together by the engine's batcher. So `workers` bounds how
// many requests can wait on one batch: 16 concurrent uploads need at least 16 workers. The workers
// can run at a lower CPU priority than the model's threads (ServerOptions::worker_nice).
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "engine/engine.h"

namespace lookalike::server {

struct ServerOptions {
  std::string host = "127.0.0.1";  // loopback unless told otherwise
  int port = 8080;                 // 0: any free port (the one bound is logged)
  int workers = 32;                // HTTP worker threads, 1..1024
  // Added to the worker threads' nice value (0..19; 0, the default: same priority as the model's
  // threads). The forward pass is what every upload waits for; at equal priority on 2 cores the
  // request threads (decoding, searching, answering) take cores from its OpenMP team, which then
  // waits at each barrier for a thread that has none. bench_server --worker-nice 10 against 0,
  // MobileNetV2 (bench/README.md): uploads/s at 4 clients 161-200 against 116-138, at 1 client
  // 106-139 against 96-122; but at 16 clients the p99 rose from 135-239 ms to 147-562 ms, and
  // searches by id that arrive during a forward pass get a tenth of a core. Off by default:
  // worth it where uploads dominate.
  int worker_nice = 0;
  std::size_t max_upload_bytes = std::size_t(20) << 20;  // request body limit (413 above)
  std::string api_key;         // non-empty: writes need it (and reads too when private_reads)
  bool private_reads = false;  // --private
  std::vector<std::string> cors_origins;  // empty: no CORS headers; "*" allowed
  // Host names (the Host header without its port) that requests may name; "*": any. Empty: when
  // `host` is a loopback address, 127.0.0.1, localhost and ::1 only (a page on another site
  // whose name a DNS rebinding points at 127.0.0.1 would otherwise read and write the
  // collection through the user's browser, as Jupyter's local_hostnames guards against); any
  // otherwise. The CLI takes them from --allowed-host, else $LOOKALIKE_ALLOWED_HOSTS.
  std::vector<std::string> allowed_hosts;
  int read_timeout_s = 10;  // one recv() may wait this long
  int write_timeout_s = 10;
  // A client must send a whole request (headers and body) within this many seconds of the
  // connection's previous response (or its opening), else the connection is closed, so that a
  // client trickling bytes cannot hold a worker (server/request_deadline.h). 20 MB at 4 Mbit/s
  // takes 40 s. Sending the response is not counted: a slow download is never cut off.
  int request_timeout_s = 60;
  // After SIGTERM / SIGINT, requests in flight get this long to finish; then the remaining
  // connections are closed (a slow client cannot hold up a restart). Acknowledged writes are
  // durable either way.
  int shutdown_timeout_s = 30;
  int keep_alive_max = 10'000;  // requests per connection (cpp-httplib's default is 5)
  int keep_alive_timeout_s = 5;
  std::filesystem::path web_dir;  // development: serve the page from here, not the binary
  // Called once the socket is bound, with the port (for tests and logs).
  std::function<void(int port)> on_listening;
};

// Binds, then loads the collection and the model in the background while already answering
// /healthz (and 503 on /readyz and /v1); serves until SIGTERM or SIGINT, then stops accepting,
// finishes the requests in flight, saves the index cache and returns 0. Throws
// std::runtime_error naming host:port when the socket cannot be bound. A failure to load the
// engine (bad collection, missing model) is logged and the server exits 1 without serving.
int serve(const engine::EngineOptions& engine_options, const ServerOptions& options);

}  // namespace lookalike::server
