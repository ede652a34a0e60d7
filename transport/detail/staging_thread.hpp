#pragma once
/// The ucx transport's staging thread: copies the blocks of a write from a device pool
/// that UCX cannot map into the pool's host mirror, piece by piece, and hands each piece
/// back as soon as it is copied. UCX-free: it never calls UCX (only the progress thread
/// does, STYLE.md §6); the pieces' puts are issued by the progress thread.
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "common/errors.hpp"
#include "common/pool_memory.hpp"
#include "transport/transfer_window.hpp"

namespace tokenmill {

/// What the staging thread copies for one write of a staged (device) pool.
struct staging_job {
  uint64_t op = 0;  ///< the write's id in the transport
  const pool_memory* source = nullptr;
  std::byte* mirror = nullptr;  ///< the mirror at the source's offset 0
  size_t block_bytes = 0;
  std::vector<transfer_segment> segments;
  std::atomic<bool> cancelled{false};  ///< the write ended (failed): stop copying
};

/// One thread and its FIFO of jobs.
class staging_thread {
 public:
  /// A piece of write `op` is in the mirror; `last`: the write's final piece.
  using piece_fn = std::function<void(uint64_t op, std::vector<transfer_segment> piece, bool last)>;
  /// Copying write `op` failed: the write must fail with `err`; no more pieces come.
  using error_fn = std::function<void(uint64_t op, error_info err)>;

  /// Starts the thread. `piece_bytes`: the most bytes copied per piece (whole blocks, at
  /// least one). The callbacks run on the staging thread.
  staging_thread(size_t piece_bytes, piece_fn on_piece, error_fn on_error);
  /// stop().
  ~staging_thread();
  staging_thread(const staging_thread&) = delete;
  staging_thread& operator=(const staging_thread&) = delete;

  /// Queues a job behind the others.
  void push(std::shared_ptr<staging_job> job);
  /// Finishes the piece being copied and joins; queued jobs are dropped (their writes are
  /// the owner's to fail).
  void stop();

 private:
  void run();
  void stage(staging_job& job);

  const size_t piece_bytes_;
  const piece_fn on_piece_;
  const error_fn on_error_;
  std::mutex mutex_;  ///< guards queue_, stop_
  std::condition_variable cv_;
  std::deque<std::shared_ptr<staging_job>> queue_;
  bool stop_ = false;
  std::thread thread_;  ///< last: starts once everything above exists
};

}  // namespace tokenmill
