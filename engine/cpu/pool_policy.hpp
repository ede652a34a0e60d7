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

/// A split job (thread_pool::parallel_for_split) gives its caller one chunk and its workers
/// the rest in equal chunks, one each. The caller's share follows the measured pace of the
/// two sides: `ratio` is the caller's rows per second over the workers' together, each timed
/// from the post to the end of its last chunk (so a worker's late start counts against it).
/// Equal threads that start at once have ratio 1 / (threads - 1) and split evenly. On the
/// 2-vCPU VM one vCPU ran its chunks 10-20 % slower than the other for minutes at a time,
/// either one, and the faster waited for it at each of a decode step's ~50 barriers.
inline constexpr double split_ratio_min = 0.2;  ///< measured ratios are clamped to this
inline constexpr double split_ratio_max = 5.0;  ///< and this (a preempted thread's outlier)
inline constexpr double split_alpha = 0.25;     ///< weight of the newest measurement

/// The ratio of equal threads: what a caller's estimate starts from.
constexpr double even_split_ratio(uint32_t threads) {
  return threads > 1 ? 1.0 / (threads - 1) : 1.0;
}

/// The estimate after a split job in which the caller computed `caller_rows` in `caller_ns`
/// and the workers `worker_rows` by `worker_ns` (both from the post). Unchanged when either
/// side did nothing or was not timed.
constexpr double update_split_ratio(double ratio, uint64_t caller_rows, uint64_t caller_ns,
                                    uint64_t worker_rows, uint64_t worker_ns) {
  if (caller_rows == 0 || worker_rows == 0 || caller_ns == 0 || worker_ns == 0) return ratio;
  const double measured = (static_cast<double>(caller_rows) / static_cast<double>(caller_ns)) /
                          (static_cast<double>(worker_rows) / static_cast<double>(worker_ns));
  return (1 - split_alpha) * ratio +
         split_alpha * std::clamp(measured, split_ratio_min, split_ratio_max);
}

/// The caller's chunk of a split job of `count` indices over `threads` threads: its share
/// ratio / (ratio + 1) of the range, in whole `unit`s, kept between a half and one and a half
/// of an even split's chunk (and below the whole range, so that workers have a chunk).
constexpr size_t split_caller_rows(size_t count, size_t unit, uint32_t threads, double ratio) {
  if (threads <= 1 || count <= unit) return count;
  const double even = static_cast<double>(count) / threads;
  const double want =
      std::clamp(static_cast<double>(count) * ratio / (ratio + 1), 0.5 * even, 1.5 * even);
  const size_t rows = (static_cast<size_t>(want) + unit / 2) / unit * unit;
  return std::clamp(rows, unit, (count - 1) / unit * unit);
}

}  // namespace tokenmill::cpu::pool_policy
