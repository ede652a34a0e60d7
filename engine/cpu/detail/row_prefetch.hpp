#pragma once
/// Software prefetch for the decode GEMVs. Each weight row is read once per token, and a
/// row is too short (1.5-4 KiB) for the hardware prefetcher to ramp up before the next
/// group of rows starts, so a GEMV left to it reads weights at about half the machine's
/// bandwidth. The GEMVs take rows four at a time (a group: 4 * row_bytes contiguous
/// bytes, the groups following each other); each column step of a group prefetches the
/// same number of bytes from the group two ahead, so those lines are in cache when their rows
/// are multiplied. Measured on the 125m f16 preset at batch 1, 2 threads: weights read at
/// 48% of the measured memory bandwidth without it, ~95% with it. A prefetch past the
/// end of the rows is harmless: prefetches never fault. The lines go to L2 (prefetcht1),
/// not L1: an f16 GEMV over a 120 MiB weight read 13.5-14.8 GB/s that way against
/// 9.6-10.7 into L1 (one thread, 3 interleaved runs each; 2 threads 15.2-16.4 against
/// 12.0-14.1) on the 2-core EPYC under a load of 7; 2 or 4 groups ahead measured alike.
/// In the engine (125m f16, 2 threads, 6 interleaved rounds, load 8): batch 1 9.97 ->
/// 7.56 ms/step, batch 8 27.2 -> 20.9 ms/step (medians; faster in 6 of 6 each).
#include <cstddef>

namespace tokenmill::cpu::detail {

class row_prefetch {
 public:
  /// `group`: the first of the four rows being multiplied; `steps`: column steps per row.
  row_prefetch(const std::byte* group, size_t row_bytes, size_t steps)
      : at_(reinterpret_cast<const char*>(group) + 8 * row_bytes),
        step_bytes_(steps ? (4 * row_bytes + steps - 1) / steps : 0) {}

  /// Prefetches the next step's share of the group two ahead.
  inline void step() {
    for (size_t b = 0; b < step_bytes_; b += 64)
      __builtin_prefetch(at_ + b, 0, 2);
    at_ += step_bytes_;
  }

 private:
  const char* at_;
  size_t step_bytes_;
};

}  // namespace tokenmill::cpu::detail
