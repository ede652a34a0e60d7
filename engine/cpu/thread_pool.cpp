#include "engine/cpu/thread_pool.hpp"

#include "engine/cpu/pool_policy.hpp"

#include <sched.h>

#include <algorithm>
#include <bit>
#include <chrono>
#include <stdexcept>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace tokenmill::cpu {
namespace {

/// The pool whose task this thread runs (null outside tasks) and the task's thread index:
/// a nested parallel_for runs inline under the same index.
thread_local const thread_pool* task_pool = nullptr;
thread_local uint32_t task_thread = 0;
/// The pool this thread is counted busy in (thread_pool::busy_scope), if any.
thread_local const thread_pool* busy_pool = nullptr;

/// Sets the task context for a scope and restores the outer one.
class task_scope {
 public:
  task_scope(const thread_pool* pool, uint32_t thread) : pool_(task_pool), thread_(task_thread) {
    task_pool = pool;
    task_thread = thread;
  }
  ~task_scope() {
    task_pool = pool_;
    task_thread = thread_;
  }
  task_scope(const task_scope&) = delete;
  task_scope& operator=(const task_scope&) = delete;

 private:
  const thread_pool* pool_;
  uint32_t thread_;
};

/// How long an idle participant spins before sleeping. A forward pass issues a
/// parallel_for every few microseconds to milliseconds; 200 us covers the gaps between
/// them without burning a core when the engine is idle.
constexpr auto spin_for = std::chrono::microseconds(200);

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#endif
}

/// Spins until pred() holds or spin_for has passed; returns pred(). Every few microseconds
/// it yields the core: when the scheduler has put the thread it waits for on the same core
/// (the kernel often wakes a worker on its waker's core, and a new process's threads start
/// on one), a spin that never yields keeps that thread off the core until the load
/// balancer moves one of them, milliseconds later. 125m q4_k decode at batch 1 on 2 vCPUs,
/// first 32 steps of fresh processes: 1.5-5.5 ms per step without the yield.
template <class Pred>
bool spin_until(Pred pred) {
  auto start = std::chrono::steady_clock::now();
  for (uint32_t i = 1;; ++i) {
    if (pred()) return true;
    cpu_relax();
    if (i % 64 == 0) {
      if (std::chrono::steady_clock::now() - start > spin_for) return pred();
      if (i % 256 == 0) sched_yield();
    }
  }
}

constexpr uint64_t closed_bit = uint64_t{1} << 31;
constexpr uint64_t count_mask = closed_bit - 1;

uint64_t bit(uint32_t slot) {
  return uint64_t{1} << slot;
}

uint64_t now_ns() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::steady_clock::now().time_since_epoch())
                                   .count());
}

}  // namespace

thread_pool::thread_pool(uint32_t threads, uint32_t callers) : callers_(callers) {
  if (callers == 0 || callers > 64)
    throw std::invalid_argument("thread_pool: callers must be in [1, 64]");
  if (threads == 0) threads = std::max(1u, std::thread::hardware_concurrency());
  jobs_ = std::make_unique<job[]>(callers);
  for (uint32_t s = 0; s < callers; ++s)
    jobs_[s].split_ratio = pool_policy::even_split_ratio(threads);
  workers_.reserve(threads - 1);
  for (uint32_t t = 0; t + 1 < threads; ++t)
    workers_.emplace_back([this, t] { worker_loop(callers_ + t); });
}

thread_pool::busy_scope::busy_scope(thread_pool& pool) : outer_(busy_pool) {
  if (busy_pool == &pool) return;
  pool_ = &pool;
  busy_pool = &pool;
  pool.active_.fetch_add(1);
}

thread_pool::busy_scope::~busy_scope() {
  if (pool_ == nullptr) return;
  pool_->release_compute();
  busy_pool = outer_;
}

thread_pool::~thread_pool() {
  {
    std::lock_guard lock(mutex_);
    stop_.store(true);
  }
  wake_.notify_all();
  for (auto& w : workers_)
    w.join();
}

bool thread_pool::claim(job& j, size_t& begin, size_t& end, size_t cap) const {
  if (!j.guided) {
    begin = j.next.fetch_add(j.grain, std::memory_order_relaxed);
    end = std::min(j.count, begin + j.grain);
    return begin < j.count;
  }
  begin = j.next.load(std::memory_order_relaxed);
  do {
    if (begin >= j.count) return false;
    const size_t take =
        std::min(cap, pool_policy::guided_take(j.count - begin, j.grain, threads()));
    end = std::min(j.count, begin + take);
  } while (!j.next.compare_exchange_weak(begin, end, std::memory_order_relaxed));
  return true;
}

thread_pool::left thread_pool::work(job& j, uint32_t thread, bool worker) {
  task_scope scope(this, thread);
  const uint8_t p = j.priority.load(std::memory_order_relaxed);
  // A worker in a guided job of a pool with other callers takes chunks paced to a target
  // time, so that it steps back soon when another caller starts (pool_policy).
  const bool paced = worker && j.guided && callers_ > 1;
  size_t cap = paced ? pool_policy::worker_chunk_cap(0, 0, j.grain) : SIZE_MAX;
  size_t begin, end;
  while (claim(j, begin, end, cap)) {
    const uint64_t start = paced ? now_ns() : 0;
    j.call(j.ctx, begin, end, thread);
    if (paced) cap = pool_policy::worker_chunk_cap(end - begin, now_ns() - start, j.grain);
    if (worker && j.split) {
      j.worker_rows.fetch_add(end - begin, std::memory_order_relaxed);
      const uint64_t t = now_ns();
      for (uint64_t e = j.worker_end_ns.load(std::memory_order_relaxed);
           e < t && !j.worker_end_ns.compare_exchange_weak(e, t, std::memory_order_relaxed);) {
      }
    }
    // The range's last chunk: nothing is left to claim, and a claim would only pull `next`'s
    // line from the other thread before this one can close the job or report its exit.
    if (end >= j.count) return left::done;
    if (!worker) continue;
    // More threads computing than the pool has (a caller posted since this worker joined):
    // the worker steps back, so that the pool's threads never outnumber its cores.
    for (uint32_t a = active_.load(); a > threads();)
      if (active_.compare_exchange_weak(a, a - 1)) return left::stepped_back;
    if (higher_open(p)) return left::moved;  // keeps its compute slot
  }
  return left::done;
}

bool thread_pool::reserve() {
  for (uint32_t a = active_.load(); a < threads();)
    if (active_.compare_exchange_weak(a, a + 1)) return true;
  return false;
}

int thread_pool::best_open(uint64_t skip) const {
  int best = -1;
  int best_p = -1;
  for (uint64_t m = open_.load() & ~skip; m != 0; m &= m - 1) {
    const int s = std::countr_zero(m);
    const int p = jobs_[s].priority.load(std::memory_order_relaxed);
    if (p > best_p) {
      best = s;
      best_p = p;
    }
  }
  return best;
}

bool thread_pool::higher_open(uint8_t p) const {
  for (uint64_t m = open_.load(std::memory_order_acquire); m != 0; m &= m - 1)
    if (jobs_[std::countr_zero(m)].priority.load(std::memory_order_relaxed) > p) return true;
  return false;
}

uint32_t thread_pool::acquire_slot() {
  const uint64_t all = callers_ == 64 ? ~uint64_t{0} : bit(callers_) - 1;
  for (;;) {
    uint64_t used = slots_.load();
    while ((used & all) != all) {
      const auto s = static_cast<uint32_t>(std::countr_zero(~used));
      if (slots_.compare_exchange_weak(used, used | bit(s))) return s;
    }
    std::unique_lock lock(mutex_);
    slot_waiters_.fetch_add(1);
    slot_free_.wait(lock, [&] { return (slots_.load() & all) != all; });
    slot_waiters_.fetch_sub(1);
  }
}

void thread_pool::release_slot(uint32_t slot) {
  slots_.fetch_and(~bit(slot));
  if (slot_waiters_.load() > 0) {
    { std::lock_guard lock(mutex_); }
    slot_free_.notify_one();
  }
}

void thread_pool::run(size_t count, size_t grain, mode how, job_priority priority, void* ctx,
                      call_fn call) {
  if (count == 0) return;
  if (grain == 0) grain = (count + threads() - 1) / threads();
  const bool guided = how == mode::guided, split = how == mode::split;
  auto inline_run = [&](uint32_t thread) {
    task_scope scope(this, thread);
    if (guided || split) return call(ctx, 0, count, thread);
    for (size_t b = 0; b < count; b += grain)
      call(ctx, b, std::min(count, b + grain), thread);
  };
  if (task_pool == this) return inline_run(task_thread);
  const uint32_t slot = acquire_slot();
  if (task_pool != nullptr || workers_.empty() || grain >= count) {
    inline_run(slot);
    return release_slot(slot);
  }
  job& j = jobs_[slot];
  // A plain or split job's first chunk is the caller's before the job opens: it starts at
  // once, without a read-modify-write on `next` racing the workers' first claims.
  size_t first = guided ? 0 : grain;
  if (split) {
    first = pool_policy::split_caller_rows(count, grain, threads(), j.split_ratio);
    const size_t per_worker = (count - first + workers() - 1) / workers();
    grain = std::max(grain, (per_worker + grain - 1) / grain * grain);
  }
  const uint64_t posted = split ? now_ns() : 0;
  j.ctx = ctx;
  j.call = call;
  j.count = count;
  j.grain = grain;
  j.guided = guided;
  j.split = split;
  j.worker_rows.store(0, std::memory_order_relaxed);
  j.worker_end_ns.store(0, std::memory_order_relaxed);
  j.next.store(first, std::memory_order_relaxed);
  j.exited.store(0, std::memory_order_relaxed);
  j.priority.store(static_cast<uint8_t>(priority), std::memory_order_relaxed);
  // The caller counts as computing before its job is open: else a worker could take the
  // pool's last compute slot in between and run a chunk with one thread too many.
  const bool counted = busy_pool != this;  // else counted by a busy_scope already
  if (counted) active_.fetch_add(1);
  j.state.store(++j.generation << 32, std::memory_order_release);
  open_.fetch_or(bit(slot));
  epoch_.fetch_add(1);
  // Sleeping workers are woken only when one can join: with the pool's threads all
  // computing, a wake-up would cost a context switch on a busy core for nothing.
  // sleepers_ first: it rarely changes, so the usual post (nobody asleep) reads no line that
  // a worker has just written.
  if (const uint32_t asleep = sleepers_.load();
      asleep > 0 && pool_policy::should_wake(active_.load(), threads(), asleep, true))
    wake_workers();
  if (first > 0) {
    task_scope scope(this, slot);
    call(ctx, 0, first, slot);
  }
  work(j, slot, false);
  const uint64_t caller_end = split ? now_ns() : 0;
  open_.fetch_and(~bit(slot));
  const uint64_t joined = j.state.fetch_or(closed_bit, std::memory_order_acq_rel) & count_mask;
  auto all_out = [&] { return j.exited.load(std::memory_order_acquire) == joined; };
  if (!spin_until(all_out)) {
    std::unique_lock lock(mutex_);
    done_.wait(lock, all_out);
  }
  if (split) {
    const uint64_t w_rows = j.worker_rows.load(std::memory_order_relaxed);
    const uint64_t w_end = j.worker_end_ns.load(std::memory_order_relaxed);
    j.split_ratio =
        pool_policy::update_split_ratio(j.split_ratio, count - w_rows, caller_end - posted, w_rows,
                                        w_end > posted ? w_end - posted : 0);
  }
  if (counted) release_compute();
  release_slot(slot);
}

void thread_pool::wake_workers() {
  { std::lock_guard lock(mutex_); }
  wake_.notify_all();
}

void thread_pool::release_compute() {
  const uint32_t a = active_.fetch_sub(1) - 1;
  if (pool_policy::should_wake(a, threads(), sleepers_.load(), open_.load() != 0)) wake_workers();
}

void thread_pool::worker_loop(uint32_t thread) {
  uint64_t seen = epoch_.load();  // the last epoch this worker looked at
  uint64_t skip = 0;              // slots whose current job ran out of chunks for us
  bool holding = false;           // holds a compute slot (counted in active_)
  for (;;) {
    if (stop_.load()) return;
    if (uint64_t e = epoch_.load(); e != seen) {
      seen = e;
      skip = 0;  // a job was posted since: a skipped slot may hold a new one
    }
    const int s = best_open(skip);
    if (s >= 0 && !holding) holding = reserve();
    if (s < 0 || !holding) {
      if (holding) {
        release_compute();
        holding = false;
      }
      // Nothing to join (or only jobs this worker already ran out of), or as many threads
      // computing as the pool has: wait for a post or a free compute slot. Spinning pays
      // only while this worker could join; with the pool's threads all computing it sleeps
      // at once, and posts leave it asleep until a compute slot frees with a job open
      // (release_compute): spinning then would take a core from the callers.
      auto ready = [&] {
        if (stop_.load()) return true;
        if (!pool_policy::can_join(active_.load(), threads())) return false;
        return epoch_.load() != seen || (open_.load() & ~skip) != 0;
      };
      if (!pool_policy::can_join(active_.load(), threads()) || !spin_until(ready)) {
        std::unique_lock lock(mutex_);
        sleepers_.fetch_add(1);
        wake_.wait(lock, ready);
        sleepers_.fetch_sub(1);
        wakeups_.fetch_add(1, std::memory_order_relaxed);
      }
      continue;
    }
    job& j = jobs_[s];
    uint64_t st = j.state.load(std::memory_order_acquire);
    bool joined = false;
    while (!(st & closed_bit)) {
      if (j.state.compare_exchange_weak(st, st + 1, std::memory_order_acq_rel)) {
        joined = true;
        break;
      }
    }
    if (!joined) {  // closed already: the caller did the work
      skip |= bit(static_cast<uint32_t>(s));
      continue;
    }
    const left why = work(j, thread, true);
    if (why == left::stepped_back) holding = false;
    // Out of chunks: the next pick should not be this job again until something is posted.
    if (why == left::done) skip |= bit(static_cast<uint32_t>(s));
    j.exited.fetch_add(1, std::memory_order_acq_rel);
    std::lock_guard lock(mutex_);
    done_.notify_all();
  }
}

}  // namespace tokenmill::cpu
