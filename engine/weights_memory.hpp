#pragma once
/// Where the weights of a loaded model live: the file's page-cache mapping (4 KiB pages),
/// or a private copy in anonymous memory advised for transparent huge pages (2 MiB), which
/// the batch-1 decode streams with fewer TLB misses. CAF-free policy, tested as functions.
#include <cstddef>
#include <cstdint>
#include <future>
#include <memory>
#include <string>
#include <string_view>
#include <thread>

#include "common/result.hpp"
#include "engine/mapped_file.hpp"

namespace tokenmill {

/// A private copy of a file's bytes in anonymous memory aligned to 2 MiB and advised
/// MADV_HUGEPAGE (so that every 2 MiB can be one huge page), read-only once filled. A
/// thread of its own fills it (pread of the file; a copy from the mapping if reading fails), so
/// that loading, and `serve`'s ready time, do not wait for it: readers call wait() first.
/// (Fresh memory is slow to touch on some VMs: 0.5-1.7 s for 250 MB here, against 0.08 s
/// for memory used before.)
class huge_copy {
 public:
  /// Starts copying file `path`, which `map` maps (and keeps mapped until the copy is
  /// done; null for an empty file). Once filled, the mapping holds no pages of this
  /// process (mapped_file::release_pages), even where reading failed and the copy came
  /// from the mapping: the copy is what the process keeps resident.
  /// Errors (errc::invalid_model) name the file and the system error of the allocation.
  static result<std::shared_ptr<const huge_copy>> start(const std::string& path,
                                                        std::shared_ptr<const mapped_file> map);
  huge_copy(const huge_copy&) = delete;
  huge_copy& operator=(const huge_copy&) = delete;
  /// Waits for the fill, then unmaps.
  ~huge_copy();

  /// First byte of the copy (its contents valid after wait()).
  const std::byte* data() const { return data_; }
  size_t size() const { return size_; }
  /// Blocks until the copy holds the file's bytes.
  void wait() const { filled_.wait(); }

 private:
  huge_copy(std::byte* data, size_t size, size_t region)
      : data_(data), size_(size), region_(region) {}
  std::byte* data_;
  size_t size_;
  size_t region_;  ///< bytes mapped at data_ (size_ rounded up to 2 MiB)
  std::shared_future<void> filled_;
  std::thread filler_;
};

/// `--weights-hugepages` / the load option: copy the weights into huge-page memory or not.
enum class weights_hugepages {
  off,   ///< map the file (4 KiB pages; resident only where touched; no copy at load)
  on,    ///< copy into anonymous memory with MADV_HUGEPAGE, 2 MiB aligned
  auto_  ///< on when the kernel's THP mode is "always" or "madvise", else off
};

/// Parses "on", "off" or "auto". Errors (errc::invalid_request) name `what` (the option or
/// key) and the value: "--weights-hugepages: 'yes' is not one of on, off, auto".
result<weights_hugepages> parse_weights_hugepages(std::string_view text, std::string_view what);

/// The option's name as parse_weights_hugepages reads it.
std::string_view to_string(weights_hugepages mode);

/// Whether `mode` copies the weights, given the text of
/// /sys/kernel/mm/transparent_hugepage/enabled ("always [madvise] never"; the bracketed
/// word is the active mode; empty when the file is missing, which means no THP).
bool use_weights_hugepages(weights_hugepages mode, std::string_view thp_enabled);

/// The text of /sys/kernel/mm/transparent_hugepage/enabled, or "" when it cannot be read.
std::string read_thp_enabled();

/// Bytes of this process's memory that the kernel backs with anonymous huge pages
/// (AnonHugePages of /proc/self/smaps_rollup): what a huge-page copy actually got. 0 when
/// unknown.
uint64_t anon_huge_bytes();

}  // namespace tokenmill
