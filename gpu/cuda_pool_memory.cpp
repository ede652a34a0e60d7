// Device KV pool memory and its pinned host staging.
#include "gpu/cuda_pool_memory.hpp"

#include <cstring>

namespace tokenmill::gpu {

namespace {

size_t round_up(size_t n, size_t unit) {
  return unit == 0 ? n : (n + unit - 1) / unit * unit;
}

device_buffer allocate_on(int device, size_t bytes) {
  device_guard guard(device);
  return device_buffer(bytes);
}

}  // namespace

device_guard::device_guard(int device) {
  TM_CUDA(cudaGetDevice(&previous_));
  if (previous_ != device) TM_CUDA(cudaSetDevice(device));
}

device_guard::~device_guard() {
  // A destructor cannot report; the ordinal was valid when the guard was made.
  int now = -1;
  if (cudaGetDevice(&now) == cudaSuccess && now != previous_) (void)cudaSetDevice(previous_);
}

// ---- cuda_pool_memory ---------------------------------------------------------------------

cuda_pool_memory::cuda_pool_memory(int device, size_t bytes, size_t spare_bytes)
    : device_(device),
      bytes_(bytes),
      spare_bytes_(spare_bytes),
      buffer_(allocate_on(device,
                          spare_bytes == 0 ? bytes : round_up(bytes, spare_bytes) + spare_bytes)) {}

void cuda_pool_memory::copy_out(size_t offset, std::byte* dst, size_t n) const {
  if (n == 0) return;
  device_guard guard(device_);
  TM_CUDA(cudaMemcpy(dst, base() + offset, n, cudaMemcpyDeviceToHost));
}

void cuda_pool_memory::copy_in(size_t offset, const std::byte* src, size_t n) {
  if (n == 0) return;
  device_guard guard(device_);
  TM_CUDA(cudaMemcpy(base() + offset, src, n, cudaMemcpyHostToDevice));
  // From pageable memory cudaMemcpy may return before the DMA has landed, and the engine's
  // non-blocking stream does not wait for the legacy stream: finish the copy here, so the
  // bytes are there for any stream when this returns.
  TM_CUDA(cudaStreamSynchronize(nullptr));
}

std::unique_ptr<pool_memory> cuda_pool_memory::make_host_staging(size_t bytes) const {
  device_guard guard(device_);
  return std::make_unique<pinned_host_memory>(bytes);
}

std::optional<size_t> cuda_pool_memory::spare_offset(size_t spare_bytes) const {
  if (spare_bytes_ == 0 || spare_bytes != spare_bytes_) return std::nullopt;
  return round_up(bytes_, spare_bytes_);
}

// ---- pinned_host_memory -------------------------------------------------------------------

pinned_host_memory::pinned_host_memory(size_t bytes) : bytes_(bytes), buffer_(bytes) {}

void pinned_host_memory::copy_out(size_t offset, std::byte* dst, size_t n) const {
  if (n != 0) std::memcpy(dst, base() + offset, n);
}

void pinned_host_memory::copy_in(size_t offset, const std::byte* src, size_t n) {
  if (n != 0) std::memcpy(base() + offset, src, n);
}

}  // namespace tokenmill::gpu
