// Device figures for bench-engine: copy bandwidth of device memory and cuBLAS GEMM
// throughput, measured with CUDA events on the device itself.
#include <fmt/format.h>

#include <algorithm>
#include <stdexcept>

#include "gpu/cuda_backend.hpp"
#include "gpu/cuda_util.hpp"

namespace tokenmill {

namespace {

void select(int device) {
  std::string why;
  int n = gpu::device_count(why);
  if (n == 0) throw std::runtime_error("no CUDA device: " + why);
  if (device < 0 || device >= n)
    throw std::runtime_error(fmt::format("CUDA device {} does not exist ({} present)", device, n));
  TM_CUDA(cudaSetDevice(device));
}

}  // namespace

cuda_device_probe probe_cuda_device(int device, size_t bytes) {
  select(device);
  cuda_device_probe p;
  cudaDeviceProp prop{};
  TM_CUDA(cudaGetDeviceProperties(&prop, device));
  p.name = prop.name;
  p.memory_gb = static_cast<double>(prop.totalGlobalMem) / 1e9;
  bytes = std::max<size_t>(bytes / 2 / 256 * 256, 1 << 20);
  gpu::device_buffer a(bytes), b(bytes);
  gpu::stream s;
  gpu::event start, stop;
  TM_CUDA(cudaMemcpyAsync(b.get(), a.get(), bytes, cudaMemcpyDeviceToDevice, s.get()));  // warm
  float best_ms = 0;
  for (int run = 0; run < 10; ++run) {
    start.record(s.get());
    TM_CUDA(cudaMemcpyAsync(b.get(), a.get(), bytes, cudaMemcpyDeviceToDevice, s.get()));
    stop.record(s.get());
    stop.synchronize();
    float ms = stop.elapsed_ms_since(start);
    if (run == 0 || ms < best_ms) best_ms = ms;
  }
  // A copy reads and writes every byte: that is the traffic the roofline compares with.
  p.copy_bytes_per_s = 2.0 * static_cast<double>(bytes) / (best_ms / 1e3);
  return p;
}

double cuda_gemm_flops_per_s(int device, const std::string& dtype, uint32_t m, uint32_t n,
                             uint32_t k) {
  select(device);
  gpu::elem t =
      dtype == "f32"   ? gpu::elem::f32
      : dtype == "f16" ? gpu::elem::f16
      : dtype == "bf16"
          ? gpu::elem::bf16
          : throw std::invalid_argument("GEMM dtype must be bf16, f16 or f32, not '" + dtype + "'");
  gpu::device_buffer w(size_t{n} * k * gpu::elem_bytes(t)), x(size_t{m} * k * gpu::elem_bytes(t)),
      y(size_t{m} * n * sizeof(float));
  gpu::stream s;
  gpu::blas b(s.get(), false);
  gpu::event start, stop;
  b.linear(w.get(), x.get(), t, m, n, k, y.as<float>(), n);  // warm-up, picks the algorithm
  float best_ms = 0;
  for (int run = 0; run < 10; ++run) {
    start.record(s.get());
    b.linear(w.get(), x.get(), t, m, n, k, y.as<float>(), n);
    stop.record(s.get());
    stop.synchronize();
    float ms = stop.elapsed_ms_since(start);
    if (run == 0 || ms < best_ms) best_ms = ms;
  }
  return 2.0 * m * n * static_cast<double>(k) / (best_ms / 1e3);
}

}  // namespace tokenmill
