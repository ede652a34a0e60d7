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

/// Checks `p` against the model and tokenizes text prompts. Errors are invalid_request
/// with a message that names the field and what was expected.
result<validated_request> validate(const generate_params& p, const tokenizer& tok,
                                   const model_info& model);

}  // namespace tokenmill
