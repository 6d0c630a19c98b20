// The web page's files (server/web/), compiled into the binary by server/embed_assets.cmake.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

namespace lookalike::server {

struct EmbeddedAsset {
  std::string_view name;  // file name in server/web/, e.g. "app.js"
  std::string_view data;
};
// Defined in the generated web_assets_data.cpp.
extern const EmbeddedAsset kWebAssets[];
extern const std::size_t kWebAssetCount;

struct Asset {
  std::string data;
  std::string mime;
};

// The asset `name` (a plain file name: no '/', no leading '.'): from `web_dir` when it is set
// (development: edit the page without rebuilding), else the embedded copy. nullopt if none.
std::optional<Asset> find_asset(const std::filesystem::path& web_dir, const std::string& name);

}  // namespace lookalike::server
