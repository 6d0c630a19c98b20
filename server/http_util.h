// Request parsing, JSON responses, errors as {"error": {"code", "message"}} with the status of
// docs/api.md, the API key check, CORS, and the 404/405 distinction for unrouted requests.
#pragma once

#include <httplib.h>

#include <cstdint>
#include <exception>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <regex>
#include <set>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

namespace lookalike::server {

// A request the server refuses with `status` and a machine-readable `code`.
class HttpError : public std::runtime_error {
 public:
  HttpError(int status, std::string code, const std::string& message)
      : std::runtime_error(message), status(status), code(std::move(code)) {}
  int status;
  std::string code;
};
// 400 bad_request: a malformed body or parameter; the message names it.
class BadRequest : public HttpError {
 public:
  explicit BadRequest(const std::string& message) : HttpError(400, "bad_request", message) {}
};

// The (key, value) pairs of a request target's query string ("/p?a=1&where=c=d" -> (a, 1),
// (where, c=d)), split at each pair's first '=', percent-decoded ('+' is a space).
std::vector<std::pair<std::string, std::string>> query_pairs(const std::string& target);

// Decimal integer in [lo, hi]; BadRequest "<name>: ..." otherwise.
std::int64_t parse_int(const std::string& text, const std::string& name, std::int64_t lo,
                       std::int64_t hi);
// A finite number; BadRequest otherwise.
float parse_float(const std::string& text, const std::string& name);
// body[name] as an integer in [lo, hi]; BadRequest otherwise.
std::int64_t json_int(const nlohmann::json& body, const std::string& name, std::int64_t lo,
                      std::int64_t hi);
// JSON in a request nests at most this deep (a flat object is 1). nlohmann::json copies, merges
// and dumps recursively: a body of 600 KB nested 100,000 deep overflowed the stack. Metadata
// itself is held to engine::kMaxMetadataDepth.
inline constexpr int kMaxRequestJsonDepth = 64;
// `text` as JSON, refused while parsing (before any deep value is built) when it nests deeper
// than kMaxRequestJsonDepth; BadRequest "<field>: ..." naming the parse error otherwise.
nlohmann::json parse_json_text(const std::string& text, const std::string& field);
// The body as JSON (parse_json_text); BadRequest for an empty body.
nlohmann::json parse_json_body(const httplib::Request& req);
std::span<const std::uint8_t> as_bytes(const std::string& s);
// 400 when empty; 415 unsupported_media_type when the bytes are not a supported image format
// (sniffed: image::sniff_format; never the file name or Content-Type).
void require_image(std::span<const std::uint8_t> bytes, const std::string& field);
std::string mime_of_format(const std::string& format);  // "jpeg" -> "image/jpeg", ...

// Retry-After of a 503 collection_locked (another process writes the collection).
inline constexpr int kBusyRetryAfterS = 5;

void send_json(httplib::Response& res, int status, const nlohmann::json& body);
// Maps an exception to the status of docs/api.md and writes the error body; 500s are logged.
void send_error(httplib::Response& res, std::exception_ptr error, const httplib::Request& req);

// Throws HttpError 401 when `key` is set and the request carries none (Authorization: Bearer,
// the scheme in any case, or X-API-Key), 403 when it carries another. Constant-time comparison.
void check_api_key(const std::string& key, const httplib::Request& req);

// The Content-Length header as a number (past 2^64 - 1: that maximum); none when absent.
// BadRequest for a value that is not 1*DIGIT, or two that differ.
std::optional<std::uint64_t> content_length(const httplib::Request& req);
// Checks how a request's body is sent before cpp-httplib reads it, which it does before any
// handler runs: 411 length_required for a chunked body or a POST, PUT or PATCH without a
// Content-Length (httplib would read to the connection's end, unbounded), 415
// unsupported_content_encoding for a compressed body (httplib would unpack it past the upload
// limit), 400 for a malformed Content-Length, 413 over `max_upload_bytes` (httplib would read
// and drop that many bytes first; 2^64 - 1 of them for "-1"): as HttpError. Returns true when
// the request may go on but carries a body httplib does not read (a GET with a Content-Length),
// which must not be taken for the connection's next request.
bool check_body_framing(const httplib::Request& req, std::size_t max_upload_bytes);

// The routes and their methods, to tell 405 (known path, other method) from 404.
class RouteTable {
 public:
  void add(const std::string& pattern, const std::string& method);
  std::set<std::string> methods_for(const std::string& path) const;  // empty: unknown path

 private:
  struct Route {
    std::string pattern;
    std::regex regex;
    std::set<std::string> methods;
  };
  std::vector<Route> routes_;
};

// 405 method_not_allowed; send_error sets the `Allow` header from `allow`.
class MethodNotAllowed : public HttpError {
 public:
  MethodNotAllowed(const std::string& message, std::string allow)
      : HttpError(405, "method_not_allowed", message), allow(std::move(allow)) {}
  std::string allow;
};

// Throws MethodNotAllowed for a known path asked with a method none of its routes takes (HEAD
// goes with GET, OPTIONS with every route: the preflight handler answers it). Called before
// check_body_framing: the method decides, whatever the body's framing (a PUT without
// Content-Length is 405, not 411).
void check_method(const RouteTable& table, const httplib::Request& req);

// The JSON error for a response httplib produced itself: 404 (or 405 with Allow when the path
// is known), 413 over the upload limit (415 for its 8,192-byte limit on form bodies), 400 for
// a request it could not parse.
void handle_unrouted(const RouteTable& table, const httplib::Request& req, httplib::Response& res,
                     std::size_t max_upload_bytes);
// The host names a request may name in its Host header (ServerOptions::allowed_hosts, with
// the loopback default applied for `bind_host`); empty: any.
std::vector<std::string> effective_allowed_hosts(const std::string& bind_host,
                                                 const std::vector<std::string>& allowed);
// Throws HttpError 403 "host_not_allowed" unless the Host header's name (port dropped, case
// ignored) is in `allowed` (empty: any). Requests without Host (HTTP/1.0) pass.
void check_host(const std::vector<std::string>& allowed, const httplib::Request& req);
// Throws HttpError 403 "cross_origin" for a write from another site: an Origin header that is
// neither this server's own (the Host or X-Forwarded-Host header's) nor configured with
// --cors-origin. A browser sends a multipart POST from any page without asking (no CORS
// preflight), so without this any site a user visits could add or delete images on a server
// started without --api-key. Requests without Origin (curl, scripts) pass.
void check_write_origin(const std::vector<std::string>& origins, const httplib::Request& req);
// Access-Control-Allow-Origin when the request's Origin is configured (or "*" is); Vary: Origin
// whenever the answer depends on it.
void add_cors(const std::vector<std::string>& origins, const httplib::Request& req,
              httplib::Response& res);
void preflight(const std::vector<std::string>& origins, const RouteTable& table,
               const httplib::Request& req, httplib::Response& res);

}  // namespace lookalike::server
