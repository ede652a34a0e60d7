// RoPE and the KV store: one block per batch row. The block first computes the row's cos
// and sin [head_dim/2] into shared memory (in double, as the CPU's rope_angles does), then
// its threads rotate (head, pair) items of Q and K and copy V, writing K and V to the cache.
#include <cuda_fp16.h>

#include "gpu/cuda_util.hpp"
#include "gpu/rope.cuh"

namespace tokenmill::gpu {

namespace {

constexpr unsigned threads = 128;

/// The cache's head_dim vector of head `head` of K (which = 0) or V (which = 1) at position
/// `pos` of sequence `seq`, or nullptr when the block-table entry is negative (a padding
/// row: nothing is stored). The byte offset inside the block is kv_layout::offset()'s.
__device__ inline char* kv_slot(const paged_kv& kv, int32_t seq, int32_t pos, uint32_t layer,
                                uint32_t which, uint32_t head) {
  const int32_t block = kv.tables[static_cast<size_t>(seq) * kv.table_stride +
                                  static_cast<uint32_t>(pos) / kv.block_tokens];
  if (block < 0) return nullptr;
  const uint32_t slot = static_cast<uint32_t>(pos) % kv.block_tokens;
  const size_t idx = ((size_t{layer} * 2 + which) * kv.kv_heads + head) * kv.block_tokens + slot;
  const size_t elem_size = kv.kv_f16 ? 2 : 4;
  return static_cast<char*>(kv.base) + static_cast<size_t>(block) * kv.block_bytes +
         idx * kv.head_dim * elem_size;
}

__device__ inline void kv_put(const paged_kv& kv, char* head_base, uint32_t d, float v) {
  if (kv.kv_f16)
    reinterpret_cast<__half*>(head_base)[d] = __float2half_rn(v);
  else
    reinterpret_cast<float*>(head_base)[d] = v;
}

__global__ void rope_store_kv_kernel(float* qkv, batch_rows rows, uint32_t heads,
                                     const float* inv_freq, rope_pairs style, paged_kv kv,
                                     uint32_t layer) {
  extern __shared__ float angles[];  // cos [pairs], then sin [pairs]
  const uint32_t hd = kv.head_dim, pairs = hd / 2, kvh = kv.kv_heads;
  float* cos_v = angles;
  float* sin_v = angles + pairs;
  const size_t r = blockIdx.x;
  const int32_t pos = rows.pos[r], seq = rows.seq[r];

  for (uint32_t i = threadIdx.x; i < pairs; i += blockDim.x) {
    const double a = static_cast<double>(static_cast<uint32_t>(pos)) * inv_freq[i];
    cos_v[i] = static_cast<float>(cos(a));
    sin_v[i] = static_cast<float>(sin(a));
  }
  __syncthreads();

  float* row = qkv + r * (size_t{heads} + 2 * kvh) * hd;
  // Q heads then K heads: item h * pairs + i rotates pair i of head h.
  const uint32_t items = (heads + kvh) * pairs;
  for (uint32_t k = threadIdx.x; k < items; k += blockDim.x) {
    const uint32_t h = k / pairs, i = k % pairs;
    const uint32_t ia = style == rope_pairs::adjacent ? 2 * i : i;
    const uint32_t ib = style == rope_pairs::adjacent ? 2 * i + 1 : i + pairs;
    float* v = row + size_t{h} * hd;
    const float x0 = v[ia], x1 = v[ib];
    // Explicit roundings: no FMA contraction, so the result is the CPU's rope_apply bit for
    // bit (it computes x0*c - x1*s and x0*s + x1*c with separately rounded products).
    const float a = __fsub_rn(__fmul_rn(x0, cos_v[i]), __fmul_rn(x1, sin_v[i]));
    const float b = __fadd_rn(__fmul_rn(x0, sin_v[i]), __fmul_rn(x1, cos_v[i]));
    v[ia] = a;
    v[ib] = b;
    if (h >= heads) {  // a K head: the rotated pair goes to the cache
      char* dst = kv_slot(kv, seq, pos, layer, 0, h - heads);
      if (dst) {
        kv_put(kv, dst, ia, a);
        kv_put(kv, dst, ib, b);
      }
    }
  }

  // V, unrotated.
  const float* v_row = row + size_t{heads + kvh} * hd;
  for (uint32_t k = threadIdx.x; k < kvh * hd; k += blockDim.x) {
    const uint32_t h = k / hd, d = k % hd;
    char* dst = kv_slot(kv, seq, pos, layer, 1, h);
    if (dst) kv_put(kv, dst, d, v_row[k]);
  }
}

}  // namespace

void rope_store_kv(float* qkv, const batch_rows& rows, uint32_t heads, const float* inv_freq,
                   rope_pairs style, const paged_kv& kv, uint32_t layer, cudaStream_t stream) {
  if (rows.rows == 0 || kv.head_dim == 0) return;
  const size_t shared = size_t{kv.head_dim / 2} * 2 * sizeof(float);
  rope_store_kv_kernel<<<rows.rows, threads, shared, stream>>>(qkv, rows, heads, inv_freq, style,
                                                               kv, layer);
  TM_CUDA_LAUNCH();
}

}  // namespace tokenmill::gpu
