#pragma once
/// ITL attribution, free of CAF (STYLE.md §2): the router keeps, per request, the decode
/// step behind every token it releases, and names the cause of each gap that is a spike
/// (DESIGN.md §7: "why does ITL spike").
#include <cstdint>
#include <vector>

#include "common/api_types.hpp"

namespace tokenmill {

/// When a gap counts as a spike: longer than `factor` times the request's typical gap
/// (the median of its earlier gaps) and longer by at least `min_excess_ns`.
struct itl_spike_rule {
  double factor = 1.5;
  int64_t min_excess_ns = 2'000'000;
  uint32_t warmup_gaps = 3;  ///< gaps needed before a typical gap exists
};

/// The steps of one request's tokens and the causes of its spikes.
class itl_attribution {
 public:
  explicit itl_attribution(itl_spike_rule rule = {}) : rule_(rule) {}

  /// Token `index` was released at `released_ns`, produced by the step described by the
  /// other fields (router clock; step times 0 for the first token, which prefill makes).
  /// Records it, classifies the gap before it, and returns the cause (none: no spike).
  itl_cause add(uint32_t index, int64_t released_ns, int64_t step_start_ns, int64_t step_end_ns,
                uint32_t batch, uint32_t prefill_tokens);

  const std::vector<step_record>& steps() const { return steps_; }
  /// Spikes by cause, indexed by itl_cause (size itl_cause::count_).
  std::vector<uint32_t> spikes() const { return spikes_; }

 private:
  itl_cause classify(const step_record& prev, const step_record& cur, int64_t typical) const;
  itl_spike_rule rule_;
  std::vector<step_record> steps_;
  std::vector<int64_t> gaps_;
  std::vector<uint32_t> spikes_ = std::vector<uint32_t>(static_cast<size_t>(itl_cause::count_));
};

}  // namespace tokenmill
