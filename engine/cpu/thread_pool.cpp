#include "engine/cpu/thread_pool.hpp"

#include <algorithm>
#include <chrono>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace tokenmill::cpu {
namespace {

/// True while this thread runs a task of some pool: nested parallel_for runs inline.
thread_local bool in_task = false;

/// How long an idle participant spins before sleeping. A forward pass issues a
/// parallel_for every few microseconds to milliseconds; 200 us covers the gaps between
/// them without burning a core when the engine is idle.
constexpr auto spin_for = std::chrono::microseconds(200);

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#endif
}

/// Spins until pred() holds or spin_for has passed; returns pred().
template <class Pred>
bool spin_until(Pred pred) {
  auto start = std::chrono::steady_clock::now();
  for (uint32_t i = 1;; ++i) {
    if (pred()) return true;
    cpu_relax();
    if (i % 64 == 0 && std::chrono::steady_clock::now() - start > spin_for) return pred();
  }
}

}  // namespace

thread_pool::thread_pool(uint32_t threads) {
  if (threads == 0) threads = std::max(1u, std::thread::hardware_concurrency());
  workers_.reserve(threads - 1);
  for (uint32_t t = 1; t < threads; ++t)
    workers_.emplace_back([this, t] { worker_loop(t); });
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

bool thread_pool::claim(size_t& begin, size_t& end) {
  if (!guided_) {
    begin = next_.fetch_add(grain_, std::memory_order_relaxed);
    end = std::min(count_, begin + grain_);
    return begin < count_;
  }
  const size_t split = 2 * size();
  begin = next_.load(std::memory_order_relaxed);
  do {
    if (begin >= count_) return false;
    const size_t take = std::max(grain_, (count_ - begin) / split / grain_ * grain_);
    end = std::min(count_, begin + take);
  } while (!next_.compare_exchange_weak(begin, end, std::memory_order_relaxed));
  return true;
}

void thread_pool::work(uint32_t thread) {
  bool outer = in_task;
  in_task = true;
  size_t begin, end;
  while (claim(begin, end))
    call_(ctx_, begin, end, thread);
  in_task = outer;
}

constexpr uint64_t closed_bit = uint64_t{1} << 31;
constexpr uint64_t count_mask = closed_bit - 1;

void thread_pool::run(size_t count, size_t grain, bool guided, void* ctx, call_fn call) {
  if (count == 0) return;
  size_t parts = size();
  if (grain == 0) grain = (count + parts - 1) / parts;
  if (in_task || workers_.empty() || grain >= count) {
    if (guided) return call(ctx, 0, count, 0);
    for (size_t b = 0; b < count; b += grain)
      call(ctx, b, std::min(count, b + grain), 0);
    return;
  }
  std::lock_guard submit(submit_);
  ctx_ = ctx;
  call_ = call;
  count_ = count;
  grain_ = grain;
  guided_ = guided;
  next_.store(0, std::memory_order_relaxed);
  exited_.store(0, std::memory_order_relaxed);
  {
    std::lock_guard lock(mutex_);
    state_.store(++generation_ << 32, std::memory_order_release);
  }
  wake_.notify_all();
  work(0);
  const uint64_t joined = state_.fetch_or(closed_bit, std::memory_order_acq_rel) & count_mask;
  auto all_out = [&] { return exited_.load(std::memory_order_acquire) == joined; };
  if (!spin_until(all_out)) {
    std::unique_lock lock(mutex_);
    done_.wait(lock, all_out);
  }
}

void thread_pool::worker_loop(uint32_t thread) {
  uint64_t seen = 0;  // generation of the last job this worker looked at
  for (;;) {
    auto ready = [&] {
      return (state_.load(std::memory_order_acquire) >> 32) != seen ||
             stop_.load(std::memory_order_relaxed);
    };
    if (!spin_until(ready)) {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, ready);
    }
    if (stop_.load()) return;
    uint64_t s = state_.load(std::memory_order_acquire);
    seen = s >> 32;
    bool joined = false;
    while (!(s & closed_bit) && (s >> 32) == seen) {
      if (state_.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel)) {
        joined = true;
        break;
      }
    }
    if (!joined) continue;  // closed already: the caller did the work
    work(thread);
    exited_.fetch_add(1, std::memory_order_acq_rel);
    std::lock_guard lock(mutex_);
    done_.notify_one();
  }
}

}  // namespace tokenmill::cpu
