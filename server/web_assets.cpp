#include "server/web_assets.h"

#include <fstream>
#include <sstream>

namespace lookalike::server {

namespace {

std::string mime_of(const std::string& name) {
  auto ends = [&](std::string_view ext) {
    return name.size() >= ext.size() &&
           name.compare(name.size() - ext.size(), ext.size(), ext) == 0;
  };
  if (ends(".html")) return "text/html; charset=utf-8";
  if (ends(".js")) return "text/javascript; charset=utf-8";
  if (ends(".css")) return "text/css; charset=utf-8";
  if (ends(".svg")) return "image/svg+xml";
  if (ends(".png")) return "image/png";
  if (ends(".ico")) return "image/x-icon";
  if (ends(".json")) return "application/json";
  return "application/octet-stream";
}

}  // namespace

std::optional<Asset> find_asset(const std::filesystem::path& web_dir, const std::string& name) {
  // Only plain names reach here (the route's pattern); checked again, since a request value
  // must never become a path outside the page's folder.
  if (name.empty() || name[0] == '.' || name.find('/') != std::string::npos) return std::nullopt;
  if (!web_dir.empty()) {
    std::ifstream in(web_dir / name, std::ios::binary);
    if (!in) return std::nullopt;
    std::ostringstream s;
    s << in.rdbuf();
    return Asset{s.str(), mime_of(name)};
  }
  for (std::size_t i = 0; i < kWebAssetCount; ++i) {
    if (kWebAssets[i].name == name) return Asset{std::string(kWebAssets[i].data), mime_of(name)};
  }
  return std::nullopt;
}

}  // namespace lookalike::server
