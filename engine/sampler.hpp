#pragma once
/// Token sampling over one row of logits. Randomness is counter-based: the draw for a
/// position depends only on (seed, position), so a request sampled with a seed gives the
/// same tokens whether one worker serves it or prefill and decode run on different nodes.
///
/// The order of one step, on a copy of the row (the engine's row is never changed):
///   1. logit_bias is added to the raw logits;
///   2. repetition, frequency and presence penalties, from the sequence's history (so a
///      migrated or disaggregated sequence, which carries its tokens, samples the same);
///   3. structured output's token mask (a grammar's allowed tokens; the rest get -inf);
///   4. temperature, then top_k, top_p and min_p, and the draw.
/// Log-probabilities are computed from the RAW row, before bias, penalties and temperature:
/// vLLM's default (its "raw_logprobs"), so that they describe the model, not the request's
/// sampling knobs, and are the same whatever temperature the client chose.
#include <cstddef>
#include <cstdint>
#include <span>

#include "common/api_types.hpp"
#include "common/ids.hpp"

namespace tokenmill {

/// What the penalties look at: the sequence's tokens when its next token is sampled.
struct sample_history {
  std::span<const token_id> context;  ///< the prompt, then the generated tokens
  size_t output_begin = 0;            ///< context[output_begin, end) was generated
};

/// The tokens of `context` past `prompt_len - resumed` count as output (see
/// sampling_params::resumed); prompt_len is clamped to the context.
sample_history make_history(std::span<const token_id> context, size_t prompt_len,
                            const sampling_params& params);

/// True when the step changes the logits before the temperature (a bias or a penalty).
bool adjusts_logits(const sampling_params& params);

/// True when sampling needs more than the row's argmax or a plain draw: an adjustment or
/// log-probabilities. Engines that sample on a device take such rows through the host.
inline bool needs_host_row(const sampling_params& params) {
  return adjusts_logits(params) || params.top_logprobs >= 0;
}

/// Adds the bias and applies the penalties to `logits` in place (steps 1 and 2 above).
/// Bias first, then the repetition penalty (prompt and output tokens), then the frequency
/// and presence penalties (output tokens), as vLLM orders them. Ids outside the row are
/// ignored.
void adjust_logits(std::span<float> logits, const sampling_params& params,
                   const sample_history& history);

/// Fills `out` with the log-softmax of `raw` at `chosen` and, for top_n > 0, the top_n
/// most likely tokens, best first (the lower id first among equals). NaN entries count as
/// impossible. Probabilities are summed in double, so the logprobs of a row sum (as
/// probabilities) to 1 within float rounding.
void compute_logprobs(std::span<const float> raw, token_id chosen, int32_t top_n,
                      token_logprobs& out);

/// Picks the next token from `logits` (one per vocabulary id). `position` is the index of
/// the token being produced in its sequence (prompt length for the first generated token).
/// temperature 0 is greedy (the lowest id wins ties); otherwise the distribution is
/// filtered by top_k, then top_p, then min_p, and sampled. `history` feeds the penalties;
/// `allowed` (one bit per id, from the sequence's grammar state; empty = any token) masks
/// the row after them; when `logprobs` is given and params.top_logprobs >= 0 it receives
/// the chosen token's log-probabilities from the raw row. Rows without adjustment or mask
/// are sampled as they are, without a copy.
token_id sample_token(std::span<const float> logits, const sampling_params& params,
                      uint64_t position, const sample_history& history = {},
                      token_logprobs* logprobs = nullptr, std::span<const uint64_t> allowed = {});

/// The greedy choice over a row: the lowest id of the largest logit, NaN logits skipped (the
/// last id when every logit is NaN, as a scan that keeps the best so far gives). Two passes
/// with no loop-carried dependency on the best id: the maximum in independent lanes, then
/// its first id. A one-pass scan comparing each logit with logits[best] was ~117 us of a
/// 2.5 ms decode step on a 32000-token vocabulary (a load and compare chained per logit).
token_id greedy_token(std::span<const float> logits);

/// Constrained decoding: sets the logit of every token `allowed` does not allow (one bit
/// per id; a clear bit = disallowed) to -inf. An empty `allowed` changes nothing.
void apply_token_mask(std::span<float> logits, std::span<const uint64_t> allowed);

}  // namespace tokenmill
