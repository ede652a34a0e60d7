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

}  // namespace tokenmill
