// The frontend's request log: JSON round trip, the bounded ring and the per-worker
// snapshot, on hand-made summaries (request_log_fixtures.hpp).
#include <catch2/catch.hpp>

#include <string>
#include <thread>
#include <vector>

#include "frontend/frontend_metrics.hpp"
#include "frontend/request_log.hpp"
#include "request_log_fixtures.hpp"

using namespace tokenmill;
using namespace tokenmill::test;

TEST_CASE("a generation summary survives the JSON round trip", "[request_log]") {
  auto g = make_summary(7, "p0.prefill0", "d0.decode0", stages(1, 2, 3));
  g.error = "boom";
  g.error_code = errc::overloaded;
  g.reason = finish_reason::error;
  g.hops = {{stage::arrived, 0, 100}, {stage::routed, 0, 200}, {stage::prefill_done, 1, 300}};
  g.itl_spikes.assign(kItlCauses, 0);
  g.itl_spikes[static_cast<size_t>(itl_cause::prefill)] = 3;
  g.steps = {{1, 1000, 900, 950, 4, 128, itl_cause::prefill}, {2, 2000, 1900, 1950, 5, 0, {}}};
  g.migrations = 1;
  g.migration_reasons = {"worker_lost"};
  routing_score chosen{"d0.decode0", false, true, true, true, 64, 1.5, 0.25, 0, 2, 3.75};
  routing_score other{"p0.prefill0", true, false, false, false, 0, 9, 1, 0, 0, 10};
  g.routing = {chosen, other};
  auto j = to_json(g);
  CHECK(j["routing"][0]["worker"] == "d0.decode0");
  CHECK(j["routing"][0]["role"] == "decode");
  CHECK(j["routing"][1]["role"] == "prefill");
  CHECK(j["routing"][0]["total_ms"] == 3.75);
  CHECK(j["id"] == 7);
  CHECK(j["reason"] == "error");
  CHECK(j["error_code"] == "overloaded");
  CHECK(j["stages"][4]["name"] == "prefill_queue");
  CHECK(j["hops"][2]["stage"] == "prefill_done");
  CHECK(j["hops"][2]["node"] == 1);
  CHECK(j["itl_spikes"]["prefill"] == 3);
  CHECK(j["steps"][0]["cause"] == "prefill");
  CHECK(j["steps"][0]["step_start_ns"] == 900);

  auto back = summary_from_json(nlohmann::json::parse(j.dump()));
  REQUIRE(back);
  CHECK(back->id == 7);
  CHECK(back->error_code == errc::overloaded);
  CHECK(back->reason == finish_reason::error);
  CHECK(back->error == "boom");
  CHECK(back->stages.size() == g.stages.size());
  CHECK(back->stages[5].name == "prefill_compute");
  CHECK(back->stages[5].ms == 2);
  REQUIRE(back->hops.size() == 3);
  CHECK(back->hops[2].where == stage::prefill_done);
  CHECK(back->hops[2].node == 1);
  CHECK(back->prefill_worker == "p0.prefill0");
  REQUIRE(back->itl_spikes.size() == kItlCauses);
  CHECK(back->itl_spikes[static_cast<size_t>(itl_cause::prefill)] == 3);
  REQUIRE(back->steps.size() == 2);
  CHECK(back->steps[0].cause == itl_cause::prefill);
  CHECK(back->steps[0].prefill_tokens == 128);
  CHECK(back->steps[1].batch == 5);
  CHECK(back->migrations == 1);
  CHECK(back->migration_reasons == std::vector<std::string>{"worker_lost"});
  REQUIRE(back->routing.size() == 2);
  const auto& r0 = back->routing[0];
  CHECK(r0.worker == "d0.decode0");
  CHECK_FALSE(r0.prefill);
  CHECK(r0.chosen);
  CHECK(r0.eligible);
  CHECK(r0.local);
  CHECK(r0.cached_tokens == 64);
  CHECK(r0.prefill_ms == 1.5);
  CHECK(r0.queue_ms == 0.25);
  CHECK(r0.load_ms == 2);
  CHECK(r0.total_ms == 3.75);
  CHECK(back->routing[1].prefill);
  CHECK_FALSE(back->routing[1].eligible);
  CHECK(back->routing[1].total_ms == 10);

  CHECK_FALSE(summary_from_json(nlohmann::json::array()));
  auto r = record_from_json(nlohmann::json::parse(to_json(rec(g)).dump()));
  REQUIRE(r);
  CHECK(r->api == "http");
  CHECK(r->end_ns == kNow - 1'000'000'000);
}

TEST_CASE("the request log keeps the newest requests, oldest first", "[request_log]") {
  request_log log(4);
  for (request_id i = 1; i <= 6; ++i)
    log.record("rpc", make_summary(i, "", "decode0", stages(1, 1, 0)), 0.5);
  CHECK(log.size() == 4);
  auto all = log.recent(100);
  REQUIRE(all.size() == 4);
  CHECK(all.front().summary.id == 3);
  CHECK(all.back().summary.id == 6);
  CHECK(all.back().api == "rpc");
  CHECK(all.back().end_ns - all.back().arrival_ns == 500'000'000);
  auto two = log.recent(2);
  REQUIRE(two.size() == 2);
  CHECK(two[0].summary.id == 5);

  SECTION("from many threads at once") {
    request_log shared(2048);
    std::vector<std::thread> ts;
    for (int t = 0; t < 4; ++t)
      ts.emplace_back([&] {
        for (int i = 0; i < 500; ++i)
          shared.record("http", make_summary(1, "", "d", stages(1, 1, 0)), 0.1);
      });
    for (auto& t : ts)
      t.join();
    CHECK(shared.size() == 2000);
  }
}

TEST_CASE("the snapshot aggregates the window per worker", "[request_log]") {
  std::vector<request_record> rs;
  rs.push_back(rec(make_summary(1, "p0.prefill0", "d0.decode0", stages(2, 10, 4), 1024)));
  rs.push_back(rec(make_summary(2, "p0.prefill0", "d0.decode0", stages(4, 10, 4), 1024)));
  // Outside the window, and a failure: neither counts in the means.
  rs.push_back(rec(make_summary(3, "p0.prefill0", "d0.decode0", stages(100, 100, 100)),
                   kNow - 60'000'000'000));
  auto bad = make_summary(4, "p0.prefill0", "d0.decode0", stages(100, 100, 100));
  bad.error_code = errc::unavailable;
  rs.push_back(rec(bad));
  auto st = two_prefill_cluster();
  // 16 tokens x 1 MiB blocks: 64 blocks per request over 4 ms each.
  auto s = make_snapshot(rs, 30, &st, kNow, 16, 1 << 20);
  CHECK(s.requests == 2);
  CHECK(s.failed == 1);
  CHECK(s.cluster == "obs");
  CHECK(s.mean_ttft_ms == Approx((17 + 19) / 2.0));
  REQUIRE(s.stages.size() == 9);
  CHECK(s.stages[4].name == "prefill_queue");
  CHECK(s.stages[4].ms == Approx(3));
  const worker_snapshot* p0 = nullptr;
  const worker_snapshot* d0 = nullptr;
  const worker_snapshot* p1 = nullptr;
  for (const auto& w : s.workers) {
    if (w.name == "p0.prefill0") p0 = &w;
    if (w.name == "p1.prefill0") p1 = &w;
    if (w.name == "d0.decode0") d0 = &w;
  }
  REQUIRE(p0);
  REQUIRE(p1);
  REQUIRE(d0);
  CHECK(p0->requests == 2);
  CHECK(p0->prefill_queue_ms == Approx(3));
  CHECK(p0->prefill_compute_ms == Approx(10));
  CHECK(p0->kv_transfer_ms == Approx(4));
  CHECK(p0->stage_ms == Approx(17));
  CHECK(p0->compute_ms_per_1k_tokens == Approx(10.0 / 1.024));
  CHECK(p0->transfer_gbps == Approx(64.0 * (1 << 20) / 4e-3 / 1e9));
  CHECK(p0->ttft_share == Approx(17.0 / 18));
  CHECK(p1->requests == 0);
  CHECK(p1->in_status);
  CHECK(d0->decode_reserve_ms == Approx(0.3));
  CHECK(d0->to_router_ms == Approx(0.3));
  CHECK(d0->itl_p50_ms == Approx(10));
  CHECK(d0->ttft_share == Approx(0.6 / 18));
  auto j = to_json(s);
  CHECK(j["workers"].size() == 4);
  CHECK(j["requests"] == 2);
  CHECK(j["workers"][1]["role"] == "prefill");
  // No request carried a routing decision.
  CHECK(s.routing.empty());
  CHECK_FALSE(j.contains("routing"));
}

TEST_CASE("the snapshot shows the newest routing decision and cached-prefix routes",
          "[request_log][routing_policy]") {
  auto with_route = [](request_id id, bool cached, double total) {
    auto g = make_summary(id, "p0.prefill0", "d0.decode0", stages(2, 10, 4), 1024);
    g.routing = {{"d0.decode0", false, true, true, false, cached ? 32u : 0u, 0, 0, 1, 1, total},
                 {"p0.prefill0", true, true, true, false, 0, 5, 0, 0, 0, 5}};
    return g;
  };
  std::vector<request_record> rs;
  rs.push_back(rec(with_route(1, true, 7), kNow - 3'000'000'000));
  rs.push_back(rec(with_route(2, false, 8), kNow - 1'000'000'000));
  rs.push_back(rec(with_route(3, true, 9), kNow - 2'000'000'000));  // ended before 2
  rs.push_back(rec(make_summary(4, "p0.prefill0", "d0.decode0", stages(2, 10, 4), 1024)));
  auto s = make_snapshot(rs, 30, nullptr, kNow);
  CHECK(s.requests == 4);
  CHECK(s.routed_cached == 2);
  CHECK(s.routing_request == 2);  // the newest that has a decision
  REQUIRE(s.routing.size() == 2);
  CHECK(s.routing[0].total_ms == 8);
  auto j = to_json(s);
  CHECK(j["routed_cached"] == 2);
  CHECK(j["routing"]["request"] == 2);
  CHECK(j["routing"]["candidates"][1]["role"] == "prefill");
  CHECK(j["routing"]["candidates"][0]["chosen"] == true);
}

TEST_CASE("ITL percentiles come from the decode steps when there are some", "[request_log]") {
  auto g = make_summary(1, "", "decode0", stages(1, 5, 0));
  int64_t t = 1'000'000;
  for (uint32_t i = 0; i < 101; ++i) {
    t += i == 50 ? 50'000'000 : 10'000'000;
    g.steps.push_back(
        {i, t, t - 9'000'000, t - 1'000'000, 4, 0, i == 50 ? itl_cause::prefill : itl_cause::none});
  }
  auto s = make_snapshot({rec(g)}, 30, nullptr, kNow);
  REQUIRE(s.workers.size() == 1);
  CHECK(s.workers[0].name == "decode0");
  CHECK(s.workers[0].itl_p50_ms == Approx(10));
  CHECK(s.workers[0].itl_p99_ms > 10);
  CHECK(s.itl_p50_ms == Approx(10));
  // No prefill worker: the decode worker prefilled, so the prefill stages are its own.
  CHECK(s.workers[0].prefill_compute_ms == Approx(5));
  CHECK(s.workers[0].ttft_share == Approx((1 + 5 + 0.6) / s.mean_ttft_ms));
}

TEST_CASE("frontend metrics count migrations by reason and requests lost to worker failures",
          "[request_log][metrics]") {
  auto reg = std::make_shared<metrics::registry>();
  frontend_metrics fm(reg, "n0");
  generation_summary moved;
  moved.reason = finish_reason::length;
  moved.migrations = 2;
  moved.migration_reasons = {"worker_lost", "stalled"};
  fm.started("rpc");
  fm.finished("rpc", moved, 0.1);
  generation_summary lost;
  lost.reason = finish_reason::error;
  lost.error_code = errc::worker_failed;
  lost.migrations = 1;
  lost.migration_reasons = {"worker_lost"};
  fm.started("rpc");
  fm.finished("rpc", lost, 0.1);
  auto text = reg->expose();
  CHECK_THAT(text, Catch::Contains(
                       "tokenmill_request_migrations_total{node=\"n0\",reason=\"worker_lost\"} 2"));
  CHECK_THAT(text, Catch::Contains(
                       "tokenmill_request_migrations_total{node=\"n0\",reason=\"stalled\"} 1"));
  CHECK_THAT(text, Catch::Contains("tokenmill_requests_lost_total{node=\"n0\"} 1"));
  // The moved request that completed is not a failure.
  CHECK_THAT(text, Catch::Contains(
                       "tokenmill_requests_total{api=\"rpc\",node=\"n0\",outcome=\"length\"} 1"));
}
