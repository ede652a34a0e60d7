// The CUDA backend of a build configured without nvcc: same declarations, no device code.
#include <stdexcept>

#include "gpu/cuda_backend.hpp"

namespace tokenmill {

bool cuda_backend_built() {
  return false;
}

int cuda_device_count(std::string& why) {
  why = "this build has no CUDA backend (nvcc was not found when it was configured)";
  return 0;
}

namespace {
[[noreturn]] void no_cuda() {
  throw std::runtime_error(
      "this build has no CUDA backend (nvcc was not found when it was configured; "
      "rebuild on a machine with the CUDA toolkit)");
}
}  // namespace

std::unique_ptr<engine> make_cuda_engine(std::shared_ptr<const loaded_model>,
                                         const cuda_engine_config&) {
  no_cuda();
}

cuda_device_probe probe_cuda_device(int, size_t) {
  no_cuda();
}

double cuda_gemm_flops_per_s(int, const std::string&, uint32_t, uint32_t, uint32_t) {
  no_cuda();
}

}  // namespace tokenmill
