#include <catch2/catch.hpp>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <map>
#include <numeric>
#include <set>

#include "frontend/workload.hpp"

using namespace tokenmill;
using namespace tokenmill::workload;

namespace {

bool mentions(const error_info& e, const std::string& what) {
  return e.message.find(what) != std::string::npos;
}

/// A file under /tmp removed at the end of the test.
struct temp_file {
  std::string path;
  explicit temp_file(const std::string& content) {
    static int counter = 0;
    path = "/tmp/tokenmill-test-workload-" + std::to_string(::getpid()) + "-" +
           std::to_string(counter++) + ".json";
    std::ofstream(path) << content;
  }
  ~temp_file() { std::remove(path.c_str()); }
};

/// One token per whitespace-separated word, ids 300, 301, ...
result<std::vector<token_id>> word_tokens(const std::string& s) {
  std::vector<token_id> out;
  bool in_word = false;
  for (char c : s) {
    bool space = c == ' ' || c == '\n' || c == '\t';
    if (!space && !in_word) out.push_back(300 + static_cast<token_id>(out.size()));
    in_word = !space;
  }
  return out;
}

std::string words(int n) {
  std::string s;
  for (int i = 0; i < n; ++i)
    s += (i ? " w" : "w") + std::to_string(i);
  return s;
}

std::string conversation(const std::string& human, const std::string& gpt) {
  nlohmann::json j = {{"conversations",
                       {{{"from", "human"}, {"value", human}}, {{"from", "gpt"}, {"value", gpt}}}}};
  return j.dump();
}

request_result ok_result(double ttft, double e2e, uint32_t tokens, std::vector<double> itl = {}) {
  request_result r;
  r.ok = true;
  r.ttft_ms = ttft;
  r.e2e_ms = e2e;
  r.output_tokens = tokens;
  r.prompt_tokens = 10;
  r.itl_ms = std::move(itl);
  return r;
}

}  // namespace

TEST_CASE("arrival schedules are seeded, non-decreasing and average 1/rate", "[workload]") {
  auto a = arrival_schedule(20000, 50, 1, 7);
  auto b = arrival_schedule(20000, 50, 1, 7);
  auto c = arrival_schedule(20000, 50, 1, 8);
  CHECK(a == b);
  CHECK(a != c);
  REQUIRE(a.size() == 20000);
  CHECK(a.front() == 0);
  CHECK(std::is_sorted(a.begin(), a.end()));
  double mean_gap = a.back() / static_cast<double>(a.size() - 1);
  CHECK(std::abs(mean_gap - 1.0 / 50) < 0.03 / 50);

  SECTION("gamma gaps keep the mean, burstiness changes the spread") {
    auto spread = [](const std::vector<double>& t) {
      double mean = t.back() / static_cast<double>(t.size() - 1), var = 0;
      for (size_t i = 1; i < t.size(); ++i)
        var += (t[i] - t[i - 1] - mean) * (t[i] - t[i - 1] - mean);
      return std::sqrt(var / static_cast<double>(t.size() - 1)) / mean;  // coefficient of variation
    };
    auto bursty = arrival_schedule(20000, 50, 0.25, 7);
    auto steady = arrival_schedule(20000, 50, 4, 7);
    CHECK(std::abs(bursty.back() / 19999 - 0.02) < 0.03 * 0.02 * 2);
    CHECK(std::abs(steady.back() / 19999 - 0.02) < 0.03 * 0.02);
    // CV of gamma(k) is 1/sqrt(k): 2 for k = 0.25, 1 for Poisson, 0.5 for k = 4.
    CHECK(spread(bursty) == Approx(2.0).epsilon(0.1));
    CHECK(spread(a) == Approx(1.0).epsilon(0.05));
    CHECK(spread(steady) == Approx(0.5).epsilon(0.05));
  }
  SECTION("an infinite rate sends everything at once") {
    auto inf = arrival_schedule(10, std::numeric_limits<double>::infinity(), 1, 1);
    CHECK(inf == std::vector<double>(10, 0.0));
  }
  SECTION("zero requests") {
    CHECK(arrival_schedule(0, 10, 1, 1).empty());
  }
}

TEST_CASE("length ranges stay within their bounds", "[workload]") {
  std::mt19937_64 rng(3);
  SECTION("fixed") {
    length_range r{100, 0};
    CHECK(r.lo() == 100);
    CHECK(r.hi() == 100);
    for (int i = 0; i < 100; ++i)
      CHECK(sample_length(r, rng) == 100);
  }
  SECTION("uniform") {
    length_range r{100, 0.5};
    CHECK(r.lo() == 50);
    CHECK(r.hi() == 150);
    std::set<uint32_t> seen;
    for (int i = 0; i < 5000; ++i) {
      auto v = sample_length(r, rng);
      CHECK(v >= 50);
      CHECK(v <= 150);
      seen.insert(v);
    }
    CHECK(seen.count(50) == 1);
    CHECK(seen.count(150) == 1);
    CHECK(seen.size() > 90);
  }
  SECTION("never below one token") {
    length_range r{1, 0.9};
    CHECK(r.lo() == 1);
    for (int i = 0; i < 100; ++i)
      CHECK(sample_length(r, rng) >= 1);
  }
}

TEST_CASE("random workloads are seeded and respect lengths and the vocabulary", "[workload]") {
  random_spec s;
  s.requests = 50;
  s.input = {64, 0.25};
  s.output = {16, 0};
  s.vocab = {259, 400};
  s.seed = 11;
  auto a = random_workload(s);
  auto b = random_workload(s);
  REQUIRE(a.size() == 50);
  for (size_t i = 0; i < a.size(); ++i) {
    CHECK(a[i].prompt_ids == b[i].prompt_ids);
    CHECK_FALSE(a[i].has_text);
    CHECK(a[i].prompt_len == a[i].prompt_ids.size());
    CHECK(a[i].prompt_len >= 48);
    CHECK(a[i].prompt_len <= 80);
    CHECK(a[i].max_tokens == 16);
    CHECK(a[i].expected_output_len == 16);
    for (auto id : a[i].prompt_ids) {
      CHECK(id >= 259);
      CHECK(id < 400);
    }
  }
  CHECK(a[0].prompt_ids != a[1].prompt_ids);
  // A request depends on (seed, index) only: a longer run starts with the same requests.
  s.requests = 10;
  auto c = random_workload(s);
  for (size_t i = 0; i < c.size(); ++i)
    CHECK(c[i].prompt_ids == a[i].prompt_ids);
  s.seed = 12;
  CHECK(random_workload(s)[0].prompt_ids != a[0].prompt_ids);
}

TEST_CASE("shared-prefix requests share their group's prefix and differ after it", "[workload]") {
  shared_prefix_spec s;
  s.prefixes = 3;
  s.users = 4;
  s.prefix_len = 32;
  s.input = {8, 0};
  s.output = {5, 0};
  s.vocab = {259, 10000};
  auto reqs = shared_prefix_workload(s);
  REQUIRE(reqs.size() == 12);  // prefixes x users when requests is 0
  auto prefix = [](const bench_request& r) {
    return std::vector<token_id>(r.prompt_ids.begin(), r.prompt_ids.begin() + 32);
  };
  auto suffix = [](const bench_request& r) {
    return std::vector<token_id>(r.prompt_ids.begin() + 32, r.prompt_ids.end());
  };
  for (size_t i = 0; i < reqs.size(); ++i) {
    INFO("request " << i);
    CHECK(reqs[i].group == i % 3);  // interleaved over the groups
    CHECK(reqs[i].prompt_ids.size() == 40);
    CHECK(reqs[i].prompt_len == 40);
    CHECK(reqs[i].max_tokens == 5);
    CHECK(prefix(reqs[i]) == prefix(reqs[i % 3]));
  }
  CHECK(prefix(reqs[0]) != prefix(reqs[1]));
  CHECK(prefix(reqs[1]) != prefix(reqs[2]));
  std::set<std::vector<token_id>> suffixes;
  for (const auto& r : reqs)
    suffixes.insert(suffix(r));
  CHECK(suffixes.size() == reqs.size());  // every user's suffix is its own

  s.requests = 7;
  CHECK(shared_prefix_workload(s).size() == 7);
}

TEST_CASE("multi-turn: each turn's prompt extends the chat's previous one", "[workload]") {
  multi_turn_spec s;
  s.conversations = 3;
  s.turns = 4;
  s.system_len = 20;
  s.input = {8, 0};
  s.answer = {6, 0};
  s.output = {5, 0};
  s.vocab = {259, 10000};
  auto reqs = multi_turn_workload(s);
  REQUIRE(reqs.size() == 12);  // conversations x turns when requests is 0
  for (size_t i = 0; i < reqs.size(); ++i) {
    INFO("request " << i);
    const size_t t = i / 3;
    CHECK(reqs[i].group == i % 3);  // chats interleaved
    // system + t earlier (user + answer) + this user message
    CHECK(reqs[i].prompt_len == 20 + t * (8 + 6) + 8);
    CHECK(reqs[i].prompt_ids.size() == reqs[i].prompt_len);
    CHECK(reqs[i].max_tokens == 5);
    if (t > 0) {  // the previous turn's prompt is a prefix of this one
      const auto& prev = reqs[i - 3].prompt_ids;
      CHECK(std::equal(prev.begin(), prev.end(), reqs[i].prompt_ids.begin()));
    }
  }
  // Chats differ from their system prompt on.
  CHECK(reqs[0].prompt_ids != reqs[1].prompt_ids);
  CHECK(std::vector<token_id>(reqs[0].prompt_ids.begin(), reqs[0].prompt_ids.begin() + 20) !=
        std::vector<token_id>(reqs[1].prompt_ids.begin(), reqs[1].prompt_ids.begin() + 20));
  // Same seed, same requests; past `turns` a chat starts over with a new system prompt.
  CHECK(multi_turn_workload(s)[7].prompt_ids == reqs[7].prompt_ids);
  s.requests = 15;
  auto more = multi_turn_workload(s);
  REQUIRE(more.size() == 15);
  CHECK(more[12].prompt_len == 28);
  CHECK(more[12].group == 0);
  CHECK(std::vector<token_id>(more[12].prompt_ids.begin(), more[12].prompt_ids.begin() + 20) !=
        std::vector<token_id>(reqs[0].prompt_ids.begin(), reqs[0].prompt_ids.begin() + 20));
}

TEST_CASE("rag: k shuffled documents from a pool, as segments", "[workload]") {
  rag_spec s;
  s.requests = 40;
  s.pool = 6;
  s.docs = 3;
  s.doc_len = 10;
  s.system_len = 4;
  s.question = {5, 0};
  s.output = {7, 0};
  s.vocab = {259, 512};
  s.seed = 3;
  auto reqs = rag_workload(s);
  REQUIRE(reqs.size() == 40);
  // Document d's tokens, as the pool holds them: find them by their segment in request 0.
  std::map<std::vector<token_id>, int> seen;  // document tokens -> times sent
  std::set<std::vector<uint32_t>> orders;
  for (const auto& r : reqs) {
    CHECK_FALSE(r.has_text);
    CHECK(r.prompt_len == 4 + 3 * 10 + 5);
    CHECK(r.prompt_ids.size() == r.prompt_len);
    CHECK(r.segment_ends == std::vector<uint32_t>{4, 14, 24, 34, 39});
    CHECK(r.max_tokens == 7);
    for (auto t : r.prompt_ids)
      CHECK((t >= 259 && t < 512));
    // The same system prompt everywhere; three distinct documents.
    CHECK(std::vector<token_id>(r.prompt_ids.begin(), r.prompt_ids.begin() + 4) ==
          std::vector<token_id>(reqs[0].prompt_ids.begin(), reqs[0].prompt_ids.begin() + 4));
    std::set<std::vector<token_id>> docs;
    for (int d = 0; d < 3; ++d) {
      std::vector<token_id> doc(r.prompt_ids.begin() + 4 + 10 * d,
                                r.prompt_ids.begin() + 14 + 10 * d);
      docs.insert(doc);
      ++seen[doc];
    }
    CHECK(docs.size() == 3);
  }
  // Drawn from a pool of 6: no more than 6 distinct documents, and documents come back in
  // other positions (the point of chunk reuse).
  CHECK(seen.size() <= 6);
  CHECK(seen.size() >= 4);
  // Seeded: the same spec gives the same requests, another seed others.
  auto again = rag_workload(s);
  CHECK(again[7].prompt_ids == reqs[7].prompt_ids);
  s.seed = 4;
  CHECK(rag_workload(s)[7].prompt_ids != reqs[7].prompt_ids);
  // k is clamped to the pool.
  s.docs = 50;
  s.requests = 1;
  CHECK(rag_workload(s)[0].segment_ends.size() == 6 + 2);
}

TEST_CASE("rag as chat: the segments as text, a document the same text wherever it sits",
          "[workload]") {
  rag_spec s;
  s.requests = 12;
  s.pool = 4;
  s.docs = 2;
  s.doc_len = 6;
  s.system_len = 3;
  s.question = {4, 0};
  s.seed = 9;
  const auto ids = rag_workload(s);
  for (const auto& r : ids)
    CHECK(r.chat_parts.empty());
  s.chat = true;
  const auto reqs = rag_workload(s);
  REQUIRE(reqs.size() == ids.size());
  std::map<std::vector<token_id>, std::string> doc_text;  // a document's ids -> its text
  for (size_t i = 0; i < reqs.size(); ++i) {
    const auto& r = reqs[i];
    CHECK(r.prompt_ids == ids[i].prompt_ids);  // the same workload, also as text
    CHECK(r.segment_ends == ids[i].segment_ends);
    // system, two documents, question; one word per token id.
    REQUIRE(r.chat_parts.size() == 4);
    uint32_t begin = 0;
    for (size_t k = 0; k < r.chat_parts.size(); ++k) {
      const uint32_t end = r.segment_ends[k];
      const std::vector<token_id> seg(r.prompt_ids.begin() + begin, r.prompt_ids.begin() + end);
      CHECK(r.chat_parts[k] == ids_as_words(seg));
      CHECK(static_cast<size_t>(std::count(r.chat_parts[k].begin(), r.chat_parts[k].end(), ' ')) ==
            end - begin - 1);
      if (k == 1 || k == 2) {
        auto [it, fresh] = doc_text.emplace(seg, r.chat_parts[k]);
        CHECK(it->second == r.chat_parts[k]);
      }
      begin = end;
    }
    CHECK(r.chat_parts[0] == reqs[0].chat_parts[0]);  // one system prompt
  }
  CHECK(doc_text.size() <= 4);
  CHECK(ids_as_words(std::vector<token_id>{0, 1, 64}) == "able acid able");
  CHECK(ids_as_words(std::vector<token_id>{}).empty());
}

TEST_CASE("metric_sum adds a metric's samples out of a Prometheus exposition", "[workload]") {
  const std::string text =
      "# HELP tokenmill_x_total Things.\n"
      "# TYPE tokenmill_x_total counter\n"
      "tokenmill_x_total{worker=\"a\"} 3\n"
      "tokenmill_x_total{worker=\"b } c\",role=\"q\\\"x\"} 4.5\n"
      "tokenmill_x_total_more{worker=\"a\"} 100\n"
      "tokenmill_y 7\n"
      "tokenmill_x_total 1";
  CHECK(metric_sum(text, "tokenmill_x_total") == 8.5);
  CHECK(metric_sum(text, "tokenmill_y") == 7);
  CHECK_FALSE(metric_sum(text, "tokenmill_z").has_value());
  CHECK_FALSE(metric_sum(text, "tokenmill_x").has_value());  // a prefix is not the name
  CHECK_FALSE(metric_sum("", "tokenmill_x_total").has_value());
  CHECK_FALSE(metric_sum("tokenmill_x_total{worker=\"a\" 3\n", "tokenmill_x_total").has_value());
}

TEST_CASE("ShareGPT files: the first human turn and the answer after it", "[workload]") {
  SECTION("a good file") {
    std::string text = "[" + conversation(words(10), words(20)) + "," +
                       R"({"id":"x","conversations":[{"from":"system","value":"be brief"},)"
                       R"({"from":"human","value":")" +
                       words(6) + R"("},{"from":"gpt","value":")" + words(5) +
                       R"("},{"from":"human","value":"more"}]})" + "]";
    auto e = parse_sharegpt(text, "good.json");
    REQUIRE(e);
    REQUIRE(e->size() == 2);
    CHECK((*e)[0].index == 0);
    CHECK((*e)[0].prompt == words(10));
    CHECK((*e)[0].answer == words(20));
    CHECK((*e)[1].index == 1);
    CHECK((*e)[1].prompt == words(6));
    CHECK((*e)[1].answer == words(5));

    temp_file f(text);
    sharegpt_spec s;
    s.path = f.path;
    s.requests = 10;
    auto reqs = sharegpt_workload(s, word_tokens);
    REQUIRE(reqs);
    REQUIRE(reqs->size() == 2);  // fewer usable entries than asked for
    for (const auto& r : *reqs) {
      CHECK(r.has_text);
      bool first = r.prompt_text == words(10);
      CHECK(r.prompt_len == (first ? 10u : 6u));
      CHECK(r.max_tokens == (first ? 20u : 5u));
      CHECK(r.expected_output_len == r.max_tokens);
    }
    s.fixed_output_len = 7;
    reqs = sharegpt_workload(s, word_tokens);
    REQUIRE(reqs);
    for (const auto& r : *reqs)
      CHECK(r.max_tokens == 7);
  }
  SECTION("skips: short conversations, short turns, no human/model pair, over max_len") {
    std::string text = "[" + std::string(R"({"conversations":[]},)") +                       // 0
                       R"({"conversations":[{"from":"human","value":"only one turn"}]},)" +  // 1
                       conversation("too short", words(10)) + "," +                          // 2
                       conversation(words(10), "tiny") + "," +                               // 3
                       R"({"conversations":[{"from":"gpt","value":"a b c d"},)"
                       R"({"from":"gpt","value":"e f g h"}]},)" +  // 4
                       conversation(words(40), words(30)) +
                       "," +                                    // 5
                       conversation(words(8), words(9)) + "]";  // 6
    auto e = parse_sharegpt(text, "skips.json");
    REQUIRE(e);
    CHECK(e->size() == 4);  // 2, 3, 5, 6 have the right shape
    temp_file f(text);
    sharegpt_spec s;
    s.path = f.path;
    s.requests = 100;
    s.max_len = 50;
    auto reqs = sharegpt_workload(s, word_tokens);
    REQUIRE(reqs);
    REQUIRE(reqs->size() == 1);
    CHECK((*reqs)[0].prompt_text == words(8));
    s.max_len = 0;
    reqs = sharegpt_workload(s, word_tokens);
    REQUIRE(reqs);
    CHECK(reqs->size() == 2);
  }
  SECTION("the sample is seeded and limited to the requests asked for") {
    std::string text = "[";
    for (int i = 0; i < 20; ++i)
      text += (i ? "," : "") + conversation(words(4 + i), words(4));
    text += "]";
    temp_file f(text);
    sharegpt_spec s;
    s.path = f.path;
    s.requests = 5;
    s.seed = 3;
    auto a = sharegpt_workload(s, word_tokens);
    auto b = sharegpt_workload(s, word_tokens);
    REQUIRE(a);
    REQUIRE(b);
    REQUIRE(a->size() == 5);
    for (size_t i = 0; i < 5; ++i)
      CHECK((*a)[i].prompt_text == (*b)[i].prompt_text);
  }
  SECTION("malformed files name the file and the entry") {
    auto bad = [](const std::string& text) {
      auto e = parse_sharegpt(text, "data.json");
      REQUIRE_FALSE(e);
      CHECK(e.error().code == errc::invalid_request);
      CHECK(mentions(e.error(), "data.json"));
      return e.error();
    };
    CHECK(mentions(bad("[{\"conversations\": ["), "not valid JSON"));
    CHECK(mentions(bad(R"({"conversations": []})"), "not an array"));
    CHECK(mentions(bad(R"([{"conversations": []}, 5])"), "entry 1"));
    CHECK(mentions(bad(R"([{"conversations": []}, {"turns": []}])"), "entry 1"));
    CHECK(mentions(bad(R"([{"conversations": {"from": "human"}}])"), "entry 0"));
    auto e = bad(R"([{"conversations":[{"from":"human","value":"a b c d"},{"from":"gpt"}]}])");
    CHECK(mentions(e, "entry 0, turn 1"));
    CHECK(mentions(bad(R"([{"conversations":[{"from":"human","value":7}]}])"), "turn 0"));
  }
  SECTION("files that cannot be read, and files with nothing usable") {
    sharegpt_spec s;
    s.path = "/nonexistent/sharegpt.json";
    s.requests = 1;
    auto r = sharegpt_workload(s, word_tokens);
    REQUIRE_FALSE(r);
    CHECK(mentions(r.error(), "/nonexistent/sharegpt.json"));
    temp_file f("[]");
    s.path = f.path;
    r = sharegpt_workload(s, word_tokens);
    REQUIRE_FALSE(r);
    CHECK(mentions(r.error(), f.path));
    CHECK(mentions(r.error(), "usable"));
  }
  SECTION("a failing tokenizer is an error naming the entry") {
    temp_file f("[" + conversation(words(10), words(10)) + "]");
    sharegpt_spec s;
    s.path = f.path;
    s.requests = 1;
    auto r = sharegpt_workload(s, [](const std::string&) -> result<std::vector<token_id>> {
      return error_info{errc::unavailable, "server gone"};
    });
    REQUIRE_FALSE(r);
    CHECK(r.error().code == errc::unavailable);
    CHECK(mentions(r.error(), "entry 0"));
    CHECK(mentions(r.error(), "server gone"));
  }
}

TEST_CASE("goodput counts the requests that meet every set SLO", "[workload]") {
  std::vector<request_result> rs;
  rs.push_back(ok_result(100, 1000, 10, {100, 100}));  // tpot 100
  rs.push_back(ok_result(300, 750, 10, {50, 50}));     // ttft too high; tpot 50
  rs.push_back(ok_result(50, 1950, 20, {100, 400}));   // tpot 100, one long gap
  rs.push_back(ok_result(80, 80, 1));                  // a single token: no TPOT
  request_result failed;
  failed.error = "overloaded: too many requests";
  failed.error_code = "overloaded";
  rs.push_back(failed);

  CHECK(request_tpot_ms(rs[0]) == Approx(100));
  CHECK(request_tpot_ms(rs[1]) == Approx(50));
  CHECK_FALSE(request_tpot_ms(rs[3]));

  SECTION("no SLO: every completed request is good") {
    auto j = make_report(rs, 2.0, {});
    CHECK(j["requests"] == 5);
    CHECK(j["completed"] == 4);
    CHECK(j["failed"] == 1);
    CHECK(j["first_error"] == "overloaded: too many requests");
    CHECK(j["rejected"] == 1);
    CHECK(j["rejected_fraction"].get<double>() == Approx(0.2));
    CHECK(j["errors"]["overloaded"] == 1);
    CHECK(j["goodput"]["requests_per_s"].get<double>() == Approx(2.0));
    CHECK(j["goodput"]["fraction"].get<double>() == Approx(0.8));
    CHECK(j["goodput"]["slo"]["ttft_ms"].is_null());
  }
  SECTION("TTFT and TPOT") {
    slo_spec slo;
    slo.ttft_ms = 200;
    slo.tpot_ms = 100;
    CHECK(meets_slo(rs[0], slo));
    CHECK_FALSE(meets_slo(rs[1], slo));
    CHECK(meets_slo(rs[2], slo));
    CHECK(meets_slo(rs[3], slo));
    CHECK_FALSE(meets_slo(rs[4], slo));
    auto j = make_report(rs, 2.0, slo);
    CHECK(j["goodput"]["requests_per_s"].get<double>() == Approx(1.5));
    CHECK(j["goodput"]["fraction"].get<double>() == Approx(0.6));
    CHECK(j["goodput"]["slo"]["ttft_ms"] == 200.0);
    CHECK(j["goodput"]["slo"]["tpot_ms"] == 100.0);
    CHECK(j["goodput"]["slo"]["itl_ms"].is_null());
    slo.tpot_ms = 99;
    CHECK_FALSE(meets_slo(rs[0], slo));
  }
  SECTION("ITL: the p99 of the request's own gaps") {
    slo_spec slo;
    slo.itl_ms = 200;
    CHECK(meets_slo(rs[0], slo));
    CHECK(meets_slo(rs[1], slo));
    CHECK_FALSE(meets_slo(rs[2], slo));  // p99 of {100, 400} is 397
    CHECK(meets_slo(rs[3], slo));        // no gaps
    auto j = make_report(rs, 4.0, slo);
    CHECK(j["goodput"]["requests_per_s"].get<double>() == Approx(0.75));
  }
}

TEST_CASE("the report's percentiles, throughput and stage means", "[workload]") {
  std::vector<request_result> rs;
  for (int i = 0; i < 4; ++i) {
    auto r = ok_result(10.0 * (i + 1), 100.0 * (i + 1), 11, std::vector<double>(10, 5.0 + i));
    r.prompt_tokens = 100;
    r.stages = {{"routing", 1.0 * (i + 1)}, {"prefill_compute", 4.0}};
    if (i == 3) r.stages.push_back({"kv_transfer", 8.0});
    rs.push_back(r);
  }
  auto j = make_report(rs, 2.0, {});
  CHECK(j["requests"] == 4);
  CHECK(j["failed"] == 0);
  CHECK_FALSE(j.contains("first_error"));
  CHECK(j["prompt_tokens"] == 400);
  CHECK(j["output_tokens"] == 44);
  CHECK(j["ttft_ms"]["mean"].get<double>() == Approx(25));
  CHECK(j["ttft_ms"]["p50"].get<double>() == Approx(25));
  CHECK(j["e2e_ms"]["p99"].get<double>() == Approx(397));
  CHECK(j["itl_ms"]["mean"].get<double>() == Approx(6.5));
  // TPOT (e2e - ttft) / 10: 9, 18, 27, 36
  CHECK(j["tpot_ms"]["mean"].get<double>() == Approx(22.5));
  CHECK(j["requests_per_s"].get<double>() == Approx(2));
  CHECK(j["output_tokens_per_s"].get<double>() == Approx(22));
  CHECK(j["total_tokens_per_s"].get<double>() == Approx(222));
  const auto& st = j["ttft_stages_mean_ms"];
  std::vector<std::string> names;
  for (const auto& [k, v] : st.items())
    names.push_back(k);
  CHECK(names == std::vector<std::string>{"routing", "prefill_compute", "kv_transfer"});
  CHECK(st["routing"].get<double>() == Approx(2.5));
  CHECK(st["prefill_compute"].get<double>() == Approx(4));
  CHECK(st["kv_transfer"].get<double>() == Approx(2));

  SECTION("no results") {
    auto e = make_report({}, 0, {});
    CHECK(e["requests"] == 0);
    CHECK(e["requests_per_s"] == 0.0);
    CHECK(e["ttft_ms"]["p50"] == 0.0);
    CHECK(e["goodput"]["fraction"] == 0.0);
  }
}

TEST_CASE("check_delivery counts indices delivered twice, conflicting or missing", "[workload]") {
  SECTION("every index once, in order") {
    auto c = check_delivery({{0, 5}, {1, 6}, {2, 7}}, 3);
    CHECK(c.duplicated == 0);
    CHECK(c.conflicting == 0);
    CHECK(c.missing == 0);
  }
  SECTION("out of order is fine; a repeat is counted, a different id also as conflicting") {
    auto c = check_delivery({{1, 6}, {0, 5}, {1, 6}, {2, 7}, {2, 9}}, 3);
    CHECK(c.duplicated == 2);
    CHECK(c.conflicting == 1);
    CHECK(c.missing == 0);
  }
  SECTION("a completed request missing indices below its end") {
    auto c = check_delivery({{0, 5}, {3, 8}}, 5);
    CHECK(c.missing == 3);  // 1, 2 and 4
  }
  SECTION("a failed request: only gaps below the highest arrived index count") {
    auto c = check_delivery({{0, 5}, {2, 7}}, 0);
    CHECK(c.missing == 1);
    CHECK(check_delivery({}, 0).missing == 0);
  }
}

TEST_CASE("token gaps split into step, between steps, router hold and delivery", "[workload]") {
  // Token 0 from a prefill, tokens 1..3 from decode steps (times in ms, as ns).
  auto ms = [](double x) { return static_cast<int64_t>(x * 1e6); };
  std::vector<step_record> steps{
      {0, ms(5), 0, ms(4.9), 1, 8, itl_cause::none},
      {1, ms(15.2), ms(5), ms(15), 1, 0, itl_cause::none},
      {2, ms(25.5), ms(15.1), ms(25.1), 1, 0, itl_cause::none},  // held 0.4 (was 0.2)
      {3, ms(38.0), ms(25.6), ms(37.9), 1, 0, itl_cause::slow_step},
  };
  // Client gaps before tokens 1, 2, 3; token 3 arrived 1 ms later than its release spacing.
  std::vector<double> itl{10.3, 10.3, 13.5};
  auto parts = split_itl(steps, itl);
  REQUIRE(parts.size() == 2);  // token 1's predecessor came from the prefill
  CHECK(parts[0].gap_ms == Approx(10.3));
  CHECK(parts[0].step_ms == Approx(10.0));
  CHECK(parts[0].between_ms == Approx(0.1));
  CHECK(parts[0].held_ms == Approx(0.2));
  CHECK(parts[0].deliver_ms == Approx(0.0).margin(1e-9));
  CHECK(parts[1].step_ms == Approx(12.3));
  CHECK(parts[1].between_ms == Approx(0.5));
  CHECK(parts[1].held_ms == Approx(-0.3));
  CHECK(parts[1].deliver_ms == Approx(1.0));
  for (const auto& p : parts)  // the parts add up to the gap
    CHECK(p.step_ms + p.between_ms + p.held_ms + p.deliver_ms == Approx(p.gap_ms));
  // A token inside a chunk (gap 0) has no part of its own; missing steps are skipped.
  itl[2] = 0;
  CHECK(split_itl(steps, itl).size() == 1);
  CHECK(split_itl(std::span<const step_record>(steps).subspan(0, 2), itl).empty());
}
