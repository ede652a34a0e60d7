// The OpenAI-compatible HTTP API of `tokenmill serve`: endpoints, completions and chat
// (whole and streamed), the error mapping, client disconnects, malformed HTTP, curl and
// the official `openai` npm client.
#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <thread>

#include <nlohmann/json.hpp>

#include "frontend/http_client.hpp"
#include "harness.hpp"
#include "tests/skip.hpp"

using namespace tokenmill;
using namespace tokenmill::testing;
using json = nlohmann::json;

namespace {

std::unique_ptr<http_client> connect_http(const server& s) {
  auto c = http_client::connect("127.0.0.1", s.http_port(), 5);
  REQUIRE(c.ok());
  return std::move(*c);
}

http_response post(http_client& c, const std::string& target, const json& body,
                   const http_headers& headers = {}) {
  auto r = c.request("POST", target, body.dump(), "application/json", headers, 30);
  INFO((r ? "" : r.error().message));
  REQUIRE(r.ok());
  return *r;
}

http_response get(http_client& c, const std::string& target) {
  auto r = c.request("GET", target, {}, "", {}, 30);
  INFO((r ? "" : r.error().message));
  REQUIRE(r.ok());
  return *r;
}

/// A streamed request: every event's data, in order.
struct stream_result {
  http_response res;
  std::vector<std::string> events;
};

stream_result post_stream(http_client& c, const std::string& target, const json& body) {
  stream_result out;
  auto r = c.post_sse(
      target, body.dump(), [&](std::string_view data, int64_t) { out.events.emplace_back(data); },
      30);
  INFO((r ? "" : r.error().message));
  REQUIRE(r.ok());
  out.res = *r;
  return out;
}

void check_error(const http_response& r, int status, const std::string& mention) {
  INFO("status " << r.status << " body " << r.body);
  CHECK(r.status == status);
  auto j = json::parse(r.body, nullptr, false);
  REQUIRE(j.is_object());
  REQUIRE(j.contains("error"));
  CHECK(j["error"]["message"].is_string());
  CHECK(j["error"]["type"].is_string());
  CHECK(j["error"]["message"].get<std::string>().find(mention) != std::string::npos);
}

/// A raw TCP connection to 127.0.0.1:port (for malformed HTTP and disconnects).
int raw_connect(uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
  timeval tv{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  return fd;
}

std::string raw_exchange(uint16_t port, const std::string& bytes) {
  int fd = raw_connect(port);
  REQUIRE(::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL) ==
          static_cast<ssize_t>(bytes.size()));
  std::string out;
  char buf[4096];
  for (;;) {
    auto n = ::recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return out;
}

std::string post_request(const std::string& target, const std::string& body) {
  return "POST " + target + " HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" +
         "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
}

std::string joined_text(const std::vector<std::string>& events, bool chat) {
  std::string text;
  for (const auto& e : events) {
    if (e == "[DONE]") continue;
    auto j = json::parse(e);
    if (!j.contains("choices") || j["choices"].empty()) continue;
    const auto& c = j["choices"][0];
    if (chat) {
      if (c["delta"].contains("content") && c["delta"]["content"].is_string())
        text += c["delta"]["content"].get<std::string>();
    } else {
      text += c["text"].get<std::string>();
    }
  }
  return text;
}

}  // namespace

TEST_CASE("http: health, readiness, models, metrics and unknown endpoints", "[integration][http]") {
  server srv;
  REQUIRE(srv.http_port() != 0);
  auto c = connect_http(srv);
  auto h = get(*c, "/health");
  CHECK(h.status == 200);
  auto ready = get(*c, "/ready");
  INFO(ready.body);
  CHECK(ready.status == 200);
  CHECK(json::parse(ready.body)["ready"] == true);

  auto models = get(*c, "/v1/models");
  REQUIRE(models.status == 200);
  auto m = json::parse(models.body);
  CHECK(m["object"] == "list");
  REQUIRE(m["data"].size() == 1);
  CHECK(m["data"][0]["id"] == "sim");
  CHECK(get(*c, "/v1/models/sim").status == 200);
  check_error(get(*c, "/v1/models/gpt-4"), 404, "gpt-4");
  check_error(get(*c, "/v1/nothing"), 404, "/v1/nothing");
  auto wrong = c->request("GET", "/v1/completions", {}, "", {}, 10);
  REQUIRE(wrong.ok());
  check_error(*wrong, 405, "POST");

  auto done = post(*c, "/v1/completions", {{"prompt", "count me"}, {"max_tokens", 3}});
  REQUIRE(done.status == 200);
  auto metrics = get(*c, "/metrics");
  REQUIRE(metrics.status == 200);
  CHECK(metrics.header("content-type").find("text/plain") != std::string_view::npos);
  INFO(metrics.body);
  CHECK(metrics.body.find(
            "tokenmill_requests_total{api=\"http\",node=\"local\",outcome=\"length\"} 1") !=
        std::string::npos);
  CHECK(metrics.body.find("tokenmill_time_to_first_token_seconds_count{node=\"local\"} 1") !=
        std::string::npos);
  CHECK(metrics.body.find("tokenmill_ttft_stage_seconds_bucket") != std::string::npos);
  CHECK(metrics.body.find("tokenmill_kv_blocks_capacity{") != std::string::npos);
  CHECK(metrics.body.find("tokenmill_worker_up{") != std::string::npos);
  CHECK(metrics.body.find("tokenmill_prefix_cache_hit_rate{") != std::string::npos);
  // The node's KV transport: the one prompt's write, none failed, none in flight.
  CHECK(metrics.body.find("tokenmill_kv_transfers_total{node=\"local\",outcome=\"ok\","
                          "transport=\"inline\"} 1\n") != std::string::npos);
  CHECK(metrics.body.find("tokenmill_kv_transfers_in_flight{node=\"local\",transport=\"inline\"} "
                          "0\n") != std::string::npos);
  // The prompt's KV moved from the prefill worker to the decode worker.
  CHECK(metrics.body.find(
            "tokenmill_kv_bytes_total{node=\"local\",role=\"prefill\",worker=\"prefill0\"} 0\n") ==
        std::string::npos);
  CHECK(metrics.body.find(
            "tokenmill_kv_bytes_total{node=\"local\",role=\"prefill\",worker=\"prefill0\"} ") !=
        std::string::npos);
}

TEST_CASE("http: completions whole and streamed give the RPC API's text", "[integration][http]") {
  server srv;
  auto c = connect_http(srv);
  // The same request through the Cap'n Proto API.
  auto rpc = srv.generate({"--max-tokens", "8", "--json", "The quick brown fox"});
  REQUIRE(rpc.exit_code == 0);
  auto rj = last_json_line(rpc.out);
  const std::string want = rj["text"];

  json body{{"model", "sim"}, {"prompt", "The quick brown fox"}, {"max_tokens", 8}};
  auto whole = post(*c, "/v1/completions", body);
  INFO(whole.body);
  REQUIRE(whole.status == 200);
  auto j = json::parse(whole.body);
  CHECK(j["object"] == "text_completion");
  CHECK(j["model"] == "sim");
  CHECK(j["choices"][0]["text"] == want);
  CHECK(j["choices"][0]["finish_reason"] == "length");
  CHECK(j["usage"]["completion_tokens"] == 8);
  CHECK(j["usage"]["prompt_tokens"] == rj["prompt_tokens"]);
  CHECK(j["usage"]["total_tokens"] == j["usage"]["prompt_tokens"].get<int>() + 8);
  // The timing extension: the stages add up to the server-side TTFT.
  REQUIRE(j.contains("tokenmill"));
  double sum = 0;
  for (auto& [name, ms] : j["tokenmill"]["stages"].items())
    sum += ms.get<double>();
  CHECK(j["tokenmill"]["stages"].contains("prefill_compute"));
  CHECK(sum == Approx(j["tokenmill"]["ttft_ms"].get<double>()).epsilon(0.01));

  body["stream"] = true;
  body["stream_options"] = {{"include_usage", true}};
  auto s = post_stream(*c, "/v1/completions", body);
  CHECK(s.res.status == 200);
  CHECK(s.res.header("content-type") == "text/event-stream");
  REQUIRE(s.events.size() >= 3);
  CHECK(s.events.back() == "[DONE]");
  CHECK(joined_text(s.events, false) == want);
  auto usage = json::parse(s.events[s.events.size() - 2]);
  CHECK(usage["choices"].empty());
  CHECK(usage["usage"]["completion_tokens"] == 8);
  CHECK(usage["tokenmill"]["stages"].contains("frontend_to_router"));
  auto last = json::parse(s.events[s.events.size() - 3]);
  CHECK(last["choices"][0]["finish_reason"] == "length");

  // Token ids as the prompt; the connection is reused throughout.
  auto ids = post(*c, "/v1/completions", {{"prompt", {5, 6, 7, 8}}, {"max_tokens", 2}});
  CHECK(ids.status == 200);
  CHECK(json::parse(ids.body)["usage"]["prompt_tokens"] == 4);
}

TEST_CASE("http: chat completions, whole and streamed", "[integration][http]") {
  server srv;
  auto c = connect_http(srv);
  json body{{"messages",
             {{{"role", "system"}, {"content", "You are terse."}},
              {{"role", "user"}, {"content", "Say hi"}}}},
            {"max_tokens", 6}};
  auto whole = post(*c, "/v1/chat/completions", body);
  INFO(whole.body);
  REQUIRE(whole.status == 200);
  auto j = json::parse(whole.body);
  CHECK(j["object"] == "chat.completion");
  CHECK(j["choices"][0]["message"]["role"] == "assistant");
  CHECK(j["choices"][0]["finish_reason"] == "length");
  CHECK(j["usage"]["completion_tokens"] == 6);
  const std::string want = j["choices"][0]["message"]["content"];

  body["stream"] = true;
  auto s = post_stream(*c, "/v1/chat/completions", body);
  REQUIRE(s.events.size() >= 3);
  auto first = json::parse(s.events.front());
  CHECK(first["object"] == "chat.completion.chunk");
  CHECK(first["choices"][0]["delta"]["role"] == "assistant");
  CHECK(s.events.back() == "[DONE]");
  CHECK(joined_text(s.events, true) == want);

  // Without max_tokens a chat completion may fill the context.
  server small{{"--max-context", "200"}};
  auto c2 = connect_http(small);
  auto fill =
      post(*c2, "/v1/chat/completions", {{"messages", {{{"role", "user"}, {"content", "hi"}}}}});
  INFO(fill.body);
  REQUIRE(fill.status == 200);
  auto f = json::parse(fill.body);
  CHECK(f["usage"]["total_tokens"] == 200);
}

TEST_CASE("http: logprobs, whole and streamed, chat and completions", "[integration][http]") {
  server srv;
  auto c = connect_http(srv);
  const json msgs = {{{"role", "user"}, {"content", "Say hi"}}};
  // Chat: logprobs + top_logprobs, greedy, so each chosen token heads its own list.
  json chat{{"messages", msgs}, {"max_tokens", 5}, {"logprobs", true}, {"top_logprobs", 3}};
  auto whole = post(*c, "/v1/chat/completions", chat);
  INFO(whole.body);
  REQUIRE(whole.status == 200);
  auto j = json::parse(whole.body);
  const auto& content = j["choices"][0]["logprobs"]["content"];
  REQUIRE(content.size() == 5);
  std::string joined;
  for (const auto& e : content) {
    CHECK(e["logprob"].get<double>() <= 0);
    REQUIRE(e["top_logprobs"].size() == 3);
    CHECK(e["top_logprobs"][0]["token"] == e["token"]);
    CHECK(e["top_logprobs"][0]["logprob"] == e["logprob"]);
    CHECK(e["bytes"].is_array());
    joined += e["token"].get<std::string>();
  }
  CHECK(joined == j["choices"][0]["message"]["content"]);
  chat["stream"] = true;
  auto st = post_stream(*c, "/v1/chat/completions", chat);
  json streamed = json::array();
  for (const auto& e : st.events) {
    if (e == "[DONE]") continue;
    auto k = json::parse(e);
    if (k["choices"].empty() || k["choices"][0]["logprobs"].is_null()) continue;
    for (const auto& x : k["choices"][0]["logprobs"]["content"])
      streamed.push_back(x);
  }
  CHECK(streamed == content);
  // Completions: logprobs N, the legacy shape.
  json cmpl{{"prompt", "hello"}, {"max_tokens", 4}, {"logprobs", 2}};
  auto w = post(*c, "/v1/completions", cmpl);
  REQUIRE(w.status == 200);
  auto cj = json::parse(w.body);
  const auto& lp = cj["choices"][0]["logprobs"];
  REQUIRE(lp["tokens"].size() == 4);
  CHECK(lp["token_logprobs"].size() == 4);
  CHECK(lp["top_logprobs"].size() == 4);
  CHECK(lp["text_offset"][0] == 0);
  CHECK(lp["top_logprobs"][0].size() >= 2);
  CHECK(lp["top_logprobs"][0].contains(lp["tokens"][0].get<std::string>()));
  cmpl["stream"] = true;
  auto cs = post_stream(*c, "/v1/completions", cmpl);
  json tokens = json::array();
  for (const auto& e : cs.events) {
    if (e == "[DONE]") continue;
    auto k = json::parse(e);
    if (k["choices"].empty() || k["choices"][0]["logprobs"].is_null()) continue;
    for (const auto& t : k["choices"][0]["logprobs"]["tokens"])
      tokens.push_back(t);
  }
  CHECK(tokens == lp["tokens"]);
  // Not asked for: null, as before.
  auto plain =
      json::parse(post(*c, "/v1/completions", {{"prompt", "hello"}, {"max_tokens", 2}}).body);
  CHECK(plain["choices"][0]["logprobs"].is_null());
  // Penalties and a bias are accepted (their effect has unit and generate tests).
  auto p = post(*c, "/v1/completions",
                {{"prompt", "hello"},
                 {"max_tokens", 1},
                 {"presence_penalty", 1.0},
                 {"frequency_penalty", -1.0},
                 {"repetition_penalty", 1.1},
                 {"logit_bias", {{"0", 1}}}});
  CHECK(p.status == 200);
  // Bad values: a 400 naming the field.
  check_error(post(*c, "/v1/chat/completions",
                   {{"messages", msgs}, {"logprobs", true}, {"top_logprobs", 21}}),
              400, "'top_logprobs' must be in [0, 20]");
  check_error(post(*c, "/v1/completions", {{"prompt", "x"}, {"logprobs", 6}}), 400,
              "'logprobs' must be in [0, 5]");
  check_error(post(*c, "/v1/completions", {{"prompt", "x"}, {"logit_bias", {{"99999999", 1}}}}),
              400, "logit_bias token id 99999999 is outside the vocabulary");
  check_error(post(*c, "/v1/completions", {{"prompt", "x"}, {"presence_penalty", "high"}}), 400,
              "'presence_penalty' must be a number");
}

TEST_CASE("http: a list of prompts, n > 1, best_of and echo", "[integration][http]") {
  server srv;
  auto c = connect_http(srv);
  // Each prompt alone, for reference (greedy).
  auto alone = [&](const std::string& prompt) {
    auto r = post(*c, "/v1/completions", {{"prompt", prompt}, {"max_tokens", 4}});
    REQUIRE(r.status == 200);
    return json::parse(r.body)["choices"][0]["text"].get<std::string>();
  };
  const auto a = alone("first prompt"), b = alone("second prompt");
  auto list = post(*c, "/v1/completions",
                   {{"prompt", {"first prompt", "second prompt"}}, {"max_tokens", 4}});
  INFO(list.body);
  REQUIRE(list.status == 200);
  auto lj = json::parse(list.body);
  REQUIRE(lj["choices"].size() == 2);
  CHECK(lj["choices"][0]["index"] == 0);
  CHECK(lj["choices"][0]["text"] == a);
  CHECK(lj["choices"][1]["index"] == 1);
  CHECK(lj["choices"][1]["text"] == b);
  CHECK(lj["usage"]["completion_tokens"] == 8);
  // Streamed: choices by index.
  auto st = post_stream(
      *c, "/v1/completions",
      {{"prompt", {"first prompt", "second prompt"}}, {"max_tokens", 4}, {"stream", true}});
  std::map<int, std::string> texts;
  for (const auto& e : st.events) {
    if (e == "[DONE]") continue;
    auto k = json::parse(e);
    for (const auto& ch : k["choices"])
      texts[ch["index"].get<int>()] += ch["text"].get<std::string>();
  }
  CHECK(texts[0] == a);
  CHECK(texts[1] == b);
  // n = 3 with a seed: sequence i samples with seed + i, so choice 0 is the seeded request.
  json sampled{{"prompt", "first prompt"}, {"max_tokens", 6}, {"temperature", 1.0}, {"seed", 5}};
  auto single = json::parse(post(*c, "/v1/completions", sampled).body);
  sampled["n"] = 3;
  auto three = json::parse(post(*c, "/v1/completions", sampled).body);
  REQUIRE(three["choices"].size() == 3);
  CHECK(three["choices"][0]["text"] == single["choices"][0]["text"]);
  CHECK(three["usage"]["completion_tokens"] == 18);
  CHECK(three["usage"]["prompt_tokens"] == single["usage"]["prompt_tokens"]);
  std::set<std::string> distinct;
  for (const auto& ch : three["choices"])
    distinct.insert(ch["text"].get<std::string>());
  CHECK(distinct.size() > 1);
  // best_of 4, n 1: the returned choice is the most likely of four seeded samples.
  sampled["n"] = 1;
  sampled["best_of"] = 4;
  sampled["logprobs"] = 0;
  auto best = json::parse(post(*c, "/v1/completions", sampled).body);
  REQUIRE(best["choices"].size() == 1);
  sampled.erase("best_of");
  sampled["n"] = 4;
  auto four = json::parse(post(*c, "/v1/completions", sampled).body);
  double top = -1e300;
  std::string top_text;
  for (const auto& ch : four["choices"]) {
    double sum = 0;
    for (const auto& v : ch["logprobs"]["token_logprobs"])
      sum += v.get<double>();
    if (sum > top) {
      top = sum;
      top_text = ch["text"];
    }
  }
  CHECK(best["choices"][0]["text"] == top_text);
  // Chat with n = 2.
  auto cn =
      post(*c, "/v1/chat/completions",
           {{"messages", {{{"role", "user"}, {"content", "hi"}}}}, {"max_tokens", 3}, {"n", 2}});
  REQUIRE(cn.status == 200);
  CHECK(json::parse(cn.body)["choices"].size() == 2);
  // echo: the prompt's text comes first.
  auto echoed = json::parse(
      post(*c, "/v1/completions", {{"prompt", "first prompt"}, {"max_tokens", 4}, {"echo", true}})
          .body);
  CHECK(echoed["choices"][0]["text"] == "first prompt" + a);
  // A bad prompt of a list: the request is refused, naming it.
  check_error(post(*c, "/v1/completions", {{"prompt", {"ok", ""}}, {"max_tokens", 2}}), 400,
              "'prompt[1]' is empty");
  CHECK(eventually([&] { return workers_idle(srv.status()); }, std::chrono::milliseconds(3000)));
}

TEST_CASE("http: stop strings end the text and the request", "[integration][http]") {
  server srv{{"--sim-decode-step-ms", "2"}};
  auto c = connect_http(srv);
  auto full = post(*c, "/v1/completions", {{"prompt", "stop here"}, {"max_tokens", 40}});
  REQUIRE(full.status == 200);
  std::string text = json::parse(full.body)["choices"][0]["text"];
  REQUIRE(text.size() > 12);
  std::string stop = text.substr(6, 3);
  auto cut_at = text.find(stop);
  auto r =
      post(*c, "/v1/completions", {{"prompt", "stop here"}, {"max_tokens", 40}, {"stop", {stop}}});
  INFO(r.body);
  REQUIRE(r.status == 200);
  auto j = json::parse(r.body);
  CHECK(j["choices"][0]["text"] == text.substr(0, cut_at));
  CHECK(j["choices"][0]["finish_reason"] == "stop");
  CHECK(j["usage"]["completion_tokens"].get<int>() < 40);
  CHECK(eventually([&] { return workers_idle(srv.status()); }, milliseconds(3000)));
}

TEST_CASE("http: bad requests get OpenAI errors with the right status", "[integration][http]") {
  server srv{{"--max-context", "64"}, {"--max-body-bytes", "4096"}};
  auto c = connect_http(srv);
  auto bad = [&](const std::string& raw, int status, const std::string& mention) {
    auto r = c->request("POST", "/v1/completions", raw, "application/json", {}, 10);
    REQUIRE(r.ok());
    INFO("body sent: " << raw.substr(0, 200));
    check_error(*r, status, mention);
  };
  bad("{not json", 400, "JSON");
  bad("[1,2]", 400, "object");
  bad(R"({"prompt": 5})", 400, "prompt");
  bad(R"({"prompt": "hi", "max_tokens": 0})", 400, "max_tokens");
  bad(R"({"prompt": "hi", "max_tokens": 100})", 400, "context");
  bad(R"({"prompt": "hi", "temperature": "hot"})", 400, "temperature");
  bad(R"({"prompt": "hi", "top_p": 0})", 400, "top_p");
  bad(R"({"prompt": "hi", "n": 17})", 400, "'n' must be in [1, 16]");
  bad(R"({"prompt": ["a", ""]})", 400, "'prompt[1]' is empty");
  bad(R"({"prompt": ["a", "b"], "max_tokens": 100})", 400, "prompt 0: ");
  bad(R"({"prompt": [1, 99999999]})", 400, "vocabulary");
  bad(R"({"prompt": "hi", "model": "gpt-4"})", 404, "gpt-4");
  bad(R"({"prompt": "hi", "stop": 7})", 400, "stop");
  bad(std::string(R"({"prompt": ")") + std::string(5000, 'a') + "\"}", 413, "4096");
  auto chat =
      c->request("POST", "/v1/chat/completions", R"({"messages": []})", "application/json", {}, 10);
  REQUIRE(chat.ok());
  check_error(*chat, 400, "messages");
  auto ctx = c->request("POST", "/v1/completions", R"({"prompt": "hi", "max_tokens": 100})",
                        "application/json", {}, 10);
  REQUIRE(ctx.ok());
  CHECK(json::parse(ctx->body)["error"]["code"] == "context_length_exceeded");

  // Malformed HTTP: a 400 and the connection closed; oversized headers: 431.
  auto garbage = raw_exchange(srv.http_port(), "NOT HTTP AT ALL\r\n\r\n");
  CHECK(garbage.rfind("HTTP/1.1 400", 0) == 0);
  auto huge = raw_exchange(
      srv.http_port(), "GET /health HTTP/1.1\r\nX-Big: " + std::string(20000, 'x') + "\r\n\r\n");
  CHECK(huge.rfind("HTTP/1.1 431", 0) == 0);
  // A body shorter than its Content-Length, then the client leaves: nothing to answer.
  raw_exchange(srv.http_port(), "POST /v1/completions HTTP/1.1\r\nContent-Length: 100\r\n\r\n{");
  // Still serving, nothing leaked.
  auto ok = post(*c, "/v1/completions", {{"prompt", "still here"}, {"max_tokens", 2}});
  CHECK(ok.status == 200);
  CHECK(eventually([&] { return workers_idle(srv.status()); }, milliseconds(3000)));
}

TEST_CASE("http: API key, overload and a vanished client", "[integration][http]") {
  SECTION("an API key is required on /v1 when configured") {
    server srv{{"--api-key", "s3cret"}};
    auto c = connect_http(srv);
    auto r = post(*c, "/v1/completions", {{"prompt", "hi"}, {"max_tokens", 2}});
    check_error(r, 401, "API key");
    auto wrong = post(*c, "/v1/completions", {{"prompt", "hi"}, {"max_tokens", 2}},
                      {{"Authorization", "Bearer nope"}});
    CHECK(wrong.status == 401);
    auto good = post(*c, "/v1/completions", {{"prompt", "hi"}, {"max_tokens", 2}},
                     {{"Authorization", "Bearer s3cret"}});
    CHECK(good.status == 200);
    CHECK(get(*c, "/health").status == 200);  // probes need no key
  }
  SECTION("admission control answers 429") {
    server srv{{"--max-inflight", "1"}, {"--sim-decode-step-ms", "20"}};
    process busy(srv.generate_argv({"--max-tokens", "200", "--ignore-eos", "busy"}));
    REQUIRE(eventually(
        [&] {
          auto st = srv.status();
          auto d = worker(st, "decode");
          return d.is_object() && d["running"].get<int>() > 0;
        },
        milliseconds(5000)));
    auto c = connect_http(srv);
    auto r = post(*c, "/v1/completions", {{"prompt", "hi"}, {"max_tokens", 2}});
    check_error(r, 429, "");
    CHECK(json::parse(r.body)["error"]["type"] == "rate_limit_error");
    // The retry hint, in whole seconds (the minimum, 1 s, for the fixed in-flight bound).
    CHECK(r.header("Retry-After") == "1");
    busy.kill();
  }
  SECTION("a client that disconnects cancels its request and frees its blocks") {
    server srv{{"--sim-decode-step-ms", "5"}};
    for (bool stream : {true, false}) {
      json body{{"prompt", "long"}, {"max_tokens", 2000}, {"ignore_eos", true}, {"stream", stream}};
      int fd = raw_connect(srv.http_port());
      auto req = post_request("/v1/completions", body.dump());
      REQUIRE(::send(fd, req.data(), req.size(), MSG_NOSIGNAL) > 0);
      if (stream) {
        char buf[512];
        REQUIRE(::recv(fd, buf, sizeof(buf), 0) > 0);  // the stream started
      } else {
        REQUIRE(eventually(
            [&] {
              auto d = worker(srv.status(), "decode");
              return d.is_object() && d["running"].get<int>() > 0;
            },
            milliseconds(5000)));
      }
      ::close(fd);
      // 2000 tokens at 5 ms would take 10 s; cancelled, the blocks come back at once.
      auto t0 = std::chrono::steady_clock::now();
      CHECK(eventually([&] { return workers_idle(srv.status()); }, milliseconds(3000)));
      INFO("stream " << stream);
      CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(3));
    }
  }
}

TEST_CASE("http: curl streams a completion", "[integration][http]") {
  if (std::system("curl --version >/dev/null 2>&1") != 0) {
    TM_SKIP("curl is not installed");
  }
  server srv;
  auto out = std::filesystem::temp_directory_path() /
             ("tokenmill-curl-" + std::to_string(::getpid()) + ".txt");
  auto cmd = "curl -sS -N --max-time 20 http://127.0.0.1:" + std::to_string(srv.http_port()) +
             "/v1/completions -H 'Content-Type: application/json' -d "
             "'{\"prompt\": \"hello\", \"max_tokens\": 4, \"stream\": true}' > " +
             out.string();
  REQUIRE(std::system(cmd.c_str()) == 0);
  std::ifstream f(out);
  std::string body((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::filesystem::remove(out);
  INFO(body);
  CHECK(body.find("data: {") == 0);
  CHECK(body.find("\"finish_reason\":\"length\"") != std::string::npos);
  CHECK(body.size() >= 15);
  CHECK(body.substr(body.size() - 14) == "data: [DONE]\n\n");
}

TEST_CASE("http: the official openai npm client", "[integration][http][npm]") {
  // The package is installed once into the build tree; no network means a skip.
  const std::filesystem::path dir = TOKENMILL_NPM_DIR;
  const std::string script =
      std::string(TOKENMILL_SOURCE_DIR) + "/tests/integration/openai_client.mjs";
  if (std::system("node --version >/dev/null 2>&1") != 0 ||
      std::system("npm --version >/dev/null 2>&1") != 0) {
    TM_SKIP("node or npm is not installed");
  }
  if (!std::filesystem::exists(dir / "node_modules/openai/package.json")) {
    std::filesystem::create_directories(dir);
    auto cmd = "cd '" + dir.string() +
               "' && timeout 180 npm install --no-audit --no-fund --silent openai@4 "
               ">npm-install.log 2>&1";
    if (std::system(cmd.c_str()) != 0) {
      TM_SKIP("`npm install openai@4` failed (no registry access?); see "
              << (dir / "npm-install.log").string());
    }
  }
  server srv;
  auto out = std::filesystem::temp_directory_path() /
             ("tokenmill-npm-" + std::to_string(::getpid()) + ".json");
  auto cmd = "cd '" + dir.string() + "' && timeout 60 node '" + script +
             "' http://127.0.0.1:" + std::to_string(srv.http_port()) + "/v1 > '" + out.string() +
             "' 2>&1";
  int rc = std::system(cmd.c_str());
  std::ifstream f(out);
  std::string body((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::filesystem::remove(out);
  INFO(body);
  REQUIRE(rc == 0);
  auto j = json::parse(body.substr(body.find('{')));
  CHECK(j["models"] == json::array({"sim"}));
  CHECK(j["completion"]["finish_reason"] == "length");
  CHECK(j["completion"]["completion_tokens"] == 5);
  CHECK(j["chat"]["role"] == "assistant");
  CHECK(j["chat"]["completion_tokens"] == 5);
  CHECK(j["stream"]["chunks"].get<int>() >= 2);
  CHECK(j["stream"]["text"] == j["completion"]["text"]);
  CHECK(j["stream"]["usage_tokens"] == 5);
  CHECK(j["chat_stream"]["text"] == j["chat"]["text"]);
  CHECK(j["error"]["status"] == 404);
  CHECK(j["chat_logprobs"]["count"] == 4);
  CHECK(j["chat_logprobs"]["tops"] == json::array({2, 2, 2, 2}));
  CHECK(j["chat_logprobs"]["all_negative"] == true);
  CHECK(j["chat_logprobs_stream"]["tokens"] == j["chat_logprobs"]["tokens"]);
  CHECK(j["completion_logprobs"]["tokens"] == 3);
  CHECK(j["completion_logprobs"]["token_logprobs"] == 3);
  for (const auto& n : j["completion_logprobs"]["top_logprobs"])
    CHECK(n.get<int>() >= 2);
  CHECK(j["completion_logprobs"]["text_offset"][0] == 0);
  CHECK(j["penalties"]["completion_tokens"] == 3);
  CHECK(j["bad_top_logprobs"]["status"] == 400);
  CHECK(j["bad_top_logprobs"]["param"] == "top_logprobs");
  CHECK(j["multi"]["indices"] == json::array({0, 1, 2, 3}));
  CHECK(j["multi"]["completion_tokens"] == 12);
  CHECK(j["chat_n"]["choices"] == 3);
  CHECK(j["echo"]["starts"] == true);
}
