#include "actors/router/itl_attribution.hpp"

#include <algorithm>

namespace tokenmill {
namespace {
int64_t median(std::vector<int64_t> v) {
  auto mid = v.begin() + static_cast<std::ptrdiff_t>(v.size() / 2);
  std::nth_element(v.begin(), mid, v.end());
  return *mid;
}
}  // namespace

itl_cause itl_attribution::add(uint32_t index, int64_t released_ns, int64_t step_start_ns,
                               int64_t step_end_ns, uint32_t batch, uint32_t prefill_tokens) {
  step_record cur{index, released_ns,    step_start_ns,  step_end_ns,
                  batch, prefill_tokens, itl_cause::none};
  if (!steps_.empty()) {
    const auto& prev = steps_.back();
    const int64_t gap = released_ns - prev.released_ns;
    if (gaps_.size() >= rule_.warmup_gaps) {
      const int64_t typical = median(gaps_);
      if (static_cast<double>(gap) > rule_.factor * static_cast<double>(typical) &&
          gap - typical >= rule_.min_excess_ns)
        cur.cause = classify(prev, cur, typical);
    }
    gaps_.push_back(gap);
  }
  if (cur.cause != itl_cause::none) ++spikes_[static_cast<size_t>(cur.cause)];
  steps_.push_back(cur);
  return cur.cause;
}

itl_cause itl_attribution::classify(const step_record& prev, const step_record& cur,
                                    int64_t typical) const {
  // The most specific evidence first: what the decode worker did in the iteration that
  // produced the late token.
  if (cur.prefill_tokens > 0) return itl_cause::prefill;
  if (cur.step_start_ns == 0 || prev.step_end_ns == 0) return itl_cause::other;
  if (cur.batch > prev.batch) return itl_cause::batch_growth;
  const int64_t half = typical / 2;
  // The worker sat between the two steps (busy receiving KV or admitting sequences).
  if (cur.step_start_ns - prev.step_end_ns > half) return itl_cause::transfer_wait;
  // The step was on time but its token reached the router late.
  const int64_t delivery = cur.released_ns - cur.step_end_ns;
  const int64_t prev_delivery = prev.released_ns - prev.step_end_ns;
  if (delivery - prev_delivery > half) return itl_cause::network;
  return itl_cause::slow_step;
}

}  // namespace tokenmill
