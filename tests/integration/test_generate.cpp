// `tokenmill serve` + `tokenmill generate` end to end: tokens, timing breakdown,
// determinism across deployment shapes, stop tokens.
#include <catch2/catch.hpp>

#include <cmath>
#include <sstream>
#include <thread>

#include "cli_json.hpp"
#include "harness.hpp"

using namespace tokenmill::testing;
using nlohmann::json;

namespace {

double sum_of(const json& stages) {
  double s = 0;
  for (const auto& [name, ms] : stages.items())
    s += ms.get<double>();
  return s;
}

bool has_stage(const json& stages, const std::string& name) {
  return stages.contains(name);
}

}  // namespace

TEST_CASE("generate streams max_tokens tokens and a TTFT breakdown that adds up", "[integration]") {
  server srv;
  auto j = generate_json(srv, {"--max-tokens", "12", "hello world"});
  INFO(j.dump());
  CHECK(j["tokens"] == 12);
  CHECK(j["token_ids"].size() == 12);
  CHECK(j["finish_reason"] == "length");
  CHECK(j["prompt_tokens"].get<int>() > 0);

  const double ttft = j["ttft_ms"].get<double>();
  CHECK(ttft > 0);
  CHECK(j["itl_ms_p50"].get<double>() >= 0);
  CHECK(j["itl_ms_p99"].get<double>() >= j["itl_ms_p50"].get<double>());
  const auto& stages = j["stages"];
  REQUIRE(stages.is_object());
  for (const auto& [name, ms] : stages.items()) {
    INFO(name);
    CHECK(ms.get<double>() >= 0);
  }
  CHECK(std::abs(sum_of(stages) - ttft) <= 0.01 * ttft);
  CHECK(std::abs(j["stages_sum_ms"].get<double>() - ttft) <= 0.01 * ttft);
  CHECK(has_stage(stages, "prefill_compute"));
  CHECK(has_stage(stages, "kv_transfer"));

  const auto& srv_j = j["server"];
  const double srv_ttft = srv_j["ttft_ms"].get<double>();
  CHECK(srv_ttft > 0);
  CHECK(srv_ttft <= ttft);
  CHECK(std::abs(sum_of(srv_j["stages"]) - srv_ttft) <= 0.01 * srv_ttft);
  CHECK(has_stage(srv_j["stages"], "prefill_compute"));
  CHECK(has_stage(srv_j["stages"], "kv_transfer"));
}

// The stages summing to the TTFT is true by construction (the client telescopes its
// timestamps), so it documents the breakdown rather than checks it. This test checks the
// stages against times measured independently of the breakdown: the sim engine never
// finishes a prefill or a decode step before its modelled cost (it sleeps until then), and
// the client's own clock brackets the server's view.
TEST_CASE("the TTFT stages agree with the engine's modelled cost and the client's clock",
          "[integration]") {
  constexpr double us_per_token = 1000, step_ms = 5;
  server srv{{"--sim-prefill-us-per-token", "1000"},
             {"--sim-prefill-base-us", "0"},
             {"--sim-decode-step-ms", "5"}};
  std::string prompt;
  for (int i = 0; i < 40; ++i)
    prompt += "word ";
  auto j = generate_json(srv, {"--max-tokens", "8", prompt});
  INFO(j.dump());
  const double prompt_tokens = j["prompt_tokens"].get<double>();
  REQUIRE(prompt_tokens >= 40);
  const auto& stages = j["stages"];
  for (const auto& [name, ms] : stages.items()) {
    INFO(name);
    CHECK(ms.get<double>() >= 0);
  }
  // The engine spent at least the modelled time; the stage that reports it saw that much.
  const double modelled_ms = prompt_tokens * us_per_token / 1e3;
  REQUIRE(stages.contains("prefill_compute"));
  CHECK(stages["prefill_compute"].get<double>() >= 0.99 * modelled_ms);
  // The client's TTFT (its clock: sent → first token) holds the server's, which holds the
  // prefill; each decode step costs at least its modelled time.
  const double ttft = j["ttft_ms"].get<double>();
  const double srv_ttft = j["server"]["ttft_ms"].get<double>();
  CHECK(srv_ttft <= ttft);
  CHECK(stages["prefill_compute"].get<double>() <= srv_ttft);
  CHECK(j["itl_ms_p50"].get<double>() >= 0.99 * step_ms);
}

TEST_CASE("generate prints the streamed completion before its summary", "[integration]") {
  server srv;
  SECTION("text") {
    auto r = srv.generate({"--max-tokens", "6", "--json", "once upon a time"});
    REQUIRE(r.exit_code == 0);
    auto j = last_json_line(r.out);
    REQUIRE(j.is_object());
    CHECK(r.out.substr(0, r.out.find('\n')) == j["text"].get<std::string>());
  }
  SECTION("token ids") {
    auto r = srv.generate({"--max-tokens", "6", "--json", "--token-ids", "5 6 7 8"});
    REQUIRE(r.exit_code == 0);
    auto j = last_json_line(r.out);
    REQUIRE(j.is_object());
    std::istringstream streamed(r.out.substr(0, r.out.find('\n')));
    std::vector<int64_t> ids;
    for (int64_t id; streamed >> id;)
      ids.push_back(id);
    CHECK(ids == ids_of(j));
    CHECK(ids.size() == 6);
  }
}

TEST_CASE("the same prompt gives the same tokens whichever worker prefills it", "[integration]") {
  // Disaggregated (prefill worker + KV transfer), decode-local prefill, and conditional
  // disaggregation must agree token for token; a KV block that arrived corrupted would
  // fail the request with kv_corrupt instead.
  server disagg{{"--prefill-chunk", "64"}};
  server local{{"--prefill-workers", "0"}, {"--prefill-chunk", "64"}};
  server conditional{{"--local-prefill-threshold", "1000"}};

  SECTION("short text prompt") {
    const std::vector<std::string> args{"--max-tokens", "16", "the quick brown fox"};
    auto a = generate_json(disagg, args);
    auto b = generate_json(disagg, args);
    auto c = generate_json(local, args);
    auto d = generate_json(conditional, args);
    CHECK(a["tokens"] == 16);
    CHECK(ids_of(a) == ids_of(b));
    CHECK(ids_of(a) == ids_of(c));
    CHECK(ids_of(a) == ids_of(d));
    INFO("disaggregated: " << a["stages"].dump() << "\nconditional: " << d["stages"].dump());
    CHECK(has_stage(a["stages"], "kv_transfer"));
    CHECK_FALSE(has_stage(d["stages"], "kv_transfer"));
    CHECK_FALSE(has_stage(d["server"]["stages"], "kv_transfer"));
    CHECK_FALSE(has_stage(c["stages"], "kv_transfer"));
    CHECK(has_stage(c["stages"], "prefill_compute"));
    CHECK(has_stage(d["stages"], "prefill_compute"));
  }
  SECTION("long prompt, prefilled in chunks") {
    const std::vector<std::string> args{"--max-tokens", "8", "--token-ids", id_prompt(1000, 300)};
    auto a = generate_json(disagg, args);
    auto b = generate_json(disagg, args);  // may reuse cached prefix blocks
    auto c = generate_json(local, args);
    auto d = generate_json(conditional, args);
    CHECK(a["prompt_tokens"] == 300);
    CHECK(a["tokens"] == 8);
    CHECK(ids_of(a) == ids_of(b));
    CHECK(ids_of(a) == ids_of(c));
    CHECK(ids_of(a) == ids_of(d));
    CHECK(has_stage(a["stages"], "kv_transfer"));
    CHECK_FALSE(has_stage(d["stages"], "kv_transfer"));  // 300 < threshold 1000
    // A prompt sharing the first 256 tokens but ending differently: the cached prefix must
    // not leak the old suffix into the new completion.
    auto e = generate_json(disagg, {"--max-tokens", "8", "--token-ids",
                                    id_prompt(1000, 256) + " " + id_prompt(5000, 44)});
    auto f = generate_json(local, {"--max-tokens", "8", "--token-ids",
                                   id_prompt(1000, 256) + " " + id_prompt(5000, 44)});
    CHECK(ids_of(e) == ids_of(f));
    CHECK(ids_of(e) != ids_of(a));
  }
  SECTION("block-aligned prompts") {
    // 16, 32 and 48 tokens fill whole 16-token blocks; 33 spills one token over.
    for (int n : {16, 32, 48, 33}) {
      INFO(n << " prompt tokens");
      const std::vector<std::string> args{"--max-tokens", "4", "--token-ids", id_prompt(100, n)};
      auto a = generate_json(disagg, args);
      auto b = generate_json(disagg, args);
      auto c = generate_json(local, args);
      auto d = generate_json(conditional, args);
      CHECK(ids_of(a) == ids_of(b));
      CHECK(ids_of(a) == ids_of(c));
      CHECK(ids_of(a) == ids_of(d));
    }
  }
  SECTION("seeded sampling") {
    const std::vector<std::string> args{"--max-tokens", "8", "--temperature", "0.8",
                                        "--seed",       "7", "sampled prompt"};
    auto a = generate_json(disagg, args);
    auto b = generate_json(disagg, args);
    auto c = generate_json(local, args);
    auto d = generate_json(conditional, args);
    CHECK(ids_of(a) == ids_of(b));
    CHECK(ids_of(a) == ids_of(c));
    CHECK(ids_of(a) == ids_of(d));
  }
  SECTION("seeded sampling with penalties, a bias and logprobs") {
    // The penalties read each sequence's history, which travels with it: the prefill
    // worker's first token and the decode worker's later ones see the same tokens.
    const std::vector<std::string> args{"--max-tokens",
                                        "12",
                                        "--temperature",
                                        "0.8",
                                        "--seed",
                                        "7",
                                        "--presence-penalty",
                                        "1.5",
                                        "--frequency-penalty",
                                        "0.5",
                                        "--repetition-penalty",
                                        "1.3",
                                        "--logit-bias",
                                        "300=4",
                                        "--logprobs",
                                        "3",
                                        "penalised prompt"};
    auto a = generate_json(disagg, args);
    auto b = generate_json(disagg, args);
    auto c = generate_json(local, args);
    auto d = generate_json(conditional, args);
    CHECK(a["tokens"] == 12);
    CHECK(ids_of(a) == ids_of(b));
    CHECK(ids_of(a) == ids_of(c));
    CHECK(ids_of(a) == ids_of(d));
    REQUIRE(a["logprobs"].size() == 12);
    CHECK(a["logprobs"] == c["logprobs"]);
    CHECK(a["logprobs"] == d["logprobs"]);
    for (const auto& lp : a["logprobs"]) {
      CHECK(lp["logprob"].get<double>() <= 0);
      CHECK(lp["top"].size() == 3);
    }
    // Without the penalties and the bias the same seed samples another completion.
    auto plain = generate_json(
        disagg, {"--max-tokens", "12", "--temperature", "0.8", "--seed", "7", "penalised prompt"});
    CHECK(ids_of(plain) != ids_of(a));
    CHECK_FALSE(plain.contains("logprobs"));
  }
  for (auto* s : {&disagg, &local, &conditional}) {
    auto st = s->status();
    CHECK(workers_idle(st));
  }
}

TEST_CASE("first-token release decode: the same stream, its hold a TTFT stage of its own",
          "[integration]") {
  // --first-token decode: the prefill worker's first token goes out from the decode worker
  // as the sequence joins its first step. The client must see exactly the stream of the
  // default mode (token ids, count, log-probabilities), the hold as `decode_join` in a
  // breakdown that still adds up, and every pool idle afterwards.
  server plain;
  server held{{"--first-token", "decode"}};
  server held_local{{"--first-token", "decode"}, {"--prefill-workers", "0"}};
  const std::vector<std::string> args{"--max-tokens", "16", "--temperature", "0.8", "--seed", "11",
                                      "--logprobs",   "2",  "held prompt"};
  auto a = generate_json(plain, args);
  auto b = generate_json(held, args);
  auto c = generate_json(held_local, args);
  INFO("prefill: " << a["stages"].dump() << "\ndecode: " << b["stages"].dump());
  CHECK(b["tokens"] == 16);
  CHECK(b["finish_reason"] == "length");
  CHECK(ids_of(a) == ids_of(b));
  CHECK(ids_of(a) == ids_of(c));
  CHECK(a["logprobs"] == b["logprobs"]);
  CHECK_FALSE(has_stage(a["stages"], "decode_join"));
  CHECK(has_stage(b["stages"], "decode_join"));
  CHECK(has_stage(b["server"]["stages"], "decode_join"));
  CHECK(has_stage(b["stages"], "kv_transfer"));
  // A local prefill's first token comes from the decode worker's own step: nothing held.
  CHECK_FALSE(has_stage(c["stages"], "decode_join"));
  const double ttft = b["ttft_ms"].get<double>();
  CHECK(std::abs(sum_of(b["stages"]) - ttft) <= 0.01 * ttft);
  // The first token is the last (max_tokens 1, or a stop id): it is released as the
  // sequence ends, never lost.
  auto one = generate_json(held, {"--max-tokens", "1", "held prompt"});
  CHECK(one["tokens"] == 1);
  CHECK(one["finish_reason"] == "length");
  auto first = ids_of(generate_json(plain, {"--max-tokens", "1", "held prompt"}));
  CHECK(ids_of(one) == first);
  REQUIRE(first.size() == 1);
  auto stopped = generate_json(
      held, {"--max-tokens", "8", "--stop-id", std::to_string(first[0]), "held prompt"});
  CHECK(stopped["finish_reason"] == "stop");
  CHECK(ids_of(stopped) == first);
  for (auto* s : {&plain, &held, &held_local})
    CHECK(workers_idle(s->status()));
}

TEST_CASE("generate --logprobs prints each token's log-probability, bad values are refused",
          "[integration]") {
  server srv;
  auto r = srv.generate({"--max-tokens", "4", "--logprobs", "2", "hello"});
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(r.out.find("logprobs (natural log, raw logits):") != std::string::npos);
  CHECK(r.out.find("| top") != std::string::npos);
  // Greedy: the chosen token is the most likely one, so it heads its own top list.
  auto j = generate_json(srv, {"--max-tokens", "4", "--logprobs", "2", "hello"});
  REQUIRE(j["logprobs"].size() == 4);
  for (size_t i = 0; i < 4; ++i) {
    CHECK(j["logprobs"][i]["token"] == j["token_ids"][i]);
    CHECK(j["logprobs"][i]["top"][0][0] == j["token_ids"][i]);
    CHECK(j["logprobs"][i]["top"][0][1] == j["logprobs"][i]["logprob"]);
  }
  // Asking for logprobs does not change greedy tokens.
  auto plain = generate_json(srv, {"--max-tokens", "4", "hello"});
  CHECK(ids_of(plain) == ids_of(j));
  for (auto bad : std::vector<std::pair<std::vector<std::string>, std::string>>{
           {{"--logprobs", "21"}, "top_logprobs must be -1 (none) or in [0, 20]"},
           {{"--presence-penalty", "3"}, "presence_penalty must be in [-2, 2]"},
           {{"--repetition-penalty", "0"}, "repetition_penalty must be a finite number > 0"},
           {{"--logit-bias", "99999999=1"}, "logit_bias token id 99999999 is outside"},
           {{"--logit-bias", "5=200"}, "logit_bias for token 5 must be in [-100, 100]"},
           {{"--logit-bias", "five=1"}, "--logit-bias: 'five=1' is not TOKEN_ID=BIAS"}}) {
    auto args = bad.first;
    args.insert(args.end(), {"--max-tokens", "2", "hello"});
    auto e = srv.generate(args);
    INFO(bad.second << "\n" << e.err);
    CHECK(e.exit_code != 0);
    CHECK(e.err.find(bad.second) != std::string::npos);
  }
}

TEST_CASE("a stop id ends generation right after that token", "[integration]") {
  server srv;
  auto first = generate_json(srv, {"--max-tokens", "10", "a prompt to stop in"});
  auto ids = ids_of(first);
  REQUIRE(ids.size() == 10);
  const auto stop = ids[3];
  // The stop id may occur earlier in the completion; generation stops at its first occurrence.
  size_t expected = 4;
  for (size_t i = 0; i < 4; ++i)
    if (ids[i] == stop) {
      expected = i + 1;
      break;
    }
  auto second = generate_json(
      srv, {"--max-tokens", "10", "--stop-id", std::to_string(stop), "a prompt to stop in"});
  CHECK(second["finish_reason"] == "stop");
  CHECK(second["tokens"] == expected);
  auto got = ids_of(second);
  CHECK(std::vector<int64_t>(ids.begin(), ids.begin() + static_cast<long>(expected)) == got);
}

TEST_CASE("status lists every role up and --help works on every command", "[integration]") {
  server srv;
  auto st = srv.status();
  REQUIRE(st.is_object());
  INFO(st.dump());
  CHECK(st["ready"] == true);
  for (const char* role : {"router", "prefill", "decode", "kv_store"}) {
    auto w = worker(st, role);
    INFO(role);
    REQUIRE(w.is_object());
    CHECK(w["up"] == true);
  }
  CHECK(worker(st, "decode")["kv_total"].get<int64_t>() > 0);
  CHECK(worker(st, "prefill")["kv_total"].get<int64_t>() > 0);

  auto text = run_tokenmill({"status", "--connect", srv.endpoint()});
  CHECK(text.exit_code == 0);
  CHECK(text.out.find("decode") != std::string::npos);

  for (std::vector<std::string> args : std::vector<std::vector<std::string>>{{"--help"},
                                                                             {"serve", "--help"},
                                                                             {"generate", "--help"},
                                                                             {"status", "--help"},
                                                                             {"bench", "--help"}}) {
    auto r = run_tokenmill(args);
    INFO(args.front() << " " << (args.size() > 1 ? args[1] : "") << "\n" << r.err);
    CHECK(r.exit_code == 0);
    CHECK(r.out.find("Usage") != std::string::npos);
  }
}

TEST_CASE("bench runs a short load against a server", "[integration]") {
  server srv;
  auto r = run_tokenmill({"bench", "--connect", srv.endpoint(), "--requests", "6", "--concurrency",
                          "3", "--input-len", "16", "--output-len", "4", "--json"});
  INFO("stdout: " << r.out << "\nstderr: " << r.err);
  REQUIRE(r.exit_code == 0);
  auto j = last_json_line(r.out);
  REQUIRE(j.is_object());
  CHECK(j["requests"] == 6);
  CHECK(j["failed"] == 0);
  auto st = srv.status();
  CHECK(workers_idle(st));
  CHECK(worker(st, "decode")["completed"] == 6);
}

TEST_CASE("ITL spikes are attributed to the piggy-backed prefill that caused them",
          "[integration][itl]") {
  // Prompts are prefilled on the decode worker between its steps: a 512-token prompt
  // arriving mid-stream stalls the running sequence for about 100 ms.
  server srv{{"--prefill-workers", "0"},
             {"--sim-decode-step-ms", "10"},
             {"--sim-prefill-us-per-token", "200"}};
  process stream(srv.generate_argv(
      {"--json", "--max-tokens", "200", "--ignore-eos", "--token-ids", id_prompt(300, 16)}));
  REQUIRE(stream.wait_for_output(1, milliseconds(5000)));  // it is decoding
  std::this_thread::sleep_for(milliseconds(100));
  auto big = srv.generate({"--max-tokens", "2", "--token-ids", id_prompt(400, 512)});
  REQUIRE(big.exit_code == 0);
  REQUIRE(stream.wait(milliseconds(20000)) == 0);
  auto j = last_json_line(stream.out());
  INFO(stream.out());
  REQUIRE(j.is_object());
  const auto& sv = j["server"];
  CHECK(sv["decode_worker"] == "decode0");
  CHECK(sv["prefill_worker"] == "");
  CHECK(sv["itl_spikes"]["prefill"].get<int>() >= 1);
  // One step record per token; the spike's step carried the prompt's tokens.
  REQUIRE(sv["steps"].size() == 200);
  bool found = false;
  for (const auto& s : sv["steps"])
    if (s[5] == "prefill") {
      found = true;
      CHECK(s[4].get<int>() > 0);        // prefill tokens in that iteration
      CHECK(s[1].get<double>() > 50.0);  // the gap before the token
    }
  CHECK(found);
}
