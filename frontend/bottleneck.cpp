#include "frontend/bottleneck.hpp"

#include <algorithm>
#include <cmath>
#include <optional>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "common/stats.hpp"

namespace tokenmill {
namespace {

/// The sub-stage that dominates a worker's attributed time, and its mean (ms/request).
std::pair<std::string, double> dominant_part(const worker_snapshot& w) {
  std::vector<std::pair<std::string, double>> parts;
  if (w.kind == role::prefill || w.prefill_compute_ms > 0) {
    parts.push_back({"prefill_queue", w.prefill_queue_ms});
    parts.push_back({"prefill_compute", w.prefill_compute_ms});
    parts.push_back({"kv_transfer", w.kv_transfer_ms});
  }
  if (w.kind == role::decode) {
    parts.push_back({"decode_reserve", w.decode_reserve_ms});
    parts.push_back({"to_router", w.to_router_ms});
  }
  if (parts.empty()) return {"routing", w.stage_ms};
  return *std::max_element(parts.begin(), parts.end(),
                           [](const auto& a, const auto& b) { return a.second < b.second; });
}

/// ITL spikes of every cause (index 0, none, is not a spike).
uint64_t total(const spike_counts& c) {
  uint64_t n = 0;
  for (size_t i = 1; i < kItlCauses; ++i)
    n += c[i];
  return n;
}

std::string pct(double f) {
  return fmt::format("{:.0f}%", f * 100);
}

}  // namespace

bottleneck find_bottleneck(const cluster_snapshot& s) {
  bottleneck b;
  const std::string window = fmt::format("{:g} s", s.window_s);
  // 1. An outlier among the workers of one role.
  struct candidate {
    const worker_snapshot* w;
    double ratio;
    std::string line;
  };
  std::optional<candidate> best;
  for (role kind : {role::prefill, role::decode}) {
    std::vector<const worker_snapshot*> peers;
    for (const auto& w : s.workers)
      if (w.kind == kind && w.up && (w.in_status || w.requests > 0)) peers.push_back(&w);
    if (peers.size() < 2) continue;
    for (const auto* w : peers) {
      std::vector<double> others_stage, others_queue;
      const worker_snapshot* typical = nullptr;
      for (const auto* o : peers) {
        if (o == w) continue;
        others_queue.push_back(o->queued);
        if (o->requests > 0) others_stage.push_back(o->stage_ms);
      }
      // By stage time per request.
      if (w->requests > 0 && !others_stage.empty()) {
        const double med = median(others_stage);
        double closest = 1e300;
        for (const auto* o : peers)
          if (o != w && o->requests > 0 && std::abs(o->stage_ms - med) < closest) {
            closest = std::abs(o->stage_ms - med);
            typical = o;
          }
        const double ratio = med > 0 ? w->stage_ms / med : (w->stage_ms > 0 ? 1e9 : 0);
        if (ratio >= 1.5 && w->stage_ms - med >= 0.1 * s.mean_ttft_ms && w->stage_ms > 0) {
          auto [part, ms] = dominant_part(*w);
          double peer_ms = ms;
          if (typical) {
            if (part == "prefill_queue") peer_ms = typical->prefill_queue_ms;
            if (part == "prefill_compute") peer_ms = typical->prefill_compute_ms;
            if (part == "kv_transfer") peer_ms = typical->kv_transfer_ms;
            if (part == "decode_reserve") peer_ms = typical->decode_reserve_ms;
            if (part == "to_router") peer_ms = typical->to_router_ms;
          }
          std::string line = fmt::format(
              "{}: {} {:.1f} ms/request vs {:.1f} on {}, {} of mean TTFT {:.1f} ms", w->name, part,
              ms, peer_ms, typical ? typical->name : std::string("its peers"),
              pct(s.mean_ttft_ms > 0 ? w->stage_ms / s.mean_ttft_ms : 0), s.mean_ttft_ms);
          if (part == "prefill_compute" && typical && typical->compute_ms_per_1k_tokens > 0)
            line += fmt::format(" ({:.1f} ms per 1k prompt tokens vs {:.1f})",
                                w->compute_ms_per_1k_tokens, typical->compute_ms_per_1k_tokens);
          if (!best || ratio > best->ratio) best = candidate{w, ratio, std::move(line)};
          continue;
        }
      }
      // By queue depth.
      const double medq = median(others_queue);
      if (w->queued >= 4 && w->queued >= 2 * std::max(1.0, medq)) {
        const double ratio = w->queued / std::max(1.0, medq);
        std::string line =
            fmt::format("{}: queue {} vs {:g} at its peers{}", w->name, w->queued, medq,
                        w->requests > 0 ? fmt::format(", {:.1f} ms/request of TTFT", w->stage_ms)
                                        : std::string());
        if (!best || ratio > best->ratio) best = candidate{w, ratio, std::move(line)};
      }
    }
  }
  if (best) {
    b.found = true;
    b.worker = best->w->name;
    b.line = std::move(best->line);
    return b;
  }
  // 2. ITL spikes on a decode worker.
  const worker_snapshot* spiky = nullptr;
  for (const auto& w : s.workers)
    if (w.kind == role::decode && total(w.spikes) >= 3 &&
        w.itl_p99_ms >= 2 * std::max(w.itl_p50_ms, 1e-9) &&
        (!spiky || total(w.spikes) > total(spiky->spikes)))
      spiky = &w;
  if (spiky) {
    size_t cause = 1;
    for (size_t i = 1; i < kItlCauses; ++i)
      if (spiky->spikes[i] > spiky->spikes[cause]) cause = i;
    b.found = true;
    b.worker = spiky->name;
    b.line = fmt::format(
        "{}: ITL p99 {:.1f} ms vs p50 {:.1f} ms, {} spikes in {}, {} caused by {}{}", spiky->name,
        spiky->itl_p99_ms, spiky->itl_p50_ms, total(spiky->spikes), window, spiky->spikes[cause],
        to_string(static_cast<itl_cause>(cause)),
        cause == static_cast<size_t>(itl_cause::prefill) ? " (piggy-backed prefill in decode steps)"
                                                         : "");
    return b;
  }
  // 3. The stage that dominates the mean TTFT.
  if (s.requests == 0) {
    const worker_snapshot* deepest = nullptr;
    for (const auto& w : s.workers)
      if ((w.kind == role::prefill || w.kind == role::decode) && w.queued > 0 &&
          (!deepest || w.queued > deepest->queued))
        deepest = &w;
    if (deepest) {
      b.found = true;
      b.worker = deepest->name;
      b.line = fmt::format("{}: queue {} and no request finished in the last {}", deepest->name,
                           deepest->queued, window);
      return b;
    }
    b.line = fmt::format("none (idle: no request finished in the last {})", window);
    return b;
  }
  const worker_snapshot* top = nullptr;
  for (const auto& w : s.workers)
    if (w.requests > 0 && (!top || w.ttft_share > top->ttft_share)) top = &w;
  if (!top || top->ttft_share <= 0) {
    b.line = fmt::format("none ({} requests, mean TTFT {:.1f} ms, no worker stage dominates)",
                         s.requests, s.mean_ttft_ms);
    return b;
  }
  auto [part, ms] = dominant_part(*top);
  std::string dominant_stage;
  double dominant_ms = 0;
  for (const auto& st : s.stages)
    if (st.ms > dominant_ms) dominant_stage = st.name, dominant_ms = st.ms;
  b.found = true;
  b.worker = top->name;
  b.line = fmt::format(
      "{}: {} {:.1f} ms/request, {} of mean TTFT {:.1f} ms (largest stage: {} {:.1f} ms; no "
      "worker is an outlier among its peers)",
      top->name, part, ms, pct(top->ttft_share), s.mean_ttft_ms, dominant_stage, dominant_ms);
  return b;
}

}  // namespace tokenmill
