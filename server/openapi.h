// The OpenAPI 3 document of the HTTP API (docs/api.md is its prose), and a readable HTML page
// of it for /docs (no external assets). tests/e2e/server_api.py checks that every documented
// route answers and every route answers as documented.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace lookalike::server {

nlohmann::json openapi_document(const std::string& version);
std::string openapi_html(const nlohmann::json& document);

}  // namespace lookalike::server
