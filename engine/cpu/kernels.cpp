// Over 600 lines: each kernel's AVX2 path stays beside its scalar reference and dispatch.
#include "engine/cpu/kernels.hpp"

#include "engine/cpu/detail/float_avx512.hpp"
#include "engine/cpu/detail/row_prefetch.hpp"

#include "engine/cpu/quant.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numbers>
#include <stdexcept>
#include <string>
#include <type_traits>

#if defined(__x86_64__)
#include <immintrin.h>

#include "engine/cpu/detail/exp_avx2.hpp"
#define TM_X86 1
#define TM_AVX2 __attribute__((target("avx2,fma,f16c")))
#else
#define TM_X86 0
#endif

// Choice of linear() paths, by measurement (a 4096x4096 weight, one thread, medians of
// 5-11 runs on the 2-core development VM while other builds ran: load average ~8, so the
// figures are noisy, +-50%; reproduce with the bench described in the engine report):
//   own SIMD kernel (4 weight rows x 2 batch rows, on-the-fly conversion):
//     f16  n=1 5-11 GB/s; n=4 16 GFLOP/s; n=64 15 GFLOP/s; n=256 15-16 GFLOP/s
//     bf16 n=1 5 GB/s;    n=64 14-16 GFLOP/s; n=256 15 GFLOP/s
//     q8_0 n=1 2-3 GB/s;  n=64 7-8 GFLOP/s;  n=256 7-9 GFLOP/s
//     f32  n=1 4-5 GB/s;  n=64 9-16 GFLOP/s; n=256 9-10 GFLOP/s
//   OpenBLAS sgemm (single-threaded per pool thread; f16/bf16/q8_0 converted in tiles):
//     f32  n=64 7-8 GFLOP/s, n=256 8-19 GFLOP/s (one whole-matrix call)
//     f16/bf16 n=256 5-10 GFLOP/s (conversion + repacking x per tile); q8_0 n=256 8 GFLOP/s
//   Small tiles (64 rows) made sgemm 2-3x slower: it repacks x on every call.
// So the own kernel runs for every dtype and batch size. sgemm was on par or ahead only for
// f32 and q8_0 weights at >= 64 rows, and OpenBLAS is not linked at all: its pthread build
// starts worker threads when the library loads, before main() can block SIGINT/SIGTERM, so
// a stop signal could land on one of them and kill the process instead of reaching our
// orderly sigwait shutdown.
// From gemm_packed_min_rows batch rows (prefill chunks) gemm_packed_avx2 converts weights
// once per block of batch rows and runs 4x3 register tiles: 55-69 GFLOP/s on one thread
// against 35-39 for the on-the-fly kernel (f16 2048x768; the bench is in the issue note).
// Where the CPU has AVX-512 (F/BW/VL), detail/float_avx512.cpp runs both instead: 16-lane
// outer-product tiles over 64-row weight panels for prefill, 4 x 2 dot-product tiles for
// decode, masked column tails.

namespace tokenmill::cpu {
namespace {

constexpr size_t q8_block = 32;        ///< values per q8_0 block
constexpr size_t q8_block_bytes = 34;  ///< f16 scale + 32 int8

uint16_t load_u16(const std::byte* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

float load_f32(const std::byte* p) {
  float v;
  std::memcpy(&v, p, 4);
  return v;
}

/// Scalar value k of a row of element type t (f32, f16, bf16 or q8_0; the other block
/// formats go through dequantize_block_row).
float scalar_at(dtype t, const std::byte* row, size_t k) {
  switch (t) {
    case dtype::f32:
      return load_f32(row + 4 * k);
    case dtype::f16:
      return f16_to_f32(load_u16(row + 2 * k));
    case dtype::bf16:
      return bf16_to_f32(load_u16(row + 2 * k));
    case dtype::q8_0: {
      const std::byte* blk = row + (k / q8_block) * q8_block_bytes;
      return f16_to_f32(load_u16(blk)) *
             static_cast<float>(static_cast<int8_t>(blk[2 + k % q8_block]));
    }
    default:
      break;
  }
  return 0;
}

#if TM_X86

TM_AVX2 inline float hsum(__m256 v) {
  __m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  __m128 sh = _mm_movehdup_ps(lo);
  lo = _mm_add_ps(lo, sh);
  sh = _mm_movehl_ps(sh, lo);
  return _mm_cvtss_f32(_mm_add_ss(lo, sh));
}

struct f32_tag {};
struct f16_tag {};
struct bf16_tag {};

TM_AVX2 inline __m256 load8(f32_tag, const std::byte* row, size_t k) {
  return _mm256_loadu_ps(reinterpret_cast<const float*>(row) + k);
}
TM_AVX2 inline __m256 load8(f16_tag, const std::byte* row, size_t k) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * k)));
}
TM_AVX2 inline __m256 load8(bf16_tag, const std::byte* row, size_t k) {
  __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * k)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}
inline dtype type_of(f32_tag) {
  return dtype::f32;
}
inline dtype type_of(f16_tag) {
  return dtype::f16;
}
inline dtype type_of(bf16_tag) {
  return dtype::bf16;
}

/// 8 int8 quants -> 8 floats.
TM_AVX2 inline __m256 load_q8(const std::byte* q) {
  return _mm256_cvtepi32_ps(
      _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q))));
}

template <class Tag>
TM_AVX2 float dot_elem_avx2(Tag tag, const std::byte* row, const float* x, size_t cols) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  size_t k = 0;
  for (; k + 16 <= cols; k += 16) {
    a0 = _mm256_fmadd_ps(load8(tag, row, k), _mm256_loadu_ps(x + k), a0);
    a1 = _mm256_fmadd_ps(load8(tag, row, k + 8), _mm256_loadu_ps(x + k + 8), a1);
  }
  for (; k + 8 <= cols; k += 8)
    a0 = _mm256_fmadd_ps(load8(tag, row, k), _mm256_loadu_ps(x + k), a0);
  float s = hsum(_mm256_add_ps(a0, a1));
  for (; k < cols; ++k)
    s += scalar_at(type_of(tag), row, k) * x[k];
  return s;
}

TM_AVX2 float dot_q8_avx2(const std::byte* row, const float* x, size_t cols) {
  __m256 acc = _mm256_setzero_ps();
  for (size_t b = 0; b < cols / q8_block; ++b) {
    const std::byte* blk = row + b * q8_block_bytes;
    const float* xb = x + b * q8_block;
    __m256 s = _mm256_mul_ps(load_q8(blk + 2), _mm256_loadu_ps(xb));
    s = _mm256_fmadd_ps(load_q8(blk + 10), _mm256_loadu_ps(xb + 8), s);
    s = _mm256_fmadd_ps(load_q8(blk + 18), _mm256_loadu_ps(xb + 16), s);
    s = _mm256_fmadd_ps(load_q8(blk + 26), _mm256_loadu_ps(xb + 24), s);
    acc = _mm256_fmadd_ps(_mm256_set1_ps(_cvtsh_ss(load_u16(blk))), s, acc);
  }
  return hsum(acc);
}

TM_AVX2 float dot_row_avx2(dtype t, const std::byte* row, const float* x, size_t cols) {
  switch (t) {
    case dtype::f32:
      return dot_elem_avx2(f32_tag{}, row, x, cols);
    case dtype::f16:
      return dot_elem_avx2(f16_tag{}, row, x, cols);
    case dtype::bf16:
      return dot_elem_avx2(bf16_tag{}, row, x, cols);
    case dtype::q8_0:
      return dot_q8_avx2(row, x, cols);
    default:  // the int-dot formats: dot_row() handles them before
      return 0;
  }
}

/// GEMV over 4 weight rows x 2 batch rows at a time: each converted weight vector feeds 2
/// FMAs and each x load 4 (8 accumulators + 4 weights + 1 x fit AVX2's 16 registers); the
/// 4 weight rows stay in L1/L2 while the batch passes over them, so weights are read from
/// memory once per call whatever the batch size.
template <class Tag>
TM_AVX2 void gemv_elem_avx2(Tag tag, const tensor_view& w, const float* x, size_t n, float* y,
                            size_t ys, size_t r0, size_t r1) {
  const size_t cols = w.cols;
  const size_t rb = row_bytes(w.type, cols);
  const size_t vec_end = cols / 8 * 8;
  // f32 rows are long enough for the hardware prefetcher (measured at the roofline without).
  constexpr bool prefetch = !std::is_same_v<Tag, f32_tag>;
  size_t j = r0;
  for (; j + 4 <= r1; j += 4) {
    const std::byte* wr[4];
    for (int r = 0; r < 4; ++r)
      wr[r] = w.data + (j + r) * rb;
    size_t i = 0;
    for (; i + 2 <= n; i += 2) {
      const float* xa = x + i * cols;
      const float* xb = xa + cols;
      __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
      __m256 a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
      __m256 b0 = _mm256_setzero_ps(), b1 = _mm256_setzero_ps();
      __m256 b2 = _mm256_setzero_ps(), b3 = _mm256_setzero_ps();
      detail::row_prefetch pf(wr[0], rb, vec_end / 8);
      for (size_t k = 0; k < vec_end; k += 8) {
        if (prefetch && i == 0) pf.step();  // later batch rows find the group in cache
        __m256 w0 = load8(tag, wr[0], k), w1 = load8(tag, wr[1], k);
        __m256 w2 = load8(tag, wr[2], k), w3 = load8(tag, wr[3], k);
        __m256 xv = _mm256_loadu_ps(xa + k);
        a0 = _mm256_fmadd_ps(w0, xv, a0);
        a1 = _mm256_fmadd_ps(w1, xv, a1);
        a2 = _mm256_fmadd_ps(w2, xv, a2);
        a3 = _mm256_fmadd_ps(w3, xv, a3);
        xv = _mm256_loadu_ps(xb + k);
        b0 = _mm256_fmadd_ps(w0, xv, b0);
        b1 = _mm256_fmadd_ps(w1, xv, b1);
        b2 = _mm256_fmadd_ps(w2, xv, b2);
        b3 = _mm256_fmadd_ps(w3, xv, b3);
      }
      float sa[4] = {hsum(a0), hsum(a1), hsum(a2), hsum(a3)};
      float sb[4] = {hsum(b0), hsum(b1), hsum(b2), hsum(b3)};
      for (int r = 0; r < 4; ++r) {
        for (size_t k = vec_end; k < cols; ++k) {
          float wv = scalar_at(w.type, wr[r], k);
          sa[r] += wv * xa[k];
          sb[r] += wv * xb[k];
        }
        y[i * ys + j + r] = sa[r];
        y[(i + 1) * ys + j + r] = sb[r];
      }
    }
    for (; i < n; ++i) {
      const float* xi = x + i * cols;
      __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
      __m256 a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
      detail::row_prefetch pf(wr[0], rb, vec_end / 8);
      for (size_t k = 0; k < vec_end; k += 8) {
        if (prefetch && i == 0) pf.step();
        __m256 xv = _mm256_loadu_ps(xi + k);
        a0 = _mm256_fmadd_ps(load8(tag, wr[0], k), xv, a0);
        a1 = _mm256_fmadd_ps(load8(tag, wr[1], k), xv, a1);
        a2 = _mm256_fmadd_ps(load8(tag, wr[2], k), xv, a2);
        a3 = _mm256_fmadd_ps(load8(tag, wr[3], k), xv, a3);
      }
      float s[4] = {hsum(a0), hsum(a1), hsum(a2), hsum(a3)};
      for (int r = 0; r < 4; ++r) {
        for (size_t k = vec_end; k < cols; ++k)
          s[r] += scalar_at(w.type, wr[r], k) * xi[k];
        y[i * ys + j + r] = s[r];
      }
    }
  }
  // Rows past the last 4-row tile: one accumulator, summed in the tiles' order, so that a
  // row's result does not depend on how a layer's rows were split between threads.
  for (; j < r1; ++j) {
    const std::byte* wr = w.data + j * rb;
    for (size_t i = 0; i < n; ++i) {
      const float* xi = x + i * cols;
      __m256 a0 = _mm256_setzero_ps();
      for (size_t k = 0; k < vec_end; k += 8)
        a0 = _mm256_fmadd_ps(load8(tag, wr, k), _mm256_loadu_ps(xi + k), a0);
      float s = hsum(a0);
      for (size_t k = vec_end; k < cols; ++k)
        s += scalar_at(w.type, wr, k) * xi[k];
      y[i * ys + j] = s;
    }
  }
}

/// q8_0 GEMV over 4 weight rows at a time. Small batches convert each block's int8 quants
/// to floats as they go (again for every batch row); larger ones convert a 4-row group once
/// into a small buffer (quants as floats, block scales beside them) and every batch row
/// multiplies that, with the same operations in the same order, so a row's result is bit
/// for bit what it gets alone.
TM_AVX2 void gemv_q8_avx2(const tensor_view& w, const float* x, size_t n, float* y, size_t ys,
                          size_t r0, size_t r1) {
  const size_t cols = w.cols;
  const size_t rb = row_bytes(w.type, cols);
  const size_t blocks = cols / q8_block;
  constexpr int R = 4;
  // Batches from pack_min_rows on convert each group once (measured on the 2-core EPYC,
  // 2048x768: break-even near 3 rows, 8 rows 1.4x faster); per block: R x 32 quants as
  // floats, then (after all blocks) R scales per block, 64-byte aligned so no 32-byte load
  // splits a cache line.
  constexpr size_t pack_min_rows = 4;
  thread_local std::vector<float> pack_mem;
  float* pq = nullptr;
  if (n >= pack_min_rows) {
    if (pack_mem.size() < R * (cols + blocks) + 16) pack_mem.resize(R * (cols + blocks) + 16);
    pq = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(pack_mem.data()) + 63) &
                                  ~uintptr_t{63});
  }
  size_t j = r0;
  for (; j + R <= r1; j += R) {
    const std::byte* wr[R];
    for (int r = 0; r < R; ++r)
      wr[r] = w.data + (j + r) * rb;
    if (n < pack_min_rows) {
      for (size_t i = 0; i < n; ++i) {
        const float* xi = x + i * cols;
        __m256 acc[R];
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r)
          acc[r] = _mm256_setzero_ps();
        detail::row_prefetch pf(wr[0], rb, blocks);
        for (size_t b = 0; b < blocks; ++b) {
          if (i == 0) pf.step();  // later batch rows find the group in cache
          const float* xb = xi + b * q8_block;
          __m256 x0 = _mm256_loadu_ps(xb), x1 = _mm256_loadu_ps(xb + 8);
          __m256 x2 = _mm256_loadu_ps(xb + 16), x3 = _mm256_loadu_ps(xb + 24);
#pragma GCC unroll 4
          for (int r = 0; r < R; ++r) {
            const std::byte* blk = wr[r] + b * q8_block_bytes;
            __m256 s = _mm256_mul_ps(load_q8(blk + 2), x0);
            s = _mm256_fmadd_ps(load_q8(blk + 10), x1, s);
            s = _mm256_fmadd_ps(load_q8(blk + 18), x2, s);
            s = _mm256_fmadd_ps(load_q8(blk + 26), x3, s);
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(_cvtsh_ss(load_u16(blk))), s, acc[r]);
          }
        }
        for (int r = 0; r < R; ++r)
          y[i * ys + j + r] = hsum(acc[r]);
      }
      continue;
    }
    float* pd = pq + R * cols;
    detail::row_prefetch pf(wr[0], rb, blocks);
    for (size_t b = 0; b < blocks; ++b) {
      pf.step();
      for (int r = 0; r < R; ++r) {
        const std::byte* blk = wr[r] + b * q8_block_bytes;
        float* o = pq + (b * R + r) * q8_block;
        for (size_t s = 0; s < 4; ++s)
          _mm256_storeu_ps(o + 8 * s, load_q8(blk + 2 + 8 * s));
        pd[b * R + r] = _cvtsh_ss(load_u16(blk));
      }
    }
    for (size_t i = 0; i < n; ++i) {
      const float* xi = x + i * cols;
      __m256 acc[R];
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r)
        acc[r] = _mm256_setzero_ps();
      for (size_t b = 0; b < blocks; ++b) {
        const float* xb = xi + b * q8_block;
        __m256 x0 = _mm256_loadu_ps(xb), x1 = _mm256_loadu_ps(xb + 8);
        __m256 x2 = _mm256_loadu_ps(xb + 16), x3 = _mm256_loadu_ps(xb + 24);
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) {
          const float* q = pq + (b * R + r) * q8_block;
          __m256 s = _mm256_mul_ps(_mm256_loadu_ps(q), x0);
          s = _mm256_fmadd_ps(_mm256_loadu_ps(q + 8), x1, s);
          s = _mm256_fmadd_ps(_mm256_loadu_ps(q + 16), x2, s);
          s = _mm256_fmadd_ps(_mm256_loadu_ps(q + 24), x3, s);
          acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(pd[b * R + r]), s, acc[r]);
        }
      }
      for (int r = 0; r < R; ++r)
        y[i * ys + j + r] = hsum(acc[r]);
    }
  }
  for (; j < r1; ++j)
    for (size_t i = 0; i < n; ++i)
      y[i * ys + j] = dot_q8_avx2(w.data + j * rb, x + i * cols, cols);
}

TM_AVX2 void gemv_avx2(const tensor_view& w, const float* x, size_t n, float* y, size_t ys,
                       size_t r0, size_t r1) {
  switch (w.type) {
    case dtype::f32:
      return gemv_elem_avx2(f32_tag{}, w, x, n, y, ys, r0, r1);
    case dtype::f16:
      return gemv_elem_avx2(f16_tag{}, w, x, n, y, ys, r0, r1);
    case dtype::bf16:
      return gemv_elem_avx2(bf16_tag{}, w, x, n, y, ys, r0, r1);
    case dtype::q8_0:
      return gemv_q8_avx2(w, x, n, y, ys, r0, r1);
    default:  // the int-dot formats: linear() handles them before
      return;
  }
}

TM_AVX2 void f16_to_f32_avx2(const uint16_t* src, float* dst, size_t n) {
  size_t k = 0;
  for (; k + 8 <= n; k += 8)
    _mm256_storeu_ps(dst + k,
                     _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + k))));
  for (; k < n; ++k)
    dst[k] = f16_to_f32(src[k]);
}

TM_AVX2 void f32_to_f16_avx2(const float* src, uint16_t* dst, size_t n) {
  size_t k = 0;
  for (; k + 8 <= n; k += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + k),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + k), _MM_FROUND_TO_NEAREST_INT));
  for (; k < n; ++k)
    dst[k] = f32_to_f16(src[k]);
}

TM_AVX2 void dequantize_avx2(dtype t, const std::byte* row, float* dst, size_t cols) {
  switch (t) {
    case dtype::f32:
      std::memcpy(dst, row, cols * 4);
      return;
    case dtype::f16:
      return f16_to_f32_avx2(reinterpret_cast<const uint16_t*>(row), dst, cols);
    case dtype::bf16: {
      size_t k = 0;
      for (; k + 8 <= cols; k += 8)
        _mm256_storeu_ps(dst + k, load8(bf16_tag{}, row, k));
      for (; k < cols; ++k)
        dst[k] = bf16_to_f32(load_u16(row + 2 * k));
      return;
    }
    case dtype::q8_0:
      for (size_t b = 0; b < cols / q8_block; ++b) {
        const std::byte* blk = row + b * q8_block_bytes;
        __m256 d = _mm256_set1_ps(_cvtsh_ss(load_u16(blk)));
        for (size_t s = 0; s < 4; ++s)
          _mm256_storeu_ps(dst + b * q8_block + 8 * s, _mm256_mul_ps(d, load_q8(blk + 2 + 8 * s)));
      }
      return;
    default:
      return dequantize_int_row(best_quant_isa(), t, row, dst, cols);
  }
}

TM_AVX2 float dot_f32_avx2(const float* a, const float* b, size_t n) {
  return dot_elem_avx2(f32_tag{}, reinterpret_cast<const std::byte*>(b), a, n);
}

TM_AVX2 float dot_f32_f16_avx2(const float* a, const uint16_t* b, size_t n) {
  return dot_elem_avx2(f16_tag{}, reinterpret_cast<const std::byte*>(b), a, n);
}

TM_AVX2 void axpy_f32_avx2(float alpha, const float* x, float* y, size_t n) {
  __m256 a = _mm256_set1_ps(alpha);
  size_t k = 0;
  for (; k + 8 <= n; k += 8)
    _mm256_storeu_ps(y + k, _mm256_fmadd_ps(a, _mm256_loadu_ps(x + k), _mm256_loadu_ps(y + k)));
  for (; k < n; ++k)
    y[k] += alpha * x[k];
}

TM_AVX2 void axpy_f16_avx2(float alpha, const uint16_t* x, float* y, size_t n) {
  __m256 a = _mm256_set1_ps(alpha);
  size_t k = 0;
  for (; k + 8 <= n; k += 8)
    _mm256_storeu_ps(y + k,
                     _mm256_fmadd_ps(a, load8(f16_tag{}, reinterpret_cast<const std::byte*>(x), k),
                                     _mm256_loadu_ps(y + k)));
  for (; k < n; ++k)
    y[k] += alpha * f16_to_f32(x[k]);
}

TM_AVX2 void silu_mul_avx2(float* gate, const float* up, size_t n) {
  const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
  size_t k = 0;
  for (; k + 8 <= n; k += 8) {
    const __m256 g = _mm256_loadu_ps(gate + k);
    const __m256 e = detail::exp8_avx2(_mm256_sub_ps(zero, g));
    _mm256_storeu_ps(
        gate + k, _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, e)), _mm256_loadu_ps(up + k)));
  }
  for (; k < n; ++k)
    gate[k] = gate[k] / (1.0f + std::exp(-gate[k])) * up[k];
}

/// Batches of `gemm_packed_min_rows` or more rows (prefill chunks): weights
/// are converted to f32 four rows at a time into a small buffer (once per block of batch
/// rows, not once per pair of batch rows as in gemv_elem_avx2), and 4 weight rows x 3
/// batch rows register tiles (12 accumulators + 3 x + 1 w = AVX2's 16 registers) run over
/// blocks of batch rows small enough to stay in L2 while every weight row passes.
TM_AVX2 void gemm_packed_avx2(const tensor_view& w, const float* x, size_t n, float* y, size_t ys,
                              size_t r0, size_t r1) {
  const size_t cols = w.cols;
  const size_t rb = row_bytes(w.type, cols);
  const size_t vec_end = cols / 8 * 8;
  // ~192 KiB of activations per block: inside a 1-2 MiB L2 next to the packed weights.
  const size_t block_rows = std::max<size_t>(3, (size_t{192} << 10) / (4 * cols) / 3 * 3);
  thread_local std::vector<float> pack;
  if (pack.size() < 4 * cols) pack.resize(4 * cols);
  for (size_t i0 = 0; i0 < n; i0 += block_rows) {
    const size_t i1 = std::min(n, i0 + block_rows);
    size_t j = r0;
    for (; j + 4 <= r1; j += 4) {
      for (size_t r = 0; r < 4; ++r)
        dequantize_avx2(w.type, w.data + (j + r) * rb, pack.data() + r * cols, cols);
      const float* p0 = pack.data();
      const float* p1 = p0 + cols;
      const float* p2 = p1 + cols;
      const float* p3 = p2 + cols;
      size_t i = i0;
      for (; i + 3 <= i1; i += 3) {
        const float* xa = x + i * cols;
        const float* xb = xa + cols;
        const float* xc = xb + cols;
        // Named accumulators: arrays of vectors indexed in loops end up on the stack.
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(),
               a3 = _mm256_setzero_ps(), b0 = _mm256_setzero_ps(), b1 = _mm256_setzero_ps(),
               b2 = _mm256_setzero_ps(), b3 = _mm256_setzero_ps(), c0 = _mm256_setzero_ps(),
               c1 = _mm256_setzero_ps(), c2 = _mm256_setzero_ps(), c3 = _mm256_setzero_ps();
        for (size_t k = 0; k < vec_end; k += 8) {
          const __m256 va = _mm256_loadu_ps(xa + k), vb = _mm256_loadu_ps(xb + k),
                       vc = _mm256_loadu_ps(xc + k);
          __m256 wv = _mm256_loadu_ps(p0 + k);
          a0 = _mm256_fmadd_ps(wv, va, a0);
          b0 = _mm256_fmadd_ps(wv, vb, b0);
          c0 = _mm256_fmadd_ps(wv, vc, c0);
          wv = _mm256_loadu_ps(p1 + k);
          a1 = _mm256_fmadd_ps(wv, va, a1);
          b1 = _mm256_fmadd_ps(wv, vb, b1);
          c1 = _mm256_fmadd_ps(wv, vc, c1);
          wv = _mm256_loadu_ps(p2 + k);
          a2 = _mm256_fmadd_ps(wv, va, a2);
          b2 = _mm256_fmadd_ps(wv, vb, b2);
          c2 = _mm256_fmadd_ps(wv, vc, c2);
          wv = _mm256_loadu_ps(p3 + k);
          a3 = _mm256_fmadd_ps(wv, va, a3);
          b3 = _mm256_fmadd_ps(wv, vb, b3);
          c3 = _mm256_fmadd_ps(wv, vc, c3);
        }
        const float sums[3][4] = {{hsum(a0), hsum(a1), hsum(a2), hsum(a3)},
                                  {hsum(b0), hsum(b1), hsum(b2), hsum(b3)},
                                  {hsum(c0), hsum(c1), hsum(c2), hsum(c3)}};
        const float* xs[3] = {xa, xb, xc};
        for (int b = 0; b < 3; ++b)
          for (int r = 0; r < 4; ++r) {
            float sum = sums[b][r];
            for (size_t k = vec_end; k < cols; ++k)
              sum += pack[r * cols + k] * xs[b][k];
            y[(i + b) * ys + j + r] = sum;
          }
      }
      for (; i < i1; ++i)
        for (size_t r = 0; r < 4; ++r)
          y[i * ys + j + r] =
              dot_elem_avx2(f32_tag{}, reinterpret_cast<const std::byte*>(pack.data() + r * cols),
                            x + i * cols, cols);
    }
    for (; j < r1; ++j) {
      dequantize_avx2(w.type, w.data + j * rb, pack.data(), cols);
      for (size_t i = i0; i < i1; ++i)
        y[i * ys + j] = dot_elem_avx2(f32_tag{}, reinterpret_cast<const std::byte*>(pack.data()),
                                      x + i * cols, cols);
    }
  }
}

#endif  // TM_X86

}  // namespace

bool simd_available() {
#if TM_X86
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                         __builtin_cpu_supports("f16c");
  return ok;
#else
  return false;
#endif
}

// ---- conversions --------------------------------------------------------------------------

float f16_to_f32(uint16_t h) {
  uint32_t sign = uint32_t{h & 0x8000u} << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0) {
    float v = std::ldexp(static_cast<float>(mant), -24);  // zero or subnormal
    return sign ? -v : v;
  }
  if (exp == 31)
    bits = sign | 0x7f800000u | (mant << 13);
  else
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t f32_to_f16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  uint32_t abs = bits & 0x7fffffffu;
  if (abs > 0x7f800000u)  // NaN: keep it quiet, keep the top payload bits
    return static_cast<uint16_t>(sign | 0x7e00u | ((abs >> 13) & 0x3ffu));
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to inf
  if (abs < 0x38800000u) {
    // Subnormal half (or zero): adding 0.5 aligns the float's ulp with the half's 2^-24
    // step, so the FPU does the round-to-nearest-even.
    float a;
    std::memcpy(&a, &abs, 4);
    a += 0.5f;
    uint32_t ab;
    std::memcpy(&ab, &a, 4);
    return static_cast<uint16_t>(sign | (ab - 0x3f000000u));
  }
  uint32_t odd = (abs >> 13) & 1u;
  abs += 0xc8000000u + 0xfffu + odd;  // rebias exponent (-112 << 23) and round
  return static_cast<uint16_t>(sign | (abs >> 13));
}

float bf16_to_f32(uint16_t h) {
  uint32_t bits = uint32_t{h} << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t f32_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40u);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

void f16_to_f32_row_scalar(const uint16_t* src, float* dst, size_t n) {
  for (size_t k = 0; k < n; ++k)
    dst[k] = f16_to_f32(src[k]);
}

void f32_to_f16_row_scalar(const float* src, uint16_t* dst, size_t n) {
  for (size_t k = 0; k < n; ++k)
    dst[k] = f32_to_f16(src[k]);
}

void f16_to_f32_row(const uint16_t* src, float* dst, size_t n) {
#if TM_X86
  if (simd_available()) return f16_to_f32_avx2(src, dst, n);
#endif
  f16_to_f32_row_scalar(src, dst, n);
}

void f32_to_f16_row(const float* src, uint16_t* dst, size_t n) {
#if TM_X86
  if (simd_available()) return f32_to_f16_avx2(src, dst, n);
#endif
  f32_to_f16_row_scalar(src, dst, n);
}

void dequantize_row_scalar(dtype t, const std::byte* row, float* dst, size_t cols) {
  if (is_int_dot_dtype(t)) return dequantize_block_row(t, row, dst, cols);
  for (size_t k = 0; k < cols; ++k)
    dst[k] = scalar_at(t, row, k);
}

void dequantize_row(dtype t, const std::byte* row, float* dst, size_t cols) {
#if TM_X86
  if (simd_available()) return dequantize_avx2(t, row, dst, cols);
#endif
  dequantize_row_scalar(t, row, dst, cols);
}

void quantize_row_q8_0(const float* src, std::byte* dst, size_t cols) {
  for (size_t b = 0; b < cols / q8_block; ++b) {
    const float* x = src + b * q8_block;
    std::byte* blk = dst + b * q8_block_bytes;
    float amax = 0;
    for (size_t k = 0; k < q8_block; ++k)
      amax = std::max(amax, std::fabs(x[k]));
    float d = amax / 127.0f;
    float id = d != 0 ? 1.0f / d : 0.0f;
    uint16_t dh = f32_to_f16(d);
    std::memcpy(blk, &dh, 2);
    for (size_t k = 0; k < q8_block; ++k)
      blk[2 + k] = static_cast<std::byte>(static_cast<int8_t>(std::lround(x[k] * id)));
  }
}

// ---- vector kernels -----------------------------------------------------------------------

float dot_f32(const float* a, const float* b, size_t n) {
#if TM_X86
  if (simd_available()) return dot_f32_avx2(a, b, n);
#endif
  float s = 0;
  for (size_t k = 0; k < n; ++k)
    s += a[k] * b[k];
  return s;
}

float dot_f32_f16(const float* a, const uint16_t* b, size_t n) {
#if TM_X86
  if (simd_available()) return dot_f32_f16_avx2(a, b, n);
#endif
  float s = 0;
  for (size_t k = 0; k < n; ++k)
    s += a[k] * f16_to_f32(b[k]);
  return s;
}

void axpy_f32(float alpha, const float* x, float* y, size_t n) {
#if TM_X86
  if (simd_available()) return axpy_f32_avx2(alpha, x, y, n);
#endif
  for (size_t k = 0; k < n; ++k)
    y[k] += alpha * x[k];
}

void axpy_f16(float alpha, const uint16_t* x, float* y, size_t n) {
#if TM_X86
  if (simd_available()) return axpy_f16_avx2(alpha, x, y, n);
#endif
  for (size_t k = 0; k < n; ++k)
    y[k] += alpha * f16_to_f32(x[k]);
}

float dot_row_scalar(dtype t, const std::byte* row, const float* x, size_t cols) {
  if (is_int_dot_dtype(t)) {  // the float reference: dequantized weights, float activations
    thread_local std::vector<float> w;
    if (w.size() < cols) w.resize(cols);
    dequantize_block_row(t, row, w.data(), cols);
    double s = 0;
    for (size_t k = 0; k < cols; ++k)
      s += double{w[k]} * x[k];
    return static_cast<float>(s);
  }
  float s = 0;
  for (size_t k = 0; k < cols; ++k)
    s += scalar_at(t, row, k) * x[k];
  return s;
}

float dot_row(dtype t, const std::byte* row, const float* x, size_t cols) {
  if (is_int_dot_dtype(t)) {
    thread_local quantized_acts xq;
    quantize_acts(t, x, 1, cols, xq);
    float y;
    dot_acts(best_quant_isa(), t, row, cols, xq, 1, &y);
    return y;
  }
#if TM_X86
  if (simd_available()) return dot_row_avx2(t, row, x, cols);
#endif
  return dot_row_scalar(t, row, x, cols);
}

namespace {

/// rms_norm's sum of squares in double: 16 partial sums (lane l takes the values at
/// k = l mod 16, the tail goes to lane 0), added in a fixed tree. One chain of dependent
/// adds took ~750 ns for 768 values, on the caller's serial path twice a layer. A float's
/// square is exact in double, so the AVX2 twin's FMAs give the same bits.
constexpr size_t norm_lanes = 16;

double sum_lanes(const double* part) {
  double s8[8];
  for (size_t l = 0; l < 8; ++l)
    s8[l] = part[l] + part[l + 8];
  return ((s8[0] + s8[4]) + (s8[2] + s8[6])) + ((s8[1] + s8[5]) + (s8[3] + s8[7]));
}

double sum_squares_scalar(const float* x, size_t n) {
  double part[norm_lanes] = {};
  size_t k = 0;
  for (; k + norm_lanes <= n; k += norm_lanes)
    for (size_t l = 0; l < norm_lanes; ++l)
      part[l] += double{x[k + l]} * x[k + l];
  for (; k < n; ++k)
    part[0] += double{x[k]} * x[k];
  return sum_lanes(part);
}

#if TM_X86
TM_AVX2 double sum_squares_avx2(const float* x, size_t n) {
  __m256d acc[4] = {_mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd(),
                    _mm256_setzero_pd()};
  size_t k = 0;
  for (; k + norm_lanes <= n; k += norm_lanes)
    for (size_t j = 0; j < 4; ++j) {
      const __m256d v = _mm256_cvtps_pd(_mm_loadu_ps(x + k + 4 * j));
      acc[j] = _mm256_fmadd_pd(v, v, acc[j]);
    }
  double part[norm_lanes];
  for (size_t j = 0; j < 4; ++j)
    _mm256_storeu_pd(part + 4 * j, acc[j]);
  for (; k < n; ++k)
    part[0] += double{x[k]} * x[k];
  return sum_lanes(part);
}

TM_AVX2 void scale_mul_avx2(const float* x, float scale, const float* w, float* y, size_t n) {
  const __m256 s = _mm256_set1_ps(scale);
  size_t k = 0;
  for (; k + 8 <= n; k += 8)
    _mm256_storeu_ps(
        y + k, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + k), s), _mm256_loadu_ps(w + k)));
  for (; k < n; ++k)
    y[k] = x[k] * scale * w[k];
}
#endif

}  // namespace

void rms_norm_scalar(const float* x, const float* w, float* y, size_t n, float eps) {
  const double ss = sum_squares_scalar(x, n);
  const float scale = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(n) + eps));
  for (size_t k = 0; k < n; ++k)
    y[k] = x[k] * scale * w[k];
}

void rms_norm(const float* x, const float* w, float* y, size_t n, float eps) {
#if TM_X86
  if (simd_available()) {
    const double ss = sum_squares_avx2(x, n);
    const float scale = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(n) + eps));
    return scale_mul_avx2(x, scale, w, y, n);
  }
#endif
  rms_norm_scalar(x, w, y, n, eps);
}

void silu_mul_scalar(float* gate, const float* up, size_t n) {
  for (size_t k = 0; k < n; ++k)
    gate[k] = gate[k] / (1.0f + std::exp(-gate[k])) * up[k];
}

void silu_mul(float* gate, const float* up, size_t n) {
#if TM_X86
  if (simd_available()) return silu_mul_avx2(gate, up, n);
#endif
  silu_mul_scalar(gate, up, n);
}

void softmax(float* x, size_t n) {
  float mx = *std::max_element(x, x + n);
  double sum = 0;
  for (size_t k = 0; k < n; ++k) {
    x[k] = std::exp(x[k] - mx);
    sum += x[k];
  }
  float inv = static_cast<float>(1.0 / sum);
  for (size_t k = 0; k < n; ++k)
    x[k] *= inv;
}

// ---- linear layers ------------------------------------------------------------------------

void linear_scalar(const tensor_view& w, const float* x, size_t n, float* y, size_t y_stride,
                   size_t row_begin, size_t row_end) {
  const size_t rb = row_bytes(w.type, w.cols);
  for (size_t j = row_begin; j < row_end; ++j)
    for (size_t i = 0; i < n; ++i)
      y[i * y_stride + j] = dot_row_scalar(w.type, w.data + j * rb, x + i * w.cols, w.cols);
}

namespace {

void linear_int_acts(quant_isa isa, const tensor_view& w, const quantized_acts& xq, size_t n,
                     float* y, size_t y_stride, size_t row_begin, size_t row_end) {
  dot_acts_rows(isa, w.type, w.data + row_begin * row_bytes(w.type, w.cols), row_end - row_begin,
                w.cols, xq, n, y + row_begin, y_stride);
}

/// Whether linear_on(isa, w, ...) over a batch of n rows runs linear_int: decode batches,
/// prefill where int_prefill() picks the integer tiles, and every batch without AVX2.
bool takes_int_path(float_isa isa, dtype t, size_t n) {
  return is_int_dot_dtype(t) &&
         (n < gemm_packed_min_rows || isa == float_isa::scalar || int_prefill(best_quant_isa(), t));
}

}  // namespace

void linear_int(quant_isa isa, const tensor_view& w, const float* x, size_t n, float* y,
                size_t y_stride, size_t row_begin, size_t row_end) {
  thread_local quantized_acts xq;
  quantize_acts(w.type, x, n, w.cols, xq);
  linear_int_acts(isa, w, xq, n, y, y_stride, row_begin, row_end);
}

float_isa best_float_isa() {
  static const float_isa isa = detail::avx512_float_available() ? float_isa::avx512
                               : simd_available()               ? float_isa::avx2
                                                                : float_isa::scalar;
  return isa;
}

std::string_view float_isa_name(float_isa isa) {
  switch (isa) {
    case float_isa::scalar:
      return "scalar";
    case float_isa::avx2:
      return "avx2";
    case float_isa::avx512:
      return "avx512";
  }
  return "unknown";
}

void linear_on(float_isa isa, const tensor_view& w, const float* x, size_t n, float* y,
               size_t y_stride, size_t row_begin, size_t row_end) {
  if (row_begin >= row_end || n == 0) return;
  if (takes_int_path(isa, w.type, n))
    return linear_int(best_quant_isa(), w, x, n, y, y_stride, row_begin, row_end);
#if TM_X86
  const bool elem = w.type == dtype::f32 || w.type == dtype::f16 || w.type == dtype::bf16;
  if (isa == float_isa::avx512) {
    if (n >= gemm_packed_min_rows)
      return detail::gemm_packed_avx512(w, x, n, y, y_stride, row_begin, row_end);
    if (elem) return detail::gemv_elem_avx512(w, x, n, y, y_stride, row_begin, row_end);
    isa = float_isa::avx2;  // q8_0 decode: the AVX2 kernel
  }
  if (isa == float_isa::avx2) {
    if (n >= gemm_packed_min_rows)
      return gemm_packed_avx2(w, x, n, y, y_stride, row_begin, row_end);
    return gemv_avx2(w, x, n, y, y_stride, row_begin, row_end);
  }
#endif
  linear_scalar(w, x, n, y, y_stride, row_begin, row_end);
}

void linear(const tensor_view& w, const float* x, size_t n, float* y, size_t y_stride,
            size_t row_begin, size_t row_end, std::vector<float>& /*scratch*/) {
  linear_on(best_float_isa(), w, x, n, y, y_stride, row_begin, row_end);
}

void prepare_linear_input(std::span<const tensor_view* const> ws, const float* x, size_t n,
                          linear_input& in) {
  in.x = x;
  in.n = n;
  in.cols = ws.empty() ? 0 : ws.front()->cols;
  in.has_q32 = in.has_q256 = false;
  const float_isa isa = best_float_isa();
  for (const tensor_view* w : ws) {
    if (w->cols != in.cols)
      throw std::invalid_argument("prepare_linear_input: weight '" + std::string(w->name) +
                                  "' has " + std::to_string(w->cols) + " columns, the input " +
                                  std::to_string(in.cols));
    if (n == 0 || !takes_int_path(isa, w->type, n)) continue;
    bool& done = is_k_dtype(w->type) ? in.has_q256 : in.has_q32;
    if (done) continue;
    quantize_acts(w->type, x, n, in.cols, is_k_dtype(w->type) ? in.q256 : in.q32);
    done = true;
  }
}

void linear(const tensor_view& w, const linear_input& in, float* y, size_t y_stride,
            size_t row_begin, size_t row_end, std::vector<float>& scratch) {
  const bool k = is_k_dtype(w.type);
  if (row_begin < row_end && in.n > 0 && w.cols == in.cols && (k ? in.has_q256 : in.has_q32) &&
      takes_int_path(best_float_isa(), w.type, in.n))
    return linear_int_acts(best_quant_isa(), w, k ? in.q256 : in.q32, in.n, y, y_stride, row_begin,
                           row_end);
  linear(w, in.x, in.n, y, y_stride, row_begin, row_end, scratch);
}

// ---- RoPE ---------------------------------------------------------------------------------

std::vector<float> rope_inv_freqs(uint32_t head_dim, float theta, const rope_scaling& scaling,
                                  const float* divisors) {
  const uint32_t pairs = head_dim / 2;
  std::vector<float> out(pairs);
  for (uint32_t i = 0; i < pairs; ++i) {
    double f = std::pow(double{theta}, -2.0 * i / head_dim);
    if (divisors) {
      f /= divisors[i];
    } else if (scaling.type == rope_scaling::kind::linear) {
      f /= scaling.factor;
    } else if (scaling.type == rope_scaling::kind::llama3) {
      const double old_ctx = scaling.original_max_context;
      const double low_wavelen = old_ctx / scaling.low_freq_factor;
      const double high_wavelen = old_ctx / scaling.high_freq_factor;
      const double wavelen = 2 * std::numbers::pi / f;
      if (wavelen > low_wavelen) {
        f /= scaling.factor;
      } else if (wavelen >= high_wavelen) {
        double smooth = (old_ctx / wavelen - scaling.low_freq_factor) /
                        (scaling.high_freq_factor - scaling.low_freq_factor);
        f = (1 - smooth) * f / scaling.factor + smooth * f;
      }
    }
    out[i] = static_cast<float>(f);
  }
  return out;
}

void rope_angles(uint32_t position, const float* inv_freq, size_t pairs, float* cos_out,
                 float* sin_out) {
  for (size_t i = 0; i < pairs; ++i) {
    double a = static_cast<double>(position) * inv_freq[i];
    cos_out[i] = static_cast<float>(std::cos(a));
    sin_out[i] = static_cast<float>(std::sin(a));
  }
}

void rope_angles_delta(int64_t delta, const float* inv_freq, size_t pairs, float* cos_out,
                       float* sin_out) {
  for (size_t i = 0; i < pairs; ++i) {
    double a = static_cast<double>(delta) * inv_freq[i];
    cos_out[i] = static_cast<float>(std::cos(a));
    sin_out[i] = static_cast<float>(std::sin(a));
  }
}

void rope_apply(float* v, uint32_t head_dim, const float* cos_v, const float* sin_v,
                rope_style style) {
  const uint32_t pairs = head_dim / 2;
  for (uint32_t i = 0; i < pairs; ++i) {
    float* a = style == rope_style::adjacent ? v + 2 * i : v + i;
    float* b = style == rope_style::adjacent ? v + 2 * i + 1 : v + i + pairs;
    float x0 = *a, x1 = *b;
    *a = x0 * cos_v[i] - x1 * sin_v[i];
    *b = x0 * sin_v[i] + x1 * cos_v[i];
  }
}

}  // namespace tokenmill::cpu
