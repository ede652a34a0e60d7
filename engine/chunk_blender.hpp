#pragma once
/// Position-independent chunk reuse as an engine capability (issue 17): the calls a worker
/// needs to serve a prompt given as segments from its chunk cache. Backends that have them
/// (the cpu engine) return themselves from engine::blender(); the others (sim, cuda) return
/// nullptr and workers prefill segmented prompts like any other. The decisions (which
/// tokens to recompute) are engine/blend.hpp's.
#include <cstdint>
#include <span>
#include <vector>

#include "common/ids.hpp"
#include "common/result.hpp"
#include "engine/blend.hpp"
#include "engine/block_pool.hpp"
#include "engine/engine.hpp"

namespace tokenmill {

/// Moves the KV of `tokens` tokens of a cached chunk into a sequence (move_chunk_kv). The
/// source holds the chunk at slots [0, tokens) of `src` (its block table), its keys rotated
/// as if slot 0 sat at position `src_position`; the destination is positions [dst_begin,
/// dst_begin + tokens) of the sequence whose block table is `dst`.
struct chunk_move {
  std::span<const block_id> src;
  uint32_t src_position = 0;
  uint32_t tokens = 0;
  std::span<const block_id> dst;
  uint32_t dst_begin = 0;
};

/// A prompt prefilled by blending (prefill_blend): reused segments' KV already in `blocks`
/// (moved there by move_chunk_kv), some of it recomputed (engine/blend.hpp).
struct blend_prefill {
  std::span<const token_id> tokens;  ///< the whole prompt
  std::span<const blend_segment> segments;
  std::span<const block_id> blocks;  ///< covers the whole prompt
  /// Positions [0, cached_prefix) hold exact KV (a prefix-cache hit): never computed.
  uint32_t cached_prefix = 0;
  float recompute_ratio = 0.15f;  ///< share of reused tokens recomputed, 0 ... 1
  uint32_t first_tokens = 1;      ///< leading tokens of each reused chunk recomputed first
  /// The layer on which every token's K/V is computed and compared with the reused K/V
  /// (CacheBlend selects on an early layer; layer 0's K/V depend on the token and position
  /// only, so the reused ones equal a full prefill's there and 1 is the earliest useful).
  /// Layers below it are computed for every token. Clamped to the last layer.
  uint32_t select_layer = 1;
  /// How the recomputed positions are chosen (engine/blend.hpp). With `leading` no position
  /// is computed to choose them and select_layer is unused.
  blend_policy policy = blend_policy::deviation;
};

/// Where a blended prefill's time went (milliseconds, wall clock), for bench-blend's "what
/// fraction of TTFT remains and where it goes". Moving the KV and sampling happen outside
/// prefill_blend; their callers time them.
struct blend_phases {
  /// The layers below the selection layer and its Q/K/V projections, over every position
  /// (blend_policy::deviation with a partial ratio only).
  double full_width_ms = 0;
  /// Deviations, select_recompute and compacting the rows to the kept ones.
  double select_ms = 0;
  /// The rest of the layers, over the kept rows (every layer when the selection is known up
  /// front).
  double selected_ms = 0;
  /// Of full_width_ms + selected_ms: attention (queries of the computed rows over every key
  /// before them). Not measured (0) when every position is computed: that is the ordinary
  /// forward pass, which is not split.
  double attention_ms = 0;
  /// The last position's final norm and output projection (0 when not split, as above).
  double logits_ms = 0;
};

/// What prefill_blend computed.
struct blend_outcome {
  std::vector<float> logits;         ///< of the last position [vocab]
  uint32_t reused_tokens = 0;        ///< reused positions past the cached prefix
  uint32_t recomputed_reused = 0;    ///< of those, recomputed in every layer
  uint32_t computed_tokens = 0;      ///< positions computed in every layer
  uint32_t select_layer_tokens = 0;  ///< positions computed up to the selection layer
  /// Share of the reused tokens' total K/V deviation on the selection layer that the
  /// recomputed ones carry (not measured at ratio 0 or 1: then 0 or 1): near the ratio when the
  /// deviation is spread evenly, near 1 when few tokens carry it (CacheBlend's premise).
  double selected_deviation_share = 1;
  blend_phases phases;
};

class chunk_blender {
 public:
  virtual ~chunk_blender() = default;
  /// Computes `chunk` as if the prompt's position 0 sat at `base_position` (a chunk cache
  /// entry rotated at a known base). base_position 0 is engine::prefill().
  virtual result<std::vector<token_id>> prefill_at(block_pool& pool, const prefill_chunk& chunk,
                                                   uint32_t base_position) = 0;
  /// Copies a cached chunk's KV into a sequence, re-rotating its keys to the new offset.
  virtual result<void> move_chunk_kv(block_pool& pool, const chunk_move& move) = 0;
  /// Prefills a prompt whose reused segments' KV is in place, recomputing the positions
  /// engine/blend.hpp selects; at ratio 1 a full prefill's result bit for bit.
  virtual result<blend_outcome> prefill_blend(block_pool& pool, const blend_prefill& req) = 0;
};

}  // namespace tokenmill
