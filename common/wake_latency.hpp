#pragma once
/// How late this machine wakes a thread: the floor under every latency a node reports.
/// A token's inter-token latency (ITL) includes the engine's step and one thread wake-up
/// per hop on its way out (engine thread -> worker -> router -> frontend -> client). On a
/// virtual machine the hypervisor decides when a vCPU runs, and no priority or spin inside
/// the guest removes that delay, so an ITL tail can only be judged against what the same
/// machine does for a thread that does nothing but sleep. No CAF here.
#include <cstdint>
#include <string>
#include <vector>

namespace tokenmill {

/// Waits until `deadline` (steady clock, ns, as now_ns()): sleeps until `spin_ns` before
/// it and spins the rest, with the thread's timer slack lowered to 1 ns. The sim engine's
/// step wait: a sleep alone overshoots by the wake-up latency (~50-60 µs on a VM), which
/// would make the engine slower than its model.
void wait_until_ns(int64_t deadline, int64_t spin_ns = 100'000);

/// Quantiles of a set of delays, in µs.
struct delay_summary {
  uint64_t samples = 0;
  double p50_us = 0, p90_us = 0, p99_us = 0, p999_us = 0, max_us = 0, mean_us = 0;
};

/// Summarises delays in ns (nearest-rank quantiles; reorders `ns`). Empty: all zero.
delay_summary summarize_delays(std::vector<int64_t>& ns);

/// What to measure: `count` waits, one every `period_ns`.
struct wake_options {
  int64_t period_ns = 10'000'000;
  uint32_t count = 1000;
  /// The spin margin of the spinning timer wait (the sim engine's, 100 µs).
  int64_t spin_ns = 100'000;
};

/// Checks the options; an error message naming the bad value, or empty.
std::string validate(const wake_options& o);

/// One run's delays.
struct wake_report {
  delay_summary sleep;    ///< plain sleep_until to a deadline: lateness
  delay_summary spin;     ///< wait_until_ns (sleep, then spin the margin): lateness
  delay_summary handoff;  ///< a sleeping thread woken by another (condition variable):
                          ///< from notify to the woken thread running
};

/// Runs the three measurements one after the other (3 x count x period). Options must be
/// valid.
wake_report measure_wake_latency(const wake_options& o);

}  // namespace tokenmill
