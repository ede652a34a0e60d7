#pragma once
/// The planner's decisions, free of CAF (STYLE.md §2): given what the prefill and decode
/// workers report and the TTFT/ITL the routers measured over the last interval, should one
/// worker change role (prefill <-> decode) to relieve the bottleneck? The supervisor gathers
/// the signals on a timer, asks decide_flip() and carries out the answer (change_role).
///
/// Pressure of a role: the largest of
///   - its SLO ratio: measured TTFT (prefill) or ITL (decode) at the percentile / the SLO;
///   - its work ratio: prefill (queued + running jobs) / (workers * prefill_jobs_per_worker),
///     decode (running + queued sequences) / (workers * decode_max_batch);
///   - its KV ratio: the fullest available worker's kv_used / kv_total.
/// 1.0 means "at its limit". A flip moves one worker from the donor role to the bottleneck
/// when all of these hold (hysteresis, so the split never oscillates):
///   - the bottleneck's pressure is at least `high` and at least `band` times the donor's;
///   - the donor, one worker smaller, would stay below `high` (its pressure scaled by
///     n / (n - 1)): a flip never creates the opposite bottleneck;
///   - the same direction held for `intervals` consecutive decisions (a streak; any other
///     outcome resets it);
///   - `cooldown_ms` passed since the last flip, and no role change is in flight;
///   - the donor keeps at least its minimum count of available workers, and at least one.
/// The worker flipped is the donor's available worker with the least work in flight.
/// Draining or down workers are not available: they count for neither role.
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/ids.hpp"

namespace tokenmill {

/// The manifest's `planner:` section (absent: no planner). Times in ms.
struct planner_config {
  uint32_t ttft_ms = 0;                  ///< TTFT SLO at `percentile` (0: no TTFT objective)
  uint32_t itl_ms = 0;                   ///< ITL SLO at `percentile` (0: no ITL objective)
  uint32_t percentile = 90;              ///< of the TTFT and ITL samples of one interval, 1..100
  uint32_t interval_ms = 2000;           ///< one decision per interval
  uint32_t min_prefill = 1;              ///< available prefill workers never go below this
  uint32_t min_decode = 1;               ///< available decode workers never go below this
  uint32_t cooldown_ms = 10000;          ///< no flip within this long after the last one
  uint32_t intervals = 3;                ///< consecutive decisions a direction must hold to flip
  double high = 1.0;                     ///< pressure at which a role is a bottleneck
  double band = 1.5;                     ///< bottleneck pressure / donor pressure needed to flip
  uint32_t prefill_jobs_per_worker = 4;  ///< queued + running jobs that saturate a prefill worker
  uint32_t decode_max_batch = 64;        ///< sequences per decode step (from the manifest)
  uint32_t change_timeout_ms = 60000;    ///< a role change unanswered this long is abandoned
  /// After a flip to decode, at most this many running sequences move live from the
  /// busiest decode workers to the new one (plan_rebalance); 0: none move.
  uint32_t rebalance_moves = 16;
};

/// One prefill or decode worker as the planner sees it (from its worker_status).
struct planner_worker {
  worker_id id = 0;
  role kind = role::decode;
  bool up = true;
  bool draining = false;  ///< told to change role or to drain: not available
  uint32_t queued = 0;    ///< requests or jobs waiting
  uint32_t running = 0;   ///< sequences in the batch or jobs computing
  uint32_t kv_used = 0;   ///< blocks
  uint32_t kv_total = 0;  ///< blocks (0: unknown)
};

/// Everything one decision looks at.
struct planner_signals {
  std::vector<planner_worker> workers;
  std::optional<double>
      ttft_ms;                   ///< measured at the percentile over the interval (none: no sample)
  std::optional<double> itl_ms;  ///< likewise
  int64_t now_ms = 0;            ///< a monotonic clock, for the cooldown
  bool change_in_flight = false;  ///< a role change is under way: decide nothing
};

/// The numbers behind a decision (for logs, status and metrics).
struct planner_evidence {
  uint32_t prefill_workers = 0;  ///< available
  uint32_t decode_workers = 0;   ///< available
  double prefill_pressure = 0;
  double decode_pressure = 0;
  std::optional<double> ttft_ms;
  std::optional<double> itl_ms;
  uint32_t streak = 0;  ///< consecutive decisions in the direction of `to` (0: none)
};

/// The planner's answer: one flip, or keep (and why).
struct planner_decision {
  bool flip = false;
  worker_id worker = 0;  ///< when flip
  role from = role::decode;
  role to = role::decode;
  std::string why;  ///< one line: the evidence in words
  /// The rule that decided, one word: flip, in_flight, calm (no role at its limit),
  /// within_band, min_count, donor_limit, streak (building), cooldown.
  std::string rule;
  planner_evidence evidence;
};

/// What the planner remembers between decisions (hysteresis).
struct planner_memory {
  std::optional<int64_t> last_flip_ms;  ///< when the last flip was decided or finished
  std::optional<role> streak_to;        ///< the bottleneck of the current streak
  uint32_t streak = 0;
};

/// A configuration's problem in words, or empty when it is usable.
std::string validate(const planner_config& c);

/// The `p`-th percentile (0..100, nearest rank) of `samples`; none when empty.
std::optional<double> percentile_of(std::vector<double> samples, double p);

/// One decision (see the file comment). Updates `memory`: the streak, and last_flip_ms
/// when it decides a flip.
planner_decision decide_flip(const planner_config& cfg, const planner_signals& s,
                             planner_memory& memory);

/// Pressure of `r` (prefill or decode) among `workers` (see the file comment); 0 without
/// an available worker of that role.
double role_pressure(const planner_config& cfg, role r, std::span<const planner_worker> workers,
                     const std::optional<double>& measured_ms);

/// One decode worker's share of a rebalance: move `count` of its sequences to the target.
struct rebalance_move {
  worker_id from = 0;
  uint32_t count = 0;
};

/// After `target` became a decode worker: which available decode workers hand it how many
/// sequences (queued + running) so that the loads even out. Each donor gives what it holds
/// above the fair share (the ceiling of the total over the available decode workers, the
/// target included), the busiest first, until the target reaches the fair share or
/// `max_moves` moves are planned. Nothing when the target is not an available decode
/// worker. A donor is never left below the share, so a rebalance never creates the
/// imbalance it removes.
std::vector<rebalance_move> plan_rebalance(std::span<const planner_worker> workers,
                                           worker_id target, uint32_t max_moves);

}  // namespace tokenmill
