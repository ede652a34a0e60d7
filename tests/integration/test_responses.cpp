// The Responses API (/v1/responses) of `tokenmill serve` on loopback: a response whole and
// streamed (events in OpenAI's order, numbered, deltas joining to the text), a
// previous_response_id follow-up that sees the stored conversation, GET and DELETE of a
// stored response, the 404 after, and the 400s; then the official `openai` npm client
// doing the same (openai_responses.mjs).
#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "frontend/http_client.hpp"
#include "harness.hpp"
#include "tests/skip.hpp"

using namespace tokenmill;
using namespace tokenmill::testing;
using json = nlohmann::json;

namespace {

struct reply {
  int status = 0;
  json body;
};

reply call(const server& s, const std::string& method, const std::string& target,
           const json& body = nullptr) {
  auto c = http_client::connect("127.0.0.1", s.http_port(), 5);
  REQUIRE(c.ok());
  auto r = (*c)->request(method, target, body.is_null() ? std::string() : body.dump(),
                         body.is_null() ? "" : "application/json", {}, 60);
  INFO((r ? r->body : r.error().message));
  REQUIRE(r.ok());
  auto j = json::parse(r->body, nullptr, false);
  REQUIRE(j.is_object());
  return {r->status, j};
}

std::string text_of(const json& response) {
  std::string t;
  for (const auto& item : response["output"])
    for (const auto& part : item["content"])
      if (part["type"] == "output_text") t += part["text"].get<std::string>();
  return t;
}

/// A raw TCP connection to 127.0.0.1:port, for a client that goes away mid-response.
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

}  // namespace

TEST_CASE("responses: a client that goes away cancels its response", "[integration][responses]") {
  server srv{{"--sim-decode-step-ms", "5"}};
  for (bool stream : {true, false}) {
    INFO("stream " << stream);
    const std::string body =
        json{{"input", "long"}, {"max_output_tokens", 2000}, {"stream", stream}}.dump();
    const std::string req =
        "POST /v1/responses HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Content-Length: " +
        std::to_string(body.size()) + "\r\n\r\n" + body;
    int fd = raw_connect(srv.http_port());
    REQUIRE(::send(fd, req.data(), req.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(req.size()));
    if (stream) {
      char buf[512];
      REQUIRE(::recv(fd, buf, sizeof(buf), 0) > 0);  // the events started
    } else {
      REQUIRE(eventually(
          [&] {
            auto d = worker(srv.status(), "decode");
            return d.is_object() && d["running"].get<int>() > 0;
          },
          std::chrono::milliseconds(5000)));
    }
    ::close(fd);
    // 2000 tokens at 5 ms would take 10 s; cancelled, the blocks come back at once.
    CHECK(eventually([&] { return workers_idle(srv.status()); }, std::chrono::milliseconds(3000)));
  }
}

TEST_CASE("responses: whole, streamed, followed up, retrieved and deleted over HTTP",
          "[integration][responses]") {
  server srv;
  const json ask = {{"input", "Hello there"},
                    {"instructions", "You are terse."},
                    {"max_output_tokens", 6},
                    {"metadata", {{"run", "it"}}}};
  auto first = call(srv, "POST", "/v1/responses", ask);
  REQUIRE(first.status == 200);
  const auto& r = first.body;
  const std::string id = r["id"];
  CHECK(id.starts_with("resp_"));
  CHECK(r["object"] == "response");
  CHECK(r["status"] == "incomplete");  // the sim engine writes on until max_output_tokens
  CHECK(r["incomplete_details"]["reason"] == "max_output_tokens");
  CHECK(r["usage"]["output_tokens"] == 6);
  CHECK(r["metadata"]["run"] == "it");
  CHECK(r["instructions"] == "You are terse.");
  const std::string text = text_of(r);
  CHECK_FALSE(text.empty());

  SECTION("streamed: the same text, as numbered events in order") {
    auto c = http_client::connect("127.0.0.1", srv.http_port(), 5);
    REQUIRE(c.ok());
    json s = ask;
    s["stream"] = true;
    std::vector<json> events;
    auto res = (*c)->post_sse(
        "/v1/responses", s.dump(),
        [&](std::string_view data, int64_t) { events.push_back(json::parse(data)); }, 60);
    REQUIRE(res.ok());
    CHECK(res->status == 200);
    REQUIRE(events.size() >= 9);
    std::vector<std::string> types;
    std::string joined;
    for (size_t i = 0; i < events.size(); ++i) {
      CHECK(events[i]["sequence_number"] == i);
      types.push_back(events[i]["type"]);
      if (types.back() == "response.output_text.delta")
        joined += events[i]["delta"].get<std::string>();
    }
    const std::vector<std::string> head = {"response.created", "response.in_progress",
                                           "response.output_item.added",
                                           "response.content_part.added"};
    const std::vector<std::string> tail = {"response.output_text.done",
                                           "response.content_part.done",
                                           "response.output_item.done", "response.incomplete"};
    CHECK(std::vector<std::string>(types.begin(), types.begin() + 4) == head);
    CHECK(std::vector<std::string>(types.end() - 4, types.end()) == tail);
    for (size_t i = 4; i + 4 < types.size(); ++i)
      CHECK(types[i] == "response.output_text.delta");
    CHECK(joined == text);
    const auto& done = events.back()["response"];
    CHECK(text_of(done) == text);
    CHECK(done["usage"]["output_tokens"] == 6);
    // A streamed response is stored too.
    auto again = call(srv, "GET", "/v1/responses/" + done["id"].get<std::string>());
    CHECK(again.status == 200);
    CHECK(text_of(again.body) == text);
  }

  SECTION("a follow-up sees the conversation, until the response is deleted") {
    const json next = {{"input", "And then?"}, {"max_output_tokens", 3}};
    json follow = next;
    follow["previous_response_id"] = id;
    auto f = call(srv, "POST", "/v1/responses", follow);
    REQUIRE(f.status == 200);
    CHECK(f.body["previous_response_id"] == id);
    auto fresh = call(srv, "POST", "/v1/responses", next);
    REQUIRE(fresh.status == 200);
    // The history (the first input and its output) is in the follow-up's prompt.
    CHECK(f.body["usage"]["input_tokens"].get<int>() >
          fresh.body["usage"]["input_tokens"].get<int>() + 6);

    auto items = call(
        srv, "GET", "/v1/responses/" + f.body["id"].get<std::string>() + "/input_items?order=asc");
    CHECK(items.status == 200);
    REQUIRE(items.body["data"].size() == 1);  // its own input only, not the first turn
    CHECK(items.body["data"][0]["content"][0]["text"] == "And then?");

    auto got = call(srv, "GET", "/v1/responses/" + id);
    CHECK(got.status == 200);
    CHECK(got.body == r);
    auto del = call(srv, "DELETE", "/v1/responses/" + id);
    CHECK(del.status == 200);
    CHECK(del.body == json{{"id", id}, {"object", "response.deleted"}, {"deleted", true}});
    auto gone = call(srv, "GET", "/v1/responses/" + id);
    CHECK(gone.status == 404);
    CHECK(gone.body["error"]["message"] ==
          "response '" + id + "' not found (responses are kept 3600 s)");
    auto orphan = call(srv, "POST", "/v1/responses", follow);
    CHECK(orphan.status == 404);
    CHECK(orphan.body["error"]["param"] == "previous_response_id");
    CHECK(orphan.body["error"]["message"] ==
          "previous_response_id '" + id + "' not found (responses are kept 3600 s)");
  }

  SECTION("store: false keeps nothing") {
    json s = ask;
    s["store"] = false;
    auto u = call(srv, "POST", "/v1/responses", s);
    REQUIRE(u.status == 200);
    CHECK(u.body["store"] == false);
    CHECK(call(srv, "GET", "/v1/responses/" + u.body["id"].get<std::string>()).status == 404);
  }

  SECTION("bad requests change nothing") {
    auto tools =
        call(srv, "POST", "/v1/responses", {{"input", "x"}, {"tools", {{{"type", "web_search"}}}}});
    CHECK(tools.status == 400);
    CHECK(tools.body["error"]["param"] == "tools");
    auto long_prompt = call(srv, "POST", "/v1/responses", {{"input", std::string(100000, 'a')}});
    CHECK(long_prompt.status == 400);
    CHECK(long_prompt.body["error"]["code"] == "context_length_exceeded");
    CHECK(call(srv, "PUT", "/v1/responses/" + id).status == 405);
    CHECK(call(srv, "GET", "/v1/responses").status == 405);
    auto st = srv.status();
    REQUIRE(st.is_object());
    CHECK(workers_idle(st));
  }
}

TEST_CASE("responses: the store's bounds come from serve's flags", "[integration][responses]") {
  server srv{{"--responses-max", "2"}, {"--responses-ttl", "1"}};
  std::vector<std::string> ids;
  for (int i = 0; i < 3; ++i) {
    auto r = call(srv, "POST", "/v1/responses", {{"input", "hi"}, {"max_output_tokens", 2}});
    REQUIRE(r.status == 200);
    ids.push_back(r.body["id"]);
  }
  // Two kept: the oldest went first.
  auto evicted = call(srv, "GET", "/v1/responses/" + ids[0]);
  CHECK(evicted.status == 404);
  CHECK(evicted.body["error"]["message"] ==
        "response '" + ids[0] + "' not found (responses are kept 1 s)");
  CHECK(call(srv, "GET", "/v1/responses/" + ids[1]).status == 200);
  CHECK(call(srv, "GET", "/v1/responses/" + ids[2]).status == 200);
  // A second later none is left, however recently it was read.
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  CHECK(call(srv, "GET", "/v1/responses/" + ids[2]).status == 404);
  auto late =
      call(srv, "POST", "/v1/responses", {{"input", "more"}, {"previous_response_id", ids[2]}});
  CHECK(late.status == 404);
  CHECK(late.body["error"]["param"] == "previous_response_id");
}

TEST_CASE("responses: the official openai npm client", "[integration][responses][npm]") {
  // The package test_http.cpp installs into the build tree; no node or no package: skip.
  const std::filesystem::path dir = TOKENMILL_NPM_DIR;
  const std::string script =
      std::string(TOKENMILL_SOURCE_DIR) + "/tests/integration/openai_responses.mjs";
  if (std::system("node --version >/dev/null 2>&1") != 0 ||
      std::system("npm --version >/dev/null 2>&1") != 0)
    TM_SKIP("node or npm is not installed");
  if (!std::filesystem::exists(dir / "node_modules/openai/package.json")) {
    std::filesystem::create_directories(dir);
    auto cmd = "cd '" + dir.string() +
               "' && timeout 180 npm install --no-audit --no-fund --silent openai@4 "
               ">npm-install.log 2>&1";
    if (std::system(cmd.c_str()) != 0)
      TM_SKIP("`npm install openai@4` failed (no registry access?); see "
              << (dir / "npm-install.log").string());
  }
  server srv;
  auto out = std::filesystem::temp_directory_path() /
             ("tokenmill-npm-responses-" + std::to_string(::getpid()) + ".json");
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

  const auto& c = j["create"];
  CHECK(c["object"] == "response");
  CHECK(c["id"].get<std::string>().starts_with("resp_"));
  CHECK(c["status"] == "incomplete");
  CHECK(c["incomplete_details"]["reason"] == "max_output_tokens");
  CHECK_FALSE(c["output_text"].get<std::string>().empty());
  CHECK(c["output_text"] == c["text_from_output"]);  // the SDK's convenience works
  CHECK(c["item_type"] == "message");
  CHECK(c["item_role"] == "assistant");
  CHECK(c["usage"]["output_tokens"] == 6);
  CHECK(c["usage"]["total_tokens"] ==
        c["usage"]["input_tokens"].get<int>() + c["usage"]["output_tokens"].get<int>());
  CHECK(c["metadata"]["run"] == "conformance");
  CHECK(c["instructions"] == "You are terse.");
  CHECK(c["max_output_tokens"] == 6);

  const auto& s = j["stream"];
  const auto& types = s["types"];
  REQUIRE(types.size() >= 9);
  CHECK(types[0] == "response.created");
  CHECK(types[1] == "response.in_progress");
  CHECK(types[2] == "response.output_item.added");
  CHECK(types[3] == "response.content_part.added");
  CHECK(types[types.size() - 4] == "response.output_text.done");
  CHECK(types[types.size() - 3] == "response.content_part.done");
  CHECK(types[types.size() - 2] == "response.output_item.done");
  CHECK(types[types.size() - 1] == "response.incomplete");
  CHECK(s["delta_count"].get<size_t>() == types.size() - 8);
  for (size_t i = 0; i < s["seqs"].size(); ++i)
    CHECK(s["seqs"][i] == i);
  CHECK(s["deltas"] == c["output_text"]);
  CHECK(s["final_text"] == c["output_text"]);
  CHECK(s["final_usage"]["output_tokens"] == 6);

  CHECK_FALSE(j["stream_helper"]["deltas"].get<std::string>().empty());
  CHECK(j["stream_helper"]["final_text"] == j["stream_helper"]["deltas"]);
  CHECK(j["stream_helper"]["status"] == "completed");
  CHECK(j["stream_helper"]["usage"]["output_tokens"].get<int>() > 0);
  CHECK(json::parse(j["stream_helper"]["final_text"].get<std::string>()).is_object());

  const auto& fu = j["follow_up"];
  CHECK(fu["previous_response_id"] == c["id"]);
  CHECK(fu["input_tokens"].get<int>() > fu["fresh_input_tokens"].get<int>() + 6);
  CHECK(fu["third_input_tokens"].get<int>() > fu["input_tokens"].get<int>() + 4);

  CHECK(j["structured"]["format"] == "json_schema");
  REQUIRE(j["structured"]["parsed"].is_object());
  CHECK(j["structured"]["parsed"]["city"].is_string());
  CHECK(j["structured"]["parsed"]["rainy"].is_boolean());
  CHECK(j["structured"]["status"] == "completed");

  CHECK(j["input_items"]["first"] == json::array({{{"role", "user"}, {"text", "Hello there"}}}));
  CHECK(j["input_items"]["follow_up"] == json::array({"And then?"}));

  CHECK(j["retrieve"]["id"] == c["id"]);
  CHECK(j["retrieve"]["text"] == c["output_text"]);
  CHECK(j["deleted"]["retrieve"]["status"] == 404);
  CHECK_THAT(j["deleted"]["retrieve"]["message"].get<std::string>(),
             Catch::Contains("not found (responses are kept 3600 s)"));
  CHECK(j["deleted"]["follow_up"]["status"] == 404);
  CHECK(j["deleted"]["follow_up"]["param"] == "previous_response_id");
  CHECK(j["deleted"]["delete_again"]["status"] == 404);
  CHECK(j["unstored"]["status"] == 404);

  CHECK(j["bad_tools"]["status"] == 400);
  CHECK(j["bad_tools"]["param"] == "tools");
  CHECK(j["bad_image"]["status"] == 400);
  CHECK(j["bad_image"]["param"] == "input[0].content[0].type");
  CHECK(j["bad_tokens"]["status"] == 400);
  CHECK(j["bad_tokens"]["param"] == "max_output_tokens");
}
