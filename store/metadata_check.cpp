// store::metadata_problem (catalog.h): in a file of its own so that the manifest scanner's test
// can compile it in without the catalog (and FAISS, which the catalog's library links).
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "store/catalog.h"

namespace lookalike::store {

namespace {

// The first key or string holding a NUL, named by its top-level field.
std::optional<std::string> nul_problem(const nlohmann::json& value, const std::string& field) {
  const auto why = [&] { return "field '" + field + "': text holds a NUL character (U+0000)"; };
  if (value.is_string() && value.get_ref<const std::string&>().find('\0') != std::string::npos)
    return why();
  if (value.is_array()) {
    for (const auto& e : value)
      if (auto p = nul_problem(e, field)) return p;
  }
  if (value.is_object()) {
    for (const auto& [key, e] : value.items()) {
      if (key.find('\0') != std::string::npos) return why();
      if (auto p = nul_problem(e, field)) return p;
    }
  }
  return std::nullopt;
}

std::optional<std::string> object_problem(const nlohmann::json& meta) {
  if (!meta.is_object())
    return "metadata must be a JSON object, got " + std::string(meta.type_name());
  for (const auto& [key, value] : meta.items()) {
    if (key.find('\0') != std::string::npos) return "a field name holds a NUL character (U+0000)";
    if (auto p = nul_problem(value, key)) return p;
  }
  return std::nullopt;
}

}  // namespace

std::optional<std::string> metadata_problem(const std::string& json_text) {
  auto meta = nlohmann::json::parse(json_text, nullptr, false);
  if (meta.is_discarded()) return "metadata is not valid JSON";
  return object_problem(meta);
}

}  // namespace lookalike::store
