#include "engine/chunk_prefill.hpp"

#include <fmt/format.h>

#include "engine/block_hash.hpp"
#include "engine/sampler.hpp"

namespace tokenmill {
namespace {

error_info bad(std::string what) {
  return {errc::invalid_request, std::move(what)};
}

}  // namespace

result<std::vector<blend_segment>> segments_from_ends(std::span<const uint32_t> ends,
                                                      uint32_t prompt_tokens) {
  std::vector<blend_segment> out;
  uint32_t begin = 0;
  for (size_t i = 0; i < ends.size(); ++i) {
    if (ends[i] <= begin)
      return bad(fmt::format("segment_ends[{}] = {} is not after the previous end ({})", i, ends[i],
                             begin));
    if (ends[i] > prompt_tokens)
      return bad(fmt::format("segment_ends[{}] = {} is past the prompt's {} tokens", i, ends[i],
                             prompt_tokens));
    out.push_back({begin, ends[i], false});
    begin = ends[i];
  }
  if (begin < prompt_tokens) out.push_back({begin, prompt_tokens, false});
  if (out.size() > max_blend_segments)
    return bad(fmt::format("{} segments; at most {} are allowed", out.size(), max_blend_segments));
  return out;
}

float resolve_recompute_ratio(float requested, float worker_default) {
  return requested >= 0 ? requested : worker_default;
}

uint32_t exact_prefix_tokens(std::span<const uint32_t> segment_ends, uint32_t prompt_tokens,
                             float ratio) {
  if (ratio >= 1.0f) return prompt_tokens;
  if (segment_ends.empty() || segment_ends[0] >= prompt_tokens) return prompt_tokens;
  return segment_ends[0];
}

uint32_t chunk_prefill::hits() const {
  uint32_t n = 0;
  for (const auto& c : chunks)
    n += c.hit;
  return n;
}

std::unique_ptr<chunk_prefill> plan_chunk_prefill(kv_cache& cache, std::span<const token_id> prompt,
                                                  std::vector<blend_segment> segments,
                                                  uint32_t cached_prefix, float ratio) {
  auto cp = std::make_unique<chunk_prefill>();
  cp->segments = std::move(segments);
  cp->cached_prefix = cached_prefix;
  cp->ratio = ratio;
  const auto& layout = cache.pool().layout();
  for (uint32_t i = 0; i < cp->segments.size(); ++i) {
    auto& s = cp->segments[i];
    s.reused = false;
    if (s.begin < cached_prefix) continue;  // (partly) exact from the prefix cache
    const uint32_t len = s.end - s.begin;
    chunk_prefill::chunk c;
    c.segment = i;
    c.hashes = chunk_block_hashes(prompt.subspan(s.begin, len), layout.block_tokens);
    const auto want = static_cast<uint32_t>(c.hashes.size());
    cp->lookup_tokens += len;
    if (cache.cached_prefix(c.hashes) == want) {
      c.blocks = cache.acquire_prefix(c.hashes, want);
      if (c.blocks.size() == want) {
        c.hit = true;
        s.reused = true;
        cp->hit_tokens += len;
        cp->chunks.push_back(std::move(c));
        continue;
      }
      cache.release(c.blocks);
      c.blocks.clear();
    }
    auto fresh = cache.allocate(layout.blocks_for(len));
    if (!fresh) continue;  // no room to cache it: computed in the prompt only
    c.blocks = std::move(*fresh);
    cp->chunks.push_back(std::move(c));
  }
  return cp;
}

result<token_id> run_chunk_prefill(engine& eng, chunk_blender& blender, block_pool& pool,
                                   chunk_prefill& cp, const prefill_chunk& whole) {
  const auto n = static_cast<uint32_t>(whole.tokens.size());
  // Fills: each segment alone, at position 0, into its own blocks (greedy: the tokens
  // sampled after them are not used), all in one batch: one pass over the weights for all
  // of them instead of one per segment.
  std::vector<prefill_chunk> fills;
  for (const auto& c : cp.chunks) {
    if (c.hit) continue;
    const auto& s = cp.segments[c.segment];
    fills.push_back({whole.tokens.subspan(s.begin, s.end - s.begin),
                     0,
                     s.end - s.begin,
                     c.blocks,
                     {},
                     nullptr,
                     {}});
  }
  cp.recomputed_tokens = 0;
  if (cp.hits() == 0) {
    // Nothing to blend: the prompt is a full prefill, in the fills' batch.
    fills.push_back(whole);
    auto r = eng.prefill(pool, fills);
    if (!r) return r.error();
    return r->back();
  }
  if (!fills.empty())
    if (auto r = eng.prefill(pool, fills); !r) return r.error();
  for (const auto& c : cp.chunks) {
    if (!c.hit) continue;
    const auto& s = cp.segments[c.segment];
    if (auto r = blender.move_chunk_kv(pool, {c.blocks, 0, s.end - s.begin, whole.blocks, s.begin});
        !r)
      return r.error();
  }
  blend_prefill req;
  req.tokens = whole.tokens;
  req.segments = cp.segments;
  req.blocks = whole.blocks;
  req.cached_prefix = cp.cached_prefix;
  req.recompute_ratio = cp.ratio;
  req.policy = cp.policy;
  auto out = blender.prefill_blend(pool, req);
  if (!out) return out.error();
  cp.recomputed_tokens = out->recomputed_reused;
  // As engine::prefill samples after a chunk ending the prompt.
  return sample_token(out->logits, whole.sampling, n,
                      make_history(whole.tokens.subspan(0, n), whole.tokens.size(), whole.sampling),
                      whole.logprobs, whole.allowed);
}

void finish_chunk_prefill(kv_cache& cache, chunk_prefill& cp, bool computed) {
  for (auto& c : cp.chunks) {
    if (!c.hit && computed)
      for (size_t b = 0; b < c.blocks.size() && b < c.hashes.size(); ++b)
        cache.commit(c.blocks[b], c.hashes[b]);
    cache.release(c.blocks);
    c.blocks.clear();
  }
}

}  // namespace tokenmill
