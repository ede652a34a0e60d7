#include <catch2/catch.hpp>

#include <algorithm>
#include <optional>
#include <string_view>
#include <vector>

#include "common/trace.hpp"

using namespace tokenmill;

TEST_CASE("ttft breakdown intervals add up to first-to-last stamp", "[trace]") {
  trace t;
  t.stamp_at(stage::arrived, 1000);
  t.stamp_at(stage::router_received, 1500);
  t.stamp_at(stage::routed, 1700);
  t.stamp_at(stage::prefill_started, 5000);
  t.stamp_at(stage::prefill_done, 9000);
  t.stamp_at(stage::first_token_router, 9400);
  auto b = ttft_breakdown(t);
  REQUIRE(b.size() == 5);
  CHECK(b[0].name() == "frontend_to_router");
  CHECK(b[0].duration_ns == 500);
  CHECK(b[3].name() == "prefill_compute");
  CHECK(b[3].duration_ns == 4000);
  CHECK(total_ns(b) == 9400 - 1000);
}

TEST_CASE("stage names are stable and distinct", "[trace]") {
  CHECK(to_string(stage::client_sent) == "client_sent");
  CHECK(to_string(stage::prefill_done) == "prefill_done");
  CHECK(to_string(stage::finished) == "finished");
  CHECK(to_string(stage::count_) == "unknown");
  CHECK(interval_name(stage::prefill_done) == "prefill_compute");
  CHECK(interval_name(stage::kv_pushed) == "kv_transfer");
  CHECK(interval_name(stage::count_) == "unknown");
  std::vector<std::string_view> names, intervals;
  for (size_t i = 0; i < static_cast<size_t>(stage::count_); ++i) {
    auto s = static_cast<stage>(i);
    CHECK(to_string(s) != "unknown");
    CHECK(interval_name(s) != "unknown");
    names.push_back(to_string(s));
    intervals.push_back(interval_name(s));
  }
  std::sort(names.begin(), names.end());
  std::sort(intervals.begin(), intervals.end());
  CHECK(std::adjacent_find(names.begin(), names.end()) == names.end());
  CHECK(std::adjacent_find(intervals.begin(), intervals.end()) == intervals.end());
}

TEST_CASE("on_ttft_path covers exactly the stages up to first_token_client", "[trace]") {
  CHECK(on_ttft_path(stage::client_sent));
  CHECK(on_ttft_path(stage::prefill_done));
  CHECK(on_ttft_path(stage::first_token_client));
  CHECK_FALSE(on_ttft_path(stage::kv_ready));
  CHECK_FALSE(on_ttft_path(stage::decode_admitted));
  CHECK_FALSE(on_ttft_path(stage::finished));
}

TEST_CASE("an empty trace or a single stamp has no intervals", "[trace]") {
  trace t;
  CHECK(ttft_breakdown(t).empty());
  CHECK(total_ns(ttft_breakdown(t)) == 0);
  t.stamp_at(stage::arrived, 123);
  CHECK(ttft_breakdown(t).empty());
  CHECK_FALSE(t.time_of(stage::routed).has_value());
  REQUIRE(t.time_of(stage::arrived).has_value());
  CHECK(*t.time_of(stage::arrived) == 123);
}

TEST_CASE("skipped stages fold into the next present stage's interval", "[trace]") {
  trace t;
  t.stamp_at(stage::arrived, 100);
  // router_received, routed, decode_reserved, prefill_queued skipped
  t.stamp_at(stage::prefill_started, 400);
  t.stamp_at(stage::first_token_router, 1000);  // prefill_done, kv_pushed skipped
  auto b = ttft_breakdown(t);
  REQUIRE(b.size() == 2);
  CHECK(b[0].ends_at == stage::prefill_started);
  CHECK(b[0].name() == "prefill_queue");
  CHECK(b[0].duration_ns == 300);
  CHECK(b[1].ends_at == stage::first_token_router);
  CHECK(b[1].name() == "to_router");
  CHECK(b[1].duration_ns == 600);
  CHECK(total_ns(b) == 900);
}

TEST_CASE("a first token held by the decode worker is its own interval, decode_join", "[trace]") {
  // First-token release `decode`: kv_pushed -> first_token_released is the wait for the
  // sequence's first decode step; the decode worker -> router leg stays `to_router`.
  trace t;
  t.stamp_at(stage::prefill_done, 1000);
  t.stamp_at(stage::kv_pushed, 1200);
  t.stamp_at(stage::kv_ready, 1300);         // not on the TTFT path
  t.stamp_at(stage::decode_admitted, 6000);  // nor this
  t.stamp_at(stage::first_token_released, 6010);
  t.stamp_at(stage::first_token_router, 6050);
  CHECK(on_ttft_path(stage::first_token_released));
  CHECK(to_string(stage::first_token_released) == "first_token_released");
  auto b = ttft_breakdown(t);
  REQUIRE(b.size() == 3);
  CHECK(b[0].name() == "kv_transfer");
  CHECK(b[1].name() == "decode_join");
  CHECK(b[1].duration_ns == 4810);
  CHECK(b[2].name() == "to_router");
  CHECK(b[2].duration_ns == 40);
  CHECK(total_ns(b) == 5050);
}

TEST_CASE("breakdown follows causal order, not insertion order", "[trace]") {
  trace t;
  t.stamp_at(stage::prefill_done, 900);
  t.stamp_at(stage::arrived, 100);
  t.stamp_at(stage::routed, 250);
  auto b = ttft_breakdown(t);
  REQUIRE(b.size() == 2);
  CHECK(b[0].ends_at == stage::routed);
  CHECK(b[0].duration_ns == 150);
  CHECK(b[1].ends_at == stage::prefill_done);
  CHECK(b[1].duration_ns == 650);
}

TEST_CASE("duplicate stamps: the first one wins", "[trace]") {
  trace t;
  t.stamp_at(stage::arrived, 100);
  t.stamp_at(stage::routed, 300);
  t.stamp_at(stage::routed, 700);  // a retry stamps again; ignored
  t.stamp_at(stage::arrived, 50);  // later duplicate with an earlier time: still ignored
  t.stamp_at(stage::prefill_done, 1000);
  REQUIRE(t.time_of(stage::routed).has_value());
  CHECK(*t.time_of(stage::routed) == 300);
  CHECK(*t.time_of(stage::arrived) == 100);
  auto b = ttft_breakdown(t);
  REQUIRE(b.size() == 2);
  CHECK(b[0].duration_ns == 200);
  CHECK(b[1].duration_ns == 700);
  CHECK(total_ns(b) == 900);
}

TEST_CASE("stages off the TTFT path are ignored by the breakdown", "[trace]") {
  trace t;
  t.stamp_at(stage::kv_ready, 10);  // before everything, but not a TTFT stage
  t.stamp_at(stage::arrived, 100);
  t.stamp_at(stage::decode_admitted, 150);
  t.stamp_at(stage::first_token_sent, 500);
  t.stamp_at(stage::finished, 99999);
  auto b = ttft_breakdown(t);
  REQUIRE(b.size() == 1);
  CHECK(b[0].ends_at == stage::first_token_sent);
  CHECK(b[0].duration_ns == 400);
  for (const auto& i : b)
    CHECK(on_ttft_path(i.ends_at));
  // time_of still reports them.
  CHECK(*t.time_of(stage::finished) == 99999);
  CHECK(*t.time_of(stage::kv_ready) == 10);
}

TEST_CASE("clock offsets shift each node's stamps", "[trace]") {
  trace t;
  t.stamp_at(stage::arrived, 1000, 0);
  t.stamp_at(stage::routed, 1200, 0);
  t.stamp_at(stage::prefill_started, 50, 1);  // node 1's clock is 2000 ns behind
  t.stamp_at(stage::prefill_done, 450, 1);
  t.stamp_at(stage::first_token_router, 3000, 0);
  t.stamp_at(stage::first_token_client, 10, 7);  // no offset entry for node 7: 0

  SECTION("without offsets the raw stamps are used") {
    auto b = ttft_breakdown(t);
    REQUIRE(b.size() == 5);
    CHECK(b[1].duration_ns == 50 - 1200);
  }
  SECTION("with offsets") {
    clock_offsets off{0, 2000};
    auto b = ttft_breakdown(t, off);
    REQUIRE(b.size() == 5);
    CHECK(b[0].ends_at == stage::routed);
    CHECK(b[0].duration_ns == 200);
    CHECK(b[1].ends_at == stage::prefill_started);
    CHECK(b[1].duration_ns == 2050 - 1200);
    CHECK(b[2].ends_at == stage::prefill_done);
    CHECK(b[2].duration_ns == 400);
    CHECK(b[3].ends_at == stage::first_token_router);
    CHECK(b[3].duration_ns == 3000 - 2450);
    CHECK(b[4].ends_at == stage::first_token_client);
    CHECK(b[4].duration_ns == 10 - 3000);
    CHECK(total_ns(b) == 10 - 1000);
  }
  SECTION("negative offsets and an offset on node 0") {
    clock_offsets off{-1000, 1000};
    auto b = ttft_breakdown(t, off);
    REQUIRE(b.size() == 5);
    CHECK(b[0].duration_ns == 200);
    CHECK(b[1].duration_ns == (50 + 1000) - (1200 - 1000));
    CHECK(total_ns(b) == 10 - (1000 - 1000));
  }
}

TEST_CASE("merge appends the other branch's hops", "[trace]") {
  trace router;
  router.id = 7;
  router.stamp_at(stage::arrived, 100, 0);
  router.stamp_at(stage::routed, 200, 0);
  trace prefill;
  prefill.id = 7;
  prefill.stamp_at(stage::prefill_started, 500, 1);
  prefill.stamp_at(stage::prefill_done, 900, 1);
  prefill.stamp_at(stage::routed, 5, 1);  // a duplicate from another branch: first wins

  router.merge(prefill);
  REQUIRE(router.hops.size() == 5);
  CHECK(router.id == 7);
  CHECK(router.hops[2].where == stage::prefill_started);
  CHECK(router.hops[2].node == 1);
  CHECK(router.hops[2].t_ns == 500);
  CHECK(*router.time_of(stage::routed) == 200);
  CHECK(prefill.hops.size() == 3);  // the source is unchanged

  auto b = ttft_breakdown(router);
  REQUIRE(b.size() == 3);
  CHECK(total_ns(b) == 900 - 100);

  trace empty;
  router.merge(empty);
  CHECK(router.hops.size() == 5);
  empty.merge(router);
  CHECK(empty.hops.size() == 5);
}

TEST_CASE("stamp uses the steady clock and records the node", "[trace]") {
  trace t;
  t.stamp(stage::arrived, 3);
  t.stamp(stage::routed);
  REQUIRE(t.hops.size() == 2);
  CHECK(t.hops[0].where == stage::arrived);
  CHECK(t.hops[0].node == 3);
  CHECK(t.hops[1].node == 0);
  CHECK(t.hops[1].t_ns >= t.hops[0].t_ns);  // steady clock never goes back
  CHECK(t.hops[0].t_ns > 0);
}

TEST_CASE("sum of intervals equals last minus first TTFT stamp", "[trace]") {
  // Every subset of the TTFT path, with times that are increasing in causal order.
  constexpr size_t n = static_cast<size_t>(stage::first_token_client) + 1;
  for (uint32_t mask = 0; mask < (1u << n); ++mask) {
    trace t;
    std::optional<int64_t> first, last;
    size_t present = 0;
    for (size_t i = 0; i < n; ++i) {
      if (!(mask & (1u << i))) continue;
      int64_t when = 1000 + static_cast<int64_t>(i * i * 37 + i * 11);
      t.stamp_at(static_cast<stage>(i), when, static_cast<uint32_t>(i % 3));
      if (!first) first = when;
      last = when;
      ++present;
    }
    t.stamp_at(stage::finished, 1'000'000);  // never counted
    auto b = ttft_breakdown(t);
    REQUIRE(b.size() == (present == 0 ? 0 : present - 1));
    int64_t expect = present == 0 ? 0 : *last - *first;
    REQUIRE(total_ns(b) == expect);
  }
}

TEST_CASE("stage_from_string inverts to_string", "[trace]") {
  for (size_t i = 0; i < static_cast<size_t>(stage::count_); ++i) {
    auto s = static_cast<stage>(i);
    auto back = stage_from_string(to_string(s));
    REQUIRE(back.has_value());
    CHECK(*back == s);
  }
  CHECK_FALSE(stage_from_string("").has_value());
  CHECK_FALSE(stage_from_string("unknown").has_value());
  CHECK_FALSE(stage_from_string("count_").has_value());
  CHECK_FALSE(stage_from_string("Arrived").has_value());
  CHECK_FALSE(stage_from_string("prefill_compute").has_value());  // an interval, not a stage
}
