#include "server/metrics.h"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <map>
#include <mutex>
#include <set>
#include <sstream>

#include "engine/engine.h"

namespace lookalike::server {

namespace {
const std::string kOtherMethod = "other";
// Seconds. Requests span 0.1 ms (health, search by id) to seconds (an upload of a large photo
// on a busy machine); embeds 5 ms .. 1 s on a CPU.
const prometheus::Histogram::BucketBoundaries kRequestBuckets = {
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
const prometheus::Histogram::BucketBoundaries kStageBuckets = {
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1};
}  // namespace

struct Metrics::Impl {
  std::shared_ptr<prometheus::Registry> registry = std::make_shared<prometheus::Registry>();
  prometheus::Family<prometheus::Counter>& requests =
      prometheus::BuildCounter()
          .Name("lookalike_http_requests_total")
          .Help("HTTP requests by route pattern, method and status")
          .Register(*registry);
  prometheus::Family<prometheus::Histogram>& durations =
      prometheus::BuildHistogram()
          .Name("lookalike_http_request_duration_seconds")
          .Help("HTTP request duration by route pattern")
          .Register(*registry);
  prometheus::Histogram& embed =
      prometheus::BuildHistogram()
          .Name("lookalike_embed_duration_seconds")
          .Help("Embedding one query or upload (forward pass and batcher wait)")
          .Register(*registry)
          .Add({}, kStageBuckets);
  prometheus::Histogram& search = prometheus::BuildHistogram()
                                      .Name("lookalike_index_search_duration_seconds")
                                      .Help("Index search and catalog read of one query")
                                      .Register(*registry)
                                      .Add({}, kStageBuckets);
  prometheus::Gauge& images = prometheus::BuildGauge()
                                  .Name("lookalike_collection_images")
                                  .Help("Images in the collection's index")
                                  .Register(*registry)
                                  .Add({});
  prometheus::Family<prometheus::Gauge>& build = prometheus::BuildGauge()
                                                     .Name("lookalike_build_info")
                                                     .Help("Version and configuration; always 1")
                                                     .Register(*registry);
  std::mutex build_mu;
  prometheus::Gauge* build_series = nullptr;  // under build_mu
  std::map<std::string, std::string> build_labels;

  prometheus::Counter& request_count(const std::string& route, const std::string& method,
                                     int status) {
    // Any token is a valid HTTP method: others share one series, so that clients cannot grow
    // the label set without bound.
    static const std::set<std::string> kMethods = {"GET",   "HEAD",   "POST",   "PUT",
                                                   "PATCH", "DELETE", "OPTIONS"};
    const std::string& m = kMethods.count(method) ? method : kOtherMethod;
    // Family::Add returns the existing series for known labels (thread-safe in the family).
    return requests.Add({{"route", route}, {"method", m}, {"status", std::to_string(status)}});
  }
};

Metrics::Metrics() : impl_(std::make_unique<Impl>()) {}
Metrics::~Metrics() = default;

void Metrics::request(const std::string& route, const std::string& method, int status,
                      double seconds) {
  impl_->request_count(route, method, status).Increment();
  impl_->durations.Add({{"route", route}}, kRequestBuckets).Observe(seconds);
}

void Metrics::unmatched(const std::string& method, int status) {
  impl_->request_count("unmatched", method, status).Increment();
}

void Metrics::embed(double seconds) { impl_->embed.Observe(seconds); }
void Metrics::index_search(double seconds) { impl_->search.Observe(seconds); }
void Metrics::set_collection_images(std::int64_t n) { impl_->images.Set(static_cast<double>(n)); }

void Metrics::set_build_info(const std::string& model, const std::string& metric,
                             const std::string& index) {
  std::map<std::string, std::string> labels = {{"version", LOOKALIKE_VERSION},
                                               {"model", model},
                                               {"metric", metric},
                                               {"index", index},
                                               {"allocator", engine::allocator_name()}};
  std::lock_guard lock(impl_->build_mu);
  if (impl_->build_series != nullptr && labels == impl_->build_labels) return;
  if (impl_->build_series != nullptr) impl_->build.Remove(impl_->build_series);
  impl_->build_series = &impl_->build.Add(labels);
  impl_->build_series->Set(1);
  impl_->build_labels = std::move(labels);
}

std::string Metrics::render() const {
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, impl_->registry->Collect());
  return out.str();
}

}  // namespace lookalike::server
