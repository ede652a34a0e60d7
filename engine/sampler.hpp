#pragma once
/// Token sampling over one row of logits. Randomness is counter-based: the draw for a
/// position depends only on (seed, position), so a request sampled with a seed gives the
/// same tokens whether one worker serves it or prefill and decode run on different nodes.
#include <cstdint>
#include <span>

#include "common/api_types.hpp"
#include "common/ids.hpp"

namespace tokenmill {

/// Picks the next token from `logits` (one per vocabulary id). `position` is the index of
/// the token being produced in its sequence (prompt length for the first generated token).
/// temperature 0 is greedy (the lowest id wins ties); otherwise the distribution is
/// filtered by top_k, then top_p, then min_p, and sampled.
token_id sample_token(std::span<const float> logits, const sampling_params& params,
                      uint64_t position);

/// Constrained decoding: sets the logit of every token `allowed` does not allow (one bit
/// per id; a clear bit = disallowed) to -inf. An empty `allowed` changes nothing.
void apply_token_mask(std::span<float> logits, std::span<const uint64_t> allowed);

/// What engines call per output row: the row's logits, masked by `allowed` (before
/// temperature, top-k, top-p and min-p see them), then sample_token. Unconstrained rows
/// (empty `allowed`) are sampled as they are, without a copy.
token_id sample_row(std::span<const float> logits, std::span<const uint64_t> allowed,
                    const sampling_params& params, uint64_t position);

}  // namespace tokenmill
