#pragma once
/// A small Prometheus metrics registry: counters, gauges and histograms with labels,
/// exposed in the text exposition format 0.0.4 (what `GET /metrics` serves). No CAF, no
/// global registry (STYLE.md §3): the composition root owns one and hands it out.
///
/// Thread-safe. Lookups (`registry::get_*`) take a mutex; updates through the returned
/// handles (`inc`, `set`, `observe`) are lock-free atomics, so hot paths should keep the
/// handle rather than look it up per event.
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace tokenmill::metrics {

/// Label name/value pairs of one series. Order does not matter: the registry sorts by name.
using label_set = std::vector<std::pair<std::string, std::string>>;

/// A monotonic count (requests, tokens). Name counters `..._total`.
class counter {
 public:
  counter() = default;
  counter(const counter&) = delete;
  counter& operator=(const counter&) = delete;

  /// Adds `v`; negative or NaN increments are ignored (a counter never goes down).
  void inc(double v = 1);
  /// Raises the count to `total` when it is larger (a count kept elsewhere, such as a
  /// worker's status, mirrored here); smaller totals are ignored.
  void advance_to(double total);
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

/// A value that goes up and down (requests in flight, KV blocks used).
class gauge {
 public:
  gauge() = default;
  gauge(const gauge&) = delete;
  gauge& operator=(const gauge&) = delete;

  void set(double v) { value_.store(v, std::memory_order_relaxed); }
  void add(double v);
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

/// Observations counted into buckets with inclusive upper bounds (`le`), plus their sum.
class histogram {
 public:
  /// `upper_bounds` must be non-empty, finite and strictly increasing (+Inf is implicit);
  /// otherwise throws std::invalid_argument.
  explicit histogram(std::vector<double> upper_bounds);
  histogram(const histogram&) = delete;
  histogram& operator=(const histogram&) = delete;

  /// Counts `v` in the first bucket whose bound is >= v (NaN and values above the last
  /// bound only in +Inf). Lock-free.
  void observe(double v);

  struct snapshot {
    std::vector<double> bounds;        ///< finite upper bounds, ascending
    std::vector<uint64_t> cumulative;  ///< bounds.size() + 1 entries; the last is +Inf
    uint64_t count = 0;                ///< == cumulative.back()
    double sum = 0;
  };
  /// The current state. Each bucket is read atomically; under concurrent observe() the sum
  /// may lag or lead the counts by the observations in flight.
  snapshot snap() const;
  const std::vector<double>& bounds() const { return bounds_; }

 private:
  std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> buckets_;  ///< per bucket (not cumulative), +Inf last
  std::atomic<double> sum_{0};
};

/// Metric families by name, each with its series by label set.
class registry {
 public:
  registry();
  ~registry();
  registry(const registry&) = delete;
  registry& operator=(const registry&) = delete;

  /// The series `name{labels}`, created on first use; later calls return the same object,
  /// valid for the registry's life. `help` of the first call is kept. Throws
  /// std::invalid_argument, naming the metric, for an invalid metric or label name
  /// (`[a-zA-Z_:][a-zA-Z0-9_:]*`; labels `[a-zA-Z_][a-zA-Z0-9_]*`, not starting with `__`),
  /// a repeated label name, or a name already registered with another type.
  counter& get_counter(std::string_view name, std::string_view help, const label_set& labels = {});
  gauge& get_gauge(std::string_view name, std::string_view help, const label_set& labels = {});
  /// As above; also throws when `upper_bounds` are invalid (see histogram), differ from
  /// the bounds the family was first registered with, or `labels` contain `le`.
  histogram& get_histogram(std::string_view name, std::string_view help,
                           std::vector<double> upper_bounds, const label_set& labels = {});

  /// The text exposition (format 0.0.4) of every series: families sorted by name, series
  /// by label set, so that the output is stable.
  std::string expose() const;

 private:
  enum class kind : uint8_t { counter, gauge, histogram };
  struct family;
  /// The family `name` (created if new) after checking names and type; `sorted` receives
  /// the normalised labels. Call with mutex_ held.
  family& family_for(std::string_view name, std::string_view help, kind type,
                     const label_set& labels, label_set& sorted);

  mutable std::mutex mutex_;
  std::map<std::string, std::unique_ptr<family>, std::less<>> families_;
};

/// `count` bounds: start, start*factor, start*factor^2, ... (start > 0, factor > 1,
/// count >= 1; otherwise throws std::invalid_argument).
std::vector<double> exponential_buckets(double start, double factor, size_t count);

/// Bounds in seconds from 0.5 ms to 60 s, dense between 5 ms and 1 s where inter-token
/// latency and TTFT usually fall; suits TTFT, ITL and end-to-end latency alike.
std::vector<double> latency_buckets_seconds();

}  // namespace tokenmill::metrics
