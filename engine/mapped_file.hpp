#pragma once
/// A read-only memory mapping of a whole file (POSIX mmap), for the model readers.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "common/result.hpp"

namespace tokenmill {

/// Reads `size` bytes of `path` at `offset` into `dst` (pread: through the page cache, never
/// mapped into this process); false on any failure or a short file.
bool read_file_bytes(const std::string& path, uint64_t offset, std::byte* dst, size_t size);

/// A read-only memory mapping of a whole file, unmapped when the last owner lets go.
/// Shared by the GGUF and safetensors readers; loaded models keep it in `storage`.
class mapped_file {
 public:
  /// Maps `path`. Errors (errc::invalid_model) name the file and the system error.
  static result<std::shared_ptr<const mapped_file>> open(const std::string& path);

  mapped_file(const mapped_file&) = delete;
  mapped_file& operator=(const mapped_file&) = delete;
  ~mapped_file();

  /// First byte of the file (nullptr for an empty file).
  const std::byte* data() const { return data_; }
  /// Bytes in the file.
  size_t size() const { return size_; }
  /// Unmaps this process's pages of the whole mapping, which then counts nothing towards
  /// the process's RSS: the bytes stay in the page cache, and a later read maps them again
  /// (the mapping is private and read-only, so nothing is lost). For what loading touched
  /// (the header, on a kernel with large page-cache folios 2-4 MiB around each byte read)
  /// and for files whose bytes were copied elsewhere.
  void release_pages() const;

 private:
  mapped_file(const std::byte* data, size_t size) : data_(data), size_(size) {}
  const std::byte* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace tokenmill
