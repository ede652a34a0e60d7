#include "transport/detail/staging_thread.hpp"

#include <exception>
#include <utility>

#include <fmt/format.h>

namespace tokenmill {

staging_thread::staging_thread(size_t piece_bytes, piece_fn on_piece, error_fn on_error)
    : piece_bytes_(piece_bytes),
      on_piece_(std::move(on_piece)),
      on_error_(std::move(on_error)),
      thread_([this] { run(); }) {}

staging_thread::~staging_thread() {
  stop();
}

void staging_thread::push(std::shared_ptr<staging_job> job) {
  {
    std::lock_guard lock{mutex_};
    queue_.push_back(std::move(job));
  }
  cv_.notify_one();
}

void staging_thread::stop() {
  {
    std::lock_guard lock{mutex_};
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void staging_thread::run() {
  for (;;) {
    std::shared_ptr<staging_job> job;
    {
      std::unique_lock lock{mutex_};
      cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
      if (stop_) return;  // the progress thread fails what is left
      job = std::move(queue_.front());
      queue_.pop_front();
    }
    stage(*job);
  }
}

/// Copies a staged write's blocks device -> mirror in pieces (staging_pieces) and hands
/// each piece on as soon as it is copied. This is the double buffering: while the network
/// reads piece i out of the mirror, this thread copies piece i+1 into another part of it,
/// so device copies and network transfer overlap instead of adding up. Only the written
/// blocks are copied.
void staging_thread::stage(staging_job& job) {
  auto pieces = staging_pieces(job.segments, job.block_bytes, piece_bytes_);
  for (size_t p = 0; p < pieces.size(); ++p) {
    for (const transfer_segment& part : pieces[p]) {
      if (job.cancelled.load(std::memory_order_relaxed)) return;
      try {
        job.source->copy_out(part.offset, job.mirror + part.offset, part.bytes);
      } catch (const std::exception& e) {
        on_error_(job.op,
                  error_info{errc::internal,
                             fmt::format("ucx: copying {} B of a device pool to its host staging "
                                         "failed: {}",
                                         part.bytes, e.what())});
        return;
      }
    }
    on_piece_(job.op, std::move(pieces[p]), p + 1 == pieces.size());
  }
}

}  // namespace tokenmill
