#pragma once
/// Causal attention over a paged KV cache, tiled over KV blocks. The query vectors that read
/// one KV head (the heads of a GQA group, for several consecutive rows of one sequence) run
/// together: each K/V block is read and converted to f32 once per tile, not once per query
/// head and row, and the scores come out of register tiles over keys (K transposed per
/// block) instead of one horizontal sum per score.
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "engine/cpu/kernels.hpp"

namespace tokenmill::cpu {

/// One KV head of one layer of one sequence: K and V of positions [b * block_tokens,
/// (b + 1) * block_tokens) start at k[b] and v[b], each [block_tokens][head_dim] of f16
/// (dtype_bytes 2) or f32 (dtype_bytes 4) values.
struct kv_head_blocks {
  std::span<const std::byte* const> k;
  std::span<const std::byte* const> v;
  uint32_t block_tokens = 16;
  uint32_t head_dim = 64;
  uint32_t dtype_bytes = 4;
};

/// One query vector: out[head_dim] = softmax(scale * q . K[0, ctx)^T) . V[0, ctx).
struct attn_query {
  const float* q;
  float* out;
  uint32_t ctx;  ///< keys [0, ctx) are visible; 1 <= ctx <= blocks * block_tokens
};

/// Per-thread working memory of attend(): grows on first use and is reused.
struct attn_scratch {
  std::vector<float> scores;  ///< [queries][context] scores, then probabilities
  std::vector<float> kt;      ///< one K block as f32, transposed: [head_dim][keys]
  std::vector<float> vf;      ///< one V block as f32 (f16 caches)
};

/// Every query of `qs` against `kv` on best_float_isa(): scores in register tiles of 4
/// queries x 16 keys (AVX-512) or 8 keys (AVX2), softmax, V sums in tiles of 4 queries;
/// attend_scalar where AVX2 is absent. Each block is read once for all queries; queries
/// whose context ends before a block skip it. A query's result does not depend on the
/// other queries of the tile.
void attend(const kv_head_blocks& kv, std::span<const attn_query> qs, float scale,
            attn_scratch& scratch);
/// attend() on `isa`, which must be available (best_float_isa() or below).
void attend_on(float_isa isa, const kv_head_blocks& kv, std::span<const attn_query> qs, float scale,
               attn_scratch& scratch);

/// The reference: one query at a time, scores by plain dot products, softmax(), then the
/// weighted sum of V in position order.
void attend_scalar(const kv_head_blocks& kv, std::span<const attn_query> qs, float scale);

/// softmax() with a vectorized exp (Cephes' polynomial: within 2 ulp of std::exp over the
/// softmax's range) and a float sum; the scalar softmax() where AVX2 is absent.
void softmax_fast(float* x, size_t n);

}  // namespace tokenmill::cpu
