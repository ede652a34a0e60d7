// The CUDA kernels and blas::linear against the CPU engine's ops (STYLE.md §9): exact where
// the operation is exact (gathers, single adds, conversions), else normalised MSE
// sum((gpu - cpu)^2) / sum(cpu^2) under a tolerance per op. [gpu] cases skip without a
// device; the [gpu-host] case runs everywhere.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "engine/cpu/kernels.hpp"
#include "engine/kv_layout.hpp"
#include "engine/sampler.hpp"
#include "gpu/activation.cuh"
#include "gpu/cuda_util.hpp"
#include "gpu/embedding.cuh"
#include "gpu/norm.cuh"
#include "gpu/rope.cuh"
#include "gpu/sampling.cuh"
#include "tests/gpu/gpu_test.hpp"

using namespace tokenmill;
using namespace tokenmill::gpu;

namespace {

// ---- tolerances (normalised MSE) ----------------------------------------------------------

/// FP32 on both sides, differing only in summation order (RMSNorm's sum of squares) or in
/// the last ulp of a libm function (expf, cos): about 1e-14 expected.
constexpr double nmse_f32 = 1e-12;
/// A result stored as f16, against the CPU's unrounded f32: one round-to-nearest to 11
/// significant bits, whose squared relative error is at most (2^-11)^2 = 2.4e-7.
constexpr double nmse_round_f16 = 3e-7;
/// The same for bf16 (8 significant bits): at most (2^-8)^2 = 1.5e-5.
constexpr double nmse_round_bf16 = 2e-5;
/// blas::linear f32 with exact_f32 (CUBLAS_COMPUTE_32F_PEDANTIC): summation order only.
constexpr double nmse_gemm_f32 = 1e-10;
/// blas::linear f32 with default math: cuBLAS may use reduced-precision paths (at worst
/// TF32's 11-bit inputs).
constexpr double nmse_gemm_f32_fast = 1e-5;
/// blas::linear with f16 inputs against the CPU's f16 weights and f32 x: x is rounded to
/// f16 on the device (squared relative error <= 2.4e-7 per product), FP32 accumulation.
constexpr double nmse_gemm_f16 = 1e-5;
/// The same with bf16 inputs (<= 1.5e-5 per product).
constexpr double nmse_gemm_bf16 = 1e-4;

double nmse(const std::vector<float>& got, const std::vector<float>& want) {
  REQUIRE(got.size() == want.size());
  double num = 0, den = 0;
  for (size_t k = 0; k < got.size(); ++k) {
    const double d = double{got[k]} - want[k];
    num += d * d;
    den += double{want[k]} * want[k];
  }
  return den > 0 ? num / den : num;
}

/// The tolerance of a kernel result stored as `t` whose FP32 value is within `f32_tol`.
double rounding_tolerance(elem t, double f32_tol) {
  return t == elem::f32 ? f32_tol : t == elem::f16 ? nmse_round_f16 : nmse_round_bf16;
}

std::vector<float> random_floats(size_t n, uint32_t seed, float scale = 1.0f, float offset = 0.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(-scale, scale);
  std::vector<float> v(n);
  for (auto& x : v)
    x = offset + d(rng);
  return v;
}

dtype to_dtype(elem t) {
  return t == elem::f32 ? dtype::f32 : t == elem::f16 ? dtype::f16 : dtype::bf16;
}

const char* name(elem t) {
  return t == elem::f32 ? "f32" : t == elem::f16 ? "f16" : "bf16";
}

/// floats as elements of `t` (round to nearest even), with the CPU's conversions.
std::vector<std::byte> encode(const std::vector<float>& f, elem t) {
  std::vector<std::byte> out(f.size() * elem_bytes(t));
  for (size_t k = 0; k < f.size(); ++k) {
    if (t == elem::f32) {
      std::memcpy(out.data() + 4 * k, &f[k], 4);
    } else {
      const uint16_t h = t == elem::f16 ? cpu::f32_to_f16(f[k]) : cpu::f32_to_bf16(f[k]);
      std::memcpy(out.data() + 2 * k, &h, 2);
    }
  }
  return out;
}

/// Elements of `t` as floats, with the CPU's dequantize_row.
std::vector<float> decode(const std::vector<std::byte>& b, elem t) {
  std::vector<float> out(b.size() / elem_bytes(t));
  cpu::dequantize_row(to_dtype(t), b.data(), out.data(), out.size());
  return out;
}

template <class T>
device_buffer upload(const std::vector<T>& v) {
  device_buffer b(v.size() * sizeof(T));
  if (!v.empty())
    TM_CUDA(cudaMemcpy(b.get(), v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
  // A copy from pageable memory may return before its DMA is done, on the default stream
  // that the tests' non-blocking streams do not wait for.
  TM_CUDA(cudaDeviceSynchronize());
  return b;
}

/// The first `n` Ts of `b`, after the work queued on `s` is done.
template <class T>
std::vector<T> download(const device_buffer& b, size_t n, const stream& s) {
  s.synchronize();
  std::vector<T> v(n);
  if (n > 0) TM_CUDA(cudaMemcpy(v.data(), b.get(), n * sizeof(T), cudaMemcpyDeviceToHost));
  return v;
}

constexpr elem all_types[] = {elem::f32, elem::f16, elem::bf16};

}  // namespace

// ---- without a device ---------------------------------------------------------------------

TEST_CASE("device_count and the error translation need no device", "[gpu-host]") {
  std::string why;
  const int n = device_count(why);
  CHECK(n >= 0);
  if (n == 0) CHECK_FALSE(why.empty());
  INFO("devices: " << n << " (" << why << ")");

  CHECK_NOTHROW(check_cuda(cudaSuccess, "x", "f.cu", 7));
  CHECK_THROWS_AS(check_cuda(cudaErrorInvalidValue, "x", "f.cu", 7), cuda_error);
  CHECK_THROWS_WITH(check_cuda(cudaErrorInvalidValue, "x", "f.cu", 7),
                    Catch::Contains("f.cu:7: x: cudaErrorInvalidValue: "));
  CHECK_NOTHROW(check_cublas(CUBLAS_STATUS_SUCCESS, "y", "g.cpp", 9));
  CHECK_THROWS_AS(check_cublas(CUBLAS_STATUS_INVALID_VALUE, "y", "g.cpp", 9), cuda_error);
  CHECK_THROWS_WITH(check_cublas(CUBLAS_STATUS_INVALID_VALUE, "y", "g.cpp", 9),
                    Catch::Contains("g.cpp:9: y: CUBLAS_STATUS_INVALID_VALUE: "));
}

// ---- embedding ----------------------------------------------------------------------------

TEST_CASE("embed gathers rows as the CPU dequantizes them", "[gpu]") {
  TM_REQUIRE_GPU_OR_SKIP();
  const uint32_t vocab = 11, dim = 37;  // dim: not a multiple of a warp
  const auto f = random_floats(size_t{vocab} * dim, 1);
  stream s;
  for (elem t : all_types) {
    for (const auto& tokens : {std::vector<int32_t>{7}, std::vector<int32_t>{3, 0, 10, 3}}) {
      INFO(name(t) << ", " << tokens.size() << " rows");
      const auto n = static_cast<uint32_t>(tokens.size());
      const auto table = encode(f, t);
      auto d_table = upload(table);
      auto d_tokens = upload(tokens);
      device_buffer d_x(size_t{n} * dim * sizeof(float));
      embed(d_table.get(), t, d_tokens.as<int32_t>(), n, dim, d_x.as<float>(), s.get());
      const auto got = download<float>(d_x, size_t{n} * dim, s);

      std::vector<float> want(size_t{n} * dim);
      for (size_t r = 0; r < n; ++r)
        cpu::dequantize_row(to_dtype(t), table.data() + tokens[r] * dim * elem_bytes(t),
                            want.data() + r * dim, dim);
      CHECK(got == want);
    }
  }
}

// ---- RMSNorm ------------------------------------------------------------------------------

TEST_CASE("rms_norm matches cpu::rms_norm", "[gpu]") {
  TM_REQUIRE_GPU_OR_SKIP();
  const float eps = 1e-5f;
  stream s;
  for (uint32_t dim : {7u, 33u, 4099u}) {
    for (uint32_t rows : {1u, 5u}) {
      const auto x = random_floats(size_t{rows} * dim, dim + rows, 3.0f);
      const auto w = random_floats(dim, dim, 0.5f, 1.0f);
      std::vector<float> want(x.size());
      for (size_t r = 0; r < rows; ++r)
        cpu::rms_norm(x.data() + r * dim, w.data(), want.data() + r * dim, dim, eps);
      auto d_x = upload(x);
      auto d_w = upload(w);
      for (elem t : all_types) {
        INFO(name(t) << ", dim " << dim << ", rows " << rows);
        device_buffer d_y(x.size() * elem_bytes(t));
        rms_norm(d_x.as<float>(), d_w.as<float>(), d_y.get(), t, rows, dim, eps, s.get());
        const auto got = decode(download<std::byte>(d_y, d_y.size(), s), t);
        CHECK(nmse(got, want) < rounding_tolerance(t, nmse_f32));
      }
      // In place (y = x), as the CPU allows.
      rms_norm(d_x.as<float>(), d_w.as<float>(), d_x.get(), elem::f32, rows, dim, eps, s.get());
      CHECK(nmse(download<float>(d_x, x.size(), s), want) < nmse_f32);
    }
  }
}

// ---- element-wise -------------------------------------------------------------------------

TEST_CASE("swiglu matches cpu::silu_mul", "[gpu]") {
  TM_REQUIRE_GPU_OR_SKIP();
  stream s;
  for (uint32_t ffn : {37u, 1000u}) {
    for (uint32_t rows : {1u, 3u}) {
      const auto gu = random_floats(size_t{rows} * 2 * ffn, ffn + rows, 6.0f);
      std::vector<float> want(size_t{rows} * ffn);
      for (size_t r = 0; r < rows; ++r) {
        std::copy_n(gu.data() + r * 2 * ffn, ffn, want.data() + r * ffn);
        cpu::silu_mul(want.data() + r * ffn, gu.data() + r * 2 * ffn + ffn, ffn);
      }
      auto d_gu = upload(gu);
      for (elem t : all_types) {
        INFO(name(t) << ", ffn " << ffn << ", rows " << rows);
        device_buffer d_out(want.size() * elem_bytes(t));
        swiglu(d_gu.as<float>(), d_out.get(), t, rows, ffn, s.get());
        const auto got = decode(download<std::byte>(d_out, d_out.size(), s), t);
        CHECK(nmse(got, want) < rounding_tolerance(t, nmse_f32));
      }
    }
  }
}

TEST_CASE("residual_add and add_bias add exactly", "[gpu]") {
  TM_REQUIRE_GPU_OR_SKIP();
  stream s;
  SECTION("residual_add") {
    const size_t n = 1001;
    const auto y = random_floats(n, 1), x = random_floats(n, 2);
    auto d_y = upload(y);
    auto d_x = upload(x);
    residual_add(d_y.as<float>(), d_x.as<float>(), n, s.get());
    std::vector<float> want(n);
    for (size_t k = 0; k < n; ++k)
      want[k] = y[k] + x[k];
    CHECK(download<float>(d_y, n, s) == want);
  }
  SECTION("add_bias leaves the row padding alone") {
    const uint32_t rows = 3, cols = 37, stride = 40;
    const auto y = random_floats(size_t{rows} * stride, 3), b = random_floats(cols, 4);
    auto d_y = upload(y);
    auto d_b = upload(b);
    add_bias(d_y.as<float>(), d_b.as<float>(), rows, cols, stride, s.get());
    auto want = y;
    for (size_t r = 0; r < rows; ++r)
      for (size_t i = 0; i < cols; ++i)
        want[r * stride + i] += b[i];
    CHECK(download<float>(d_y, y.size(), s) == want);
  }
}

TEST_CASE("convert_from_f32 and convert_to_f32 match the CPU's conversions", "[gpu]") {
  TM_REQUIRE_GPU_OR_SKIP();
  stream s;
  const float inf = std::numeric_limits<float>::infinity();
  // Random values and the rounding edges: ties to even for f16 (1 + 2^-11, 1 + 3 * 2^-11,
  // 2^-25, 3 * 2^-25) and bf16 (1 + 2^-8, 1 + 3 * 2^-8), overflow, subnormals, signs.
  auto src = random_floats(1000, 5, 100.0f);
  for (float e : {0.0f, -0.0f, 1.0f + std::ldexp(1.0f, -11), 1.0f + 3 * std::ldexp(1.0f, -11),
                  std::ldexp(1.0f, -25), std::ldexp(3.0f, -25), 1.0f + std::ldexp(1.0f, -8),
                  1.0f + 3 * std::ldexp(1.0f, -8), 65519.0f, 65520.0f, 1e-8f, -2.0f, inf, -inf,
                  3.4e38f, -1e-40f, std::numeric_limits<float>::quiet_NaN()})
    src.push_back(e);
  auto d_src = upload(src);

  for (elem t : {elem::f16, elem::bf16}) {
    INFO(name(t));
    device_buffer d_dst(src.size() * 2);
    convert_from_f32(d_src.as<float>(), d_dst.get(), t, src.size(), s.get());
    const auto got = download<uint16_t>(d_dst, src.size(), s);
    for (size_t k = 0; k < src.size(); ++k) {
      INFO("value " << src[k]);
      const float back = t == elem::f16 ? cpu::f16_to_f32(got[k]) : cpu::bf16_to_f32(got[k]);
      if (std::isnan(src[k]))
        CHECK(std::isnan(back));  // NaN payloads may differ
      else
        CHECK(got[k] == (t == elem::f16 ? cpu::f32_to_f16(src[k]) : cpu::f32_to_bf16(src[k])));
    }

    // Every 16-bit pattern back to f32.
    std::vector<uint16_t> all(65536);
    for (uint32_t h = 0; h < all.size(); ++h)
      all[h] = static_cast<uint16_t>(h);
    auto d_all = upload(all);
    device_buffer d_f(all.size() * sizeof(float));
    convert_to_f32(d_all.get(), t, d_f.as<float>(), all.size(), s.get());
    const auto f = download<float>(d_f, all.size(), s);
    size_t wrong = 0;
    for (uint32_t h = 0; h < all.size(); ++h) {
      const float want = t == elem::f16 ? cpu::f16_to_f32(all[h]) : cpu::bf16_to_f32(all[h]);
      const bool same = std::isnan(want) ? std::isnan(f[h]) : std::memcmp(&want, &f[h], 4) == 0;
      wrong += same ? 0 : 1;
    }
    CHECK(wrong == 0);
  }

  // f32 to f32 is a copy, both ways.
  device_buffer d_copy(src.size() * sizeof(float));
  convert_from_f32(d_src.as<float>(), d_copy.get(), elem::f32, src.size(), s.get());
  device_buffer d_back(src.size() * sizeof(float));
  convert_to_f32(d_copy.get(), elem::f32, d_back.as<float>(), src.size(), s.get());
  const auto back = download<float>(d_back, src.size(), s);
  CHECK(std::memcmp(back.data(), src.data(), src.size() * sizeof(float)) == 0);
}

// ---- RoPE and the KV store ----------------------------------------------------------------

TEST_CASE("rope_store_kv rotates like rope_apply and stores K and V in the table's blocks",
          "[gpu]") {
  TM_REQUIRE_GPU_OR_SKIP();
  const auto style = GENERATE(rope_style::adjacent, rope_style::halves);
  const bool kv_f16 = GENERATE(true, false);
  INFO((style == rope_style::adjacent ? "adjacent" : "halves")
       << ", KV " << (kv_f16 ? "f16" : "f32"));

  const uint32_t layers = 3, layer = 1, heads = 4, kv_heads = 2, hd = 12, bt = 4;
  const uint32_t num_blocks = 12, stride = 3, width = (heads + 2 * kv_heads) * hd;
  // Sequence 0 lives in blocks {5, 2, 9} (not contiguous, not ascending), sequence 1 in
  // {11, 3, 0}. Sequence 0 is a prefill chunk of positions 3..9 (crossing two block
  // boundaries), sequence 1 a decode row at position 6 (block 3, slot 2).
  const std::vector<int32_t> tables = {5, 2, 9, 11, 3, 0};
  std::vector<int32_t> pos, seq;
  for (int32_t p = 3; p <= 9; ++p) {
    pos.push_back(p);
    seq.push_back(0);
  }
  pos.push_back(6);
  seq.push_back(1);
  const auto rows = static_cast<uint32_t>(pos.size());

  const kv_layout lay{layers, kv_heads, hd, bt, kv_f16 ? 2u : 4u};
  const elem kv_t = kv_f16 ? elem::f16 : elem::f32;
  const std::byte sentinel{0xab};
  const std::vector<std::byte> cache(num_blocks * lay.block_bytes(), sentinel);
  const auto qkv = random_floats(size_t{rows} * width, 7, 2.0f);
  const auto inv_freq = cpu::rope_inv_freqs(hd, 10000.0f, rope_scaling{}, nullptr);

  // The CPU's answer: rotated Q and K in qkv; K and V of each row at its slot.
  auto want_qkv = qkv;
  std::vector<float> want_kv;     // the stored values, in the order of `stored_at`
  std::vector<size_t> stored_at;  // byte offset in the cache of each stored element
  std::vector<bool> written(cache.size(), false);
  for (size_t r = 0; r < rows; ++r) {
    float* row = want_qkv.data() + r * width;
    std::vector<float> c(hd / 2), sn(hd / 2);
    cpu::rope_angles(static_cast<uint32_t>(pos[r]), inv_freq.data(), hd / 2, c.data(), sn.data());
    for (uint32_t h = 0; h < heads + kv_heads; ++h)
      cpu::rope_apply(row + h * hd, hd, c.data(), sn.data(), style);
    const auto block = static_cast<size_t>(tables[seq[r] * stride + pos[r] / bt]);
    const uint32_t slot = static_cast<uint32_t>(pos[r]) % bt;
    for (uint32_t which = 0; which < 2; ++which)
      for (uint32_t h = 0; h < kv_heads; ++h)
        for (uint32_t d = 0; d < hd; ++d) {
          const size_t at =
              block * lay.block_bytes() + lay.offset(layer, which, h, slot) + d * lay.dtype_bytes;
          want_kv.push_back(row[(heads + which * kv_heads + h) * hd + d]);
          stored_at.push_back(at);
          for (size_t b = 0; b < lay.dtype_bytes; ++b)
            written[at + b] = true;
        }
  }

  stream s;
  auto d_qkv = upload(qkv);
  auto d_cache = upload(cache);
  auto d_tables = upload(tables);
  auto d_pos = upload(pos);
  auto d_seq = upload(seq);
  auto d_inv = upload(inv_freq);
  paged_kv kv;
  kv.base = d_cache.get();
  kv.block_bytes = lay.block_bytes();
  kv.layers = layers;
  kv.kv_heads = kv_heads;
  kv.head_dim = hd;
  kv.block_tokens = bt;
  kv.kv_f16 = kv_f16;
  kv.tables = d_tables.as<int32_t>();
  kv.table_stride = stride;
  const batch_rows br{d_pos.as<int32_t>(), d_seq.as<int32_t>(), rows};
  const rope_pairs pairs =
      style == rope_style::adjacent ? rope_pairs::adjacent : rope_pairs::halves;
  rope_store_kv(d_qkv.as<float>(), br, heads, d_inv.as<float>(), pairs, kv, layer, s.get());

  const auto got_qkv = download<float>(d_qkv, qkv.size(), s);
  CHECK(nmse(got_qkv, want_qkv) < nmse_f32);
  size_t v_changed = 0;  // V stays as it was in qkv (it is only copied)
  for (size_t r = 0; r < rows; ++r)
    for (size_t k = (heads + kv_heads) * hd; k < width; ++k)
      v_changed += got_qkv[r * width + k] == qkv[r * width + k] ? 0 : 1;
  CHECK(v_changed == 0);

  const auto got_cache = download<std::byte>(d_cache, cache.size(), s);
  size_t clobbered = 0;  // bytes outside the written slots, in any block
  for (size_t b = 0; b < cache.size(); ++b)
    clobbered += !written[b] && got_cache[b] != sentinel ? 1 : 0;
  CHECK(clobbered == 0);
  std::vector<float> got_kv;
  for (size_t at : stored_at) {
    std::vector<std::byte> e(got_cache.begin() + static_cast<ptrdiff_t>(at),
                             got_cache.begin() + static_cast<ptrdiff_t>(at + lay.dtype_bytes));
    got_kv.push_back(decode(e, kv_t)[0]);
  }
  CHECK(nmse(got_kv, want_kv) < rounding_tolerance(kv_t, nmse_f32));
}

TEST_CASE("rope_store_kv takes the CPU's angles at large positions", "[gpu]") {
  TM_REQUIRE_GPU_OR_SKIP();
  // One token a block and a table entry per position, so that positions up to 60000 need
  // only the few blocks they use. At such positions an FP32 angle (pos * inv_freq rounded
  // to float) is off by up to 2e-3 rad; the CPU computes it in double.
  const uint32_t heads = 2, kv_heads = 1, hd = 64, width = (heads + 2 * kv_heads) * hd;
  const std::vector<int32_t> pos = {0, 1, 4095, 50000, 60000};
  const auto rows = static_cast<uint32_t>(pos.size());
  std::vector<int32_t> tables(60001, -1), seq(rows, 0);
  for (uint32_t r = 0; r < rows; ++r)
    tables[static_cast<size_t>(pos[r])] = static_cast<int32_t>(r);
  const kv_layout lay{1, kv_heads, hd, 1, 4};
  rope_scaling llama3;
  llama3.type = rope_scaling::kind::llama3;
  llama3.factor = 8;
  const auto inv_freq = cpu::rope_inv_freqs(hd, 500000.0f, llama3, nullptr);
  const auto qkv = random_floats(size_t{rows} * width, 8, 2.0f);

  auto want = qkv;
  for (size_t r = 0; r < rows; ++r) {
    std::vector<float> c(hd / 2), sn(hd / 2);
    cpu::rope_angles(static_cast<uint32_t>(pos[r]), inv_freq.data(), hd / 2, c.data(), sn.data());
    for (uint32_t h = 0; h < heads + kv_heads; ++h)
      cpu::rope_apply(want.data() + r * width + h * hd, hd, c.data(), sn.data(),
                      rope_style::halves);
  }

  stream s;
  auto d_qkv = upload(qkv);
  device_buffer d_cache(rows * lay.block_bytes());
  auto d_tables = upload(tables);
  auto d_pos = upload(pos);
  auto d_seq = upload(seq);
  auto d_inv = upload(inv_freq);
  paged_kv kv;
  kv.base = d_cache.get();
  kv.block_bytes = lay.block_bytes();
  kv.layers = 1;
  kv.kv_heads = kv_heads;
  kv.head_dim = hd;
  kv.block_tokens = 1;
  kv.kv_f16 = false;
  kv.tables = d_tables.as<int32_t>();
  kv.table_stride = static_cast<uint32_t>(tables.size());
  rope_store_kv(d_qkv.as<float>(), batch_rows{d_pos.as<int32_t>(), d_seq.as<int32_t>(), rows},
                heads, d_inv.as<float>(), rope_pairs::halves, kv, 0, s.get());
  CHECK(nmse(download<float>(d_qkv, qkv.size(), s), want) < nmse_f32);

  // Block r holds row r's rotated K.
  const auto cache = download<float>(d_cache, rows * lay.block_bytes() / 4, s);
  std::vector<float> got_k, want_k;
  for (size_t r = 0; r < rows; ++r)
    for (uint32_t d = 0; d < hd; ++d) {
      got_k.push_back(cache[(r * lay.block_bytes() + lay.offset(0, 0, 0, 0)) / 4 + d]);
      want_k.push_back(want[r * width + heads * hd + d]);
    }
  CHECK(nmse(got_k, want_k) < nmse_f32);
}

// ---- argmax -------------------------------------------------------------------------------

TEST_CASE("argmax_rows picks the lowest id of the maximum and never NaN", "[gpu]") {
  TM_REQUIRE_GPU_OR_SKIP();
  const uint32_t vocab = 1001;  // not a multiple of the block
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<std::vector<float>> rows;
  std::vector<int32_t> want;
  auto add = [&](std::vector<float> row, int32_t id) {
    rows.push_back(std::move(row));
    want.push_back(id);
  };
  auto base = [&](uint32_t seed) { return random_floats(vocab, seed); };
  {
    auto r = base(1);
    r[777] = 2.0f;
    add(r, 777);
  }
  // Ties in one thread's slice (5, 261: 256 threads), in one warp (6, 7), across warps
  // (70, 300, 900: warps 2, 1, 4), at the ends (0, 1000).
  for (std::vector<int32_t> ids :
       {std::vector<int32_t>{261, 5}, std::vector<int32_t>{7, 6},
        std::vector<int32_t>{900, 300, 70}, std::vector<int32_t>{1000, 0}}) {
    auto r = base(static_cast<uint32_t>(ids[0]));
    for (int32_t id : ids)
      r[static_cast<size_t>(id)] = 3.0f;
    add(r, *std::min_element(ids.begin(), ids.end()));
  }
  {
    auto r = base(2);  // NaN first and where the maximum would be
    r[0] = nan;
    r[500] = nan;
    r[501] = 1.5f;
    add(r, 501);
  }
  {
    std::vector<float> r(vocab, -inf);  // all -inf: every id ties, id 0 wins
    add(r, 0);
  }
  {
    std::vector<float> r(vocab, nan);  // NaN and -inf: the first -inf
    r[600] = -inf;
    r[800] = -inf;
    add(r, 600);
  }
  add(std::vector<float>(vocab, nan), 0);  // all NaN: id 0

  std::vector<float> flat;
  for (const auto& r : rows)
    flat.insert(flat.end(), r.begin(), r.end());
  stream s;
  auto d_logits = upload(flat);
  device_buffer d_out(rows.size() * sizeof(int32_t));
  argmax_rows(d_logits.as<float>(), static_cast<uint32_t>(rows.size()), vocab, d_out.as<int32_t>(),
              s.get());
  const auto got = download<int32_t>(d_out, rows.size(), s);
  for (size_t r = 0; r < rows.size(); ++r) {
    INFO("row " << r);
    CHECK(got[r] == want[r]);
    // The CPU sampler's greedy path agrees, except on the all-NaN row: its loop ends on
    // the last id there, while the kernel's contract is id 0.
    if (r + 1 < rows.size()) CHECK(sample_token(rows[r], sampling_params{}, 0) == want[r]);
  }

  SECTION("a vocabulary of one") {
    auto d_one = upload(std::vector<float>{-4.0f, nan});
    argmax_rows(d_one.as<float>(), 2, 1, d_out.as<int32_t>(), s.get());
    CHECK(download<int32_t>(d_out, 2, s) == std::vector<int32_t>{0, 0});
  }
}

// ---- blas::linear -------------------------------------------------------------------------

TEST_CASE("blas::linear matches cpu::linear_scalar", "[gpu]") {
  TM_REQUIRE_GPU_OR_SKIP();
  const uint32_t out = 33, in = 67, ldy = out + 3;  // odd sizes, padded output rows
  stream s;
  blas exact(s.get(), true);
  blas fast(s.get(), false);
  for (elem t : all_types) {
    for (uint32_t n : {1u, 5u, 70u}) {
      for (float beta : {0.0f, 1.0f}) {
        for (bool use_exact : {true, false}) {
          if (t != elem::f32 && !use_exact) continue;  // 16-bit inputs: one math mode
          INFO(name(t) << ", n " << n << ", beta " << beta << ", exact " << use_exact);
          const auto wf = random_floats(size_t{out} * in, out + n, 1.0f);
          const auto x = random_floats(size_t{n} * in, in + n, 1.0f);
          const auto y0 = random_floats(size_t{n} * ldy, n, 1.0f);
          const auto w = encode(wf, t);
          const tensor_view view{"w", to_dtype(t), out, in, w.data()};

          std::vector<float> dots(size_t{n} * ldy, 0.0f);
          cpu::linear_scalar(view, x.data(), n, dots.data(), ldy, 0, out);
          std::vector<float> want, padding;  // y[i][j] for j < out; the untouched rest
          for (size_t i = 0; i < n; ++i)
            for (size_t j = 0; j < ldy; ++j) {
              const size_t k = i * ldy + j;
              if (j < out)
                want.push_back(beta * y0[k] + dots[k]);
              else
                padding.push_back(y0[k]);
            }

          auto d_w = upload(w);
          auto d_x = upload(encode(x, t));
          auto d_y = upload(y0);
          (use_exact ? exact : fast)
              .linear(d_w.get(), d_x.get(), t, n, out, in, d_y.as<float>(), ldy, beta);
          const auto y = download<float>(d_y, y0.size(), s);
          std::vector<float> got, got_padding;
          for (size_t i = 0; i < n; ++i)
            for (size_t j = 0; j < ldy; ++j)
              (j < out ? got : got_padding).push_back(y[i * ldy + j]);

          const double tol = t == elem::f16    ? nmse_gemm_f16
                             : t == elem::bf16 ? nmse_gemm_bf16
                             : use_exact       ? nmse_gemm_f32
                                               : nmse_gemm_f32_fast;
          CHECK(nmse(got, want) < tol);
          CHECK(got_padding == padding);
        }
      }
    }
  }
}

// ---- graph capture ------------------------------------------------------------------------

TEST_CASE("rms_norm, blas::linear and argmax_rows replay from a CUDA graph", "[gpu]") {
  TM_REQUIRE_GPU_OR_SKIP();
  // Nothing in the launchers may allocate, synchronise or read device memory on the host:
  // capture would fail. The replay must give what eager launches give.
  const uint32_t rows = 4, dim = 96, vocab = 517;
  const auto x = random_floats(size_t{rows} * dim, 1, 2.0f);
  const auto w_norm = random_floats(dim, 2, 0.5f, 1.0f);
  const auto w_out = encode(random_floats(size_t{vocab} * dim, 3), elem::bf16);
  stream s;
  blas b(s.get(), false);
  auto d_x = upload(x);
  auto d_wn = upload(w_norm);
  auto d_wo = upload(w_out);
  device_buffer d_h(size_t{rows} * dim * 2);
  device_buffer d_logits(size_t{rows} * vocab * sizeof(float));
  device_buffer d_ids(rows * sizeof(int32_t));
  auto step = [&] {
    rms_norm(d_x.as<float>(), d_wn.as<float>(), d_h.get(), elem::bf16, rows, dim, 1e-5f, s.get());
    b.linear(d_wo.get(), d_h.get(), elem::bf16, rows, vocab, dim, d_logits.as<float>(), vocab);
    argmax_rows(d_logits.as<float>(), rows, vocab, d_ids.as<int32_t>(), s.get());
  };
  step();
  const auto eager_logits = download<float>(d_logits, size_t{rows} * vocab, s);
  const auto eager_ids = download<int32_t>(d_ids, rows, s);

  graph_exec::begin_capture(s.get());
  step();
  graph_exec g = graph_exec::end_capture(s.get());
  REQUIRE(g);
  TM_CUDA(cudaMemsetAsync(d_logits.get(), 0, d_logits.size(), s.get()));
  TM_CUDA(cudaMemsetAsync(d_ids.get(), 0xff, d_ids.size(), s.get()));
  g.launch(s.get());
  g.launch(s.get());
  CHECK(nmse(download<float>(d_logits, size_t{rows} * vocab, s), eager_logits) < nmse_f32);
  CHECK(download<int32_t>(d_ids, rows, s) == eager_ids);
}
