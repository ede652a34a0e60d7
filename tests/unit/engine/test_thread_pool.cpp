// thread_pool shared by several callers (issue 21 item 4): every index once per caller,
// distinct thread indices among running chunks, decode-priority jobs served first, a caller
// never waiting for another caller's job. Orderings and counters, no timing.
#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <memory>
#include <thread>
#include <vector>

#include "engine/cpu/pool_policy.hpp"
#include "engine/cpu/thread_pool.hpp"

using namespace tokenmill::cpu;

namespace {

/// Spins (yielding the core) until `flag` is set.
void wait_for(const std::atomic<bool>& flag) {
  while (!flag.load())
    std::this_thread::yield();
}

/// Runs parallel_for over `count` indices `reps` times and checks each index ran once,
/// every thread index below size() and not in use by another running chunk.
void hammer(thread_pool& pool, std::vector<std::atomic<bool>>& in_use, size_t count, int reps,
            job_priority priority, std::atomic<int>& bad) {
  for (int rep = 0; rep < reps; ++rep) {
    std::vector<std::atomic<int>> hits(count);
    auto body = [&](size_t b, size_t e, uint32_t t) {
      if (t >= pool.size() || in_use[t].exchange(true)) {
        bad |= 1;
        return;
      }
      for (size_t i = b; i < e; ++i)
        hits[i].fetch_add(1);
      in_use[t].store(false);
    };
    if (rep % 3 == 0)
      pool.parallel_for(count, 3, body, priority);
    else if (rep % 3 == 1)
      pool.parallel_for_guided(count, 4, body, priority);
    else
      pool.parallel_for_split(count, 5, body, priority);
    for (auto& h : hits)
      if (h.load() != 1) bad |= 2;
  }
}

}  // namespace

TEST_CASE("thread_pool: callers running at once each get every index once", "[cpu]") {
  for (uint32_t callers : {2u, 3u}) {
    thread_pool pool(3, callers);
    REQUIRE(pool.size() == callers + 2);
    REQUIRE(pool.threads() == 3);
    std::vector<std::atomic<bool>> in_use(pool.size());
    std::atomic<int> bad{0};
    // One more calling thread than slots: the last waits for a free slot.
    std::vector<std::thread> threads;
    for (uint32_t c = 0; c < callers + 1; ++c)
      threads.emplace_back([&, c] {
        hammer(pool, in_use, 517, 200, c % 2 ? job_priority::high : job_priority::normal, bad);
      });
    for (auto& t : threads)
      t.join();
    INFO("callers " << callers);
    CHECK(bad.load() == 0);
  }
}

TEST_CASE("thread_pool: a caller does not wait for another caller's job", "[cpu]") {
  thread_pool pool(2, 2);
  std::atomic<bool> low_running{false}, other_done{false};
  std::atomic<int> low_hits{0};
  // The low job's every chunk blocks until the other caller's job is done; were callers
  // serialized, the other job could not start and this test would hang.
  std::thread low([&] {
    pool.parallel_for(4, 1, [&](size_t, size_t, uint32_t) {
      low_running = true;
      wait_for(other_done);
      low_hits.fetch_add(1);
    });
  });
  wait_for(low_running);
  std::atomic<int> hits{0};
  pool.parallel_for(
      64, 1, [&](size_t b, size_t e, uint32_t) { hits.fetch_add(int(e - b)); }, job_priority::high);
  CHECK(hits.load() == 64);
  CHECK(low_hits.load() == 0);
  other_done = true;
  low.join();
  CHECK(low_hits.load() == 4);
}

TEST_CASE("thread_pool: a worker moves to a high-priority job at its next chunk boundary",
          "[cpu]") {
  // Three threads per job, two callers: workers have thread indices 2 and 3. The low
  // caller's own chunk holds it until the high job is done, and each worker's first low
  // chunk holds that worker until the high job has started. When the high job is posted,
  // four threads compute on three: one worker steps back, the other must leave the low job
  // after that one chunk, as the high job's caller waits in its first chunk for a worker to
  // run one of its chunks. Without the move the worker would run the low job's ~1000
  // remaining chunks first.
  thread_pool pool(3, 2);
  REQUIRE(pool.size() == 4);
  constexpr size_t low_count = 1000;
  auto is_worker = [](uint32_t t) { return t >= 2; };
  std::atomic<bool> high_started{false}, worker_in_high{false}, high_done{false};
  std::atomic<int> workers_in_low{0}, low_before_high{-1};
  std::vector<std::atomic<int>> low_by(pool.size());
  std::vector<std::atomic<int>> low_hits(low_count);
  std::thread low([&] {
    pool.parallel_for(low_count, 1, [&](size_t b, size_t e, uint32_t t) {
      for (size_t i = b; i < e; ++i)
        low_hits[i].fetch_add(1);
      if (!is_worker(t)) {
        wait_for(high_done);
        return;
      }
      if (low_by[t].fetch_add(1) == 0) {
        workers_in_low.fetch_add(1);
        wait_for(high_started);
      }
    });
  });
  while (workers_in_low.load() < 2)
    std::this_thread::yield();
  std::atomic<int> high_hits{0};
  pool.parallel_for(
      8, 1,
      [&](size_t b, size_t e, uint32_t t) {
        high_hits.fetch_add(int(e - b));
        if (is_worker(t)) {
          if (!worker_in_high.exchange(true)) low_before_high = low_by[t].load();
          return;
        }
        if (!high_started.exchange(true)) wait_for(worker_in_high);
      },
      job_priority::high);
  high_done = true;
  low.join();
  CHECK(high_hits.load() == 8);
  CHECK(low_before_high.load() == 1);
  for (auto& h : low_hits)
    REQUIRE(h.load() == 1);
}

TEST_CASE("thread_pool: workers step back while the callers fill the pool", "[cpu]") {
  // Two threads, two callers, one worker (index 2). With both callers computing, the worker
  // must not add a third thread: after its first low chunk it steps back instead of
  // joining the high job, and it runs no high chunk while both callers compute.
  thread_pool pool(2, 2);
  const uint32_t worker = 2;
  std::atomic<bool> worker_in_low{false}, high_started{false}, worker_back{false}, high_done{false};
  std::atomic<int> high_by_worker{0};
  std::thread low([&] {
    pool.parallel_for(100, 1, [&](size_t, size_t, uint32_t t) {
      if (t != worker) {
        wait_for(high_done);
        return;
      }
      if (!worker_in_low.exchange(true)) {
        wait_for(high_started);
        worker_back = true;
      }
    });
  });
  wait_for(worker_in_low);
  pool.parallel_for(
      64, 1,
      [&](size_t, size_t, uint32_t t) {
        if (t == worker) high_by_worker.fetch_add(1);
        if (!high_started.exchange(true)) {
          wait_for(worker_back);
          for (int i = 0; i < 1000; ++i)  // room for the worker to (wrongly) join
            std::this_thread::yield();
        }
      },
      job_priority::high);
  CHECK(high_by_worker.load() == 0);
  high_done = true;
  low.join();
}

TEST_CASE("thread_pool: nested calls run inline under the task's thread index", "[cpu]") {
  thread_pool pool(3, 2);
  std::atomic<int> total{0}, bad{0};
  std::thread other([&] {
    pool.parallel_for(16, 1, [&](size_t, size_t, uint32_t outer) {
      pool.parallel_for(10, 3, [&](size_t b, size_t e, uint32_t inner) {
        if (inner != outer) bad |= 1;
        total += int(e - b);
      });
    });
  });
  pool.parallel_for_guided(64, 1, [&](size_t b, size_t e, uint32_t outer) {
    pool.parallel_for_guided(e - b, 1, [&](size_t ib, size_t ie, uint32_t inner) {
      if (inner != outer || ib != 0 || ie != e - b) bad |= 2;  // inline: one chunk
      total += int(ie - ib);
    });
  });
  other.join();
  CHECK(total.load() == 160 + 64);
  CHECK(bad.load() == 0);
}

TEST_CASE("thread_pool: destroyed with idle workers", "[cpu]") {
  { thread_pool never_used(4, 2); }
  auto pool = std::make_unique<thread_pool>(4, 3);
  std::atomic<int> hits{0};
  pool->parallel_for(100, 1, [&](size_t b, size_t e, uint32_t) { hits += int(e - b); });
  pool.reset();  // the workers may be spinning or asleep: both must end
  CHECK(hits.load() == 100);
  CHECK_THROWS_AS(thread_pool(2, 0), std::invalid_argument);
  CHECK_THROWS_AS(thread_pool(2, 65), std::invalid_argument);
}

TEST_CASE("thread_pool: a busy_scope holds a core between parallel_for calls", "[cpu]") {
  // Two threads, two callers, one worker (index 2). While one caller is inside a busy scope
  // (an engine call between its parallel_for calls), the other caller's job gets no worker:
  // the two callers already compute on the pool's two threads. Once the scope ends, the
  // worker joins again.
  thread_pool pool(2, 2);
  const uint32_t worker = 2;
  std::atomic<bool> busy{false}, release{false};
  std::thread engine([&] {
    thread_pool::busy_scope scope(pool);
    thread_pool::busy_scope nested(pool);  // no second count
    pool.parallel_for(4, 1, [](size_t, size_t, uint32_t) {});
    busy = true;
    wait_for(release);
  });
  wait_for(busy);
  std::atomic<int> by_worker{0};
  auto job = [&](size_t, size_t, uint32_t t) {
    if (t == worker) by_worker.fetch_add(1);
    for (int i = 0; i < 100; ++i)  // room for the worker to (wrongly) join
      std::this_thread::yield();
  };
  pool.parallel_for(64, 1, job, job_priority::high);
  CHECK(by_worker.load() == 0);
  release = true;
  engine.join();
  // Both scopes ended: the worker joins again (a leaked count would keep it out of every
  // job from here on, and this would hang). The caller's chunk waits for the worker's.
  std::atomic<bool> worker_ran{false};
  pool.parallel_for(2, 1, [&](size_t, size_t, uint32_t t) {
    if (t == worker)
      worker_ran = true;
    else
      wait_for(worker_ran);
  });
  CHECK(worker_ran.load());
}

TEST_CASE("pool_policy: workers join, and are woken, only while a core is free", "[cpu]") {
  using namespace tokenmill::cpu::pool_policy;
  CHECK(can_join(1, 2));
  CHECK_FALSE(can_join(2, 2));
  CHECK_FALSE(can_join(3, 2));
  CHECK(should_wake(1, 2, 1, true));
  CHECK_FALSE(should_wake(2, 2, 1, true));   // both callers compute: no wake-up for nothing
  CHECK_FALSE(should_wake(1, 2, 0, true));   // nobody asleep
  CHECK_FALSE(should_wake(1, 2, 1, false));  // nothing to join
}

TEST_CASE("pool_policy: guided takes and a worker's paced chunks", "[cpu]") {
  using namespace tokenmill::cpu::pool_policy;
  CHECK(guided_take(4096, 16, 2) == 1024);
  CHECK(guided_take(100, 16, 2) == 16);    // at least a unit
  CHECK(guided_take(1000, 16, 2) == 240);  // whole units
  // A worker's first chunk is one unit; then what the target allows at the last pace.
  CHECK(worker_chunk_cap(0, 0, 16) == 16);
  CHECK(worker_chunk_cap(16, 50'000, 16, 250'000) == 32);       // at most twice the last
  CHECK(worker_chunk_cap(64, 250'000, 16, 250'000) == 64);      // on target: unchanged
  CHECK(worker_chunk_cap(64, 1'000'000, 16, 250'000) == 16);    // 4x too slow: a quarter
  CHECK(worker_chunk_cap(64, 100'000'000, 16, 250'000) == 16);  // never below a unit
  CHECK(worker_chunk_cap(48, 300'000, 16, 250'000) == 32);      // rounded down to units
  CHECK(worker_chunk_cap(24, 0, 16) == 48);                     // too fast to time: doubled
  CHECK(worker_chunk_cap(8, 0, 16) == 16);                      // a short last chunk: whole units
}

TEST_CASE("thread_pool: posts wake no worker while the callers fill the pool", "[cpu]") {
  // Two threads, two callers, one worker. One caller is inside a busy_scope, the other posts
  // 200 jobs: the worker can join none of them (both cores compute), so it sleeps and no post
  // may wake it. Once the first scope ends with a job open, the worker is woken and joins.
  thread_pool pool(2, 2);
  const uint32_t worker = 2;
  std::atomic<bool> busy{false}, release{false};
  std::thread engine([&] {
    thread_pool::busy_scope scope(pool);
    busy = true;
    wait_for(release);
  });
  wait_for(busy);
  while (pool.sleeping_workers() != 1)  // it finds the pool full and sleeps
    std::this_thread::yield();
  const uint64_t woken = pool.worker_wakeups();
  std::atomic<int> by_worker{0}, hits{0};
  {
    thread_pool::busy_scope scope(pool);
    for (int i = 0; i < 200; ++i)
      pool.parallel_for(
          8, 1,
          [&](size_t b, size_t e, uint32_t t) {
            if (t == worker) by_worker.fetch_add(1);
            hits.fetch_add(int(e - b));
          },
          i % 2 ? job_priority::high : job_priority::normal);
  }
  CHECK(hits.load() == 1600);
  CHECK(by_worker.load() == 0);
  CHECK(pool.worker_wakeups() == woken);
  // A freed compute slot with a job open wakes the worker: this job's caller waits in its
  // first chunk for a chunk run by the worker, so without that wake-up it would hang.
  std::atomic<bool> worker_ran{false}, caller_in{false};
  std::thread caller([&] {
    pool.parallel_for(4, 1, [&](size_t, size_t, uint32_t t) {
      if (t == worker) {
        worker_ran = true;
        return;
      }
      if (!caller_in.exchange(true)) wait_for(worker_ran);
    });
  });
  wait_for(caller_in);
  release = true;  // the busy_scope ends: a core is free
  engine.join();
  caller.join();
  CHECK(worker_ran.load());
  CHECK(pool.worker_wakeups() > woken);
}

TEST_CASE("thread_pool: a worker's first chunk of a shared pool's guided job is one unit",
          "[cpu]") {
  // With other callers sharing the pool, a worker joining a guided job starts with one unit
  // (pool_policy::worker_chunk_cap), so that it can step back soon for another caller; a
  // pool of one caller keeps the guided 1 / (2 * threads) share.
  for (uint32_t callers : {1u, 2u}) {
    thread_pool pool(2, callers);
    const uint32_t worker = callers;
    std::atomic<bool> worker_ran{false};
    std::atomic<size_t> first_worker_chunk{0};
    constexpr size_t count = 4096, unit = 16;
    std::vector<std::atomic<int>> hits(count);
    std::atomic<bool> caller_first{true};
    pool.parallel_for_guided(count, unit, [&](size_t b, size_t e, uint32_t t) {
      for (size_t i = b; i < e; ++i)
        hits[i].fetch_add(1);
      if (t == worker) {
        size_t none = 0;
        first_worker_chunk.compare_exchange_strong(none, e - b);
        worker_ran = true;
      } else if (caller_first.exchange(false)) {
        wait_for(worker_ran);  // the caller's first chunk waits for the worker's
      }
    });
    INFO("callers " << callers);
    // One caller: a guided share, 1024 or 768 as the worker claims before or after the
    // caller's first 4096 / 4.
    if (callers == 1)
      CHECK(first_worker_chunk.load() >= 768);
    else
      CHECK(first_worker_chunk.load() == unit);
    for (auto& h : hits)
      REQUIRE(h.load() == 1);
  }
}

TEST_CASE("pool_policy: a split job's caller share follows the measured pace", "[cpu]") {
  using namespace tokenmill::cpu::pool_policy;
  CHECK(even_split_ratio(2) == 1.0);
  CHECK(even_split_ratio(4) == Approx(1.0 / 3));
  // Equal pace: even chunks, in whole units.
  CHECK(split_caller_rows(1280, 16, 2, 1.0) == 640);
  CHECK(split_caller_rows(768, 16, 4, even_split_ratio(4)) == 192);
  // A caller 20 % faster takes 6/11 of the rows; 3x faster is held to 1.5x an even chunk,
  // 3x slower to half of one.
  CHECK(split_caller_rows(1280, 16, 2, 1.2) == 704);
  CHECK(split_caller_rows(1280, 16, 2, 3.0) == 960);
  CHECK(split_caller_rows(1280, 16, 2, 1.0 / 3) == 320);
  // Coarse units round to the nearest; the workers keep at least a part-unit.
  CHECK(split_caller_rows(1280, 320, 2, 1.2) == 640);
  CHECK(split_caller_rows(20, 16, 2, 5.0) == 16);
  CHECK(split_caller_rows(16, 16, 2, 1.0) == 16);  // one unit: the caller's alone
  CHECK(split_caller_rows(100, 16, 1, 1.0) == 100);
  // The estimate moves a quarter of the way to each clamped measurement; a side that did
  // nothing, or was not timed, leaves it alone.
  CHECK(update_split_ratio(1.0, 600, 1000, 400, 1000) == Approx(0.75 + 0.25 * 1.5));
  CHECK(update_split_ratio(1.0, 100, 1000, 100, 1'000'000) == Approx(0.75 + 0.25 * 5.0));
  CHECK(update_split_ratio(1.0, 100, 1'000'000, 100, 1000) == Approx(0.75 + 0.25 * 0.2));
  CHECK(update_split_ratio(1.3, 0, 1000, 400, 1000) == 1.3);
  CHECK(update_split_ratio(1.3, 600, 1000, 0, 0) == 1.3);
}

TEST_CASE("thread_pool: a split job gives the slower side fewer rows", "[cpu]") {
  // One caller, one worker (thread index 1). Every index runs once, chunks start at
  // multiples of the unit, and the caller's chunk starts at 0. The side whose chunks are
  // slow ends up with half an even chunk, the other with 1.5.
  for (const bool worker_slow : {true, false}) {
    INFO("worker slow: " << worker_slow);
    thread_pool pool(2);
    const size_t count = 1024, unit = 16;
    size_t caller_rows = 0;
    for (int rep = 0; rep < 400; ++rep) {
      std::vector<std::atomic<int>> hits(count);
      std::atomic<size_t> by_caller{0};
      std::atomic<bool> misplaced{false};
      pool.parallel_for_split(count, unit, [&](size_t b, size_t e, uint32_t t) {
        if (b % unit != 0) misplaced = true;
        for (size_t i = b; i < e; ++i)
          hits[i].fetch_add(1);
        if (t == 0) {
          if (b != 0 && by_caller.load() == 0) misplaced = true;
          by_caller += e - b;
        }
        // The fast side's chunks take 50 us, so that the worker has started before the
        // caller could take its chunk too; the slow side's 400 us.
        const auto until = std::chrono::steady_clock::now() +
                           std::chrono::microseconds((t != 0) == worker_slow ? 400 : 50);
        while (std::chrono::steady_clock::now() < until)
          std::this_thread::yield();
      });
      REQUIRE_FALSE(misplaced.load());
      for (auto& h : hits)
        REQUIRE(h.load() == 1);
      caller_rows = by_caller.load();
      if (caller_rows == (worker_slow ? 768u : 256u)) break;
    }
    CHECK(caller_rows == (worker_slow ? 768u : 256u));
  }
}
