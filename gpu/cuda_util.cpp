// RAII wrappers of the CUDA runtime and cuBLAS, and the one place their status codes
// become exceptions (STYLE.md §5, §7).
#include "gpu/cuda_util.hpp"

#include <dlfcn.h>

#include <cstring>
#include <string>
#include <type_traits>

namespace tokenmill::gpu {

namespace {

std::string where(const char* expr, const char* file, int line) {
  return std::string(file) + ":" + std::to_string(line) + ": " + expr + ": ";
}

/// Bytes of the workspace each blas handle owns: cuBLAS's documented recommendation for
/// Hopper is 32 MiB, and more than the 4 MiB it asks for on older GPUs.
constexpr size_t blas_workspace_bytes = size_t{32} << 20;

/// cuBLAS, opened with dlopen when the first handle is made instead of linked: linking it
/// loads libcublasLt into every tokenmill process, whose loading maps ~60 MB of its code
/// and touches ~80 MB of its zero-initialised data, 140 MB resident in a process that only
/// serves the cpu or sim engine. The seven functions gpu/ calls.
struct cublas_api {
  decltype(&cublasCreate_v2) create = nullptr;
  decltype(&cublasDestroy_v2) destroy = nullptr;
  decltype(&cublasSetStream_v2) set_stream = nullptr;
  decltype(&cublasSetWorkspace_v2) set_workspace = nullptr;
  // The C function; C++ sees an inline overload too (a cudaDataType compute type).
  cublasStatus_t (*gemm_ex)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
                            const void*, const void*, cudaDataType, int, const void*, cudaDataType,
                            int, const void*, void*, cudaDataType, int, cublasComputeType_t,
                            cublasGemmAlgo_t) = nullptr;
  decltype(&cublasGetStatusName) status_name = nullptr;
  decltype(&cublasGetStatusString) status_string = nullptr;
};

cublas_api open_cublas() {
  // The library's soname (found as the linker would: LD_LIBRARY_PATH, ld.so.cache, the
  // executable's RUNPATH), else where the toolkit it was built with keeps it.
  std::string why;
  void* lib = nullptr;
  for (const char* name :
       {TOKENMILL_CUBLAS_SONAME, TOKENMILL_CUBLAS_DIR "/" TOKENMILL_CUBLAS_SONAME}) {
    lib = ::dlopen(name, RTLD_NOW | RTLD_LOCAL);
    if (lib) break;
    const char* err = ::dlerror();
    why += std::string(why.empty() ? "" : "; ") + (err ? err : name);
  }
  if (!lib) throw cuda_error("cannot load cuBLAS: " + why);
  cublas_api api;  // the library stays loaded for the rest of the process
  auto get = [&](auto& fn, const char* symbol) {
    fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(::dlsym(lib, symbol));
    if (!fn) throw cuda_error(std::string("cuBLAS (" TOKENMILL_CUBLAS_SONAME ") has no ") + symbol);
  };
  get(api.create, "cublasCreate_v2");
  get(api.destroy, "cublasDestroy_v2");
  get(api.set_stream, "cublasSetStream_v2");
  get(api.set_workspace, "cublasSetWorkspace_v2");
  get(api.gemm_ex, "cublasGemmEx");
  get(api.status_name, "cublasGetStatusName");
  get(api.status_string, "cublasGetStatusString");
  return api;
}

/// The loaded functions; throws cuda_error saying why cuBLAS cannot be loaded (tried again
/// on the next call).
const cublas_api& cublas() {
  static const cublas_api api = open_cublas();
  return api;
}

}  // namespace

void check_cuda(cudaError_t status, const char* expr, const char* file, int line) {
  if (status == cudaSuccess) return;
  throw cuda_error(where(expr, file, line) + cudaGetErrorName(status) + ": " +
                   cudaGetErrorString(status));
}

void check_cublas(cublasStatus_t status, const char* expr, const char* file, int line) {
  if (status == CUBLAS_STATUS_SUCCESS) return;
  // A status other than success came from cuBLAS, so it is loaded.
  throw cuda_error(where(expr, file, line) + cublas().status_name(status) + ": " +
                   cublas().status_string(status));
}

int device_count(std::string& why) {
  try {
    int n = 0;
    cudaError_t st = cudaGetDeviceCount(&n);
    if (st != cudaSuccess) {
      // cudaErrorInsufficientDriver (no driver or too old), cudaErrorNoDevice, ...: the
      // runtime's own words say which.
      why = std::string(cudaGetErrorName(st)) + ": " + cudaGetErrorString(st);
      (void)cudaGetLastError();  // leave no error behind for the next TM_CUDA_LAUNCH()
      return 0;
    }
    if (n <= 0) {
      why = "the CUDA runtime reports no device";
      return 0;
    }
    return n;
  } catch (...) {  // std::bad_alloc from the strings: still no throw
    return 0;
  }
}

// ---- device_buffer ------------------------------------------------------------------------

device_buffer::device_buffer(size_t bytes) {
  if (bytes == 0) return;
  TM_CUDA(cudaMalloc(&p_, bytes));
  n_ = bytes;
  try {
    // cudaMemset is asynchronous and runs on the default stream, which work on our
    // non-blocking streams does not wait for: finish it here, so "zeroed" holds for them.
    TM_CUDA(cudaMemset(p_, 0, bytes));
    TM_CUDA(cudaStreamSynchronize(nullptr));
  } catch (...) {
    (void)cudaFree(p_);
    throw;
  }
}

device_buffer::~device_buffer() {
  if (p_) (void)cudaFree(p_);  // a destructor cannot report; the pointer was ours
}

device_buffer& device_buffer::operator=(device_buffer&& o) noexcept {
  if (this != &o) {
    if (p_) (void)cudaFree(p_);
    p_ = std::exchange(o.p_, nullptr);
    n_ = std::exchange(o.n_, 0);
  }
  return *this;
}

void device_buffer::reserve(size_t bytes) {
  if (bytes <= n_) return;
  // Free first: the contents are not kept, and the old and new buffers need not fit
  // together. If the allocation throws, this buffer is left empty (still valid).
  *this = device_buffer();
  *this = device_buffer(bytes);
}

// ---- pinned_buffer ------------------------------------------------------------------------

pinned_buffer::pinned_buffer(size_t bytes) {
  if (bytes == 0) return;
  TM_CUDA(cudaHostAlloc(&p_, bytes, cudaHostAllocPortable));
  n_ = bytes;
  std::memset(p_, 0, bytes);
}

pinned_buffer::~pinned_buffer() {
  if (p_) (void)cudaFreeHost(p_);
}

pinned_buffer& pinned_buffer::operator=(pinned_buffer&& o) noexcept {
  if (this != &o) {
    if (p_) (void)cudaFreeHost(p_);
    p_ = std::exchange(o.p_, nullptr);
    n_ = std::exchange(o.n_, 0);
  }
  return *this;
}

// ---- stream, event ------------------------------------------------------------------------

stream::stream() {
  TM_CUDA(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking));
}

stream::~stream() {
  if (s_) (void)cudaStreamDestroy(s_);
}

void stream::synchronize() const {
  TM_CUDA(cudaStreamSynchronize(s_));
}

event::event(bool timing) {
  TM_CUDA(cudaEventCreateWithFlags(&e_, timing ? cudaEventDefault : cudaEventDisableTiming));
}

event::~event() {
  if (e_) (void)cudaEventDestroy(e_);
}

void event::record(cudaStream_t s) {
  TM_CUDA(cudaEventRecord(e_, s));
}

void event::synchronize() const {
  TM_CUDA(cudaEventSynchronize(e_));
}

float event::elapsed_ms_since(const event& start) const {
  float ms = 0;
  TM_CUDA(cudaEventElapsedTime(&ms, start.e_, e_));
  return ms;
}

// ---- graph_exec ---------------------------------------------------------------------------

graph_exec::~graph_exec() {
  if (x_) (void)cudaGraphExecDestroy(x_);
  if (g_) (void)cudaGraphDestroy(g_);
}

graph_exec& graph_exec::operator=(graph_exec&& o) noexcept {
  if (this != &o) {
    if (x_) (void)cudaGraphExecDestroy(x_);
    if (g_) (void)cudaGraphDestroy(g_);
    g_ = std::exchange(o.g_, nullptr);
    x_ = std::exchange(o.x_, nullptr);
  }
  return *this;
}

void graph_exec::begin_capture(cudaStream_t s) {
  TM_CUDA(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
}

graph_exec graph_exec::end_capture(cudaStream_t s) {
  graph_exec out;
  // On failure (an invalidated capture) the runtime may still hand back a graph: own it
  // first so that it is destroyed with `out`.
  TM_CUDA(cudaStreamEndCapture(s, &out.g_));
  TM_CUDA(cudaGraphInstantiate(&out.x_, out.g_, 0));
  return out;
}

void graph_exec::launch(cudaStream_t s) const {
  TM_CUDA(cudaGraphLaunch(x_, s));
}

// ---- blas ---------------------------------------------------------------------------------

blas::blas(cudaStream_t s, bool exact_f32)
    : workspace_(blas_workspace_bytes), exact_f32_(exact_f32) {
  const cublas_api& api = cublas();
  TM_CUBLAS(api.create(&h_));
  try {
    // The stream first: cublasSetStream resets the workspace to cuBLAS's own pool.
    TM_CUBLAS(api.set_stream(h_, s));
    // A preallocated workspace is what cuBLAS recommends for graph capture (its pool
    // would otherwise allocate on first use of a stream, which capture forbids).
    TM_CUBLAS(api.set_workspace(h_, workspace_.get(), workspace_.size()));
  } catch (...) {
    (void)api.destroy(h_);
    throw;
  }
}

blas::~blas() {
  if (h_) (void)cublas().destroy(h_);
}

void blas::linear(const void* w, const void* x, elem t, uint32_t n, uint32_t out, uint32_t in,
                  float* y, uint32_t ldy, float beta) {
  if (n == 0 || out == 0) return;
  const cudaDataType_t type = t == elem::f32   ? CUDA_R_32F
                              : t == elem::f16 ? CUDA_R_16F
                                               : CUDA_R_16BF;
  const cublasComputeType_t compute =
      t == elem::f32 && exact_f32_ ? CUBLAS_COMPUTE_32F_PEDANTIC : CUBLAS_COMPUTE_32F;
  const float alpha = 1.0f;
  // cuBLAS is column-major. Read column-major, row-major W[out][in] is the in x out matrix
  // W^T, which CUBLAS_OP_T turns back into W (out x in); row-major x[n][in] is the in x n
  // matrix x^T; so C = W · x^T is out x n column-major with ldc = ldy: row-major y[n][ldy].
  // k = 0 leaves y = beta * y; leading dimensions must still be >= 1.
  const int ld_in = in > 0 ? static_cast<int>(in) : 1;
  TM_CUBLAS(cublas().gemm_ex(h_, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(out),
                             static_cast<int>(n), static_cast<int>(in), &alpha, w, type, ld_in, x,
                             type, ld_in, &beta, y, CUDA_R_32F, static_cast<int>(ldy), compute,
                             CUBLAS_GEMM_DEFAULT));
}

}  // namespace tokenmill::gpu
