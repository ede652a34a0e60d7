// `tokenmill bench-router`: the router's decision latency at cluster scale, in-process: the
// kv-store's prefix index (actors/kv_store/kv_index) filled with N blocks across W workers,
// then for each query prompt the overlap query plus the cost model (routing_policy) over
// every worker, timed one decision at a time. One row per (blocks, workers).
//
// The index holds conversations of prompt_tokens / block_tokens blocks (a 4k-token prompt
// is 256 blocks of 16), each on two workers (the decode worker that served it and the
// prefill worker that computed it). Queries: half repeat a stored conversation (the walk
// covers the whole chain: the worst case), a third share a random-length prefix of one and
// diverge, the rest are new prompts. Half the workers are decode, half prefill workers,
// with random loads.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "actors/kv_store/kv_index.hpp"
#include "actors/router/routing_policy.hpp"
#include "apps/commands.hpp"
#include "apps/engine_timing.hpp"
#include "common/clock.hpp"

namespace tokenmill::app {
namespace {

struct bench_router_opts {
  std::vector<uint64_t> blocks{1000, 100000, 1000000};
  std::vector<uint32_t> workers{8, 32, 128};
  uint32_t prompt_tokens = 4096;
  uint32_t block_tokens = 16;
  uint32_t queries = 2000;
  uint64_t seed = 1;
  bool json = false;
};

uint64_t splitmix(uint64_t& x) {
  uint64_t z = (x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/// The q-quantile of sorted `v` (nearest rank), in µs from ns.
double quantile_us(const std::vector<int64_t>& v, double q) {
  if (v.empty()) return 0;
  size_t i = static_cast<size_t>(q * static_cast<double>(v.size() - 1) + 0.5);
  return static_cast<double>(v[std::min(i, v.size() - 1)]) / 1e3;
}

struct row {
  uint64_t blocks = 0;
  uint32_t workers = 0;
  uint32_t prompt_tokens = 0;
  uint32_t queries = 0;
  double p50_us = 0, p99_us = 0, max_us = 0;
  double index_p50_us = 0, index_p99_us = 0;
  double policy_p50_us = 0, policy_p99_us = 0;
  double bytes_per_block = 0;
  uint64_t index_bytes = 0;
  uint64_t entries = 0;
  double build_s = 0;
  double mean_overlap_blocks = 0;  ///< of the best worker, per query
};

row run_one(const bench_router_opts& o, uint64_t blocks, uint32_t workers) {
  const uint32_t len = std::max<uint32_t>(1, o.prompt_tokens / o.block_tokens);
  uint64_t rng = o.seed * 1000003 + blocks * 31 + workers;
  // Conversations: `len` blocks each, the last one shorter, on two workers.
  std::vector<std::vector<uint64_t>> convs;
  for (uint64_t left = blocks; left > 0;) {
    const uint64_t n = std::min<uint64_t>(left, len);
    std::vector<uint64_t> c(n);
    for (auto& h : c)
      h = splitmix(rng);
    convs.push_back(std::move(c));
    left -= n;
  }
  kv_index idx;
  const int64_t t0 = now_ns();
  for (const auto& c : convs) {
    const auto a = static_cast<worker_id>(splitmix(rng) % workers);
    const auto b =
        workers > 1 ? static_cast<worker_id>((a + 1 + splitmix(rng) % (workers - 1)) % workers) : a;
    idx.stored(a, c);
    idx.stored(b, c);
  }
  row r;
  r.build_s = static_cast<double>(now_ns() - t0) / 1e9;
  r.blocks = idx.blocks();
  r.workers = workers;
  r.prompt_tokens = len * o.block_tokens;
  r.queries = o.queries;
  r.entries = idx.entries();
  r.index_bytes = idx.memory_bytes();
  r.bytes_per_block = r.blocks ? static_cast<double>(r.index_bytes) / r.blocks : 0;

  // The cluster: workers [0, workers/2) decode, the rest prefill (at least one decode).
  const uint32_t n_decode = std::max<uint32_t>(1, workers / 2);
  std::vector<route_candidate> dc(n_decode), pc(workers - n_decode);
  for (uint32_t w = 0; w < workers; ++w) {
    route_candidate c;
    c.id = w;
    c.active = static_cast<uint32_t>(splitmix(rng) % 64);
    c.queued_tokens = splitmix(rng) % 8192;
    if (w < n_decode)
      dc[w] = c;
    else
      pc[w - n_decode] = c;
  }
  cost_model model;
  model.kv_bytes_per_block = 2 << 20;
  const fetch_settings fetch;  // the router's default: a possible fetch counts as reuse

  // Query prompts, made before timing.
  std::vector<std::vector<uint64_t>> prompts(o.queries);
  for (auto& p : prompts) {
    p.resize(len);
    const auto kind = splitmix(rng) % 6;
    const auto& c = convs[splitmix(rng) % convs.size()];
    size_t shared = 0;
    if (kind < 3)
      shared = c.size();
    else if (kind < 5)
      shared = splitmix(rng) % (c.size() + 1);
    for (size_t i = 0; i < len; ++i)
      p[i] = i < shared ? c[i] : splitmix(rng);
  }
  const size_t warmup = std::min<size_t>(200, prompts.size());
  std::vector<int64_t> total, index, policy;
  total.reserve(prompts.size());
  index.reserve(prompts.size());
  policy.reserve(prompts.size());
  uint64_t best_overlap_sum = 0;
  volatile size_t sink = 0;
  for (size_t q = 0; q < warmup + prompts.size(); ++q) {
    const auto& p = prompts[q % prompts.size()];
    const int64_t a = now_ns();
    auto ov = idx.overlap(p);
    const int64_t b = now_ns();
    // Overlap into the candidates (both lists are by id, as is the answer).
    for (auto& c : dc)
      c.overlap_blocks = 0;
    for (auto& c : pc)
      c.overlap_blocks = 0;
    uint32_t best = 0;
    for (auto [w, n] : ov) {
      if (w < n_decode)
        dc[w].overlap_blocks = n;
      else
        pc[w - n_decode].overlap_blocks = n;
      best = std::max(best, n);
    }
    auto plan = plan_route(dc, pc, r.prompt_tokens, o.block_tokens, 0, model, &fetch);
    const int64_t c = now_ns();
    sink = sink + (plan.decode ? *plan.decode : 0);
    if (q < warmup) continue;
    index.push_back(b - a);
    policy.push_back(c - b);
    total.push_back(c - a);
    best_overlap_sum += best;
  }
  (void)sink;
  std::sort(total.begin(), total.end());
  std::sort(index.begin(), index.end());
  std::sort(policy.begin(), policy.end());
  r.p50_us = quantile_us(total, 0.5);
  r.p99_us = quantile_us(total, 0.99);
  r.max_us = total.empty() ? 0 : static_cast<double>(total.back()) / 1e3;
  r.index_p50_us = quantile_us(index, 0.5);
  r.index_p99_us = quantile_us(index, 0.99);
  r.policy_p50_us = quantile_us(policy, 0.5);
  r.policy_p99_us = quantile_us(policy, 0.99);
  r.mean_overlap_blocks =
      prompts.empty() ? 0
                      : static_cast<double>(best_overlap_sum) / static_cast<double>(prompts.size());
  return r;
}

}  // namespace

command add_bench_router(CLI::App& app) {
  auto o = std::make_shared<bench_router_opts>();
  app.add_option("--blocks", o->blocks, "Distinct blocks in the index, one row set each")
      ->capture_default_str()
      ->check(CLI::Range(uint64_t{1}, uint64_t{100'000'000}));
  app.add_option("--workers", o->workers, "Workers holding them (half decode, half prefill)")
      ->capture_default_str()
      ->check(CLI::Range(1u, 4096u));
  app.add_option("--prompt-tokens", o->prompt_tokens, "Tokens of each query prompt")
      ->capture_default_str()
      ->check(CLI::Range(1u, 1u << 20));
  app.add_option("--block-tokens", o->block_tokens, "Tokens per KV block")
      ->capture_default_str()
      ->check(CLI::Range(1u, 4096u));
  app.add_option("--queries", o->queries, "Timed decisions per row")
      ->capture_default_str()
      ->check(CLI::Range(1u, 10'000'000u));
  app.add_option("--seed", o->seed, "Seed of the synthetic hashes and loads")
      ->capture_default_str();
  app.add_flag("--json", o->json, "Print JSON ({\"rows\": [...], \"machine\": {...}})");
  return [o]() -> int {
    if (o->prompt_tokens < o->block_tokens) {
      std::fprintf(stderr,
                   "tokenmill bench-router: --prompt-tokens %u is shorter than one block "
                   "(--block-tokens %u); expected at least one full block\n",
                   o->prompt_tokens, o->block_tokens);
      return 2;
    }
    auto steal0 = cpu_steal_jiffies();
    std::vector<row> rows;
    for (auto b : o->blocks)
      for (auto w : o->workers) {
        rows.push_back(run_one(*o, b, w));
        if (!o->json)
          std::fprintf(stderr, "bench-router: %lu blocks, %u workers done\n",
                       static_cast<unsigned long>(b), w);
      }
    auto steal1 = cpu_steal_jiffies();
    const double steal = steal1.second > steal0.second
                             ? 100.0 * static_cast<double>(steal1.first - steal0.first) /
                                   static_cast<double>(steal1.second - steal0.second)
                             : 0;
    if (o->json) {
      nlohmann::ordered_json j;
      j["rows"] = nlohmann::ordered_json::array();
      for (const auto& r : rows)
        j["rows"].push_back({{"blocks", r.blocks},
                             {"workers", r.workers},
                             {"prompt_tokens", r.prompt_tokens},
                             {"queries", r.queries},
                             {"p50_us", r.p50_us},
                             {"p99_us", r.p99_us},
                             {"max_us", r.max_us},
                             {"index_p50_us", r.index_p50_us},
                             {"index_p99_us", r.index_p99_us},
                             {"policy_p50_us", r.policy_p50_us},
                             {"policy_p99_us", r.policy_p99_us},
                             {"bytes_per_block", r.bytes_per_block},
                             {"index_bytes", r.index_bytes},
                             {"entries", r.entries},
                             {"build_s", r.build_s},
                             {"mean_overlap_blocks", r.mean_overlap_blocks}});
      j["machine"] = {{"cpu", cpu_model_name()},
                      {"hardware_threads", std::thread::hardware_concurrency()},
                      {"steal_percent", steal},
                      {"loadavg_1min", loadavg_1min()}};
      std::printf("%s\n", j.dump(2).c_str());
      return 0;
    }
    std::printf("%10s %8s %7s %9s %9s %9s %9s %9s %10s %8s\n", "blocks", "workers", "prompt",
                "p50_us", "p99_us", "idx_p50", "idx_p99", "pol_p99", "bytes/blk", "build_s");
    for (const auto& r : rows)
      std::printf("%10lu %8u %7u %9.2f %9.2f %9.2f %9.2f %9.2f %10.1f %8.2f\n",
                  static_cast<unsigned long>(r.blocks), r.workers, r.prompt_tokens, r.p50_us,
                  r.p99_us, r.index_p50_us, r.index_p99_us, r.policy_p99_us, r.bytes_per_block,
                  r.build_s);
    std::printf("cpu: %s, %u hardware threads, steal %.1f%%, load average %.2f\n",
                cpu_model_name().c_str(), std::thread::hardware_concurrency(), steal,
                loadavg_1min());
    return 0;
  };
}

}  // namespace tokenmill::app
