#pragma once
/// A read-only memory mapping of a whole file (POSIX mmap), for the model readers.
#include <cstddef>
#include <memory>
#include <string>

#include "common/result.hpp"

namespace tokenmill {

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

 private:
  mapped_file(const std::byte* data, size_t size) : data_(data), size_(size) {}
  const std::byte* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace tokenmill
