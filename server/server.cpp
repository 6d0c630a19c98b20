#include "server/server.h"

// Debian's cpp-httplib is a compiled library (libcpp-httplib.so), so its CPPHTTPLIB_* defaults
// are fixed in it; TCP_NODELAY is set through the setter instead (see ../shared/STACK.md).
#include <httplib.h>
#include <omp.h>
#include <pthread.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <thread>

#include "image/decode.h"
#include "image/thumbnail.h"
#include "model/embedding_model.h"
#include "server/connection.h"
#include "server/http_util.h"
#include "server/metrics.h"
#include "server/openapi.h"
#include "server/request_deadline.h"
#include "server/thumbnail_cache.h"
#include "server/web_assets.h"

namespace lookalike::server {

namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;
using engine::EngineError;

constexpr int kDefaultThumbnail = 256;
constexpr int kMaxListLimit = 1000;
// /v1/stats lists this many categories at most, the most frequent first: the engine's facet
// limit (Engine::facet). The web page builds its category filter from them.
constexpr int kMaxCategories = 10'000;

// Everything a handler needs; shared by all worker threads.
struct State {
  ServerOptions options;
  engine::EngineOptions engine_options;
  std::unique_ptr<engine::Engine> engine;  // set once, before `ready`
  std::atomic<bool> ready{false};
  std::string load_error;
  Metrics metrics;
  ThumbnailCache thumbnails{64 << 20};
  std::unique_ptr<RequestDeadline> deadline;  // set before the first request
  std::vector<std::string> allowed_hosts;     // effective_allowed_hosts; empty: any
};

// ---- responses -----------------------------------------------------------------------------

json record_json(const store::ImageRecord& r) {
  json j = {{"id", r.id},
            {"path", r.path},
            {"name", std::filesystem::path(r.path).filename().string()},
            {"width", r.width},
            {"height", r.height},
            {"bytes", r.bytes},
            {"content_hash", r.content_hash},
            {"added_at_ms", r.added_at_ms},
            {"updated_at_ms", r.updated_at_ms},
            {"file_url", "/v1/images/" + std::to_string(r.id) + "/file"},
            {"thumbnail_url", "/v1/images/" + std::to_string(r.id) +
                                  "/thumbnail?size=" + std::to_string(kDefaultThumbnail)}};
  auto meta = json::parse(r.metadata, nullptr, false);
  j["metadata"] = meta.is_discarded() ? json::object() : meta;
  return j;
}

// How the search ran: "index" or "exact-subset", the effective parameters, filter matches.
json plan_json(const store::SearchReport& r) {
  json out = {{"method", r.plan.method},
              {"params", store::search_params_json(r.plan.params)},
              {"candidates", r.plan.candidates}};
  if (r.filter_matches >= 0) {
    out["filter_matches"] = r.filter_matches;
    out["filter_ms"] = r.filter_ms;
  }
  return out;
}

json search_json(const engine::SearchResponse& s) {
  json results = json::array();
  for (const auto& h : s.results) {
    json r = record_json(h.image);
    r["rank"] = h.rank;
    r["score"] = h.score;
    results.push_back(std::move(r));
  }
  json out = {
      {"query", {{"name", s.query}, {"id", s.query_id ? json(*s.query_id) : json(nullptr)}}},
      {"generation", s.generation},
      {"results", std::move(results)},
      {"plan", plan_json(s.report)},
      {"timings",
       {{"decode_ms", s.timings.decode_ms},
        {"embed_ms", s.timings.embed_ms},
        {"search_ms", s.timings.search_ms},
        {"total_ms", s.timings.total_ms}}}};
  if (!s.warnings.empty()) out["warnings"] = s.warnings;  // Engine::filter_warnings
  return out;
}

// ---- request parsing -----------------------------------------------------------------------

// Every value of a multipart form field, then of the query string. The query string is read
// from the raw target, split at the first '=' of each pair: httplib's own parse keeps only
// the text after the last '=', and `where=category=shoes` must mean what it says.
std::vector<std::string> params(const httplib::Request& req, const std::string& name) {
  std::vector<std::string> out;
  if (req.is_multipart_form_data()) {
    auto [b, e] = req.files.equal_range(name);
    for (auto it = b; it != e; ++it) out.push_back(it->second.content);
  }
  for (const auto& [key, value] : query_pairs(req.target)) {
    if (key == name) out.push_back(value);
  }
  return out;
}

// The first value of a parameter (see params).
std::optional<std::string> param(const httplib::Request& req, const std::string& name) {
  auto all = params(req, name);
  if (all.empty()) return std::nullopt;
  return all.front();
}

// `where` as JSON: {"category": "shoes", "color": ["red", "blue"], "price": {"lt": 50}} (a
// scalar: equality; an array: IN; an object of lt/lte/gt/gte: a range), or ["field=value",
// "price<50", ...] in the CLI's --where syntax (store::parse_where).
store::MetadataFilter where_from_json(const json& w) {
  store::MetadataFilter f;
  auto text = [](const std::string& where, const json& v) {
    if (v.is_object() || v.is_array() || v.is_null()) {
      throw BadRequest(where + ": expected a string, number or boolean");
    }
    if (v.is_number_float()) {
      // 42.0 must match a stored 42: equality compares the stored value's text, and a JSON
      // client may send any number as a double.
      const double d = v.get<double>();
      if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.0e15) {
        return std::to_string(static_cast<std::int64_t>(d));
      }
    }
    return v.is_string() ? v.get<std::string>() : v.dump();
  };
  try {
    if (w.is_object()) {
      for (const auto& [field, value] : w.items()) {
        if (value.is_array()) {
          std::vector<std::string> values;
          for (const auto& v : value) values.push_back(text("where." + field + "[]", v));
          store::add_in(f, field, values);
        } else if (value.is_object()) {
          static const std::pair<const char*, store::FilterOp> ops[] = {
              {"lt", store::FilterOp::Lt},
              {"lte", store::FilterOp::Le},
              {"gt", store::FilterOp::Gt},
              {"gte", store::FilterOp::Ge}};
          if (value.empty()) throw BadRequest("where." + field + ": empty range object");
          for (const auto& [op, bound] : value.items()) {
            const auto* it = std::find_if(std::begin(ops), std::end(ops),
                                          [&](const auto& o) { return op == o.first; });
            if (it == std::end(ops)) {
              throw BadRequest("where." + field + "." + op + ": expected lt, lte, gt or gte");
            }
            if (!bound.is_number()) {
              throw BadRequest("where." + field + "." + op + ": expected a number");
            }
            store::add_range(f, field, it->second, bound.get<double>());
          }
        } else {
          store::add_term(f, field, text("where." + field, value));
        }
      }
    } else if (w.is_array()) {
      std::vector<std::string> terms;
      for (const auto& t : w) {
        if (!t.is_string()) throw BadRequest("where: expected \"field=value\" strings");
        terms.push_back(t.get<std::string>());
      }
      f = store::parse_where(terms);
    } else if (!w.is_null()) {
      throw BadRequest("where: expected an object {\"field\": value} or [\"field=value\"]");
    }
  } catch (const store::StoreError& e) {
    throw BadRequest(e.what());
  }
  return f;
}

store::MetadataFilter where_from_params(const httplib::Request& req) {
  try {
    return store::parse_where(params(req, "where"));
  } catch (const store::StoreError& e) {
    throw BadRequest(e.what());
  }
}

// Ids are 1, 2, ...: digits that are not one (0, past int64) name no image, as "-1" or "abc"
// (no route) do: 404 for all of them.
std::int64_t id_from_path(const httplib::Request& req) {
  const auto text = req.matches[1].str();
  try {
    return parse_int(text, "id", 1, std::numeric_limits<std::int64_t>::max());
  } catch (const BadRequest&) {
    throw EngineError(EngineError::Kind::NotFound, "no image with id " + text.substr(0, 40));
  }
}

// ---- handlers ------------------------------------------------------------------------------

// nprobe, ef_search, rerank: from the JSON body, else the form or query string.
index::SearchParams search_params(const httplib::Request& req, const json& body) {
  index::SearchParams p;
  auto take = [&](const char* name, int& out) {
    if (body.contains(name)) {
      out = static_cast<int>(json_int(body, name, 1, 1 << 20));
    } else if (auto v = param(req, name)) {
      out = static_cast<int>(parse_int(*v, name, 1, 1 << 20));
    }
  };
  take("nprobe", p.nprobe);
  take("ef_search", p.ef_search);
  take("rerank", p.rerank);
  return p;
}

void observe(State& st, const engine::SearchResponse& s) {
  if (s.timings.embed_ms > 0) st.metrics.embed(s.timings.embed_ms / 1000.0);
  st.metrics.index_search(s.timings.search_ms / 1000.0);
}

// The answer to a search on a server whose collection does not exist yet (created by the first
// upload): an empty collection, so no results. The query is not decoded.
engine::SearchResponse nothing_found(const std::string& query) {
  engine::SearchResponse out;
  out.query = query;
  return out;
}

// POST /v1/search: multipart upload (field `image`), or JSON {"id": N}.
void search(State& st, const httplib::Request& req, httplib::Response& res) {
  engine::SearchRequest r;
  auto& e = *st.engine;
  if (req.is_multipart_form_data()) {
    if (!req.has_file("image")) throw BadRequest("image: missing (a multipart file field)");
    if (auto k = param(req, "k")) r.k = static_cast<int>(parse_int(*k, "k", 1, store::kMaxTopK));
    if (auto m = param(req, "min_score")) r.min_score = parse_float(*m, "min_score");
    r.where = where_from_params(req);
    r.params = search_params(req, json::object());
    auto file = req.get_file_value("image");
    const auto bytes = as_bytes(file.content);
    require_image(bytes, "image");
    const auto name = file.filename.empty() ? "image" : file.filename;
    if (!e.adopt_collection()) {
      send_json(res, 200, search_json(nothing_found(name)));
      return;
    }
    auto out = e.search_bytes(bytes, name, r);
    observe(st, out);
    send_json(res, 200, search_json(out));
    return;
  }
  const json body = parse_json_body(req);
  if (!body.is_object()) throw BadRequest("body: expected a JSON object with \"id\"");
  if (!body.contains("id")) {
    throw BadRequest("id: missing (send JSON {\"id\": N}, or a multipart upload with image)");
  }
  const auto id = json_int(body, "id", 1, std::numeric_limits<std::int64_t>::max());
  if (body.contains("k")) {
    r.k = static_cast<int>(json_int(body, "k", 1, store::kMaxTopK));
  } else if (auto k = param(req, "k")) {
    r.k = static_cast<int>(parse_int(*k, "k", 1, store::kMaxTopK));
  }
  if (body.contains("min_score")) {
    if (!body["min_score"].is_number()) throw BadRequest("min_score: expected a number");
    r.min_score = body["min_score"].get<float>();
  } else if (auto m = param(req, "min_score")) {
    r.min_score = parse_float(*m, "min_score");
  }
  if (body.contains("include_self")) {
    if (!body["include_self"].is_boolean()) throw BadRequest("include_self: expected true/false");
    r.include_self = body["include_self"].get<bool>();
  } else if (auto v = param(req, "include_self")) {
    if (*v != "true" && *v != "false") {
      throw BadRequest("include_self: expected true or false, got '" + v->substr(0, 40) + "'");
    }
    r.include_self = *v == "true";
  }
  r.where = body.contains("where") ? where_from_json(body["where"]) : where_from_params(req);
  r.params = search_params(req, body);
  if (!e.adopt_collection()) {  // no images yet: no such id (the engine's error names the folder)
    throw EngineError(EngineError::Kind::NotFound, "no image with id " + std::to_string(id));
  }
  auto out = e.search_id(id, r);
  observe(st, out);
  send_json(res, 200, search_json(out));
}

// POST /v1/images: multipart `image` plus optional `metadata`, `description`, `category`.
void upload(State& st, const httplib::Request& req, httplib::Response& res) {
  if (!req.is_multipart_form_data() || !req.has_file("image")) {
    throw BadRequest("image: missing (send multipart/form-data with a file field \"image\")");
  }
  json metadata = json::object();
  if (auto m = param(req, "metadata"); m && !m->empty()) {
    metadata = parse_json_text(*m, "metadata");
    if (!metadata.is_object()) throw BadRequest("metadata: expected a JSON object");
  }
  for (const char* field : {"description", "category"}) {
    if (auto v = param(req, field); v && !v->empty()) metadata[field] = *v;
  }
  auto file = req.get_file_value("image");
  const auto bytes = as_bytes(file.content);
  require_image(bytes, "image");
  auto added =
      st.engine->add_image(bytes, file.filename.empty() ? "image" : file.filename, metadata);
  if (added.created) st.metrics.embed(added.timings.embed_ms / 1000.0);
  send_json(res, added.created ? 201 : 200,
            {{"created", added.created},
             {"repaired", added.repaired},
             {"image", record_json(added.record)}});
}

void list_images(State& st, const httplib::Request& req, httplib::Response& res) {
  std::int64_t after = 0;
  int limit = 50;
  if (auto a = param(req, "after")) {
    after = parse_int(*a, "after", 0, std::numeric_limits<std::int64_t>::max());
  }
  if (auto l = param(req, "limit"))
    limit = static_cast<int>(parse_int(*l, "limit", 1, kMaxListLimit));
  const auto where = where_from_params(req);
  json images = json::array();
  std::vector<store::ImageRecord> page;
  if (st.engine->adopt_collection()) page = st.engine->list(after, limit, where);
  for (const auto& r : page) images.push_back(record_json(r));
  json next = static_cast<int>(page.size()) == limit ? json(page.back().id) : json(nullptr);
  send_json(res, 200, {{"images", std::move(images)}, {"next_after", next}});
}

store::ImageRecord existing(State& st, std::int64_t id) {
  std::optional<store::ImageRecord> rec;
  if (st.engine->adopt_collection()) rec = st.engine->get(id);
  if (!rec)
    throw EngineError(EngineError::Kind::NotFound, "no image with id " + std::to_string(id));
  return *rec;
}

void get_image(State& st, const httplib::Request& req, httplib::Response& res) {
  send_json(res, 200, record_json(existing(st, id_from_path(req))));
}

// The bytes of an image's file, found through the engine (Engine::image_file: an upload's file
// is in this collection's uploads/, wherever the collection has moved), after checking that a
// stored upload is intact (409 stored_file_damaged otherwise: its bytes would be wrong).
std::vector<std::uint8_t> image_bytes(State& st, const store::ImageRecord& rec) {
  st.engine->check_stored_file(rec);
  try {
    return image::read_image_file(st.engine->image_file(rec));
  } catch (const image::DecodeError& e) {
    // The catalog names a file that is gone or changed since it was indexed.
    throw EngineError(EngineError::Kind::NotFound,
                      "image " + std::to_string(rec.id) + ": file not readable: " + e.reason());
  }
}

void get_file(State& st, const httplib::Request& req, httplib::Response& res) {
  const auto rec = existing(st, id_from_path(req));
  auto bytes = image_bytes(st, rec);
  const auto format = image::sniff_format(bytes);
  const auto size = static_cast<std::int64_t>(bytes.size());
  // Edited in place, as ignore_ranges does: httplib reads them when it writes the response.
  auto& ranges = const_cast<httplib::Request&>(req).ranges;
  // One range at most: httplib builds every range's part in memory, overlaps included, so 300
  // "0-" ranges of a 6.7 MB file made a 2 GB response. A server may ignore Range (RFC 9110
  // 14.2): several ranges get the whole file, once.
  if (ranges.size() > 1) ranges.clear();
  for (auto& [first, last] : ranges) {
    // (first, -1): from first; (-1, n): the last n bytes; httplib checks first <= last.
    const bool satisfiable = first >= 0 ? first < size : last > 0;
    if (!satisfiable) {
      res.set_header("Content-Range", "bytes */" + std::to_string(size));
      throw HttpError(416, "range_not_satisfiable",
                      "Range: the file has " + std::to_string(size) + " bytes");
    }
    // httplib's Content-Range repeats the last byte asked for; it must name the last one sent.
    if (first >= 0 && last >= size) last = size - 1;
  }
  res.status = ranges.empty() ? 200 : 206;  // httplib cuts the body to the range
  res.set_header("Cache-Control", "private, max-age=3600");
  res.set_content(std::string(bytes.begin(), bytes.end()), mime_of_format(format));
}

void get_thumbnail(State& st, const httplib::Request& req, httplib::Response& res) {
  const auto rec = existing(st, id_from_path(req));
  int size = kDefaultThumbnail;
  if (auto s = param(req, "size")) {
    size =
        static_cast<int>(parse_int(*s, "size", image::kMinThumbnailSize, image::kMaxThumbnailSize));
  }
  const std::string key = rec.content_hash + "/" + std::to_string(size);
  // Before the cache: a damaged upload answers as its file does, whatever was cached before.
  st.engine->check_stored_file(rec);
  auto jpeg = st.thumbnails.get(key);
  if (!jpeg) {
    auto bytes = image_bytes(st, rec);
    jpeg = std::make_shared<const std::string>([&] {
      auto t = image::thumbnail_jpeg(bytes, st.engine->image_file(rec).string(), size);
      return std::string(t.begin(), t.end());
    }());
    st.thumbnails.put(key, jpeg);
  }
  res.status = 200;
  res.set_header("Cache-Control", "private, max-age=3600");
  res.set_content(*jpeg, "image/jpeg");
}

void patch_image(State& st, const httplib::Request& req, httplib::Response& res) {
  const auto id = id_from_path(req);
  const json body = parse_json_body(req);
  if (!body.is_object()) throw BadRequest("body: expected a JSON object (a merge patch)");
  if (!st.engine->adopt_collection() || !st.engine->update_metadata(id, body, true)) {
    throw EngineError(EngineError::Kind::NotFound, "no image with id " + std::to_string(id));
  }
  send_json(res, 200, record_json(existing(st, id)));
}

void delete_image(State& st, const httplib::Request& req, httplib::Response& res) {
  const auto id = id_from_path(req);
  if (!st.engine->adopt_collection()) {
    throw EngineError(EngineError::Kind::NotFound, "no image with id " + std::to_string(id));
  }
  auto removed = st.engine->remove({id}, {});
  if (removed.removed.empty()) {
    throw EngineError(EngineError::Kind::NotFound, "no image with id " + std::to_string(id));
  }
  send_json(res, 200, {{"removed", id}});
}

void stats(State& st, const httplib::Request&, httplib::Response& res) {
  auto& e = *st.engine;
  json j = {{"model", e.model().card().name},
            {"model_id", e.model().id()},
            {"dim", e.model().dim()},
            {"threads", e.model().threads()}};
  if (e.adopt_collection()) {
    const auto& c = e.collection();
    j["images"] = c.index_size();
    j["generation"] = c.generation();
    j["metric"] = c.config().metric;
    j["index"] = c.config().factory;
    json categories = json::object();
    const auto counts = e.facet("category", kMaxCategories);
    for (const auto& [value, n] : counts) categories[value] = n;
    j["categories"] = std::move(categories);
    j["categories_truncated"] = counts.size() >= static_cast<std::size_t>(kMaxCategories);
  } else {
    j["images"] = 0;
    j["generation"] = 0;
    j["categories"] = json::object();
    j["categories_truncated"] = false;
  }
  const auto b = e.batcher().stats();
  j["batcher"] = {
      {"requests", b.requests}, {"images", b.images}, {"forward_passes", b.forward_passes}};
  send_json(res, 200, j);
}

// build_info's metric and index (set at load, "-" without a collection, which the first upload
// creates) and the image count, as they are now.
void refresh_collection_metrics(State& st) {
  std::string metric = "-", factory = "-";
  if (st.engine->adopt_collection()) {
    const auto& c = st.engine->collection();
    metric = c.config().metric;
    factory = c.config().factory;
    st.metrics.set_collection_images(c.index_size());
  }
  st.metrics.set_build_info(st.engine->model().card().name, metric, factory);
}

// ---- routing -------------------------------------------------------------------------------

// Byte ranges (Range: bytes=...) apply to an image's file only: httplib applies them to every
// response, which cut JSON bodies and errors into fragments.
bool serves_ranges(const std::string& route) { return route == "/v1/images/{id}/file"; }

void ignore_ranges(const httplib::Request& req) {
  // httplib hands handlers a const Request, but the object is process_request's own local (not
  // const), and its ranges are read only when the response is written, after this.
  const_cast<httplib::Request&>(req).ranges.clear();
}

enum class Need { Nothing, Ready, Read, Write };

// Wraps a handler: readiness, the API key, errors as JSON with the right status, metrics.
template <class F>
httplib::Server::Handler route(State& st, std::string name, Need need, F f) {
  return
      [&st, name = std::move(name), need, f](const httplib::Request& req, httplib::Response& res) {
        // Busy until the response is written (HttpServer then calls end()), not until this
        // returns: the deadline covers receiving a request, never sending its response.
        st.deadline->begin(req.remote_addr, req.remote_port);
        const auto start = Clock::now();
        try {
          if (name != "/healthz" && name != "/readyz") check_host(st.allowed_hosts, req);
          if (need != Need::Nothing && !st.ready.load()) {
            throw HttpError(
                503, "not_ready",
                st.load_error.empty() ? "loading the collection and the model" : st.load_error);
          }
          if (need == Need::Write || (need == Need::Read && st.options.private_reads)) {
            check_api_key(st.options.api_key, req);
          }
          if (need == Need::Write) check_write_origin(st.options.cors_origins, req);
          f(st, req, res);
          if (res.status == -1) res.status = 200;  // set_content leaves it to httplib otherwise
        } catch (...) {
          send_error(res, std::current_exception(), req);
        }
        if (!serves_ranges(name) || res.status != 206) ignore_ranges(req);
        add_cors(st.options.cors_origins, req, res);
        const double s = std::chrono::duration<double>(Clock::now() - start).count();
        st.metrics.request(name, req.method, res.status, s);
      };
}

void add_routes(httplib::Server& svr, State& st, RouteTable& table) {
  auto reg = [&](const char* method, const std::string& pattern, const std::string& name, Need need,
                 auto f) {
    table.add(pattern, method);
    auto h = route(st, name, need, f);
    if (std::string(method) == "GET") svr.Get(pattern, h);
    if (std::string(method) == "POST") svr.Post(pattern, h);
    if (std::string(method) == "PATCH") svr.Patch(pattern, h);
    if (std::string(method) == "DELETE") svr.Delete(pattern, h);
  };
  const std::string img = R"(/v1/images/(\d+))";
  reg("POST", "/v1/search", "/v1/search", Need::Read, search);
  reg("POST", "/v1/images", "/v1/images", Need::Write, upload);
  reg("GET", "/v1/images", "/v1/images", Need::Read, list_images);
  reg("GET", img, "/v1/images/{id}", Need::Read, get_image);
  reg("PATCH", img, "/v1/images/{id}", Need::Write, patch_image);
  reg("DELETE", img, "/v1/images/{id}", Need::Write, delete_image);
  reg("GET", img + "/file", "/v1/images/{id}/file", Need::Read, get_file);
  reg("GET", img + "/thumbnail", "/v1/images/{id}/thumbnail", Need::Read, get_thumbnail);
  reg("GET", "/v1/stats", "/v1/stats", Need::Read, stats);
  reg("GET", "/healthz", "/healthz", Need::Nothing,
      [](State&, const httplib::Request&, httplib::Response& res) {
        send_json(res, 200, {{"status", "ok"}});
      });
  reg("GET", "/readyz", "/readyz", Need::Ready,
      [](State&, const httplib::Request&, httplib::Response& res) {
        send_json(res, 200, {{"status", "ready"}});
      });
  reg("GET", "/metrics", "/metrics", Need::Nothing,
      [](State& st, const httplib::Request&, httplib::Response& res) {
        if (st.ready.load()) refresh_collection_metrics(st);
        res.set_content(st.metrics.render(), "text/plain; version=0.0.4; charset=utf-8");
      });
  const ApiAccess access{!st.options.api_key.empty(), st.options.private_reads,
                         !st.allowed_hosts.empty()};
  reg("GET", "/openapi.json", "/openapi.json", Need::Nothing,
      [access](State&, const httplib::Request&, httplib::Response& res) {
        send_json(res, 200, openapi_document(LOOKALIKE_VERSION, access));
      });
  reg("GET", "/docs", "/docs", Need::Nothing,
      [access](State&, const httplib::Request&, httplib::Response& res) {
        res.set_content(openapi_html(openapi_document(LOOKALIKE_VERSION, access)),
                        "text/html; charset=utf-8");
      });
  auto asset = [](State& st, const httplib::Request& req, httplib::Response& res) {
    const std::string name = req.matches.size() > 1 ? req.matches[1].str() : "index.html";
    if (auto a = find_asset(st.options.web_dir, name)) {
      res.set_header("Cache-Control", "no-cache");
      res.set_content(a->data, a->mime);
      return;
    }
    throw EngineError(EngineError::Kind::NotFound, "no asset " + name);
  };
  reg("GET", "/", "/", Need::Nothing, asset);
  reg("GET", R"(/assets/([A-Za-z0-9_.-]+))", "/assets/{name}", Need::Nothing, asset);
}

// ---- start, load, stop ---------------------------------------------------------------------

// httplib's ThreadPool whose threads, before their first request, limit OpenMP to themselves
// (so that no library code a request reaches starts an OpenMP team beside the forward pass's:
// docs/engine.md, "OpenMP teams") and lower their own CPU priority by `nice`
// (ServerOptions::worker_nice). Per thread: on Linux each thread has its own nice value, and
// threads the workers start (libvips') inherit it; the model's threads are started by the
// loader thread and the batcher, at the process's priority.
class NicedThreadPool : public httplib::TaskQueue {
 public:
  NicedThreadPool(std::size_t threads, int nice) : pool_(threads), nice_(nice) {}
  void enqueue(std::function<void()> fn) override {
    pool_.enqueue([fn = std::move(fn), nice = nice_] {
      thread_local const bool prepared = prepare_worker(nice);
      (void)prepared;
      fn();
    });
  }
  void shutdown() override { pool_.shutdown(); }

 private:
  // Once per worker thread. Returns whether its priority is as asked.
  static bool prepare_worker(int nice) {
    omp_set_num_threads(1);  // this thread's own setting (OpenMP's nthreads-var is per thread)
    if (nice <= 0) return true;
    const auto tid = static_cast<id_t>(::gettid());
    errno = 0;
    const int now = ::getpriority(PRIO_PROCESS, tid);
    if (errno != 0 || ::setpriority(PRIO_PROCESS, tid, std::min(19, now + nice)) != 0) {
      spdlog::debug("worker thread: cannot lower its priority: {}", std::strerror(errno));
      return false;
    }
    return true;
  }
  httplib::ThreadPool pool_;
  int nice_;
};

void load_engine(State& st) {
  try {
    st.engine = engine::Engine::open(st.engine_options, engine::Access::Write);
    auto& m = st.engine->model();  // load now, not on the first request
    // One forward pass, so that the first request does not pay oneDNN's kernel set-up.
    const int s = m.card().input_size;
    std::vector<float> zeros(static_cast<std::size_t>(3) * s * s, 0.0f);
    st.engine->batcher().embed(zeros.data(), 1);
    refresh_collection_metrics(st);
    if (!st.engine->adopt_collection()) {
      // Not an error (docs/api.md: the first upload creates it), but a mistyped -c looks the
      // same: say so before the `ready:` line.
      spdlog::info("no collection at {} yet: the first upload creates it",
                   st.engine_options.collection.string());
    }
    st.ready.store(true);
    const char* wait = std::getenv("OMP_WAIT_POLICY");  // engine::use_short_omp_spin
    const char* spin = std::getenv("GOMP_SPINCOUNT");
    spdlog::info(
        "ready: collection {}, model {} ({} threads, OMP_WAIT_POLICY={}, GOMP_SPINCOUNT={})",
        st.engine_options.collection.string(), m.id(), m.threads(),
        wait != nullptr ? wait : "unset", spin != nullptr ? spin : "unset");
  } catch (const std::exception& e) {
    st.load_error = e.what();
    spdlog::error("{}", e.what());
  }
}

// Answers a request refused before its body was read (check_body_framing) and closes its
// connection after the response: the unread body must not be taken for the next request.
void refuse_unread(State& st, const httplib::Request& req, httplib::Response& res,
                   std::exception_ptr error) {
  send_error(res, error, req);
  // RFC 9110 15.5.16: a 415 for a content coding says which codings would do.
  if (res.status == 415) res.set_header("Accept-Encoding", "identity");
  res.set_header("Connection", "close");
  close_after_response();
  add_cors(st.options.cors_origins, req, res);
  st.metrics.unmatched(req.method, res.status);
}

}  // namespace

int serve(const engine::EngineOptions& engine_options, const ServerOptions& options) {
  // SIGTERM / SIGINT are taken by one thread (sigwait); every other thread, including
  // httplib's workers and LibTorch's, inherits the blocked mask from here.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);  // a client that hangs up must not kill the server

  State st;
  st.options = options;
  st.allowed_hosts = effective_allowed_hosts(options.host, options.allowed_hosts);
  st.engine_options = engine_options;
  st.deadline = std::make_unique<RequestDeadline>(
      std::chrono::seconds(std::max(1, options.request_timeout_s)));
  HttpServer svr(*st.deadline);
  const auto workers = static_cast<std::size_t>(options.workers);
  const int nice = std::clamp(options.worker_nice, 0, 19);
  svr.new_task_queue = [workers, nice] { return new NicedThreadPool(workers, nice); };
  // Without it small responses on a keep-alive connection wait for the delayed ACK (~40 ms).
  svr.set_tcp_nodelay(true);
  svr.set_keep_alive_max_count(static_cast<std::size_t>(options.keep_alive_max));
  svr.set_keep_alive_timeout(options.keep_alive_timeout_s);
  svr.set_read_timeout(options.read_timeout_s, 0);
  svr.set_write_timeout(options.write_timeout_s, 0);
  svr.set_payload_max_length(options.max_upload_bytes);
  // cpp-httplib listens with a backlog of 5 (CPPHTTPLIB_LISTEN_BACKLOG, fixed in Debian's
  // compiled library): 16 clients connecting at once overflowed it (TcpExtListenOverflows), and
  // each dropped SYN is retried by the client's kernel after 1 s, so bench_server's 16-client
  // rows had ~1.2 s p99s. The socket is taken here (httplib's own options are kept) and listened
  // on again with the system's maximum once bound: listen(2) on a listening socket resizes its
  // backlog.
  int listen_fd = -1;
  // SO_REUSEADDR only: httplib's default also sets SO_REUSEPORT, with which a second server on
  // the same port started fine and the kernel split the connections between the two.
  svr.set_socket_options([&listen_fd](socket_t sock) {
    int yes = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    listen_fd = sock;
  });
  // Before httplib reads a body (check_body_framing). A refused request's body is left unread,
  // so its connection is closed after the response.
  // The method first: a method the route does not take is 405 whatever its body's framing.
  RouteTable table;
  svr.set_pre_routing_handler([&st, &table](const httplib::Request& req, httplib::Response& res) {
    try {
      check_method(table, req);
      if (check_body_framing(req, st.options.max_upload_bytes)) close_after_response();
      return httplib::Server::HandlerResponse::Unhandled;
    } catch (...) {
      refuse_unread(st, req, res, std::current_exception());
      return httplib::Server::HandlerResponse::Handled;
    }
  });
  // "Expect: 100-continue" (curl sends it for bodies over 1 MB): httplib answers 100 before the
  // pre-routing handler runs, and the client then sends a body that is refused unread; refused
  // here, the client sends none.
  svr.set_expect_100_continue_handler(
      [&st, &table](const httplib::Request& req, httplib::Response& res) {
        try {
          check_method(table, req);
          check_body_framing(req, st.options.max_upload_bytes);
          return 100;
        } catch (...) {
          refuse_unread(st, req, res, std::current_exception());
          return res.status;
        }
      });
  // httplib adds Keep-Alive after the handlers, also beside our Connection: close.
  svr.set_post_routing_handler([](const httplib::Request&, httplib::Response& res) {
    if (res.get_header_value("Connection") == "close") res.headers.erase("Keep-Alive");
  });
  add_routes(svr, st, table);
  // httplib calls this for every response with status >= 400, ours included: those already
  // carry a JSON body and pass through; httplib's own (404 unrouted, 413, 400) get one here.
  svr.set_error_handler(httplib::Server::HandlerWithResponse(
      [&table, &st](const httplib::Request& req, httplib::Response& res) {
        if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
        ignore_ranges(req);
        handle_unrouted(table, req, res, st.options.max_upload_bytes);
        add_cors(st.options.cors_origins, req, res);
        st.metrics.unmatched(req.method, res.status);
        return httplib::Server::HandlerResponse::Handled;
      }));
  // CORS preflight for the configured origins; 204 with the allowed methods.
  svr.Options(R"(.*)", [&st, &table](const httplib::Request& req, httplib::Response& res) {
    preflight(st.options.cors_origins, table, req, res);
  });

  const int port = options.port == 0
                       ? svr.bind_to_any_port(options.host)
                       : (svr.bind_to_port(options.host, options.port) ? options.port : -1);
  if (port < 0) {
    throw std::runtime_error(options.host + ":" + std::to_string(options.port) +
                             ": cannot listen (address in use, or not an address of this host)");
  }
  if (listen_fd >= 0 && ::listen(listen_fd, SOMAXCONN) != 0) {
    spdlog::warn("cannot enlarge the listen backlog: {}", std::strerror(errno));
  }
  spdlog::info("listening on http://{}:{}/ ({} workers at nice +{})", options.host, port,
               options.workers, nice);
  if (options.on_listening) options.on_listening(port);

  // Loading takes seconds; meanwhile the workers answer /healthz and 503 on everything else.
  std::thread loader([&st] { load_engine(st); });
  std::atomic<bool> stopped{false};
  std::mutex done_mu;
  std::condition_variable done_cv;
  bool listen_done = false;  // under done_mu: the workers have finished
  std::thread stopper([&] {
    int sig = 0;
    sigwait(&stop_signals, &sig);
    if (stopped.exchange(true)) return;
    spdlog::info("{}: finishing requests in flight", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    while (!svr.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    svr.stop();
    std::unique_lock lock(done_mu);
    if (!done_cv.wait_for(lock, std::chrono::seconds(std::max(0, options.shutdown_timeout_s)),
                          [&] { return listen_done; })) {
      spdlog::warn("{} connections still open after {} s; closing them", st.deadline->close_all(),
                   options.shutdown_timeout_s);
    }
  });
  std::thread watcher([&] {  // a failed load ends the server (exit 1)
    loader.join();
    if (!st.ready.load() && !stopped.exchange(true)) {
      while (!svr.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
      svr.stop();
    }
  });
  // Returns after stop(): the listening socket is closed, then the worker pool finishes every
  // accepted connection's current request (ThreadPool::shutdown drains its queue).
  svr.listen_after_bind();
  {
    std::lock_guard lock(done_mu);
    listen_done = true;
  }
  done_cv.notify_all();
  watcher.join();
  stopped.store(true);
  // The signal is blocked in every thread and taken by the stopper's sigwait: nothing terminates.
  // NOLINTNEXTLINE(bugprone-bad-signal-to-kill-thread)
  pthread_kill(stopper.native_handle(), SIGTERM);  // wakes the stopper if it still waits
  stopper.join();
  if (!st.ready.load()) return 1;
  try {
    if (st.engine->has_collection() &&
        st.engine->collection().mode() == store::Collection::Mode::Write) {
      st.engine->checkpoint();
    }
  } catch (const std::exception& e) {
    spdlog::warn("saving the index cache: {} (it is rebuilt on the next start)", e.what());
  }
  spdlog::info("stopped");
  return 0;
}

}  // namespace lookalike::server
