#include "transport/transfer_window.hpp"

#include <algorithm>

namespace tokenmill {

std::vector<transfer_segment> coalesce_blocks(std::span<const block_id> src,
                                              std::span<const block_id> dst, size_t block_bytes,
                                              uint64_t remote_base) {
  std::vector<transfer_segment> out;
  for (size_t i = 0; i < src.size();) {
    size_t run = 1;
    while (i + run < src.size() && src[i + run] == src[i] + run && dst[i + run] == dst[i] + run)
      ++run;
    out.push_back({size_t{src[i]} * block_bytes, run * block_bytes,
                   remote_base + uint64_t{dst[i]} * block_bytes});
    i += run;
  }
  return out;
}

std::vector<std::vector<transfer_segment>> staging_pieces(std::span<const transfer_segment> segs,
                                                          size_t block_bytes, size_t piece_bytes) {
  const size_t cap = std::max<size_t>(1, piece_bytes / block_bytes) * block_bytes;
  std::vector<std::vector<transfer_segment>> pieces;
  std::vector<transfer_segment> piece;
  size_t filled = 0;
  for (size_t i = 0; i < segs.size(); ++i) {
    const transfer_segment& s = segs[i];
    for (size_t copied = 0; copied < s.bytes;) {
      // Whole blocks: cap, filled and every segment are multiples of block_bytes.
      const size_t n = std::min(s.bytes - copied, cap - filled);
      piece.push_back({s.offset + copied, n, s.remote + copied});
      filled += n;
      copied += n;
      const bool last = i + 1 == segs.size() && copied == s.bytes;
      if (filled == cap || last) {
        pieces.push_back(std::move(piece));
        piece.clear();
        filled = 0;
      }
    }
  }
  return pieces;
}

bool window_admits(uint64_t in_flight_bytes, uint64_t next_bytes, uint64_t max_inflight_bytes) {
  return in_flight_bytes == 0 || in_flight_bytes + next_bytes <= max_inflight_bytes;
}

transfer_check check_transfer(transfer_clock::time_point now, transfer_clock::time_point deadline,
                              transfer_clock::time_point last_progress,
                              std::chrono::milliseconds stall_timeout, bool watch_stall) {
  if (deadline <= now) return {transfer_state::timed_out, transfer_clock::time_point::max()};
  if (!watch_stall) return {transfer_state::running, deadline};
  const auto at = last_progress + stall_timeout;
  if (at > now) return {transfer_state::running, std::min(deadline, at)};
  return {transfer_state::stalled, deadline};
}

int wait_timeout_ms(transfer_clock::time_point now, transfer_clock::time_point next,
                    std::chrono::milliseconds max_wait) {
  if (next - now >= max_wait) return static_cast<int>(max_wait.count());  // also time_point::max()
  auto wait = std::chrono::ceil<std::chrono::milliseconds>(next - now);
  return static_cast<int>(std::clamp<int64_t>(wait.count(), 0, max_wait.count()));
}

}  // namespace tokenmill
