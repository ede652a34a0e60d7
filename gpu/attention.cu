// Causal attention over the paged KV cache.
//
// Prefill: one CTA per (tile of kTileRows consecutive query rows, query head), 128 threads,
// 8 per tile row. The CTA walks the tile's sequence in chunks of KT tokens (KT * MAXD = 2048
// floats): the chunk's K and V, converted to f32, go to shared memory once for all rows of the
// tile; each row then scores them, masks positions beyond its own pos, and folds them into a
// running (max, sum, acc) — the online softmax — so no [rows x context] matrix exists. A tile
// whose rows belong to several sequences (chunk boundaries inside a tile) is processed as one
// run per sequence, the other rows idle. The head_dim is a runtime value <= MAXD, MAXD a
// template parameter in {64, 128, 256}: other head dims use the next larger instance.
//
// Decode: one CTA per (partition of kDecodePartTokens positions, query head, row). A warp
// scores one position at a time (lanes over head_dim, shuffle sum), the CTA takes max and
// exps over its partition in shared memory, and warps sum p * V over their positions, then
// across warps. With one partition in the grid the CTA writes the output directly; otherwise
// it writes (max, sum, unnormalised acc) to the workspace and decode_reduce combines the
// partitions of a row with the log-sum-exp rescaling (exact for a single partition: the
// weight is exp(0) = 1).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <stdexcept>
#include <string>

#include "gpu/attention.cuh"
#include "gpu/cuda_util.hpp"

namespace tokenmill::gpu {

namespace {

constexpr uint32_t max_head_dim = attention_max_head_dim;  // register and smem sizing

// --- shared helpers ------------------------------------------------------------------------

__device__ inline float to_f32(float v) {
  return v;
}
__device__ inline float to_f32(__half v) {
  return __half2float(v);
}

/// out[i] = v converted to `t`.
__device__ inline void store_out(void* out, elem t, size_t i, float v) {
  switch (t) {
    case elem::f32:
      static_cast<float*>(out)[i] = v;
      break;
    case elem::f16:
      static_cast<__half*>(out)[i] = __float2half_rn(v);
      break;
    case elem::bf16:
      static_cast<__nv_bfloat16*>(out)[i] = __float2bfloat16_rn(v);
      break;
  }
}

/// The K row of position `p` (KV head `kvh`, layer `layer`) of the sequence whose block table
/// row is `table`; the V row is at + v_offset(kv) elements.
template <class T>
__device__ inline const T* k_row(const paged_kv& kv, const int32_t* table, uint32_t layer,
                                 uint32_t kvh, uint32_t p) {
  const int32_t block = table[p / kv.block_tokens];
  const uint32_t slot = p % kv.block_tokens;
  const char* b = static_cast<const char*>(kv.base) + static_cast<size_t>(block) * kv.block_bytes;
  const size_t off =
      ((static_cast<size_t>(layer) * 2 * kv.kv_heads + kvh) * kv.block_tokens + slot) * kv.head_dim;
  return reinterpret_cast<const T*>(b) + off;
}

/// Elements from a K row to the V row of the same (layer, head, slot): the V section follows
/// the K section of the layer, kv_heads * block_tokens rows of head_dim.
__device__ inline size_t v_offset(const paged_kv& kv) {
  return static_cast<size_t>(kv.kv_heads) * kv.block_tokens * kv.head_dim;
}

__device__ inline float warp_sum(float v) {
  for (int off = 16; off > 0; off /= 2)
    v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

__device__ inline float warp_max(float v) {
  for (int off = 16; off > 0; off /= 2)
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}

// --- prefill -------------------------------------------------------------------------------

constexpr uint32_t tile_rows = 16;
constexpr uint32_t prefill_threads = 128;
constexpr uint32_t row_threads = prefill_threads / tile_rows;  // threads per tile row: 8
static_assert(row_threads == 8, "the softmax shuffles reduce over groups of 8 lanes");

template <class T, uint32_t MAXD>
__global__ void __launch_bounds__(prefill_threads)
    prefill_kernel(const float* __restrict__ q, uint32_t q_stride, const int32_t* __restrict__ pos,
                   const int32_t* __restrict__ seq, uint32_t rows, uint32_t heads, paged_kv kv,
                   uint32_t layer, void* __restrict__ out, elem out_t) {
  constexpr uint32_t kt = 2048 / MAXD;          // KV positions per chunk: 32, 16, 8
  constexpr uint32_t ld = MAXD + 1;             // padded rows: conflict-free column reads
  constexpr uint32_t lds = kt + 1;              // padded score rows
  constexpr uint32_t jpt = kt / row_threads;    // scores per thread per chunk: 4, 2, 1
  constexpr uint32_t dpt = MAXD / row_threads;  // output dims per thread: 8, 16, 32
  static_assert(kt % row_threads == 0 && kt <= prefill_threads, "chunk shape");
  __shared__ float qs[tile_rows * ld];   // the tile's q rows
  __shared__ float ks[kt * ld];          // K of the chunk, f32
  __shared__ float vs[kt * MAXD];        // V of the chunk, f32
  __shared__ float ss[tile_rows * lds];  // scores, then probabilities
  __shared__ const T* tok[kt];           // K row of each chunk position (null: past the end)

  const uint32_t hd = kv.head_dim;
  const uint32_t h = blockIdx.y;
  const uint32_t kvh = h / (heads / kv.kv_heads);
  const uint32_t r0 = blockIdx.x * tile_rows;
  const uint32_t r_end = min(r0 + tile_rows, rows);
  const uint32_t tid = threadIdx.x;
  const uint32_t tr = tid / row_threads;  // this thread's tile row
  const uint32_t lane = tid % row_threads;
  const uint32_t r = r0 + tr;
  const float scale = 1.0f / sqrtf(static_cast<float>(hd));
  const size_t voff = v_offset(kv);
  const float neg_inf = -INFINITY;

  for (uint32_t i = tid; i < tile_rows * MAXD; i += prefill_threads) {
    const uint32_t rr = i / MAXD, d = i % MAXD;
    if (d < hd)
      qs[rr * ld + d] =
          r0 + rr < rows ? q[static_cast<size_t>(r0 + rr) * q_stride + h * hd + d] : 0.0f;
  }

  // One run per sequence among the tile's rows (rows of a sequence are consecutive).
  for (uint32_t run0 = r0; run0 < r_end;) {
    const int32_t s = seq[run0];
    int32_t max_pos = pos[run0];
    uint32_t run1 = run0 + 1;
    for (; run1 < r_end && seq[run1] == s; ++run1)
      max_pos = max(max_pos, pos[run1]);
    const bool active = r >= run0 && r < run1;
    const int32_t my_pos = active ? pos[r] : -1;  // -1: every position masked
    const uint32_t kv_len = static_cast<uint32_t>(max_pos) + 1;
    const int32_t* table = kv.tables + static_cast<size_t>(s) * kv.table_stride;

    float m = neg_inf, l = 0.0f;
    float acc[dpt];
#pragma unroll
    for (uint32_t i = 0; i < dpt; ++i)
      acc[i] = 0.0f;

    for (uint32_t c0 = 0; c0 < kv_len; c0 += kt) {
      __syncthreads();  // the previous chunk (and run) is done with tok/ks/vs/ss; qs written
      if (tid < kt)
        tok[tid] = c0 + tid < kv_len ? k_row<T>(kv, table, layer, kvh, c0 + tid) : nullptr;
      __syncthreads();
      for (uint32_t i = tid; i < kt * MAXD; i += prefill_threads) {
        const uint32_t j = i / MAXD, d = i % MAXD;
        if (d >= hd) continue;
        const T* kp = tok[j];
        // Positions past the end read as zero: their scores are masked, and p = 0 times a
        // finite V keeps the accumulators finite.
        ks[j * ld + d] = kp ? to_f32(kp[d]) : 0.0f;
        vs[j * MAXD + d] = kp ? to_f32(kp[voff + d]) : 0.0f;
      }
      __syncthreads();

      // Scores of this thread's positions j = lane + 8 * jj.
      float sc[jpt];
#pragma unroll
      for (uint32_t jj = 0; jj < jpt; ++jj)
        sc[jj] = 0.0f;
      for (uint32_t d = 0; d < hd; ++d) {
        const float qv = qs[tr * ld + d];
#pragma unroll
        for (uint32_t jj = 0; jj < jpt; ++jj)
          sc[jj] += qv * ks[(lane + jj * row_threads) * ld + d];
      }
#pragma unroll
      for (uint32_t jj = 0; jj < jpt; ++jj) {
        const uint32_t j = lane + jj * row_threads;
        ss[tr * lds + j] = static_cast<int64_t>(c0 + j) <= my_pos ? scale * sc[jj] : neg_inf;
      }
      __syncwarp();  // a tile row's 8 threads are in one warp

      // Online softmax update of this row.
      float cmax = neg_inf;
      for (uint32_t j = 0; j < kt; ++j)
        cmax = fmaxf(cmax, ss[tr * lds + j]);
      const float m_new = fmaxf(m, cmax);
      __syncwarp();  // every thread of the row has read the scores before they are replaced
      float psum = 0.0f;
#pragma unroll
      for (uint32_t jj = 0; jj < jpt; ++jj) {
        const uint32_t j = lane + jj * row_threads;
        const float p = m_new == neg_inf ? 0.0f : expf(ss[tr * lds + j] - m_new);
        ss[tr * lds + j] = p;
        psum += p;
      }
      for (int off = row_threads / 2; off > 0; off /= 2)
        psum += __shfl_xor_sync(0xffffffffu, psum, off);  // within the row's 8 lanes
      const float alpha = m == neg_inf ? 0.0f : expf(m - m_new);
      l = l * alpha + psum;
      m = m_new;
      __syncwarp();

#pragma unroll
      for (uint32_t i = 0; i < dpt; ++i) {
        const uint32_t d = lane + i * row_threads;
        if (d < hd) {
          float a = acc[i] * alpha;
          for (uint32_t j = 0; j < kt; ++j)
            a += ss[tr * lds + j] * vs[j * MAXD + d];
          acc[i] = a;
        }
      }
    }

    if (active) {
      const size_t o = (static_cast<size_t>(r) * heads + h) * hd;
#pragma unroll
      for (uint32_t i = 0; i < dpt; ++i) {
        const uint32_t d = lane + i * row_threads;
        if (d < hd) store_out(out, out_t, o + d, l > 0.0f ? acc[i] / l : 0.0f);
      }
    }
    run0 = run1;
  }
}

// --- decode --------------------------------------------------------------------------------

constexpr uint32_t decode_part_tokens = attention_decode_partition;  // positions per CTA
constexpr uint32_t decode_threads = 128;
constexpr uint32_t decode_warps = decode_threads / 32;
constexpr uint32_t decode_dpl = max_head_dim / 32;  // output dims per lane

uint32_t decode_partitions(uint32_t max_context) {
  return max_context == 0 ? 1 : (max_context + decode_part_tokens - 1) / decode_part_tokens;
}

/// Workspace record of (row, head, partition): [max, sum, acc[head_dim]] floats.
__device__ inline size_t ws_index(uint32_t r, uint32_t heads, uint32_t h, uint32_t parts,
                                  uint32_t part, uint32_t hd) {
  return ((static_cast<size_t>(r) * heads + h) * parts + part) * (hd + 2);
}

template <class T>
__global__ void __launch_bounds__(decode_threads)
    decode_kernel(const float* __restrict__ q, uint32_t q_stride, const int32_t* __restrict__ pos,
                  const int32_t* __restrict__ seq, uint32_t heads, paged_kv kv, uint32_t layer,
                  float* __restrict__ ws, void* __restrict__ out, elem out_t) {
  __shared__ float qs[max_head_dim];
  __shared__ float ps[decode_part_tokens];  // scores, then exp(score - max)
  __shared__ const T* tok[decode_part_tokens];
  __shared__ float accs[decode_warps][max_head_dim];
  __shared__ float red[decode_warps];

  const uint32_t part = blockIdx.x, h = blockIdx.y, r = blockIdx.z;
  const uint32_t parts = gridDim.x;
  const uint32_t ctx = static_cast<uint32_t>(pos[r]) + 1;
  const uint32_t p0 = part * decode_part_tokens;
  if (p0 >= ctx) return;  // the whole CTA: this row's context ends before the partition
  const uint32_t n = min(ctx - p0, decode_part_tokens);
  const uint32_t hd = kv.head_dim;
  const uint32_t kvh = h / (heads / kv.kv_heads);
  const uint32_t tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int32_t* table = kv.tables + static_cast<size_t>(seq[r]) * kv.table_stride;
  const float scale = 1.0f / sqrtf(static_cast<float>(hd));
  const size_t voff = v_offset(kv);

  for (uint32_t d = tid; d < hd; d += decode_threads)
    qs[d] = q[static_cast<size_t>(r) * q_stride + h * hd + d];
  for (uint32_t j = tid; j < n; j += decode_threads)
    tok[j] = k_row<T>(kv, table, layer, kvh, p0 + j);
  __syncthreads();

  for (uint32_t j = warp; j < n; j += decode_warps) {
    const T* kp = tok[j];
    float s = 0.0f;
    for (uint32_t d = lane; d < hd; d += 32)
      s += qs[d] * to_f32(kp[d]);
    s = warp_sum(s);
    if (lane == 0) ps[j] = scale * s;
  }
  __syncthreads();

  float m = -INFINITY;
  for (uint32_t j = tid; j < n; j += decode_threads)
    m = fmaxf(m, ps[j]);
  m = warp_max(m);
  if (lane == 0) red[warp] = m;
  __syncthreads();
  m = red[0];
  for (uint32_t w = 1; w < decode_warps; ++w)
    m = fmaxf(m, red[w]);
  __syncthreads();  // red is reused below

  float l = 0.0f;
  for (uint32_t j = tid; j < n; j += decode_threads) {
    const float p = expf(ps[j] - m);
    ps[j] = p;
    l += p;
  }
  l = warp_sum(l);
  if (lane == 0) red[warp] = l;
  __syncthreads();  // also publishes ps
  l = 0.0f;
  for (uint32_t w = 0; w < decode_warps; ++w)
    l += red[w];

  float acc[decode_dpl];
#pragma unroll
  for (uint32_t i = 0; i < decode_dpl; ++i)
    acc[i] = 0.0f;
  for (uint32_t j = warp; j < n; j += decode_warps) {
    const T* vp = tok[j] + voff;
    const float p = ps[j];
#pragma unroll
    for (uint32_t i = 0; i < decode_dpl; ++i) {
      const uint32_t d = lane + i * 32;
      if (d < hd) acc[i] += p * to_f32(vp[d]);
    }
  }
#pragma unroll
  for (uint32_t i = 0; i < decode_dpl; ++i) {
    const uint32_t d = lane + i * 32;
    if (d < hd) accs[warp][d] = acc[i];
  }
  __syncthreads();

  if (parts == 1) {  // the whole context in this CTA: normalise and write the output
    const size_t o = (static_cast<size_t>(r) * heads + h) * hd;
    for (uint32_t d = tid; d < hd; d += decode_threads) {
      float a = 0.0f;
      for (uint32_t w = 0; w < decode_warps; ++w)
        a += accs[w][d];
      store_out(out, out_t, o + d, a / l);
    }
    return;
  }
  float* rec = ws + ws_index(r, heads, h, parts, part, hd);
  if (tid == 0) {
    rec[0] = m;
    rec[1] = l;
  }
  for (uint32_t d = tid; d < hd; d += decode_threads) {
    float a = 0.0f;
    for (uint32_t w = 0; w < decode_warps; ++w)
      a += accs[w][d];
    rec[2 + d] = a;
  }
}

/// One CTA per (head, row): out = sum_p acc_p * exp(m_p - M) / sum_p l_p * exp(m_p - M).
__global__ void __launch_bounds__(decode_threads)
    decode_reduce_kernel(const int32_t* __restrict__ pos, uint32_t heads, uint32_t hd,
                         uint32_t parts, const float* __restrict__ ws, void* __restrict__ out,
                         elem out_t) {
  const uint32_t h = blockIdx.x, r = blockIdx.y;
  const uint32_t ctx = static_cast<uint32_t>(pos[r]) + 1;
  // Clamped: a context beyond max_context (a caller error) must not read past the records.
  const uint32_t n = min((ctx + decode_part_tokens - 1) / decode_part_tokens, parts);
  const float* rec = ws + ws_index(r, heads, h, parts, 0, hd);
  const size_t stride = hd + 2;
  float big_m = -INFINITY;
  for (uint32_t p = 0; p < n; ++p)
    big_m = fmaxf(big_m, rec[p * stride]);
  float big_l = 0.0f;
  for (uint32_t p = 0; p < n; ++p)
    big_l += rec[p * stride + 1] * expf(rec[p * stride] - big_m);
  const size_t o = (static_cast<size_t>(r) * heads + h) * hd;
  for (uint32_t d = threadIdx.x; d < hd; d += blockDim.x) {
    float a = 0.0f;
    for (uint32_t p = 0; p < n; ++p)
      a += rec[p * stride + 2 + d] * expf(rec[p * stride] - big_m);
    store_out(out, out_t, o + d, a / big_l);
  }
}

// --- host ----------------------------------------------------------------------------------

/// Throws std::invalid_argument unless the shapes are ones the kernels handle.
void check_shapes(const char* what, uint32_t q_stride, uint32_t heads, const paged_kv& kv,
                  uint32_t layer) {
  auto fail = [&](const std::string& why) {
    throw std::invalid_argument(std::string(what) + ": " + why);
  };
  if (kv.head_dim == 0 || kv.head_dim > max_head_dim)
    fail("head_dim " + std::to_string(kv.head_dim) + " not in [1, " + std::to_string(max_head_dim) +
         "]");
  if (kv.kv_heads == 0 || heads == 0 || heads % kv.kv_heads != 0)
    fail("heads " + std::to_string(heads) + " not a positive multiple of kv_heads " +
         std::to_string(kv.kv_heads));
  if (heads > 65535) fail("more than 65535 heads");
  if (kv.block_tokens == 0) fail("block_tokens is 0");
  if (layer >= kv.layers) fail("layer out of range");
  if (q_stride < heads * kv.head_dim) fail("q_stride shorter than heads * head_dim");
  const size_t need = static_cast<size_t>(kv.layers) * 2 * kv.kv_heads * kv.block_tokens *
                      kv.head_dim * (kv.kv_f16 ? 2 : 4);
  if (kv.block_bytes < need) fail("block_bytes smaller than the layout needs");
  if (kv.base == nullptr || kv.tables == nullptr) fail("null KV pool or block tables");
}

template <uint32_t MAXD>
void launch_prefill(dim3 grid, const float* q, uint32_t q_stride, const batch_rows& rows,
                    uint32_t heads, const paged_kv& kv, uint32_t layer, void* out, elem out_t,
                    cudaStream_t stream) {
  if (kv.kv_f16)
    prefill_kernel<__half, MAXD><<<grid, prefill_threads, 0, stream>>>(
        q, q_stride, rows.pos, rows.seq, rows.rows, heads, kv, layer, out, out_t);
  else
    prefill_kernel<float, MAXD><<<grid, prefill_threads, 0, stream>>>(
        q, q_stride, rows.pos, rows.seq, rows.rows, heads, kv, layer, out, out_t);
}

}  // namespace

void attention_prefill(const float* q, uint32_t q_stride, const batch_rows& rows, uint32_t heads,
                       const paged_kv& kv, uint32_t layer, void* out, elem out_t,
                       cudaStream_t stream) {
  if (rows.rows == 0) return;
  check_shapes("attention_prefill", q_stride, heads, kv, layer);
  const dim3 grid((rows.rows + tile_rows - 1) / tile_rows, heads);
  if (kv.head_dim <= 64)
    launch_prefill<64>(grid, q, q_stride, rows, heads, kv, layer, out, out_t, stream);
  else if (kv.head_dim <= 128)
    launch_prefill<128>(grid, q, q_stride, rows, heads, kv, layer, out, out_t, stream);
  else
    launch_prefill<256>(grid, q, q_stride, rows, heads, kv, layer, out, out_t, stream);
  TM_CUDA_LAUNCH();
}

size_t attention_decode_workspace(uint32_t rows, uint32_t heads, uint32_t head_dim,
                                  uint32_t max_context, uint32_t /*block_tokens*/) {
  return static_cast<size_t>(rows) * heads * decode_partitions(max_context) * (head_dim + 2) *
         sizeof(float);
}

void attention_decode(const float* q, uint32_t q_stride, const batch_rows& rows, uint32_t heads,
                      const paged_kv& kv, uint32_t layer, uint32_t max_context, void* workspace,
                      void* out, elem out_t, cudaStream_t stream) {
  if (rows.rows == 0) return;
  check_shapes("attention_decode", q_stride, heads, kv, layer);
  if (rows.rows > 65535) throw std::invalid_argument("attention_decode: more than 65535 rows");
  const uint32_t parts = decode_partitions(max_context);
  if (parts > 1 && workspace == nullptr)
    throw std::invalid_argument("attention_decode: no workspace for a split context");
  float* ws = static_cast<float*>(workspace);
  const dim3 grid(parts, heads, rows.rows);
  if (kv.kv_f16)
    decode_kernel<__half><<<grid, decode_threads, 0, stream>>>(q, q_stride, rows.pos, rows.seq,
                                                               heads, kv, layer, ws, out, out_t);
  else
    decode_kernel<float><<<grid, decode_threads, 0, stream>>>(q, q_stride, rows.pos, rows.seq,
                                                              heads, kv, layer, ws, out, out_t);
  TM_CUDA_LAUNCH();
  if (parts > 1) {
    decode_reduce_kernel<<<dim3(heads, rows.rows), decode_threads, 0, stream>>>(
        rows.pos, heads, kv.head_dim, parts, ws, out, out_t);
    TM_CUDA_LAUNCH();
  }
}

}  // namespace tokenmill::gpu
