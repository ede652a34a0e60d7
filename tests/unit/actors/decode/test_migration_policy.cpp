#include <catch2/catch.hpp>

#include <vector>

#include "actors/decode/migration_policy.hpp"

using namespace tokenmill;

namespace {

migrate_offer_shape good_offer() {
  migrate_offer_shape s;
  s.prompt_len = 10;
  s.generated = 3;
  s.tokens = 13;
  s.kv_tokens = 12;
  s.max_tokens = 8;
  s.src_block_bytes = s.dst_block_bytes = 1024;
  s.need_blocks = 5;
  s.pool_blocks = 64;
  return s;
}

}  // namespace

TEST_CASE("live migration: only a decoding sequence that is not moving may move",
          "[migration_policy]") {
  CHECK_FALSE(check_can_migrate(7, true, true, false, false));
  auto unknown = check_can_migrate(7, false, false, false, false);
  REQUIRE(unknown);
  CHECK(unknown->code == errc::invalid_request);
  CHECK_THAT(unknown->message, Catch::Contains("7") && Catch::Contains("not on this"));
  auto self = check_can_migrate(7, true, true, false, true);
  REQUIRE(self);
  CHECK_THAT(self->message, Catch::Contains("worker it is on"));
  auto moving = check_can_migrate(7, true, true, true, false);
  REQUIRE(moving);
  CHECK_THAT(moving->message, Catch::Contains("already moving"));
  // Waiting for blocks or KV, or in local prefill: re-routing it is as cheap.
  auto early = check_can_migrate(7, true, false, false, false);
  REQUIRE(early);
  CHECK_THAT(early->message, Catch::Contains("not decoding yet"));
}

TEST_CASE("live migration: the target checks the offer", "[migration_policy]") {
  CHECK_FALSE(check_migrate_offer(good_offer()));
  auto expect_error = [](migrate_offer_shape s, errc code, const char* text) {
    auto e = check_migrate_offer(s);
    REQUIRE(e);
    CHECK(e->code == code);
    CHECK_THAT(e->message, Catch::Contains(text));
  };
  auto s = good_offer();
  s.known = true;
  expect_error(s, errc::invalid_request, "already holds");
  s = good_offer();
  s.tokens = 12;
  expect_error(s, errc::invalid_request, "12 tokens for a prompt of 10 and 3 generated");
  s = good_offer();
  s.generated = 0;
  s.tokens = 10;
  s.kv_tokens = 9;
  expect_error(s, errc::invalid_request, "no generated token");
  s = good_offer();
  s.kv_tokens = 13;  // the newest token's KV is not written yet
  expect_error(s, errc::invalid_request, "KV of 13 positions");
  s = good_offer();
  s.max_tokens = 3;
  expect_error(s, errc::invalid_request, "nothing is left");
  s = good_offer();
  s.dst_block_bytes = 2048;
  expect_error(s, errc::invalid_request, "block size differs");
  s = good_offer();
  s.pool_blocks = 4;
  expect_error(s, errc::out_of_blocks, "needs 5 KV blocks");
}

TEST_CASE("live migration: which blocks travel", "[migration_policy]") {
  // 4-token blocks: 12 positions fill 3 blocks, 13 spill into a fourth (partial).
  CHECK(migration_kv_blocks(12, 4) == 3);
  CHECK(migration_kv_blocks(13, 4) == 4);
  CHECK(migration_kv_blocks(0, 4) == 0);
  CHECK(migration_kv_blocks(5, 0) == 0);
  // Only full blocks come from the target's prefix cache; a partial one always travels.
  CHECK(migration_reusable_blocks(12, 4) == 3);
  CHECK(migration_reusable_blocks(13, 4) == 3);
  CHECK(migration_reusable_blocks(3, 4) == 0);
}

TEST_CASE("live migration: the source checks the target's answer", "[migration_policy]") {
  CHECK_FALSE(check_migrate_accept(4, 1, 3, 1024, 1024, 64));
  CHECK_FALSE(check_migrate_accept(3, 3, 0, 1024, 1024, 64));  // every block cached there
  auto size = check_migrate_accept(4, 0, 4, 1024, 2048, 64);
  REQUIRE(size);
  CHECK_THAT(size->message, Catch::Contains("2048"));
  auto count = check_migrate_accept(4, 1, 2, 1024, 1024, 64);
  REQUIRE(count);
  CHECK_THAT(count->message, Catch::Contains("reuses 1 and asks for 2 of 4"));
  CHECK(check_migrate_accept(4, 5, 0, 1024, 1024, 64));
  CHECK(check_migrate_accept(4, 0, 4, 1024, 1024, 3));
}

TEST_CASE("live migration: the commit must write exactly the reserved blocks",
          "[migration_policy]") {
  std::vector<block_id> expected{5, 9, 2};
  CHECK_FALSE(check_migrate_commit(expected, std::vector<block_id>{5, 9, 2}, 3));
  auto other = check_migrate_commit(expected, std::vector<block_id>{5, 9, 3}, 3);
  REQUIRE(other);
  CHECK(other->code == errc::kv_corrupt);
  CHECK(check_migrate_commit(expected, std::vector<block_id>{5, 9}, 2));
  auto sums = check_migrate_commit(expected, std::vector<block_id>{5, 9, 2}, 2);
  REQUIRE(sums);
  CHECK_THAT(sums->message, Catch::Contains("2 checksums for 3 blocks"));
  CHECK_FALSE(check_migrate_commit({}, {}, 0));
}

TEST_CASE("live migration: after a failed move", "[migration_policy]") {
  CHECK(after_failed_move(false, true, true) == migration_fallback::continue_here);
  CHECK(after_failed_move(false, false, true) == migration_fallback::end_attempt);
  CHECK(after_failed_move(false, true, false) == migration_fallback::end_attempt);
  // A cancel that arrived meanwhile wins over everything.
  CHECK(after_failed_move(true, true, true) == migration_fallback::cancel);
  CHECK(after_failed_move(true, false, false) == migration_fallback::cancel);
}

TEST_CASE("live migration: a draining worker's target", "[migration_policy]") {
  std::vector<migration_candidate> c{
      {1, true, false, 0},                       // self
      {2, true, false, 5},  {3, true, true, 0},  // draining
      {4, false, false, 0},                      // down
      {5, true, false, 2},  {6, true, false, 2},
  };
  auto t = pick_migration_target(c, 1);
  REQUIRE(t);
  CHECK(c[*t].id == 5);  // least loaded; the lower id on a tie
  c[4].load = 9;
  t = pick_migration_target(c, 1);
  REQUIRE(t);
  CHECK(c[*t].id == 6);
  CHECK_FALSE(pick_migration_target(std::vector<migration_candidate>{{1, true, false, 0}}, 1));
  CHECK_FALSE(pick_migration_target({}, 1));
}

TEST_CASE("pick_rebalance: most tokens left first, at most count, never a finished one",
          "[migration_policy]") {
  std::vector<rebalance_candidate> c = {{7, 100}, {3, 900}, {5, 0}, {4, 900}, {9, 50}};
  CHECK(pick_rebalance(c, 2) == std::vector<request_id>{3, 4});  // tie: lowest id first
  CHECK(pick_rebalance(c, 3) == std::vector<request_id>{3, 4, 7});
  CHECK(pick_rebalance(c, 10) == std::vector<request_id>{3, 4, 7, 9});  // 5 has none left
  CHECK(pick_rebalance(c, 0).empty());
  CHECK(pick_rebalance({}, 4).empty());
}
