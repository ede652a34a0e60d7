#include <catch2/catch.hpp>

#include <vector>

#include "actors/router/routing_policy.hpp"

using namespace tokenmill;

TEST_CASE("admit bounds in-flight requests", "[routing_policy]") {
  admission_limits lim;
  lim.max_inflight = 3;
  lim.max_queued_prompt_tokens = 1000;
  CHECK(admit(0, 0, 10, lim) == admission::accept);
  CHECK(admit(2, 0, 10, lim) == admission::accept);
  CHECK(admit(3, 0, 10, lim) == admission::overloaded);
  CHECK(admit(4, 0, 10, lim) == admission::overloaded);
  lim.max_inflight = 0;
  CHECK(admit(0, 0, 1, lim) == admission::overloaded);
}

TEST_CASE("admit bounds queued prompt tokens", "[routing_policy]") {
  admission_limits lim;
  lim.max_inflight = 100;
  lim.max_queued_prompt_tokens = 1000;
  CHECK(admit(1, 500, 500, lim) == admission::accept);  // exactly at the limit
  CHECK(admit(1, 500, 501, lim) == admission::overloaded);
  CHECK(admit(1, 1000, 1, lim) == admission::overloaded);
  CHECK(admit(1, 1, 999, lim) == admission::accept);
  // An idle router admits even a prompt larger than the whole budget.
  CHECK(admit(0, 0, 5000, lim) == admission::accept);
  CHECK(admit(5, 0, 5000, lim) == admission::accept);
  // No 32-bit overflow in the sum.
  lim.max_queued_prompt_tokens = uint64_t{1} << 40;
  CHECK(admit(1, (uint64_t{1} << 40) - 10, 0xFFFFFFFFu, lim) == admission::overloaded);
  CHECK(admit(1, 1, 0xFFFFFFFFu, lim) == admission::accept);
}

TEST_CASE("default admission limits", "[routing_policy]") {
  admission_limits lim;
  CHECK(lim.max_inflight == 1024);
  CHECK(lim.max_queued_prompt_tokens == (uint64_t{1} << 22));
  CHECK(admit(1023, 0, 100, lim) == admission::accept);
  CHECK(admit(1024, 0, 100, lim) == admission::overloaded);
}

TEST_CASE("pick_decode prefers the least active worker", "[routing_policy]") {
  CHECK_FALSE(pick_decode({}).has_value());
  std::vector<decode_candidate> one{{9, 100, 0}};
  CHECK(pick_decode(one) == 0u);
  std::vector<decode_candidate> c{{1, 5, 0}, {2, 2, 0}, {3, 7, 10}, {4, 3, 99}};
  CHECK(pick_decode(c) == 1u);  // load beats overlap
}

TEST_CASE("pick_decode ties: larger overlap, then lower id", "[routing_policy]") {
  std::vector<decode_candidate> overlap{{1, 2, 1}, {2, 2, 4}, {3, 2, 3}, {0, 5, 50}};
  CHECK(pick_decode(overlap) == 1u);
  std::vector<decode_candidate> ids{{7, 1, 2}, {3, 1, 2}, {5, 1, 2}, {2, 1, 1}};
  CHECK(pick_decode(ids) == 1u);
  // Independent of the order candidates come in.
  std::vector<decode_candidate> rev{{5, 1, 2}, {2, 1, 1}, {3, 1, 2}, {7, 1, 2}};
  CHECK(pick_decode(rev) == 2u);
  std::vector<decode_candidate> first_best{{1, 0, 0}, {2, 0, 0}};
  CHECK(pick_decode(first_best) == 0u);
}

TEST_CASE("pick_prefill weighs queued work against cached overlap", "[routing_policy]") {
  CHECK_FALSE(pick_prefill({}, 100, 16).has_value());
  // Prompt 160 tokens = 10 blocks of 16.
  SECTION("no overlap: the shortest queue wins") {
    std::vector<prefill_candidate> c{{1, 500, 0}, {2, 100, 0}, {3, 300, 0}};
    CHECK(pick_prefill(c, 160, 16) == 1u);
  }
  SECTION("overlap saves work") {
    // costs: 1 -> 100 + 160 = 260; 2 -> 150 + (160 - 8*16) = 182
    std::vector<prefill_candidate> c{{1, 100, 0}, {2, 150, 8}};
    CHECK(pick_prefill(c, 160, 16) == 1u);
    // but not when the queue in front is too long: 2 -> 250 + 32 = 282 > 260
    c[1].queued_tokens = 250;
    CHECK(pick_prefill(c, 160, 16) == 0u);
  }
  SECTION("overlap is capped at the prompt length") {
    // 1 -> 10 + 0; 2 -> 0 + 160 - min(1000*16,160) = 0 -> cost 0 beats 10
    std::vector<prefill_candidate> c{{1, 10, 10}, {2, 0, 1000}};
    CHECK(pick_prefill(c, 160, 16) == 1u);
    // a huge overlap never makes the cost negative (wraps): 1 -> 5, 2 -> 6
    std::vector<prefill_candidate> d{{1, 5, 0xFFFFFFFFu}, {2, 6, 0xFFFFFFFFu}};
    CHECK(pick_prefill(d, 160, 16) == 0u);
  }
  SECTION("block size scales the overlap") {
    // block_tokens 4: 1 -> 0 + 160 - 40 = 120; 2 -> 100 + 160 - 0 = 260
    std::vector<prefill_candidate> c{{1, 0, 10}, {2, 100, 0}};
    CHECK(pick_prefill(c, 160, 4) == 0u);
    // block_tokens 0: overlap is worth nothing
    std::vector<prefill_candidate> d{{1, 50, 10}, {2, 40, 0}};
    CHECK(pick_prefill(d, 160, 0) == 1u);
  }
  SECTION("equal costs go to the lower id regardless of order") {
    // id 9 -> 100 + 160 - 64 = 196; id 4 -> 36 + 160 = 196; id 6 -> 196 + 160 = 356
    std::vector<prefill_candidate> c{{9, 100, 4}, {4, 36, 0}, {6, 196, 0}};
    CHECK(pick_prefill(c, 160, 16) == 1u);
    std::vector<prefill_candidate> d{{4, 36, 0}, {9, 100, 4}};
    CHECK(pick_prefill(d, 160, 16) == 0u);
  }
}

TEST_CASE("prefill_locally: conditional disaggregation", "[routing_policy]") {
  // Short uncached part: stay local.
  CHECK(prefill_locally(100, 0, 128, true));
  CHECK_FALSE(prefill_locally(128, 0, 128, true));  // not shorter than the threshold
  CHECK_FALSE(prefill_locally(1000, 0, 128, true));
  // Cached tokens do not count.
  CHECK(prefill_locally(1000, 900, 128, true));
  CHECK_FALSE(prefill_locally(1000, 872, 128, true));
  CHECK(prefill_locally(1000, 873, 128, true));
  // Cache longer than the prompt (whole prompt cached) is not an underflow.
  CHECK(prefill_locally(100, 5000, 128, true));
  // Threshold 0 disables local prefill, even for a fully cached prompt.
  CHECK_FALSE(prefill_locally(1, 0, 0, true));
  CHECK_FALSE(prefill_locally(100, 100, 0, true));
  // No prefill worker at all: always local, whatever the threshold.
  CHECK(prefill_locally(100000, 0, 0, false));
  CHECK(prefill_locally(100000, 0, 128, false));
  CHECK(prefill_locally(0, 0, 0, false));
}

TEST_CASE("the kv-store is asked only when its answer can change the route", "[routing_policy]") {
  // kv-store known, prompt >= one block, and a choice: several decode or prefill workers.
  CHECK(overlap_matters(true, 16, 16, 2, 0, 0));
  CHECK(overlap_matters(true, 16, 16, 1, 2, 0));
  // One decode, one prefill worker: only local prefill (threshold > 0) makes a choice.
  CHECK_FALSE(overlap_matters(true, 64, 16, 1, 1, 0));
  CHECK(overlap_matters(true, 64, 16, 1, 1, 128));
  CHECK_FALSE(overlap_matters(true, 64, 16, 1, 0, 128));
  // No kv-store, or no full block to look up.
  CHECK_FALSE(overlap_matters(false, 64, 16, 4, 4, 128));
  CHECK_FALSE(overlap_matters(true, 15, 16, 4, 4, 128));
}

TEST_CASE("pick_decode skips draining workers", "[routing_policy]") {
  // The idlest worker, with the largest overlap, is draining: the next best one gets it.
  std::vector<decode_candidate> c{{1, 0, 9, true}, {2, 3, 0, false}, {3, 2, 0, false}};
  CHECK(pick_decode(c) == 2u);
  // Draining at the front of the list does not become the default choice.
  std::vector<decode_candidate> front{{1, 0, 0, true}, {2, 7, 0, false}};
  CHECK(pick_decode(front) == 1u);
  // Every worker draining: nothing to pick (the router says no decode worker is up).
  std::vector<decode_candidate> all{{1, 0, 0, true}, {2, 0, 0, true}};
  CHECK_FALSE(pick_decode(all).has_value());
}

TEST_CASE("pick_prefill skips draining workers", "[routing_policy]") {
  // Worker 1 is the cheapest (empty queue, full overlap) but draining.
  std::vector<prefill_candidate> c{{1, 0, 10, true}, {2, 400, 0, false}, {3, 300, 0, false}};
  CHECK(pick_prefill(c, 160, 16) == 2u);
  std::vector<prefill_candidate> front{{1, 0, 0, true}, {2, 900, 0, false}};
  CHECK(pick_prefill(front, 160, 16) == 1u);
  std::vector<prefill_candidate> all{{1, 0, 0, true}};
  CHECK_FALSE(pick_prefill(all, 160, 16).has_value());
}
