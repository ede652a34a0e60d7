#pragma once
/// Small summary statistics over samples (milliseconds, nanoseconds — the caller's unit).
#include <cstddef>
#include <cstdint>
#include <vector>

namespace tokenmill {

struct summary_stats {
  size_t count = 0;
  double mean = 0, p50 = 0, p90 = 0, p99 = 0, min = 0, max = 0;
};

/// Percentile by linear interpolation between closest ranks; q in [0, 1].
/// `sorted` must be sorted ascending; returns 0 for an empty vector.
double percentile_sorted(const std::vector<double>& sorted, double q);

/// Summary of `samples` (copied and sorted internally).
summary_stats summarize(std::vector<double> samples);

}  // namespace tokenmill
