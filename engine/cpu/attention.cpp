// Causal attention over paged K/V, tiled over blocks (see attention.hpp). Two passes per
// tile, as the reference: all scores, softmax, then the weighted sum of V, so the result is
// the reference's up to float summation order.
#include "engine/cpu/attention.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "engine/cpu/detail/exp_avx2.hpp"
#include "engine/cpu/kernels.hpp"

#if defined(__x86_64__)
#include <immintrin.h>
// GCC 12's AVX-512 intrinsics seed results with `__Y = __Y` and warn wherever inlined.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#define TM_ATT_X86 1
#include "engine/cpu/detail/transpose_avx512.hpp"
#define TM_ATT_AVX2 __attribute__((target("avx2,fma,f16c")))
#define TM_ATT_AVX512 __attribute__((target("avx512f,avx2,fma,f16c")))
#else
#define TM_ATT_X86 0
#endif

namespace tokenmill::cpu {
namespace {

/// Key `s` of a block as f32 (head_dim values).
void key_row(const kv_head_blocks& kv, const std::byte* blk, uint32_t s, float* dst) {
  const size_t hd = kv.head_dim;
  if (kv.dtype_bytes == 2)
    f16_to_f32_row(reinterpret_cast<const uint16_t*>(blk) + s * hd, dst, hd);
  else
    std::memcpy(dst, reinterpret_cast<const float*>(blk) + s * hd, hd * 4);
}

float elem(const kv_head_blocks& kv, const std::byte* blk, size_t i) {
  if (kv.dtype_bytes == 2) {
    uint16_t h;
    std::memcpy(&h, blk + 2 * i, 2);
    return f16_to_f32(h);
  }
  float f;
  std::memcpy(&f, blk + 4 * i, 4);
  return f;
}

#if TM_ATT_X86

TM_ATT_AVX2 inline __m256 load_kv8(const kv_head_blocks& kv, const std::byte* blk, size_t i) {
  if (kv.dtype_bytes == 2)
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2 * i)));
  return _mm256_loadu_ps(reinterpret_cast<const float*>(blk) + i);
}

/// rows r[0..7] (8 keys x 8 dims) -> r[d] = the 8 keys' dimension d.
TM_ATT_AVX2 inline void transpose8(__m256 r[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xee);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xee);
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xee);
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xee);
  r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
  r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
  r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
  r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
  r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
  r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
  r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
  r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

/// Blocks ahead of the one being read whose K (pass 1) lines are prefetched.
constexpr size_t kv_prefetch_blocks = 4;

/// Prefetches block `b` of `blocks` (`bytes` long; nothing past the list) into L2. A decode
/// step's K/V comes from DRAM (the step's weights evict it) in blocks of a few KiB, too short
/// for the hardware prefetcher to ramp up: left to it, a KV head's task waited on one miss
/// after another. Decode tasks (3 query heads of one KV head, f16 KV in scattered blocks,
/// caches flushed between steps, 48 tasks per step as in 125m): 13.3-16.1 -> 9.4-12.3 us
/// per task at a 160-token context, 66-85 -> 44-60 us at 1024 (medians of 30, 4 interleaved
/// runs each, 2-core EPYC under a load of 4); 8 blocks ahead, or V as far ahead as K,
/// measured alike.
inline void prefetch_kv_block(std::span<const std::byte* const> blocks, size_t b, size_t bytes) {
  if (b >= blocks.size()) return;
  const char* p = reinterpret_cast<const char*>(blocks[b]);
  for (size_t o = 0; o < bytes; o += 64)
    __builtin_prefetch(p + o, 0, 2);
}

/// K block [cnt][hd] -> kt [hd][ld] f32, keys [cnt, ld) zero (ld % 8 == 0).
TM_ATT_AVX2 void transpose_block(const kv_head_blocks& kv, const std::byte* blk, uint32_t cnt,
                                 float* kt, size_t ld) {
  const size_t hd = kv.head_dim;
  const size_t d8 = hd / 8 * 8;
  uint32_t s0 = 0;
  for (; s0 + 8 <= cnt; s0 += 8) {
    for (size_t d0 = 0; d0 < d8; d0 += 8) {
      __m256 r[8];
      for (int s = 0; s < 8; ++s)
        r[s] = load_kv8(kv, blk, (s0 + s) * hd + d0);
      transpose8(r);
      for (int d = 0; d < 8; ++d)
        _mm256_storeu_ps(kt + (d0 + d) * ld + s0, r[d]);
    }
    for (size_t d = d8; d < hd; ++d)
      for (uint32_t s = s0; s < s0 + 8; ++s)
        kt[d * ld + s] = elem(kv, blk, s * hd + d);
  }
  for (size_t d = 0; d < hd; ++d) {
    for (uint32_t s = s0; s < cnt; ++s)
      kt[d * ld + s] = elem(kv, blk, s * hd + d);
    for (size_t s = cnt; s < ld; ++s)
      kt[d * ld + s] = 0;
  }
}

/// Scores of up to 4 queries against 8 keys: out[i][0..8) = scale * q_i . kt[:, 0..8).
/// Even and odd dimensions go to separate accumulators (8 independent FMA chains).
template <int NQ>
TM_ATT_AVX2 void scores_4x8(const float* const* q, const float* kt, size_t ld, size_t hd,
                            float scale, float* const* out) {
  __m256 a[NQ], b[NQ];
#pragma GCC unroll 4
  for (int i = 0; i < NQ; ++i)
    a[i] = b[i] = _mm256_setzero_ps();
  size_t d = 0;
  for (; d + 2 <= hd; d += 2) {
    const __m256 k0 = _mm256_loadu_ps(kt + d * ld), k1 = _mm256_loadu_ps(kt + (d + 1) * ld);
#pragma GCC unroll 4
    for (int i = 0; i < NQ; ++i) {
      a[i] = _mm256_fmadd_ps(_mm256_broadcast_ss(q[i] + d), k0, a[i]);
      b[i] = _mm256_fmadd_ps(_mm256_broadcast_ss(q[i] + d + 1), k1, b[i]);
    }
  }
  if (d < hd) {
    const __m256 k0 = _mm256_loadu_ps(kt + d * ld);
#pragma GCC unroll 4
    for (int i = 0; i < NQ; ++i)
      a[i] = _mm256_fmadd_ps(_mm256_broadcast_ss(q[i] + d), k0, a[i]);
  }
  const __m256 sv = _mm256_set1_ps(scale);
#pragma GCC unroll 4
  for (int i = 0; i < NQ; ++i)
    _mm256_storeu_ps(out[i], _mm256_mul_ps(sv, _mm256_add_ps(a[i], b[i])));
}

/// out[d0, hd) += sum_{s < cnt} p[s] * v[s][d0, hd), v rows of hd f32.
TM_ATT_AVX2 void weighted_sum_tail(const float* p, const float* v, uint32_t cnt, size_t hd,
                                   size_t d0, float* out) {
  size_t d = d0;
  for (; d + 32 <= hd; d += 32) {
    __m256 a0 = _mm256_loadu_ps(out + d), a1 = _mm256_loadu_ps(out + d + 8),
           a2 = _mm256_loadu_ps(out + d + 16), a3 = _mm256_loadu_ps(out + d + 24);
    for (uint32_t s = 0; s < cnt; ++s) {
      const __m256 pv = _mm256_broadcast_ss(p + s);
      const float* vr = v + s * hd + d;
      a0 = _mm256_fmadd_ps(pv, _mm256_loadu_ps(vr), a0);
      a1 = _mm256_fmadd_ps(pv, _mm256_loadu_ps(vr + 8), a1);
      a2 = _mm256_fmadd_ps(pv, _mm256_loadu_ps(vr + 16), a2);
      a3 = _mm256_fmadd_ps(pv, _mm256_loadu_ps(vr + 24), a3);
    }
    _mm256_storeu_ps(out + d, a0);
    _mm256_storeu_ps(out + d + 8, a1);
    _mm256_storeu_ps(out + d + 16, a2);
    _mm256_storeu_ps(out + d + 24, a3);
  }
  for (; d + 8 <= hd; d += 8) {
    __m256 a0 = _mm256_loadu_ps(out + d);
    for (uint32_t s = 0; s < cnt; ++s)
      a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(p + s), _mm256_loadu_ps(v + s * hd + d), a0);
    _mm256_storeu_ps(out + d, a0);
  }
  for (; d < hd; ++d) {
    float a = out[d];
    for (uint32_t s = 0; s < cnt; ++s)
      a += p[s] * v[s * hd + d];
    out[d] = a;
  }
}

/// out[0, hd) += sum_{s < cnt} p[s] * v[s][0, hd).
TM_ATT_AVX2 inline void weighted_sum(const float* p, const float* v, uint32_t cnt, size_t hd,
                                     float* out) {
  weighted_sum_tail(p, v, cnt, hd, 0, out);
}

/// weighted_sum() for 4 queries at once over their first `cnt` keys: 16 dimensions x 4
/// queries per register tile, so each V load feeds 4 FMAs. p[i] are the queries'
/// probabilities for this block's keys, out[i] their outputs.
TM_ATT_AVX2 void weighted_sum4(const float* const* p, const float* v, uint32_t cnt, size_t hd,
                               float* const* out) {
  size_t d = 0;
  for (; d + 16 <= hd; d += 16) {
    __m256 a0 = _mm256_loadu_ps(out[0] + d), a1 = _mm256_loadu_ps(out[0] + d + 8);
    __m256 b0 = _mm256_loadu_ps(out[1] + d), b1 = _mm256_loadu_ps(out[1] + d + 8);
    __m256 c0 = _mm256_loadu_ps(out[2] + d), c1 = _mm256_loadu_ps(out[2] + d + 8);
    __m256 e0 = _mm256_loadu_ps(out[3] + d), e1 = _mm256_loadu_ps(out[3] + d + 8);
    for (uint32_t s = 0; s < cnt; ++s) {
      const __m256 v0 = _mm256_loadu_ps(v + s * hd + d), v1 = _mm256_loadu_ps(v + s * hd + d + 8);
      __m256 pv = _mm256_broadcast_ss(p[0] + s);
      a0 = _mm256_fmadd_ps(pv, v0, a0);
      a1 = _mm256_fmadd_ps(pv, v1, a1);
      pv = _mm256_broadcast_ss(p[1] + s);
      b0 = _mm256_fmadd_ps(pv, v0, b0);
      b1 = _mm256_fmadd_ps(pv, v1, b1);
      pv = _mm256_broadcast_ss(p[2] + s);
      c0 = _mm256_fmadd_ps(pv, v0, c0);
      c1 = _mm256_fmadd_ps(pv, v1, c1);
      pv = _mm256_broadcast_ss(p[3] + s);
      e0 = _mm256_fmadd_ps(pv, v0, e0);
      e1 = _mm256_fmadd_ps(pv, v1, e1);
    }
    _mm256_storeu_ps(out[0] + d, a0);
    _mm256_storeu_ps(out[0] + d + 8, a1);
    _mm256_storeu_ps(out[1] + d, b0);
    _mm256_storeu_ps(out[1] + d + 8, b1);
    _mm256_storeu_ps(out[2] + d, c0);
    _mm256_storeu_ps(out[2] + d + 8, c1);
    _mm256_storeu_ps(out[3] + d, e0);
    _mm256_storeu_ps(out[3] + d + 8, e1);
  }
  if (d < hd)
    for (int i = 0; i < 4; ++i)
      weighted_sum_tail(p[i], v, cnt, hd, d, out[i]);
}

TM_ATT_AVX2 void softmax_avx2(float* x, size_t n) {
  size_t k = 0;
  __m256 mv = _mm256_set1_ps(-__builtin_inff());
  for (; k + 8 <= n; k += 8)
    mv = _mm256_max_ps(mv, _mm256_loadu_ps(x + k));
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, mv);
  float mx = *std::max_element(lanes, lanes + 8);
  for (; k < n; ++k)
    mx = std::max(mx, x[k]);
  const __m256 m = _mm256_set1_ps(mx);
  __m256 acc = _mm256_setzero_ps();
  k = 0;
  for (; k + 8 <= n; k += 8) {
    const __m256 e = detail::exp8_avx2(_mm256_sub_ps(_mm256_loadu_ps(x + k), m));
    _mm256_storeu_ps(x + k, e);
    acc = _mm256_add_ps(acc, e);
  }
  alignas(32) float part[8];
  _mm256_store_ps(part, acc);
  double sum = 0;
  for (float p : part)
    sum += p;
  for (; k < n; ++k) {
    x[k] = std::exp(x[k] - mx);
    sum += x[k];
  }
  const __m256 inv = _mm256_set1_ps(static_cast<float>(1.0 / sum));
  k = 0;
  for (; k + 8 <= n; k += 8)
    _mm256_storeu_ps(x + k, _mm256_mul_ps(inv, _mm256_loadu_ps(x + k)));
  const float invs = static_cast<float>(1.0 / sum);
  for (; k < n; ++k)
    x[k] *= invs;
}

/// softmax_avx2 on 16 lanes: the same exp values bit for bit (exp16_avx512); the sum has
/// 16 partial lanes instead of 8.
TM_ATT_AVX512 void softmax_avx512(float* x, size_t n) {
  size_t k = 0;
  __m512 mv = _mm512_set1_ps(-__builtin_inff());
  for (; k + 16 <= n; k += 16)
    mv = _mm512_max_ps(mv, _mm512_loadu_ps(x + k));
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, mv);
  float mx = *std::max_element(lanes, lanes + 16);
  for (; k < n; ++k)
    mx = std::max(mx, x[k]);
  const __m512 m = _mm512_set1_ps(mx);
  __m512 acc = _mm512_setzero_ps();
  k = 0;
  for (; k + 16 <= n; k += 16) {
    const __m512 e = detail::exp16_avx512(_mm512_sub_ps(_mm512_loadu_ps(x + k), m));
    _mm512_storeu_ps(x + k, e);
    acc = _mm512_add_ps(acc, e);
  }
  alignas(64) float part[16];
  _mm512_store_ps(part, acc);
  double sum = 0;
  for (float p : part)
    sum += p;
  for (; k < n; ++k) {
    x[k] = std::exp(x[k] - mx);
    sum += x[k];
  }
  const __m512 inv = _mm512_set1_ps(static_cast<float>(1.0 / sum));
  k = 0;
  for (; k + 16 <= n; k += 16)
    _mm512_storeu_ps(x + k, _mm512_mul_ps(inv, _mm512_loadu_ps(x + k)));
  const float invs = static_cast<float>(1.0 / sum);
  for (; k < n; ++k)
    x[k] *= invs;
}

/// Scores of up to 4 queries against 16 keys with AVX-512: scores_4x8 on one 16-lane
/// vector per transposed K row (half the loads and FMAs per score).
template <int NQ>
TM_ATT_AVX512 void scores_4x16(const float* const* q, const float* kt, size_t ld, size_t hd,
                               float scale, float* const* out) {
  __m512 a[NQ], b[NQ];
#pragma GCC unroll 4
  for (int i = 0; i < NQ; ++i)
    a[i] = b[i] = _mm512_setzero_ps();
  size_t d = 0;
  for (; d + 2 <= hd; d += 2) {
    const __m512 k0 = _mm512_loadu_ps(kt + d * ld), k1 = _mm512_loadu_ps(kt + (d + 1) * ld);
#pragma GCC unroll 4
    for (int i = 0; i < NQ; ++i) {
      a[i] = _mm512_fmadd_ps(_mm512_set1_ps(q[i][d]), k0, a[i]);
      b[i] = _mm512_fmadd_ps(_mm512_set1_ps(q[i][d + 1]), k1, b[i]);
    }
  }
  if (d < hd) {
    const __m512 k0 = _mm512_loadu_ps(kt + d * ld);
#pragma GCC unroll 4
    for (int i = 0; i < NQ; ++i)
      a[i] = _mm512_fmadd_ps(_mm512_set1_ps(q[i][d]), k0, a[i]);
  }
  const __m512 sv = _mm512_set1_ps(scale);
#pragma GCC unroll 4
  for (int i = 0; i < NQ; ++i)
    _mm512_storeu_ps(out[i], _mm512_mul_ps(sv, _mm512_add_ps(a[i], b[i])));
}

/// 16 dimensions of 16 f16 keys (key s at k + s * hd), keys from `valid` on zero (not
/// read), converted and transposed: r[d] holds dimension d of every key (lane s: key s).
TM_ATT_AVX512 inline void load_k16(const uint16_t* k, size_t hd, size_t valid, __m512 (&r)[16]) {
#pragma GCC unroll 16
  for (size_t s = 0; s < 16; ++s)
    r[s] = s < valid
               ? _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(k + s * hd)))
               : _mm512_setzero_ps();
  detail::transpose16_avx512(r);
}

/// scores_4x16 on 16 f16 keys read in place: each 16 x 16 piece of the block (16 keys, 16
/// dimensions) is converted and transposed in registers instead of through a transposed
/// copy, and then the same FMAs run in the same order, so the scores are scores_4x16's
/// bit for bit. Keys from `valid` on are zero (not read). hd % 16 == 0. For a decode
/// step's few queries per KV head the copy cost more than the scores themselves.
template <int NQ>
TM_ATT_AVX512 void scores_direct(const float* const* q, const uint16_t* k, size_t hd,
                                 uint32_t valid, float scale, float* const* out) {
  __m512 a[NQ], b[NQ];
#pragma GCC unroll 4
  for (int i = 0; i < NQ; ++i)
    a[i] = b[i] = _mm512_setzero_ps();
  for (size_t d0 = 0; d0 < hd; d0 += 16) {
    __m512 r[16];
    load_k16(k + d0, hd, valid, r);
#pragma GCC unroll 8
    for (int d = 0; d < 16; d += 2) {
#pragma GCC unroll 4
      for (int i = 0; i < NQ; ++i) {
        a[i] = _mm512_fmadd_ps(_mm512_set1_ps(q[i][d0 + d]), r[d], a[i]);
        b[i] = _mm512_fmadd_ps(_mm512_set1_ps(q[i][d0 + d + 1]), r[d + 1], b[i]);
      }
    }
  }
  const __m512 sv = _mm512_set1_ps(scale);
#pragma GCC unroll 4
  for (int i = 0; i < NQ; ++i)
    _mm512_storeu_ps(out[i], _mm512_mul_ps(sv, _mm512_add_ps(a[i], b[i])));
}

TM_ATT_AVX512 void scores_direct_n(int nq, const float* const* q, const uint16_t* k, size_t hd,
                                   uint32_t valid, float scale, float* const* out) {
  switch (nq) {
    case 4:
      return scores_direct<4>(q, k, hd, valid, scale, out);
    case 3:
      return scores_direct<3>(q, k, hd, valid, scale, out);
    case 2:
      return scores_direct<2>(q, k, hd, valid, scale, out);
    case 1:
      return scores_direct<1>(q, k, hd, valid, scale, out);
    default:
      return;
  }
}

/// transpose_block for f16 K with hd % 16 == 0 on AVX-512: 16 keys x 16 dimensions per
/// register transpose (ld % 16 == 0; keys [cnt, ld) zero).
TM_ATT_AVX512 void transpose_block16(const uint16_t* k, uint32_t cnt, size_t hd, float* kt,
                                     size_t ld) {
  for (size_t s0 = 0; s0 < ld; s0 += 16)
    for (size_t d0 = 0; d0 < hd; d0 += 16) {
      __m512 r[16];
      load_k16(k + s0 * hd + d0, hd, cnt > s0 ? cnt - s0 : 0, r);
#pragma GCC unroll 16
      for (size_t d = 0; d < 16; ++d)
        _mm512_storeu_ps(kt + (d0 + d) * ld + s0, r[d]);
    }
}

/// Up to 4 queries' scores against W keys (8: AVX2, 16: AVX-512).
template <int W, int NQ>
TM_ATT_AVX2 __attribute__((always_inline)) inline void scores_w(const float* const* q,
                                                                const float* kt, size_t ld,
                                                                size_t hd, float scale,
                                                                float* const* out) {
  if constexpr (W == 16)
    scores_4x16<NQ>(q, kt, ld, hd, scale, out);
  else
    scores_4x8<NQ>(q, kt, ld, hd, scale, out);
}

/// 16 V values from row s at column d as f32: V stored f32, or f16 (H) converted as it is
/// loaded (exact), which saves a conversion pass over the block.
template <bool H>
TM_ATT_AVX512 inline __m512 load_v16(const void* v, size_t i) {
  if constexpr (H)
    return _mm512_cvtph_ps(
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(v) + i)));
  else
    return _mm512_loadu_ps(static_cast<const float*>(v) + i);
}

/// weighted_sum() for NQ queries with AVX-512: 32 dimensions x NQ queries per register
/// tile, then 16. V rows are f32, or f16 when H (then hd % 16 == 0); f32 rows may end in an
/// AVX2 tail.
template <int NQ, bool H = false>
TM_ATT_AVX512 void weighted_sum_avx512(const float* const* p, const void* v, uint32_t cnt,
                                       size_t hd, float* const* out) {
  size_t d = 0;
  for (; d + 32 <= hd; d += 32) {
    __m512 a[NQ][2];
#pragma GCC unroll 4
    for (int i = 0; i < NQ; ++i) {
      a[i][0] = _mm512_loadu_ps(out[i] + d);
      a[i][1] = _mm512_loadu_ps(out[i] + d + 16);
    }
    for (uint32_t s = 0; s < cnt; ++s) {
      const __m512 v0 = load_v16<H>(v, s * hd + d), v1 = load_v16<H>(v, s * hd + d + 16);
#pragma GCC unroll 4
      for (int i = 0; i < NQ; ++i) {
        const __m512 pv = _mm512_set1_ps(p[i][s]);
        a[i][0] = _mm512_fmadd_ps(pv, v0, a[i][0]);
        a[i][1] = _mm512_fmadd_ps(pv, v1, a[i][1]);
      }
    }
#pragma GCC unroll 4
    for (int i = 0; i < NQ; ++i) {
      _mm512_storeu_ps(out[i] + d, a[i][0]);
      _mm512_storeu_ps(out[i] + d + 16, a[i][1]);
    }
  }
  for (; d + 16 <= hd; d += 16) {
    __m512 a[NQ];
#pragma GCC unroll 4
    for (int i = 0; i < NQ; ++i)
      a[i] = _mm512_loadu_ps(out[i] + d);
    for (uint32_t s = 0; s < cnt; ++s) {
      const __m512 v0 = load_v16<H>(v, s * hd + d);
#pragma GCC unroll 4
      for (int i = 0; i < NQ; ++i)
        a[i] = _mm512_fmadd_ps(_mm512_set1_ps(p[i][s]), v0, a[i]);
    }
#pragma GCC unroll 4
    for (int i = 0; i < NQ; ++i)
      _mm512_storeu_ps(out[i] + d, a[i]);
  }
  if constexpr (!H)
    if (d < hd)
      for (int i = 0; i < NQ; ++i)
        weighted_sum_tail(p[i], static_cast<const float*>(v), cnt, hd, d, out[i]);
}

/// weighted_sum_avx512 over f16 V rows (hd % 16 == 0) for g (1-4) queries.
TM_ATT_AVX512 void weighted_sum_f16(size_t g, const float* const* p, const uint16_t* v,
                                    uint32_t cnt, size_t hd, float* const* out) {
  switch (g) {
    case 4:
      return weighted_sum_avx512<4, true>(p, v, cnt, hd, out);
    case 3:
      return weighted_sum_avx512<3, true>(p, v, cnt, hd, out);
    case 2:
      return weighted_sum_avx512<2, true>(p, v, cnt, hd, out);
    default:
      return weighted_sum_avx512<1, true>(p, v, cnt, hd, out);
  }
}

/// g (1-4) queries' weighted sums over their first cnt keys.
template <int W>
TM_ATT_AVX2 __attribute__((always_inline)) inline void weighted_sum_group(
    size_t g, const float* const* p, const float* v, uint32_t cnt, size_t hd, float* const* out) {
  if constexpr (W == 16) {
    switch (g) {
      case 4:
        return weighted_sum_avx512<4>(p, v, cnt, hd, out);
      case 3:
        return weighted_sum_avx512<3>(p, v, cnt, hd, out);
      case 2:
        return weighted_sum_avx512<2>(p, v, cnt, hd, out);
      default:
        return weighted_sum_avx512<1>(p, v, cnt, hd, out);
    }
  } else {
    if (g == 4) return weighted_sum4(p, v, cnt, hd, out);
    for (size_t i = 0; i < g; ++i)
      weighted_sum(p[i], v, cnt, hd, out[i]);
  }
}

/// attend() with score tiles of W keys; inlined into attend_avx2 (W 8) and attend_avx512
/// (W 16), which carry the targets.
template <int W>
TM_ATT_AVX2 __attribute__((always_inline)) inline void attend_body(const kv_head_blocks& kv,
                                                                   std::span<const attn_query> qs,
                                                                   float scale, attn_scratch& s) {
  const size_t hd = kv.head_dim, bt = kv.block_tokens, nq = qs.size();
  const size_t ld = (bt + W - 1) / W * W;  // keys per transposed block row
  uint32_t max_ctx = 0;
  for (const auto& q : qs)
    max_ctx = std::max(max_ctx, q.ctx);
  const size_t nblocks = (max_ctx + bt - 1) / bt;
  // Score rows: block b's keys at [b * bt, b * bt + ld): the vector stores may run ld - bt
  // past a block into the next one (rewritten when its turn comes) or into the slack.
  const size_t stride = nblocks * bt + ld;
  if (s.scores.size() < nq * stride) s.scores.resize(nq * stride);
  if (s.kt.size() < hd * ld) s.kt.resize(hd * ld);
  if (kv.dtype_bytes == 2 && s.vf.size() < bt * hd) s.vf.resize(bt * hd);
  float* scores = s.scores.data();

  // Pass 1: scores, block by block, for every query that sees the block. K is prefetched
  // kv_prefetch_blocks ahead, and V block by block for pass 2 (in L2 by then).
  const float* qp[4];
  float* op[4];
  const size_t block_bytes = bt * hd * kv.dtype_bytes;
  // Few queries (a decode step's GQA group) read f16 K in place; more share a transposed
  // copy of each block. Both give the same scores bit for bit.
  const bool k16 = W == 16 && kv.dtype_bytes == 2 && hd % 16 == 0;  // f16 K, AVX-512
  const bool direct = k16 && nq <= 4;
  const auto k_blocks = kv.k.first(std::min(nblocks, kv.k.size()));
  const auto v_blocks = kv.v.first(std::min(nblocks, kv.v.size()));
  for (size_t b = 0; b < kv_prefetch_blocks; ++b)
    prefetch_kv_block(k_blocks, b, block_bytes);
  for (size_t b = 0; b < nblocks; ++b) {
    const uint32_t p0 = static_cast<uint32_t>(b * bt);
    const uint32_t cnt = static_cast<uint32_t>(std::min<size_t>(bt, max_ctx - p0));
    prefetch_kv_block(k_blocks, b + kv_prefetch_blocks, block_bytes);
    prefetch_kv_block(v_blocks, b, block_bytes);
    if constexpr (W == 16) {
      if (direct) {
        const auto* kb = reinterpret_cast<const uint16_t*>(kv.k[b]);
        for (uint32_t c = 0; c < cnt; c += 16) {
          int m = 0;
          for (size_t i = 0; i < nq; ++i) {
            if (qs[i].ctx <= p0 + c) continue;
            qp[m] = qs[i].q;
            op[m] = scores + i * stride + p0 + c;
            ++m;
          }
          scores_direct_n(m, qp, kb + size_t{c} * hd, hd, std::min<uint32_t>(16, cnt - c), scale,
                          op);
        }
        continue;
      }
      if (k16)
        transpose_block16(reinterpret_cast<const uint16_t*>(kv.k[b]), cnt, hd, s.kt.data(), ld);
      else
        transpose_block(kv, kv.k[b], cnt, s.kt.data(), ld);
    } else {
      transpose_block(kv, kv.k[b], cnt, s.kt.data(), ld);
    }
    for (size_t c = 0; c < ld; c += W) {
      int m = 0;
      for (size_t i = 0; i < nq; ++i) {
        if (qs[i].ctx <= p0 + c) continue;
        qp[m] = qs[i].q;
        op[m] = scores + i * stride + p0 + c;
        if (++m == 4) {
          scores_w<W, 4>(qp, s.kt.data() + c, ld, hd, scale, op);
          m = 0;
        }
      }
      switch (m) {
        case 3:
          scores_w<W, 3>(qp, s.kt.data() + c, ld, hd, scale, op);
          break;
        case 2:
          scores_w<W, 2>(qp, s.kt.data() + c, ld, hd, scale, op);
          break;
        case 1:
          scores_w<W, 1>(qp, s.kt.data() + c, ld, hd, scale, op);
          break;
        default:
          break;
      }
    }
  }
  for (size_t i = 0; i < nq; ++i) {
    if constexpr (W == 16)
      softmax_avx512(scores + i * stride, qs[i].ctx);
    else
      softmax_avx2(scores + i * stride, qs[i].ctx);
    std::fill(qs[i].out, qs[i].out + hd, 0.0f);
  }

  // Pass 2: the weighted sum of V, block by block.
  for (size_t b = 0; b < nblocks; ++b) {
    const uint32_t p0 = static_cast<uint32_t>(b * bt);
    const uint32_t cnt = static_cast<uint32_t>(std::min<size_t>(bt, max_ctx - p0));
    // f16 V is converted to f32 once per block, when a path needs f32 rows; the AVX-512
    // group sums read f16 directly.
    const float* vf = kv.dtype_bytes == 2 ? nullptr : reinterpret_cast<const float*>(kv.v[b]);
    auto v = [&] {
      if (!vf) {
        f16_to_f32_row(reinterpret_cast<const uint16_t*>(kv.v[b]), s.vf.data(), cnt * hd);
        vf = s.vf.data();
      }
      return vf;
    };
    const bool f16_direct = W == 16 && kv.dtype_bytes == 2 && hd % 16 == 0;
    // Queries in groups of up to four over the keys all of them see, then each one's
    // remaining keys (every output element is summed in key order either way).
    for (size_t i = 0; i < nq; i += 4) {
      const size_t g = std::min<size_t>(4, nq - i);
      uint32_t common = cnt;
      for (size_t t = i; t < i + g; ++t)
        common = std::min(common, qs[t].ctx > p0 ? qs[t].ctx - p0 : 0u);
      if (common > 0) {
        const float* pp[4];
        float* oo[4];
        for (size_t t = 0; t < g; ++t) {
          pp[t] = scores + (i + t) * stride + p0;
          oo[t] = qs[i + t].out;
        }
        if (f16_direct)
          weighted_sum_f16(g, pp, reinterpret_cast<const uint16_t*>(kv.v[b]), common, hd, oo);
        else
          weighted_sum_group<W>(g, pp, v(), common, hd, oo);
      }
      for (size_t t = i; t < i + g; ++t) {
        if (qs[t].ctx <= p0) continue;
        const uint32_t c = std::min(cnt, qs[t].ctx - p0);
        if (c > common)
          weighted_sum(scores + t * stride + p0 + common, v() + size_t{common} * hd, c - common, hd,
                       qs[t].out);
      }
    }
  }
}

TM_ATT_AVX2 void attend_avx2(const kv_head_blocks& kv, std::span<const attn_query> qs, float scale,
                             attn_scratch& s) {
  attend_body<8>(kv, qs, scale, s);
}

TM_ATT_AVX512 void attend_avx512(const kv_head_blocks& kv, std::span<const attn_query> qs,
                                 float scale, attn_scratch& s) {
  attend_body<16>(kv, qs, scale, s);
}

#endif  // TM_ATT_X86

}  // namespace

void attend_scalar(const kv_head_blocks& kv, std::span<const attn_query> qs, float scale) {
  const size_t hd = kv.head_dim, bt = kv.block_tokens;
  std::vector<float> sc, row(hd);
  for (const auto& q : qs) {
    sc.assign(q.ctx, 0.0f);
    for (uint32_t p = 0; p < q.ctx; ++p) {
      key_row(kv, kv.k[p / bt], static_cast<uint32_t>(p % bt), row.data());
      float d = 0;
      for (size_t i = 0; i < hd; ++i)
        d += q.q[i] * row[i];
      sc[p] = scale * d;
    }
    softmax(sc.data(), q.ctx);
    std::fill(q.out, q.out + hd, 0.0f);
    for (uint32_t p = 0; p < q.ctx; ++p)
      for (size_t i = 0; i < hd; ++i)
        q.out[i] += sc[p] * elem(kv, kv.v[p / bt], (p % bt) * hd + i);
  }
}

void attend_on(float_isa isa, const kv_head_blocks& kv, std::span<const attn_query> qs, float scale,
               attn_scratch& scratch) {
  if (qs.empty()) return;
#if TM_ATT_X86
  if (isa == float_isa::avx512) return attend_avx512(kv, qs, scale, scratch);
  if (isa == float_isa::avx2) return attend_avx2(kv, qs, scale, scratch);
#endif
  (void)isa;
  (void)scratch;
  attend_scalar(kv, qs, scale);
}

void attend(const kv_head_blocks& kv, std::span<const attn_query> qs, float scale,
            attn_scratch& scratch) {
  attend_on(best_float_isa(), kv, qs, scale, scratch);
}

void softmax_fast(float* x, size_t n) {
#if TM_ATT_X86
  if (simd_available()) return softmax_avx2(x, n);
#endif
  softmax(x, n);
}

}  // namespace tokenmill::cpu
