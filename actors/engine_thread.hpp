#pragma once
/// Runs engine calls off CAF's scheduler (DESIGN.md §1): one thread per engine, fed by a
/// queue. A worker actor submits a step and gets the result back as a message, so its
/// mailbox keeps flowing (admissions, KV arrivals, cancels, status) while the engine
/// computes.
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

namespace tokenmill {

class engine_thread {
 public:
  engine_thread();
  /// Finishes the job in progress, drops queued ones and joins.
  ~engine_thread();
  engine_thread(const engine_thread&) = delete;
  engine_thread& operator=(const engine_thread&) = delete;

  /// Queues `job` to run on the engine thread.
  void submit(std::function<void()> job);

 private:
  void run();
  std::mutex mtx_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace tokenmill
