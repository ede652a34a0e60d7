#pragma once
/// The bottleneck finder, a policy free of CAF (STYLE.md §2): given the per-worker snapshot
/// of the request log's recent window, it names the worker that limits the cluster and
/// why, with numbers. /debug/snapshot and `tokenmill top` show its verdict.
#include <string>

#include "frontend/request_log.hpp"

namespace tokenmill {

/// What find_bottleneck concluded.
struct bottleneck {
  bool found = false;
  std::string worker;  ///< when found
  /// found: "<worker>: <why, with numbers>"; else why nothing is ("none (...)" detail).
  std::string line;
};

/// Names the worker that limits the cluster, with evidence:
///  1. among several workers of a role, one whose per-request stage time is >= 1.5x the
///     median of its peers (and the gap matters: >= 10% of the mean TTFT), or whose queue
///     is deep (>= 4) and >= 2x its peers';
///  2. otherwise ITL spikes (>= 3 on a decode worker and its p99 >= 2x p50): the decode
///     worker with the most, and the dominant cause;
///  3. otherwise the stage that dominates the mean TTFT, on the worker of that role with
///     the largest share.
/// Nothing when no request finished in the window and every queue is empty.
bottleneck find_bottleneck(const cluster_snapshot& s);

}  // namespace tokenmill
