#pragma once
/// Where the weights of a loaded model live: the file's page-cache mapping (4 KiB pages),
/// or a private copy in anonymous memory advised for transparent huge pages (2 MiB), which
/// the batch-1 decode streams with fewer TLB misses. CAF-free policy, tested as functions.
#include <cstdint>
#include <string>
#include <string_view>

#include "common/result.hpp"

namespace tokenmill {

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
