// `lookalike map`: a 2-D picture of a collection's embeddings (PCA or t-SNE, see
// viz/projection.h), points coloured by the folder a file came from or by a metadata field,
// with a legend and a sample of thumbnails drawn at their points. Written as SVG (text we write
// ourselves; thumbnails as data: URIs) or PNG (that SVG rendered by libvips' svgload, which is
// librsvg). Units: coordinates are the projection's own (PCA: the embedding space's units along
// each axis); every size in MapStyle is SVG user units, which are PNG pixels.
// Output and defaults: docs/map.md.
#pragma once

#include <cstdint>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

#include "store/catalog.h"

namespace lookalike::viz {

// A bad request (option value, output name); the CLI's exit code 2. what() names the option.
class MapUsageError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};
// Anything else that stops a map (empty collection, unwritable output, failed render); exit 1.
// what() names the collection or file and the cause.
class MapError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Exact t-SNE costs O(n^2) memory and time a step; above this many points the map samples.
inline constexpr std::int64_t kMaxTsnePoints = 5000;
inline constexpr std::int64_t kDefaultSample = 5000;
// Legend entries: the most frequent groups get a colour each, the rest share "(other)".
inline constexpr int kMaxGroups = 20;
inline constexpr const char* kNoGroup = "(none)";
inline constexpr const char* kOtherGroup = "(other)";

enum class Method { Pca, Tsne };

struct MapOptions {
  Method method = Method::Pca;
  std::string color_by;                  // metadata field; empty: the file's folder name
  store::MetadataFilter filter;          // only matching images
  std::int64_t sample = kDefaultSample;  // at most this many points (0: all; t-SNE: <= 5,000)
  std::uint64_t seed = 0;                // the sample and t-SNE's initial map
  double perplexity = 30;                // t-SNE
  int iterations = 1000;                 // t-SNE
  int threads = 0;                       // LibTorch threads for the projection; 0: all cores
};

struct MapPoint {
  std::int64_t id = 0;
  std::string path;
  std::string group;  // legend entry (kNoGroup, kOtherGroup or a value)
  double x = 0, y = 0;
  int width = 0, height = 0;  // the image's upright size, for the thumbnail's shape
  bool thumbnail = false;     // chosen for a thumbnail by choose_thumbnails
};

struct MapGroup {
  std::string name;
  std::int64_t count = 0;
  std::string color;  // "#rrggbb"
};

struct CollectionMap {
  std::string collection;  // folder name, for the title
  std::string model;       // config.model_name
  Method method = Method::Pca;
  std::string color_by;                 // field, or "folder"
  std::int64_t matching = 0;            // images the filter selected (all without one)
  std::int64_t generation = 0;          // catalog generation the ids were read at
  std::vector<MapPoint> points;         // the sample, by id
  std::vector<MapGroup> groups;         // legend order: most frequent first, (other), (none)
  std::vector<double> explained_ratio;  // PCA: variance share of each axis; t-SNE: empty
  double kl_divergence = 0;             // t-SNE
  double perplexity = 0;                // t-SNE
  double learning_rate = 0;             // t-SNE
  std::vector<std::string> warnings;    // e.g. a --color-by field no image has
  double projection_seconds = 0;
};

// Reads the matching images' records and stored embeddings (batch reads; a sample of at most
// options.sample, chosen by a seeded hash of each id, so the same seed keeps the same images as
// the collection grows), projects them and groups them. Throws MapUsageError for bad options
// (t-SNE sample above kMaxTsnePoints, perplexity too large for the points), MapError for a
// collection without images (or none matching) and StoreError from the catalog.
CollectionMap build_map(const store::Catalog& catalog, const std::string& collection_name,
                        const MapOptions& options);

struct MapStyle {
  int width = 1400;  // whole picture; the plot is what the title and legend leave
  int height = 1000;
  int thumbnails = 60;      // at most this many, spread over the densest areas
  int thumbnail_size = 56;  // longest side
  double point_radius = 3.5;
};

// Marks up to style.thumbnails points, at most one per thumbnail-sized cell of the plot, the
// cells holding the most points first and in each the point nearest its centre, so thumbnails
// do not overlap and show what the clusters hold.
void choose_thumbnails(CollectionMap& map, const MapStyle& style);

// The SVG document (well-formed XML; text escaped). Thumbnails of the marked points are read
// from their files (a missing or unreadable file draws no thumbnail and adds a warning).
std::string render_svg(CollectionMap& map, const MapStyle& style);

// Refuses an output name whose extension is not .svg or .png (MapUsageError naming it), and a
// folder that does not exist or cannot be written (MapError naming it), before any work.
void check_output(const std::filesystem::path& out);
// Writes `svg` to `out` as SVG, or rendered to PNG, atomically (a temporary file in the same
// folder, then rename). Throws MapError naming the file and the cause.
void write_map(const std::filesystem::path& out, const std::string& svg);

const char* method_name(Method m);  // "pca" | "tsne"

}  // namespace lookalike::viz
