#pragma once
/// Where a KV pool's bytes live (DESIGN.md §4). Host pools are plain memory that anything
/// may read and write. A device pool (the CUDA engine's) is an address range the host must
/// not dereference: transports and checksums reach it only through copy_out/copy_in, or
/// register it directly with a transport that understands its memory kind. Engines create
/// pools (engine::make_pool); workers and transports only see this interface.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string_view>

namespace tokenmill {

enum class memory_kind : uint8_t { host, cuda };

/// "host" or "cuda".
std::string_view memory_kind_name(memory_kind k);

class pool_memory {
 public:
  virtual ~pool_memory() = default;
  virtual memory_kind kind() const = 0;
  /// The address range. Host memory: dereferenceable. Device memory: device addresses.
  virtual std::span<std::byte> bytes() = 0;
  virtual std::span<const std::byte> bytes() const = 0;
  /// The CUDA device ordinal of device memory; -1 for host memory.
  virtual int device() const { return -1; }
  /// Copies [offset, offset + n) into host memory `dst`; returns when the bytes are there.
  /// The caller keeps the range inside bytes().
  virtual void copy_out(size_t offset, std::byte* dst, size_t n) const = 0;
  /// Copies host `src` into [offset, offset + n); returns when the bytes are there.
  virtual void copy_in(size_t offset, const std::byte* src, size_t n) = 0;
  /// Host memory of `bytes` bytes for a transport that cannot reach this memory directly
  /// and stages through the host. For device memory it is page-locked, so that copies
  /// between the two run at full speed.
  virtual std::unique_ptr<pool_memory> make_host_staging(size_t bytes) const;
};

/// Host memory: page-aligned (4096), zeroed, `bytes` rounded up to whole pages for the
/// allocation (bytes() is exactly `bytes` long). Throws std::bad_alloc when it cannot.
std::unique_ptr<pool_memory> make_host_memory(size_t bytes);

/// Host memory owned by someone else (a test's buffer, a benchmark's mapping): a view,
/// valid while the memory is.
class host_memory_view final : public pool_memory {
 public:
  explicit host_memory_view(std::span<std::byte> memory) : memory_(memory) {}
  memory_kind kind() const override { return memory_kind::host; }
  std::span<std::byte> bytes() override { return memory_; }
  std::span<const std::byte> bytes() const override { return memory_; }
  void copy_out(size_t offset, std::byte* dst, size_t n) const override;
  void copy_in(size_t offset, const std::byte* src, size_t n) override;

 private:
  std::span<std::byte> memory_;
};

}  // namespace tokenmill
