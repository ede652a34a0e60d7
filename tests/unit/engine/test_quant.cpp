// GGML block formats: reference dequantization on hand-built blocks, quantize/dequantize
// round trips, and the integer dot-product kernels (SIMD against the scalar twin, and
// against the float reference on dequantized weights).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "engine/cpu/kernels.hpp"
#include "engine/cpu/quant.hpp"
#include "tests/skip.hpp"

using namespace tokenmill;
using namespace tokenmill::cpu;

namespace {

constexpr dtype int_types[] = {dtype::q4_0, dtype::q4_1, dtype::q5_0, dtype::q5_1,
                               dtype::q4_k, dtype::q5_k, dtype::q6_k};

void put_f16(std::vector<uint8_t>& b, size_t at, float v) {
  uint16_t h = f32_to_f16(v);
  std::memcpy(b.data() + at, &h, 2);
}

std::vector<float> dequant(dtype t, const std::vector<uint8_t>& b) {
  std::vector<float> y(block_elems(t));
  dequantize_block_row(t, reinterpret_cast<const std::byte*>(b.data()), y.data(), y.size());
  return y;
}

std::vector<float> random_floats(size_t n, uint32_t seed, float lo, float hi) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v)
    x = d(rng);
  return v;
}

std::vector<float> gaussian(size_t n, uint32_t seed, float sigma) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0, sigma);
  std::vector<float> v(n);
  for (auto& x : v)
    x = d(rng);
  return v;
}

std::vector<std::byte> quantize(dtype t, const std::vector<float>& x, size_t cols) {
  const size_t rows = x.size() / cols;
  std::vector<std::byte> q(rows * row_bytes(t, cols));
  for (size_t r = 0; r < rows; ++r)
    quantize_row(t, x.data() + r * cols, q.data() + r * row_bytes(t, cols), cols);
  return q;
}

double nmse(const std::vector<float>& got, const std::vector<float>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    num += (double{got[i]} - want[i]) * (double{got[i]} - want[i]);
    den += double{want[i]} * want[i];
  }
  return den > 0 ? num / den : num;
}

}  // namespace

TEST_CASE("block formats: sizes and names", "[quant]") {
  CHECK(row_bytes(dtype::q4_0, 64) == 36);
  CHECK(row_bytes(dtype::q4_1, 64) == 40);
  CHECK(row_bytes(dtype::q5_0, 64) == 44);
  CHECK(row_bytes(dtype::q5_1, 64) == 48);
  CHECK(row_bytes(dtype::q4_k, 512) == 288);
  CHECK(row_bytes(dtype::q5_k, 512) == 352);
  CHECK(row_bytes(dtype::q6_k, 512) == 420);
  for (dtype t : all_dtypes) {
    dtype back = dtype::f32;
    CHECK(parse_dtype(dtype_name(t), back));
    CHECK(back == t);
  }
  dtype d;
  CHECK(parse_dtype("Q4_K", d));
  CHECK(d == dtype::q4_k);
  CHECK_FALSE(parse_dtype("q3_k", d));
}

TEST_CASE("reference dequantization of hand-built blocks", "[quant]") {
  SECTION("q4_0: d * (u - 8), low nibbles first") {
    std::vector<uint8_t> b(18, 0x88);
    put_f16(b, 0, 0.5f);
    b[2] = 0x3A;
    auto y = dequant(dtype::q4_0, b);
    CHECK(y[0] == 1.0f);
    CHECK(y[16] == -2.5f);
    CHECK(y[1] == 0.0f);
  }
  SECTION("q4_1: d * u + m") {
    std::vector<uint8_t> b(20, 0);
    put_f16(b, 0, 0.25f);
    put_f16(b, 2, -1.0f);
    b[4 + 1] = 0xF0;
    auto y = dequant(dtype::q4_1, b);
    CHECK(y[1] == -1.0f);
    CHECK(y[17] == 2.75f);
    CHECK(y[0] == -1.0f);
  }
  SECTION("q5_0: fifth bit j of qh, d * (u - 16)") {
    std::vector<uint8_t> b(22, 0);
    put_f16(b, 0, 1.0f);
    uint32_t qh = (1u << 0) | (1u << 17);
    std::memcpy(b.data() + 2, &qh, 4);
    b[6] = 0x21;
    auto y = dequant(dtype::q5_0, b);
    CHECK(y[0] == 1.0f);
    CHECK(y[16] == -14.0f);
    CHECK(y[1] == -16.0f);
    CHECK(y[17] == 0.0f);
  }
  SECTION("q5_1: d * u + m") {
    std::vector<uint8_t> b(24, 0);
    put_f16(b, 0, 2.0f);
    put_f16(b, 2, 0.5f);
    uint32_t qh = 1u << 31;
    std::memcpy(b.data() + 4, &qh, 4);
    b[8 + 15] = 0xF7;
    auto y = dequant(dtype::q5_1, b);
    CHECK(y[15] == 14.5f);
    CHECK(y[31] == 62.5f);
    CHECK(y[0] == 0.5f);
  }
  // Sub-block 0: scale 3, min 2; sub-block 5: scale 37, min 19 (6-bit values split over
  // the packed scales: low bits in scales[9], high bits in the top of scales[1], scales[5]).
  auto k_header = [](std::vector<uint8_t>& b) {
    put_f16(b, 0, 1.0f);
    put_f16(b, 2, 0.5f);
    b[4 + 0] = 3;
    b[4 + 4] = 2;
    b[4 + 1] = 2 << 6;
    b[4 + 5] = 1 << 6;
    b[4 + 9] = 5 | (3 << 4);
  };
  SECTION("q4_k: d*sc*u - dmin*m with 6-bit packed scales") {
    std::vector<uint8_t> b(144, 0);
    k_header(b);
    b[16 + 0] = 0x7A;       // sub-block 0 value 0 = 10; sub-block 1 value 0 = 7
    b[16 + 64 + 4] = 0xC0;  // sub-block 5 (high nibbles of qs[64..95]) value 4 = 12
    auto y = dequant(dtype::q4_k, b);
    CHECK(y[0] == 29.0f);            // 3 * 10 - 0.5 * 2
    CHECK(y[1] == -1.0f);            // 3 * 0 - 1
    CHECK(y[32] == 0.0f);            // sub-block 1: scale 0, min 0
    CHECK(y[32 * 5 + 4] == 434.5f);  // 37 * 12 - 0.5 * 19
    CHECK(y[32 * 4 + 4] == 0.0f);    // sub-block 4: scale 0, min 0
    CHECK(y[32 * 5 + 5] == -9.5f);
  }
  SECTION("q5_k: fifth bit s of qh[l] for sub-block s") {
    std::vector<uint8_t> b(176, 0);
    k_header(b);
    b[16 + 3] = 0x21;       // qh[3]: bits 0 and 5
    b[48 + 3] = 0x21;       // sub-block 0 value 3 low bits 1; sub-block 1 value 3 = 2
    b[48 + 64 + 3] = 0x40;  // sub-block 5 value 3 low bits 4
    auto y = dequant(dtype::q5_k, b);
    CHECK(y[3] == 50.0f);  // 3 * 17 - 1
    CHECK(y[32 + 3] == 0.0f);
    CHECK(y[32 * 5 + 3] == 730.5f);  // 37 * 20 - 9.5
    CHECK(y[32 * 5 + 2] == -9.5f);
  }
  SECTION("q6_k: d * scales[e / 16] * (u - 32), 4 + 2 bit quants") {
    std::vector<uint8_t> b(210, 0);
    put_f16(b, 208, 0.5f);
    b[192 + 0] = 2;
    b[192 + 9] = static_cast<uint8_t>(-3);
    b[0] = 0x05;
    b[128] = 0x02;  // value 0: u = 5 | 2 << 4 = 37
    b[86] = 0x0F;   // value 150 (half 1, l 22): ql[64 + 22] low nibble
    b[182] = 0x03;  // and qh[32 + 22] bits 0-1
    auto y = dequant(dtype::q6_k, b);
    CHECK(y[0] == 5.0f);      // 0.5 * 2 * 5
    CHECK(y[1] == -32.0f);    // 0.5 * 2 * -32
    CHECK(y[150] == -46.5f);  // 0.5 * -3 * 31
    CHECK(y[64] == 0.0f);     // scales[4] == 0
  }
}

TEST_CASE("quantize -> dequantize stays within the format's step", "[quant]") {
  const size_t cols = 1024;
  std::vector<std::vector<float>> inputs = {random_floats(4 * cols, 1, -1, 1),
                                            gaussian(4 * cols, 2, 0.02f),
                                            random_floats(cols, 3, -3, -1),   // all negative
                                            random_floats(cols, 4, 0.5f, 2),  // all positive
                                            std::vector<float>(cols, 0.0f)};
  for (dtype t : int_types) {
    for (size_t in = 0; in < inputs.size(); ++in) {
      const auto& x = inputs[in];
      INFO(dtype_name(t) << " input " << in);
      auto q = quantize(t, x, cols);
      std::vector<float> y(x.size());
      for (size_t r = 0; r < x.size() / cols; ++r)
        dequantize_row_scalar(t, q.data() + r * row_bytes(t, cols), y.data() + r * cols, cols);
      // The bound: one quantization step of the value's group, from the group's range
      // (32-value groups for q4/q5, 16 for q6_k). Round to nearest gives half a step; the
      // formats that clamp (q4_0/q5_0 at the far end) and the rounded-up K scales stay
      // within one.
      const size_t g = t == dtype::q6_k ? 16 : 32;
      const int levels = t == dtype::q4_0 || t == dtype::q4_1 || t == dtype::q4_k ? 15 : 31;
      size_t bad = 0;
      double worst = 0;
      for (size_t s = 0; s < x.size(); s += g) {
        float lo = 0, hi = 0, amax = 0;
        for (size_t k = s; k < s + g; ++k) {
          lo = std::min(lo, x[k]);
          hi = std::max(hi, x[k]);
          amax = std::max(amax, std::fabs(x[k]));
        }
        float range = t == dtype::q6_k ? 2 * amax : hi - lo;
        if (t == dtype::q4_1 || t == dtype::q5_1) {  // min-max without forcing 0 in
          lo = *std::min_element(x.begin() + long(s), x.begin() + long(s + g));
          hi = *std::max_element(x.begin() + long(s), x.begin() + long(s + g));
          range = hi - lo;
        }
        if (t == dtype::q4_0 || t == dtype::q5_0) range = 2 * amax;
        const float step = range / static_cast<float>(levels);
        for (size_t k = s; k < s + g; ++k) {
          const double e = std::fabs(double{y[k]} - x[k]);
          worst = std::max(worst, e / (step + 1e-30));
          if (e > 1.01 * step + 1e-12) ++bad;
        }
      }
      INFO("worst error / step " << worst);
      CHECK(bad == 0);
      if (in < 2) {
        const double n = nmse(y, x);
        INFO("nmse " << n);
        // Uniform rounding error is step^2 / 12: ~1/(3 * 15^2) for 4-bit, ~1/(3 * 31^2)
        // for 5 and 6 bits on uniform data (more where scales are rounded up).
        CHECK(n < (levels == 15 ? 8e-3 : 2e-3));
      }
    }
  }
}

TEST_CASE("activation quantization: 8 bits per 32 values with half sums", "[quant]") {
  auto x = random_floats(64, 7, -2, 2);
  x[5] = 3.0f;
  std::vector<act_block> a(2);
  quantize_activations(x.data(), a.data(), 64);
  CHECK(a[0].d == 3.0f / 127);
  CHECK(a[0].q[5] == 127);
  for (int b = 0; b < 2; ++b)
    for (int h = 0; h < 2; ++h) {
      int s = 0;
      for (int j = 16 * h; j < 16 * h + 16; ++j) {
        s += a[b].q[j];
        CHECK(std::fabs(a[b].d * a[b].q[j] - x[32 * b + j]) <= a[b].d / 2 * 1.0001f);
      }
      CHECK(a[b].sum[h] == s);
    }
}

TEST_CASE("super-block activation quantization for the K formats", "[quant]") {
  auto x = random_floats(512, 8, -1, 1);
  x[300] = -4.0f;
  std::vector<act_block_k> a(2);
  quantize_activations_k(x.data(), a.data(), 512);
  float amax0 = 0;
  for (int j = 0; j < 256; ++j)
    amax0 = std::max(amax0, std::fabs(x[j]));
  CHECK(a[0].d == amax0 / 127);
  CHECK(a[1].d == 4.0f / 127);
  CHECK(a[1].q[300 - 256] == -127);
  for (int b = 0; b < 2; ++b)
    for (int g = 0; g < 16; ++g) {
      int s = 0;
      for (int j = 16 * g; j < 16 * g + 16; ++j) {
        s += a[b].q[j];
        CHECK(std::fabs(a[b].d * a[b].q[j] - x[256 * b + j]) <= a[b].d / 2 * 1.0001f);
      }
      CHECK(a[b].bsums[g] == s);
    }
}

TEST_CASE("quantize_acts writes the scalar quantizers' bytes on every path", "[quant]") {
  // Random values, exact halves after scaling (ties round to even), zeros, a zero block,
  // negative and positive extremes: the vector quantizers must agree byte for byte.
  const size_t cols = 512, n = 3;
  auto x = random_floats(n * cols, 11, -3, 3);
  for (size_t j = 0; j < 64; ++j)  // a block of 127 / 2 ... ties: amax 127 -> id 1
    x[j] = j == 0 ? 127.0f : static_cast<float>(static_cast<int>(j) - 32) + 0.5f;
  for (size_t j = 256; j < 288; ++j)
    x[j] = 0.0f;         // a whole 32-block of zeros
  x[cols + 7] = -1e30f;  // one huge value: the rest quantize to 0
  for (size_t j = 2 * cols; j < 2 * cols + 256; ++j)
    x[j] = 0.0f;  // a whole K super-block of zeros
  for (dtype t : {dtype::q4_0, dtype::q4_k}) {
    quantized_acts got;
    quantize_acts(t, x.data(), n, cols, got);
    for (size_t i = 0; i < n; ++i) {
      if (t == dtype::q4_k) {
        std::vector<act_block_k> want(cols / 256);
        quantize_activations_k(x.data() + i * cols, want.data(), cols);
        for (size_t b = 0; b < want.size(); ++b) {
          const auto& g = got.b256[i * got.stride + b];
          INFO("row " << i << " block " << b);
          CHECK(g.d == want[b].d);
          CHECK(std::memcmp(g.q, want[b].q, sizeof g.q) == 0);
          CHECK(std::memcmp(g.bsums, want[b].bsums, sizeof g.bsums) == 0);
        }
      } else {
        std::vector<act_block> want(cols / 32);
        quantize_activations(x.data() + i * cols, want.data(), cols);
        for (size_t b = 0; b < want.size(); ++b) {
          const auto& g = got.b32[i * got.stride + b];
          INFO("row " << i << " block " << b);
          CHECK(g.d == want[b].d);
          CHECK(std::memcmp(g.q, want[b].q, sizeof g.q) == 0);
          CHECK(std::memcmp(g.sum, want[b].sum, sizeof g.sum) == 0);
        }
      }
    }
  }
}

TEST_CASE("integer dot products: SIMD == scalar twin, both near the float reference", "[quant]") {
  const size_t cols = 768, rows = 9;
  std::vector<quant_isa> isas = {quant_isa::scalar};
  if (best_quant_isa() >= quant_isa::avx2) isas.push_back(quant_isa::avx2);
  if (best_quant_isa() >= quant_isa::avx512_vnni) isas.push_back(quant_isa::avx512_vnni);
  WARN("quant isa on this machine: " << quant_isa_name(best_quant_isa()));
  for (dtype t : int_types) {
    auto wf = gaussian(rows * cols, 11, 0.05f);
    auto wq = quantize(t, wf, cols);
    tensor_view w{"w", t, rows, cols, wq.data()};
    for (size_t n : {size_t{1}, size_t{3}, size_t{4}, size_t{7}, size_t{8}}) {
      auto x = gaussian(n * cols, 12 + static_cast<uint32_t>(n), 1.0f);
      std::vector<float> ref(n * rows), twin(n * rows);
      linear_scalar(w, x.data(), n, ref.data(), rows, 0, rows);
      linear_int(quant_isa::scalar, w, x.data(), n, twin.data(), rows, 0, rows);
      const double e = nmse(twin, ref);
      INFO(dtype_name(t) << " n=" << n << " nmse(int, float) " << e);
      // 8-bit activations: relative error ~ 1/(127 sqrt 3) per value, far less on sums;
      // the K formats share one activation scale per 256 values (measured ~1.1e-4 against
      // ~5e-5 with one per 32).
      CHECK(e < (is_k_dtype(t) ? 3e-4 : 1e-4));
      for (quant_isa isa : isas) {
        std::vector<float> got(n * rows);
        linear_int(isa, w, x.data(), n, got.data(), rows, 0, rows);
        INFO(quant_isa_name(isa));
        for (size_t i = 0; i < got.size(); ++i)
          CHECK(std::fabs(got[i] - twin[i]) <= 1e-5f * (1 + std::fabs(twin[i])));
      }
      // linear() takes the int path for decode batches; a row range covers a subset.
      std::vector<float> lin(n * rows, -7.0f);
      std::vector<float> scratch;
      linear(w, x.data(), n, lin.data(), rows, 2, 7, scratch);
      for (size_t i = 0; i < n; ++i)
        for (size_t j = 0; j < rows; ++j) {
          if (j < 2 || j >= 7)
            CHECK(lin[i * rows + j] == -7.0f);
          else
            CHECK(std::fabs(lin[i * rows + j] - twin[i * rows + j]) <=
                  1e-5f * (1 + std::fabs(twin[i * rows + j])));
        }
    }
    // The SIMD unpacking prefill uses gives exactly the reference's values.
    std::vector<float> deq_ref(cols);
    dequantize_block_row(t, wq.data(), deq_ref.data(), cols);
    for (quant_isa isa : isas) {
      std::vector<float> deq(cols, -1.0f);
      dequantize_int_row(isa, t, wq.data(), deq.data(), cols);
      INFO(quant_isa_name(isa));
      size_t differ = 0;  // == (not memcmp): a zero may come out as -0 on one side
      for (size_t k = 0; k < cols; ++k)
        differ += deq[k] != deq_ref[k];
      CHECK(differ == 0);
    }
    // Prefill batches unpack weights to f32 tiles: the float reference, up to summation
    // order; where int_prefill() picks the integer tiles, the int path's error instead.
    const size_t n = gemm_packed_min_rows + 3;
    auto x = gaussian(n * cols, 99, 1.0f);
    std::vector<float> ref(n * rows), got(n * rows);
    std::vector<float> scratch;
    linear_scalar(w, x.data(), n, ref.data(), rows, 0, rows);
    linear(w, x.data(), n, got.data(), rows, 0, rows, scratch);
    INFO(dtype_name(t) << " prefill nmse " << nmse(got, ref));
    CHECK(nmse(got, ref) < (int_prefill(best_quant_isa(), t) ? 3e-4 : 1e-10));
    // dot_row quantizes its activations as decode does.
    CHECK(std::fabs(dot_row(t, wq.data(), x.data(), cols) - ref[0]) <
          1e-2f * (1 + std::fabs(ref[0])));
  }
}

TEST_CASE(
    "quant: K-format dot products on arbitrary block bytes: every path agrees, rows "
    "batch-invariant",
    "[quant]") {
  // Random bytes for every quant, high-bit and scale field (all 6-bit K scales and mins,
  // every q5_k/q6_k high-bit pattern, negative q6_k scales) with sane half scales, against
  // activations at the 8-bit extremes: the SIMD unpacking (the 512-bit kernels' broadcasts,
  // shifts and masks) must give the scalar twin's sums, and a row's result must not depend
  // on the batch it came in (the float accumulation is per row whatever the batch).
  const size_t cols = 1024, rows = 6;
  std::mt19937 rng(5);
  std::vector<quant_isa> isas = {quant_isa::scalar};
  if (best_quant_isa() >= quant_isa::avx2) isas.push_back(quant_isa::avx2);
  if (best_quant_isa() >= quant_isa::avx512_vnni) isas.push_back(quant_isa::avx512_vnni);
  for (dtype t : {dtype::q4_k, dtype::q5_k, dtype::q6_k}) {
    const size_t rb = row_bytes(t, cols), bb = block_bytes(t);
    std::vector<std::byte> wq(rows * rb);
    for (auto& b : wq)
      b = static_cast<std::byte>(rng() & 255);
    std::uniform_real_distribution<float> scale(0.001f, 0.02f);
    for (size_t at = 0; at < wq.size(); at += bb) {  // finite half scales
      uint16_t d = f32_to_f16(scale(rng)), dmin = f32_to_f16(scale(rng));
      if (t == dtype::q6_k) {
        std::memcpy(&wq[at + 208], &d, 2);
      } else {
        std::memcpy(&wq[at], &d, 2);
        std::memcpy(&wq[at + 2], &dmin, 2);
      }
    }
    tensor_view w{"w", t, rows, cols, wq.data()};
    const size_t n = 7;
    auto x = gaussian(n * cols, 6, 1.0f);
    for (size_t j = 0; j < cols; j += 3)  // rows that quantize to +-127 in many places
      x[j] = (j & 4) ? 50.0f : -50.0f;
    std::vector<float> twin(n * rows);
    linear_int(quant_isa::scalar, w, x.data(), n, twin.data(), rows, 0, rows);
    std::vector<float> mag(n * rows, 0.0f);  // sum of |w * x| per output: the error scale
    std::vector<float> wf(cols);
    for (size_t j = 0; j < rows; ++j) {
      dequantize_block_row(t, wq.data() + j * rb, wf.data(), cols);
      for (size_t i = 0; i < n; ++i)
        for (size_t k = 0; k < cols; ++k)
          mag[i * rows + j] += std::fabs(wf[k] * x[i * cols + k]);
    }
    for (quant_isa isa : isas) {
      INFO(dtype_name(t) << " " << quant_isa_name(isa));
      std::vector<float> got(n * rows);
      linear_int(isa, w, x.data(), n, got.data(), rows, 0, rows);
      for (size_t i = 0; i < got.size(); ++i)
        CHECK(std::fabs(got[i] - twin[i]) <= 1e-5f * mag[i]);
      std::vector<float> one(rows);
      for (size_t i = 0; i < n; ++i) {
        linear_int(isa, w, x.data() + i * cols, 1, one.data(), rows, 0, rows);
        for (size_t j = 0; j < rows; ++j)
          CHECK(one[j] == got[i * rows + j]);
      }
    }
  }
}

TEST_CASE("quant: dot_acts_rows gives each row what dot_acts gives it, bit for bit", "[quant]") {
  // linear_int's row loop runs inside the SIMD kernels (one call per row range): every
  // format, path and batch size must give the per-row kernel's values at out[i * stride + j].
  // 544 columns: an odd block count for the 32-value formats (the last pair of the
  // two-block kernels is half zeros).
  const size_t rows = 7, stride = 9;
  std::vector<quant_isa> isas = {quant_isa::scalar};
  if (best_quant_isa() >= quant_isa::avx2) isas.push_back(quant_isa::avx2);
  if (best_quant_isa() >= quant_isa::avx512_vnni) isas.push_back(quant_isa::avx512_vnni);
  for (dtype t : int_types)
    for (size_t cols : {size_t{512}, size_t{544}}) {
      if (is_k_dtype(t) && cols % 256 != 0) continue;
      auto wq = quantize(t, gaussian(rows * cols, 21, 0.05f), cols);
      const size_t rb = row_bytes(t, cols);
      // n = 40: past the prepared-activation kernel's L1 budget (the per-row kernel again).
      for (size_t n : {size_t{1}, size_t{2}, size_t{5}, size_t{9}, size_t{40}}) {
        quantized_acts xq;
        quantize_acts(t, gaussian(n * cols, 22, 1.0f).data(), n, cols, xq);
        for (quant_isa isa : isas) {
          INFO(dtype_name(t) << " cols=" << cols << " n=" << n << " " << quant_isa_name(isa));
          std::vector<float> got(n * stride, -7.0f), one(n);
          dot_acts_rows(isa, t, wq.data() + rb, rows - 1, cols, xq, n, got.data(), stride);
          for (size_t j = 0; j + 1 < rows; ++j) {
            dot_acts(isa, t, wq.data() + (j + 1) * rb, cols, xq, n, one.data());
            for (size_t i = 0; i < n; ++i)
              CHECK(got[i * stride + j] == one[i]);
          }
          for (size_t i = 0; i < n; ++i)
            for (size_t j = rows - 1; j < stride; ++j)
              CHECK(got[i * stride + j] == -7.0f);  // untouched
        }
      }
    }
}

TEST_CASE("quant: prefill rows give the batch-decode kernel's values, bit for bit", "[quant]") {
  // Batches of int_tile_min_rows rows or more (prefill, and decode batches of 8+) of the K
  // formats run the prefill tiles on AVX-512 VNNI (weight rows unpacked once per block of
  // activation rows, 8 rows per tile): every output must be the float the decode kernel
  // gives the same row in a batch of 4 (so prefill and decode agree), over tile remainders
  // (13 rows: one tile and a 5-row tail; 77 rows: blocks of 24 or 16 rows, 5-row tails), 3
  // and 12 super-blocks, a row range starting mid-matrix, and linear() (which picks the
  // path: at 77 rows int_prefill against the f32 tiles) on the same rows.
  std::vector<quant_isa> isas = {quant_isa::scalar};
  if (best_quant_isa() >= quant_isa::avx2) isas.push_back(quant_isa::avx2);
  if (best_quant_isa() >= quant_isa::avx512_vnni) isas.push_back(quant_isa::avx512_vnni);
  const size_t rows = 6, first = 1;
  static_assert(77 >= gemm_packed_min_rows && 13 >= int_tile_min_rows && 4 < int_tile_min_rows);
  for (size_t n : {size_t{13}, size_t{77}}) {
    for (dtype t : {dtype::q4_k, dtype::q5_k, dtype::q6_k}) {
      for (size_t cols : {size_t{768}, size_t{3072}}) {
        const size_t rb = row_bytes(t, cols);
        auto wq = quantize(t, gaussian(rows * cols, 71, 0.05f), cols);
        auto x = gaussian(n * cols, 72, 1.0f);
        for (size_t k = 0; k < x.size(); k += 5)  // quants at +-127 in many places
          x[k] = (k & 8) ? 40.0f : -40.0f;
        quantized_acts xq;
        quantize_acts(t, x.data(), n, cols, xq);
        for (quant_isa isa : isas) {
          INFO(dtype_name(t) << " n=" << n << " cols=" << cols << " " << quant_isa_name(isa));
          std::vector<float> got(n * rows, -7.0f);
          dot_acts_rows(isa, t, wq.data() + first * rb, rows - first, cols, xq, n, got.data(),
                        rows);
          size_t differ = 0;
          for (size_t i0 = 0; i0 < n; i0 += 4) {  // decode batches of 4 rows (3 at the end)
            const size_t m = std::min<size_t>(4, n - i0);
            quantized_acts dq;
            quantize_acts(t, x.data() + i0 * cols, m, cols, dq);
            std::vector<float> dec(m * rows);
            dot_acts_rows(isa, t, wq.data() + first * rb, rows - first, cols, dq, m, dec.data(),
                          rows);
            for (size_t i = 0; i < m; ++i)
              for (size_t j = 0; j + first < rows; ++j)
                differ += std::memcmp(&dec[i * rows + j], &got[(i0 + i) * rows + j], 4) != 0;
          }
          CHECK(differ == 0);
          for (size_t i = 0; i < n; ++i)
            CHECK(got[i * rows + rows - first] == -7.0f);  // nothing past the range
        }
        // linear(): where int_prefill() holds, the same bits as one-row decode.
        if (!int_prefill(best_quant_isa(), t)) continue;
        tensor_view w{"w", t, rows, cols, wq.data()};
        std::vector<float> lin(n * rows), dec(rows), scratch;
        linear(w, x.data(), n, lin.data(), rows, 0, rows, scratch);
        size_t differ = 0;
        for (size_t i = 0; i < n; ++i) {
          linear(w, x.data() + i * cols, 1, dec.data(), rows, 0, rows, scratch);
          for (size_t j = 0; j < rows; ++j)
            differ += std::memcmp(&dec[j], &lin[i * rows + j], 4) != 0;
        }
        CHECK(differ == 0);
      }
    }
  }
}

TEST_CASE("quant: int_prefill picks the integer tiles for the K formats on AVX-512 VNNI",
          "[quant]") {
  for (dtype t : {dtype::q4_k, dtype::q5_k, dtype::q6_k}) {
    CHECK(int_prefill(quant_isa::avx512_vnni, t));
    CHECK_FALSE(int_prefill(quant_isa::avx2, t));
    CHECK_FALSE(int_prefill(quant_isa::scalar, t));
  }
  for (dtype t : {dtype::q4_0, dtype::q4_1, dtype::q5_0, dtype::q5_1, dtype::q8_0, dtype::f16,
                  dtype::bf16, dtype::f32})
    CHECK_FALSE(int_prefill(quant_isa::avx512_vnni, t));
}

TEST_CASE("quant: batch-1 row ranges give each row the one-row kernel's bits", "[quant]") {
  // At batch 1 the SIMD kernels loop over a range of weight rows inside one call (and a
  // kernel may take several rows per pass): row counts of 1-13, odd block counts, and a
  // range that starts mid-matrix must give each row exactly the bits of the one-row kernel
  // (dot_acts: one weight row, one activation row), and write nothing past the range.
  std::vector<quant_isa> isas = {quant_isa::scalar};
  if (best_quant_isa() >= quant_isa::avx2) isas.push_back(quant_isa::avx2);
  if (best_quant_isa() >= quant_isa::avx512_vnni) isas.push_back(quant_isa::avx512_vnni);
  const size_t total_rows = 15;
  for (dtype t : int_types) {
    for (size_t blocks : {size_t{3}, size_t{5}}) {
      // 32-value formats: 7 and 25 blocks; K formats: 3 and 5 super-blocks.
      const size_t cols = is_k_dtype(t) ? 256 * blocks : 32 * (blocks * blocks);
      const size_t rb = row_bytes(t, cols);
      auto wq =
          quantize(t, gaussian(total_rows * cols, 61 + static_cast<uint32_t>(blocks), 0.05f), cols);
      quantized_acts xq;
      quantize_acts(t, gaussian(cols, 62, 1.0f).data(), 1, cols, xq);
      for (size_t nrows : {size_t{1}, size_t{3}, size_t{5}, size_t{7}, size_t{13}}) {
        const size_t first = 1;  // a range that does not start at the matrix's first row
        for (quant_isa isa : isas) {
          INFO(dtype_name(t) << " cols=" << cols << " rows=" << nrows << " "
                             << quant_isa_name(isa));
          std::vector<float> got(nrows + 1, -7.0f);
          dot_acts_rows(isa, t, wq.data() + first * rb, nrows, cols, xq, 1, got.data(), nrows);
          size_t differ = 0;
          for (size_t j = 0; j < nrows; ++j) {
            float one = 0;
            dot_acts(isa, t, wq.data() + (first + j) * rb, cols, xq, 1, &one);
            differ += std::memcmp(&one, &got[j], sizeof(float)) != 0;
          }
          CHECK(differ == 0);
          CHECK(got[nrows] == -7.0f);  // nothing written past the range
        }
      }
    }
  }
}

TEST_CASE("quant: q4_k batch-1 rows give the same bits with and without GFNI", "[quant]") {
  // On AVX-512 VNNI, q4_k's batch-1 kernel unpacks nibbles with GFNI where the CPU has it;
  // its twin without GFNI (what VNNI CPUs without GFNI run) must give the same bits, and
  // both the bits of the batch kernel's one-row group.
  if (!quant_gfni_available()) TM_SKIP("this CPU has no AVX-512 VNNI with GFNI");
  const size_t cols = 256 * 5, rows = 13;
  auto wq = quantize(dtype::q4_k, gaussian(rows * cols, 71, 0.05f), cols);
  quantized_acts xq;
  quantize_acts(dtype::q4_k, gaussian(2 * cols, 72, 1.0f).data(), 2, cols, xq);
  std::vector<float> with(rows), without(rows), batch(rows * 2);
  dot_acts_rows(quant_isa::avx512_vnni, dtype::q4_k, wq.data(), rows, cols, xq, 1, with.data(),
                rows);
  const bool before = set_quant_gfni(false);
  dot_acts_rows(quant_isa::avx512_vnni, dtype::q4_k, wq.data(), rows, cols, xq, 1, without.data(),
                rows);
  set_quant_gfni(before);
  // Two activation rows: the batch kernel, whose first column is activation row 0.
  dot_acts_rows(quant_isa::avx512_vnni, dtype::q4_k, wq.data(), rows, cols, xq, 2, batch.data(),
                rows);
  CHECK(std::memcmp(with.data(), without.data(), rows * sizeof(float)) == 0);
  CHECK(std::memcmp(with.data(), batch.data(), rows * sizeof(float)) == 0);
}

TEST_CASE("quant: linear over a prepared input gives plain linear()'s values, bit for bit",
          "[quant]") {
  // The engine quantizes a layer input once per linears() call and every row range reads
  // it: mixed weight types sharing one input (32-value and K formats, float ones), row
  // ranges cut anywhere, decode and prefill batch sizes.
  const size_t cols = 512, rows = 11;
  const dtype types[] = {dtype::q4_0, dtype::q4_k, dtype::q6_k,
                         dtype::q5_1, dtype::q8_0, dtype::f16};
  std::vector<std::vector<std::byte>> bytes;
  std::vector<tensor_view> ws;
  for (size_t i = 0; i < std::size(types); ++i)
    bytes.push_back(
        quantize(types[i], gaussian(rows * cols, 31 + static_cast<uint32_t>(i), 0.05f), cols));
  for (size_t i = 0; i < std::size(types); ++i)
    ws.push_back(tensor_view{"w", types[i], rows, cols, bytes[i].data()});
  std::vector<const tensor_view*> ptrs;
  for (const auto& w : ws)
    ptrs.push_back(&w);
  linear_input in;
  std::vector<float> scratch;
  for (size_t n : {size_t{1}, size_t{3}, gemm_packed_min_rows + 1}) {
    auto x = gaussian(n * cols, 40 + static_cast<uint32_t>(n), 1.0f);
    prepare_linear_input(ptrs, x.data(), n, in);
    CHECK(in.has_q32 == (n < gemm_packed_min_rows || best_float_isa() == float_isa::scalar));
    CHECK(in.has_q256 == (in.has_q32 || int_prefill(best_quant_isa(), dtype::q4_k)));
    for (const auto& w : ws) {
      INFO(dtype_name(w.type) << " n=" << n);
      std::vector<float> want(n * rows), got(n * rows, -7.0f);
      linear(w, x.data(), n, want.data(), rows, 0, rows, scratch);
      for (size_t b = 0; b < rows; b += 4)  // ranges of 4, 4, 3 rows
        linear(w, in, got.data(), rows, b, std::min(rows, b + 4), scratch);
      CHECK(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)) == 0);
    }
  }
  // A weight the input was not prepared for runs plain linear(); a column mismatch is an
  // error naming the weight.
  auto x = gaussian(cols, 50, 1.0f);
  prepare_linear_input({ptrs.data() + 4, 2}, x.data(), 1, in);  // q8_0 and f16 only
  CHECK_FALSE(in.has_q32);
  std::vector<float> want(rows), got(rows);
  linear(ws[1], x.data(), 1, want.data(), rows, 0, rows, scratch);
  linear(ws[1], in, got.data(), rows, 0, rows, scratch);
  CHECK(std::memcmp(got.data(), want.data(), rows * sizeof(float)) == 0);
  tensor_view narrow{"blk.0.ffn_down.weight", dtype::q4_0, rows, cols / 2, bytes[0].data()};
  const tensor_view* mixed[] = {&ws[0], &narrow};
  CHECK_THROWS_WITH(prepare_linear_input(mixed, x.data(), 1, in),
                    Catch::Contains("blk.0.ffn_down.weight"));
}
