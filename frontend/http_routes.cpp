#include "frontend/http_routes.hpp"

#include <chrono>
#include <exception>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "frontend/api_keys.hpp"
#include "frontend/request_log.hpp"

namespace tokenmill {

int64_t unix_time_s() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string_view target_path(std::string_view target) {
  return target.substr(0, target.find('?'));
}

std::optional<std::string> query_param(std::string_view target, std::string_view name) {
  std::string_view t = target;
  auto q = t.find('?');
  if (q == std::string_view::npos) return std::nullopt;
  t.remove_prefix(q + 1);
  while (!t.empty()) {
    auto amp = t.find('&');
    auto part = t.substr(0, amp);
    auto eq = part.find('=');
    if (part.substr(0, eq) == name)
      return std::string(eq == std::string_view::npos ? std::string_view() : part.substr(eq + 1));
    if (amp == std::string_view::npos) break;
    t.remove_prefix(amp + 1);
  }
  return std::nullopt;
}

std::optional<double> query_number(std::string_view target, std::string_view name, double fallback,
                                   double max) {
  auto v = query_param(target, name);
  if (!v) return fallback;
  try {
    size_t used = 0;
    double d = std::stod(*v, &used);
    if (used != v->size() || !(d > 0) || d > max) return std::nullopt;
    return d;
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

namespace {

/// Whether keys guard `path`.
bool key_guarded(std::string_view path, bool protect_metrics) {
  return path.starts_with("/v1/") || path == "/tokenize" ||
         (protect_metrics && (path == "/metrics" || path.starts_with("/debug/")));
}

}  // namespace

std::optional<openai::api_error> check_api_key(std::string_view path,
                                               std::string_view authorization, const api_keys* keys,
                                               bool protect_metrics, auth_throttle& throttle,
                                               std::string_view peer,
                                               auth_throttle::clock::time_point now) {
  if (!keys || !key_guarded(path, protect_metrics)) return std::nullopt;
  if (auto wait_s = throttle.blocked_for(peer, now)) {
    auto e = openai::from_errc(
        errc::overloaded,
        fmt::format("too many failed API key attempts from {}: retry in {} s", peer, wait_s));
    e.code = "too_many_failed_attempts";
    e.retry_after_s = wait_s;  // Retry-After
    return e;
  }
  auto e = check_api_key(path, authorization, keys, protect_metrics);
  if (e && bearer_token(authorization)) throttle.failed(peer, now);
  return e;
}

std::optional<openai::api_error> check_api_key(std::string_view path,
                                               std::string_view authorization, const api_keys* keys,
                                               bool protect_metrics) {
  if (!keys || !key_guarded(path, protect_metrics)) return std::nullopt;
  auto key = bearer_token(authorization);
  if (key && keys->accepts(*key)) return std::nullopt;
  auto e = openai::from_errc(
      errc::unauthenticated,
      key ? "incorrect API key" : "missing API key: send 'Authorization: Bearer <key>'");
  e.code = "invalid_api_key";  // OpenAI's code for it, which its clients know
  return e;
}

http_plan plan_http_request(std::string_view method, std::string_view target, std::string_view body,
                            const http_route_context& ctx) {
  using answer = std::variant<openai::api_error, http_answer>;
  const std::string_view path = target_path(target);
  const auto& model = ctx.model;
  auto wrong_method = [&](const char* allowed) {
    return openai::api_error{405, "invalid_request_error",
                             fmt::format("{} {} is not allowed; use {}", method, path, allowed), "",
                             "method_not_allowed"};
  };
  auto json_reply = [](std::string text) {
    return answer(http_answer{"application/json", std::move(text)});
  };
  if (path == "/v1/completions" || path == "/v1/chat/completions")
    return method == "POST" ? std::nullopt : std::optional<answer>(wrong_method("POST"));
  // The Responses API: generation, and stored responses (the server holds the store).
  if (path == "/v1/responses")
    return method == "POST" ? std::nullopt : std::optional<answer>(wrong_method("POST"));
  if (path.starts_with("/v1/responses/"))
    return method == "GET" || method == "DELETE"
               ? std::nullopt
               : std::optional<answer>(wrong_method("GET or DELETE"));
  if (path == "/ready" || path == "/metrics" || path == "/debug/snapshot") {
    if (method != "GET") return wrong_method("GET");
    if (path == "/debug/snapshot" && !query_number(target, "window", 30, 86400))
      return openai::api_error{400, "invalid_request_error",
                               "'window' must be a number of seconds in (0, 86400]", "window", ""};
    return std::nullopt;
  }
  if (path == "/debug/requests") {
    // The newest finished requests, oldest first, with their whole timing record.
    if (method != "GET") return wrong_method("GET");
    auto limit = query_number(target, "limit", 100, 1e9);
    if (!limit)
      return openai::api_error{400, "invalid_request_error", "'limit' must be a positive integer",
                               "limit", ""};
    nlohmann::ordered_json out;
    out["requests"] = nlohmann::ordered_json::array();
    for (const auto& r : ctx.log.recent(static_cast<size_t>(*limit)))
      out["requests"].push_back(to_json(r));
    return json_reply(out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
  }
  if (path == "/v1/models") {
    if (method != "GET") return wrong_method("GET");
    return json_reply(openai::models_body(model.name, unix_time_s(), model.max_context));
  }
  if (path.starts_with("/v1/models/")) {
    if (method != "GET") return wrong_method("GET");
    auto name = path.substr(std::string_view("/v1/models/").size());
    if (name != model.name)
      return openai::api_error{
          404, "invalid_request_error",
          fmt::format("The model '{}' does not exist; this server serves '{}'", name, model.name),
          "model", "model_not_found"};
    auto list =
        nlohmann::json::parse(openai::models_body(model.name, unix_time_s(), model.max_context));
    return json_reply(list["data"][0].dump());
  }
  if (path == "/tokenize") {
    if (method != "POST") return wrong_method("POST");
    auto j = nlohmann::json::parse(body, nullptr, false);
    if (!j.is_object() || !j.contains("prompt") || !j["prompt"].is_string())
      return openai::api_error{400, "invalid_request_error",
                               "the body must be a JSON object with a string 'prompt'", "prompt",
                               ""};
    bool add_special = true;
    if (j.contains("add_special_tokens")) {
      if (!j["add_special_tokens"].is_boolean())
        return openai::api_error{400, "invalid_request_error",
                                 "'add_special_tokens' must be a boolean", "add_special_tokens",
                                 ""};
      add_special = j["add_special_tokens"].get<bool>();
    }
    auto ids = ctx.tok.encode(j["prompt"].get<std::string>(), add_special);
    nlohmann::ordered_json out;
    out["count"] = ids.size();
    out["max_model_len"] = model.max_context;
    out["tokens"] = ids;
    return json_reply(out.dump());
  }
  if (path == "/health") {
    if (method != "GET") return wrong_method("GET");
    return json_reply(R"({"status":"ok"})");
  }
  return openai::api_error{404, "invalid_request_error", fmt::format("no such endpoint: {}", path),
                           "", "not_found"};
}

}  // namespace tokenmill
