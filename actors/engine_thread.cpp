#include "actors/engine_thread.hpp"

namespace tokenmill {

engine_thread::engine_thread() : thread_([this] { run(); }) {}

engine_thread::~engine_thread() {
  {
    std::lock_guard<std::mutex> lock(mtx_);
    stop_ = true;
    jobs_.clear();
  }
  cv_.notify_one();
  thread_.join();
}

void engine_thread::submit(std::function<void()> job) {
  {
    std::lock_guard<std::mutex> lock(mtx_);
    jobs_.push_back(std::move(job));
  }
  cv_.notify_one();
}

void engine_thread::run() {
  for (;;) {
    std::function<void()> job;
    // The next step usually follows within tens of µs of the last one's result: poll
    // briefly before sleeping, so a step does not also pay a futex wake-up.
    for (auto until = std::chrono::steady_clock::now() + spin_;
         std::chrono::steady_clock::now() < until;) {
      std::lock_guard<std::mutex> lock(mtx_);
      if (stop_ || !jobs_.empty()) break;
    }
    {
      std::unique_lock<std::mutex> lock(mtx_);
      cv_.wait(lock, [this] { return stop_ || !jobs_.empty(); });
      if (stop_) return;
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    job();
  }
}

}  // namespace tokenmill
