#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include "engine/tokenizer.hpp"
#include "frontend/api_keys.hpp"
#include "frontend/http_routes.hpp"
#include "frontend/request_log.hpp"

using namespace tokenmill;

namespace {

struct fixture {
  model_info model;
  byte_word_tokenizer tok{1000};
  request_log log{8};
  fixture() {
    model.name = "tiny";
    model.vocab_size = 1000;
    model.max_context = 64;
  }
  http_plan plan(std::string_view method, std::string_view target, std::string_view body = "") {
    return plan_http_request(method, target, body, http_route_context{model, tok, log});
  }
};

openai::api_error error_of(const http_plan& p) {
  REQUIRE(p.has_value());
  REQUIRE(std::holds_alternative<openai::api_error>(*p));
  return std::get<openai::api_error>(*p);
}

http_answer answer_of(const http_plan& p) {
  REQUIRE(p.has_value());
  REQUIRE(std::holds_alternative<http_answer>(*p));
  return std::get<http_answer>(*p);
}

}  // namespace

TEST_CASE("target_path drops the query", "[http_routes]") {
  CHECK(target_path("/debug/snapshot?window=5") == "/debug/snapshot");
  CHECK(target_path("/health") == "/health");
  CHECK(target_path("/?") == "/");
  CHECK(target_path("") == "");
}

TEST_CASE("query_param finds a parameter by its whole name", "[http_routes]") {
  CHECK(query_param("/x?a=1&b=2", "a") == "1");
  CHECK(query_param("/x?a=1&b=2", "b") == "2");
  CHECK(query_param("/x?ab=1", "a") == std::nullopt);
  CHECK(query_param("/x?a", "a") == "");
  CHECK(query_param("/x?a=", "a") == "");
  CHECK(query_param("/x", "a") == std::nullopt);
  CHECK(query_param("/x?b=1&&a=3", "a") == "3");
  CHECK(query_param("/x?a=1&a=2", "a") == "1");  // the first one wins
}

TEST_CASE("query_number accepts positive numbers up to max only", "[http_routes]") {
  CHECK(query_number("/x", "window", 30, 100) == 30);
  CHECK(query_number("/x?window=2.5", "window", 30, 100) == 2.5);
  CHECK(query_number("/x?window=100", "window", 30, 100) == 100);
  CHECK(query_number("/x?window=100.5", "window", 30, 100) == std::nullopt);
  CHECK(query_number("/x?window=0", "window", 30, 100) == std::nullopt);
  CHECK(query_number("/x?window=-1", "window", 30, 100) == std::nullopt);
  CHECK(query_number("/x?window=5s", "window", 30, 100) == std::nullopt);
  CHECK(query_number("/x?window=", "window", 30, 100) == std::nullopt);
  CHECK(query_number("/x?window=nan", "window", 30, 100) == std::nullopt);
}

TEST_CASE("check_api_key guards /v1/* and /tokenize when keys are set", "[http_routes]") {
  auto made = api_keys::from_key("k");
  REQUIRE(made.ok());
  const api_keys* k = made->get();
  CHECK_FALSE(check_api_key("/v1/completions", "", nullptr, true));
  CHECK_FALSE(check_api_key("/v1/completions", "Bearer k", k, false));
  CHECK_FALSE(check_api_key("/tokenize", "bearer k", k, false));
  CHECK_FALSE(check_api_key("/health", "", k, true));
  CHECK_FALSE(check_api_key("/ready", "", k, true));
  CHECK_FALSE(check_api_key("/metrics", "", k, false));
  CHECK_FALSE(check_api_key("/debug/requests", "", k, false));
  auto e = check_api_key("/v1/models", "Bearer wrong", k, false);
  REQUIRE(e);
  CHECK(e->status == 401);  // errc::unauthenticated (openai::from_errc)
  CHECK(e->type == "authentication_error");
  CHECK(e->code == "invalid_api_key");
  CHECK(e->message == "incorrect API key");
  auto missing = check_api_key("/tokenize", "", k, false);
  REQUIRE(missing);
  CHECK(missing->message.find("missing API key") != std::string::npos);
  CHECK(check_api_key("/v1/chat/completions", "k", k, false));  // the scheme is required
  CHECK(check_api_key("/v1/completions", "Bearer kk", k, false));
}

TEST_CASE("check_api_key guards /metrics and /debug/* when asked to", "[http_routes]") {
  auto made = api_keys::from_key("k");
  REQUIRE(made.ok());
  const api_keys* k = made->get();
  CHECK(check_api_key("/metrics", "", k, true));
  CHECK(check_api_key("/metrics", "Bearer x", k, true));
  CHECK_FALSE(check_api_key("/metrics", "Bearer k", k, true));
  CHECK(check_api_key("/debug/snapshot", "", k, true));
  CHECK_FALSE(check_api_key("/debug/requests", "Bearer k", k, true));
  CHECK_FALSE(check_api_key("/health", "", k, true));
}

TEST_CASE("generation and status routes are left to the server", "[http_routes]") {
  fixture f;
  CHECK_FALSE(f.plan("POST", "/v1/completions").has_value());
  CHECK_FALSE(f.plan("POST", "/v1/chat/completions?x=1").has_value());
  CHECK_FALSE(f.plan("GET", "/ready").has_value());
  CHECK_FALSE(f.plan("GET", "/metrics").has_value());
  CHECK_FALSE(f.plan("GET", "/debug/snapshot?window=5").has_value());
  CHECK_FALSE(f.plan("POST", "/v1/responses").has_value());
  CHECK_FALSE(f.plan("GET", "/v1/responses/resp_1").has_value());
  CHECK_FALSE(f.plan("DELETE", "/v1/responses/resp_1").has_value());
}

TEST_CASE("a wrong method is 405 and names the allowed one", "[http_routes]") {
  fixture f;
  for (auto [method, target, allowed] : {std::tuple{"GET", "/v1/completions", "POST"},
                                         {"PUT", "/v1/chat/completions", "POST"},
                                         {"POST", "/ready", "GET"},
                                         {"POST", "/metrics", "GET"},
                                         {"DELETE", "/health", "GET"},
                                         {"POST", "/v1/models", "GET"},
                                         {"POST", "/v1/models/tiny", "GET"},
                                         {"GET", "/tokenize", "POST"},
                                         {"POST", "/debug/requests", "GET"},
                                         {"GET", "/v1/responses", "POST"},
                                         {"POST", "/v1/responses/resp_1", "GET or DELETE"}}) {
    INFO(method << " " << target);
    const auto e = error_of(f.plan(method, target));
    CHECK(e.status == 405);
    CHECK(e.code == "method_not_allowed");
    CHECK(e.message == std::string(method) + " " + target + " is not allowed; use " + allowed);
  }
}

TEST_CASE("an unknown path is 404", "[http_routes]") {
  fixture f;
  const auto e = error_of(f.plan("GET", "/v2/completions?a=b"));
  CHECK(e.status == 404);
  CHECK(e.code == "not_found");
  CHECK(e.message == "no such endpoint: /v2/completions");
  const auto m = error_of(f.plan("GET", "/v1/models/other"));
  CHECK(m.status == 404);
  CHECK(m.code == "model_not_found");
  CHECK(m.param == "model");
}

TEST_CASE("malformed /debug parameters are 400", "[http_routes]") {
  fixture f;
  CHECK(error_of(f.plan("GET", "/debug/snapshot?window=0")).param == "window");
  CHECK(error_of(f.plan("GET", "/debug/snapshot?window=86401")).status == 400);
  CHECK(error_of(f.plan("GET", "/debug/requests?limit=x")).param == "limit");
}

TEST_CASE("/health, /v1/models and /debug/requests answer at once", "[http_routes]") {
  fixture f;
  const auto h = answer_of(f.plan("GET", "/health"));
  CHECK(h.content_type == "application/json");
  CHECK(h.body == R"({"status":"ok"})");

  auto list = nlohmann::json::parse(answer_of(f.plan("GET", "/v1/models")).body);
  REQUIRE(list["data"].size() == 1);
  CHECK(list["data"][0]["id"] == "tiny");
  auto one = nlohmann::json::parse(answer_of(f.plan("GET", "/v1/models/tiny")).body);
  CHECK(one["id"] == "tiny");

  generation_summary g;
  g.id = 7;
  f.log.record("http", g, 0.5);
  auto reqs = nlohmann::json::parse(answer_of(f.plan("GET", "/debug/requests?limit=5")).body);
  REQUIRE(reqs["requests"].size() == 1);
}

TEST_CASE("/tokenize encodes the prompt and validates its body", "[http_routes]") {
  fixture f;
  auto j = nlohmann::json::parse(answer_of(f.plan("POST", "/tokenize", R"({"prompt":"hi"})")).body);
  CHECK(j["count"] == 3);  // BOS, 'h', 'i'
  CHECK(j["max_model_len"] == 64);
  CHECK(j["tokens"] == nlohmann::json::array({1, 'h' + 3, 'i' + 3}));
  auto no_bos = nlohmann::json::parse(
      answer_of(f.plan("POST", "/tokenize", R"({"prompt":"hi","add_special_tokens":false})")).body);
  CHECK(no_bos["count"] == 2);
  CHECK(error_of(f.plan("POST", "/tokenize", "not json")).param == "prompt");
  CHECK(error_of(f.plan("POST", "/tokenize", R"({"prompt":3})")).status == 400);
  CHECK(error_of(f.plan("POST", "/tokenize", R"({"prompt":"a","add_special_tokens":1})")).param ==
        "add_special_tokens");
}
