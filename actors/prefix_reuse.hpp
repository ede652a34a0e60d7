#pragma once
/// The prefix-reuse arithmetic both KV-holding workers share, free of CAF (STYLE.md §2): how
/// many leading blocks of a prompt may come from a prefix cache (or be skipped by a KV
/// transfer), and where computation starts after them. The decode worker reserves with it,
/// the prefill worker admits and validates jobs with it: one rule, so the two sides always
/// agree on which blocks travel.
#include <cstdint>

namespace tokenmill {

/// Leading full blocks of a `prompt_tokens`-token prompt that may be reused rather than
/// computed: every full block except one holding the prompt's last token, which is always
/// computed because its logits give the first generated token. 0 for an empty prompt or a
/// zero block size.
uint32_t reusable_prefix_blocks(uint32_t prompt_tokens, uint32_t block_tokens);

/// The prompt position (tokens) at which computation starts after `reused_blocks` leading
/// blocks were taken from the cache: a chunk beginning here is the sequence's first.
uint32_t first_computed_token(uint32_t reused_blocks, uint32_t block_tokens);

}  // namespace tokenmill
