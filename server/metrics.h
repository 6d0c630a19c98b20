// Prometheus metrics of the server, through prometheus-cpp's registry and text serializer
// (exposition format 0.0.4). Names and base units follow Prometheus' naming guide: seconds,
// bytes, `_total` for counters.
//   lookalike_http_requests_total{route,method,status}        counter
//   lookalike_http_request_duration_seconds{route}            histogram (route handlers only)
//   lookalike_embed_duration_seconds                          histogram (query and upload embeds)
//   lookalike_index_search_duration_seconds                   histogram (index search + catalog)
//   lookalike_collection_images                               gauge (at scrape time)
//   lookalike_build_info{version,model,metric,index}          gauge, always 1
#pragma once

#include <cstdint>
#include <memory>
#include <string>

namespace lookalike::server {

class Metrics {
 public:
  Metrics();
  ~Metrics();
  // route: the route pattern ("/v1/images/{id}"), never the raw path (unbounded labels); a
  // method outside GET, HEAD, POST, PUT, PATCH, DELETE and OPTIONS is counted as "other".
  void request(const std::string& route, const std::string& method, int status, double seconds);
  // A response sent outside a route handler (404, 405, 411, 413, 414, 400, ...): counted as
  // route "unmatched", but not observed in the duration histogram, whose clock starts in the
  // handler (0-second samples would pull its quantiles down).
  void unmatched(const std::string& method, int status);
  void embed(double seconds);
  void index_search(double seconds);
  void set_collection_images(std::int64_t n);
  // Sets build_info's labels; a change (the collection created by the first upload: metric and
  // index were "-") replaces the series.
  void set_build_info(const std::string& model, const std::string& metric,
                      const std::string& index);
  std::string render() const;  // the text format

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace lookalike::server
