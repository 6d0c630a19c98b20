// The map as SVG text (written here, no library) and as PNG (the SVG through libvips' svgload,
// i.e. librsvg, then pngsave).
#include <fmt/format.h>
#include <unistd.h>
#include <vips/vips.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <span>

#include "image/decode.h"
#include "image/thumbnail.h"
#include "pipeline/files.h"
#include "viz/map.h"

namespace lookalike::viz {

namespace fs = std::filesystem;

namespace {

constexpr double kTitleBand = 74;  // title and subtitle
constexpr double kLegendWidth = 250;
constexpr double kMargin = 48;  // axis labels

// Where the data lands: equal scale on both axes (distances in the picture mean the same in
// every direction), centred in the plot area, with half a thumbnail of padding.
struct Layout {
  double left = 0, top = 0, right = 0, bottom = 0;  // plot area
  double scale = 1, cx = 0, cy = 0;                 // data centre
  double px(double x) const { return (left + right) / 2 + (x - cx) * scale; }
  double py(double y) const { return (top + bottom) / 2 - (y - cy) * scale; }  // y up
};

Layout layout(const CollectionMap& map, const MapStyle& s) {
  Layout l;
  l.left = kMargin;
  l.top = kTitleBand;
  l.right = std::max(l.left + 50, s.width - kLegendWidth);
  l.bottom = std::max(l.top + 50, s.height - kMargin);
  double x0 = 1e300, x1 = -1e300, y0 = 1e300, y1 = -1e300;
  for (const auto& p : map.points) {
    x0 = std::min(x0, p.x), x1 = std::max(x1, p.x);
    y0 = std::min(y0, p.y), y1 = std::max(y1, p.y);
  }
  const double pad = s.thumbnail_size / 2.0 + 4;
  const double w = std::max(1.0, l.right - l.left - 2 * pad);
  const double h = std::max(1.0, l.bottom - l.top - 2 * pad);
  const double dx = std::max(x1 - x0, 1e-12), dy = std::max(y1 - y0, 1e-12);
  l.scale = std::min(w / dx, h / dy);
  l.cx = (x0 + x1) / 2, l.cy = (y0 + y1) / 2;
  return l;
}

std::string xml(const std::string& raw) { return pipeline::markup_text(raw); }

std::string percent(double ratio) { return fmt::format("{:.1f}%", 100 * ratio); }

std::string title(const CollectionMap& m) {
  return fmt::format("{}: {}, {}, {} points", m.collection, m.model,
                     m.method == Method::Pca ? "PCA" : "t-SNE", m.points.size());
}

std::string subtitle(const CollectionMap& m) {
  std::string s = fmt::format("coloured by {}", m.color_by);
  if (static_cast<std::int64_t>(m.points.size()) < m.matching)
    s += fmt::format("; a sample of {} of {} images", m.points.size(), m.matching);
  if (m.method == Method::Pca && m.explained_ratio.size() == 2) {
    s += fmt::format("; PC1 and PC2 explain {} and {} of the variance",
                     percent(m.explained_ratio[0]), percent(m.explained_ratio[1]));
  } else if (m.method == Method::Tsne) {
    s += fmt::format("; perplexity {:g}, KL divergence {:.3f}", m.perplexity, m.kl_divergence);
  }
  return s;
}

void axes(std::string& svg, const CollectionMap& m, const Layout& l) {
  svg += fmt::format(
      "<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\" fill=\"none\" "
      "stroke=\"#d0d0d0\"/>\n",
      l.left, l.top, l.right - l.left, l.bottom - l.top);
  const bool pca = m.method == Method::Pca && m.explained_ratio.size() == 2;
  std::string ax = pca ? fmt::format("PC1 ({} of variance)", percent(m.explained_ratio[0]))
                       : std::string("t-SNE 1");
  std::string ay = pca ? fmt::format("PC2 ({} of variance)", percent(m.explained_ratio[1]))
                       : std::string("t-SNE 2");
  svg += fmt::format(
      "<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\" font-size=\"14\" "
      "fill=\"#444\">{}</text>\n",
      (l.left + l.right) / 2, l.bottom + 30, xml(ax));
  svg += fmt::format(
      "<text transform=\"translate({:.1f},{:.1f}) rotate(-90)\" text-anchor=\"middle\" "
      "font-size=\"14\" fill=\"#444\">{}</text>\n",
      l.left - 18, (l.top + l.bottom) / 2, xml(ay));
}

void points(std::string& svg, const CollectionMap& m, const Layout& l, const MapStyle& s) {
  std::map<std::string, std::vector<const MapPoint*>> by_group;
  for (const auto& p : m.points) by_group[p.group].push_back(&p);
  // (none) and (other) first, so that the coloured groups are drawn over them.
  std::vector<const MapGroup*> order;
  for (const auto& g : m.groups)
    if (g.name == kNoGroup || g.name == kOtherGroup) order.push_back(&g);
  for (const auto& g : m.groups)
    if (g.name != kNoGroup && g.name != kOtherGroup) order.push_back(&g);
  for (const auto* g : order) {
    svg += fmt::format("<g class=\"points\" data-group=\"{}\" fill=\"{}\" fill-opacity=\"0.8\">\n",
                       xml(g->name), g->color);
    for (const auto* p : by_group[g->name]) {
      svg += fmt::format(
          "<circle cx=\"{:.2f}\" cy=\"{:.2f}\" r=\"{:g}\" data-id=\"{}\"><title>{} ({})</title>"
          "</circle>\n",
          l.px(p->x), l.py(p->y), s.point_radius, p->id, xml(p->path), xml(p->group));
    }
    svg += "</g>\n";
  }
}

void legend(std::string& svg, const CollectionMap& m, const MapStyle& s) {
  const double x = s.width - kLegendWidth + 24;
  double y = kTitleBand + 8;
  svg += "<g class=\"legend\" font-size=\"14\" fill=\"#222\">\n";
  svg += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" font-weight=\"bold\">{}</text>\n", x, y,
                     xml(m.color_by));
  for (const auto& g : m.groups) {
    y += 24;
    svg += fmt::format(
        "<g class=\"legend-entry\" data-group=\"{}\"><rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"14\" "
        "height=\"14\" fill=\"{}\"/><text x=\"{:.1f}\" y=\"{:.1f}\">{} ({})</text></g>\n",
        xml(g.name), x, y - 12, g.color, x + 22, y, xml(g.name), g.count);
  }
  svg += "</g>\n";
}

// The thumbnail's box: the image's aspect ratio, longest side `size`.
std::pair<double, double> thumb_box(const MapPoint& p, int size) {
  if (p.width <= 0 || p.height <= 0) return {size, size};
  const double f = double(size) / std::max(p.width, p.height);
  return {std::max(1.0, p.width * f), std::max(1.0, p.height * f)};
}

std::string thumbnail_uri(const MapPoint& p, int size) {
  auto bytes = pipeline::read_file(p.path);
  auto jpeg = image::thumbnail_jpeg(
      bytes, p.path, std::clamp(size, image::kMinThumbnailSize, image::kMaxThumbnailSize));
  return "data:image/jpeg;base64," +
         pipeline::base64({reinterpret_cast<const char*>(jpeg.data()), jpeg.size()});
}

void thumbnails(std::string& svg, CollectionMap& m, const Layout& l, const MapStyle& s) {
  std::map<std::string, std::string> color;
  for (const auto& g : m.groups) color[g.name] = g.color;
  int failed = 0;
  std::string first_error;
  svg += "<g class=\"thumbnails\">\n";
  for (const auto& p : m.points) {
    if (!p.thumbnail) continue;
    std::string uri;
    try {
      uri = thumbnail_uri(p, s.thumbnail_size);
    } catch (const std::exception& e) {
      if (failed++ == 0) first_error = e.what();
      continue;
    }
    auto [w, h] = thumb_box(p, s.thumbnail_size);
    const double x = l.px(p.x) - w / 2, y = l.py(p.y) - h / 2;
    svg += fmt::format(
        "<g data-id=\"{}\"><rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\" "
        "fill=\"#fff\" stroke=\"{}\" stroke-width=\"3\"/><image x=\"{:.1f}\" y=\"{:.1f}\" "
        "width=\"{:.1f}\" height=\"{:.1f}\" preserveAspectRatio=\"xMidYMid meet\" "
        "xlink:href=\"{}\"><title>{}</title></image></g>\n",
        p.id, x - 1.5, y - 1.5, w + 3, h + 3, color[p.group], x, y, w, h, uri, xml(p.path));
  }
  svg += "</g>\n";
  if (failed > 0) {
    m.warnings.push_back(fmt::format("{} thumbnails not drawn (first: {})", failed, first_error));
  }
}

}  // namespace

void choose_thumbnails(CollectionMap& map, const MapStyle& style) {
  for (auto& p : map.points) p.thumbnail = false;
  if (style.thumbnails <= 0 || map.points.empty()) return;
  const Layout l = layout(map, style);
  const double cell = style.thumbnail_size + 6;
  struct Cell {
    std::int64_t count = 0;
    std::size_t best = 0;
    double best_d2 = 1e300;
  };
  std::map<std::pair<long, long>, Cell> cells;
  for (std::size_t i = 0; i < map.points.size(); ++i) {
    const double x = l.px(map.points[i].x) - l.left, y = l.py(map.points[i].y) - l.top;
    const auto key = std::make_pair(long(std::floor(x / cell)), long(std::floor(y / cell)));
    const double ux = x - (key.first + 0.5) * cell, uy = y - (key.second + 0.5) * cell;
    auto& c = cells[key];
    ++c.count;
    if (ux * ux + uy * uy < c.best_d2) c.best_d2 = ux * ux + uy * uy, c.best = i;
  }
  std::vector<const Cell*> ranked;
  for (const auto& [key, c] : cells) ranked.push_back(&c);
  std::stable_sort(ranked.begin(), ranked.end(),
                   [](const Cell* a, const Cell* b) { return a->count > b->count; });
  // A thumbnail spans its cell and reaches half a cell into each neighbour: keep chosen cells
  // apart by a cell so that thumbnails never overlap.
  std::vector<std::pair<double, double>> chosen;
  for (const Cell* c : ranked) {
    if (static_cast<int>(chosen.size()) >= style.thumbnails) break;
    const auto& p = map.points[c->best];
    const double x = l.px(p.x), y = l.py(p.y);
    bool clear = std::all_of(chosen.begin(), chosen.end(), [&](const auto& q) {
      return std::abs(q.first - x) >= cell || std::abs(q.second - y) >= cell;
    });
    if (!clear) continue;
    chosen.emplace_back(x, y);
    map.points[c->best].thumbnail = true;
  }
}

std::string render_svg(CollectionMap& map, const MapStyle& style) {
  const Layout l = layout(map, style);
  std::string svg = fmt::format(
      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
      "<svg xmlns=\"http://www.w3.org/2000/svg\" xmlns:xlink=\"http://www.w3.org/1999/xlink\" "
      "version=\"1.1\" width=\"{0}\" height=\"{1}\" viewBox=\"0 0 {0} {1}\" "
      "font-family=\"DejaVu Sans, Verdana, sans-serif\">\n"
      "<title>{2}</title>\n"
      "<rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>\n"
      "<text x=\"{3}\" y=\"30\" font-size=\"20\" font-weight=\"bold\" fill=\"#222\">{2}</text>\n"
      "<text x=\"{3}\" y=\"54\" font-size=\"14\" fill=\"#555\">{4}</text>\n",
      style.width, style.height, xml(title(map)), kMargin, xml(subtitle(map)));
  axes(svg, map, l);
  points(svg, map, l, style);
  thumbnails(svg, map, l, style);
  legend(svg, map, style);
  svg += "</svg>\n";
  return svg;
}

namespace {

std::string lower_extension(const fs::path& p) {
  auto e = p.extension().string();
  std::transform(e.begin(), e.end(), e.begin(), [](unsigned char c) { return std::tolower(c); });
  return e;
}

std::string vips_message() {
  char* raw = vips_error_buffer_copy();
  std::string msg = raw ? raw : "";
  g_free(raw);
  std::replace(msg.begin(), msg.end(), '\n', ' ');
  while (!msg.empty() && msg.back() == ' ') msg.pop_back();
  return msg.empty() ? "unknown libvips error" : msg;
}

void write_png(const fs::path& tmp, const fs::path& out, const std::string& svg) {
  image::init_decoder();
  VipsImage* img = nullptr;
  // "unlimited": librsvg otherwise refuses SVG text over 10 MB (thousands of points with titles).
  if (vips_svgload_buffer(const_cast<char*>(svg.data()), svg.size(), &img, "unlimited", TRUE,
                          nullptr) != 0) {
    throw MapError(fmt::format("{}: rendering the SVG failed: {}", out.string(), vips_message()));
  }
  const int rc = vips_pngsave(img, tmp.c_str(), nullptr);
  g_object_unref(img);
  if (rc != 0) {
    throw MapError(fmt::format("{}: writing the PNG failed: {}", out.string(), vips_message()));
  }
}

void write_text(const fs::path& tmp, const fs::path& out, const std::string& text) {
  std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
  if (f) f.write(text.data(), static_cast<std::streamsize>(text.size()));
  if (f) f.close();
  if (!f) throw MapError(fmt::format("{}: cannot write: {}", out.string(), std::strerror(errno)));
}

}  // namespace

void check_output(const fs::path& out) {
  const auto ext = lower_extension(out);
  if (ext != ".svg" && ext != ".png") {
    throw MapUsageError(
        fmt::format("--out {}: the file name must end in .svg or .png (the format is chosen by it)",
                    out.string()));
  }
  std::error_code ec;
  if (fs::is_directory(out, ec)) throw MapError(fmt::format("{}: is a folder", out.string()));
  const fs::path dir = out.has_parent_path() ? out.parent_path() : fs::path(".");
  if (!fs::is_directory(dir, ec)) {
    throw MapError(
        fmt::format("{}: cannot write: folder {} does not exist", out.string(), dir.string()));
  }
  if (::access(dir.c_str(), W_OK | X_OK) != 0) {
    throw MapError(fmt::format("{}: cannot write in folder {}: {}", out.string(), dir.string(),
                               std::strerror(errno)));
  }
}

void write_map(const fs::path& out, const std::string& svg) {
  check_output(out);
  fs::path tmp = out;
  tmp += fmt::format(".tmp-{}{}", ::getpid(), lower_extension(out));
  try {
    if (lower_extension(out) == ".png") {
      write_png(tmp, out, svg);
    } else {
      write_text(tmp, out, svg);
    }
    fs::rename(tmp, out);
  } catch (const fs::filesystem_error& e) {
    std::error_code ec;
    fs::remove(tmp, ec);
    throw MapError(fmt::format("{}: cannot write: {}", out.string(), e.code().message()));
  } catch (...) {
    std::error_code ec;
    fs::remove(tmp, ec);
    throw;
  }
}

}  // namespace lookalike::viz
