#include "frontend/connection_pool.hpp"

#include <algorithm>
#include <string>
#include <utility>

#include "common/clock.hpp"

namespace tokenmill::workload {

connection_pool::connection_pool(connection_factory make, size_t cap)
    : make_(std::move(make)), cap_(cap) {}

connection_pool::~connection_pool() {
  stop();
}

void connection_pool::spawn_and_connect(size_t n) {
  std::unique_lock lock(m_);
  size_t target = std::min(cap_, threads_.size() + n);
  while (threads_.size() < target)
    spawn_locked();
  ready_cv_.wait(lock, [&] { return connected_ >= threads_.size(); });
}

bool connection_pool::submit(bench_job j, bool grow) {
  std::lock_guard lock(m_);
  bool late = waiting_ <= queue_.size();
  queue_.push_back(j);
  ++submitted_;
  // Workers still connecting count as capacity on the way, so a burst that arrives
  // while one connects does not start a thread per request.
  size_t on_the_way = waiting_ + (threads_.size() - connected_);
  if (grow && threads_.size() < cap_ && on_the_way <= queue_.size()) spawn_locked();
  work_cv_.notify_one();
  return late;
}

void connection_pool::drain() {
  std::unique_lock lock(m_);
  done_cv_.wait(lock, [&] { return finished_ == submitted_; });
}

size_t connection_pool::finished() {
  std::lock_guard lock(m_);
  return finished_;
}

size_t connection_pool::size() {
  std::lock_guard lock(m_);
  return threads_.size();
}

void connection_pool::stop() {
  {
    std::lock_guard lock(m_);
    stopping_ = true;
  }
  work_cv_.notify_all();
  for (auto& t : threads_)
    if (t.joinable()) t.join();
}

void connection_pool::spawn_locked() {
  threads_.emplace_back([this] { work(); });
}

void connection_pool::work() {
  auto conn = make_();
  std::unique_lock lock(m_);
  ++connected_;  // and waiting from here on, in the same critical section
  ready_cv_.notify_all();
  for (;;) {
    ++waiting_;
    work_cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
    --waiting_;
    if (queue_.empty()) return;  // stopping
    bench_job j = queue_.front();
    queue_.pop_front();
    lock.unlock();
    if (!conn) conn = make_();
    int64_t start = now_ns();
    if (conn) {
      *j.out = (*conn)->run(*j.req, j.sampling, j.rec);
      if ((*conn)->broken()) conn = error_info{errc::unavailable, "connection lost"};
    } else {
      j.out->error = describe(conn.error());
      if (j.rec) {
        j.rec->outcome = std::string(to_string(conn.error().code));
        j.rec->sent_ns = j.rec->end_ns = now_ns();
      }
    }
    if (j.due_ns) j.out->dispatch_delay_ms = static_cast<double>(start - j.due_ns) / 1e6;
    lock.lock();
    ++finished_;
    done_cv_.notify_all();
  }
}

}  // namespace tokenmill::workload
