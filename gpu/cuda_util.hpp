#pragma once
/// RAII for the CUDA runtime and cuBLAS (STYLE.md §2): device and pinned buffers, streams,
/// events, graphs, the cuBLAS handle. Errors are translated once (STYLE.md §5): every
/// failing call becomes a cuda_error that names the call, the file and line, and the
/// runtime's message. No raw CUDA handle leaves gpu/.
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <stdexcept>
#include <string>
#include <utility>

#include "gpu/types.cuh"

namespace tokenmill::gpu {

class cuda_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Throws cuda_error("file:line: expr: <cudaGetErrorName>: <cudaGetErrorString>") unless
/// `status` is cudaSuccess. Needs no device (the error-name functions are host-only).
void check_cuda(cudaError_t status, const char* expr, const char* file, int line);
/// Throws cuda_error("file:line: expr: <cublasGetStatusName>: <cublasGetStatusString>").
void check_cublas(cublasStatus_t status, const char* expr, const char* file, int line);

#define TM_CUDA(expr) ::tokenmill::gpu::check_cuda((expr), #expr, __FILE__, __LINE__)
#define TM_CUBLAS(expr) ::tokenmill::gpu::check_cublas((expr), #expr, __FILE__, __LINE__)
/// After a kernel launch: launch-configuration errors surface here, with file:line.
#define TM_CUDA_LAUNCH() \
  ::tokenmill::gpu::check_cuda(cudaGetLastError(), "kernel launch", __FILE__, __LINE__)

/// Number of usable CUDA devices; 0 with `why` set ("no CUDA driver", "no device", the
/// runtime's message) when there is none. Never throws.
int device_count(std::string& why);

/// Device memory (cudaMalloc), zeroed at allocation (complete before the constructor
/// returns, so any stream sees zeros). Not to be created during graph capture. Movable, not
/// copyable.
class device_buffer {
 public:
  device_buffer() = default;
  explicit device_buffer(size_t bytes);
  ~device_buffer();
  device_buffer(device_buffer&& o) noexcept
      : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  device_buffer& operator=(device_buffer&& o) noexcept;
  device_buffer(const device_buffer&) = delete;
  device_buffer& operator=(const device_buffer&) = delete;

  void* get() const { return p_; }
  template <class T>
  T* as() const {
    return static_cast<T*>(p_);
  }
  size_t size() const { return n_; }
  /// Grows to at least `bytes` (contents are not kept); no-op when already large enough.
  void reserve(size_t bytes);

 private:
  void* p_ = nullptr;
  size_t n_ = 0;
};

/// Page-locked host memory (cudaHostAlloc, portable), for staging and async copies.
class pinned_buffer {
 public:
  pinned_buffer() = default;
  explicit pinned_buffer(size_t bytes);
  ~pinned_buffer();
  pinned_buffer(pinned_buffer&& o) noexcept
      : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  pinned_buffer& operator=(pinned_buffer&& o) noexcept;
  pinned_buffer(const pinned_buffer&) = delete;
  pinned_buffer& operator=(const pinned_buffer&) = delete;

  void* get() const { return p_; }
  template <class T>
  T* as() const {
    return static_cast<T*>(p_);
  }
  size_t size() const { return n_; }

 private:
  void* p_ = nullptr;
  size_t n_ = 0;
};

/// A non-blocking stream.
class stream {
 public:
  stream();
  ~stream();
  stream(const stream&) = delete;
  stream& operator=(const stream&) = delete;
  cudaStream_t get() const { return s_; }
  void synchronize() const;

 private:
  cudaStream_t s_ = nullptr;
};

/// An event (timing enabled unless `timing` is false).
class event {
 public:
  explicit event(bool timing = true);
  ~event();
  event(const event&) = delete;
  event& operator=(const event&) = delete;
  cudaEvent_t get() const { return e_; }
  void record(cudaStream_t s);
  void synchronize() const;
  /// Milliseconds from `start` to this event (both recorded and complete).
  float elapsed_ms_since(const event& start) const;

 private:
  cudaEvent_t e_ = nullptr;
};

/// An instantiated CUDA graph, captured from a stream. Movable.
class graph_exec {
 public:
  graph_exec() = default;
  ~graph_exec();
  graph_exec(graph_exec&& o) noexcept
      : g_(std::exchange(o.g_, nullptr)), x_(std::exchange(o.x_, nullptr)) {}
  graph_exec& operator=(graph_exec&& o) noexcept;
  graph_exec(const graph_exec&) = delete;
  graph_exec& operator=(const graph_exec&) = delete;

  /// Begins capturing the work launched on `s` (cudaStreamCaptureModeThreadLocal).
  static void begin_capture(cudaStream_t s);
  /// Ends the capture on `s` and instantiates the graph.
  static graph_exec end_capture(cudaStream_t s);
  void launch(cudaStream_t s) const;
  explicit operator bool() const { return x_ != nullptr; }

 private:
  cudaGraph_t g_ = nullptr;
  cudaGraphExec_t x_ = nullptr;
};

/// A cuBLAS handle bound to one stream, with its own 32 MiB device workspace (cuBLAS's
/// advice for work captured in CUDA graphs: no allocation from its pool during capture).
/// `exact_f32`: FP32 GEMMs use CUBLAS_COMPUTE_32F_PEDANTIC (no TF32, no reduced-precision
/// reductions) for parity runs; otherwise the default math. 16-bit inputs always
/// accumulate in FP32.
class blas {
 public:
  blas(cudaStream_t s, bool exact_f32);
  ~blas();
  blas(const blas&) = delete;
  blas& operator=(const blas&) = delete;

  /// Row-major linear layer: y[i][j] = beta * y[i][j] + sum_k x[i][k] * w[j][k] for i < n,
  /// j < out; w is [out][in] and x is [n][in], both of type `t`; y is f32 with row stride
  /// `ldy` floats. beta = 1 fuses a residual add into the GEMM.
  void linear(const void* w, const void* x, elem t, uint32_t n, uint32_t out, uint32_t in, float* y,
              uint32_t ldy, float beta = 0.0f);

 private:
  device_buffer workspace_;
  cublasHandle_t h_ = nullptr;
  bool exact_f32_;
};

}  // namespace tokenmill::gpu
