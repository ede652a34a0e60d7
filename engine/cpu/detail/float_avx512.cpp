// AVX-512 float kernels of linear() (see float_avx512.hpp). Each function carries its own
// target attribute (no target pragma), so library templates instantiated here stay
// baseline code and nothing AVX-512 leaks into paths that run on other CPUs.
#include "engine/cpu/detail/float_avx512.hpp"

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "engine/cpu/detail/row_prefetch.hpp"
#include "engine/cpu/kernels.hpp"

#if defined(__x86_64__)
#include <immintrin.h>
// GCC 12's AVX-512 intrinsics (casts, shuffles, reductions) seed their results with
// `__Y = __Y` and warn about it wherever they are inlined; nothing of ours is uninitialized.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include "engine/cpu/detail/transpose_avx512.hpp"
#define TM_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))

namespace tokenmill::cpu::detail {
namespace {

struct f32_t {};
struct f16_t {};
struct bf16_t {};

/// 16 weights from column k as f32; lanes outside `m` are zero (a full mask is a plain
/// load: the compiler drops the constant mask).
TM_AVX512 inline __m512 load16(f32_t, const std::byte* row, size_t k, __mmask16 m) {
  if (m == 0xffff) return _mm512_loadu_ps(reinterpret_cast<const float*>(row) + k);
  return _mm512_maskz_loadu_ps(m, reinterpret_cast<const float*>(row) + k);
}
TM_AVX512 inline __m256i load16_u16(const std::byte* row, size_t k, __mmask16 m) {
  if (m == 0xffff) return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 2 * k));
  return _mm256_maskz_loadu_epi16(m, row + 2 * k);
}
TM_AVX512 inline __m512 load16(f16_t, const std::byte* row, size_t k, __mmask16 m) {
  return _mm512_cvtph_ps(load16_u16(row, k, m));
}
TM_AVX512 inline __m512 load16(bf16_t, const std::byte* row, size_t k, __mmask16 m) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(load16_u16(row, k, m)), 16));
}

/// Sum of the 16 lanes (GCC 12's _mm512_reduce_add_ps trips -Wuninitialized in its header).
TM_AVX512 inline float hsum16(__m512 v) {
  v = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, 0x4e));  // + the other 256-bit half
  const __m256 h = _mm512_castps512_ps256(v);
  __m128 l = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  l = _mm_add_ps(l, _mm_movehl_ps(l, l));
  l = _mm_add_ss(l, _mm_movehdup_ps(l));
  return _mm_cvtss_f32(l);
}

/// Lanes of the 16-wide step at column k of a `cols`-column row.
inline __mmask16 lanes(size_t k, size_t cols) {
  return k + 16 <= cols ? __mmask16(0xffff) : static_cast<__mmask16>((1u << (cols - k)) - 1);
}

/// One 16-column step of 4 weight rows x 2 batch rows (plain loads when m is the constant
/// full mask after inlining).
template <class T>
TM_AVX512 __attribute__((always_inline)) inline void pair_step(
    T tag, const std::byte* w0, const std::byte* w1, const std::byte* w2, const std::byte* w3,
    const float* xa, const float* xb, size_t k, __mmask16 m, __m512& a0, __m512& a1, __m512& a2,
    __m512& a3, __m512& b0, __m512& b1, __m512& b2, __m512& b3) {
  const __m512 v0 = load16(tag, w0, k, m), v1 = load16(tag, w1, k, m), v2 = load16(tag, w2, k, m),
               v3 = load16(tag, w3, k, m);
  __m512 xv = m == 0xffff ? _mm512_loadu_ps(xa + k) : _mm512_maskz_loadu_ps(m, xa + k);
  a0 = _mm512_fmadd_ps(v0, xv, a0);
  a1 = _mm512_fmadd_ps(v1, xv, a1);
  a2 = _mm512_fmadd_ps(v2, xv, a2);
  a3 = _mm512_fmadd_ps(v3, xv, a3);
  xv = m == 0xffff ? _mm512_loadu_ps(xb + k) : _mm512_maskz_loadu_ps(m, xb + k);
  b0 = _mm512_fmadd_ps(v0, xv, b0);
  b1 = _mm512_fmadd_ps(v1, xv, b1);
  b2 = _mm512_fmadd_ps(v2, xv, b2);
  b3 = _mm512_fmadd_ps(v3, xv, b3);
}

template <class T>
TM_AVX512 void gemv_t(T tag, const tensor_view& w, const float* x, size_t n, float* y, size_t ys,
                      size_t r0, size_t r1) {
  const size_t cols = w.cols;
  const size_t rb = row_bytes(w.type, cols);
  // f32 rows are long enough for the hardware prefetcher (measured at the roofline without).
  constexpr bool prefetch = !std::is_same_v<T, f32_t>;
  size_t j = r0;
  for (; j + 4 <= r1; j += 4) {
    const std::byte* w0 = w.data + j * rb;
    const std::byte* w1 = w0 + rb;
    const std::byte* w2 = w1 + rb;
    const std::byte* w3 = w2 + rb;
    size_t i = 0;
    for (; i + 2 <= n; i += 2) {
      const float* xa = x + i * cols;
      const float* xb = xa + cols;
      __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(),
             a3 = _mm512_setzero_ps(), b0 = _mm512_setzero_ps(), b1 = _mm512_setzero_ps(),
             b2 = _mm512_setzero_ps(), b3 = _mm512_setzero_ps();
      row_prefetch pf(w0, rb, cols / 16);
      size_t k = 0;
      for (; k + 16 <= cols; k += 16) {
        if (prefetch && i == 0) pf.step();  // later batch rows find the group in cache
        pair_step(tag, w0, w1, w2, w3, xa, xb, k, 0xffff, a0, a1, a2, a3, b0, b1, b2, b3);
      }
      if (k < cols)
        pair_step(tag, w0, w1, w2, w3, xa, xb, k, lanes(k, cols), a0, a1, a2, a3, b0, b1, b2, b3);
      float* ya = y + i * ys + j;
      float* yb = ya + ys;
      ya[0] = hsum16(a0);
      ya[1] = hsum16(a1);
      ya[2] = hsum16(a2);
      ya[3] = hsum16(a3);
      yb[0] = hsum16(b0);
      yb[1] = hsum16(b1);
      yb[2] = hsum16(b2);
      yb[3] = hsum16(b3);
    }
    for (; i < n; ++i) {
      const float* xa = x + i * cols;
      // One batch row (decode at batch 1): plain loads for full steps, then the masked
      // tail. One accumulator per weight row, summed in the same order as the two-row
      // tiles, so a row's result does not depend on the batch it came in.
      __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(),
             a3 = _mm512_setzero_ps();
      const __mmask16 all = 0xffff;
      row_prefetch pf(w0, rb, cols / 16);
      size_t k = 0;
      for (; k + 16 <= cols; k += 16) {
        if (prefetch && i == 0) pf.step();
        const __m512 xv = _mm512_loadu_ps(xa + k);
        a0 = _mm512_fmadd_ps(load16(tag, w0, k, all), xv, a0);
        a1 = _mm512_fmadd_ps(load16(tag, w1, k, all), xv, a1);
        a2 = _mm512_fmadd_ps(load16(tag, w2, k, all), xv, a2);
        a3 = _mm512_fmadd_ps(load16(tag, w3, k, all), xv, a3);
      }
      if (k < cols) {
        const __mmask16 m = lanes(k, cols);
        const __m512 xv = _mm512_maskz_loadu_ps(m, xa + k);
        a0 = _mm512_fmadd_ps(load16(tag, w0, k, m), xv, a0);
        a1 = _mm512_fmadd_ps(load16(tag, w1, k, m), xv, a1);
        a2 = _mm512_fmadd_ps(load16(tag, w2, k, m), xv, a2);
        a3 = _mm512_fmadd_ps(load16(tag, w3, k, m), xv, a3);
      }
      float* ya = y + i * ys + j;
      ya[0] = hsum16(a0);
      ya[1] = hsum16(a1);
      ya[2] = hsum16(a2);
      ya[3] = hsum16(a3);
    }
  }
  for (; j < r1; ++j) {
    const std::byte* wr = w.data + j * rb;
    for (size_t i = 0; i < n; ++i) {
      const float* xa = x + i * cols;
      __m512 a0 = _mm512_setzero_ps();
      for (size_t k = 0; k < cols; k += 16) {
        const __mmask16 m = lanes(k, cols);
        a0 = _mm512_fmadd_ps(load16(tag, wr, k, m), _mm512_maskz_loadu_ps(m, xa + k), a0);
      }
      y[i * ys + j] = hsum16(a0);
    }
  }
}

/// Transposes a 16 x 16 block: row r of the input is src + r * ld (16 floats); column t
/// goes to dst + t * dst_ld (16 floats, one per input row).
TM_AVX512 inline void transpose16(const float* src, size_t ld, float* dst, size_t dst_ld) {
  __m512 r[16];
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i)
    r[i] = _mm512_loadu_ps(src + i * ld);
  transpose16_avx512(r);
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i)
    _mm512_storeu_ps(dst + i * dst_ld, r[i]);
}

/// Weight rows per packed panel: four 16-lane vectors.
constexpr size_t panel_rows = 64;

/// MR batch rows (x, x + xs, ...) times the first 16 * NV weight rows of a packed panel
/// (p[k * panel_rows + r] = weight row r, column k) -> y[b * ys + r], r < 16 * NV, lanes
/// of the last vector limited to `last`. Outer products: each step broadcasts one
/// activation per batch row against NV weight vectors, MR * NV accumulators in registers.
template <int MR, int NV>
TM_AVX512 void micro(const float* p, const float* x, size_t xs, size_t cols, float* y, size_t ys,
                     __mmask16 last) {
  __m512 acc[MR][NV];
#pragma GCC unroll 8
  for (int b = 0; b < MR; ++b)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
      acc[b][v] = _mm512_setzero_ps();
  const float* xr[MR];
#pragma GCC unroll 8
  for (int b = 0; b < MR; ++b)
    xr[b] = x + b * xs;
  for (size_t k = 0; k < cols; ++k, p += panel_rows) {
    __m512 wv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
      wv[v] = _mm512_load_ps(p + 16 * v);
#pragma GCC unroll 8
    for (int b = 0; b < MR; ++b) {
      const __m512 xb = _mm512_set1_ps(xr[b][k]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v)
        acc[b][v] = _mm512_fmadd_ps(wv[v], xb, acc[b][v]);
    }
  }
#pragma GCC unroll 8
  for (int b = 0; b < MR; ++b) {
#pragma GCC unroll 4
    for (int v = 0; v + 1 < NV; ++v)
      _mm512_storeu_ps(y + b * ys + 16 * v, acc[b][v]);
    _mm512_mask_storeu_ps(y + b * ys + 16 * (NV - 1), last, acc[b][NV - 1]);
  }
}

constexpr int micro_rows = 6;  ///< batch rows per micro tile (MR)

using micro_fn = void (*)(const float*, const float*, size_t, size_t, float*, size_t, __mmask16);

template <int NV>
constexpr micro_fn micro_of(int mr) {
  switch (mr) {
    case 1:
      return micro<1, NV>;
    case 2:
      return micro<2, NV>;
    case 3:
      return micro<3, NV>;
    case 4:
      return micro<4, NV>;
    case 5:
      return micro<5, NV>;
    default:
      return micro<6, NV>;
  }
}

micro_fn micro_for(size_t nv, size_t mr) {
  switch (nv) {
    case 1:
      return micro_of<1>(static_cast<int>(mr));
    case 2:
      return micro_of<2>(static_cast<int>(mr));
    case 3:
      return micro_of<3>(static_cast<int>(mr));
    default:
      return micro_of<4>(static_cast<int>(mr));
  }
}

/// Packs weight rows [j, j + nr) (nr <= panel_rows) of w into p[k * panel_rows + r] as
/// f32, rows nr and up zero. `rowbuf` holds 16 unpacked rows.
TM_AVX512 void pack_panel(const tensor_view& w, size_t j, size_t nr, float* p, float* rowbuf) {
  const size_t cols = w.cols;
  const size_t rb = row_bytes(w.type, cols);
  const size_t full = cols / 16 * 16;
  for (size_t g = 0; g * 16 < nr; ++g) {
    for (size_t r = 0; r < 16; ++r) {
      float* dst = rowbuf + r * cols;
      if (g * 16 + r < nr)
        dequantize_row(w.type, w.data + (j + g * 16 + r) * rb, dst, cols);
      else
        std::fill(dst, dst + cols, 0.0f);
    }
    for (size_t k = 0; k < full; k += 16)
      transpose16(rowbuf + k, cols, p + k * panel_rows + g * 16, panel_rows);
    for (size_t k = full; k < cols; ++k)
      for (size_t r = 0; r < 16; ++r)
        p[k * panel_rows + g * 16 + r] = rowbuf[r * cols + k];
  }
}

}  // namespace

bool avx512_float_available() {
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("avx512vl") && simd_available();
  return ok;
}

void gemv_elem_avx512(const tensor_view& w, const float* x, size_t n, float* y, size_t ys,
                      size_t r0, size_t r1) {
  switch (w.type) {
    case dtype::f32:
      return gemv_t(f32_t{}, w, x, n, y, ys, r0, r1);
    case dtype::f16:
      return gemv_t(f16_t{}, w, x, n, y, ys, r0, r1);
    case dtype::bf16:
      return gemv_t(bf16_t{}, w, x, n, y, ys, r0, r1);
    default:  // linear() sends only the element types here
      return;
  }
}

void gemm_packed_avx512(const tensor_view& w, const float* x, size_t n, float* y, size_t ys,
                        size_t r0, size_t r1) {
  const size_t cols = w.cols;
  // One panel of weight rows (f32, column-major in the panel: ~192 KiB at 768 columns, in
  // L2) is unpacked once and multiplied with every batch row, which stream through.
  thread_local std::vector<float> panel_mem, rowbuf;
  if (panel_mem.size() < panel_rows * cols + 16) panel_mem.resize(panel_rows * cols + 16);
  if (rowbuf.size() < 16 * cols) rowbuf.resize(16 * cols);
  // 64-byte aligned: every weight vector of the micro tiles is one cache line.
  float* panel =
      panel_mem.data() + (16 - (reinterpret_cast<std::uintptr_t>(panel_mem.data()) / 4) % 16) % 16;
  for (size_t j = r0; j < r1; j += panel_rows) {
    const size_t nr = std::min(panel_rows, r1 - j);
    pack_panel(w, j, nr, panel, rowbuf.data());
    const size_t nv = (nr + 15) / 16;
    const __mmask16 last = static_cast<__mmask16>((1u << (nr - 16 * (nv - 1))) - 1);
    for (size_t i = 0; i < n; i += micro_rows) {
      const size_t mr = std::min<size_t>(micro_rows, n - i);
      micro_for(nv, mr)(panel, x + i * cols, cols, cols, y + i * ys + j, ys, last);
    }
  }
}

}  // namespace tokenmill::cpu::detail

#else  // not x86-64: never available, never called

namespace tokenmill::cpu::detail {
bool avx512_float_available() {
  return false;
}
void gemv_elem_avx512(const tensor_view&, const float*, size_t, float*, size_t, size_t, size_t) {}
void gemm_packed_avx512(const tensor_view&, const float*, size_t, float*, size_t, size_t, size_t) {}
}  // namespace tokenmill::cpu::detail

#endif
