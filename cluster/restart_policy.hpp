#pragma once
/// When `tokenmill launch` restarts a node process that died after the cluster was ready
/// (DESIGN.md §1: the supervisor "restarts nodes through the launcher"). CAF-free and
/// tested as plain functions (STYLE.md §2); the launcher only records lives and acts.
///
/// The policy: deaths in a row form a *streak*; a node that stayed up for at least
/// `restart_stable_ms` after a restart ends its streak (its earlier deaths are forgiven).
/// Restart k of a streak (k = 1, 2, ...) waits backoff_ms x 2^(k-1) after the death,
/// never more than `restart_backoff_cap_ms`; the (max+1)-th death of a streak gives up.
/// With the defaults (max 5, 500 ms) the waits are 0.5, 1, 2, 4 and 8 s.
#include <cstdint>
#include <span>

namespace tokenmill {

/// The manifest's `restart: {max, backoff_ms}` (cluster-wide; only the launcher reads it).
struct restart_config {
  uint32_t max = 5;           ///< restarts in one streak; 0 = never restart a node
  uint32_t backoff_ms = 500;  ///< wait before the first restart of a streak, ms; doubles after
};

/// A node that stayed up this long after a restart is stable again: its streak ends, ms.
inline constexpr int64_t restart_stable_ms = 60'000;
/// No restart waits longer than this after a death, ms (unless backoff_ms itself is longer).
inline constexpr int64_t restart_backoff_cap_ms = 30'000;

/// One life of a node process, from its spawn to its death (launcher's steady clock, ms).
struct node_life {
  int64_t started_ms = 0;
  int64_t died_ms = 0;
};

/// What to do about the death that ended the last life of a history.
struct restart_decision {
  enum class action {
    restart_now,    ///< at_ms has passed
    restart_later,  ///< restart at at_ms
    give_up,        ///< the streak has more than max deaths (or max is 0)
  };
  action what = action::give_up;
  int64_t at_ms = 0;     ///< when to restart: the death plus delay_ms (0 when giving up)
  int64_t delay_ms = 0;  ///< backoff after the death, ms (0 when giving up)
  /// Deaths in the current streak, the last one included: for a restart, its number
  /// ("restart 2 of 5"); when giving up, how many deaths it took.
  uint32_t streak = 0;
};

/// Decides about the node whose lives (oldest first, the first being the launch's own
/// start) are `history`; the last life has just ended. An empty history gives give_up
/// with streak 0.
restart_decision decide_restart(std::span<const node_life> history, const restart_config& cfg,
                                int64_t now_ms);

}  // namespace tokenmill
