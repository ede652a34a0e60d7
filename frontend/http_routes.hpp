#pragma once
/// The HTTP server's routing rules (DESIGN.md §6), apart from any socket: which paths and
/// methods exist, what the API key guards, the query parameters of /debug/*, and the
/// answers that need no waiting. Asio-, Beast- and CAF-free, so they are tested as plain
/// functions; http_server.cpp does the I/O and http_generate.cpp the streaming.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>

#include "engine/engine.hpp"
#include "engine/tokenizer.hpp"
#include "frontend/auth_throttle.hpp"
#include "frontend/openai.hpp"

namespace tokenmill {

class api_keys;
class request_log;

/// Seconds since the Unix epoch: the OpenAI `created` field.
int64_t unix_time_s();

/// The path of a request target: everything before '?'.
std::string_view target_path(std::string_view target);

/// The value of query parameter `name` in `target` (no percent-decoding: the /debug
/// parameters are numbers); empty for a bare `name`; nullopt when absent.
std::optional<std::string> query_param(std::string_view target, std::string_view name);

/// A positive number from query parameter `name`: `fallback` when absent, nullopt when
/// malformed or out of (0, max].
std::optional<double> query_number(std::string_view target, std::string_view name, double fallback,
                                   double max);

/// 401 when `keys` is set, `path` is one they guard (/v1/*, /tokenize; also /metrics and
/// /debug/* when `protect_metrics`) and the Authorization header is not "Bearer <a key>";
/// nullopt when the request may pass. /health and /ready stay open for probes.
std::optional<openai::api_error> check_api_key(std::string_view path,
                                               std::string_view authorization, const api_keys* keys,
                                               bool protect_metrics);

/// check_api_key for a request from `peer` (its address) at `now`, slowed by `throttle`: a
/// peer that failed too often is answered 429 (rate_limit_error, "retry in N s") without
/// its key being looked at, and a wrong key (not a missing one) counts as a failure.
std::optional<openai::api_error> check_api_key(std::string_view path,
                                               std::string_view authorization, const api_keys* keys,
                                               bool protect_metrics, auth_throttle& throttle,
                                               std::string_view peer,
                                               auth_throttle::clock::time_point now);

/// A 200 answer: its Content-Type and body.
struct http_answer {
  std::string content_type;
  std::string body;
};

/// What a request needs from the server: nothing more (an error or a ready answer), or
/// the server itself (nullopt: generation, /ready, /metrics, /debug/snapshot, which wait
/// on the router or the supervisor).
using http_plan = std::optional<std::variant<openai::api_error, http_answer>>;

/// What the answers that need no waiting are made of.
struct http_route_context {
  const model_info& model;
  const tokenizer& tok;
  const request_log& log;  ///< for /debug/requests
};

/// The plan for a request with method `method` ("GET", "POST", …, as sent), target
/// `target` (path and query) and body `body`: 404 for unknown paths, 405 for a wrong
/// method, 400 for malformed parameters, and the body of /v1/models, /tokenize, /health
/// and /debug/requests.
http_plan plan_http_request(std::string_view method, std::string_view target, std::string_view body,
                            const http_route_context& ctx);

}  // namespace tokenmill
