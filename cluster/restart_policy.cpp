#include "cluster/restart_policy.hpp"

#include <algorithm>

namespace tokenmill {

restart_decision decide_restart(std::span<const node_life> history, const restart_config& cfg,
                                int64_t now_ms) {
  restart_decision d;
  if (history.empty()) return d;
  // The death just seen counts; so does each earlier one whose following restart did not
  // last restart_stable_ms. The launch's own start (history[0]) is no restart: however
  // short its life, nothing before it counts.
  uint32_t streak = 1;
  for (size_t i = history.size() - 1; i >= 1; --i) {
    if (history[i].died_ms - history[i].started_ms >= restart_stable_ms) break;
    ++streak;
  }
  d.streak = streak;
  if (streak > cfg.max) return d;
  int64_t cap = std::max<int64_t>(restart_backoff_cap_ms, cfg.backoff_ms);
  int64_t delay = cfg.backoff_ms;
  for (uint32_t k = 1; k < streak && delay < cap; ++k)
    delay *= 2;
  d.delay_ms = std::min(delay, cap);
  d.at_ms = history.back().died_ms + d.delay_ms;
  d.what = now_ms >= d.at_ms ? restart_decision::action::restart_now
                             : restart_decision::action::restart_later;
  return d;
}

}  // namespace tokenmill
