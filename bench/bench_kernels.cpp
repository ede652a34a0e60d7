// Linear-layer kernel benchmark (STYLE.md §14): GFLOP/s of cpu::linear on one thread for
// each weight dtype and batch size, as the engine calls it, next to the same product done
// in row chunks small enough for the on-the-fly GEMV path (what linear() did before the
// packed path existed). Prints a table, or JSON with --json.
//   build/bench/tokenmill_bench_kernels [--rows R] [--cols C] [--json]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/stats.hpp"
#include "engine/cpu/kernels.hpp"
#include "engine/tensor.hpp"

using namespace tokenmill;

namespace {

/// Median seconds of `reps` runs of fn.
template <class F>
double median_s(int reps, F&& fn) {
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    fn();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
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
  if (!json)
    std::printf("weight %zux%zu, one thread; GFLOP/s of y = x W^T\n%-6s %6s %10s %16s\n", rows,
                cols, "dtype", "batch", "linear", "on-the-fly GEMV");
  const size_t chunk = cpu::gemm_packed_min_rows - 1;
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
      double t_linear =
          median_s(reps, [&] { cpu::linear(w, x.data(), n, y.data(), rows, 0, rows, scratch); });
      double t_gemv = median_s(reps, [&] {
        for (size_t i = 0; i < n; i += chunk)
          cpu::linear(w, x.data() + i * cols, std::min(chunk, n - i), y.data() + i * rows, rows, 0,
                      rows, scratch);
      });
      if (json)
        out.push_back({{"dtype", std::string(dtype_name(t))},
                       {"batch", n},
                       {"rows", rows},
                       {"cols", cols},
                       {"linear_gflops", flop / t_linear / 1e9},
                       {"gemv_gflops", flop / t_gemv / 1e9}});
      else
        std::printf("%-6s %6zu %10.1f %16.1f\n", std::string(dtype_name(t)).c_str(), n,
                    flop / t_linear / 1e9, flop / t_gemv / 1e9);
    }
  }
  if (json) std::printf("%s\n", out.dump().c_str());
  return 0;
}
