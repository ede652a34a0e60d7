#include "actors/supervisor/planner_policy.hpp"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

namespace tokenmill {
namespace {

bool available(const planner_worker& w, role r) {
  return w.kind == r && w.up && !w.draining;
}

uint32_t count_available(std::span<const planner_worker> workers, role r) {
  return static_cast<uint32_t>(std::count_if(workers.begin(), workers.end(),
                                             [r](const auto& w) { return available(w, r); }));
}

std::string ms_or_none(const std::optional<double>& v) {
  return v ? fmt::format("{:.1f} ms", *v) : std::string("no sample");
}

role other(role r) {
  return r == role::prefill ? role::decode : role::prefill;
}

}  // namespace

std::string validate(const planner_config& c) {
  if (c.ttft_ms == 0 && c.itl_ms == 0) return "neither ttft_ms nor itl_ms is set";
  if (c.percentile == 0 || c.percentile > 100) return "percentile must be 1..100";
  if (c.interval_ms == 0) return "interval_ms must be positive";
  if (c.intervals == 0) return "intervals must be at least 1";
  if (c.high <= 0) return "high must be positive";
  if (c.band < 1) return "band must be at least 1";
  if (c.prefill_jobs_per_worker == 0) return "prefill_jobs_per_worker must be positive";
  if (c.decode_max_batch == 0) return "decode_max_batch must be positive";
  return {};
}

std::optional<double> percentile_of(std::vector<double> samples, double p) {
  if (samples.empty()) return std::nullopt;
  std::sort(samples.begin(), samples.end());
  double rank = std::ceil(std::clamp(p, 0.0, 100.0) / 100.0 * static_cast<double>(samples.size()));
  size_t i = rank < 1 ? 0 : static_cast<size_t>(rank) - 1;
  return samples[std::min(i, samples.size() - 1)];
}

double role_pressure(const planner_config& cfg, role r, std::span<const planner_worker> workers,
                     const std::optional<double>& measured_ms) {
  uint32_t n = count_available(workers, r);
  if (n == 0) return 0;
  double work = 0, kv = 0;
  for (const auto& w : workers) {
    if (!available(w, r)) continue;
    work += w.queued + w.running;
    if (w.kv_total > 0) kv = std::max(kv, static_cast<double>(w.kv_used) / w.kv_total);
  }
  double per_worker =
      r == role::prefill ? cfg.prefill_jobs_per_worker : static_cast<double>(cfg.decode_max_batch);
  double pressure = std::max(work / (n * per_worker), kv);
  uint32_t slo = r == role::prefill ? cfg.ttft_ms : cfg.itl_ms;
  if (slo > 0 && measured_ms) pressure = std::max(pressure, *measured_ms / slo);
  return pressure;
}

planner_decision decide_flip(const planner_config& cfg, const planner_signals& s,
                             planner_memory& memory) {
  planner_decision d;
  auto& ev = d.evidence;
  ev.prefill_workers = count_available(s.workers, role::prefill);
  ev.decode_workers = count_available(s.workers, role::decode);
  ev.prefill_pressure = role_pressure(cfg, role::prefill, s.workers, s.ttft_ms);
  ev.decode_pressure = role_pressure(cfg, role::decode, s.workers, s.itl_ms);
  ev.ttft_ms = s.ttft_ms;
  ev.itl_ms = s.itl_ms;
  auto numbers = fmt::format(
      "prefill {} workers pressure {:.2f} (TTFT p{} {} vs {} ms), decode {} workers pressure "
      "{:.2f} (ITL p{} {} vs {} ms)",
      ev.prefill_workers, ev.prefill_pressure, cfg.percentile, ms_or_none(s.ttft_ms), cfg.ttft_ms,
      ev.decode_workers, ev.decode_pressure, cfg.percentile, ms_or_none(s.itl_ms), cfg.itl_ms);
  auto keep = [&](std::string rule, std::string why, bool reset_streak) {
    d.rule = std::move(rule);
    if (reset_streak) {
      memory.streak = 0;
      memory.streak_to.reset();
    }
    ev.streak = memory.streak;
    d.flip = false;
    d.why = fmt::format("keep: {}; {}", why, numbers);
    return d;
  };

  if (s.change_in_flight) return keep("in_flight", "a role change is in flight", false);

  // The bottleneck and the donor.
  role to = ev.prefill_pressure >= ev.decode_pressure ? role::prefill : role::decode;
  role from = other(to);
  double hot = to == role::prefill ? ev.prefill_pressure : ev.decode_pressure;
  double cold = to == role::prefill ? ev.decode_pressure : ev.prefill_pressure;
  uint32_t donors = from == role::prefill ? ev.prefill_workers : ev.decode_workers;
  uint32_t min_donors = from == role::prefill ? cfg.min_prefill : cfg.min_decode;

  if (hot < cfg.high)
    return keep(
        "calm",
        fmt::format("no role is at its limit (highest pressure {:.2f} < {:.2f})", hot, cfg.high),
        true);
  if (hot < cfg.band * cold)
    return keep("within_band",
                fmt::format("{} pressure {:.2f} is not {:.2f}x {}'s {:.2f}", to_string(to), hot,
                            cfg.band, to_string(from), cold),
                true);
  if (donors <= min_donors || donors <= 1)
    return keep("min_count",
                fmt::format("{} is the bottleneck but {} has {} available workers (minimum {})",
                            to_string(to), to_string(from), donors, std::max(min_donors, 1u)),
                true);
  double cold_after = cold * donors / (donors - 1);
  if (cold_after >= cfg.high)
    return keep("donor_limit",
                fmt::format("{} is the bottleneck but {} would reach pressure {:.2f} with one "
                            "worker less",
                            to_string(to), to_string(from), cold_after),
                true);

  // The direction holds this interval: extend or start its streak.
  if (memory.streak_to == to) {
    ++memory.streak;
  } else {
    memory.streak_to = to;
    memory.streak = 1;
  }
  ev.streak = memory.streak;
  if (memory.streak < cfg.intervals)
    return keep("streak",
                fmt::format("{} is the bottleneck for {} of {} intervals", to_string(to),
                            memory.streak, cfg.intervals),
                false);
  if (memory.last_flip_ms && s.now_ms - *memory.last_flip_ms < cfg.cooldown_ms)
    return keep("cooldown",
                fmt::format("{} is the bottleneck but the last flip was {} ms ago (cooldown {} ms)",
                            to_string(to), s.now_ms - *memory.last_flip_ms, cfg.cooldown_ms),
                false);

  // The donor's available worker with the least work in flight (lowest id on a tie).
  const planner_worker* pick = nullptr;
  for (const auto& w : s.workers) {
    if (!available(w, from)) continue;
    if (!pick || w.queued + w.running < pick->queued + pick->running ||
        (w.queued + w.running == pick->queued + pick->running && w.id < pick->id))
      pick = &w;
  }
  d.flip = true;
  d.rule = "flip";
  d.worker = pick->id;
  d.from = from;
  d.to = to;
  d.why =
      fmt::format("flip worker {} {} -> {}: {} is the bottleneck for {} intervals; {}", pick->id,
                  to_string(from), to_string(to), to_string(to), memory.streak, numbers);
  memory.last_flip_ms = s.now_ms;
  memory.streak = 0;
  memory.streak_to.reset();
  return d;
}

std::vector<rebalance_move> plan_rebalance(std::span<const planner_worker> workers,
                                           worker_id target, uint32_t max_moves) {
  const planner_worker* t = nullptr;
  uint64_t total = 0, n = 0;
  for (const auto& w : workers) {
    if (!available(w, role::decode)) continue;
    total += w.queued + w.running;
    ++n;
    if (w.id == target) t = &w;
  }
  std::vector<rebalance_move> moves;
  if (!t || n < 2 || max_moves == 0) return moves;
  const uint64_t share = (total + n - 1) / n;
  const uint64_t held = t->queued + t->running;
  if (held >= share) return moves;
  uint64_t want = std::min<uint64_t>(share - held, max_moves);
  std::vector<const planner_worker*> donors;
  for (const auto& w : workers)
    if (available(w, role::decode) && w.id != target && w.queued + w.running > share)
      donors.push_back(&w);
  // The busiest first; ties by id, so that plans are stable.
  std::sort(donors.begin(), donors.end(), [](const auto* a, const auto* b) {
    auto la = a->queued + a->running, lb = b->queued + b->running;
    return la != lb ? la > lb : a->id < b->id;
  });
  for (const auto* d : donors) {
    if (want == 0) break;
    uint64_t give = std::min<uint64_t>(d->queued + d->running - share, want);
    moves.push_back({d->id, static_cast<uint32_t>(give)});
    want -= give;
  }
  return moves;
}

}  // namespace tokenmill
