// CPU kernels against their scalar references and hand-derived numbers.
#include <catch2/catch.hpp>

#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <utility>
#include <vector>

#include "engine/cpu/kernels.hpp"
#include "engine/cpu/thread_pool.hpp"

using namespace tokenmill;
using namespace tokenmill::cpu;

namespace {

std::vector<float> random_floats(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(-scale, scale);
  std::vector<float> v(n);
  for (auto& x : v)
    x = d(rng);
  return v;
}

/// A weight matrix [rows][cols] of type t from floats, with its bytes.
struct weight {
  std::vector<std::byte> bytes;
  tensor_view view;
};

weight make_weight(dtype t, size_t rows, size_t cols, uint32_t seed) {
  auto f = random_floats(rows * cols, seed);
  weight w;
  w.bytes.resize(rows * row_bytes(t, cols));
  for (size_t r = 0; r < rows; ++r) {
    std::byte* dst = w.bytes.data() + r * row_bytes(t, cols);
    const float* src = f.data() + r * cols;
    for (size_t k = 0; k < cols && t != dtype::q8_0; ++k) {
      if (t == dtype::f32) std::memcpy(dst + 4 * k, src + k, 4);
      uint16_t h = t == dtype::f16 ? f32_to_f16(src[k]) : f32_to_bf16(src[k]);
      if (t != dtype::f32) std::memcpy(dst + 2 * k, &h, 2);
    }
    if (t == dtype::q8_0) quantize_row_q8_0(src, dst, cols);
  }
  w.view = tensor_view{"w", t, rows, cols, w.bytes.data()};
  return w;
}

/// The float kernel paths this CPU can run (each is compared with the scalar reference).
std::vector<float_isa> available_isas() {
  std::vector<float_isa> out = {float_isa::scalar};
  if (best_float_isa() >= float_isa::avx2) out.push_back(float_isa::avx2);
  if (best_float_isa() >= float_isa::avx512) out.push_back(float_isa::avx512);
  return out;
}

float bits_to_f32(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

}  // namespace

TEST_CASE("f16 conversion round-trips every half and rounds to nearest even", "[cpu]") {
  for (uint32_t h = 0; h < 65536; ++h) {
    float f = f16_to_f32(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      CHECK(std::isnan(f16_to_f32(f32_to_f16(f))));
      continue;
    }
    REQUIRE(f32_to_f16(f) == h);
  }
  CHECK(f16_to_f32(0x3c00) == 1.0f);
  CHECK(f16_to_f32(0x0001) == std::ldexp(1.0f, -24));  // smallest subnormal
  CHECK(f16_to_f32(0x7bff) == 65504.0f);
  CHECK(f32_to_f16(65519.0f) == 0x7bff);
  CHECK(f32_to_f16(65520.0f) == 0x7c00);                          // ties to even: rounds up to inf
  CHECK(f32_to_f16(1.0f + std::ldexp(1.0f, -11)) == 0x3c00);      // tie -> even (down)
  CHECK(f32_to_f16(1.0f + 3 * std::ldexp(1.0f, -11)) == 0x3c02);  // tie -> even (up)
  CHECK(f32_to_f16(std::ldexp(1.0f, -25)) == 0x0000);             // tie between 0 and 2^-24 -> 0
  CHECK(f32_to_f16(std::ldexp(3.0f, -25)) == 0x0002);             // tie -> even subnormal
  CHECK(f32_to_f16(-2.0f) == 0xc000);

  // Vectorized conversions equal the scalar ones bit for bit (random and edge values).
  auto v = random_floats(1003, 7, 70000.0f);
  for (size_t i = 0; i < 200; ++i)
    v[i] = std::ldexp(v[i], -30);  // subnormal range
  v[500] = bits_to_f32(0x477ff000u);
  v[501] = std::numeric_limits<float>::infinity();
  v[502] = 0.0f;
  v[503] = -0.0f;
  std::vector<uint16_t> a(v.size()), b(v.size());
  f32_to_f16_row(v.data(), a.data(), v.size());
  f32_to_f16_row_scalar(v.data(), b.data(), v.size());
  CHECK(a == b);
  std::vector<float> fa(v.size()), fb(v.size());
  f16_to_f32_row(a.data(), fa.data(), a.size());
  f16_to_f32_row_scalar(a.data(), fb.data(), a.size());
  CHECK(std::memcmp(fa.data(), fb.data(), fa.size() * 4) == 0);
}

TEST_CASE("bf16 conversion", "[cpu]") {
  CHECK(bf16_to_f32(0x3f80) == 1.0f);
  CHECK(f32_to_bf16(1.0f) == 0x3f80);
  CHECK(f32_to_bf16(bits_to_f32(0x3f808000u)) == 0x3f80);  // tie -> even
  CHECK(f32_to_bf16(bits_to_f32(0x3f818000u)) == 0x3f82);  // tie -> even (up)
  CHECK(f32_to_bf16(bits_to_f32(0x3f808001u)) == 0x3f81);
  CHECK(std::isnan(bf16_to_f32(f32_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
}

TEST_CASE("q8_0 quantization keeps values within half a step", "[cpu]") {
  auto f = random_floats(96, 3);
  std::vector<std::byte> q(row_bytes(dtype::q8_0, 96));
  quantize_row_q8_0(f.data(), q.data(), 96);
  std::vector<float> back(96);
  dequantize_row_scalar(dtype::q8_0, q.data(), back.data(), 96);
  for (size_t b = 0; b < 3; ++b) {
    float amax = 0;
    for (size_t k = 0; k < 32; ++k)
      amax = std::max(amax, std::fabs(f[b * 32 + k]));
    for (size_t k = 0; k < 32; ++k)
      CHECK(std::fabs(back[b * 32 + k] - f[b * 32 + k]) <= amax / 127 * 0.51f + 1e-3f);
  }
}

TEST_CASE("dequantize_row and dot_row match the scalar references for every dtype", "[cpu]") {
  for (dtype t : {dtype::f32, dtype::f16, dtype::bf16, dtype::q8_0}) {
    INFO(dtype_name(t));
    size_t cols = t == dtype::q8_0 ? 160 : 77;  // odd sizes: vector body plus tail
    auto w = make_weight(t, 1, cols, 11);
    std::vector<float> a(cols), b(cols);
    dequantize_row(t, w.view.data, a.data(), cols);
    dequantize_row_scalar(t, w.view.data, b.data(), cols);
    for (size_t k = 0; k < cols; ++k)
      REQUIRE(a[k] == b[k]);
    auto x = random_floats(cols, 12);
    float ref = 0, mag = 0;
    for (size_t k = 0; k < cols; ++k) {
      ref += b[k] * x[k];
      mag += std::fabs(b[k] * x[k]);
    }
    CHECK(std::fabs(dot_row(t, w.view.data, x.data(), cols) - ref) <= 1e-5f * mag);
    CHECK(std::fabs(dot_row_scalar(t, w.view.data, x.data(), cols) - ref) <= 1e-5f * mag);
  }
}

TEST_CASE(
    "cpu kernels: linear matches the scalar reference for every dtype, batch size and row range",
    "[cpu]") {
  for (float_isa isa : available_isas())
    for (dtype t : {dtype::f32, dtype::f16, dtype::bf16, dtype::q8_0}) {
      for (size_t n : {size_t{1}, size_t{2}, size_t{3}, size_t{4}, size_t{8},
                       gemm_packed_min_rows - 1, gemm_packed_min_rows, size_t{19},
                       gemm_min_rows - 1, gemm_min_rows, gemm_min_rows + 3}) {
        size_t cols = t == dtype::q8_0 ? 96 : 45, rows = 37;
        INFO(dtype_name(t) << " n=" << n << " isa " << float_isa_name(isa));
        auto w = make_weight(t, rows, cols, 21);
        auto x = random_floats(n * cols, 22);
        const size_t ys = rows + 3;  // a row stride wider than the output
        std::vector<float> y(n * ys, -7.0f), ref(n * ys, -7.0f), scratch;
        // Split the rows the way the engine does: ranges that are not multiples of 4.
        linear_on(isa, w.view, x.data(), n, y.data(), ys, 0, 5);
        linear_on(isa, w.view, x.data(), n, y.data(), ys, 5, 30);
        linear_on(isa, w.view, x.data(), n, y.data(), ys, 30, rows);
        if (isa == best_float_isa()) {  // linear() is the best path
          std::vector<float> z(n * ys, -7.0f);
          linear(w.view, x.data(), n, z.data(), ys, 0, rows, scratch);
          for (size_t i = 0; i < n; ++i)
            for (size_t j = 0; j < rows; ++j)
              REQUIRE(z[i * ys + j] == y[i * ys + j]);
        }
        // Below the GEMM switch-over a row's result does not depend on the batch it came in
        // or on how the rows were split (batched decode gives each sequence what it gets
        // alone, whatever the thread count), bit for bit.
        if (n < gemm_packed_min_rows && isa != float_isa::scalar && !is_int_dot_dtype(t)) {
          std::vector<float> one(ys);
          for (size_t i = 0; i < n; ++i) {
            linear_on(isa, w.view, x.data() + i * cols, 1, one.data(), ys, 0, rows);
            for (size_t j = 0; j < rows; ++j)
              REQUIRE(one[j] == y[i * ys + j]);
          }
        }
        linear_scalar(w.view, x.data(), n, ref.data(), ys, 0, rows);
        for (size_t i = 0; i < n; ++i) {
          for (size_t j = 0; j < rows; ++j)
            REQUIRE(y[i * ys + j] == Approx(ref[i * ys + j]).margin(1e-5));
          for (size_t j = rows; j < ys; ++j)
            REQUIRE(y[i * ys + j] == -7.0f);  // untouched
        }
      }
    }
}

TEST_CASE("cpu kernels: linear over wide rows splits the batch into several cache blocks",
          "[cpu]") {
  // 4100 columns: a few batch rows per cache block, a column tail, and 9 output rows (a
  // remainder after the 4-row tiles). 150 rows of 100 columns: several 64-row panels of the
  // AVX-512 GEMM, split into ranges that start and end inside a panel's 16-row vectors.
  for (float_isa isa : available_isas())
    for (dtype t : {dtype::f32, dtype::f16, dtype::bf16})
      for (auto [cols, rows] : {std::pair<size_t, size_t>{4100, 9}, {100, 150}}) {
        const size_t n = gemm_packed_min_rows + 5;
        INFO(dtype_name(t) << " isa " << float_isa_name(isa) << " " << rows << "x" << cols);
        auto w = make_weight(t, rows, cols, 31);
        auto x = random_floats(n * cols, 32);
        std::vector<float> y(n * rows), ref(n * rows);
        const size_t cut = rows > 64 ? 71 : rows;
        linear_on(isa, w.view, x.data(), n, y.data(), rows, 0, cut);
        linear_on(isa, w.view, x.data(), n, y.data(), rows, cut, rows);
        linear_scalar(w.view, x.data(), n, ref.data(), rows, 0, rows);
        for (size_t i = 0; i < y.size(); ++i)
          REQUIRE(y[i] == Approx(ref[i]).margin(1e-4));
      }
}

TEST_CASE("vector kernels: dot, axpy, rms_norm, silu_mul, softmax", "[cpu]") {
  auto a = random_floats(37, 1), b = random_floats(37, 2);
  float ref = 0;
  for (size_t k = 0; k < 37; ++k)
    ref += a[k] * b[k];
  CHECK(dot_f32(a.data(), b.data(), 37) == Approx(ref).margin(1e-6));
  std::vector<uint16_t> bh(37);
  f32_to_f16_row_scalar(b.data(), bh.data(), 37);
  float refh = 0;
  for (size_t k = 0; k < 37; ++k)
    refh += a[k] * f16_to_f32(bh[k]);
  CHECK(dot_f32_f16(a.data(), bh.data(), 37) == Approx(refh).margin(1e-6));
  std::vector<float> y(37, 1.0f), yh(37, 1.0f);
  axpy_f32(0.5f, a.data(), y.data(), 37);
  axpy_f16(0.5f, bh.data(), yh.data(), 37);
  for (size_t k = 0; k < 37; ++k) {
    CHECK(y[k] == Approx(1 + 0.5f * a[k]));
    CHECK(yh[k] == Approx(1 + 0.5f * f16_to_f32(bh[k])));
  }

  // rms_norm of (3, 4) with eps 0: rms = sqrt(12.5); weights (1, 2).
  float x[2] = {3, 4}, w[2] = {1, 2}, out[2];
  rms_norm(x, w, out, 2, 0.0f);
  CHECK(out[0] == Approx(3 / std::sqrt(12.5f)));
  CHECK(out[1] == Approx(8 / std::sqrt(12.5f)));
  // Every length around the 16 partial sums and the 8-wide scaling: the SIMD and scalar
  // twins give the same bits, within 1e-6 of a sum in long double.
  for (size_t n : {1, 7, 15, 16, 17, 33, 768, 2051}) {
    INFO("n = " << n);
    auto xs = random_floats(n, 3), ws = random_floats(n, 4);
    std::vector<float> simd(n), scalar(n);
    rms_norm(xs.data(), ws.data(), simd.data(), n, 1e-5f);
    rms_norm_scalar(xs.data(), ws.data(), scalar.data(), n, 1e-5f);
    CHECK(std::memcmp(simd.data(), scalar.data(), n * 4) == 0);
    long double ss = 0;
    for (float v : xs)
      ss += static_cast<long double>(v) * v;
    const double scale = 1.0 / std::sqrt(static_cast<double>(ss / n) + 1e-5);
    for (size_t k = 0; k < n; ++k)
      CHECK(simd[k] == Approx(xs[k] * scale * ws[k]).epsilon(1e-6));
  }

  float g[3] = {0, 1, -2}, u[3] = {5, 2, 3};
  silu_mul(g, u, 3);
  CHECK(g[0] == 0.0f);
  CHECK(g[1] == Approx(2 / (1 + std::exp(-1.0f))));
  CHECK(g[2] == Approx(-2 / (1 + std::exp(2.0f)) * 3));

  float s[3] = {1000, 1001, 0};  // large: must not overflow
  softmax(s, 3);
  CHECK(s[0] == Approx(1 / (1 + std::exp(1.0))));
  CHECK(s[1] == Approx(std::exp(1.0) / (1 + std::exp(1.0))));
  CHECK(s[2] == Approx(0).margin(1e-30));
}

TEST_CASE(
    "cpu kernels: silu_mul matches silu_mul_scalar from deep negative to large positive gates",
    "[cpu]") {
  auto g = random_floats(1003, 41, 100.0f), u = random_floats(1003, 42, 3.0f);
  g[0] = -1e30f;  // exp(-g) overflows: silu is -0
  g[1] = 1e30f;
  g[2] = 0;
  auto a = g, b = g;
  silu_mul(a.data(), u.data(), a.size());
  silu_mul_scalar(b.data(), u.data(), b.size());
  for (size_t k = 0; k < a.size(); ++k) {
    INFO("gate " << g[k]);
    REQUIRE(a[k] == Approx(b[k]).epsilon(1e-6).margin(1e-30));
  }
}

TEST_CASE("RoPE rotates adjacent pairs or halves", "[cpu]") {
  rope_scaling none;
  auto inv = rope_inv_freqs(4, 10000, none, nullptr);  // theta^(0), theta^(-1/2)
  REQUIRE(inv.size() == 2);
  CHECK(inv[0] == 1.0f);
  CHECK(inv[1] == Approx(0.01f));
  float cs[2], sn[2];
  rope_angles(3, inv.data(), 2, cs, sn);
  CHECK(cs[0] == Approx(std::cos(3.0)));
  CHECK(sn[1] == Approx(std::sin(0.03)));

  const float v0[4] = {1, 2, 3, 4};
  float adj[4], hal[4];
  std::memcpy(adj, v0, sizeof v0);
  std::memcpy(hal, v0, sizeof v0);
  rope_apply(adj, 4, cs, sn, rope_style::adjacent);  // pairs (0,1) by 3 rad, (2,3) by 0.03
  rope_apply(hal, 4, cs, sn, rope_style::halves);    // pairs (0,2) by 3 rad, (1,3) by 0.03
  auto rot = [](float a, float b, double ang) {
    return std::pair{float(a * std::cos(ang) - b * std::sin(ang)),
                     float(a * std::sin(ang) + b * std::cos(ang))};
  };
  auto [a0, a1] = rot(1, 2, 3.0);
  auto [a2, a3] = rot(3, 4, 0.03);
  CHECK(adj[0] == Approx(a0));
  CHECK(adj[1] == Approx(a1));
  CHECK(adj[2] == Approx(a2));
  CHECK(adj[3] == Approx(a3));
  auto [h0, h2] = rot(1, 3, 3.0);
  auto [h1, h3] = rot(2, 4, 0.03);
  CHECK(hal[0] == Approx(h0));
  CHECK(hal[1] == Approx(h1));
  CHECK(hal[2] == Approx(h2));
  CHECK(hal[3] == Approx(h3));

  // Position 0 is the identity.
  rope_angles(0, inv.data(), 2, cs, sn);
  std::memcpy(adj, v0, sizeof v0);
  rope_apply(adj, 4, cs, sn, rope_style::adjacent);
  CHECK(std::memcmp(adj, v0, sizeof v0) == 0);
}

TEST_CASE("RoPE frequency scaling: llama3, linear, divisors", "[cpu]") {
  // Llama 3.1: theta 500000, head_dim 128, factor 8, low 1, high 4, original 8192.
  // Wavelengths 2*pi/f: below 8192/4 = 2048 kept, above 8192/1 = 8192 divided by 8, between
  // blended. Pair 32: f = 500000^(-1/2) = 1.414214e-3, wavelength 4442.88, smooth =
  // (8192 / 4442.88 - 1) / 3 = 0.281283, new f = f * ((1 - smooth) / 8 + smooth)
  // = f * 0.371123 = 5.248462e-4 (derived by hand).
  rope_scaling l3{rope_scaling::kind::llama3, 8, 1, 4, 8192};
  auto base = rope_inv_freqs(128, 500000, rope_scaling{}, nullptr);
  auto inv = rope_inv_freqs(128, 500000, l3, nullptr);
  REQUIRE(inv.size() == 64);
  CHECK(inv[0] == 1.0f);                                 // wavelength 6.28: kept
  CHECK(inv[20] == base[20]);                            // wavelength 379: kept
  CHECK(inv[25] == base[25]);                            // wavelength 1058: kept
  CHECK(inv[32] == Approx(5.248462e-4).epsilon(1e-5));   // blended
  CHECK(inv[40] == Approx(base[40] / 8).epsilon(1e-6));  // wavelength 22911: / factor
  CHECK(inv[63] == Approx(base[63] / 8).epsilon(1e-6));

  rope_scaling lin{rope_scaling::kind::linear, 4, 1, 4, 8192};
  auto il = rope_inv_freqs(8, 10000, lin, nullptr);
  auto ib = rope_inv_freqs(8, 10000, rope_scaling{}, nullptr);
  for (size_t i = 0; i < 4; ++i)
    CHECK(il[i] == Approx(ib[i] / 4));

  // GGUF rope_freqs divisors take precedence over the config's scaling.
  const float div[4] = {1, 2, 4, 8};
  auto idv = rope_inv_freqs(8, 10000, l3, div);
  for (size_t i = 0; i < 4; ++i)
    CHECK(idv[i] == Approx(ib[i] / div[i]));
}

TEST_CASE("thread_pool runs every index exactly once", "[cpu]") {
  for (uint32_t threads : {1u, 2u, 4u}) {
    thread_pool pool(threads);
    REQUIRE(pool.size() == threads);
    for (size_t grain : {size_t{0}, size_t{1}, size_t{7}, size_t{1000}}) {
      for (int rep = 0; rep < 50; ++rep) {
        std::vector<std::atomic<int>> hits(513);
        std::atomic<bool> bad_thread{false};
        pool.parallel_for(hits.size(), grain, [&](size_t b, size_t e, uint32_t t) {
          if (t >= threads || (grain && e - b > grain)) bad_thread = true;
          for (size_t i = b; i < e; ++i)
            hits[i].fetch_add(1);
        });
        for (auto& h : hits)
          REQUIRE(h.load() == 1);
        REQUIRE(!bad_thread);
      }
    }
    // Nested calls run inline; an empty range calls nothing.
    std::atomic<int> total{0};
    pool.parallel_for(8, 1, [&](size_t, size_t, uint32_t) {
      pool.parallel_for(10, 3, [&](size_t b, size_t e, uint32_t) { total += int(e - b); });
    });
    CHECK(total == 80);
    pool.parallel_for(0, 1, [&](size_t, size_t, uint32_t) { total = -1; });
    CHECK(total == 80);
  }
  thread_pool hw(0);
  CHECK(hw.size() >= 1);
}

TEST_CASE("thread_pool guided chunks: every index once, whole units, shrinking", "[cpu]") {
  for (uint32_t threads : {1u, 2u, 3u}) {
    thread_pool pool(threads);
    for (size_t unit : {size_t{1}, size_t{16}}) {
      for (size_t count : {size_t{5}, size_t{16}, size_t{517}, size_t{2304}}) {
        for (int rep = 0; rep < 30; ++rep) {
          std::vector<std::atomic<int>> hits(count);
          std::atomic<int> bad{0};
          pool.parallel_for_guided(count, unit, [&](size_t b, size_t e, uint32_t t) {
            if (t >= threads || b >= e || b % unit != 0) bad |= 1;
            if (e != count && (e - b) % unit != 0) bad |= 2;  // only the last may be short
            // A chunk is at most half a participant's share of what was left (a pool without
            // workers runs the range inline as one chunk).
            if (threads > 1 && e - b > std::max(unit, (count - b) / (2 * threads))) bad |= 4;
            for (size_t i = b; i < e; ++i)
              hits[i].fetch_add(1);
          });
          for (auto& h : hits)
            REQUIRE(h.load() == 1);
          INFO("threads " << threads << " unit " << unit << " count " << count);
          REQUIRE(bad.load() == 0);
        }
      }
    }
  }
}
