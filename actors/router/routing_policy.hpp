#pragma once
/// The router's decisions, free of CAF (STYLE.md §2): admission, choice of decode and
/// prefill worker, and conditional disaggregation.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>

#include "common/ids.hpp"

namespace tokenmill {

/// Bounds that keep the router from queueing without limit (DESIGN.md §9).
struct admission_limits {
  uint32_t max_inflight = 1024;                 ///< requests admitted and not finished
  uint64_t max_queued_prompt_tokens = 1 << 22;  ///< prompt tokens not yet prefilled
};

enum class admission { accept, overloaded };

/// Admit a request with `prompt_tokens` given the router's current load.
admission admit(uint32_t inflight, uint64_t queued_prompt_tokens, uint32_t prompt_tokens,
                const admission_limits& limits);

/// A decode worker as the router sees it.
struct decode_candidate {
  worker_id id = 0;
  uint32_t active = 0;          ///< requests assigned and not finished
  uint32_t overlap_blocks = 0;  ///< prefix blocks of this request it already holds
  /// Changing role or draining (member.draining): it finishes what it holds and gets no
  /// new request.
  bool draining = false;
};

/// Index of the decode worker to use among those not draining: fewest active requests;
/// ties go to the larger prefix overlap, then the lower id. Nothing when there is no
/// candidate that is not draining.
std::optional<size_t> pick_decode(std::span<const decode_candidate> candidates);

/// A prefill worker as the router sees it.
struct prefill_candidate {
  worker_id id = 0;
  uint64_t queued_tokens = 0;   ///< prompt tokens assigned and not yet prefilled
  uint32_t overlap_blocks = 0;  ///< prefix blocks of this request it already holds
  bool draining = false;        ///< changing role or draining: no new prompt
};

/// Index of the prefill worker to use among those not draining (nothing when none is):
/// the lowest cost, where cost is the work queued in
/// front of the request plus the part of this prompt it would have to compute
/// (prompt minus cached overlap). Ties go to the lower id.
std::optional<size_t> pick_prefill(std::span<const prefill_candidate> candidates,
                                   uint32_t prompt_tokens, uint32_t block_tokens);

/// Conditional disaggregation: prefill on the decode worker itself when the uncached part
/// of the prompt is shorter than `threshold` tokens (0 disables local prefill), or when
/// there is no prefill worker at all (`any_prefill_worker`: one that is not draining).
bool prefill_locally(uint32_t prompt_tokens, uint32_t cached_tokens, uint32_t threshold,
                     bool any_prefill_worker);

/// Whether the kv-store's prefix overlap can change where a request goes, so that asking
/// it is worth the wait: a kv-store is known, the prompt has a full block, and there is a
/// choice to make (several decode or prefill workers, or local prefill allowed beside
/// prefill workers). The counts are of workers that take new requests (not draining).
bool overlap_matters(bool kv_store_known, uint32_t prompt_tokens, uint32_t block_tokens,
                     size_t decode_workers, size_t prefill_workers,
                     uint32_t local_prefill_threshold);

}  // namespace tokenmill
