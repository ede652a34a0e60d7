#include "common/pool_memory.hpp"

#include <sys/mman.h>

#include <cstdlib>
#include <cstring>
#include <new>

namespace tokenmill {

std::string_view memory_kind_name(memory_kind k) {
  return k == memory_kind::cuda ? "cuda" : "host";
}

std::unique_ptr<pool_memory> pool_memory::make_host_staging(size_t bytes) const {
  return make_host_memory(bytes);
}

void host_memory_view::copy_out(size_t offset, std::byte* dst, size_t n) const {
  if (n != 0) std::memcpy(dst, memory_.data() + offset, n);
}

void host_memory_view::copy_in(size_t offset, const std::byte* src, size_t n) {
  if (n != 0) std::memcpy(memory_.data() + offset, src, n);
}

namespace {

class host_memory final : public pool_memory {
 public:
  /// An anonymous private mapping: zero-filled by the kernel and backed page by page as
  /// the pool's blocks are first written, so a large pool costs no start-up time and no
  /// resident memory until it is used. MAP_NORESERVE: the budget, not the commit limit,
  /// bounds it.
  explicit host_memory(size_t bytes) : size_(bytes) {
    mapped_ = (bytes + 4095) / 4096 * 4096;
    if (mapped_ == 0) mapped_ = 4096;
    void* p = ::mmap(nullptr, mapped_, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    data_ = static_cast<std::byte*>(p);
  }
  ~host_memory() override { ::munmap(data_, mapped_); }
  host_memory(const host_memory&) = delete;
  host_memory& operator=(const host_memory&) = delete;

  memory_kind kind() const override { return memory_kind::host; }
  std::span<std::byte> bytes() override { return {data_, size_}; }
  std::span<const std::byte> bytes() const override { return {data_, size_}; }
  void copy_out(size_t offset, std::byte* dst, size_t n) const override {
    if (n != 0) std::memcpy(dst, data_ + offset, n);
  }
  void copy_in(size_t offset, const std::byte* src, size_t n) override {
    if (n != 0) std::memcpy(data_ + offset, src, n);
  }

 private:
  std::byte* data_ = nullptr;
  size_t size_;
  size_t mapped_ = 0;  ///< bytes mapped: size_ rounded up to whole pages
};

}  // namespace

std::unique_ptr<pool_memory> make_host_memory(size_t bytes) {
  return std::make_unique<host_memory>(bytes);
}

}  // namespace tokenmill
