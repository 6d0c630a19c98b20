#include "server/openapi.h"

#include <string>
#include <vector>

#include "pipeline/files.h"

namespace lookalike::server {

namespace {

// Kept as JSON text so that it reads like the document it is.
constexpr const char* kDocument = R"json({
  "openapi": "3.0.3",
  "info": {"title": "lookalike", "description": "Image similarity search: search by example image or by indexed id, upload, browse. Errors are {\"error\": {\"code\", \"message\"}}. With an API key set, writes need it (Authorization: Bearer KEY or X-API-Key), and with --private every /v1 route does (401 without it, 403 with another)."},
  "components": {
    "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}, "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}},
    "parameters": {
      "id": {"name": "id", "in": "path", "required": true, "schema": {"type": "integer", "minimum": 1}},
      "where": {"name": "where", "in": "query", "description": "Metadata filter term: field=value, field IN [a, b], field<N (<=, >, >=); repeatable, all must hold", "schema": {"type": "array", "items": {"type": "string"}}, "style": "form", "explode": true}
    },
    "schemas": {
      "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}},
      "Image": {"type": "object", "required": ["id", "path", "metadata", "file_url", "thumbnail_url"], "properties": {
        "id": {"type": "integer"}, "path": {"type": "string"}, "name": {"type": "string"},
        "width": {"type": "integer"}, "height": {"type": "integer"}, "bytes": {"type": "integer"},
        "content_hash": {"type": "string", "description": "XXH3-128 of the file, 32 hex digits"},
        "metadata": {"type": "object"}, "added_at_ms": {"type": "integer"}, "updated_at_ms": {"type": "integer"},
        "file_url": {"type": "string"}, "thumbnail_url": {"type": "string"}}},
      "Hit": {"allOf": [{"$ref": "#/components/schemas/Image"}, {"type": "object", "required": ["rank", "score"], "properties": {"rank": {"type": "integer", "minimum": 1}, "score": {"type": "number", "description": "cosine similarity (metric cosine) or L2 distance (metric l2)"}}}]},
      "SearchResponse": {"type": "object", "required": ["query", "results", "timings", "generation"], "properties": {
        "query": {"type": "object", "properties": {"name": {"type": "string"}, "id": {"type": "integer", "nullable": true}}},
        "generation": {"type": "integer"},
        "results": {"type": "array", "items": {"$ref": "#/components/schemas/Hit"}},
        "plan": {"type": "object", "description": "how the search ran (docs/indexes.md)", "properties": {"method": {"type": "string", "enum": ["index", "exact-subset", "subset-decoded", "subset-reranked"]}, "params": {"type": "object", "properties": {"nprobe": {"type": "integer"}, "ef_search": {"type": "integer"}, "rerank": {"type": "integer"}}}, "candidates": {"type": "integer"}, "filter_matches": {"type": "integer"}, "filter_ms": {"type": "number"}}},
        "warnings": {"type": "array", "items": {"type": "string"}, "description": "present when a filter matched no image because a field it names is in no image's metadata: the field, and the fields present"},
        "timings": {"type": "object", "properties": {"decode_ms": {"type": "number"}, "embed_ms": {"type": "number"}, "search_ms": {"type": "number"}, "total_ms": {"type": "number"}}}}},
      "SearchById": {"type": "object", "required": ["id"], "properties": {
        "id": {"type": "integer"}, "k": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 10},
        "min_score": {"type": "number", "description": "cosine similarity in [-1, 1] (metric cosine), largest L2 distance (metric l2)"}, "include_self": {"type": "boolean", "default": false},
        "nprobe": {"type": "integer", "minimum": 1}, "ef_search": {"type": "integer", "minimum": 1}, "rerank": {"type": "integer", "minimum": 1},
        "where": {"oneOf": [{"type": "object", "description": "field: value (equality), [values] (IN), {lt, lte, gt, gte: number} (range)"}, {"type": "array", "items": {"type": "string"}}]}}},
      "SearchUpload": {"type": "object", "required": ["image"], "properties": {
        "image": {"type": "string", "format": "binary"}, "k": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 10}, "min_score": {"type": "number"},
        "nprobe": {"type": "integer"}, "ef_search": {"type": "integer"}, "rerank": {"type": "integer"},
        "where": {"type": "array", "items": {"type": "string"}}}},
      "Upload": {"type": "object", "required": ["image"], "properties": {
        "image": {"type": "string", "format": "binary"}, "metadata": {"type": "string", "description": "a JSON object as text"},
        "description": {"type": "string"}, "category": {"type": "string"}}}
    },
    "responses": {
      "BadRequest": {"description": "malformed request or parameter", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
      "NotFound": {"description": "unknown id", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
      "Unauthorized": {"description": "API key required", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
      "TooLarge": {"description": "body over the upload limit (Content-Length checked before the body is read)", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
      "NotAnImage": {"description": "the bytes are not a supported image (code unsupported_media_type), a compressed body (code unsupported_content_encoding), or an application/x-www-form-urlencoded body over 8,192 bytes (code unsupported_media_type)", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
      "UnsupportedBody": {"description": "a compressed body (code unsupported_content_encoding), or an application/x-www-form-urlencoded body over 8,192 bytes (code unsupported_media_type): send JSON as application/json", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
      "Unprocessable": {"description": "an image that cannot be used (bomb, aspect ratio, corrupt)", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
      "Damaged": {"description": "the image's stored upload is missing or not the size its record says (code stored_file_damaged): uploading the same image again repairs it", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
      "NotReady": {"description": "still loading", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
      "LengthRequired": {"description": "a chunked body, or none and no Content-Length: send a Content-Length", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    }
  },
  "paths": {
    "/v1/search": {"post": {"summary": "Search by uploaded image or by indexed id", "security": [{}, {"bearer": []}, {"apiKey": []}],
      "parameters": [{"name": "k", "in": "query", "description": "results wanted", "schema": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 10}}, {"name": "min_score", "in": "query", "description": "keep hits scoring at least this: a cosine similarity in [-1, 1] (metric cosine), or at most this L2 distance (metric l2)", "schema": {"type": "number"}}, {"name": "include_self", "in": "query", "description": "by id: keep the query image itself", "schema": {"type": "boolean", "default": false}}, {"name": "nprobe", "in": "query", "schema": {"type": "integer", "minimum": 1}}, {"name": "ef_search", "in": "query", "schema": {"type": "integer", "minimum": 1}}, {"name": "rerank", "in": "query", "schema": {"type": "integer", "minimum": 1}}, {"$ref": "#/components/parameters/where"}],
      "requestBody": {"required": true, "content": {"multipart/form-data": {"schema": {"$ref": "#/components/schemas/SearchUpload"}}, "application/json": {"schema": {"$ref": "#/components/schemas/SearchById"}}}},
      "responses": {"200": {"description": "top-k hits", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/SearchResponse"}}}},
        "400": {"$ref": "#/components/responses/BadRequest"}, "404": {"$ref": "#/components/responses/NotFound"}, "413": {"$ref": "#/components/responses/TooLarge"},
        "411": {"$ref": "#/components/responses/LengthRequired"}, "415": {"$ref": "#/components/responses/NotAnImage"}, "422": {"$ref": "#/components/responses/Unprocessable"}, "503": {"$ref": "#/components/responses/NotReady"}}}},
    "/v1/images": {
      "post": {"summary": "Upload an image with metadata (stored, embedded, indexed, durable before the response)", "security": [{"bearer": []}, {"apiKey": []}],
        "requestBody": {"required": true, "content": {"multipart/form-data": {"schema": {"$ref": "#/components/schemas/Upload"}}}},
        "responses": {"201": {"description": "stored", "content": {"application/json": {"schema": {"type": "object", "properties": {"created": {"type": "boolean"}, "repaired": {"type": "boolean", "description": "true when the bytes were stored already but their uploaded file was missing or damaged, and has been written again"}, "image": {"$ref": "#/components/schemas/Image"}}}}}},
          "200": {"description": "the same bytes are already in the collection (uploaded, or indexed from a file): the existing image", "content": {"application/json": {"schema": {"type": "object", "properties": {"created": {"type": "boolean"}, "repaired": {"type": "boolean", "description": "true when the bytes were stored already but their uploaded file was missing or damaged, and has been written again"}, "image": {"$ref": "#/components/schemas/Image"}}}}}},
          "400": {"$ref": "#/components/responses/BadRequest"},
          "411": {"$ref": "#/components/responses/LengthRequired"}, "413": {"$ref": "#/components/responses/TooLarge"}, "415": {"$ref": "#/components/responses/NotAnImage"}, "422": {"$ref": "#/components/responses/Unprocessable"},
          "503": {"description": "still loading (code not_ready), or another lookalike process (an index run) is writing the collection (code collection_locked, with Retry-After): retry", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
          "507": {"description": "the server's disk or quota is full (code insufficient_storage): nothing was stored", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}},
      "get": {"summary": "List images by id, a page at a time", "parameters": [{"name": "after", "in": "query", "schema": {"type": "integer", "default": 0}}, {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50}}, {"$ref": "#/components/parameters/where"}],
        "responses": {"200": {"description": "a page", "content": {"application/json": {"schema": {"type": "object", "properties": {"images": {"type": "array", "items": {"$ref": "#/components/schemas/Image"}}, "next_after": {"type": "integer", "nullable": true}}}}}}, "400": {"$ref": "#/components/responses/BadRequest"}}}},
    "/v1/images/{id}": {
      "parameters": [{"$ref": "#/components/parameters/id"}],
      "get": {"summary": "One image", "responses": {"200": {"description": "the image", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Image"}}}}, "404": {"$ref": "#/components/responses/NotFound"}}},
      "patch": {"summary": "Change metadata (JSON merge patch, RFC 7396)", "security": [{"bearer": []}, {"apiKey": []}],
        "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object"}}, "application/merge-patch+json": {"schema": {"type": "object"}}}},
        "responses": {"200": {"description": "the image", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Image"}}}}, "400": {"$ref": "#/components/responses/BadRequest"}, "404": {"$ref": "#/components/responses/NotFound"}}},
      "delete": {"summary": "Remove an image", "security": [{"bearer": []}, {"apiKey": []}],
        "responses": {"200": {"description": "removed", "content": {"application/json": {"schema": {"type": "object", "properties": {"removed": {"type": "integer"}}}}}}, "404": {"$ref": "#/components/responses/NotFound"}}}},
    "/v1/images/{id}/file": {"parameters": [{"$ref": "#/components/parameters/id"}],
      "get": {"summary": "The image file (one range in a Range header gets 206 with those bytes; several are ignored)", "parameters": [{"name": "Range", "in": "header", "description": "bytes=FIRST-LAST, one range; a Range that is not a valid bytes range (another unit, FIRST > LAST) is ignored, here and on every other route", "schema": {"type": "string"}}],
        "responses": {"200": {"description": "the bytes", "content": {"image/*": {"schema": {"type": "string", "format": "binary"}}}}, "206": {"description": "the requested range"}, "404": {"$ref": "#/components/responses/NotFound"}, "409": {"$ref": "#/components/responses/Damaged"},
          "416": {"description": "a range beyond the file (code range_not_satisfiable; Content-Range: bytes */SIZE)", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}}},
    "/v1/images/{id}/thumbnail": {"parameters": [{"$ref": "#/components/parameters/id"}, {"name": "size", "in": "query", "schema": {"type": "integer", "minimum": 16, "maximum": 1024, "default": 256}}],
      "get": {"summary": "A JPEG thumbnail (longest side = size, never enlarged; cached)", "responses": {"200": {"description": "JPEG", "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}}}, "400": {"$ref": "#/components/responses/BadRequest"}, "404": {"$ref": "#/components/responses/NotFound"}, "409": {"$ref": "#/components/responses/Damaged"}}}},
    "/v1/stats": {"get": {"summary": "Collection, model and batcher figures, category counts", "responses": {"200": {"description": "stats; categories: every category's image count, or the 10,000 most frequent with categories_truncated true", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
    "/healthz": {"get": {"summary": "The process is up", "responses": {"200": {"description": "ok"}}}},
    "/readyz": {"get": {"summary": "The collection and the model are loaded", "responses": {"200": {"description": "ready"}, "503": {"$ref": "#/components/responses/NotReady"}}}},
    "/metrics": {"get": {"summary": "Prometheus text format", "responses": {"200": {"description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
    "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3"}}}},
    "/docs": {"get": {"summary": "This document as a page", "responses": {"200": {"description": "HTML"}}}},
    "/": {"get": {"summary": "The web page", "responses": {"200": {"description": "HTML"}}}},
    "/assets/{name}": {"get": {"summary": "The web page's scripts and styles (inside the binary)", "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.-]+$"}}],
      "responses": {"200": {"description": "the asset"}, "404": {"$ref": "#/components/responses/NotFound"}}}}
  }
})json";

// The last part of a "$ref" ("#/components/schemas/Upload" -> "Upload").
std::string ref_name(const nlohmann::json& j) {
  const std::string ref = j.value("$ref", "");
  return ref.substr(ref.rfind('/') + 1);
}

std::string schema_text(const nlohmann::json& schema) {
  std::string t = schema.value("type", "");
  if (schema.contains("minimum") && schema.contains("maximum")) {
    t += " " + schema["minimum"].dump() + ".." + schema["maximum"].dump();
  } else if (schema.contains("minimum")) {
    t += " >= " + schema["minimum"].dump();
  }
  if (schema.contains("default")) t += ", default " + schema["default"].dump();
  return t;
}

// A table of the parameters of a path and of its operation ($refs resolved).
std::string parameters_html(const nlohmann::json& doc, const nlohmann::json& shared,
                            const nlohmann::json& own) {
  std::string rows;
  for (const auto* list : {&shared, &own}) {
    for (const auto& p0 : *list) {
      const auto p = p0.contains("$ref") ? doc["components"]["parameters"][ref_name(p0)] : p0;
      rows += "<tr><td><code>" + pipeline::markup_text(p.value("name", "")) + "</code></td><td>" +
              pipeline::markup_text(p.value("in", "")) + "</td><td>" +
              pipeline::markup_text(schema_text(p.value("schema", nlohmann::json::object()))) +
              "</td><td>" + pipeline::markup_text(p.value("description", "")) + "</td></tr>";
    }
  }
  if (rows.empty()) return "";
  return "<table><tr><th>parameter</th><th>in</th><th>type</th><th>meaning</th></tr>" + rows +
         "</table>";
}

// The body's media types and, for an object schema, its fields.
std::string request_body_html(const nlohmann::json& doc, const nlohmann::json& body) {
  std::string html = "<p>Body:</p><ul>";
  const auto contents = body.value("content", nlohmann::json::object());
  for (const auto& [media, content] : contents.items()) {
    const auto s0 = content.value("schema", nlohmann::json::object());
    const auto schema = s0.contains("$ref") ? doc["components"]["schemas"][ref_name(s0)] : s0;
    html += "<li><code>" + pipeline::markup_text(media) + "</code>";
    std::string fields;
    const auto properties = schema.value("properties", nlohmann::json::object());
    for (const auto& [name, f] : properties.items()) {
      fields += (fields.empty() ? "" : ", ") + std::string("<code>") + pipeline::markup_text(name) +
                "</code> (" + pipeline::markup_text(schema_text(f)) + ")";
    }
    if (!fields.empty()) html += ": " + fields;
    html += "</li>";
  }
  return html + "</ul>";
}

nlohmann::json ref(const std::string& response) {
  return {{"$ref", "#/components/responses/" + response}};
}

// 403 and its codes for this operation on this server; none when it cannot answer 403.
void set_forbidden(const std::string& path, bool write, bool needs_key, nlohmann::json& op,
                   ApiAccess access) {
  std::vector<std::string> causes;
  if (needs_key) causes.push_back("wrong API key (code forbidden)");
  if (write) causes.push_back("a write whose Origin is another site (code cross_origin)");
  if (access.host_check && path != "/healthz" && path != "/readyz") {
    causes.push_back(
        "a Host header that names no allowed host (code host_not_allowed; --allowed-host, "
        "LOOKALIKE_ALLOWED_HOSTS)");
  }
  auto& responses = op["responses"];
  if (causes.empty()) {
    responses.erase("403");
    return;
  }
  std::string description = causes.front();
  for (std::size_t i = 1; i < causes.size(); ++i) {
    description += (i + 1 == causes.size() ? ", or " : ", ") + causes[i];
  }
  responses["403"] = {
      {"description", description},
      {"content", {{"application/json", {{"schema", {{"$ref", "#/components/schemas/Error"}}}}}}}};
}

// The statuses every operation of its kind can answer, whatever its own handler does: the key
// (this server's flags), 403, 503 while loading (/v1), and for a body the checks made before
// it is read (411, 413, 415).
void set_statuses(const std::string& path, const std::string& method, nlohmann::json& op,
                  ApiAccess access) {
  const bool v1 = path.rfind("/v1/", 0) == 0;
  const bool write = v1 && method != "get" && path != "/v1/search";
  const bool needs_key = v1 && access.api_key && (write || access.private_reads);
  auto& responses = op["responses"];
  if (needs_key) {
    op["security"] = {{{"bearer", nlohmann::json::array()}}, {{"apiKey", nlohmann::json::array()}}};
    responses["401"] = ref("Unauthorized");
  } else {
    op.erase("security");
    responses.erase("401");
  }
  set_forbidden(path, write, needs_key, op, access);
  if (v1 && !responses.contains("503")) responses["503"] = ref("NotReady");  // or its own
  if (op.contains("requestBody")) {
    responses["411"] = ref("LengthRequired");
    responses["413"] = ref("TooLarge");
    if (!responses.contains("415")) responses["415"] = ref("UnsupportedBody");
  }
}

}  // namespace

nlohmann::json openapi_document(const std::string& version, ApiAccess access) {
  static const nlohmann::json doc = nlohmann::json::parse(kDocument);
  auto out = doc;
  out["info"]["version"] = version;
  for (auto& [path, item] : out["paths"].items()) {
    for (auto& [method, op] : item.items()) {
      if (method != "parameters") set_statuses(path, method, op, access);
    }
  }
  return out;
}

std::string openapi_html(const nlohmann::json& doc) {
  std::string html =
      "<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport "
      "content='width=device-width,initial-scale=1'><title>lookalike API</title><style>"
      "body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}"
      "code{background:#f2f2f2;padding:0 .25rem}h2{margin-top:2rem;font-size:1.1rem}"
      "td,th{padding:.2rem .6rem;text-align:left;vertical-align:top}</style></head><body>"
      "<h1>lookalike API " +
      pipeline::markup_text(doc["info"].value("version", "")) + "</h1><p>" +
      pipeline::markup_text(doc["info"].value("description", "")) +
      "</p><p>Machine-readable: <a href=/openapi.json>/openapi.json</a> (OpenAPI 3). "
      "The web page: <a href=/>/</a>.</p>";
  for (const auto& [path, item] : doc["paths"].items()) {
    for (const auto& [method, op] : item.items()) {
      if (method == "parameters") continue;
      std::string m = method;
      for (char& c : m) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
      html += "<h2><code>" + m + " " + pipeline::markup_text(path) + "</code></h2><p>" +
              pipeline::markup_text(op.value("summary", "")) + "</p>";
      html += parameters_html(doc, item.value("parameters", nlohmann::json::array()),
                              op.value("parameters", nlohmann::json::array()));
      if (op.contains("requestBody")) html += request_body_html(doc, op["requestBody"]);
      html += "<table><tr><th>status</th><th>meaning</th></tr>";
      for (const auto& [status, r] : op["responses"].items()) {
        std::string desc = r.value("description", "");
        if (r.contains("$ref")) {
          const std::string ref = r["$ref"];
          desc = doc["components"]["responses"][ref.substr(ref.rfind('/') + 1)].value("description",
                                                                                      "");
        }
        html += "<tr><td>" + status + "</td><td>" + pipeline::markup_text(desc) + "</td></tr>";
      }
      html += "</table>";
    }
  }
  return html + "</body></html>";
}

}  // namespace lookalike::server
