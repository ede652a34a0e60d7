#pragma once
/// Fetch instead of recompute (issue 16 item 3), free of CAF (STYLE.md §2): whether the
/// worker that serves a request should pull the leading blocks of its prompt that another
/// worker holds in its prefix cache (over the KV transport) rather than prefill them, and
/// what the serving worker accepts of a source's answer.
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "actors/router/routing_policy.hpp"
#include "common/errors.hpp"
#include "common/ids.hpp"
#include "common/result.hpp"

namespace tokenmill {

/// The decision: pull blocks [first_block, end_block) of the prompt from candidate
/// `source` (an index into the sources given) into the serving worker's reserved blocks,
/// and compute the rest there. `source` empty: compute everything not cached locally.
struct fetch_plan {
  std::optional<size_t> source;
  uint32_t first_block = 0, end_block = 0;
  double transfer_s = 0;  ///< estimated fetch time (overhead + bytes + source onboarding)
  double saved_s = 0;     ///< estimated prefill time the fetched blocks save
  double gain_s = 0;      ///< weighted saving minus weighted transfer (> 0 when planned)
  uint32_t blocks() const { return end_block - first_block; }
};

/// Plans a fetch for a prompt of `prompt_tokens` served by `serving` (its overlap_blocks:
/// the leading blocks it holds itself; its speed: how fast it would prefill). Every other
/// candidate in `sources` that is not draining and holds more leading blocks is a source:
/// fetching blocks [serving's reusable overlap, the source's reusable overlap) saves their
/// prefill time (uncached_prefill_seconds on the serving worker's speed) and costs
/// settings.overhead_s + their bytes at model.kv_bytes_per_s + the source's onboarding of
/// blocks only in its second tier. The plan with the largest positive gain (prefill weight ×
/// saving − transfer weight × cost) wins; ties go to more blocks, then the lower id. Never
/// a block of the prompt's last token (prefix_reuse.hpp). Nothing when fetching is off,
/// the block size or block bytes are unknown, or no source gains.
fetch_plan plan_fetch(const route_candidate& serving, std::span<const route_candidate> sources,
                      uint32_t prompt_tokens, uint32_t block_tokens, const cost_model& model,
                      const fetch_settings& settings);

/// What the serving worker makes of a source's reply. It asked for blocks `asked` (its
/// reserved destination blocks, in prompt order); the source says it wrote `written` of them
/// (a leading run: it stops at the first block it no longer holds) with one checksum each.
/// The usable blocks are the leading run of `asked` that was written; error (invalid_request,
/// naming the block) when the reply names a block not asked for, repeats one, skips one
/// (not a leading run), or has a checksum count different from its block count.
result<uint32_t> fetched_prefix(std::span<const block_id> asked, std::span<const block_id> written,
                                size_t checksums, const std::string& source);

}  // namespace tokenmill
