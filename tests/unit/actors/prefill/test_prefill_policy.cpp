#include <catch2/catch.hpp>

#include "actors/prefill/prefill_policy.hpp"

using namespace tokenmill;

namespace {
/// A well-formed job: 40 tokens in 16-token blocks (3 blocks), nothing skipped.
prefill_job_shape good_job() {
  prefill_job_shape j;
  j.prompt_tokens = 40;
  j.prompt_blocks = 3;
  j.block_tokens = 16;
  j.skip_blocks = 0;
  j.dst_blocks = 3;
  j.dst_block_bytes = 4096;
  j.local_block_bytes = 4096;
  j.pool_blocks = 8;
  return j;
}
}  // namespace

TEST_CASE("prefill job: a well-formed job passes", "[prefill_policy]") {
  CHECK_FALSE(check_prefill_job(good_job()));
  auto j = good_job();
  j.skip_blocks = 2;  // both full blocks cached on the decode side
  j.dst_blocks = 1;
  CHECK_FALSE(check_prefill_job(j));
  j = good_job();
  j.pool_blocks = 3;  // exactly enough
  CHECK_FALSE(check_prefill_job(j));
}

TEST_CASE("prefill job: malformed jobs are invalid requests", "[prefill_policy]") {
  auto j = good_job();
  j.prompt_tokens = 0;
  j.prompt_blocks = 0;
  j.dst_blocks = 0;
  auto err = check_prefill_job(j);
  REQUIRE(err);
  CHECK(err->code == errc::invalid_request);

  j = good_job();
  j.dst_blocks = 2;
  err = check_prefill_job(j);
  REQUIRE(err);
  CHECK(err->code == errc::invalid_request);
  CHECK(err->message ==
        "prefill job for 40 tokens skips 0 and names 2 destination blocks of 4096 B "
        "(expected 3 of 4096 B)");

  j = good_job();
  j.dst_block_bytes = 2048;
  err = check_prefill_job(j);
  REQUIRE(err);
  CHECK(err->code == errc::invalid_request);

  // Skipping the block of the last prompt token is never allowed (its logits give the
  // first token): the expected count then falls back to every prompt block.
  j = good_job();
  j.prompt_tokens = 32;
  j.prompt_blocks = 2;
  j.skip_blocks = 2;
  j.dst_blocks = 0;
  err = check_prefill_job(j);
  REQUIRE(err);
  CHECK(err->code == errc::invalid_request);
  CHECK(err->message ==
        "prefill job for 32 tokens skips 2 and names 0 destination blocks of 4096 B "
        "(expected 2 of 4096 B)");
}

TEST_CASE("prefill job: a prompt larger than the pool is out of blocks", "[prefill_policy]") {
  auto j = good_job();
  j.pool_blocks = 2;
  auto err = check_prefill_job(j);
  REQUIRE(err);
  CHECK(err->code == errc::out_of_blocks);
  CHECK(err->message == "prompt needs 3 KV blocks; the prefill pool has 2");
  // A malformed job is reported as such even when it would not fit either.
  j.dst_blocks = 1;
  CHECK(check_prefill_job(j)->code == errc::invalid_request);
}

TEST_CASE("complete blocks: full blocks, and the partial last one at the end", "[prefill_policy]") {
  CHECK(complete_blocks(0, 40, 3, 16) == 0);
  CHECK(complete_blocks(15, 40, 3, 16) == 0);
  CHECK(complete_blocks(16, 40, 3, 16) == 1);
  CHECK(complete_blocks(39, 40, 3, 16) == 2);
  CHECK(complete_blocks(40, 40, 3, 16) == 3);  // the partial block is complete now
  CHECK(complete_blocks(32, 32, 2, 16) == 2);
}

TEST_CASE("next transfer: only newly complete blocks, shifted past the skipped ones",
          "[prefill_policy]") {
  CHECK_FALSE(next_transfer(0, 0, 0));
  CHECK_FALSE(next_transfer(2, 2, 0));
  CHECK_FALSE(next_transfer(1, 2, 2));  // the cached prefix counts as sent
  auto t = next_transfer(2, 0, 0);
  REQUIRE(t);
  CHECK(t->src_begin == 0);
  CHECK(t->src_end == 2);
  CHECK(t->dst_begin == 0);
  CHECK(t->dst_end == 2);
  // Two blocks skipped (cached on the decode side), one sent: blocks 3..4 go to the
  // job's destinations 1..2.
  t = next_transfer(5, 3, 2);
  REQUIRE(t);
  CHECK(t->src_begin == 3);
  CHECK(t->src_end == 5);
  CHECK(t->dst_begin == 1);
  CHECK(t->dst_end == 3);
}

TEST_CASE("hand_back_on_drain: only jobs with nothing computed or written go back",
          "[prefill_policy]") {
  job_progress queued;  // waiting for blocks or queued: nothing done
  CHECK(hand_back_on_drain(queued));
  job_progress cached = queued;  // its cached prefix reused, no chunk computed yet
  cached.done = cached.first_to_compute = 16;
  cached.blocks_sent = cached.skip_blocks = 2;
  CHECK(hand_back_on_drain(cached));
  auto with = [&](auto change) {
    auto j = cached;
    change(j);
    return hand_back_on_drain(j);
  };
  CHECK_FALSE(with([](job_progress& j) { j.on_engine = true; }));
  CHECK_FALSE(with([](job_progress& j) { j.computed = true; }));
  CHECK_FALSE(with([](job_progress& j) { j.done = 20; }));  // a chunk computed
  CHECK_FALSE(with([](job_progress& j) { j.writes_pending = 1; }));
  CHECK_FALSE(with([](job_progress& j) { j.blocks_sent = 3; }));  // a block sent
}
