#pragma once
/// Serving a prompt given as segments from a worker's chunk cache (issue 17), free of CAF
/// (STYLE.md §2): the prefill and the decode worker both use it. A segment's KV is cached
/// under chunk_block_hashes (its own tokens, computed alone at position 0) in the worker's
/// kv_cache, beside prefix blocks (same pool, reference counts and eviction). A prompt is
/// served in three steps on two threads:
///   1. plan_chunk_prefill (the worker's thread: it owns the cache) pins the cached chunks
///      of the segments at or past the cached prefix (hits) and allocates blocks for the
///      others, to compute them alone and cache them (fills);
///   2. run_chunk_prefill (the engine thread) computes the fills alone, moves every hit's
///      KV to its offset in the prompt (one rotation per key) and prefills the prompt by
///      blending (selective recompute, engine/blend.hpp), or in full when nothing hit, and
///      samples the first token;
///   3. finish_chunk_prefill (the worker's thread again) commits the fills under their
///      chunk hashes and unpins every chunk block: they stay cached until evicted.
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "common/ids.hpp"
#include "common/result.hpp"
#include "engine/blend.hpp"
#include "engine/chunk_blender.hpp"
#include "engine/engine.hpp"
#include "engine/kv_cache.hpp"

namespace tokenmill {

/// The segments of a `prompt_tokens`-token prompt from their ends
/// (request_options::segment_ends): [0, ends[0]), [ends[0], ends[1]), …; when the last end
/// is before the prompt's end (output a recompute migration appended), one more segment
/// covers the tail. errc::invalid_request naming the entry when the ends are not ascending,
/// are 0, or pass the prompt's end, or there are more than max_blend_segments.
result<std::vector<blend_segment>> segments_from_ends(std::span<const uint32_t> ends,
                                                      uint32_t prompt_tokens);

/// The recompute ratio a worker uses: the request's when it named one (>= 0), else the
/// worker's default.
float resolve_recompute_ratio(float requested, float worker_default);

/// Leading prompt tokens whose KV is a full prefill's whatever a worker reused: the whole
/// prompt when it is not segmented (fewer than two segments) or the ratio is 1 (blending at
/// 1 is a full prefill bit for bit), else the first segment (a reused chunk carries
/// approximate KV, and so does every token after it). Workers commit only the full blocks
/// inside it to the prefix cache, so blended KV never serves an unsegmented prompt.
uint32_t exact_prefix_tokens(std::span<const uint32_t> segment_ends, uint32_t prompt_tokens,
                             float ratio);

/// One segmented prompt's chunk work, from plan to finish. Lives at a stable address in
/// the worker's state while the engine thread uses it.
struct chunk_prefill {
  /// One segment looked up in the chunk cache.
  struct chunk {
    uint32_t segment = 0;          ///< index into `segments`
    std::vector<uint64_t> hashes;  ///< chunk_block_hashes of its tokens (base position 0)
    std::vector<block_id> blocks;  ///< hit: the cached blocks (pinned); fill: fresh blocks
    bool hit = false;
  };
  std::vector<blend_segment> segments;  ///< the prompt's; `reused` set for the hits
  std::vector<chunk> chunks;            ///< hits and fills, in prompt order
  uint32_t cached_prefix = 0;           ///< tokens: the prefix cache's exact KV
  float ratio = 0;                      ///< recompute ratio, in [0, 1]
  /// How the recomputed tokens are chosen (blend_prefill::policy); set after planning.
  blend_policy policy = blend_policy::deviation;
  uint32_t lookup_tokens = 0;  ///< tokens of the segments looked up
  uint32_t hit_tokens = 0;     ///< of those, in hits
  /// Filled by run_chunk_prefill: reused tokens recomputed (0 without a hit).
  uint32_t recomputed_tokens = 0;
  uint32_t hits() const;
};

/// Step 1: looks up every segment starting at or past `cached_prefix` (tokens; a segment
/// the prefix cache cut is computed) in `cache` by its chunk hashes. A segment all of whose
/// blocks are cached is a hit (its blocks pinned); the others get fresh blocks to be
/// computed alone and cached (a fill), unless the cache cannot supply them (then they are
/// only computed in the prompt). `segments` must cover `prompt` (segments_from_ends).
std::unique_ptr<chunk_prefill> plan_chunk_prefill(kv_cache& cache, std::span<const token_id> prompt,
                                                  std::vector<blend_segment> segments,
                                                  uint32_t cached_prefix, float ratio);

/// Step 2, on the engine thread: `whole` is the prompt's prefill from the cached prefix to
/// its end (tokens, begin = cp.cached_prefix, end = prompt length, the sequence's blocks,
/// sampling, logprobs, allowed). Computes each fill alone into its blocks (one
/// engine::prefill batch for all of them), then with a hit moves the hits' KV into the
/// sequence's blocks and prefills by blending at cp.ratio, sampling the first token from the
/// last position's logits exactly as engine::prefill does; without a hit, prefills `whole`
/// with engine::prefill, in the fills' batch. The sampled token, or the engine's error.
result<token_id> run_chunk_prefill(engine& eng, chunk_blender& blender, block_pool& pool,
                                   chunk_prefill& cp, const prefill_chunk& whole);

/// Step 3: commits the fills under their chunk hashes when `computed` (the engine step
/// succeeded) and releases every chunk block.
void finish_chunk_prefill(kv_cache& cache, chunk_prefill& cp, bool computed);

}  // namespace tokenmill
