#pragma once
/// Monotonic time in nanoseconds. All timing metadata uses this clock; on Linux
/// CLOCK_MONOTONIC is shared by every process on a host, so stamps from a client and a
/// server on the same host land on one timeline without offsets.
#include <chrono>
#include <cstdint>

namespace tokenmill {

/// Nanoseconds on the host's steady clock.
inline int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace tokenmill
