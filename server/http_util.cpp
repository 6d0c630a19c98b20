#include "server/http_util.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <strings.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <charconv>
#include <cmath>
#include <iterator>
#include <limits>
#include <random>
#include <regex>

#include "engine/engine.h"
#include "image/decode.h"
#include "image/image.h"
#include "model/embedding_model.h"
#include "store/catalog.h"

namespace lookalike::server {

using json = nlohmann::json;

namespace {

std::string percent_decode(std::string_view s) {
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '+') {
      out += ' ';
    } else if (s[i] == '%' && i + 2 < s.size() && hex(s[i + 1]) >= 0 && hex(s[i + 2]) >= 0) {
      out += static_cast<char>(hex(s[i + 1]) * 16 + hex(s[i + 2]));
      i += 2;
    } else {
      out += s[i];
    }
  }
  return out;
}

}  // namespace

std::vector<std::pair<std::string, std::string>> query_pairs(const std::string& target) {
  std::vector<std::pair<std::string, std::string>> out;
  const auto q = target.find('?');
  if (q == std::string::npos) return out;
  std::string_view rest(target);
  rest.remove_prefix(q + 1);
  while (!rest.empty()) {
    const auto amp = rest.find('&');
    const auto pair = rest.substr(0, amp);
    if (!pair.empty()) {
      const auto eq = pair.find('=');
      out.emplace_back(percent_decode(pair.substr(0, eq)),
                       eq == std::string_view::npos ? "" : percent_decode(pair.substr(eq + 1)));
    }
    if (amp == std::string_view::npos) break;
    rest.remove_prefix(amp + 1);
  }
  return out;
}

std::int64_t parse_int(const std::string& text, const std::string& name, std::int64_t lo,
                       std::int64_t hi) {
  std::int64_t v = 0;
  const auto* end = text.data() + text.size();
  auto [p, ec] = std::from_chars(text.data(), end, v);
  if (text.empty() || ec != std::errc() || p != end) {
    throw BadRequest(name + ": expected an integer, got '" + text.substr(0, 40) + "'");
  }
  if (v < lo || v > hi) {
    throw BadRequest(name + ": must be between " + std::to_string(lo) + " and " +
                     std::to_string(hi) + ", got " + text);
  }
  return v;
}

float parse_float(const std::string& text, const std::string& name) {
  try {
    std::size_t used = 0;
    const float v = std::stof(text, &used);
    if (used == text.size() && std::isfinite(v)) return v;
  } catch (const std::exception&) {
  }
  throw BadRequest(name + ": expected a number, got '" + text.substr(0, 40) + "'");
}

std::int64_t json_int(const json& body, const std::string& name, std::int64_t lo, std::int64_t hi) {
  const auto& v = body.at(name);
  if (!v.is_number_integer()) throw BadRequest(name + ": expected an integer");
  // json stores large positive numbers as unsigned: compare in the signed range first.
  if (v.is_number_unsigned() && v.get<std::uint64_t>() > static_cast<std::uint64_t>(hi)) {
    throw BadRequest(name + ": must be between " + std::to_string(lo) + " and " +
                     std::to_string(hi));
  }
  const auto n = v.get<std::int64_t>();
  if (n < lo || n > hi) {
    throw BadRequest(name + ": must be between " + std::to_string(lo) + " and " +
                     std::to_string(hi) + ", got " + std::to_string(n));
  }
  return n;
}

json parse_json_text(const std::string& text, const std::string& field) {
  struct TooDeep {};
  const json::parser_callback_t limit = [](int depth, json::parse_event_t event, json&) {
    // `depth` counts the containers around this one: 0 for the outermost.
    const bool opens =
        event == json::parse_event_t::object_start || event == json::parse_event_t::array_start;
    if (opens && depth >= kMaxRequestJsonDepth) throw TooDeep{};
    return true;
  };
  try {
    return json::parse(text, limit);
  } catch (const json::parse_error& e) {
    throw BadRequest(field + ": not valid JSON (" + e.what() + ")");
  } catch (const TooDeep&) {
    throw BadRequest(field + ": JSON nested more than " + std::to_string(kMaxRequestJsonDepth) +
                     " levels deep");
  }
}

json parse_json_body(const httplib::Request& req) {
  if (req.body.empty()) throw BadRequest("body: empty (expected JSON)");
  return parse_json_text(req.body, "body");
}

std::span<const std::uint8_t> as_bytes(const std::string& s) {
  return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}

void require_image(std::span<const std::uint8_t> bytes, const std::string& field) {
  if (bytes.empty()) throw BadRequest(field + ": empty file (0 bytes)");
  if (image::sniff_format(bytes.first(std::min(bytes.size(), image::kSniffBytes))).empty()) {
    throw HttpError(415, "unsupported_media_type",
                    field +
                        ": not a supported image (JPEG, PNG, WebP, GIF, TIFF, BMP, HEIF, "
                        "AVIF; the format is read from the bytes)");
  }
}

std::string mime_of_format(const std::string& format) {
  static const std::map<std::string, std::string> kMime = {
      {"jpeg", "image/jpeg"}, {"png", "image/png"}, {"webp", "image/webp"}, {"gif", "image/gif"},
      {"tiff", "image/tiff"}, {"bmp", "image/bmp"}, {"heif", "image/heif"}, {"avif", "image/avif"}};
  auto it = kMime.find(format);
  return it == kMime.end() ? "application/octet-stream" : it->second;
}

void send_json(httplib::Response& res, int status, const json& body) {
  res.status = status;
  // Invalid UTF-8 in stored paths or metadata is replaced, never a throw mid-response.
  res.set_content(body.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
}

namespace {

void write_error(httplib::Response& res, int status, const std::string& code,
                 const std::string& message) {
  send_json(res, status, {{"error", {{"code", code}, {"message", message}}}});
}

// A 500's cause (an errno text beside a server-side path, an SQLite message) goes to the log
// only: the client gets an incident id that finds it there.
void write_internal(httplib::Response& res, const httplib::Request& req, const std::string& cause) {
  static std::atomic<std::uint32_t> counter{std::random_device{}()};
  const auto incident = fmt::format("{:08x}", counter.fetch_add(0x9E3779B9u));  // Weyl step
  spdlog::error("{} {}: incident {}: {}", req.method, req.path, incident, cause);
  write_error(
      res, 500, "internal",
      fmt::format("internal error; the server log has the cause under incident {}", incident));
}

}  // namespace

void send_error(httplib::Response& res, std::exception_ptr error, const httplib::Request& req) {
  using engine::EngineError;
  try {
    std::rethrow_exception(error);
  } catch (const MethodNotAllowed& e) {
    res.set_header("Allow", e.allow);
    write_error(res, e.status, e.code, e.what());
  } catch (const HttpError& e) {
    write_error(res, e.status, e.code, e.what());
  } catch (const EngineError& e) {
    switch (e.kind()) {
      case EngineError::Kind::Invalid:
        write_error(res, 400, "bad_request", e.what());
        break;
      case EngineError::Kind::NotFound:
        write_error(res, 404, "not_found", e.what());
        break;
      case EngineError::Kind::ReadOnly:
        write_error(res, 403, "read_only", e.what());
        break;
      case EngineError::Kind::Busy:
        // Transient: the other process's run ends. The engine's words name the server's
        // folder, which the client is not told (as for a 500); the log has them.
        spdlog::warn("{} {}: {}", req.method, req.path, e.what());
        res.set_header("Retry-After", std::to_string(kBusyRetryAfterS));
        write_error(res, 503, "collection_locked",
                    "another lookalike process (an `index` or `reindex` run) is writing the "
                    "collection; retry when it has finished");
        break;
      case EngineError::Kind::NoSpace:
        spdlog::error("{} {}: {}", req.method, req.path, e.what());
        write_error(res, 507, "insufficient_storage",
                    "no space left on the server's disk (ENOSPC or EDQUOT): the image was not "
                    "stored; retry once space has been freed");
        break;
      case EngineError::Kind::Damaged:
        write_error(res, 409, "stored_file_damaged", e.what());
        break;
    }
  } catch (const image::DecodeError& e) {
    // The bytes passed the format sniff (require_image): a real image that cannot be used.
    write_error(res, 422, "unprocessable_image", e.what());
  } catch (const std::bad_alloc&) {
    write_internal(res, req, "out of memory");
  } catch (const std::exception& e) {
    write_internal(res, req, e.what());
  } catch (...) {
    write_internal(res, req, "unknown exception");
  }
}

void check_api_key(const std::string& key, const httplib::Request& req) {
  if (key.empty()) return;
  std::string given;
  const auto auth = req.get_header_value("Authorization");
  if (auth.size() >= 7 && strncasecmp(auth.c_str(), "Bearer ", 7) == 0) {  // RFC 9110 11.1
    given = auth.substr(7);
  } else if (req.has_header("X-API-Key")) {
    given = req.get_header_value("X-API-Key");
  } else {
    throw HttpError(401, "unauthorized",
                    "this route needs the API key (Authorization: Bearer KEY, or X-API-Key)");
  }
  // Constant time in the key's length: every byte is compared whatever differs first.
  unsigned char diff = given.size() == key.size() ? 0 : 1;
  for (std::size_t i = 0; i < key.size(); ++i) {
    diff |= static_cast<unsigned char>(key[i] ^ (i < given.size() ? given[i] : 0));
  }
  if (diff != 0) throw HttpError(403, "forbidden", "wrong API key");
}

namespace {

std::string trim(const std::string& s) {
  const auto first = s.find_first_not_of(" \t");
  if (first == std::string::npos) return "";
  return s.substr(first, s.find_last_not_of(" \t") - first + 1);
}

bool is_chunked(const httplib::Request& req) {
  auto te = req.get_header_value("Transfer-Encoding");
  std::transform(te.begin(), te.end(), te.begin(), [](unsigned char c) { return std::tolower(c); });
  return te.find("chunked") != std::string::npos;
}

// Content-Encoding other than identity: cpp-httplib unpacks gzip, deflate and br bodies itself,
// and the upload limit applies to the bytes sent (a 300 KB gzip of a 300 MB JSON body took the
// server to 2.3 GB before any check).
void check_content_encoding(const httplib::Request& req) {
  for (std::size_t i = 0; i < req.get_header_value_count("Content-Encoding"); ++i) {
    const auto value = req.get_header_value("Content-Encoding", i);
    std::size_t start = 0;
    while (start <= value.size()) {
      const auto comma = std::min(value.find(',', start), value.size());
      const auto coding = trim(value.substr(start, comma - start));
      if (!coding.empty() && strcasecmp(coding.c_str(), "identity") != 0) {
        throw HttpError(415, "unsupported_content_encoding",
                        "Content-Encoding: " + value.substr(0, 40) +
                            ": request bodies are not accepted compressed (the upload limit "
                            "applies to the bytes as they arrive): send them as they are");
      }
      start = comma + 1;
    }
  }
}

}  // namespace

std::optional<std::uint64_t> content_length(const httplib::Request& req) {
  std::optional<std::uint64_t> out;
  for (std::size_t i = 0; i < req.get_header_value_count("Content-Length"); ++i) {
    const auto text = trim(req.get_header_value("Content-Length", i));
    std::uint64_t n = 0;
    const auto* end = text.data() + text.size();
    auto [p, ec] = std::from_chars(text.data(), end, n);
    // 1*DIGIT (RFC 9110 8.6): no sign, nothing after. Past 2^64 - 1 is still a length, just
    // over any limit.
    if (ec == std::errc::result_out_of_range) n = std::numeric_limits<std::uint64_t>::max();
    if (text.empty() || p != end || (ec != std::errc() && ec != std::errc::result_out_of_range)) {
      throw BadRequest("Content-Length: expected a number of bytes, got '" + text.substr(0, 40) +
                       "'");
    }
    if (out && *out != n) {
      throw BadRequest("Content-Length: given twice with different values (" +
                       std::to_string(*out) + ", " + std::to_string(n) + ")");
    }
    out = n;
  }
  return out;
}

bool check_body_framing(const httplib::Request& req, std::size_t max_upload_bytes) {
  const auto limit = std::to_string(max_upload_bytes) + " bytes (--max-upload-mb)";
  if (is_chunked(req)) {
    throw HttpError(411, "length_required",
                    "chunked request bodies are not accepted: send a Content-Length (the upload "
                    "limit is " +
                        limit + ")");
  }
  check_content_encoding(req);
  const auto length = content_length(req);
  // The methods whose body cpp-httplib reads (detail::expect_content); without a length it
  // reads a POST, PUT or PATCH body until the client closes the connection, unbounded.
  const bool read = req.method == "POST" || req.method == "PUT" || req.method == "PATCH" ||
                    req.method == "DELETE" || req.method == "PRI";
  if (!length) {
    if (read && req.method != "DELETE") {
      throw HttpError(411, "length_required",
                      req.method +
                          " needs a Content-Length (0 for no body; chunked bodies are "
                          "not accepted)");
    }
    return false;
  }
  if (*length > max_upload_bytes) {
    throw HttpError(413, "payload_too_large",
                    "Content-Length: " + std::to_string(*length) +
                        " bytes is over the upload limit of " + limit);
  }
  return !read && *length > 0;
}

void RouteTable::add(const std::string& pattern, const std::string& method) {
  for (auto& r : routes_) {
    if (r.pattern == pattern) {
      r.methods.insert(method);
      return;
    }
  }
  routes_.push_back({pattern, std::regex(pattern), {method}});
}

std::set<std::string> RouteTable::methods_for(const std::string& path) const {
  std::set<std::string> out;
  for (const auto& r : routes_) {
    if (std::regex_match(path, r.regex)) out.insert(r.methods.begin(), r.methods.end());
  }
  return out;
}

namespace {

// The declared body length for messages; 0 when absent or not a number.
std::uint64_t content_length_or_zero(const httplib::Request& req) {
  try {
    return content_length(req).value_or(0);
  } catch (const BadRequest&) {
    return 0;
  }
}

}  // namespace

namespace {

// The methods a known path takes, comma-separated, when `method` is not one of them; none when
// it is, or when no route has this path.
std::optional<std::string> disallowed(const RouteTable& table, const std::string& method,
                                      const std::string& path) {
  const auto methods = table.methods_for(path);
  if (methods.empty() || methods.count(method)) return std::nullopt;
  std::string allow;
  for (const auto& m : methods) allow += (allow.empty() ? "" : ", ") + m;
  return allow;
}

}  // namespace

void check_method(const RouteTable& table, const httplib::Request& req) {
  if (req.method == "OPTIONS") return;  // the preflight route, on every path
  const auto& method = req.method == "HEAD" ? std::string("GET") : req.method;
  if (auto allow = disallowed(table, method, req.path)) {
    throw MethodNotAllowed(req.method + " " + req.path + ": not allowed (allowed: " + *allow + ")",
                           *allow);
  }
}

void handle_unrouted(const RouteTable& table, const httplib::Request& req, httplib::Response& res,
                     std::size_t max_upload_bytes) {
  if (res.status == 404 || res.status == 400) {
    // httplib answers 404 for a known method without a handler on this path and 400 for a
    // method it has no handlers for at all (PUT here): both are 405 on a known path.
    if (auto allow = disallowed(table, req.method, req.path)) {
      res.set_header("Allow", *allow);
      write_error(res, 405, "method_not_allowed",
                  req.method + " " + req.path + ": not allowed (allowed: " + *allow + ")");
      return;
    }
    if (res.status == 404) {
      write_error(res, 404, "not_found", "no route " + req.method + " " + req.path);
      return;
    }
  }
  const auto length = content_length_or_zero(req);
  if (res.status == 413 && length <= max_upload_bytes) {
    // httplib's own limit for form bodies (CPPHTTPLIB_FORM_URL_ENCODED_PAYLOAD_MAX_LENGTH):
    // `curl -d` sends JSON with this type unless told otherwise.
    write_error(res, 415, "unsupported_media_type",
                "Content-Type: " + req.get_header_value("Content-Type").substr(0, 60) +
                    ": such a body is limited to 8192 bytes; send JSON with Content-Type: "
                    "application/json");
  } else if (res.status == 413) {
    write_error(res, 413, "payload_too_large",
                "request body over the upload limit of " + std::to_string(max_upload_bytes) +
                    " bytes (--max-upload-mb)");
  } else if (res.status == 416) {
    write_error(res, 416, "range_not_satisfiable", "Range: not satisfiable");
  } else if (res.status == 400) {
    write_error(res, 400, "bad_request", "malformed HTTP request (headers, multipart or range)");
  } else if (res.status == 414) {
    write_error(res, 414, "uri_too_long", "request target longer than the server accepts");
  } else {
    write_error(res, res.status, "http_" + std::to_string(res.status), "HTTP error");
  }
}

namespace {

std::optional<std::string> allowed_origin(const std::vector<std::string>& origins,
                                          const httplib::Request& req) {
  if (origins.empty() || !req.has_header("Origin")) return std::nullopt;
  const auto origin = req.get_header_value("Origin");
  for (const auto& o : origins) {
    if (o == "*") return std::string("*");
    if (o == origin) return origin;
  }
  return std::nullopt;
}

}  // namespace

std::vector<std::string> effective_allowed_hosts(const std::string& bind_host,
                                                 const std::vector<std::string>& allowed) {
  if (std::find(allowed.begin(), allowed.end(), "*") != allowed.end()) return {};
  std::vector<std::string> named;  // "a,,b" in LOOKALIKE_ALLOWED_HOSTS gives an empty one
  std::copy_if(allowed.begin(), allowed.end(), std::back_inserter(named),
               [](const std::string& name) { return !name.empty(); });
  if (!named.empty()) return named;
  const bool loopback =
      bind_host == "localhost" || bind_host == "::1" || bind_host.rfind("127.", 0) == 0;
  if (!loopback) return {};
  return {"127.0.0.1", "localhost", "::1", bind_host};
}

void check_host(const std::vector<std::string>& allowed, const httplib::Request& req) {
  if (allowed.empty() || !req.has_header("Host")) return;
  const auto host = req.get_header_value("Host");
  // "name:port", "[v6]:port", "[v6]" or "name": the name without brackets and port.
  const bool bracketed = !host.empty() && host.front() == '[';
  std::string name = bracketed ? host.substr(1) : host;
  name.resize(std::min(name.size(), name.find(bracketed ? ']' : ':')));
  for (const auto& a : allowed) {
    if (a.size() == name.size() && strncasecmp(a.c_str(), name.c_str(), a.size()) == 0) return;
  }
  throw HttpError(403, "host_not_allowed",
                  "Host " + host.substr(0, 100) +
                      " is not a name of this server (a DNS rebinding guard; by default on a "
                      "loopback address the loopback names only): add it with --allowed-host "
                      "NAME or LOOKALIKE_ALLOWED_HOSTS=NAME,... (comma-separated), or allow any "
                      "with '*'");
}

void check_write_origin(const std::vector<std::string>& origins, const httplib::Request& req) {
  if (!req.has_header("Origin") || allowed_origin(origins, req)) return;
  const auto origin = req.get_header_value("Origin");
  for (const char* host_header : {"Host", "X-Forwarded-Host"}) {
    const auto host = req.get_header_value(host_header);
    if (host.empty()) continue;
    if (origin == "http://" + host || origin == "https://" + host) return;
  }
  throw HttpError(403, "cross_origin",
                  "Origin " + origin +
                      " is another site: writes are accepted from this server's own page, from "
                      "clients that send no Origin, and from origins given with --cors-origin");
}

void add_cors(const std::vector<std::string>& origins, const httplib::Request& req,
              httplib::Response& res) {
  const bool any = std::find(origins.begin(), origins.end(), "*") != origins.end();
  // A cache must not give one origin's answer (with or without the header) to another.
  if (!origins.empty() && !any) res.set_header("Vary", "Origin");
  if (auto o = allowed_origin(origins, req)) res.set_header("Access-Control-Allow-Origin", *o);
}

void preflight(const std::vector<std::string>& origins, const RouteTable& table,
               const httplib::Request& req, httplib::Response& res) {
  auto methods = table.methods_for(req.path);
  if (methods.empty()) {
    write_error(res, 404, "not_found", "no route OPTIONS " + req.path);
    return;
  }
  std::string allow = "OPTIONS";
  for (const auto& m : methods) allow += ", " + m;
  res.status = 204;
  res.set_header("Allow", allow);
  if (!origins.empty()) res.set_header("Vary", "Origin");
  // An origin that is not configured gets no Access-Control-* headers: the browser then
  // refuses the cross-origin request itself.
  if (auto o = allowed_origin(origins, req)) {
    res.set_header("Access-Control-Allow-Origin", *o);
    res.set_header("Access-Control-Allow-Methods", allow);
    res.set_header("Access-Control-Allow-Headers", "Authorization, X-API-Key, Content-Type");
    res.set_header("Access-Control-Max-Age", "600");
  }
}

}  // namespace lookalike::server
