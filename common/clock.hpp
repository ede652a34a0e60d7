#pragma once
/// Monotonic time in nanoseconds. All timing metadata uses this clock; on Linux
/// CLOCK_MONOTONIC is shared by every process on a host, so stamps from a client and a
/// server on the same host land on one timeline without offsets.
#include <chrono>
#include <cstdint>
#include <fstream>
#include <string>

namespace tokenmill {

/// Nanoseconds on the host's steady clock.
inline int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

/// Identity of this host's monotonic clock: the kernel's boot id. Processes with equal ids
/// (including those in other network namespaces) read the same CLOCK_MONOTONIC, so their
/// clock offset is exactly 0. Empty when unknown.
inline std::string host_clock_id() {
  std::ifstream in("/proc/sys/kernel/random/boot_id");
  std::string id;
  std::getline(in, id);
  return id;
}

}  // namespace tokenmill
