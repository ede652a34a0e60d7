#pragma once
/// Position-independent context reuse ("blending", issue 17): the decisions, free of CAF and
/// of any engine (STYLE.md §2). A prompt is given as segments; the KV of a reused segment
/// was computed with the segment alone (no context before it) and re-rotated to the
/// segment's offset in this prompt (cpu_engine::move_chunk_kv). Such KV misses the
/// attention to the tokens before the chunk, so some of its tokens are recomputed with full
/// attention over the whole prompt: the first tokens of each reused chunk (they act as
/// attention sinks when the chunk is computed alone; EPIC, Hu et al. 2024, recomputes them)
/// and the tokens whose KV deviates most from a full prefill's, picked by the rule of
/// CacheBlend (Yao et al., "CacheBlend: Fast Large Language Model Serving for RAG with
/// Cached Knowledge Fusion", EuroSys 2025): compute every token's K/V on one early layer,
/// compare with the reused K/V, and recompute the tokens with the highest deviation in the
/// remaining layers.
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "common/result.hpp"

namespace tokenmill {

/// A run of prompt positions [begin, end). `reused`: its KV comes from a chunk cache
/// (re-rotated); otherwise it is computed.
struct blend_segment {
  uint32_t begin = 0;
  uint32_t end = 0;
  bool reused = false;
};

/// How the reused positions to recompute are chosen.
enum class blend_policy : uint8_t {
  /// CacheBlend (select_recompute): the first tokens of each reused chunk, then the highest
  /// K/V deviation on the selection layer. Every position is computed up to that layer to
  /// measure the deviations, a cost the ratio does not lower.
  deviation,
  /// EPIC's static rule (Hu et al., "EPIC: Efficient Position-Independent Context Caching
  /// for Serving Large Language Models", 2024, arXiv:2410.15332, the "LegoLink" algorithm:
  /// recompute the leading tokens of each chunk, which act as attention sinks when the chunk
  /// was computed alone):
  /// select_leading. The selection is known before anything is computed, so only the
  /// selected positions are, in every layer.
  leading,
};

/// "deviation" / "leading".
std::string_view blend_policy_name(blend_policy p);
/// The policy named `name`, else errc::invalid_request listing the names.
result<blend_policy> parse_blend_policy(std::string_view name);

/// Most segments one prompt may have (a guard against requests made of 1-token segments:
/// every segment costs a cache lookup and a KV move).
inline constexpr uint32_t max_blend_segments = 256;

/// Success when `segments` are non-empty ranges, in order, without overlap or gap, that
/// cover [0, prompt_tokens) exactly, and there are at most `max_segments` of them; else
/// errc::invalid_request naming the segment and what is wrong ("segment 2 [10, 20)
/// overlaps segment 1 [0, 12)").
result<void> check_blend_segments(std::span<const blend_segment> segments, uint32_t prompt_tokens,
                                  uint32_t max_segments = max_blend_segments);

/// Success when `ratio` is a number in [0, 1], else errc::invalid_request.
result<void> check_recompute_ratio(float ratio);

/// Reused tokens to recompute: round(ratio * reused_tokens), within [0, reused_tokens].
uint32_t recompute_budget(uint32_t reused_tokens, float ratio);

/// What a blended prefill computes, as prompt positions. `cached_prefix`: positions [0,
/// cached_prefix) hold exact KV (a prefix-cache hit) and are never computed nor counted.
struct blend_selection {
  std::vector<uint32_t> positions;  ///< ascending: every position computed in all layers
  uint32_t reused_tokens = 0;       ///< reused positions at or past cached_prefix
  uint32_t recomputed_reused = 0;   ///< of those, how many are in `positions`
};

/// Whether select_recompute needs deviations: true when the budget lies strictly between 0
/// and every reused token past the prefix. Otherwise the selection is known up front (only
/// computed segments and the last position, or every position past the prefix) and the
/// engine can skip the full-width selection layer.
bool selection_needs_deviation(std::span<const blend_segment> segments, uint32_t cached_prefix,
                               float ratio);

/// Chooses the positions to compute. Always: every position of a computed segment and the
/// last position of the prompt (its logits give the first token). Among the reused
/// positions past `cached_prefix`, recompute_budget(reused, ratio) of them: first the
/// leading `first_tokens` of each reused segment (in prompt order, while the budget lasts),
/// then the highest `deviation[pos]` (ties: lower position first). `deviation` is indexed
/// by prompt position (only reused positions are read); it may be empty when
/// selection_needs_deviation() is false. Segments must have passed check_blend_segments.
blend_selection select_recompute(std::span<const blend_segment> segments, uint32_t cached_prefix,
                                 std::span<const float> deviation, float ratio,
                                 uint32_t first_tokens);

/// The blend_policy::leading selection. Always: every position of a computed segment and the
/// last position of the prompt. Among the reused positions past `cached_prefix`,
/// recompute_budget(reused, ratio) of them, shared among the reused segments in proportion
/// to their length past the prefix (largest remainders first, ties to the earlier segment),
/// each segment's share its leading positions (from the prefix's end when the prefix cut
/// it). Segments must have passed check_blend_segments.
blend_selection select_leading(std::span<const blend_segment> segments, uint32_t cached_prefix,
                               float ratio);

}  // namespace tokenmill
