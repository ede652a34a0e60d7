#pragma once
/// A 16 x 16 float transpose in AVX-512 registers, shared by the prefill GEMM's weight panels
/// and attention's K blocks. Include only from x86-64 code.
#include <immintrin.h>

namespace tokenmill::cpu::detail {

/// Afterwards r[d] holds element d of every input row (lane s: row s). 48 shuffles.
__attribute__((target("avx512f"))) inline void transpose16_avx512(__m512 (&r)[16]) {
  __m512 t[16];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  // r[4g + c]: rows 4g..4g+3 of columns c, c + 4, c + 8, c + 12 (one per 128-bit lane).
#pragma GCC unroll 4
  for (int g = 0; g < 4; ++g) {
    const __m512d a = _mm512_castps_pd(t[4 * g]), b = _mm512_castps_pd(t[4 * g + 1]),
                  c = _mm512_castps_pd(t[4 * g + 2]), d = _mm512_castps_pd(t[4 * g + 3]);
    r[4 * g] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    r[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    r[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    r[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  // Column c + 4L: lane L of r[c], r[4 + c], r[8 + c], r[12 + c].
#pragma GCC unroll 4
  for (int c = 0; c < 4; ++c) {
    const __m512 v0 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x44);
    const __m512 v1 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xee);
    const __m512 w0 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x44);
    const __m512 w1 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xee);
    t[c] = _mm512_shuffle_f32x4(v0, w0, 0x88);
    t[c + 4] = _mm512_shuffle_f32x4(v0, w0, 0xdd);
    t[c + 8] = _mm512_shuffle_f32x4(v1, w1, 0x88);
    t[c + 12] = _mm512_shuffle_f32x4(v1, w1, 0xdd);
  }
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i)
    r[i] = t[i];
}

}  // namespace tokenmill::cpu::detail
