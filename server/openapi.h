// The OpenAPI 3 document of the HTTP API (docs/api.md is its prose), and a readable HTML page
// of it for /docs (no external assets). tests/e2e/server_api.py checks that every documented
// route answers and every route answers as documented.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace lookalike::server {

// Which routes need the API key follows this server's flags: none without --api-key, writes
// with it, every /v1 route with --private as well (security and 401/403 per operation); and
// whether the Host header is checked (403 host_not_allowed on every route but /healthz and
// /readyz).
struct ApiAccess {
  bool api_key = false;
  bool private_reads = false;
  bool host_check = false;
};
nlohmann::json openapi_document(const std::string& version, ApiAccess access = {});
std::string openapi_html(const nlohmann::json& document);

}  // namespace lookalike::server
