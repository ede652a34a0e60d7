// The bottleneck finder on snapshots of hand-made summaries (request_log_fixtures.hpp).
#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "frontend/bottleneck.hpp"
#include "request_log_fixtures.hpp"

using namespace tokenmill;
using namespace tokenmill::test;

TEST_CASE("the bottleneck: the slow one of two prefill workers", "[bottleneck]") {
  std::vector<request_record> rs;
  for (request_id i = 0; i < 20; ++i) {
    bool slow = i % 2 == 1;
    rs.push_back(rec(make_summary(i, slow ? "p1.prefill0" : "p0.prefill0", "d0.decode0",
                                  stages(slow ? 6 : 1, slow ? 41.2 : 10.3, 1))));
  }
  auto st = two_prefill_cluster();
  auto s = make_snapshot(rs, 30, &st, kNow);
  auto b = find_bottleneck(s);
  INFO(b.line);
  CHECK(b.found);
  CHECK(b.worker == "p1.prefill0");
  CHECK(b.line.rfind("p1.prefill0: prefill_compute 41.2 ms/request vs 10.3 on p0.prefill0", 0) ==
        0);
  CHECK(b.line.find("of mean TTFT") != std::string::npos);
}

TEST_CASE("the bottleneck: the deepest queue among prefill workers", "[bottleneck]") {
  std::vector<request_record> rs;
  for (request_id i = 0; i < 10; ++i)
    rs.push_back(rec(
        make_summary(i, i % 2 ? "p1.prefill0" : "p0.prefill0", "d0.decode0", stages(1, 10, 1))));
  auto st = two_prefill_cluster(12);
  auto b = find_bottleneck(make_snapshot(rs, 30, &st, kNow));
  INFO(b.line);
  CHECK(b.worker == "p1.prefill0");
  CHECK(b.line.find("queue 12") != std::string::npos);
}

TEST_CASE("the bottleneck: ITL spikes from piggy-backed prefill", "[bottleneck]") {
  std::vector<request_record> rs;
  for (request_id i = 0; i < 10; ++i) {
    auto g = make_summary(i, "p0.prefill0", "d0.decode0", stages(1, 10, 1));
    g.itl_p50_ms = 10;
    g.itl_p99_ms = 60;
    g.itl_spikes.assign(kItlCauses, 0);
    g.itl_spikes[static_cast<size_t>(itl_cause::prefill)] = 3;
    g.itl_spikes[static_cast<size_t>(itl_cause::batch_growth)] = 1;
    rs.push_back(rec(g));
  }
  cluster_status st;
  st.workers = {ws("p0.prefill0", role::prefill, "p0"), ws("d0.decode0", role::decode, "d0")};
  auto s = make_snapshot(rs, 30, &st, kNow);
  CHECK(s.spikes[static_cast<size_t>(itl_cause::prefill)] == 30);
  auto b = find_bottleneck(s);
  INFO(b.line);
  CHECK(b.found);
  CHECK(b.worker == "d0.decode0");
  CHECK(b.line.rfind("d0.decode0:", 0) == 0);
  CHECK(b.line.find("prefill") != std::string::npos);
  CHECK(b.line.find("40 spikes") != std::string::npos);
}

TEST_CASE("the bottleneck: an idle cluster has none", "[bottleneck]") {
  auto st = two_prefill_cluster();
  auto b = find_bottleneck(make_snapshot({}, 30, &st, kNow));
  CHECK_FALSE(b.found);
  CHECK(b.worker.empty());
  CHECK(b.line.rfind("none", 0) == 0);
  // Old requests only: still idle.
  auto old =
      rec(make_summary(1, "p0.prefill0", "d0.decode0", stages(1, 10, 1)), kNow - 100'000'000'000);
  CHECK_FALSE(find_bottleneck(make_snapshot({old}, 30, &st, kNow)).found);
  // Nothing finished but a queue builds up: that worker.
  auto stuck = two_prefill_cluster(5);
  auto b2 = find_bottleneck(make_snapshot({}, 30, &stuck, kNow));
  CHECK(b2.found);
  CHECK(b2.worker == "p1.prefill0");
}

TEST_CASE("the bottleneck: balanced workers, the dominant stage", "[bottleneck]") {
  std::vector<request_record> rs;
  for (request_id i = 0; i < 10; ++i)
    rs.push_back(rec(
        make_summary(i, i % 2 ? "p1.prefill0" : "p0.prefill0", "d0.decode0", stages(1, 30, 2))));
  auto st = two_prefill_cluster();
  auto b = find_bottleneck(make_snapshot(rs, 30, &st, kNow));
  INFO(b.line);
  CHECK(b.found);
  CHECK(b.worker.find("prefill") != std::string::npos);
  CHECK(b.line.find("prefill_compute 30.0 ms/request") != std::string::npos);
}
