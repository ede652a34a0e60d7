#pragma once
/// Validation of client requests at the frontend, free of CAF and Cap'n Proto so that
/// every rule is unit-tested. A request that fails changes nothing anywhere.
#include "common/api_types.hpp"
#include "common/result.hpp"
#include "engine/engine.hpp"
#include "engine/tokenizer.hpp"

namespace tokenmill {

/// A request that passed validation: prompt tokenized, numbers in range.
struct validated_request {
  std::vector<token_id> prompt;
  request_options options;
  std::vector<std::string> stop_strings;  ///< checked by the frontend on the streamed text
};

/// Limits on stop strings (OpenAI allows 4; we allow more, but bounded).
constexpr size_t max_stop_strings = 16;
constexpr size_t max_stop_string_bytes = 256;
/// Most alternatives per token a request may ask for (OpenAI chat's top_logprobs limit).
constexpr int64_t max_top_logprobs = 20;
/// Most logit_bias entries per request (bounds the request's size on every hop).
constexpr size_t max_logit_bias = 1024;

/// Most segments a prompt given as segments may list (chunk reuse, issue 17; a text
/// prompt's BOS adds one, within engine/blend.hpp's max_blend_segments).
constexpr size_t max_request_segments = 128;

/// The prompt of a request given as segments (p.segments non-empty): BOS as a segment of
/// its own when a segment is text and p.add_bos, then each segment (text tokenized alone,
/// without BOS), into v.prompt and v.options.segment_ends; p.recompute_ratio into
/// v.options.recompute_ratio. invalid_request naming p.segments_field and the entry for too
/// many segments, an empty one, a token id outside the vocabulary, a ratio outside [0, 1].
result<void> prompt_from_segments(const generate_params& p, const tokenizer& tok,
                                  const model_info& model, validated_request& v);

/// Checks `p` against the model and tokenizes text prompts. Errors are invalid_request
/// with a message that names the field and what was expected.
result<validated_request> validate(const generate_params& p, const tokenizer& tok,
                                   const model_info& model);

}  // namespace tokenmill
