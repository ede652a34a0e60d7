#include "actors/router/routing_policy.hpp"

#include <algorithm>

namespace tokenmill {

admission admit(uint32_t inflight, uint64_t queued_prompt_tokens, uint32_t prompt_tokens,
                const admission_limits& limits) {
  if (inflight >= limits.max_inflight) return admission::overloaded;
  // A single prompt larger than the whole budget is still admitted on an idle router:
  // the context-length check, not admission, decides whether it is too long.
  if (queued_prompt_tokens > 0 &&
      queued_prompt_tokens + prompt_tokens > limits.max_queued_prompt_tokens)
    return admission::overloaded;
  return admission::accept;
}

std::optional<size_t> pick_decode(std::span<const decode_candidate> candidates) {
  std::optional<size_t> best;
  for (size_t i = 0; i < candidates.size(); ++i) {
    if (candidates[i].draining) continue;
    if (!best) {
      best = i;
      continue;
    }
    const auto& a = candidates[i];
    const auto& b = candidates[*best];
    if (a.active != b.active) {
      if (a.active < b.active) best = i;
    } else if (a.overlap_blocks != b.overlap_blocks) {
      if (a.overlap_blocks > b.overlap_blocks) best = i;
    } else if (a.id < b.id) {
      best = i;
    }
  }
  return best;
}

std::optional<size_t> pick_prefill(std::span<const prefill_candidate> candidates,
                                   uint32_t prompt_tokens, uint32_t block_tokens) {
  std::optional<size_t> best;
  uint64_t best_cost = 0;
  for (size_t i = 0; i < candidates.size(); ++i) {
    const auto& c = candidates[i];
    if (c.draining) continue;
    uint64_t cached = std::min<uint64_t>(uint64_t{c.overlap_blocks} * block_tokens, prompt_tokens);
    uint64_t cost = c.queued_tokens + (prompt_tokens - cached);
    if (!best || cost < best_cost || (cost == best_cost && c.id < candidates[*best].id)) {
      best = i;
      best_cost = cost;
    }
  }
  return best;
}

bool prefill_locally(uint32_t prompt_tokens, uint32_t cached_tokens, uint32_t threshold,
                     bool any_prefill_worker) {
  if (!any_prefill_worker) return true;
  if (threshold == 0) return false;
  uint32_t uncached = prompt_tokens > cached_tokens ? prompt_tokens - cached_tokens : 0;
  return uncached < threshold;
}

bool overlap_matters(bool kv_store_known, uint32_t prompt_tokens, uint32_t block_tokens,
                     size_t decode_workers, size_t prefill_workers,
                     uint32_t local_prefill_threshold) {
  if (!kv_store_known || prompt_tokens < block_tokens) return false;
  return decode_workers > 1 || prefill_workers > 1 ||
         (local_prefill_threshold > 0 && prefill_workers > 0);
}

}  // namespace tokenmill
