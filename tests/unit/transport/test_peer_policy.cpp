#include <catch2/catch.hpp>

#include <vector>

#include "transport/peer_policy.hpp"

using namespace tokenmill;

namespace {

pool_descriptor pool(worker_id owner, uint8_t address) {
  pool_descriptor p;
  p.owner = owner;
  p.block_bytes = 4096;
  p.num_blocks = 64;
  p.remote_key = std::vector<uint8_t>(16, static_cast<uint8_t>(address + 1));
  p.worker_address = std::vector<uint8_t>(24, address);
  p.host = "host-a";
  return p;
}

}  // namespace

TEST_CASE("peer policy: not enforcing, every descriptor is accepted", "[peer_policy]") {
  announced_pools p;
  CHECK_FALSE(p.enforcing());
  CHECK(p.check(pool(9, 9)).empty());
  std::vector<pool_descriptor> one{pool(1, 1)};
  p.replace(one);
  CHECK(p.check(pool(9, 9)).empty());  // an announcement changes nothing while not enforcing
}

TEST_CASE("peer policy: enforcing, only what the supervisor announced", "[peer_policy]") {
  announced_pools p(true);
  // Before the first membership nothing is announced: refused, and the reason says so.
  CHECK_THAT(p.check(pool(1, 1)), Catch::Contains("no membership"));
  std::vector<pool_descriptor> members{pool(1, 1), pool(2, 2)};
  CHECK(p.replace(members) == 2);
  CHECK(p.check(pool(1, 1)).empty());
  CHECK(p.check(pool(2, 2)).empty());
  // A worker that is not a member.
  auto stranger = p.check(pool(3, 3));
  CHECK_THAT(stranger, Catch::Contains("worker 3") && Catch::Contains("not a member"));
  // A member's id with another address (a forged descriptor pointing elsewhere).
  auto elsewhere = pool(1, 7);
  CHECK_THAT(p.check(elsewhere), Catch::Contains("worker 1") && Catch::Contains("worker address"));
  // The right address with another remote key, a larger pool or another block size.
  auto key = pool(1, 1);
  key.remote_key.back() ^= 1;
  CHECK_THAT(p.check(key), Catch::Contains("remote key"));
  auto bigger = pool(1, 1);
  bigger.num_blocks = 1 << 20;
  CHECK_THAT(p.check(bigger), Catch::Contains("block count"));
  auto blocks = pool(1, 1);
  blocks.block_bytes = 8192;
  CHECK_THAT(p.check(blocks), Catch::Contains("block size"));
  auto host = pool(1, 1);
  host.host = "host-b";
  CHECK_THAT(p.check(host), Catch::Contains("host"));
}

TEST_CASE("peer policy: each membership replaces the last", "[peer_policy]") {
  announced_pools p(true);
  std::vector<pool_descriptor> first{pool(1, 1), pool(2, 2)};
  p.replace(first);
  // Worker 2 went down; worker 1 restarted with a new address.
  std::vector<pool_descriptor> second{pool(1, 5)};
  CHECK(p.replace(second) == 1);
  CHECK_THAT(p.check(pool(2, 2)), Catch::Contains("not a member"));
  CHECK_THAT(p.check(pool(1, 1)), Catch::Contains("worker address"));  // the old address
  CHECK(p.check(pool(1, 5)).empty());
  // An empty membership (every worker down) refuses everything, and is not "no membership".
  p.replace({});
  CHECK(p.size() == 0);
  CHECK_THAT(p.check(pool(1, 5)), Catch::Contains("not a member"));
}

TEST_CASE("peer policy: descriptors without an address are not announced", "[peer_policy]") {
  announced_pools p(true);
  auto inline_pool = pool(4, 4);
  inline_pool.worker_address.clear();  // an inline transport's pool, or a router
  std::vector<pool_descriptor> members{inline_pool, pool(5, 5), pool(5, 6)};
  CHECK(p.replace(members) == 1);  // two for one owner: the last counts
  CHECK(p.check(pool(5, 6)).empty());
  CHECK_THAT(p.check(pool(5, 5)), Catch::Contains("worker address"));
  CHECK_THAT(p.check(pool(4, 4)), Catch::Contains("not a member"));
}
