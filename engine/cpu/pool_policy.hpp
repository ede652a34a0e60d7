#pragma once
/// The decisions of cpu::thread_pool when several callers share it (issue 21 item 4), as plain
/// functions: when an idle worker spins, sleeps or is woken, and how large a chunk a worker
/// takes from a guided job. The pool applies them; tests call them directly.
///
/// Measured on the 2-core VM (serve --compute-pool shared, 125m f16, concurrency 4, a prefill
/// and a decode worker both busy most of the time): idle workers that spun on every post spent
/// 12% of a core spinning while the two callers already filled both cores (and were woken ~500
/// times a second for it); a worker that had joined a prefill job in a decode step's gap kept
/// computing chunks of 2-8 ms with three threads on two cores before it could step back.
#include <algorithm>
#include <cstddef>
#include <cstdint>

namespace tokenmill::cpu::pool_policy {

/// Whether an idle worker may join a job now: only while fewer than `threads` threads compute
/// (callers with a job or in a busy_scope, and joined workers).
constexpr bool can_join(uint32_t active, uint32_t threads) {
  return active < threads;
}

/// Whether a post, or a compute slot freed, should wake sleeping workers: only when one of
/// them could join an open job. Waking one that then finds every core taken costs a context
/// switch on a busy core for nothing.
constexpr bool should_wake(uint32_t active, uint32_t threads, uint32_t sleepers, bool job_open) {
  return sleepers > 0 && job_open && can_join(active, threads);
}

/// Indices a claim of a guided job takes: 1 / (2 * threads) of what is left, rounded down to a
/// multiple of `unit`, at least `unit` (the range's last chunk may be shorter).
constexpr size_t guided_take(size_t remaining, size_t unit, uint32_t threads) {
  const size_t split = 2 * size_t{threads};
  return std::max(unit, remaining / split / unit * unit);
}

/// How long a worker's chunk of a guided job should take when other callers share the pool:
/// a caller that starts computing waits at most about this long, with one thread too many on
/// the cores, for a worker in another caller's job to step back.
inline constexpr uint64_t worker_chunk_target_ns = 250'000;

/// The most indices a worker's next claim of a guided job takes when the pool has other
/// callers: what the target time allows at the pace of its previous chunk of the same job
/// (`last_take` indices in `last_ns`), in multiples of `unit`, at least `unit`, at most twice
/// the previous take (one chunk slowed by preemption or a cold cache does not swing it far).
/// With no previous chunk (`last_take` 0) it takes one unit. guided_take still applies, so
/// chunks shrink at the range's end as before.
constexpr size_t worker_chunk_cap(size_t last_take, uint64_t last_ns, size_t unit,
                                  uint64_t target_ns = worker_chunk_target_ns) {
  if (last_take == 0) return unit;
  if (last_ns == 0) return 2 * last_take;
  const auto fit =
      static_cast<size_t>(static_cast<double>(last_take) * static_cast<double>(target_ns) /
                          static_cast<double>(last_ns));
  return std::clamp(fit / unit * unit, unit, std::max(unit, 2 * last_take / unit * unit));
}

}  // namespace tokenmill::cpu::pool_policy
