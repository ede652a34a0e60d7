#pragma once
/// KV pool memory on a CUDA device (DESIGN.md §4), and the page-locked host memory that
/// transports stage it through. Internal to gpu/: the rest of tokenmill sees only
/// pool_memory (common/pool_memory.hpp), through engine::allocate_kv_memory.
#include <cstddef>
#include <memory>
#include <optional>
#include <span>

#include "common/pool_memory.hpp"
#include "gpu/cuda_util.hpp"

namespace tokenmill::gpu {

/// Device memory of `bytes` bytes on one device (cudaMalloc'd, zeroed), optionally followed
/// by a private spare block of `spare_bytes` that bytes() does not include: the CUDA engine
/// points the padding rows of its bucketed decode graphs at it, so that padding never writes
/// into a block the pool hands out.
class cuda_pool_memory final : public pool_memory {
 public:
  /// Allocates on `device`; throws cuda_error when the device cannot.
  cuda_pool_memory(int device, size_t bytes, size_t spare_bytes = 0);

  memory_kind kind() const override { return memory_kind::cuda; }
  std::span<std::byte> bytes() override { return {base(), bytes_}; }
  std::span<const std::byte> bytes() const override { return {base(), bytes_}; }
  int device() const override { return device_; }
  /// Synchronous cudaMemcpy (complete when it returns), on this memory's device.
  void copy_out(size_t offset, std::byte* dst, size_t n) const override;
  void copy_in(size_t offset, const std::byte* src, size_t n) override;
  /// Page-locked host memory (cudaHostAlloc), zeroed, of kind host.
  std::unique_ptr<pool_memory> make_host_staging(size_t bytes) const override;

  /// Byte offset from bytes().data() of the spare block (a multiple of `spare_bytes`, at or
  /// after the end of bytes()), or nothing when this memory was made without one or with a
  /// spare of another size.
  std::optional<size_t> spare_offset(size_t spare_bytes) const;

 private:
  std::byte* base() const { return static_cast<std::byte*>(buffer_.get()); }

  int device_;
  size_t bytes_;
  size_t spare_bytes_;
  device_buffer buffer_;
};

/// Page-locked host memory as a pool_memory of kind host (cudaHostAlloc, zeroed).
class pinned_host_memory final : public pool_memory {
 public:
  explicit pinned_host_memory(size_t bytes);

  memory_kind kind() const override { return memory_kind::host; }
  std::span<std::byte> bytes() override { return {base(), bytes_}; }
  std::span<const std::byte> bytes() const override { return {base(), bytes_}; }
  void copy_out(size_t offset, std::byte* dst, size_t n) const override;
  void copy_in(size_t offset, const std::byte* src, size_t n) override;

 private:
  std::byte* base() const { return static_cast<std::byte*>(buffer_.get()); }

  size_t bytes_;
  pinned_buffer buffer_;
};

/// Makes `device` current for the calling thread for the guard's lifetime, then restores
/// the previous one (memory objects are used from threads that drive other devices).
class device_guard {
 public:
  explicit device_guard(int device);
  ~device_guard();
  device_guard(const device_guard&) = delete;
  device_guard& operator=(const device_guard&) = delete;

 private:
  int previous_ = -1;
};

}  // namespace tokenmill::gpu
