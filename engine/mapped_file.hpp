#pragma once
/// A read-only memory mapping of a whole file (POSIX mmap), for the model readers, or a
/// private read-only copy of it in huge-page memory (the weights option, weights_memory.hpp).
#include <cstddef>
#include <memory>
#include <string>

#include "common/result.hpp"

namespace tokenmill {

/// A read-only memory mapping of a whole file, unmapped when the last owner lets go.
/// Shared by the GGUF and safetensors readers; loaded models keep it in `storage`.
class mapped_file {
 public:
  /// Maps `path`. With `huge_copy`, reads it instead into anonymous memory aligned to
  /// 2 MiB and advised MADV_HUGEPAGE (read-only once filled): same bytes, no page-cache
  /// mapping, fewer TLB misses when the weights are streamed; costs a copy at open and
  /// keeps the whole file resident. Errors (errc::invalid_model) name the file and the
  /// system error.
  static result<std::shared_ptr<const mapped_file>> open(const std::string& path,
                                                         bool huge_copy = false);

  mapped_file(const mapped_file&) = delete;
  mapped_file& operator=(const mapped_file&) = delete;
  ~mapped_file();

  /// First byte of the file (nullptr for an empty file).
  const std::byte* data() const { return data_; }
  /// Bytes in the file.
  size_t size() const { return size_; }
  /// True when the bytes are the huge-page copy rather than the file mapping.
  bool huge_copy() const { return huge_copy_; }

 private:
  mapped_file(const std::byte* data, size_t size, size_t region_bytes, bool huge_copy)
      : data_(data), size_(size), region_bytes_(region_bytes), huge_copy_(huge_copy) {}
  const std::byte* data_ = nullptr;
  size_t size_ = 0;
  size_t region_bytes_ = 0;  ///< bytes to unmap at data_: size_, or the 2 MiB-rounded copy
  bool huge_copy_ = false;
};

}  // namespace tokenmill
