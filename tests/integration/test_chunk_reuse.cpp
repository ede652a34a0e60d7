// Chunk reuse through serving (issue 17): a prompt given as segments over RPC (`generate
// --segment`) and HTTP (`tokenmill.segments`) on the cpu engine with a random tiny model.
// The worker that prefills (the prefill worker, or the decode worker prefilling locally)
// caches each segment's KV under its chunk hash; the same documents in another order are
// chunk hits (worker status counts them), and at recompute ratio 1 the tokens equal the
// unsegmented prompt's. Over chat and responses, `tokenmill.chunks` cuts the conversation
// into segments (a document per content part). Bad segment input is refused naming the field.
#include <catch2/catch.hpp>

#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli_json.hpp"
#include "frontend/http_client.hpp"
#include "harness.hpp"

using namespace tokenmill;
using namespace tokenmill::testing;
using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

/// Chunk counters summed over the workers of `tokenmill status --json`.
struct chunk_counts {
  uint64_t lookup = 0, hit = 0, recomputed = 0;
};
chunk_counts chunk_status(const server& srv) {
  auto st = srv.status();
  REQUIRE(st.is_object());
  chunk_counts c;
  for (const auto& w : st.at("workers")) {
    c.lookup += w.value("chunk_lookup_tokens", uint64_t{0});
    c.hit += w.value("chunk_hit_tokens", uint64_t{0});
    c.recomputed += w.value("chunk_recomputed_tokens", uint64_t{0});
  }
  return c;
}

/// A RAG-shaped prompt as token-id segments: system, the documents in `order`, question.
struct rag {
  std::vector<std::string> segments;
  std::string joined;  ///< the same tokens as one prompt
  explicit rag(std::vector<int> order) {
    const std::vector<std::string> docs = {id_prompt(40, 23), id_prompt(80, 31),
                                           id_prompt(130, 19)};
    segments.push_back(id_prompt(3, 9));
    for (int d : order)
      segments.push_back(docs[d]);
    segments.push_back(id_prompt(200, 6));
    for (const auto& s : segments)
      joined += (joined.empty() ? "" : " ") + s;
  }
  std::vector<std::string> args(std::vector<std::string> extra = {}) const {
    std::vector<std::string> a = {"--max-tokens", "8", "--ignore-eos", "--token-ids"};
    for (const auto& s : segments) {
      a.push_back("--segment");
      a.push_back(s);
    }
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  }
};

}  // namespace

TEST_CASE("chunk reuse: documents in another order are chunk hits, ratio 1 is exact",
          "[integration][chunks]") {
  for (int prefill_workers : {1, 0}) {
    INFO((prefill_workers ? "disaggregated" : "decode-local prefill"));
    server srv(cpu_server(tiny_random_model(), prefill_workers));
    rag first({0, 1, 2});
    auto a = generate_json(srv, first.args());
    CHECK(a["prompt_tokens"] == 88);
    auto before = chunk_status(srv);
    CHECK(before.lookup == 88);  // every segment looked up (and cached: a fill)
    CHECK(before.hit == 0);
    // Nothing was cached: that was a full prefill (and it put no blended KV in the prefix
    // cache for this one to reuse).
    auto plain =
        generate_json(srv, {"--max-tokens", "8", "--ignore-eos", "--token-ids", first.joined});
    CHECK(ids_of(a) == ids_of(plain));

    rag second({2, 0, 1});
    auto b = generate_json(srv, second.args({"--recompute-ratio", "0.2"}));
    CHECK(b["tokens"] == 8);
    auto after = chunk_status(srv);
    CHECK(after.hit - before.hit >= 23 + 31 + 19);  // every document was a hit
    CHECK(after.recomputed > before.recomputed);

    rag third({1, 2, 0});
    auto exact = generate_json(srv, third.args({"--recompute-ratio", "1"}));
    auto unsegmented =
        generate_json(srv, {"--max-tokens", "8", "--ignore-eos", "--token-ids", third.joined});
    CHECK(ids_of(exact) == ids_of(unsegmented));
    CHECK(chunk_status(srv).hit > after.hit);
  }
}

TEST_CASE("chunk reuse: serve --blend-policy leading serves reordered documents from the cache",
          "[integration][chunks]") {
  auto opts = cpu_server(tiny_random_model(), 1);
  opts["--blend-policy"] = "leading";
  server srv(opts);
  rag first({0, 1, 2});
  generate_json(srv, first.args());
  auto before = chunk_status(srv);
  rag second({1, 2, 0});
  auto b = generate_json(srv, second.args({"--recompute-ratio", "0.25"}));
  CHECK(b["tokens"] == 8);
  auto after = chunk_status(srv);
  const uint64_t hits = after.hit - before.hit;
  // The leading policy spends exactly the budget, round(ratio x reused tokens), on leading
  // tokens, plus the prompt's last token (always computed: its logits are the answer).
  // Every segment here is a hit, the system prompt and the question too.
  CHECK(hits == 9 + 23 + 31 + 19 + 6);
  CHECK(after.recomputed - before.recomputed == (hits + 2) / 4 + 1);
  // ... and it was the leading policy that chose them.
  CHECK_THAT(worker(srv.status(), "prefill")["detail"].get<std::string>(),
             Catch::Contains("recomputed, last by leading)"));
  // At ratio 1 it is the unsegmented prompt, as with the default policy.
  rag third({2, 1, 0});
  auto exact = generate_json(srv, third.args({"--recompute-ratio", "1"}));
  auto unsegmented =
      generate_json(srv, {"--max-tokens", "8", "--ignore-eos", "--token-ids", third.joined});
  CHECK(ids_of(exact) == ids_of(unsegmented));

  auto r = run_tokenmill(
      {"serve", "--engine", "sim", "--rpc-port", "0", "--no-http", "--blend-policy", "cacheblend"},
      std::chrono::milliseconds(20000));
  INFO("stderr: " << r.err);
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.err, Catch::Contains("--blend-policy") && Catch::Contains("cacheblend"));
}

TEST_CASE("chunk reuse: the router sends documents cached as chunks to the worker holding them",
          "[integration][chunks]") {
  // Two prefill workers: the kv-store indexes the chunks the first request cached on one of
  // them, and the router, asking for the reordered request's chunks in its overlap query,
  // scores them as reuse there.
  server srv(cpu_server(tiny_random_model(), 2));
  rag first({0, 1, 2});
  auto a = generate_json(srv, first.args());
  const auto holder = a["server"]["prefill_worker"].get<std::string>();
  REQUIRE_FALSE(holder.empty());
  rag second({2, 0, 1});
  auto b = generate_json(srv, second.args({"--recompute-ratio", "0.2"}));
  CHECK(b["server"]["prefill_worker"] == holder);
  auto st = srv.status();
  REQUIRE(st.is_object());
  INFO(st.dump());
  uint64_t holder_hits = 0, other_hits = 0;
  for (const auto& w : st.at("workers"))
    if (w.value("role", "") == "prefill")
      (w.value("name", "") == holder ? holder_hits : other_hits) +=
          w.value("chunk_hit_tokens", uint64_t{0});
  CHECK(holder_hits >= 23 + 31 + 19);  // every document was a hit there
  CHECK(other_hits == 0);
  // The router saw the chunks through the kv-store (not by a tie going its way).
  CHECK_THAT(worker(st, "router")["detail"].get<std::string>(),
             Catch::Contains("1 to cached chunks"));
}

TEST_CASE("chunk reuse: chat documents sent as content parts are reused in another order",
          "[integration][chunks]") {
  // tokenmill.chunks "parts" on /v1/chat/completions: each content part is a segment of its
  // own, so the documents of a second request, in another order, are chunk hits.
  server srv(cpu_server(tiny_random_model(), 1));
  auto c = http_client::connect("127.0.0.1", srv.http_port(), 5);
  REQUIRE(c.ok());
  auto post = [&](const std::string& path, const json& body) {
    auto r = (*c)->request("POST", path, body.dump(), "application/json", {}, 60);
    REQUIRE(r.ok());
    INFO(path << " " << body.dump() << " -> " << r->status << " " << r->body);
    REQUIRE(r->status == 200);
    return json::parse(r->body);
  };
  // A piece's tokens, tokenized alone (as each segment is).
  auto tokens = [&](const std::string& text) {
    return post("/tokenize", {{"prompt", text}, {"add_special_tokens", false}})["tokens"]
        .get<std::vector<int64_t>>();
  };
  const std::vector<std::string> docs = {
      "Tokenmill serves language models on a cluster of workers.",
      "Chunk reuse moves cached keys to a new offset by one rotation per key.",
      "A prefix cache only helps when the same tokens start the prompt."};
  const std::string system = "Answer from the documents.", question = "What moves keys?";
  auto chat = [&](std::vector<int> order, double ratio) {
    json parts = json::array();
    for (int d : order)
      parts.push_back({{"type", "text"}, {"text", docs[d]}});
    parts.push_back({{"type", "text"}, {"text", question}});
    return json{
        {"messages",
         {{{"role", "system"}, {"content", system}}, {{"role", "user"}, {"content", parts}}}},
        {"max_tokens", 8},
        {"ignore_eos", true},
        {"tokenmill", {{"chunks", "parts"}, {"recompute_ratio", ratio}}}};
  };
  // The prompt the server builds (the model has no chat template: chatml), segment by
  // segment: the system turn, the user turn's header, each part, the end of the turn with
  // the generation prompt.
  auto segments_of = [&](std::vector<int> order) {
    std::vector<std::string> segs = {"<|im_start|>system\n" + system + "<|im_end|>\n",
                                     "<|im_start|>user\n"};
    for (int d : order)
      segs.push_back(docs[d]);
    segs.push_back(question);
    segs.push_back("<|im_end|>\n<|im_start|>assistant\n");
    std::vector<int64_t> ids;
    for (const auto& s : segs)
      for (auto id : tokens(s))
        ids.push_back(id);
    return ids;
  };
  uint64_t doc_tokens = 0;
  for (const auto& d : docs)
    doc_tokens += tokens(d).size();
  const auto ids_a = segments_of({0, 1, 2});

  auto a = post("/v1/chat/completions", chat({0, 1, 2}, 0.2));
  CHECK(a["usage"]["prompt_tokens"] == ids_a.size());  // each segment tokenized alone
  auto before = chunk_status(srv);
  CHECK(before.lookup == ids_a.size());  // nothing cached yet: every segment looked up
  CHECK(before.hit == 0);

  auto b = post("/v1/chat/completions", chat({2, 0, 1}, 0.2));
  CHECK(b["usage"]["completion_tokens"] == 8);
  auto after = chunk_status(srv);
  CHECK(after.hit - before.hit >= doc_tokens);  // every document was a hit
  CHECK(after.recomputed > before.recomputed);

  // At ratio 1 the answer is the one of the same tokens sent as one unsegmented prompt.
  auto exact = post("/v1/chat/completions", chat({1, 2, 0}, 1.0));
  CHECK(chunk_status(srv).hit > after.hit);
  auto unsegmented =
      post("/v1/completions",
           {{"prompt", segments_of({1, 2, 0})}, {"max_tokens", 8}, {"ignore_eos", true}});
  CHECK(exact["choices"][0]["message"]["content"] == unsegmented["choices"][0]["text"]);
}

TEST_CASE("chunk reuse: responses input documents as content parts are reused in another order",
          "[integration][chunks][responses]") {
  // tokenmill.chunks "parts" on /v1/responses, cut as on chat: the documents of a second
  // request, in another order, are chunk hits; ratio 1 answers as the unsegmented prompt.
  server srv(cpu_server(tiny_random_model(), 1));
  auto c = http_client::connect("127.0.0.1", srv.http_port(), 5);
  REQUIRE(c.ok());
  auto post = [&](const std::string& path, const json& body) {
    auto r = (*c)->request("POST", path, body.dump(), "application/json", {}, 60);
    REQUIRE(r.ok());
    INFO(path << " " << body.dump() << " -> " << r->status << " " << r->body);
    REQUIRE(r->status == 200);
    return json::parse(r->body);
  };
  auto tokens = [&](const std::string& text) {
    return post("/tokenize", {{"prompt", text}, {"add_special_tokens", false}})["tokens"]
        .get<std::vector<int64_t>>();
  };
  const std::vector<std::string> docs = {
      "Responses carry documents as input_text parts of one user message.",
      "Each part is a segment of its own, cached under the hash of its tokens.",
      "Moving a cached key to a new offset is one rotation per key."};
  const std::string instructions = "Answer from the documents.", question = "What is a part?";
  auto ask = [&](std::vector<int> order, double ratio) {
    json parts = json::array();
    for (int d : order)
      parts.push_back({{"type", "input_text"}, {"text", docs[d]}});
    parts.push_back({{"type", "input_text"}, {"text", question}});
    return json{{"instructions", instructions},
                {"input", {{{"role", "user"}, {"content", parts}}}},
                {"max_output_tokens", 8},
                {"store", false},
                {"tokenmill", {{"chunks", "parts"}, {"recompute_ratio", ratio}}}};
  };
  // The prompt the server builds (chatml, the model has no template), segment by segment.
  auto segments_of = [&](std::vector<int> order) {
    std::vector<std::string> segs = {"<|im_start|>system\n" + instructions + "<|im_end|>\n",
                                     "<|im_start|>user\n"};
    for (int d : order)
      segs.push_back(docs[d]);
    segs.push_back(question);
    segs.push_back("<|im_end|>\n<|im_start|>assistant\n");
    std::vector<int64_t> ids;
    for (const auto& s : segs)
      for (auto id : tokens(s))
        ids.push_back(id);
    return ids;
  };
  auto text_of = [](const json& r) {
    REQUIRE(r["output"].size() == 1);
    return r["output"][0]["content"][0]["text"].get<std::string>();
  };
  uint64_t doc_tokens = 0;
  for (const auto& d : docs)
    doc_tokens += tokens(d).size();
  const auto ids_a = segments_of({0, 1, 2});

  auto a = post("/v1/responses", ask({0, 1, 2}, 0.2));
  CHECK(a["usage"]["input_tokens"] == ids_a.size());  // each segment tokenized alone
  auto before = chunk_status(srv);
  CHECK(before.lookup == ids_a.size());
  CHECK(before.hit == 0);

  auto b = post("/v1/responses", ask({2, 0, 1}, 0.2));
  CHECK(b["usage"]["input_tokens"] == ids_a.size());
  auto after = chunk_status(srv);
  CHECK(after.hit - before.hit >= doc_tokens);  // every document was a hit
  CHECK(after.recomputed > before.recomputed);

  // At ratio 1 the answer is the one of the same tokens sent as one unsegmented prompt
  // (neither ignores EOS: both stop where greedy decoding does).
  auto exact = post("/v1/responses", ask({1, 2, 0}, 1.0));
  CHECK(chunk_status(srv).hit > after.hit);
  auto unsegmented =
      post("/v1/completions", {{"prompt", segments_of({1, 2, 0})}, {"max_tokens", 8}});
  CHECK(text_of(exact) == unsegmented["choices"][0]["text"]);
  CHECK(exact["usage"]["output_tokens"] == unsegmented["usage"]["completion_tokens"]);
}

TEST_CASE("chunk reuse: bench rag over chat reports the server's chunk hits",
          "[integration][chunks][bench]") {
  // `bench --workload rag --rag-api chat`: the documents go to /v1/chat/completions as
  // content parts with tokenmill.chunks "parts"; a pool of 3 and 2 per request makes later
  // requests repeat documents, which the server counts as chunk hits (GET /metrics).
  server srv(cpu_server(tiny_random_model(), 1));
  const std::string http = "127.0.0.1:" + std::to_string(srv.http_port());
  const auto before = chunk_status(srv);
  auto r = run_tokenmill({"bench",
                          "--connect",
                          http,
                          "--backend",
                          "http",
                          "--workload",
                          "rag",
                          "--rag-api",
                          "chat",
                          "--pool",
                          "3",
                          "--docs",
                          "2",
                          "--doc-len",
                          "12",
                          "--prefix-len",
                          "6",
                          "--input-len",
                          "4",
                          "--output-len",
                          "2",
                          "--requests",
                          "6",
                          "--concurrency",
                          "1",
                          "--seed",
                          "5",
                          "--json",
                          "--no-progress"});
  INFO("stdout: " << r.out << "\nstderr: " << r.err);
  REQUIRE_FALSE(r.timed_out);
  REQUIRE(r.exit_code == 0);
  auto j = last_json_line(r.out);
  REQUIRE(j.is_object());
  CHECK(j["failed"] == 0);
  CHECK(j["requests"] == 6);
  CHECK(j["rag"]["api"] == "chat");
  CHECK(j["rag"]["segmented"] == true);
  REQUIRE(j["chunks"].is_object());
  const auto hit = j["chunks"]["hit_tokens"].get<uint64_t>();
  const auto lookup = j["chunks"]["lookup_tokens"].get<uint64_t>();
  CHECK(hit > 0);
  CHECK(lookup >= hit);
  // The same counters as the workers' status reports over RPC.
  const auto after = chunk_status(srv);
  CHECK(after.hit - before.hit == hit);
  CHECK(after.lookup - before.lookup == lookup);

  // Chat needs the HTTP API, and the option belongs to the rag workload.
  const std::string rpc = "127.0.0.1:" + std::to_string(srv.port());
  auto no_rpc = run_tokenmill({"bench", "--connect", rpc, "--workload", "rag", "--rag-api", "chat",
                               "--requests", "1", "--concurrency", "1", "--no-progress"});
  CHECK(no_rpc.exit_code != 0);
  CHECK_THAT(no_rpc.err, Catch::Contains("--rag-api chat needs --backend http"));
  auto no_rag = run_tokenmill({"bench", "--connect", http, "--backend", "http", "--rag-api", "chat",
                               "--requests", "1", "--concurrency", "1", "--no-progress"});
  CHECK(no_rag.exit_code != 0);
  CHECK_THAT(no_rag.err, Catch::Contains("--rag-api is for --workload rag"));
}

TEST_CASE("chunk reuse: bad segment input is refused naming the field", "[integration][chunks]") {
  server srv(cpu_server(tiny_random_model(), 0));
  SECTION("RPC") {
    auto bad = [&](std::vector<std::string> args, const std::string& mention) {
      auto r = srv.generate(args);
      INFO("stdout: " << r.out << "\nstderr: " << r.err);
      CHECK(r.exit_code != 0);
      CHECK(r.err.find("invalid_request") != std::string::npos);
      CHECK(r.err.find(mention) != std::string::npos);
    };
    bad({"--token-ids", "--segment", "1 2", "--segment", "5 99999"},
        "segments[1]: token id 99999 at position 1 is outside the vocabulary");
    bad({"--segment", "a", "--recompute-ratio", "1.5"}, "recompute_ratio must be in [0, 1]");
    bad({"--segment", "a", "--segment", ""}, "segments[1] is empty");
    std::vector<std::string> many;
    for (int i = 0; i < 129; ++i) {
      many.push_back("--segment");
      many.push_back("x");
    }
    bad(many, "at most 128 are allowed");
  }
  SECTION("HTTP") {
    auto c = http_client::connect("127.0.0.1", srv.http_port(), 5);
    REQUIRE(c.ok());
    auto post = [&](const json& body) {
      auto r = (*c)->request("POST", "/v1/completions", body.dump(), "application/json", {}, 30);
      REQUIRE(r.ok());
      return *r;
    };
    auto refused = [&](const json& body, const std::string& mention) {
      auto r = post(body);
      INFO("status " << r.status << " body " << r.body);
      CHECK(r.status == 400);
      CHECK(r.body.find(mention) != std::string::npos);
    };
    refused({{"tokenmill", {{"segments", json::array()}}}}, "'tokenmill.segments' is empty");
    refused({{"tokenmill", {{"segments", {"a", 3}}}}}, "tokenmill.segments[1]");
    refused({{"tokenmill", {{"segments", {"a"}}, {"recompute_ratio", -0.5}}}},
            "recompute_ratio must be in [0, 1]");
    refused({{"tokenmill", {{"segments", {json::array({1, 2}), json::array()}}}}},
            "tokenmill.segments[1] is empty");
    refused({{"prompt", "x"}, {"tokenmill", {{"segments", {"a"}}}}}, "replaces 'prompt'");
    // On chat, the conversation cut into chunks; refusals change nothing.
    const json msgs = {{{"role", "user"}, {"content", "hi"}}};
    auto chat_refused = [&](const json& ext, const std::string& mention) {
      auto r = (*c)->request("POST", "/v1/chat/completions",
                             json{{"messages", msgs}, {"tokenmill", ext}}.dump(),
                             "application/json", {}, 30);
      REQUIRE(r.ok());
      INFO("status " << r->status << " body " << r->body);
      CHECK(r->status == 400);
      CHECK(r->body.find(mention) != std::string::npos);
    };
    const auto quiet = chunk_status(srv);
    chat_refused({{"chunks", "sentences"}}, "'tokenmill.chunks' must be ");
    chat_refused({{"chunks", "parts"}, {"recompute_ratio", 2}},
                 "recompute_ratio must be in [0, 1]");
    chat_refused({{"segments", {"a"}}}, "only supported on /v1/completions");
    refused({{"prompt", "x"}, {"tokenmill", {{"chunks", "parts"}}}},
            "only supported on /v1/chat/completions");
    // On responses, the same refusals.
    auto resp_refused = [&](const json& ext, const std::string& param, const std::string& mention) {
      auto r =
          (*c)->request("POST", "/v1/responses", json{{"input", "hi"}, {"tokenmill", ext}}.dump(),
                        "application/json", {}, 30);
      REQUIRE(r.ok());
      INFO("status " << r->status << " body " << r->body);
      CHECK(r->status == 400);
      CHECK(r->body.find(mention) != std::string::npos);
      if (!param.empty()) CHECK(json::parse(r->body)["error"]["param"] == param);
    };
    resp_refused({{"chunks", "sentences"}}, "tokenmill.chunks", "'tokenmill.chunks' must be ");
    resp_refused({{"recompute_ratio", 0.5}}, "tokenmill.recompute_ratio",
                 "only allowed with 'tokenmill.chunks'");
    resp_refused({{"chunks", "parts"}, {"recompute_ratio", 2}}, "",
                 "recompute_ratio must be in [0, 1]");
    CHECK(chunk_status(srv).lookup == quiet.lookup);
    // A good one: the prompt is the segments'.
    auto ok = post({{"max_tokens", 4},
                    {"ignore_eos", true},
                    {"tokenmill",
                     {{"segments", {json::array({5, 6, 7}), json::array({8, 9})}},
                      {"recompute_ratio", 0.5}}}});
    INFO(ok.body);
    REQUIRE(ok.status == 200);
    auto j = json::parse(ok.body);
    CHECK(j["usage"]["prompt_tokens"] == 5);
    CHECK(j["usage"]["completion_tokens"] == 4);
  }
}
