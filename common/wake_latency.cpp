#include "common/wake_latency.hpp"

#include <sys/prctl.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <thread>

#include "common/clock.hpp"

namespace tokenmill {
namespace {

void lower_timer_slack() {
  thread_local bool done = false;
  if (!done) {
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    done = true;
  }
}

void sleep_until_steady_ns(int64_t t) {
  std::this_thread::sleep_until(std::chrono::steady_clock::time_point(std::chrono::nanoseconds(t)));
}

}  // namespace

void wait_until_ns(int64_t deadline, int64_t spin_ns) {
  lower_timer_slack();
  if (deadline - now_ns() > spin_ns) sleep_until_steady_ns(deadline - spin_ns);
  while (now_ns() < deadline) {
  }
}

delay_summary summarize_delays(std::vector<int64_t>& ns) {
  delay_summary s;
  s.samples = ns.size();
  if (ns.empty()) return s;
  std::sort(ns.begin(), ns.end());
  auto q = [&](double p) {
    size_t i = static_cast<size_t>(p * static_cast<double>(ns.size() - 1) + 0.5);
    return static_cast<double>(ns[std::min(i, ns.size() - 1)]) / 1e3;
  };
  s.p50_us = q(0.50);
  s.p90_us = q(0.90);
  s.p99_us = q(0.99);
  s.p999_us = q(0.999);
  s.max_us = static_cast<double>(ns.back()) / 1e3;
  double sum = 0;
  for (int64_t v : ns)
    sum += static_cast<double>(v);
  s.mean_us = sum / static_cast<double>(ns.size()) / 1e3;
  return s;
}

std::string validate(const wake_options& o) {
  char msg[128] = "";
  if (o.period_ns < 100'000 || o.period_ns > 1'000'000'000)
    std::snprintf(msg, sizeof msg, "period must be 0.1 to 1000 ms, got %g ms",
                  static_cast<double>(o.period_ns) / 1e6);
  else if (o.count < 10 || o.count > 1'000'000)
    std::snprintf(msg, sizeof msg, "count must be 10 to 1000000, got %u", o.count);
  else if (o.spin_ns < 0 || o.spin_ns >= o.period_ns)
    std::snprintf(msg, sizeof msg, "spin margin must be 0 to below the period, got %g us",
                  static_cast<double>(o.spin_ns) / 1e3);
  return msg;
}

wake_report measure_wake_latency(const wake_options& o) {
  lower_timer_slack();
  wake_report r;
  std::vector<int64_t> late;
  late.reserve(o.count);

  // Deadlines on a fixed grid, as a step loop keeps them; a late wake does not move the
  // next deadline.
  auto timer = [&](bool spin) {
    late.clear();
    int64_t t = now_ns() + o.period_ns;
    for (uint32_t i = 0; i < o.count; ++i, t += o.period_ns) {
      if (spin)
        wait_until_ns(t, o.spin_ns);
      else
        sleep_until_steady_ns(t);
      int64_t now = now_ns();
      late.push_back(std::max<int64_t>(0, now - t));
      if (now > t + o.period_ns) t = now;  // fell a whole period behind: restart the grid
    }
    return summarize_delays(late);
  };
  r.sleep = timer(false);
  r.spin = timer(true);

  // Handoff: the waiter sleeps on a condition variable; every period the notifier stamps
  // the time and wakes it, then waits for it to have run, so every post is one wake-up.
  late.clear();
  std::mutex m;
  std::condition_variable cv, caught_up;
  uint64_t posted = 0, seen = 0;
  int64_t stamp = 0;
  bool stop = false;
  std::thread waiter([&] {
    lower_timer_slack();
    std::unique_lock lock(m);
    for (;;) {
      cv.wait(lock, [&] { return stop || posted != seen; });
      if (posted != seen) {
        late.push_back(now_ns() - stamp);
        seen = posted;
        caught_up.notify_one();
      }
      if (stop) return;
    }
  });
  int64_t t = now_ns() + o.period_ns;
  for (uint32_t i = 0; i < o.count; ++i, t += o.period_ns) {
    sleep_until_steady_ns(t);
    std::unique_lock lock(m);  // held by the waiter until it sleeps again
    stamp = now_ns();
    ++posted;
    cv.notify_one();
    // One wake-up per post: wait until this one was seen before the next.
    caught_up.wait(lock, [&] { return seen == posted; });
    lock.unlock();
    if (now_ns() > t + o.period_ns) t = now_ns();
  }
  {
    std::lock_guard lock(m);
    stop = true;
  }
  cv.notify_one();
  waiter.join();
  r.handoff = summarize_delays(late);
  return r;
}

}  // namespace tokenmill
