// Tiled attention (engine/cpu/attention.hpp) against its one-query-at-a-time reference.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "engine/cpu/attention.hpp"
#include "engine/cpu/kernels.hpp"
#include "tests/skip.hpp"

#if defined(__x86_64__)
#include "engine/cpu/detail/exp_avx2.hpp"
#endif

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

/// K and V of `tokens` positions in blocks, stored out of order in one buffer (as a pool
/// does), with every slot past the last token filled with NaN: a kernel that reads beyond
/// a query's context shows it.
struct paged_kv {
  std::vector<std::byte> k, v;
  std::vector<const std::byte*> kp, vp;
  kv_head_blocks view;
};

paged_kv make_kv(uint32_t tokens, uint32_t bt, uint32_t hd, uint32_t bytes, uint32_t seed) {
  paged_kv kv;
  const uint32_t nb = (tokens + bt - 1) / bt;
  const size_t blk = size_t{bt} * hd * bytes;
  kv.k.resize(nb * blk);
  kv.v.resize(nb * blk);
  auto kf = random_floats(size_t{nb} * bt * hd, seed, 2.0f);
  auto vf = random_floats(size_t{nb} * bt * hd, seed + 1);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (uint32_t b = 0; b < nb; ++b) {
    const uint32_t slot = nb - 1 - b;  // blocks stored in reverse order
    for (uint32_t s = 0; s < bt; ++s)
      for (uint32_t d = 0; d < hd; ++d) {
        const size_t src = (size_t{b} * bt + s) * hd + d;
        const bool live = b * bt + s < tokens;
        const float kx = live ? kf[src] : nan, vx = live ? vf[src] : nan;
        const size_t off = slot * blk + (size_t{s} * hd + d) * bytes;
        if (bytes == 2) {
          const uint16_t kh = f32_to_f16(kx), vh = f32_to_f16(vx);
          std::memcpy(kv.k.data() + off, &kh, 2);
          std::memcpy(kv.v.data() + off, &vh, 2);
        } else {
          std::memcpy(kv.k.data() + off, &kx, 4);
          std::memcpy(kv.v.data() + off, &vx, 4);
        }
      }
    kv.kp.push_back(kv.k.data() + slot * blk);
    kv.vp.push_back(kv.v.data() + slot * blk);
  }
  kv.view = {kv.kp, kv.vp, bt, hd, bytes};
  return kv;
}

}  // namespace

TEST_CASE(
    "cpu attention: attend matches attend_scalar: block sizes, head dims, contexts, KV dtypes",
    "[cpu]") {
  struct shape {
    uint32_t bt, hd, tokens;
  };
  for (shape sh : {shape{16, 64, 100}, shape{16, 16, 40}, shape{8, 128, 33}, shape{12, 20, 50},
                   shape{5, 6, 17}, shape{16, 64, 1}, shape{32, 72, 300}}) {
    for (uint32_t bytes : {4u, 2u}) {
      INFO("block_tokens " << sh.bt << " head_dim " << sh.hd << " tokens " << sh.tokens
                           << " kv bytes " << bytes);
      auto kv = make_kv(sh.tokens, sh.bt, sh.hd, bytes, sh.tokens + sh.hd);
      // Queries of a tile: the last rows of a prefill (contexts ending at every position
      // near the end), a GQA group of 3 heads per row, and one that sees a single key.
      const uint32_t rows = std::min<uint32_t>(sh.tokens, 11);
      std::vector<uint32_t> ctxs;
      for (uint32_t r = 0; r < rows; ++r)
        for (int h = 0; h < 3; ++h)
          ctxs.push_back(sh.tokens - rows + 1 + r);
      ctxs.push_back(1);
      const size_t nq = ctxs.size();
      auto qf = random_floats(nq * sh.hd, 7, 1.5f);
      std::vector<float> out(nq * sh.hd, -9.0f), ref(nq * sh.hd, -9.0f);
      std::vector<attn_query> qs, qr;
      for (size_t i = 0; i < nq; ++i) {
        qs.push_back({qf.data() + i * sh.hd, out.data() + i * sh.hd, ctxs[i]});
        qr.push_back({qf.data() + i * sh.hd, ref.data() + i * sh.hd, ctxs[i]});
      }
      const float scale = 1.0f / std::sqrt(static_cast<float>(sh.hd));
      attend_scalar(kv.view, qr, scale);
      for (float_isa isa : {float_isa::avx2, float_isa::avx512}) {
        if (isa > best_float_isa()) continue;
        INFO("isa " << float_isa_name(isa));
        attn_scratch scratch;
        attend_on(isa, kv.view, qs, scale, scratch);
        for (size_t i = 0; i < out.size(); ++i)
          REQUIRE(out[i] == Approx(ref[i]).margin(2e-6));
        // Each query alone (a decode step; the scratch reused, smaller): bit for bit what
        // it got inside the tile.
        for (size_t i = 0; i < nq; ++i) {
          std::vector<float> alone(sh.hd);
          attn_query one[1] = {{qs[i].q, alone.data(), qs[i].ctx}};
          attend_on(isa, kv.view, one, scale, scratch);
          for (size_t d = 0; d < sh.hd; ++d)
            REQUIRE(alone[d] == out[i * sh.hd + d]);
        }
      }
    }
  }
}

TEST_CASE("cpu attention: attend with a single key returns that key's V", "[cpu]") {
  auto kv = make_kv(1, 16, 8, 4, 3);
  std::vector<float> q(8, 1.0f), out(8);
  attn_query qs[1] = {{q.data(), out.data(), 1}};
  attn_scratch scratch;
  attend(kv.view, qs, 0.5f, scratch);
  const float* v = reinterpret_cast<const float*>(kv.vp[0]);
  for (int d = 0; d < 8; ++d)
    CHECK(out[d] == v[d]);
}

TEST_CASE("cpu attention: softmax_fast matches softmax over the range attention scores take",
          "[cpu]") {
  for (size_t n : {size_t{1}, size_t{7}, size_t{8}, size_t{37}, size_t{2048}}) {
    auto x = random_floats(n, uint32_t(n), 60.0f);
    if (n > 2) x[1] = x[0] - 200;  // far below the max: exp underflows to (nearly) 0
    auto y = x;
    softmax(x.data(), n);
    softmax_fast(y.data(), n);
    double sum = 0;
    for (size_t i = 0; i < n; ++i) {
      INFO("n " << n << " i " << i);
      REQUIRE(y[i] == Approx(x[i]).epsilon(1e-6).margin(1e-30));
      sum += y[i];
    }
    CHECK(sum == Approx(1.0).epsilon(1e-5));
  }
  float big[3] = {1000, 1001, 0};  // large: must not overflow
  softmax_fast(big, 3);
  CHECK(big[0] == Approx(1 / (1 + std::exp(1.0))));
  CHECK(big[2] == Approx(0).margin(1e-30));
}

#if defined(__x86_64__)
namespace {
__attribute__((target("avx2,fma"))) void exp8_of(const float* x, float* y) {
  _mm256_storeu_ps(y, detail::exp8_avx2(_mm256_loadu_ps(x)));
}
// GCC 12's AVX-512 intrinsics seed results with `__Y = __Y` and warn wherever inlined (as
// engine/cpu/attention.cpp notes).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
__attribute__((target("avx512f"))) void exp16_of(const float* x, float* y) {
  _mm512_storeu_ps(y, detail::exp16_avx512(_mm512_loadu_ps(x)));
}
#pragma GCC diagnostic pop
}  // namespace

TEST_CASE("cpu attention: exp16_avx512 gives exp8_avx2's values bit for bit", "[cpu]") {
  // Attention's AVX-512 softmax takes exp16_avx512; the AVX2 one and SwiGLU exp8_avx2.
  if (best_float_isa() < float_isa::avx512) TM_SKIP("this CPU has no AVX-512");
  std::vector<float> x = random_floats(4096, 5, 100.0f);
  const float special[] = {0.0f,
                           -0.0f,
                           -87.2f,
                           -87.4f,
                           88.3f,
                           88.4f,
                           -1e30f,
                           1e30f,
                           1e-30f,
                           std::numeric_limits<float>::quiet_NaN(),
                           -std::numeric_limits<float>::infinity(),
                           std::numeric_limits<float>::infinity()};
  x.insert(x.end(), std::begin(special), std::end(special));
  x.resize((x.size() + 15) / 16 * 16, 1.0f);
  size_t differ = 0;
  for (size_t i = 0; i < x.size(); i += 16) {
    float a[16], b[16];
    exp8_of(x.data() + i, a);
    exp8_of(x.data() + i + 8, a + 8);
    exp16_of(x.data() + i, b);
    differ += std::memcmp(a, b, sizeof a) != 0;
  }
  CHECK(differ == 0);
}
#endif
