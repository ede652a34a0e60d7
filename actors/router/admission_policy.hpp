#pragma once
/// Adaptive admission, free of CAF (STYLE.md §2): admits a request when the queue wait it
/// would see, estimated from the cluster's measured service rate, stays under a target.
///
/// A request *waits* from its admission until it starts: its first decode step reaches
/// the router (or it ends with its answer complete, e.g. max_tokens 1). That covers every
/// queue in front of a request, wherever it forms: routing, the prefill queue, the KV
/// reservation and the decode worker's wait for a batch slot. The policy counts waiting
/// requests and measures the *service rate*: starts per second of time during which
/// something was waiting (so that an idle cluster does not read as a slow one). A new
/// request starts after those in front of it, in about waiting / rate (Little's law); above
/// `max_queue_ns` it is refused with a retry hint of the time the excess needs to drain.
/// Until the rate is measured (a cold start) only the fixed limits apply
/// (routing_policy.hpp, admit()).
///
/// With a TTFT objective (`ttft_slo_ns`) the target is the request's whole time to start,
/// not only its queue: the policy also measures the *unloaded start time*, the time from
/// admission to start of requests that found nothing waiting in front of them (prefill,
/// KV move and first step, with no queue), and refuses a request whose unloaded start
/// time plus queue wait would exceed the objective. The queue it keeps is then bounded by
/// the objective less what the work itself takes, whatever the offered load.
#include <cstdint>
#include <deque>
#include <optional>
#include <string>

namespace tokenmill {

/// The adaptive admission's settings (manifest `router: {max_queue_ms, ttft_slo_ms,
/// admission_window_ms, admission_min_waiting}`, `serve --max-queue-ms --ttft-slo-ms
/// --admission-window-ms --admission-min-waiting`).
struct adaptive_admission_config {
  /// Estimated queue wait above which new requests are refused, ns; 0: adaptive admission
  /// off (the fixed limits still apply).
  int64_t max_queue_ns = 2'000'000'000;
  /// Time to first token the admitted requests should meet, ns: a request is refused
  /// when the unloaded start time plus its estimated queue wait exceeds it. 0: off (only
  /// `max_queue_ns` bounds the wait). Both apply when both are set.
  int64_t ttft_slo_ns = 0;
  /// The service rate is measured over this much recent time, ns.
  int64_t window_ns = 5'000'000'000;
  /// Requests waiting below this are always admitted: a burst into an idle cluster is
  /// not refused on a rate measured while it was quiet.
  uint32_t min_waiting = 16;
  /// Bounds of the retry hint, ns (HTTP Retry-After has whole seconds).
  int64_t retry_after_min_ns = 1'000'000'000;
  int64_t retry_after_max_ns = 60'000'000'000;
};

/// Why `cfg` cannot be used (one sentence naming the field and what it needs), or
/// nullopt when it is valid.
std::optional<std::string> check(const adaptive_admission_config& cfg);

/// The policy's answer for one request.
struct admission_verdict {
  bool admit = true;
  /// Estimated queue wait of the request, ns; -1 while the service rate is unknown.
  int64_t estimated_wait_ns = -1;
  /// Refused by the TTFT objective (the unloaded start time plus the wait exceeds it)
  /// rather than by `max_queue_ns`.
  bool by_ttft_slo = false;
  /// Refused: when to retry, ns (within the config's bounds); 0 when admitted.
  int64_t retry_after_ns = 0;
};

/// The measured state. Times are any monotonic clock in ns, never decreasing between
/// calls (the router passes its steady clock).
class adaptive_admission {
 public:
  /// `cfg` must pass check().
  explicit adaptive_admission(adaptive_admission_config cfg);

  /// Whether a new request may enter now. Changes nothing: call admitted() when it does.
  admission_verdict decide(int64_t now_ns);
  /// A request was admitted and waits. Returns how many waited in front of it (keep it
  /// for started()).
  uint32_t admitted(int64_t now_ns);
  /// A waiting request started (first decode step, or it ended complete): a service.
  /// `admitted_ns` and `ahead` (admitted()'s answer), when given, measure the unloaded
  /// start time: a request that found nothing in front of it is one sample.
  void started(int64_t now_ns, int64_t admitted_ns = -1, uint32_t ahead = 1);
  /// A waiting request left without starting (cancelled, failed, refused later): no
  /// service, it just stops waiting.
  void dropped(int64_t now_ns);

  /// Requests admitted and not started.
  uint32_t waiting() const { return waiting_; }
  /// Starts per second of busy time in the window; nullopt until measured (at least
  /// `min_samples` starts over at least `min_busy_ns` of busy time).
  std::optional<double> service_rate() const;
  /// The unloaded start time, ns (a moving average of the samples, which outlives the
  /// window: under overload no request starts unqueued); nullopt until the first sample.
  std::optional<int64_t> unloaded_start_ns() const {
    return unloaded_samples_ ? std::optional<int64_t>(unloaded_start_ns_) : std::nullopt;
  }

  static constexpr uint32_t min_samples = 4;
  static constexpr int64_t min_busy_ns = 200'000'000;

 private:
  /// Moves the clock to `now`: busy time accrues while something waits, old slices go.
  void advance(int64_t now_ns);

  struct slice {
    int64_t start_ns = 0;
    int64_t busy_ns = 0;
    uint32_t starts = 0;
  };
  adaptive_admission_config cfg_;
  int64_t slice_ns_;
  std::deque<slice> slices_;  ///< oldest first; covers at most the window
  int64_t last_ns_ = 0;
  bool clock_started_ = false;
  uint32_t waiting_ = 0;
  int64_t unloaded_start_ns_ = 0;
  uint64_t unloaded_samples_ = 0;
};

}  // namespace tokenmill
