// GGML block formats: reference dequantization, quantization, and the integer dot products
// (scalar twin, AVX2, AVX-512 VNNI) of the decode path. See quant.hpp for the layouts.
// Over 600 lines: each format's reference, quantizer and unpacking stay side by side, and
// the SIMD kernels (quant_simd.inc) share its unpacking structs.
#include "engine/cpu/quant.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "engine/cpu/kernels.hpp"

namespace tokenmill::cpu {
namespace {

using u8 = uint8_t;

float half_at(const u8* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}

void put_half(u8* p, uint16_t h) {
  std::memcpy(p, &h, 2);
}

/// The smallest half >= v (v >= 0, finite and below the half range).
uint16_t f16_up(float v) {
  uint16_t h = f32_to_f16(v);
  if (f16_to_f32(h) < v) ++h;
  return h;
}

/// Sub-block s's 6-bit scale and min of a q4_k/q5_k super-block.
void k_scale_min(const u8* scales, int s, int& sc, int& m) {
  if (s < 4) {
    sc = scales[s] & 63;
    m = scales[s + 4] & 63;
  } else {
    sc = (scales[s + 4] & 15) | ((scales[s - 4] >> 6) << 4);
    m = (scales[s + 4] >> 4) | ((scales[s] >> 6) << 4);
  }
}

void k_pack_scales(const int sc[8], const int m[8], u8* scales) {
  for (int j = 0; j < 4; ++j) {
    scales[j] = static_cast<u8>(sc[j] | ((sc[j + 4] >> 4) << 6));
    scales[j + 4] = static_cast<u8>(m[j] | ((m[j + 4] >> 4) << 6));
    scales[j + 8] = static_cast<u8>((sc[j + 4] & 15) | ((m[j + 4] & 15) << 4));
  }
}

// ---- reference dequantization, one block each ---------------------------------------------

void deq_q8_0(const u8* b, float* y) {
  float d = half_at(b);
  for (int j = 0; j < 32; ++j)
    y[j] = d * static_cast<float>(static_cast<int8_t>(b[2 + j]));
}

void deq_q4_0(const u8* b, float* y) {
  float d = half_at(b);
  const u8* qs = b + 2;
  for (int j = 0; j < 16; ++j) {
    y[j] = d * static_cast<float>((qs[j] & 15) - 8);
    y[j + 16] = d * static_cast<float>((qs[j] >> 4) - 8);
  }
}

void deq_q4_1(const u8* b, float* y) {
  float d = half_at(b), m = half_at(b + 2);
  const u8* qs = b + 4;
  for (int j = 0; j < 16; ++j) {
    y[j] = d * static_cast<float>(qs[j] & 15) + m;
    y[j + 16] = d * static_cast<float>(qs[j] >> 4) + m;
  }
}

void deq_q5_0(const u8* b, float* y) {
  float d = half_at(b);
  uint32_t qh;
  std::memcpy(&qh, b + 2, 4);
  const u8* qs = b + 6;
  for (int j = 0; j < 16; ++j) {
    int lo = (qs[j] & 15) | (((qh >> j) & 1) << 4);
    int hi = (qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
    y[j] = d * static_cast<float>(lo - 16);
    y[j + 16] = d * static_cast<float>(hi - 16);
  }
}

void deq_q5_1(const u8* b, float* y) {
  float d = half_at(b), m = half_at(b + 2);
  uint32_t qh;
  std::memcpy(&qh, b + 4, 4);
  const u8* qs = b + 8;
  for (int j = 0; j < 16; ++j) {
    int lo = (qs[j] & 15) | (((qh >> j) & 1) << 4);
    int hi = (qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
    y[j] = d * static_cast<float>(lo) + m;
    y[j + 16] = d * static_cast<float>(hi) + m;
  }
}

/// q4_k (qh == nullptr) and q5_k.
void deq_k45(const u8* b, const u8* qh, const u8* qs, float* y) {
  float d = half_at(b), dmin = half_at(b + 2);
  const u8* scales = b + 4;
  for (int c = 0; c < 4; ++c) {
    for (int half = 0; half < 2; ++half) {
      const int s = 2 * c + half;
      int sc, m;
      k_scale_min(scales, s, sc, m);
      const float ds = d * static_cast<float>(sc), dm = dmin * static_cast<float>(m);
      for (int l = 0; l < 32; ++l) {
        int u = half ? qs[32 * c + l] >> 4 : qs[32 * c + l] & 15;
        if (qh) u |= ((qh[l] >> s) & 1) << 4;
        y[32 * s + l] = ds * static_cast<float>(u) - dm;
      }
    }
  }
}

void deq_q4_k(const u8* b, float* y) {
  deq_k45(b, nullptr, b + 16, y);
}

void deq_q5_k(const u8* b, float* y) {
  deq_k45(b, b + 16, b + 48, y);
}

void deq_q6_k(const u8* b, float* y) {
  const float d = half_at(b + 208);
  const auto* scales = reinterpret_cast<const int8_t*>(b + 192);
  for (int h = 0; h < 2; ++h) {
    const u8* ql = b + 64 * h;
    const u8* qh = b + 128 + 32 * h;
    for (int k = 0; k < 4; ++k)
      for (int l = 0; l < 32; ++l) {
        const u8 lo = ql[l + 32 * (k & 1)];
        int u = (k < 2 ? lo & 15 : lo >> 4) | (((qh[l] >> (2 * k)) & 3) << 4);
        const int e = 128 * h + 32 * k + l;
        y[e] = d * static_cast<float>(scales[e / 16]) * static_cast<float>(u - 32);
      }
  }
}

// ---- quantization, one block each ---------------------------------------------------------

/// q4_0 (levels 16) and q5_0 (levels 32): d = the value of largest magnitude / -(levels/2).
void quant_sym(const float* x, int levels, float* d_out, u8* u) {
  float amax = 0, max = 0;
  for (int j = 0; j < 32; ++j)
    if (std::fabs(x[j]) > amax) {
      amax = std::fabs(x[j]);
      max = x[j];
    }
  const float d = max / static_cast<float>(-levels / 2);
  const float id = d != 0 ? 1.0f / d : 0.0f;
  for (int j = 0; j < 32; ++j) {
    int q = static_cast<int>(x[j] * id + static_cast<float>(levels / 2) + 0.5f);
    u[j] = static_cast<u8>(std::clamp(q, 0, levels - 1));
  }
  *d_out = d;
}

/// q4_1 / q5_1: d = (max - min) / (levels - 1), m = min.
void quant_affine(const float* x, int levels, float* d_out, float* m_out, u8* u) {
  float mn = x[0], mx = x[0];
  for (int j = 1; j < 32; ++j) {
    mn = std::min(mn, x[j]);
    mx = std::max(mx, x[j]);
  }
  const float d = (mx - mn) / static_cast<float>(levels - 1);
  const float id = d != 0 ? 1.0f / d : 0.0f;
  for (int j = 0; j < 32; ++j) {
    int q = static_cast<int>((x[j] - mn) * id + 0.5f);
    u[j] = static_cast<u8>(std::clamp(q, 0, levels - 1));
  }
  *d_out = d;
  *m_out = mn;
}

void pack_nibbles(const u8* u, u8* qs) {
  for (int j = 0; j < 16; ++j)
    qs[j] = static_cast<u8>((u[j] & 15) | ((u[j + 16] & 15) << 4));
}

uint32_t fifth_bits(const u8* u) {
  uint32_t qh = 0;
  for (int j = 0; j < 32; ++j)
    qh |= uint32_t{(u[j] >> 4) & 1u} << j;
  return qh;
}

void q_q8_0(const float* x, u8* b) {
  quantize_row_q8_0(x, reinterpret_cast<std::byte*>(b), 32);
}

void q_q4_0(const float* x, u8* b) {
  float d;
  u8 u[32];
  quant_sym(x, 16, &d, u);
  put_half(b, f32_to_f16(d));
  pack_nibbles(u, b + 2);
}

void q_q4_1(const float* x, u8* b) {
  float d, m;
  u8 u[32];
  quant_affine(x, 16, &d, &m, u);
  put_half(b, f32_to_f16(d));
  put_half(b + 2, f32_to_f16(m));
  pack_nibbles(u, b + 4);
}

void q_q5_0(const float* x, u8* b) {
  float d;
  u8 u[32];
  quant_sym(x, 32, &d, u);
  put_half(b, f32_to_f16(d));
  uint32_t qh = fifth_bits(u);
  std::memcpy(b + 2, &qh, 4);
  pack_nibbles(u, b + 6);
}

void q_q5_1(const float* x, u8* b) {
  float d, m;
  u8 u[32];
  quant_affine(x, 32, &d, &m, u);
  put_half(b, f32_to_f16(d));
  put_half(b + 2, f32_to_f16(m));
  uint32_t qh = fifth_bits(u);
  std::memcpy(b + 4, &qh, 4);
  pack_nibbles(u, b + 8);
}

/// q4_k (levels 16) and q5_k (levels 32) super-block: per sub-block s, the range
/// [-dmin*m_s, -dmin*m_s + (levels-1)*d*sc_s] covers its values (mins <= 0, as the format
/// stores them subtracted); m_s and sc_s are rounded up, then values to nearest.
void quant_k45(const float* x, int levels, u8* b, u8* qh, u8* qs) {
  float lo[8], hi[8];
  float max_neg = 0;
  for (int s = 0; s < 8; ++s) {
    lo[s] = 0;
    hi[s] = 0;
    for (int l = 0; l < 32; ++l) {
      lo[s] = std::min(lo[s], x[32 * s + l]);
      hi[s] = std::max(hi[s], x[32 * s + l]);
    }
    max_neg = std::max(max_neg, -lo[s]);
  }
  const uint16_t dmin_h = f16_up(max_neg / 63);
  const float dmin = f16_to_f32(dmin_h);
  int m[8], sc[8];
  float need[8], max_need = 0;
  for (int s = 0; s < 8; ++s) {
    m[s] = dmin > 0 ? std::min(63, static_cast<int>(std::ceil(-lo[s] / dmin))) : 0;
    need[s] = (hi[s] + dmin * static_cast<float>(m[s])) / static_cast<float>(levels - 1);
    max_need = std::max(max_need, need[s]);
  }
  const uint16_t d_h = f16_up(max_need / 63);
  const float d = f16_to_f32(d_h);
  for (int s = 0; s < 8; ++s)
    sc[s] = d > 0 ? std::min(63, static_cast<int>(std::ceil(need[s] / d))) : 0;
  put_half(b, d_h);
  put_half(b + 2, dmin_h);
  k_pack_scales(sc, m, b + 4);
  if (qh) std::memset(qh, 0, 32);
  for (int s = 0; s < 8; ++s) {
    const float step = d * static_cast<float>(sc[s]);
    const float off = dmin * static_cast<float>(m[s]);
    const float inv = step > 0 ? 1.0f / step : 0.0f;
    for (int l = 0; l < 32; ++l) {
      int u = static_cast<int>(std::nearbyint((x[32 * s + l] + off) * inv));
      u = std::clamp(u, 0, levels - 1);
      u8& q = qs[32 * (s / 2) + l];
      if (s % 2 == 0)
        q = static_cast<u8>(u & 15);
      else
        q = static_cast<u8>(q | ((u & 15) << 4));
      if (qh) qh[l] = static_cast<u8>(qh[l] | (((u >> 4) & 1) << s));
    }
  }
}

void q_q4_k(const float* x, u8* b) {
  quant_k45(x, 16, b, nullptr, b + 16);
}

void q_q5_k(const float* x, u8* b) {
  quant_k45(x, 32, b, b + 16, b + 48);
}

/// q6_k super-block: per group of 16, step = max|x| / 31 so values land in [-31, 31];
/// the int8 group scales and d rounded up, values to nearest.
void q_q6_k(const float* x, u8* b) {
  float need[16], max_need = 0;
  for (int g = 0; g < 16; ++g) {
    float a = 0;
    for (int l = 0; l < 16; ++l)
      a = std::max(a, std::fabs(x[16 * g + l]));
    need[g] = a / 31;
    max_need = std::max(max_need, need[g]);
  }
  const uint16_t d_h = f16_up(max_need / 127);
  const float d = f16_to_f32(d_h);
  auto* scales = reinterpret_cast<int8_t*>(b + 192);
  u8 u[256];
  for (int g = 0; g < 16; ++g) {
    int sc = d > 0 ? std::min(127, static_cast<int>(std::ceil(need[g] / d))) : 0;
    scales[g] = static_cast<int8_t>(sc);
    const float step = d * static_cast<float>(sc);
    const float inv = step > 0 ? 1.0f / step : 0.0f;
    for (int l = 0; l < 16; ++l) {
      int q = static_cast<int>(std::nearbyint(x[16 * g + l] * inv)) + 32;
      u[16 * g + l] = static_cast<u8>(std::clamp(q, 0, 63));
    }
  }
  put_half(b + 208, d_h);
  for (int h = 0; h < 2; ++h) {
    u8* ql = b + 64 * h;
    u8* qh = b + 128 + 32 * h;
    for (int l = 0; l < 32; ++l) {
      const u8* e = u + 128 * h + l;  // values l, 32 + l, 64 + l, 96 + l of the half
      ql[l] = static_cast<u8>((e[0] & 15) | ((e[64] & 15) << 4));
      ql[l + 32] = static_cast<u8>((e[32] & 15) | ((e[96] & 15) << 4));
      qh[l] = static_cast<u8>((e[0] >> 4) | ((e[32] >> 4) << 2) | ((e[64] >> 4) << 4) |
                              ((e[96] >> 4) << 6));
    }
  }
}

using block_fn = void (*)(const u8*, float*);
using quant_fn = void (*)(const float*, u8*);

block_fn deq_fn(dtype t) {
  switch (t) {
    case dtype::q8_0:
      return deq_q8_0;
    case dtype::q4_0:
      return deq_q4_0;
    case dtype::q4_1:
      return deq_q4_1;
    case dtype::q5_0:
      return deq_q5_0;
    case dtype::q5_1:
      return deq_q5_1;
    case dtype::q4_k:
      return deq_q4_k;
    case dtype::q5_k:
      return deq_q5_k;
    case dtype::q6_k:
      return deq_q6_k;
    default:
      return nullptr;
  }
}

quant_fn q_fn(dtype t) {
  switch (t) {
    case dtype::q8_0:
      return q_q8_0;
    case dtype::q4_0:
      return q_q4_0;
    case dtype::q4_1:
      return q_q4_1;
    case dtype::q5_0:
      return q_q5_0;
    case dtype::q5_1:
      return q_q5_1;
    case dtype::q4_k:
      return q_q4_k;
    case dtype::q5_k:
      return q_q5_k;
    case dtype::q6_k:
      return q_q6_k;
    default:
      return nullptr;
  }
}

// ---- integer dot products -----------------------------------------------------------------
//
// Every format is read as 32-value chunks of unsigned quants u (0..63) whose values are
// a[h] * u + b[h] for the chunk's halves h = 0, 1 (values 0-15, 16-31): q4_0 a = d,
// b = -8d; q4_1 a = d, b = m; q5_0 a = d, b = -16d; q5_1 a = d, b = m; q4_k/q5_k
// a = d*sc, b = -dmin*m; q6_k a = d*sc, b = -32*d*sc (per half). With activations
// x ~ dx * q, a chunk's dot product is dx * sum_h (a[h] * sum(u*q over h) + b[h] * sum[h]),
// the first sum in integers (u8 x s8 products: maddubs or vpdpbusd), the second from the
// activation block's precomputed sums.

/// One block's chunks: unsigned quants and per-half scales/offsets.
template <int C>
struct chunks {
  alignas(32) u8 u[C][32];
  float a[C][2];
  float b[C][2];
};

inline void nibbles(const u8* qs, u8* u) {
  for (int j = 0; j < 16; ++j) {
    u[j] = qs[j] & 15;
    u[j + 16] = qs[j] >> 4;
  }
}

inline void set_ab(float* a, float* b, float av, float bv) {
  a[0] = a[1] = av;
  b[0] = b[1] = bv;
}

struct f_q4_0 {
  static constexpr int C = 1, bytes = 18;
  static void scales(const u8* blk, chunks<C>& ch) {
    float d = half_at(blk);
    set_ab(ch.a[0], ch.b[0], d, -8 * d);
  }
  static void unpack(const u8* blk, chunks<C>& ch) {
    scales(blk, ch);
    nibbles(blk + 2, ch.u[0]);
  }
};

struct f_q4_1 {
  static constexpr int C = 1, bytes = 20;
  static void scales(const u8* blk, chunks<C>& ch) {
    set_ab(ch.a[0], ch.b[0], half_at(blk), half_at(blk + 2));
  }
  static void unpack(const u8* blk, chunks<C>& ch) {
    scales(blk, ch);
    nibbles(blk + 4, ch.u[0]);
  }
};

struct f_q5_0 {
  static constexpr int C = 1, bytes = 22;
  static void scales(const u8* blk, chunks<C>& ch) {
    float d = half_at(blk);
    set_ab(ch.a[0], ch.b[0], d, -16 * d);
  }
  static void unpack(const u8* blk, chunks<C>& ch) {
    scales(blk, ch);
    uint32_t qh;
    std::memcpy(&qh, blk + 2, 4);
    nibbles(blk + 6, ch.u[0]);
    for (int j = 0; j < 32; ++j)
      ch.u[0][j] = static_cast<u8>(ch.u[0][j] | (((qh >> j) & 1) << 4));
  }
};

struct f_q5_1 {
  static constexpr int C = 1, bytes = 24;
  static void scales(const u8* blk, chunks<C>& ch) {
    set_ab(ch.a[0], ch.b[0], half_at(blk), half_at(blk + 2));
  }
  static void unpack(const u8* blk, chunks<C>& ch) {
    scales(blk, ch);
    uint32_t qh;
    std::memcpy(&qh, blk + 4, 4);
    nibbles(blk + 8, ch.u[0]);
    for (int j = 0; j < 32; ++j)
      ch.u[0][j] = static_cast<u8>(ch.u[0][j] | (((qh >> j) & 1) << 4));
  }
};

/// q4_k/q5_k sub-block scales and mins, given the super-block's d and dmin.
inline void k45_scales(const u8* blk, float d, float dmin, chunks<8>& ch) {
  for (int s = 0; s < 8; ++s) {
    int sc, m;
    k_scale_min(blk + 4, s, sc, m);
    set_ab(ch.a[s], ch.b[s], d * static_cast<float>(sc), -dmin * static_cast<float>(m));
  }
}

struct f_q4_k {
  static constexpr int C = 8, bytes = 144;
  static void scales(const u8* blk, chunks<C>& ch) {
    k45_scales(blk, half_at(blk), half_at(blk + 2), ch);
  }
  static void unpack(const u8* blk, chunks<C>& ch) {
    scales(blk, ch);
    const u8* qs = blk + 16;
    for (int c = 0; c < 4; ++c)
      for (int l = 0; l < 32; ++l) {
        ch.u[2 * c][l] = qs[32 * c + l] & 15;
        ch.u[2 * c + 1][l] = qs[32 * c + l] >> 4;
      }
  }
};

struct f_q5_k {
  static constexpr int C = 8, bytes = 176;
  static void scales(const u8* blk, chunks<C>& ch) {
    k45_scales(blk, half_at(blk), half_at(blk + 2), ch);
  }
  static void unpack(const u8* blk, chunks<C>& ch) {
    scales(blk, ch);
    const u8* qh = blk + 16;
    const u8* qs = blk + 48;
    for (int c = 0; c < 4; ++c)
      for (int l = 0; l < 32; ++l) {
        ch.u[2 * c][l] = static_cast<u8>((qs[32 * c + l] & 15) | (((qh[l] >> (2 * c)) & 1) << 4));
        ch.u[2 * c + 1][l] =
            static_cast<u8>((qs[32 * c + l] >> 4) | (((qh[l] >> (2 * c + 1)) & 1) << 4));
      }
  }
};

/// q6_k group scales, given the super-block's d.
inline void q6_scales(const u8* blk, float d, chunks<8>& ch) {
  const auto* sc = reinterpret_cast<const int8_t*>(blk + 192);
  for (int c = 0; c < 8; ++c)
    for (int h = 0; h < 2; ++h) {
      ch.a[c][h] = d * static_cast<float>(sc[2 * c + h]);
      ch.b[c][h] = -32 * ch.a[c][h];
    }
}

struct f_q6_k {
  static constexpr int C = 8, bytes = 210;
  static void scales(const u8* blk, chunks<C>& ch) { q6_scales(blk, half_at(blk + 208), ch); }
  static void unpack(const u8* blk, chunks<C>& ch) {
    scales(blk, ch);
    for (int h = 0; h < 2; ++h) {
      const u8* ql = blk + 64 * h;
      const u8* qh = blk + 128 + 32 * h;
      for (int k = 0; k < 4; ++k)
        for (int l = 0; l < 32; ++l) {
          const u8 lo = ql[l + 32 * (k & 1)];
          ch.u[4 * h + k][l] =
              static_cast<u8>((k < 2 ? lo & 15 : lo >> 4) | (((qh[l] >> (2 * k)) & 3) << 4));
        }
    }
  }
};

template <class F>
void dot_rows_scalar(const u8* row, size_t nblocks, const act_block* x, size_t xs, size_t n,
                     float* out) {
  constexpr int C = F::C;
  for (size_t i = 0; i < n; ++i)
    out[i] = 0;
  chunks<C> ch;
  for (size_t bi = 0; bi < nblocks; ++bi) {
    F::unpack(row + bi * F::bytes, ch);
    for (size_t i = 0; i < n; ++i) {
      float s = 0;
      for (int c = 0; c < C; ++c) {
        const act_block& xb = x[i * xs + bi * C + c];
        float part = 0;
        for (int h = 0; h < 2; ++h) {
          int32_t acc = 0;
          for (int l = 16 * h; l < 16 * h + 16; ++l)
            acc += int32_t{ch.u[c][l]} * xb.q[l];
          part += ch.a[c][h] * static_cast<float>(acc) + ch.b[c][h] * xb.sum[h];
        }
        s += xb.d * part;
      }
      out[i] += s;
    }
  }
}

// K formats on super-block activations: per super-block the integer sums
// isum = sum_g sc[g] * sum(u * q over group g of 16) and off = sum_g w[g] * bsums[g], then
// dx * (d * isum - f * off): q4_k/q5_k w[g] = m of g's sub-block, f = dmin; q6_k
// w[g] = 32 * sc[g], f = d (its values are d * sc * (u - 32)).
struct kparams {
  int16_t sc[16];  ///< integer scale per group of 16 values
  int16_t w[16];   ///< offset weight per group (multiplies the activations' bsums)
  float d, f;
};

inline void kparams_45(const u8* blk, float d, float dmin, kparams& kp) {
  for (int s = 0; s < 8; ++s) {
    int sc, m;
    k_scale_min(blk + 4, s, sc, m);
    kp.sc[2 * s] = kp.sc[2 * s + 1] = static_cast<int16_t>(sc);
    kp.w[2 * s] = kp.w[2 * s + 1] = static_cast<int16_t>(m);
  }
  kp.d = d;
  kp.f = dmin;
}

inline void kparams_6(const u8* blk, float d, kparams& kp) {
  const auto* sc = reinterpret_cast<const int8_t*>(blk + 192);
  for (int g = 0; g < 16; ++g) {
    kp.sc[g] = sc[g];
    kp.w[g] = static_cast<int16_t>(32 * sc[g]);
  }
  kp.d = d;
  kp.f = d;
}

inline void kparams_of(f_q4_k, const u8* b, kparams& kp) {
  kparams_45(b, half_at(b), half_at(b + 2), kp);
}
inline void kparams_of(f_q5_k, const u8* b, kparams& kp) {
  kparams_45(b, half_at(b), half_at(b + 2), kp);
}
inline void kparams_of(f_q6_k, const u8* b, kparams& kp) {
  kparams_6(b, half_at(b + 208), kp);
}

template <class F>
void dot_rows_k_scalar(const u8* row, size_t nblocks, const act_block_k* x, size_t xs, size_t n,
                       float* out) {
  for (size_t i = 0; i < n; ++i)
    out[i] = 0;
  chunks<8> ch;
  kparams kp;
  for (size_t bi = 0; bi < nblocks; ++bi) {
    const u8* blk = row + bi * F::bytes;
    F::unpack(blk, ch);
    kparams_of(F{}, blk, kp);
    for (size_t i = 0; i < n; ++i) {
      const act_block_k& xb = x[i * xs + bi];
      int32_t isum = 0, off = 0;
      for (int g = 0; g < 16; ++g) {
        int32_t p = 0;
        for (int l = 0; l < 16; ++l)
          p += int32_t{ch.u[g / 2][16 * (g % 2) + l]} * xb.q[16 * g + l];
        isum += kp.sc[g] * p;
        off += kp.w[g] * xb.bsums[g];
      }
      out[i] += xb.d * (kp.d * static_cast<float>(isum) - kp.f * static_cast<float>(off));
    }
  }
}

}  // namespace
}  // namespace tokenmill::cpu

// The SIMD kernels: the same source compiled twice, for AVX2 and for AVX-512 VNNI (256-bit
// vpdpbusd, which needs AVX512VL), each under its own target so neither leaks into code
// that runs on CPUs without it.
#if defined(__x86_64__)
#include <immintrin.h>

namespace tokenmill::cpu {
namespace {
/// set_quant_gfni(): whether the kernels may take their GFNI paths where the CPU has GFNI.
std::atomic<bool> gfni_allowed{true};
}  // namespace
}  // namespace tokenmill::cpu

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace tokenmill::cpu::simd_avx2 {
#define TM_QUANT_VNNI 0
#include "engine/cpu/quant_simd.inc"
#undef TM_QUANT_VNNI
}  // namespace tokenmill::cpu::simd_avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")
// GCC 12's AVX-512 intrinsics (broadcasts, conversions) seed their results with `__Y = __Y`
// and warn about it wherever they are inlined; nothing of ours is uninitialized.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
namespace tokenmill::cpu::simd_vnni {
#define TM_QUANT_VNNI 1
#include "engine/cpu/quant_simd.inc"
#undef TM_QUANT_VNNI
}  // namespace tokenmill::cpu::simd_vnni
#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif

namespace tokenmill::cpu {

bool is_int_dot_dtype(dtype t) {
  return is_block_dtype(t) && t != dtype::q8_0;
}

void dequantize_block_row(dtype t, const std::byte* row, float* dst, size_t cols) {
  block_fn f = deq_fn(t);
  if (!f) return dequantize_row_scalar(t, row, dst, cols);
  const size_t be = block_elems(t), bb = block_bytes(t);
  const auto* p = reinterpret_cast<const u8*>(row);
  for (size_t b = 0; b < cols / be; ++b)
    f(p + b * bb, dst + b * be);
}

void quantize_row(dtype t, const float* src, std::byte* dst, size_t cols) {
  switch (t) {
    case dtype::f32:
      std::memcpy(dst, src, cols * 4);
      return;
    case dtype::f16:
      for (size_t k = 0; k < cols; ++k) {
        uint16_t h = f32_to_f16(src[k]);
        std::memcpy(dst + 2 * k, &h, 2);
      }
      return;
    case dtype::bf16:
      for (size_t k = 0; k < cols; ++k) {
        uint16_t h = f32_to_bf16(src[k]);
        std::memcpy(dst + 2 * k, &h, 2);
      }
      return;
    default:
      break;
  }
  quant_fn f = q_fn(t);
  const size_t be = block_elems(t), bb = block_bytes(t);
  auto* p = reinterpret_cast<u8*>(dst);
  for (size_t b = 0; b < cols / be; ++b)
    f(src + b * be, p + b * bb);
}

void quantize_activations(const float* x, act_block* out, size_t cols) {
  for (size_t b = 0; b < cols / 32; ++b) {
    const float* xb = x + 32 * b;
    act_block& o = out[b];
    float amax = 0;
    for (int j = 0; j < 32; ++j)
      amax = std::max(amax, std::fabs(xb[j]));
    o.d = amax / 127;
    const float id = amax > 0 ? 127 / amax : 0.0f;
    for (int h = 0; h < 2; ++h) {
      int s = 0;
      for (int j = 16 * h; j < 16 * h + 16; ++j) {
        int q = static_cast<int>(std::nearbyint(xb[j] * id));
        o.q[j] = static_cast<int8_t>(std::clamp(q, -127, 127));
        s += o.q[j];
      }
      o.sum[h] = static_cast<int16_t>(s);
    }
  }
}

bool set_quant_gfni(bool allow) {
#if defined(__x86_64__)
  return gfni_allowed.exchange(allow);
#else
  (void)allow;
  return false;
#endif
}

bool quant_gfni_available() {
#if defined(__x86_64__)
  return best_quant_isa() == quant_isa::avx512_vnni && __builtin_cpu_supports("gfni");
#else
  return false;
#endif
}

quant_isa best_quant_isa() {
#if defined(__x86_64__)
  static const quant_isa isa = [] {
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni"))
      return quant_isa::avx512_vnni;
    if (simd_available()) return quant_isa::avx2;
    return quant_isa::scalar;
  }();
  return isa;
#else
  return quant_isa::scalar;
#endif
}

std::string_view quant_isa_name(quant_isa isa) {
  switch (isa) {
    case quant_isa::scalar:
      return "scalar";
    case quant_isa::avx2:
      return "avx2";
    case quant_isa::avx512_vnni:
      return "avx512-vnni";
  }
  return "unknown";
}

namespace {

template <class F>
void dequant_rows(quant_isa isa, const u8* row, size_t nblocks, float* dst) {
#if defined(__x86_64__)
  if (isa == quant_isa::avx512_vnni) return simd_vnni::dequant_blocks<F>(row, nblocks, dst);
  if (isa == quant_isa::avx2) return simd_avx2::dequant_blocks<F>(row, nblocks, dst);
#endif
  (void)isa;
  chunks<F::C> ch;
  for (size_t bi = 0; bi < nblocks; ++bi) {
    F::unpack(row + bi * F::bytes, ch);
    for (int c = 0; c < F::C; ++c)
      for (int l = 0; l < 32; ++l)
        dst[(bi * F::C + c) * 32 + l] =
            std::fma(ch.a[c][l / 16], static_cast<float>(ch.u[c][l]), ch.b[c][l / 16]);
  }
}

template <class F>
void dot_rows(quant_isa isa, const u8* row, size_t nblocks, const act_block* x, size_t xs, size_t n,
              float* out) {
#if defined(__x86_64__)
  if (isa == quant_isa::avx512_vnni) return simd_vnni::dot_rows<F>(row, nblocks, x, xs, n, out);
  if (isa == quant_isa::avx2) return simd_avx2::dot_rows<F>(row, nblocks, x, xs, n, out);
#endif
  dot_rows_scalar<F>(row, nblocks, x, xs, n, out);
}

}  // namespace

void dequantize_int_row(quant_isa isa, dtype t, const std::byte* row, float* dst, size_t cols) {
  const auto* p = reinterpret_cast<const u8*>(row);
  const size_t nb = cols / block_elems(t);
  switch (t) {
    case dtype::q4_0:
      return dequant_rows<f_q4_0>(isa, p, nb, dst);
    case dtype::q4_1:
      return dequant_rows<f_q4_1>(isa, p, nb, dst);
    case dtype::q5_0:
      return dequant_rows<f_q5_0>(isa, p, nb, dst);
    case dtype::q5_1:
      return dequant_rows<f_q5_1>(isa, p, nb, dst);
    case dtype::q4_k:
      return dequant_rows<f_q4_k>(isa, p, nb, dst);
    case dtype::q5_k:
      return dequant_rows<f_q5_k>(isa, p, nb, dst);
    case dtype::q6_k:
      return dequant_rows<f_q6_k>(isa, p, nb, dst);
    default:
      return dequantize_block_row(t, row, dst, cols);
  }
}

bool int_prefill(quant_isa isa, dtype t) {
  return isa == quant_isa::avx512_vnni && is_k_dtype(t);
}

bool is_k_dtype(dtype t) {
  return t == dtype::q4_k || t == dtype::q5_k || t == dtype::q6_k;
}

void quantize_activations_k(const float* x, act_block_k* out, size_t cols) {
  for (size_t b = 0; b < cols / 256; ++b) {
    const float* xb = x + 256 * b;
    act_block_k& o = out[b];
    float amax = 0;
    for (int j = 0; j < 256; ++j)
      amax = std::max(amax, std::fabs(xb[j]));
    o.d = amax / 127;
    const float id = amax > 0 ? 127 / amax : 0.0f;
    for (int g = 0; g < 16; ++g) {
      int s = 0;
      for (int j = 16 * g; j < 16 * g + 16; ++j) {
        int q = static_cast<int>(std::nearbyint(xb[j] * id));
        o.q[j] = static_cast<int8_t>(std::clamp(q, -127, 127));
        s += o.q[j];
      }
      o.bsums[g] = static_cast<int16_t>(s);
    }
  }
}

void quantize_acts(dtype t, const float* x, size_t n, size_t cols, quantized_acts& out) {
  // The vector quantizers write the scalar ones' bytes (a unit test checks it); the AVX2
  // ones serve the VNNI kernels too.
#if defined(__x86_64__)
  const bool simd = best_quant_isa() != quant_isa::scalar;
#else
  const bool simd = false;
#endif
  if (is_k_dtype(t)) {
    out.stride = cols / 256;
    if (out.b256.size() < n * out.stride) out.b256.resize(n * out.stride);
    for (size_t i = 0; i < n; ++i) {
      act_block_k* o = out.b256.data() + i * out.stride;
#if defined(__x86_64__)
      if (simd) {
        simd_avx2::quantize_activations_k(x + i * cols, o, cols);
        continue;
      }
#endif
      quantize_activations_k(x + i * cols, o, cols);
    }
  } else {
    out.stride = cols / 32;
    if (out.b32.size() < n * out.stride) out.b32.resize(n * out.stride);
    for (size_t i = 0; i < n; ++i) {
      act_block* o = out.b32.data() + i * out.stride;
#if defined(__x86_64__)
      if (simd) {
        simd_avx2::quantize_activations(x + i * cols, o, cols);
        continue;
      }
#endif
      quantize_activations(x + i * cols, o, cols);
    }
  }
  (void)simd;
}

void dot_acts(quant_isa isa, dtype t, const std::byte* row, size_t cols, const quantized_acts& x,
              size_t n, float* out) {
  if (is_k_dtype(t)) return dot_int_rows_k(isa, t, row, cols, x.b256.data(), x.stride, n, out);
  dot_int_rows(isa, t, row, cols, x.b32.data(), x.stride, n, out);
}

namespace {

template <class F>
void dot_rows_k(quant_isa isa, const u8* row, size_t nblocks, const act_block_k* x, size_t xs,
                size_t n, float* out) {
#if defined(__x86_64__)
  if (isa == quant_isa::avx512_vnni) return simd_vnni::dot_rows_k<F>(row, nblocks, x, xs, n, out);
  if (isa == quant_isa::avx2) return simd_avx2::dot_rows_k<F>(row, nblocks, x, xs, n, out);
#endif
  dot_rows_k_scalar<F>(row, nblocks, x, xs, n, out);
}

}  // namespace

void dot_int_rows_k(quant_isa isa, dtype t, const std::byte* row, size_t cols, const act_block_k* x,
                    size_t x_stride, size_t n, float* out) {
  const auto* p = reinterpret_cast<const u8*>(row);
  const size_t nb = cols / 256;
  switch (t) {
    case dtype::q4_k:
      return dot_rows_k<f_q4_k>(isa, p, nb, x, x_stride, n, out);
    case dtype::q5_k:
      return dot_rows_k<f_q5_k>(isa, p, nb, x, x_stride, n, out);
    case dtype::q6_k:
      return dot_rows_k<f_q6_k>(isa, p, nb, x, x_stride, n, out);
    default:
      for (size_t i = 0; i < n; ++i)
        out[i] = 0;
      return;
  }
}

namespace {

/// The weight rows of dot_acts_rows on `isa`: the SIMD paths loop over rows inside their
/// kernels; the scalar twin runs one row at a time.
template <class F>
void rows_of(quant_isa isa, const u8* w, size_t rb, size_t nrows, size_t nblocks,
             const quantized_acts& x, size_t n, float* out, size_t os) {
  constexpr bool k = F::C == 8;
#if defined(__x86_64__)
  if constexpr (k) {
    if (isa == quant_isa::avx512_vnni) {
      if (n >= int_tile_min_rows)
        return simd_vnni::dot_rows_k_tiled<F>(w, rb, nrows, nblocks, x.b256.data(), x.stride, n,
                                              out, os);
      return simd_vnni::dot_rows_k_range<F>(w, rb, nrows, nblocks, x.b256.data(), x.stride, n, out,
                                            os);
    }
    if (isa == quant_isa::avx2)
      return simd_avx2::dot_rows_k_range<F>(w, rb, nrows, nblocks, x.b256.data(), x.stride, n, out,
                                            os);
  } else {
    if (isa == quant_isa::avx512_vnni)
      return simd_vnni::dot_rows_range<F>(w, rb, nrows, nblocks, x.b32.data(), x.stride, n, out,
                                          os);
    if (isa == quant_isa::avx2)
      return simd_avx2::dot_rows_range<F>(w, rb, nrows, nblocks, x.b32.data(), x.stride, n, out,
                                          os);
  }
#endif
  thread_local std::vector<float> tmp;
  if (tmp.size() < n) tmp.resize(n);
  for (size_t j = 0; j < nrows; ++j) {
    if constexpr (k)
      dot_rows_k_scalar<F>(w + j * rb, nblocks, x.b256.data(), x.stride, n, tmp.data());
    else
      dot_rows_scalar<F>(w + j * rb, nblocks, x.b32.data(), x.stride, n, tmp.data());
    for (size_t i = 0; i < n; ++i)
      out[i * os + j] = tmp[i];
  }
}

}  // namespace

void dot_acts_rows(quant_isa isa, dtype t, const std::byte* rows, size_t nrows, size_t cols,
                   const quantized_acts& x, size_t n, float* out, size_t out_stride) {
  const auto* w = reinterpret_cast<const u8*>(rows);
  const size_t rb = row_bytes(t, cols), nb = cols / block_elems(t);
  switch (t) {
    case dtype::q4_0:
      return rows_of<f_q4_0>(isa, w, rb, nrows, nb, x, n, out, out_stride);
    case dtype::q4_1:
      return rows_of<f_q4_1>(isa, w, rb, nrows, nb, x, n, out, out_stride);
    case dtype::q5_0:
      return rows_of<f_q5_0>(isa, w, rb, nrows, nb, x, n, out, out_stride);
    case dtype::q5_1:
      return rows_of<f_q5_1>(isa, w, rb, nrows, nb, x, n, out, out_stride);
    case dtype::q4_k:
      return rows_of<f_q4_k>(isa, w, rb, nrows, nb, x, n, out, out_stride);
    case dtype::q5_k:
      return rows_of<f_q5_k>(isa, w, rb, nrows, nb, x, n, out, out_stride);
    case dtype::q6_k:
      return rows_of<f_q6_k>(isa, w, rb, nrows, nb, x, n, out, out_stride);
    default:
      for (size_t i = 0; i < n; ++i)
        for (size_t j = 0; j < nrows; ++j)
          out[i * out_stride + j] = 0;
      return;
  }
}

void dot_int_rows(quant_isa isa, dtype t, const std::byte* row, size_t cols, const act_block* x,
                  size_t x_stride, size_t n, float* out) {
  const auto* p = reinterpret_cast<const u8*>(row);
  const size_t nb = cols / block_elems(t);
  switch (t) {
    case dtype::q4_0:
      return dot_rows<f_q4_0>(isa, p, nb, x, x_stride, n, out);
    case dtype::q4_1:
      return dot_rows<f_q4_1>(isa, p, nb, x, x_stride, n, out);
    case dtype::q5_0:
      return dot_rows<f_q5_0>(isa, p, nb, x, x_stride, n, out);
    case dtype::q5_1:
      return dot_rows<f_q5_1>(isa, p, nb, x, x_stride, n, out);
    default:
      for (size_t i = 0; i < n; ++i)
        out[i] = 0;
      return;
  }
}

}  // namespace tokenmill::cpu
