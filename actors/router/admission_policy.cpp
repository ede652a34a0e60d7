#include "actors/router/admission_policy.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include <fmt/format.h>

namespace tokenmill {

namespace {
/// Slices per window: the rate forgets the oldest slice's worth of time at once.
constexpr int64_t slices_per_window = 20;
constexpr int64_t hour_ns = 3'600'000'000'000;
}  // namespace

std::optional<std::string> check(const adaptive_admission_config& c) {
  if (c.max_queue_ns < 0)
    return fmt::format("max_queue_ms must be >= 0 (0 turns adaptive admission off), got {} ms",
                       c.max_queue_ns / 1'000'000);
  if (c.max_queue_ns > hour_ns)
    return fmt::format("max_queue_ms must be at most one hour (3600000), got {} ms",
                       c.max_queue_ns / 1'000'000);
  if (c.ttft_slo_ns < 0 || c.ttft_slo_ns > hour_ns)
    return fmt::format("ttft_slo_ms must be between 0 (off) and one hour (3600000), got {} ms",
                       c.ttft_slo_ns / 1'000'000);
  if (c.window_ns < 100'000'000 || c.window_ns > hour_ns)
    return fmt::format(
        "admission_window_ms must be between 100 and 3600000 (the time the service rate is "
        "measured over), got {} ms",
        c.window_ns / 1'000'000);
  if (c.min_waiting > (1u << 20))
    return fmt::format("admission_min_waiting must be at most {}, got {}", 1u << 20, c.min_waiting);
  if (c.retry_after_min_ns <= 0 || c.retry_after_max_ns < c.retry_after_min_ns)
    return fmt::format("retry-after bounds must satisfy 0 < min <= max, got {} ms and {} ms",
                       c.retry_after_min_ns / 1'000'000, c.retry_after_max_ns / 1'000'000);
  return std::nullopt;
}

adaptive_admission::adaptive_admission(adaptive_admission_config cfg)
    : cfg_(cfg), slice_ns_(std::max<int64_t>(1, cfg.window_ns / slices_per_window)) {}

void adaptive_admission::advance(int64_t now) {
  if (!clock_started_) {
    last_ns_ = now;
    clock_started_ = true;
  }
  now = std::max(now, last_ns_);
  // Time older than the window is forgotten anyway: do not walk through it.
  int64_t t = std::max(last_ns_, now - cfg_.window_ns);
  auto slice_start = [&](int64_t x) {
    int64_t r = x % slice_ns_;
    if (r < 0) r += slice_ns_;
    return x - r;
  };
  if (waiting_ > 0) {
    while (t < now) {
      const int64_t start = slice_start(t);
      if (slices_.empty() || slices_.back().start_ns != start) slices_.push_back({start, 0, 0});
      const int64_t end = std::min(now, start + slice_ns_);
      slices_.back().busy_ns += end - t;
      t = end;
    }
  }
  const int64_t start = slice_start(now);
  if (slices_.empty() || slices_.back().start_ns != start) slices_.push_back({start, 0, 0});
  while (!slices_.empty() && slices_.front().start_ns + slice_ns_ <= now - cfg_.window_ns)
    slices_.pop_front();
  last_ns_ = now;
}

std::optional<double> adaptive_admission::service_rate() const {
  int64_t busy = 0;
  uint64_t starts = 0;
  for (const auto& s : slices_) {
    busy += s.busy_ns;
    starts += s.starts;
  }
  if (starts < min_samples || busy < min_busy_ns) return std::nullopt;
  return static_cast<double>(starts) / (static_cast<double>(busy) / 1e9);
}

admission_verdict adaptive_admission::decide(int64_t now) {
  advance(now);
  admission_verdict v;
  auto rate = service_rate();
  if (rate)
    v.estimated_wait_ns =
        static_cast<int64_t>(std::ceil(static_cast<double>(waiting_) / *rate * 1e9));
  if (waiting_ < cfg_.min_waiting || !rate) return v;
  // How far the estimate is past each target that applies (ns; <= 0: within it).
  int64_t over = std::numeric_limits<int64_t>::min();
  if (cfg_.max_queue_ns > 0) over = v.estimated_wait_ns - cfg_.max_queue_ns;
  if (cfg_.ttft_slo_ns > 0) {
    const int64_t slo_over = unloaded_start_ns_ + v.estimated_wait_ns - cfg_.ttft_slo_ns;
    if (slo_over > 0 && slo_over > over) v.by_ttft_slo = true;
    over = std::max(over, slo_over);
  }
  if (over <= 0) {
    v.by_ttft_slo = false;
    return v;
  }
  v.admit = false;
  // The excess drains at the measured rate: retry when the wait is back under the target.
  v.retry_after_ns = std::clamp(over, cfg_.retry_after_min_ns, cfg_.retry_after_max_ns);
  return v;
}

uint32_t adaptive_admission::admitted(int64_t now) {
  advance(now);
  return waiting_++;
}

void adaptive_admission::started(int64_t now, int64_t admitted_ns, uint32_t ahead) {
  advance(now);
  if (waiting_ == 0) return;
  --waiting_;
  ++slices_.back().starts;
  if (ahead == 0 && admitted_ns >= 0 && admitted_ns <= now) {
    // A moving average over about the last 8 samples: one slow start does not move it far.
    const int64_t x = now - admitted_ns;
    unloaded_start_ns_ =
        unloaded_samples_ == 0 ? x : unloaded_start_ns_ + (x - unloaded_start_ns_) / 8;
    ++unloaded_samples_;
  }
}

void adaptive_admission::dropped(int64_t now) {
  advance(now);
  if (waiting_ > 0) --waiting_;
}

}  // namespace tokenmill
