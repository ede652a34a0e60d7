// `tokenmill bench-wake`: how late this machine wakes a sleeping thread, the floor under
// every inter-token latency a node can show (common/wake_latency.hpp). Three rows: a plain
// sleep to a deadline, the sim engine's step wait (sleep, then spin the last 100 µs), and
// one thread waking another through a condition variable (one hop of a token's way out).
// With the step as the period, the ITL p99 a runtime could reach here if it added nothing
// is about 1 + spin-row p99 / step; each hop adds up to a handoff p99.
#include <cstdio>
#include <memory>
#include <thread>

#include <nlohmann/json.hpp>

#include "apps/commands.hpp"
#include "apps/engine_timing.hpp"
#include "common/wake_latency.hpp"

namespace tokenmill::app {
namespace {

struct bench_wake_opts {
  double period_ms = 10;
  uint32_t count = 1000;
  double spin_us = 100;
  bool json = false;
};

nlohmann::ordered_json to_json(const delay_summary& s) {
  return {{"samples", s.samples}, {"p50_us", s.p50_us}, {"p90_us", s.p90_us},  {"p99_us", s.p99_us},
          {"p999_us", s.p999_us}, {"max_us", s.max_us}, {"mean_us", s.mean_us}};
}

}  // namespace

command add_bench_wake(CLI::App& app) {
  auto o = std::make_shared<bench_wake_opts>();
  app.add_option("--period-ms", o->period_ms, "Time between wake-ups (the sim engine's step)")
      ->capture_default_str();
  app.add_option("--count", o->count, "Wake-ups per row")->capture_default_str();
  app.add_option("--spin-us", o->spin_us, "Spin margin of the spinning wait (the sim's)")
      ->capture_default_str();
  app.add_flag("--json", o->json, "Print JSON ({\"rows\": {...}, \"machine\": {...}})");
  return [o]() -> int {
    wake_options w;
    w.period_ns = static_cast<int64_t>(o->period_ms * 1e6);
    w.count = o->count;
    w.spin_ns = static_cast<int64_t>(o->spin_us * 1e3);
    if (!(o->period_ms > 0) || !(o->spin_us >= 0)) {  // also NaN
      std::fprintf(stderr,
                   "tokenmill bench-wake: --period-ms and --spin-us must be numbers "
                   "above 0 (spin: 0 or more)\n");
      return 2;
    }
    if (auto err = validate(w); !err.empty()) {
      std::fprintf(stderr, "tokenmill bench-wake: %s\n", err.c_str());
      return 2;
    }
    if (!o->json)
      std::fprintf(stderr, "bench-wake: 3 x %u wake-ups every %g ms (%.0f s)\n", w.count,
                   o->period_ms, 3 * w.count * o->period_ms / 1e3);
    auto steal0 = cpu_steal_jiffies();
    const double load0 = loadavg_1min();
    auto r = measure_wake_latency(w);
    auto steal1 = cpu_steal_jiffies();
    const double steal = steal1.second > steal0.second
                             ? 100.0 * static_cast<double>(steal1.first - steal0.first) /
                                   static_cast<double>(steal1.second - steal0.second)
                             : 0;
    const double floor_ratio = 1 + r.spin.p99_us / (o->period_ms * 1e3);
    if (o->json) {
      nlohmann::ordered_json j;
      j["period_ms"] = o->period_ms;
      j["spin_us"] = o->spin_us;
      j["rows"] = {{"sleep_late", to_json(r.sleep)},
                   {"spin_late", to_json(r.spin)},
                   {"handoff", to_json(r.handoff)}};
      j["itl_p99_floor_ratio"] = floor_ratio;
      j["machine"] = {{"cpu", cpu_model_name()},
                      {"hardware_threads", std::thread::hardware_concurrency()},
                      {"steal_percent", steal},
                      {"loadavg_1min", load0}};
      std::printf("%s\n", j.dump().c_str());
      return 0;
    }
    std::printf("%-26s %9s %9s %9s %9s %9s\n", "wake-up (µs late)", "p50", "p90", "p99", "p99.9",
                "max");
    auto row = [](const char* name, const delay_summary& s) {
      std::printf("%-26s %9.1f %9.1f %9.1f %9.1f %9.1f\n", name, s.p50_us, s.p90_us, s.p99_us,
                  s.p999_us, s.max_us);
    };
    row("sleep to a deadline", r.sleep);
    row("sleep + spin (sim step)", r.spin);
    row("woken by another thread", r.handoff);
    std::printf("ITL p99 floor at a %g ms step: %.3fx the step (wait alone, no hop)\n",
                o->period_ms, floor_ratio);
    std::printf("cpu: %s, %u hardware threads, steal %.1f%%, load average %.2f\n",
                cpu_model_name().c_str(), std::thread::hardware_concurrency(), steal, load0);
    return 0;
  };
}

}  // namespace tokenmill::app
