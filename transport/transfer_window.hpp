#pragma once
/// The decisions of a one-sided transfer engine, apart from UCX (STYLE.md §2): which byte
/// ranges one write puts, how a staged write is cut into pieces, when the next waiting
/// write may start (the in-flight window), and when a started write has stalled or timed
/// out. ucx_transport calls these from its progress and staging threads; tests call them
/// as plain functions.
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "common/ids.hpp"

namespace tokenmill {

/// A contiguous byte range of a write: `bytes` at `offset` into the local pool's range, put
/// to the peer's address `remote`.
struct transfer_segment {
  size_t offset = 0;  ///< bytes from the start of the local pool range
  size_t bytes = 0;
  uint64_t remote = 0;  ///< the peer's virtual address
  bool operator==(const transfer_segment&) const = default;
};

/// The segments of a write of blocks `src` (local) to blocks `dst` (peer's, whose pool
/// starts at `remote_base`): each run of ids consecutive in both becomes one segment, so
/// one put. `src` and `dst` have the same length.
std::vector<transfer_segment> coalesce_blocks(std::span<const block_id> src,
                                              std::span<const block_id> dst, size_t block_bytes,
                                              uint64_t remote_base);

/// The pieces a staged write is copied and put in: at most `piece_bytes` each, cut at whole
/// blocks (at least one block per piece), in order. Every segment is a whole number of
/// blocks. While the network reads one piece, the next is copied (double buffering).
std::vector<std::vector<transfer_segment>> staging_pieces(std::span<const transfer_segment> segs,
                                                          size_t block_bytes, size_t piece_bytes);

/// Whether the first waiting write, of `next_bytes`, may start with `in_flight_bytes` of
/// writes started and not completed: it fits `max_inflight_bytes`, or nothing is in flight
/// (a write larger than the window starts alone rather than never).
bool window_admits(uint64_t in_flight_bytes, uint64_t next_bytes, uint64_t max_inflight_bytes);

using transfer_clock = std::chrono::steady_clock;

/// What check_transfer() found.
enum class transfer_state {
  running,    ///< nothing to do yet
  timed_out,  ///< past its deadline: fail it with errc::timeout
  stalled,    ///< no progress for stall_timeout: report it once (it goes on)
};

/// The verdict on a started write at `now`, and when it next needs looking at.
struct transfer_check {
  transfer_state state = transfer_state::running;
  /// The deadline, or the stall check if sooner; time_point::max() once timed out.
  transfer_clock::time_point next = transfer_clock::time_point::max();
};

/// Checks a started write: timed out at `deadline` (counted from write(), so time queued
/// counts too); stalled when `watch_stall` (not yet reported, its endpoint connected) and
/// `last_progress` (start, puts issued, a put completed) is `stall_timeout` ago or more.
transfer_check check_transfer(transfer_clock::time_point now, transfer_clock::time_point deadline,
                              transfer_clock::time_point last_progress,
                              std::chrono::milliseconds stall_timeout, bool watch_stall);

/// Milliseconds to wait for events until `next`, within [0, max_wait]; rounded up, since
/// waking just before `next` would only spin until it.
int wait_timeout_ms(transfer_clock::time_point now, transfer_clock::time_point next,
                    std::chrono::milliseconds max_wait);

}  // namespace tokenmill
