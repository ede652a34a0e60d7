// The supervisor's decisions as plain functions: readiness, the clock-offset estimate and
// the join checks.
#include <catch2/catch.hpp>

#include <vector>

#include "actors/supervisor/supervisor_policy.hpp"

using namespace tokenmill;

namespace {
join_terms terms() {
  join_terms t;
  t.manifest_hash = 0xabcdef;
  t.model = "m";
  t.node_index = 0;
  t.host_id = "host-a";
  return t;
}
join_claim claim(uint32_t index, std::string host_id = "host-b") {
  join_claim c;
  c.name = "n" + std::to_string(index);
  c.index = index;
  c.manifest_hash = 0xabcdef;
  c.model = "m";
  c.host_id = std::move(host_id);
  return c;
}
}  // namespace

TEST_CASE("supervisor policy: ready needs a router and a decode worker up", "[supervisor_policy]") {
  std::vector<member_state> m;
  CHECK_FALSE(cluster_ready(m, 0));
  m.push_back({role::router, true});
  CHECK_FALSE(cluster_ready(m, 0));
  m.push_back({role::prefill, true});
  CHECK_FALSE(cluster_ready(m, 0));
  m.push_back({role::decode, true});
  CHECK(cluster_ready(m, 0));
  m[0].up = false;  // the router is down
  CHECK_FALSE(cluster_ready(m, 0));
  m[0].up = true;
  m[2].up = false;  // the only decode worker is down
  CHECK_FALSE(cluster_ready(m, 0));
}

TEST_CASE("supervisor policy: ready only once every expected actor registered",
          "[supervisor_policy]") {
  std::vector<member_state> m{{role::router, true}, {role::decode, true}};
  CHECK_FALSE(cluster_ready(m, 4));
  m.push_back({role::kv_store, true});
  CHECK_FALSE(cluster_ready(m, 4));
  m.push_back({role::prefill, true});
  CHECK(cluster_ready(m, 4));
}

TEST_CASE("supervisor policy: down members still count as registered, and losing them keeps ready",
          "[supervisor_policy]") {
  std::vector<member_state> m{{role::router, true},
                              {role::decode, true},
                              {role::decode, false},
                              {role::prefill, false},
                              {role::kv_store, false}};
  CHECK(cluster_ready(m, 5));
  CHECK_FALSE(cluster_ready(m, 6));
}

TEST_CASE("supervisor policy: the clock offset assumes the answer came half-way",
          "[supervisor_policy]") {
  // The node's clock runs 1000 ns behind: it stamps 1000 + 50 - 1000 = 50 half-way through
  // a 100 ns round trip that the supervisor sent at 1000.
  auto e = fold_clock_sample({}, {1000, 50, 1100});
  CHECK(e.has_sample());
  CHECK(e.rtt_ns == 100);
  CHECK(e.offset_ns == 1000);
  CHECK(50 + e.offset_ns == 1000 + 100 / 2);
  CHECK_FALSE(clock_estimate{}.has_sample());
}

TEST_CASE("supervisor policy: the sample with the smallest round trip wins",
          "[supervisor_policy]") {
  clock_estimate e;
  e = fold_clock_sample(e, {0, 500, 400});      // rtt 400, offset -300
  e = fold_clock_sample(e, {1000, 700, 1100});  // rtt 100, offset 350: better
  CHECK(e.rtt_ns == 100);
  CHECK(e.offset_ns == 350);
  e = fold_clock_sample(e, {2000, 0, 2300});  // rtt 300: worse, ignored
  CHECK(e.rtt_ns == 100);
  CHECK(e.offset_ns == 350);
  e = fold_clock_sample(e, {3000, 0, 3100});  // rtt 100 again: a tie keeps the first
  CHECK(e.offset_ns == 350);
}

TEST_CASE("supervisor policy: a node with the cluster's manifest and model joins",
          "[supervisor_policy]") {
  auto v = judge_join(terms(), claim(1), std::nullopt);
  CHECK(v.accepted());
  CHECK_FALSE(v.same_clock);
  CHECK(v.restarts == 0);
}

TEST_CASE("supervisor policy: another manifest or model is refused, saying which",
          "[supervisor_policy]") {
  auto c = claim(1);
  c.manifest_hash = 0x1234;
  auto v = judge_join(terms(), c, std::nullopt);
  REQUIRE_FALSE(v.accepted());
  CHECK(v.refusal ==
        "node 'n1' runs manifest 0000000000001234 but the cluster runs 0000000000abcdef: start "
        "every node from the same manifest");
  c = claim(1);
  c.model = "other";
  v = judge_join(terms(), c, std::nullopt);
  CHECK(v.refusal == "node 'n1' serves model 'other' but the cluster serves 'm'");
  // The manifest is checked first.
  c.manifest_hash = 1;
  CHECK_THAT(judge_join(terms(), c, std::nullopt).refusal, Catch::Contains("runs manifest"));
}

TEST_CASE("supervisor policy: an unset manifest hash or model accepts any", "[supervisor_policy]") {
  join_terms t;  // hash 0, no model: an embedded cluster
  auto c = claim(1);
  c.manifest_hash = 42;
  c.model = "anything";
  CHECK(judge_join(t, c, std::nullopt).accepted());
}

TEST_CASE("supervisor policy: an index that is still up is refused, a down one restarts",
          "[supervisor_policy]") {
  auto v = judge_join(terms(), claim(2), earlier_join{true, 0});
  CHECK(v.refusal == "node 'n2' (index 2) has already joined");
  v = judge_join(terms(), claim(2), earlier_join{false, 0});
  CHECK(v.accepted());
  CHECK(v.restarts == 1);
  v = judge_join(terms(), claim(2), earlier_join{false, 4});
  CHECK(v.restarts == 5);
}

TEST_CASE("supervisor policy: the supervisor's own node and its host share its clock",
          "[supervisor_policy]") {
  CHECK(judge_join(terms(), claim(0, "elsewhere"), std::nullopt).same_clock);
  CHECK(judge_join(terms(), claim(3, "host-a"), std::nullopt).same_clock);
  CHECK_FALSE(judge_join(terms(), claim(3, "host-b"), std::nullopt).same_clock);
  // An unknown host id matches nothing, even an unknown one.
  auto t = terms();
  t.host_id.clear();
  CHECK_FALSE(judge_join(t, claim(3, ""), std::nullopt).same_clock);
}
