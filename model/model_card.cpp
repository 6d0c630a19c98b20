#include "model/model_card.h"

#include <xxhash.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <initializer_list>
#include <limits>
#include <sstream>
#include <utility>
#include <vector>

namespace lookalike::model {
namespace {

using nlohmann::json;

[[noreturn]] void fail(const std::string& source, const std::string& field,
                       const std::string& cause) {
  throw ModelError(source + ": model card field '" + field + "': " + cause);
}

// Typed access with the field named in every error: a card is hand-editable, so a wrong type
// must say where it is rather than surface as nlohmann's generic type_error.
const json* find(const json& j, const std::string& source, const char* field, bool required) {
  auto it = j.find(field);
  if (it == j.end()) {
    if (required) fail(source, field, "missing");
    return nullptr;
  }
  return &*it;
}

void read(const json& j, const std::string& source, const char* field, bool required,
          std::string& out) {
  const json* v = find(j, source, field, required);
  if (!v) return;
  if (!v->is_string()) fail(source, field, std::string("expected a string, got ") + v->type_name());
  out = v->get<std::string>();
}

// An optional object field: absent or null stays null.
void read_object(const json& j, const std::string& source, const char* field, json& out) {
  const json* v = find(j, source, field, false);
  if (!v || v->is_null()) return;
  if (!v->is_object())
    fail(source, field, std::string("expected an object, got ") + v->type_name());
  out = *v;
}

void read(const json& j, const std::string& source, const char* field, bool required, int& out) {
  const json* v = find(j, source, field, required);
  if (!v) return;
  if (!v->is_number_integer())
    fail(source, field, std::string("expected an integer, got ") + v->type_name());
  // get<int>() would wrap 4294968576 to 1280: a value out of int's range is refused, not reduced.
  const bool fits = v->is_number_unsigned()
                        ? v->get<std::uint64_t>() <= std::numeric_limits<int>::max()
                        : v->get<std::int64_t>() >= std::numeric_limits<int>::min() &&
                              v->get<std::int64_t>() <= std::numeric_limits<int>::max();
  if (!fits) fail(source, field, v->dump() + " is out of range");
  out = v->get<int>();
}

void read(const json& j, const std::string& source, const char* field, bool required, bool& out) {
  const json* v = find(j, source, field, required);
  if (!v) return;
  if (!v->is_boolean())
    fail(source, field, std::string("expected true/false, got ") + v->type_name());
  out = v->get<bool>();
}

void read(const json& j, const std::string& source, const char* field, bool required,
          std::array<float, 3>& out) {
  const json* v = find(j, source, field, required);
  if (!v) return;
  if (!v->is_array() || v->size() != 3)
    fail(source, field, "expected an array of 3 numbers (R, G, B)");
  for (size_t i = 0; i < 3; ++i) {
    if (!(*v)[i].is_number()) fail(source, field, "expected an array of 3 numbers (R, G, B)");
    out[i] = (*v)[i].get<float>();
  }
}

void require_one_of(const std::string& source, const char* field, const std::string& value,
                    std::initializer_list<const char*> allowed) {
  std::string list;
  for (const char* a : allowed) {
    if (value == a) return;
    list += std::string(list.empty() ? "" : ", ") + "'" + a + "'";
  }
  fail(source, field, "'" + value + "' is not one of " + list);
}

void validate(const ModelCard& c, const std::string& source) {
  if (c.format < 1 || c.format > kModelCardFormat)
    fail(source, "format",
         std::to_string(c.format) + " is not supported (this build reads format " +
             std::to_string(kModelCardFormat) + ")");
  if (c.name.empty()) fail(source, "name", "empty");
  // The model id is NAME@DIGEST[+PRECISION]: a '+' or '@' in the name would be read as a
  // delimiter, and a collection built with it could not be matched to its own model again.
  if (const auto bad = c.name.find_first_of("+@/"); bad != std::string::npos)
    fail(source, "name",
         "'" + c.name + "' contains '" + c.name[bad] +
             "' (a model name may not contain '+', '@' or '/': they delimit the model id and "
             "paths)");
  if (c.architecture.empty()) fail(source, "architecture", "empty");
  if (c.input_size <= 0 || c.input_size > kMaxInputSize)
    fail(source, "input_size",
         std::to_string(c.input_size) + " is out of range (1.." + std::to_string(kMaxInputSize) +
             " pixels)");
  if (c.resize_shorter != 0 && c.resize_shorter < c.input_size)
    fail(source, "resize_shorter", "must be 0 (no resize) or >= input_size");
  if (c.resize_shorter > kMaxResizeShorter)
    fail(source, "resize_shorter",
         std::to_string(c.resize_shorter) + " is out of range (0, or input_size.." +
             std::to_string(kMaxResizeShorter) + " pixels)");
  require_one_of(source, "resize_policy", c.resize_policy, {"resize_shorter_center_crop"});
  require_one_of(source, "interpolation", c.interpolation, {"bilinear", "bicubic"});
  require_one_of(source, "color_order", c.color_order, {"RGB", "BGR"});
  for (float s : c.std)
    if (!(s > 0.0f)) fail(source, "std", "every value must be > 0");
  if (c.embedding_dim <= 0) fail(source, "embedding_dim", "must be > 0");
  if (c.method.empty()) fail(source, "method", "empty");
}

// Typed checks of one "precisions" entry: the loader, `models` and `auto` read these fields, so a
// wrong type must be refused here with its path rather than surface later as nlohmann's
// type_error (or be silently skipped).
void check_type(const json& entry, const std::string& source, const std::string& path,
                const char* key, bool (json::*is)() const noexcept, const char* expected) {
  auto it = entry.find(key);
  if (it == entry.end() || ((*it).*is)()) return;
  fail(source, path + "." + key, std::string("expected ") + expected + ", got " + it->type_name());
}

// A number the type check passed must also be a possible value: `auto` and `models` take the
// figures at their word, so a min cosine of 2.5 would otherwise "meet the bar".
void check_range(const json& entry, const std::string& source, const std::string& path,
                 const char* key, double lo, double hi) {
  auto it = entry.find(key);
  if (it == entry.end()) return;
  const double v = it->get<double>();
  if (v >= lo && v <= hi) return;  // also false for NaN
  const std::string range = hi == std::numeric_limits<double>::infinity()
                                ? ">= " + json(lo).dump()
                                : "in [" + json(lo).dump() + ", " + json(hi).dump() + "]";
  fail(source, path + "." + key, it->dump() + " is out of range (must be " + range + ")");
}

void validate_fidelity(const json& f, const std::string& source, const std::string& path) {
  if (!f.is_object()) fail(source, path, std::string("expected an object, got ") + f.type_name());
  for (const char* key : {"min_cosine", "mean_cosine", "recall_at_1_delta", "map_delta",
                          "recall_at_1", "map", "fp32_recall_at_1", "fp32_map"})
    check_type(f, source, path, key, &json::is_number, "a number");
  check_type(f, source, path, "images", &json::is_number_integer, "an integer");
  for (const char* key : {"labelled", "meets_bar", "retrieval_measured"})
    check_type(f, source, path, key, &json::is_boolean, "true/false");
  for (const char* key : {"worst_file", "measured_at", "note", "failure", "archive_digest"})
    check_type(f, source, path, key, &json::is_string, "a string");
  const double inf = std::numeric_limits<double>::infinity();
  for (const char* key : {"min_cosine", "mean_cosine", "recall_at_1_delta", "map_delta"})
    check_range(f, source, path, key, -1, 1);
  for (const char* key : {"recall_at_1", "map", "fp32_recall_at_1", "fp32_map"})
    check_range(f, source, path, key, 0, 1);
  check_range(f, source, path, "images", 0, inf);
}

// The archive a precision runs is a file next to the card, and not the card's own FP32 archive:
// `models` hides the archives a card names, so naming NAME.pt (or another model's archive, which
// load_model_card refuses) would hide a model from the listing.
void validate_archive_name(const std::string& archive, const std::string& model_name,
                           const std::string& source, const std::string& path) {
  if (archive.empty()) fail(source, path, "empty");
  if (archive.find('/') != std::string::npos || archive == "." || archive == "..")
    fail(source, path, "'" + archive + "' is not a file name (the archive lies next to the card)");
  if (archive == model_name + ".pt")
    fail(source, path,
         "'" + archive +
             "' is the card's own FP32 archive; a precision needs an archive of its "
             "own (tools/export_model.py --precisions)");
}

void validate_precision_entry(const std::string& name, const json& e, const std::string& model,
                              const std::string& source) {
  const std::string path = "precisions." + name;
  const auto& known = kCardPrecisions;
  if (std::find(std::begin(known), std::end(known), name) == std::end(known))
    fail(source, path, "'" + name + "' is not a precision this build knows (fp32, bf16, int8)");
  if (!e.is_object()) fail(source, path, std::string("expected an object, got ") + e.type_name());
  for (const char* key : {"archive", "recipe", "input"})
    check_type(e, source, path, key, &json::is_string, "a string");
  check_type(e, source, path, "images_per_s", &json::is_number, "a number");
  check_range(e, source, path, "images_per_s", 0, std::numeric_limits<double>::infinity());
  if (auto it = e.find("requires"); it != e.end()) {
    bool ok = it->is_array();
    for (const auto& r : ok ? *it : json::array()) ok = ok && r.is_string();
    if (!ok) fail(source, path + ".requires", "expected an array of strings (CPU flags, a|b)");
  }
  if (auto it = e.find("archive"); it != e.end()) {
    if (name == "fp32")
      fail(source, path + ".archive", "the FP32 archive is always " + model + ".pt: remove it");
    validate_archive_name(it->get<std::string>(), model, source, path + ".archive");
  }
  if (auto it = e.find("fidelity"); it != e.end() && !it->is_null())
    validate_fidelity(*it, source, path + ".fidelity");
}

void validate_precisions(const json& precisions, const std::string& model,
                         const std::string& source) {
  if (!precisions.is_object()) return;  // absent
  for (const auto& [name, entry] : precisions.items())
    validate_precision_entry(name, entry, model, source);
}

// What only the card's location can tell: a precision's archive must not be another model's (one
// with a card of its own), which `models` would otherwise hide as this card's companion.
void validate_location(const ModelCard& c, const std::filesystem::path& path) {
  const std::string source = path.string();
  if (!c.precisions.is_object()) return;
  for (const auto& [name, entry] : c.precisions.items()) {
    auto it = entry.find("archive");
    if (it == entry.end()) continue;
    const auto archive = path.parent_path() / it->get<std::string>();
    std::error_code ec;
    if (std::filesystem::exists(std::filesystem::path(archive).replace_extension(".json"), ec))
      fail(source, "precisions." + name + ".archive",
           "'" + it->get<std::string>() + "' has a model card of its own (" +
               std::filesystem::path(archive).replace_extension(".json").string() +
               "): it is another model, not this one's " + name + " archive");
  }
}

}  // namespace

ModelCard model_card_from_json(const json& j, const std::string& source) {
  if (!j.is_object()) throw ModelError(source + ": model card must be a JSON object");
  ModelCard c;
  read(j, source, "format", true, c.format);
  read(j, source, "name", true, c.name);
  read(j, source, "architecture", true, c.architecture);
  read(j, source, "variant", false, c.variant);
  read(j, source, "weights_source", true, c.weights_source);
  read(j, source, "weights_sha256", false, c.weights_sha256);
  read(j, source, "random_weights", false, c.random_weights);
  read(j, source, "paper", false, c.paper);
  read(j, source, "license", true, c.license);
  read(j, source, "input_size", true, c.input_size);
  read(j, source, "resize_shorter", true, c.resize_shorter);
  read(j, source, "resize_policy", true, c.resize_policy);
  read(j, source, "interpolation", true, c.interpolation);
  read(j, source, "antialias", true, c.antialias);
  read(j, source, "mean", true, c.mean);
  read(j, source, "std", true, c.std);
  read(j, source, "color_order", true, c.color_order);
  read(j, source, "embedding_dim", true, c.embedding_dim);
  read(j, source, "normalized", true, c.normalized);
  read(j, source, "embedding_output", false, c.embedding_output);
  read(j, source, "method", true, c.method);
  read(j, source, "tower", false, c.tower);
  read(j, source, "exported_by", false, c.exported_by);
  read(j, source, "archive_digest", false, c.archive_digest);
  read_object(j, source, "training", c.training);
  read_object(j, source, "precisions", c.precisions);
  validate(c, source);
  validate_precisions(c.precisions, c.name, source);
  return c;
}

json model_card_to_json(const ModelCard& c) {
  json out{{"format", c.format},
           {"name", c.name},
           {"architecture", c.architecture},
           {"variant", c.variant},
           {"weights_source", c.weights_source},
           {"weights_sha256", c.weights_sha256},
           {"random_weights", c.random_weights},
           {"paper", c.paper},
           {"license", c.license},
           {"input_size", c.input_size},
           {"resize_shorter", c.resize_shorter},
           {"resize_policy", c.resize_policy},
           {"interpolation", c.interpolation},
           {"antialias", c.antialias},
           {"mean", c.mean},
           {"std", c.std},
           {"color_order", c.color_order},
           {"embedding_dim", c.embedding_dim},
           {"normalized", c.normalized},
           {"embedding_output", c.embedding_output},
           {"method", c.method},
           {"tower", c.tower},
           {"exported_by", c.exported_by}};
  if (!c.archive_digest.empty()) out["archive_digest"] = c.archive_digest;
  if (!c.training.is_null()) out["training"] = c.training;
  if (!c.precisions.is_null()) out["precisions"] = c.precisions;
  return out;
}

ModelCard load_model_card(const std::filesystem::path& path) {
  const std::string source = path.string();
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::error_code ec;
    throw ModelError(source + ": cannot read model card (" +
                     (std::filesystem::exists(path, ec) ? "unreadable" : "no such file") + ")");
  }
  std::stringstream text;
  text << in.rdbuf();
  json j = json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) throw ModelError(source + ": model card is not valid JSON");
  ModelCard card = model_card_from_json(j, source);
  validate_location(card, path);
  return card;
}

void save_model_card(const ModelCard& card, const std::filesystem::path& path) {
  // errno is read right after the call that failed: the cause (read-only folder, no space) is
  // what the user needs to act on.
  auto fail_write = [&] {
    const int err = errno;
    throw ModelError(path.string() + ": cannot write model card: " +
                     (err != 0 ? std::strerror(err) : "write failed"));
  };
  errno = 0;
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) fail_write();
  out << model_card_to_json(card).dump(2) << '\n';
  out.close();
  if (!out) fail_write();
}

image::PreprocessSpec preprocess_spec(const ModelCard& c) {
  const std::string source = "model card of '" + c.name + "'";
  if (!c.antialias)
    fail(source, "antialias", "false is not supported (image::preprocess always antialiases)");
  if (c.color_order != "RGB")
    fail(source, "color_order", "'" + c.color_order + "' is not supported (RGB only)");
  image::PreprocessSpec spec;
  spec.resize_shorter = c.resize_shorter;
  spec.crop = c.input_size;
  spec.interpolation = c.interpolation;
  spec.mean = c.mean;
  spec.std = c.std;
  return spec;
}

namespace {

// Shortest text that reads back as the same float: 0.485f prints "0.485", whatever the locale.
std::string shortest(float x) {
  char buf[32];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, x);
  return ec == std::errc() ? std::string(buf, end) : std::string("?");
}

std::string triple(const std::array<float, 3>& v) {
  return shortest(v[0]) + "," + shortest(v[1]) + "," + shortest(v[2]);
}

// "key=value" fields of a canonical text, in order; the leading "preprocess/N" as its own key.
std::vector<std::pair<std::string, std::string>> canonical_fields(const std::string& text) {
  std::vector<std::pair<std::string, std::string>> out;
  std::size_t start = 0;
  while (start <= text.size()) {
    auto end = text.find(';', start);
    if (end == std::string::npos) end = text.size();
    const std::string item = text.substr(start, end - start);
    const auto eq = item.find('=');
    if (!item.empty()) {
      if (eq == std::string::npos) {
        out.emplace_back("format", item);
      } else {
        out.emplace_back(item.substr(0, eq), item.substr(eq + 1));
      }
    }
    start = end + 1;
  }
  return out;
}

}  // namespace

std::string preprocess_canonical(const ModelCard& c) {
  return "preprocess/1;resize_policy=" + c.resize_policy +
         ";resize_shorter=" + std::to_string(c.resize_shorter) +
         ";input_size=" + std::to_string(c.input_size) + ";interpolation=" + c.interpolation +
         ";antialias=" + (c.antialias ? "true" : "false") + ";color_order=" + c.color_order +
         ";mean=" + triple(c.mean) + ";std=" + triple(c.std);
}

std::string preprocess_fingerprint(const std::string& canonical) {
  const XXH64_hash_t h = XXH3_64bits(canonical.data(), canonical.size());
  static const char* hex = "0123456789abcdef";
  std::string out(16, '0');
  for (int i = 0; i < 16; ++i) out[i] = hex[(h >> (60 - 4 * i)) & 15];
  return out;
}

std::string preprocess_differences(const std::string& before, const std::string& after) {
  const auto a = canonical_fields(before);
  const auto b = canonical_fields(after);
  auto value_in = [](const auto& fields, const std::string& key) -> std::string {
    for (const auto& [k, v] : fields)
      if (k == key) return v;
    return "(none)";
  };
  std::vector<std::string> keys;
  for (const auto* side : {&a, &b}) {
    for (const auto& [k, v] : *side)
      if (std::find(keys.begin(), keys.end(), k) == keys.end()) keys.push_back(k);
  }
  std::string out;
  for (const auto& k : keys) {
    const auto x = value_in(a, k), y = value_in(b, k);
    if (x == y) continue;
    out += (out.empty() ? "" : "; ") + k + " " + x + " -> " + y;
  }
  return out;
}

}  // namespace lookalike::model
