#include <catch2/catch.hpp>

#include "actors/prefix_reuse.hpp"

using namespace tokenmill;

TEST_CASE("reusable prefix: every full block but the last prompt token's", "[prefix_reuse]") {
  // 16-token blocks: a 32-token prompt fills two blocks, but the second holds the last
  // token, whose logits give the first token: only one may be reused.
  CHECK(reusable_prefix_blocks(32, 16) == 1);
  CHECK(reusable_prefix_blocks(33, 16) == 2);
  CHECK(reusable_prefix_blocks(31, 16) == 1);
  CHECK(reusable_prefix_blocks(17, 16) == 1);
  CHECK(reusable_prefix_blocks(16, 16) == 0);
  CHECK(reusable_prefix_blocks(1, 16) == 0);
  CHECK(reusable_prefix_blocks(1, 1) == 0);
  CHECK(reusable_prefix_blocks(5, 1) == 4);
}

TEST_CASE("reusable prefix: an empty prompt or no block size reuses nothing", "[prefix_reuse]") {
  CHECK(reusable_prefix_blocks(0, 16) == 0);
  CHECK(reusable_prefix_blocks(100, 0) == 0);
}

TEST_CASE("first computed token follows the reused blocks", "[prefix_reuse]") {
  CHECK(first_computed_token(0, 16) == 0);
  CHECK(first_computed_token(3, 16) == 48);
  CHECK(first_computed_token(2, 1) == 2);
}
