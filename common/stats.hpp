#pragma once
/// Small summary statistics over samples (milliseconds, nanoseconds — the caller's unit).
/// The one place the tree computes a median or a percentile: benchmarks, reports and the
/// client all call these, so every figure named "p50" means the same thing.
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

/// Percentile of unsorted `samples` (copied and sorted), as percentile_sorted; 0 when empty.
double percentile(std::vector<double> samples, double q);

/// Median of unsorted `samples`: the middle sample, or for an even count the mean of the
/// two middle ones (so equal to percentile(samples, 0.5)); 0 when empty.
double median(std::vector<double> samples);

/// Summary of `samples` (copied and sorted internally).
summary_stats summarize(std::vector<double> samples);

}  // namespace tokenmill
