#pragma once
/// RoPE on the fused QKV projection, and the new K/V into the paged cache.
#include "gpu/types.cuh"

namespace tokenmill::gpu {

/// How RoPE pairs a head's dimensions (the same two conventions as the CPU engine's
/// rope_style): adjacent pairs (2i, 2i+1), or halves (i, i + head_dim/2).
enum class rope_pairs : uint8_t { adjacent, halves };

/// For each row r of `qkv` ([rows][heads*hd + 2*kv_heads*hd] f32: Q, then K, then V):
/// rotates Q's `heads` and K's kv_heads head vectors in place by the angles of position
/// rows.pos[r] (angle_i = pos * inv_freq[i], inv_freq device [hd/2], angle, cos and sin in
/// double as the CPU's rope_angles does: a float angle is ~2e-3 rad off at 60k), then stores the
/// rotated K and the V of the row into `kv` at layer `layer`, block kv.tables[seq * stride + pos /
/// bt], slot pos % bt, converted to the cache's type.
void rope_store_kv(float* qkv, const batch_rows& rows, uint32_t heads, const float* inv_freq,
                   rope_pairs style, const paged_kv& kv, uint32_t layer, cudaStream_t stream);

}  // namespace tokenmill::gpu
