// CPU kernel benchmark (STYLE.md §14): GFLOP/s of the linear layer on one thread for each
// weight dtype and batch size on every instruction set this CPU has (cpu::linear_on: avx2,
// avx512), and the tiled attention (cpu::attend) at a 2048-token f16 context. Times are the
// thread's CPU time (CLOCK_THREAD_CPUTIME_ID), so other processes on a shared machine slow
// the figures only through the caches, not through the time they take the core.
// Prints a table, or JSON with --json.
//   build/bench/tokenmill_bench_kernels [--rows R] [--cols C] [--json]
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/stats.hpp"
#include "engine/cpu/attention.hpp"
#include "engine/cpu/detail/float_avx512.hpp"
#include "engine/cpu/kernels.hpp"
#include "engine/cpu/quant.hpp"
#include "engine/tensor.hpp"

using namespace tokenmill;

namespace {

double thread_cpu_s() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

/// Median CPU seconds of `reps` runs of fn.
template <class F>
double median_s(int reps, F&& fn) {
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    const double t0 = thread_cpu_s();
    fn();
    t.push_back(thread_cpu_s() - t0);
  }
  return median(std::move(t));
}

}  // namespace

int main(int argc, char** argv) {
  size_t rows = 2048, cols = 768;
  bool json = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--rows" && i + 1 < argc) {
      rows = std::strtoull(argv[++i], nullptr, 10);
    } else if (a == "--cols" && i + 1 < argc) {
      cols = std::strtoull(argv[++i], nullptr, 10);
    } else if (a == "--json") {
      json = true;
    } else {
      std::fprintf(stderr, "usage: %s [--rows R] [--cols C] [--json]\n", argv[0]);
      return 2;
    }
  }
  cols = std::max<size_t>(32, cols / 32 * 32);  // q8_0 needs whole blocks
  nlohmann::json out = nlohmann::json::array();
  std::vector<cpu::float_isa> isas;
  for (auto isa : {cpu::float_isa::avx2, cpu::float_isa::avx512})
    if (isa <= cpu::best_float_isa()) isas.push_back(isa);
  if (!json) {
    std::printf("weight %zux%zu, one thread (CPU time); GFLOP/s of y = x W^T\n%-6s %6s", rows, cols,
                "dtype", "batch");
    for (auto isa : isas)
      std::printf(" %10s", std::string(cpu::float_isa_name(isa)).c_str());
    std::printf("   (linear() runs %s)\n",
                std::string(cpu::float_isa_name(cpu::best_float_isa())).c_str());
  }
  for (dtype t : {dtype::f32, dtype::f16, dtype::bf16, dtype::q8_0}) {
    std::vector<float> wf(rows * cols);
    for (size_t i = 0; i < wf.size(); ++i)
      wf[i] = static_cast<float>((i * 2654435761u) % 1000) / 1000.0f - 0.5f;
    std::vector<std::byte> wd(rows * row_bytes(t, cols));
    for (size_t r = 0; r < rows; ++r) {
      std::byte* dst = wd.data() + r * row_bytes(t, cols);
      const float* src = wf.data() + r * cols;
      if (t == dtype::f32)
        std::memcpy(dst, src, cols * 4);
      else if (t == dtype::f16)
        cpu::f32_to_f16_row(src, reinterpret_cast<uint16_t*>(dst), cols);
      else if (t == dtype::bf16)
        for (size_t k = 0; k < cols; ++k) {
          uint16_t h = cpu::f32_to_bf16(src[k]);
          std::memcpy(dst + 2 * k, &h, 2);
        }
      else
        cpu::quantize_row_q8_0(src, dst, cols);
    }
    tensor_view w{"w", t, rows, cols, wd.data()};
    for (size_t n : {size_t{1}, size_t{8}, size_t{32}, size_t{64}, size_t{128}, size_t{512}}) {
      std::vector<float> x(n * cols, 0.1f), y(n * rows), scratch;
      const double flop = 2.0 * double(n) * double(rows) * double(cols);
      const int reps = n >= 128 ? 5 : 9;
      nlohmann::json gflops = nlohmann::json::object();
      if (!json) std::printf("%-6s %6zu", std::string(dtype_name(t)).c_str(), n);
      for (auto isa : isas) {
        const double secs =
            median_s(reps, [&] { cpu::linear_on(isa, w, x.data(), n, y.data(), rows, 0, rows); });
        gflops[std::string(cpu::float_isa_name(isa))] = flop / secs / 1e9;
        if (!json) std::printf(" %10.1f", flop / secs / 1e9);
      }
      if (json)
        out.push_back({{"dtype", std::string(dtype_name(t))},
                       {"batch", n},
                       {"rows", rows},
                       {"cols", cols},
                       {"gflops", gflops}});
      else
        std::printf("\n");
    }
  }

  // Integer-dot formats: the f32 tiles (weights unpacked to f32, the float GEMM) against the
  // integer dot products with 8-bit activations (linear_int: the decode kernel below
  // int_tile_min_rows rows, the prefill tiles from there); int_prefill() picks per format.
  if (cpu::best_float_isa() == cpu::float_isa::avx512) {
    const size_t qcols = std::max<size_t>(256, cols / 256 * 256);
    if (!json)
      std::printf("weight %zux%zu, GFLOP/s: %10s %10s  (int tiles from %zu rows)\n", rows, qcols,
                  "f32 tiles", "int", cpu::int_tile_min_rows);
    for (dtype t : {dtype::q4_0, dtype::q4_k, dtype::q5_k, dtype::q6_k}) {
      std::vector<float> wf(rows * qcols);
      for (size_t i = 0; i < wf.size(); ++i)
        wf[i] = static_cast<float>((i * 2654435761u) % 1000) / 1000.0f - 0.5f;
      std::vector<std::byte> wd(rows * row_bytes(t, qcols));
      for (size_t r = 0; r < rows; ++r)
        cpu::quantize_row(t, wf.data() + r * qcols, wd.data() + r * row_bytes(t, qcols), qcols);
      tensor_view w{"w", t, rows, qcols, wd.data()};
      for (size_t n : {size_t{1}, size_t{8}, size_t{32}, size_t{64}, size_t{128}, size_t{512}}) {
        std::vector<float> x(n * qcols), y(n * rows);
        for (size_t i = 0; i < x.size(); ++i)
          x[i] = static_cast<float>((i * 40503u) % 1000) / 1000.0f - 0.5f;
        const double flop = 2.0 * double(n) * double(rows) * double(qcols);
        const int reps = n >= 128 ? 5 : n == 1 ? 41 : 9;  // batch 1: ~50 us a run, noisier
        const double f32s = median_s(reps, [&] {
          cpu::detail::gemm_packed_avx512(w, x.data(), n, y.data(), rows, 0, rows);
        });
        const double ints = median_s(reps, [&] {
          cpu::linear_int(cpu::best_quant_isa(), w, x.data(), n, y.data(), rows, 0, rows);
        });
        if (json)
          out.push_back(
              {{"dtype", std::string(dtype_name(t))},
               {"batch", n},
               {"rows", rows},
               {"cols", qcols},
               {"gflops", {{"f32_tiles", flop / f32s / 1e9}, {"int", flop / ints / 1e9}}}});
        else
          std::printf("%-6s %6zu %10.1f %10.1f\n", std::string(dtype_name(t)).c_str(), n,
                      flop / f32s / 1e9, flop / ints / 1e9);
      }
    }
  }

  // Attention: one KV head of a 2048-token f16 context (head_dim 64, 16-token blocks), a
  // prefill tile (10 rows x a GQA group of 3 heads) and a decode step (1 row x 3 heads).
  const uint32_t bt = 16, hd = 64, ctx = 2048, nb = ctx / bt;
  std::vector<uint16_t> kh(size_t{nb} * bt * hd), vh(kh.size());
  for (size_t i = 0; i < kh.size(); ++i) {
    kh[i] = cpu::f32_to_f16(static_cast<float>((i * 2654435761u) % 1000) / 500.0f - 1);
    vh[i] = cpu::f32_to_f16(static_cast<float>((i * 40503u) % 1000) / 500.0f - 1);
  }
  std::vector<const std::byte*> kp(nb), vp(nb);
  for (uint32_t b = 0; b < nb; ++b) {
    kp[b] = reinterpret_cast<const std::byte*>(kh.data() + size_t{b} * bt * hd);
    vp[b] = reinterpret_cast<const std::byte*>(vh.data() + size_t{b} * bt * hd);
  }
  const cpu::kv_head_blocks kv{kp, vp, bt, hd, 2};
  std::vector<float> q(30 * hd, 0.05f), o(30 * hd);
  cpu::attn_scratch scratch;
  for (uint32_t tile_rows : {10u, 1u}) {
    std::vector<cpu::attn_query> qs;
    for (uint32_t i = 0; i < tile_rows * 3; ++i)
      qs.push_back({q.data() + i * hd, o.data() + i * hd, ctx - tile_rows + 1 + i / 3});
    const double flop = 2.0 * 2.0 * double(qs.size()) * ctx * hd;  // q.K and p.V
    if (!json) std::printf("attention, %2zu queries x %u keys (f16 KV):", qs.size(), ctx);
    nlohmann::json gflops = nlohmann::json::object();
    for (auto isa : isas) {
      const double secs = median_s(9, [&] { cpu::attend_on(isa, kv, qs, 0.125f, scratch); });
      gflops[std::string(cpu::float_isa_name(isa))] = flop / secs / 1e9;
      if (!json)
        std::printf(" %s %6.1f GFLOP/s", std::string(cpu::float_isa_name(isa)).c_str(),
                    flop / secs / 1e9);
    }
    if (json)
      out.push_back({{"attention_queries", qs.size()}, {"context", ctx}, {"gflops", gflops}});
    else
      std::printf("\n");
  }
  if (json) std::printf("%s\n", out.dump().c_str());
  return 0;
}
