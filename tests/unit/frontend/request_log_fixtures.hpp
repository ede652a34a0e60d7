#pragma once
/// Hand-made generation summaries and cluster status for the request log's snapshot and
/// the bottleneck finder's tests.
#include <string>
#include <utility>
#include <vector>

#include "common/api_types.hpp"
#include "frontend/request_log.hpp"

namespace tokenmill::test {

constexpr int64_t kNow = 1'000'000'000'000;  // the snapshot's "now" (ns)

/// A successful request with the given TTFT stages (ms), spread evenly over the stages'
/// causal stamps.
inline generation_summary make_summary(request_id id, std::string prefill, std::string decode,
                                       std::vector<std::pair<std::string, double>> stages,
                                       uint32_t prompt_tokens = 512) {
  generation_summary g;
  g.id = id;
  g.reason = finish_reason::length;
  g.prompt_tokens = prompt_tokens;
  g.completion_tokens = 32;
  g.prefill_worker = std::move(prefill);
  g.decode_worker = std::move(decode);
  double ttft = 0;
  for (auto& [n, ms] : stages) {
    g.stages.push_back({n, ms});
    ttft += ms;
  }
  g.ttft_ms = ttft;
  g.itl_mean_ms = 10;
  g.itl_p50_ms = 10;
  g.itl_p99_ms = 11;
  return g;
}

inline request_record rec(generation_summary g, int64_t end_ns = kNow - 1'000'000'000) {
  request_record r;
  r.summary = std::move(g);
  r.api = "http";
  r.end_ns = end_ns;
  r.arrival_ns = end_ns - 100'000'000;
  return r;
}

inline worker_status ws(std::string name, role kind, std::string node, uint32_t queued = 0) {
  worker_status w;
  w.name = std::move(name);
  w.kind = kind;
  w.node = std::move(node);
  w.queued = queued;
  w.kv_total = 1000;
  return w;
}

inline std::vector<std::pair<std::string, double>> stages(double pq, double pc, double kt,
                                                          double rest = 1) {
  return {{"frontend_to_router", 0.1 * rest},
          {"routing", 0.1 * rest},
          {"decode_reserve", 0.3 * rest},
          {"to_prefill", 0.1 * rest},
          {"prefill_queue", pq},
          {"prefill_compute", pc},
          {"kv_transfer", kt},
          {"to_router", 0.3 * rest},
          {"router_to_frontend", 0.1 * rest}};
}

inline cluster_status two_prefill_cluster(uint32_t p1_queue = 0) {
  cluster_status st;
  st.cluster = "obs";
  st.ready = true;
  st.workers = {ws("head.router0", role::router, "head"), ws("p0.prefill0", role::prefill, "p0"),
                ws("p1.prefill0", role::prefill, "p1", p1_queue),
                ws("d0.decode0", role::decode, "d0")};
  return st;
}

}  // namespace tokenmill::test
