#include <catch2/catch.hpp>

#include <deque>
#include <limits>
#include <vector>

#include "engine/scheduler.hpp"

using namespace tokenmill;

namespace {
bool same(const std::vector<planned_chunk>& a, const std::vector<planned_chunk>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i].key != b[i].key || a[i].begin != b[i].begin || a[i].end != b[i].end) return false;
  return true;
}
bool same(const std::deque<prefill_progress>& a, const std::deque<prefill_progress>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i].key != b[i].key || a[i].total != b[i].total || a[i].done != b[i].done) return false;
  return true;
}
}  // namespace

TEST_CASE("an empty queue, budget or seat count plans nothing", "[scheduler]") {
  std::deque<prefill_progress> q{{1, 100, 0}};
  CHECK(plan_prefill_batch({}, 512, 8).empty());
  CHECK(plan_prefill_batch(q, 0, 8).empty());
  CHECK(plan_prefill_batch(q, 512, 0).empty());
}

TEST_CASE("the token budget is split across jobs in queue order", "[scheduler]") {
  std::deque<prefill_progress> q{{10, 100, 0}, {11, 50, 0}, {12, 300, 0}, {13, 20, 0}};
  auto plan = plan_prefill_batch(q, 200, 8);
  // 100 + 50 fit; job 12 gets the remaining 50 and job 13 waits behind it.
  CHECK(same(plan, {{10, 0, 100}, {11, 0, 50}, {12, 0, 50}}));
  uint32_t tokens = 0;
  for (const auto& c : plan)
    tokens += c.end - c.begin;
  CHECK(tokens == 200);
}

TEST_CASE("a budget that exactly fits stops cleanly", "[scheduler]") {
  std::deque<prefill_progress> q{{1, 64, 0}, {2, 64, 0}, {3, 64, 0}};
  CHECK(same(plan_prefill_batch(q, 128, 8), {{1, 0, 64}, {2, 0, 64}}));
  CHECK(same(plan_prefill_batch(q, 1000, 8), {{1, 0, 64}, {2, 0, 64}, {3, 0, 64}}));
}

TEST_CASE("a job larger than the budget is chunked across batches", "[scheduler]") {
  std::deque<prefill_progress> q{{7, 1000, 0}, {8, 10, 0}};
  std::vector<planned_chunk> chunks;
  // Simulate the worker: apply each plan, then plan again.
  for (int round = 0; round < 10 && !q.empty(); ++round) {
    auto plan = plan_prefill_batch(q, 256, 4);
    REQUIRE_FALSE(plan.empty());
    for (const auto& c : plan) {
      chunks.push_back(c);
      for (auto& j : q)
        if (j.key == c.key) {
          REQUIRE(c.begin == j.done);
          j.done = c.end;
        }
    }
    while (!q.empty() && q.front().done == q.front().total)
      q.pop_front();
  }
  CHECK(q.empty());
  CHECK(same(chunks, {{7, 0, 256}, {7, 256, 512}, {7, 512, 768}, {7, 768, 1000}, {8, 0, 10}}));
}

TEST_CASE("a partially done job continues where it stopped", "[scheduler]") {
  std::deque<prefill_progress> q{{3, 100, 40}, {4, 30, 0}};
  CHECK(same(plan_prefill_batch(q, 70, 8), {{3, 40, 100}, {4, 0, 10}}));
  CHECK(same(plan_prefill_batch(q, 20, 8), {{3, 40, 60}}));
}

TEST_CASE("at most max_seqs jobs per batch", "[scheduler]") {
  std::deque<prefill_progress> q;
  for (uint64_t k = 0; k < 10; ++k)
    q.push_back({k, 5, 0});
  auto plan = plan_prefill_batch(q, 1000, 3);
  CHECK(same(plan, {{0, 0, 5}, {1, 0, 5}, {2, 0, 5}}));
  CHECK(plan_prefill_batch(q, 1000, 1).size() == 1);
  CHECK(plan_prefill_batch(q, 1000, 100).size() == 10);
}

TEST_CASE("completed jobs are skipped and take no seat", "[scheduler]") {
  std::deque<prefill_progress> q{{1, 10, 10}, {2, 0, 0}, {3, 10, 4}, {4, 5, 7}, {5, 8, 0}};
  CHECK(same(plan_prefill_batch(q, 100, 2), {{3, 4, 10}, {5, 0, 8}}));
  std::deque<prefill_progress> done{{1, 10, 10}, {2, 3, 3}};
  CHECK(plan_prefill_batch(done, 100, 8).empty());
}

TEST_CASE("planning does not change the queue and is repeatable", "[scheduler]") {
  std::deque<prefill_progress> q{{1, 500, 100}, {2, 50, 0}, {3, 10, 10}};
  auto copy = q;
  auto p1 = plan_prefill_batch(q, 300, 2);
  auto p2 = plan_prefill_batch(q, 300, 2);
  CHECK(same(q, copy));
  CHECK(same(p1, p2));
  CHECK(same(p1, {{1, 100, 400}}));
}

TEST_CASE("decode_admissions fills free seats only", "[scheduler]") {
  CHECK(decode_admissions(0, 0, 8) == 0);
  CHECK(decode_admissions(0, 3, 8) == 3);
  CHECK(decode_admissions(0, 20, 8) == 8);
  CHECK(decode_admissions(5, 20, 8) == 3);
  CHECK(decode_admissions(5, 2, 8) == 2);
  CHECK(decode_admissions(8, 5, 8) == 0);
  CHECK(decode_admissions(12, 5, 8) == 0);  // over capacity (cap lowered): no underflow
  CHECK(decode_admissions(0, 5, 0) == 0);
}

TEST_CASE("blocks_to_reserve covers prompt plus max_tokens, rounded up", "[scheduler]") {
  CHECK(blocks_to_reserve(0, 0, 16) == 0);
  CHECK(blocks_to_reserve(1, 0, 16) == 1);
  CHECK(blocks_to_reserve(16, 0, 16) == 1);
  CHECK(blocks_to_reserve(16, 1, 16) == 2);
  CHECK(blocks_to_reserve(10, 6, 16) == 1);
  CHECK(blocks_to_reserve(10, 7, 16) == 2);
  CHECK(blocks_to_reserve(100, 28, 16) == 8);
  CHECK(blocks_to_reserve(100, 29, 16) == 9);
  CHECK(blocks_to_reserve(5, 5, 1) == 10);
  CHECK(blocks_to_reserve(5, 5, 0) == 0);
  constexpr uint32_t max = std::numeric_limits<uint32_t>::max();
  // The sum exceeds 32 bits; it must not wrap around.
  CHECK(blocks_to_reserve(max, max, 16) == static_cast<uint32_t>((uint64_t{max} * 2 + 15) / 16));
  CHECK(blocks_to_reserve(max, 1, 16) == static_cast<uint32_t>((uint64_t{max} + 1) / 16));
}
