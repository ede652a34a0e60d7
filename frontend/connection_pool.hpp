#pragma once
/// The worker threads of `tokenmill bench`, each keeping its own client connection
/// (bench_connection.hpp) and reusing it request after request: a connection that broke is
/// replaced before the next request, and one that could not be made fails its request.
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include "common/api_types.hpp"
#include "frontend/bench_connection.hpp"
#include "frontend/workload.hpp"

namespace tokenmill::workload {

/// One request to run: how it samples, where its result (and record) go and when it was
/// due (0: now).
struct bench_job {
  const bench_request* req = nullptr;
  request_result* out = nullptr;
  int64_t due_ns = 0;  ///< steady clock (now_ns); sets out->dispatch_delay_ms when not 0
  sampling_params sampling;
  client_record* rec = nullptr;  ///< filled when set
};

/// Worker threads, each with its own connection, taking jobs from one queue. Grows on
/// demand up to `cap` threads; a job that finds no waiting worker is "late".
class connection_pool {
 public:
  connection_pool(connection_factory make, size_t cap);
  /// stop().
  ~connection_pool();
  connection_pool(const connection_pool&) = delete;
  connection_pool& operator=(const connection_pool&) = delete;

  /// Starts `n` more workers (up to the cap) and waits until each has tried to connect.
  void spawn_and_connect(size_t n);

  /// Queues `j`. With `grow`, a job that finds no idle worker starts another (up to the
  /// cap), and the pool keeps one spare worker connected ahead of demand. Returns true
  /// when the job had to wait for a worker.
  bool submit(bench_job j, bool grow);

  /// Waits until every submitted job finished.
  void drain();

  /// Jobs finished so far.
  size_t finished();
  /// Worker threads started so far.
  size_t size();

  /// Lets the workers finish what is queued and joins them.
  void stop();

 private:
  void spawn_locked();
  void work();

  connection_factory make_;
  size_t cap_;
  std::mutex m_;
  std::condition_variable work_cv_, done_cv_, ready_cv_;
  std::deque<bench_job> queue_;
  std::vector<std::thread> threads_;
  size_t waiting_ = 0;  ///< workers blocked on an empty queue
  size_t connected_ = 0;
  size_t submitted_ = 0, finished_ = 0;
  bool stopping_ = false;
};

}  // namespace tokenmill::workload
