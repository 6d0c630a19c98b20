// A byte-bounded LRU cache of thumbnails (JPEG bytes), keyed by content hash and size, so a
// changed file never serves a stale thumbnail. Thread-safe.
#pragma once

#include <cstddef>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>

namespace lookalike::server {

class ThumbnailCache {
 public:
  explicit ThumbnailCache(std::size_t max_bytes) : max_bytes_(max_bytes) {}

  std::shared_ptr<const std::string> get(const std::string& key) {
    std::lock_guard lock(mu_);
    auto it = map_.find(key);
    if (it == map_.end()) return nullptr;
    order_.splice(order_.begin(), order_, it->second);  // most recently used first
    return it->second->second;
  }

  void put(const std::string& key, std::shared_ptr<const std::string> value) {
    const std::size_t size = value->size();
    std::lock_guard lock(mu_);
    if (map_.count(key) || size > max_bytes_) return;
    order_.emplace_front(key, std::move(value));
    map_[key] = order_.begin();
    bytes_ += size;
    while (bytes_ > max_bytes_) {
      bytes_ -= order_.back().second->size();
      map_.erase(order_.back().first);
      order_.pop_back();
    }
  }

 private:
  using Entry = std::pair<std::string, std::shared_ptr<const std::string>>;
  const std::size_t max_bytes_;
  std::mutex mu_;
  std::list<Entry> order_;
  std::unordered_map<std::string, std::list<Entry>::iterator> map_;
  std::size_t bytes_ = 0;
};

}  // namespace lookalike::server
