// Chrome/Perfetto trace export of hand-made request summaries.
#include <catch2/catch.hpp>

#include <map>
#include <set>
#include <string>
#include <vector>

#include "frontend/trace_export.hpp"

using namespace tokenmill;
using nlohmann::json;

namespace {

/// A disaggregated request: frontend and router on node 0, prefill on node 1, decode on
/// node 2, starting at `t0` ns, each TTFT stage 1 ms long, then `steps` decode steps.
generation_summary request(request_id id, int64_t t0, uint32_t steps = 3) {
  generation_summary g;
  g.id = id;
  g.reason = finish_reason::length;
  g.prefill_worker = "p0.prefill0";
  g.decode_worker = "d0.decode0";
  const std::vector<std::pair<stage, uint32_t>> path{
      {stage::arrived, 0},         {stage::router_received, 0}, {stage::routed, 0},
      {stage::decode_reserved, 2}, {stage::prefill_queued, 1},  {stage::prefill_started, 1},
      {stage::prefill_done, 1},    {stage::kv_pushed, 1},       {stage::first_token_router, 0},
      {stage::first_token_sent, 0}};
  int64_t t = t0;
  for (auto [s, node] : path) {
    g.hops.push_back({s, node, t});
    if (s != stage::arrived) g.stages.push_back({std::string(interval_name(s)), 1.0});
    t += 1'000'000;
  }
  g.ttft_ms = double(path.size() - 1);
  for (uint32_t i = 1; i <= steps; ++i) {
    step_record r;
    r.index = i;
    r.step_start_ns = t;
    r.step_end_ns = t + 8'000'000;
    r.released_ns = t + 8'500'000;
    r.batch = 2;
    r.prefill_tokens = i == 2 ? 64 : 0;
    r.cause = i == 2 ? itl_cause::prefill : itl_cause::none;
    g.steps.push_back(r);
    t += 10'000'000;
  }
  g.hops.push_back({stage::finished, 2, t});
  g.completion_tokens = steps + 1;
  return g;
}

}  // namespace

TEST_CASE("a trace has every stage, decode step and name", "[trace_export]") {
  // Two overlapping requests (the second starts 0.5 ms after the first).
  std::vector<generation_summary> reqs{request(11, 5'000'000'000), request(12, 5'000'500'000)};
  trace_export_stats stats;
  auto out = chrome_trace(reqs, &stats);
  auto j = json::parse(out.dump());  // the output parses
  REQUIRE(j.contains("traceEvents"));
  CHECK(j["displayTimeUnit"] == "ms");
  CHECK(stats.requests == 2);

  std::map<std::pair<int, int>, std::string> thread_names;
  std::map<int, std::string> process_names;
  std::map<std::string, std::multiset<std::string>> stages_of;  // request -> stage names
  size_t steps = 0, spikes = 0, spans = 0, events = 0;
  double min_ts = 1e300;
  for (const auto& e : j["traceEvents"]) {
    const std::string ph = e["ph"];
    if (ph == "M") {
      if (e["name"] == "process_name") process_names[e["pid"]] = e["args"]["name"];
      if (e["name"] == "thread_name") thread_names[{e["pid"], e["tid"]}] = e["args"]["name"];
      continue;
    }
    ++events;
    min_ts = std::min(min_ts, e["ts"].get<double>());
    if (ph == "X") {
      CHECK(e["dur"].get<double>() >= 0);
      if (e["cat"] == "ttft") stages_of[e["args"]["request"]].insert(e["name"]);
      if (e["name"] == "decode step") {
        ++steps;
        CHECK(e["dur"].get<double>() == Approx(8000));
        CHECK(e["args"]["batch"] == 2);
        CHECK(e["args"].contains("prefill_tokens"));
        CHECK(e["args"]["tokens"].size() == 1);
      }
      if (e["cat"] == "request") ++spans;
    }
    if (ph == "i") {
      ++spikes;
      CHECK(e["args"]["cause"] == "prefill");
    }
  }
  CHECK(events == stats.events);
  CHECK(min_ts == 0);  // relative to the earliest stamp
  CHECK(spans == 2);
  CHECK(spikes == 2);
  // The two requests' steps overlap in time but are distinct steps here (0.5 ms apart).
  CHECK(steps == 6);
  for (const auto& g : reqs) {
    auto& names = stages_of[std::to_string(g.id)];
    for (const auto& s : g.stages)
      CHECK(names.count(s.name) == 1);
  }
  CHECK(process_names[1] == "node 0");
  CHECK(process_names[2] == "node 1");
  CHECK(process_names[3] == "node 2");
  std::set<std::string> tracks;
  for (const auto& [key, name] : thread_names)
    tracks.insert(name);
  CHECK(tracks.count("frontend"));
  CHECK(tracks.count("router"));
  CHECK(tracks.count("p0.prefill0"));
  CHECK(tracks.count("d0.decode0"));
  CHECK(tracks.count("requests"));
  // Overlapping requests need a second lane on the requests track.
  CHECK(tracks.count("requests #2"));

  // Every event's track is named.
  for (const auto& e : j["traceEvents"])
    if (e["ph"] != "M") CHECK(thread_names.count({e["pid"].get<int>(), e["tid"].get<int>()}) == 1);
}

TEST_CASE("the routing slice carries every candidate's score", "[trace_export][routing_policy]") {
  auto g = request(21, 1'000'000'000);
  g.routing = {{"d0.decode0", false, true, true, false, 16, 0, 0, 0.5, 3, 20.5},
               {"p0.prefill0", true, true, true, false, 16, 17, 0.5, 0, 0, 17.5}};
  auto plain = request(22, 2'000'000'000);
  auto j = json::parse(chrome_trace(std::vector<generation_summary>{g, plain}).dump());
  size_t seen = 0;
  for (const auto& e : j["traceEvents"]) {
    if (e["ph"] != "X" || e["name"] != "routing") continue;
    ++seen;
    if (e["args"]["request"] == "22") {
      CHECK_FALSE(e["args"].contains("candidates"));
      continue;
    }
    REQUIRE(e["args"]["candidates"].size() == 2);
    CHECK(e["args"]["candidates"][0]["worker"] == "d0.decode0");
    CHECK(e["args"]["candidates"][0]["total_ms"] == 20.5);
    CHECK(e["args"]["candidates"][1]["role"] == "prefill");
    CHECK(e["args"]["candidates"][1]["prefill_ms"] == 17);
  }
  CHECK(seen == 2);
}

TEST_CASE("events on one lane nest properly", "[trace_export]") {
  std::vector<generation_summary> reqs;
  for (int i = 0; i < 8; ++i)
    reqs.push_back(request(i, 1'000'000'000 + i * 300'000, 2));
  auto j = json::parse(chrome_trace(reqs).dump());
  std::map<std::pair<int, int>, std::vector<std::pair<double, double>>> lanes;
  for (const auto& e : j["traceEvents"])
    if (e["ph"] == "X")
      lanes[{e["pid"], e["tid"]}].push_back(
          {e["ts"], e["ts"].get<double>() + e["dur"].get<double>()});
  for (auto& [key, iv] : lanes) {
    std::sort(iv.begin(), iv.end());
    for (size_t a = 0; a < iv.size(); ++a)
      for (size_t b = a + 1; b < iv.size() && iv[b].first < iv[a].second; ++b)
        CHECK(iv[b].second <= iv[a].second + 1e-6);  // inside, never straddling
  }
}

TEST_CASE("shared decode steps appear once", "[trace_export]") {
  auto a = request(1, 1'000'000'000, 2);
  auto b = request(2, 1'000'000'000, 2);  // same timeline: the same steps
  auto j = json::parse(chrome_trace(std::vector<generation_summary>{a, b}).dump());
  size_t steps = 0;
  for (const auto& e : j["traceEvents"])
    if (e["name"] == "decode step") {
      ++steps;
      CHECK(e["args"]["tokens"].size() == 2);
    }
  CHECK(steps == 2);
}

TEST_CASE("an empty trace is still a valid trace", "[trace_export]") {
  trace_export_stats stats;
  auto j = json::parse(chrome_trace(std::vector<generation_summary>{}, &stats).dump());
  CHECK(j["traceEvents"].empty());
  CHECK(stats.events == 0);
}

TEST_CASE("the planner's role changes are on a planner track", "[trace_export]") {
  request_record r;
  r.summary = request(1, 1'000'000'000, 2);
  std::vector<planner_event> planner = {
      {1'005'000'000, "flip", "p0.prefill0", role::prefill, role::decode, 0, "decode hot"},
      {1'015'000'000, "changed", "p0.prefill0", role::prefill, role::decode, 10'000'000, "ok"}};
  auto j = json::parse(chrome_trace({r}, planner).dump());
  const json* flip = nullptr;
  const json* change = nullptr;
  std::map<int, std::string> threads;
  for (const auto& e : j["traceEvents"]) {
    if (e["name"] == "flip p0.prefill0 prefill -> decode") flip = &e;
    if (e["name"] == "role change p0.prefill0 prefill -> decode") change = &e;
    if (e["name"] == "thread_name" && e["pid"] == 1) threads[e["tid"]] = e["args"]["name"];
  }
  REQUIRE(flip);
  REQUIRE(change);
  CHECK((*flip)["ph"] == "i");
  CHECK((*flip)["args"]["why"] == "decode hot");
  CHECK((*change)["ph"] == "X");
  // The change spans from change_role (the flip) to its end: 10 ms, starting at the flip.
  CHECK((*change)["dur"].get<double>() == Approx(10'000));
  CHECK((*change)["ts"].get<double>() == Approx((*flip)["ts"].get<double>()));
  CHECK((*change)["pid"] == 1);  // node 0
  CHECK(threads[(*change)["tid"].get<int>()] == "planner");
}
