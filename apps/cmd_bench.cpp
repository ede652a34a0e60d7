// `tokenmill bench`: closed-loop load generator. C client threads each run requests back
// to back until N requests are done; figures are measured at the client.
#include <atomic>
#include <cstdio>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "apps/commands.hpp"
#include "common/clock.hpp"
#include "common/stats.hpp"
#include "frontend/client.hpp"

namespace tokenmill::app {
namespace {

struct bench_opts {
  std::string connect = "127.0.0.1:7700";
  uint32_t concurrency = 4;
  uint32_t requests = 32;
  uint32_t warmup = 0;
  uint32_t input_len = 128;
  uint32_t output_len = 64;
  uint64_t seed = 1;
  bool json = false;
  double step_ms = 0;               ///< configured decode step, for the overhead ratio
  double prefill_us_per_token = 0;  ///< configured prefill cost, for the runtime share
};

nlohmann::ordered_json pct(const summary_stats& s) {
  return {{"p50", s.p50}, {"p90", s.p90}, {"p99", s.p99}, {"mean", s.mean}};
}

}  // namespace

command add_bench(CLI::App& app) {
  auto o = std::make_shared<bench_opts>();
  app.add_option("--connect", o->connect, "Gateway address HOST:PORT")->capture_default_str();
  app.add_option("--concurrency", o->concurrency, "Concurrent streams")
      ->check(CLI::Range(1u, 1024u))
      ->capture_default_str();
  app.add_option("--requests", o->requests, "Measured requests")
      ->check(CLI::Range(1u, 1u << 24))
      ->capture_default_str();
  app.add_option("--warmup", o->warmup, "Requests run before measuring")->capture_default_str();
  app.add_option("--input-len", o->input_len, "Prompt tokens")
      ->check(CLI::Range(1u, 1u << 20))
      ->capture_default_str();
  app.add_option("--output-len", o->output_len, "max_tokens")
      ->check(CLI::Range(1u, 1u << 20))
      ->capture_default_str();
  app.add_option("--seed", o->seed, "Prompt generator seed")->capture_default_str();
  app.add_flag("--json", o->json, "Print one JSON object");
  app.add_option("--step-ms", o->step_ms,
                 "Configured decode step (ms): report ITL divided by it (runtime overhead)");
  app.add_option("--prefill-us-per-token", o->prefill_us_per_token,
                 "Configured prefill cost (µs/token): report TTFT minus the modelled prefill");
  return [o]() -> int {
    auto ep = parse_endpoint(o->connect);
    if (!ep) {
      std::fprintf(stderr, "tokenmill bench: %s\n", ep.error().message.c_str());
      return 1;
    }
    std::atomic<uint32_t> next{0};
    std::atomic<uint32_t> failures{0};
    std::mutex mtx;
    std::vector<double> ttft, itl, e2e, tpot;
    std::map<std::string, double> stage_sum;
    std::vector<std::string> stage_order;
    uint64_t tokens = 0;
    std::string first_error;
    uint32_t total = o->warmup + o->requests;
    int64_t t_start = 0;
    std::atomic<int64_t> t_measure{0};
    auto worker = [&](uint32_t tid) {
      auto c = client::connect(ep->first, ep->second, 10);
      if (!c) {
        std::lock_guard<std::mutex> lock(mtx);
        if (first_error.empty()) first_error = c.error().message;
        failures += 1;
        return;
      }
      uint32_t vocab = (*c)->model().vocab_size;
      for (;;) {
        uint32_t i = next.fetch_add(1);
        if (i >= total) return;
        if (i == o->warmup) t_measure = now_ns();
        std::mt19937_64 rng(o->seed * 1000003 + i);
        generate_params p;
        p.has_text = false;
        for (uint32_t k = 0; k < o->input_len; ++k)
          p.token_ids.push_back(259 + static_cast<int64_t>(rng() % (vocab - 259)));
        p.max_tokens = o->output_len;
        auto r = (*c)->generate(p, nullptr, 600);
        std::lock_guard<std::mutex> lock(mtx);
        if (!r) {
          ++failures;
          if (first_error.empty()) first_error = r.error().message;
          continue;
        }
        if (i < o->warmup) continue;
        ttft.push_back(r->ttft_ms);
        itl.insert(itl.end(), r->itl_ms.begin(), r->itl_ms.end());
        double e = (r->done_ns - r->sent_ns) / 1e6;
        e2e.push_back(e);
        if (r->tokens.size() > 1)
          tpot.push_back((e - r->ttft_ms) / static_cast<double>(r->tokens.size() - 1));
        tokens += r->tokens.size();
        for (const auto& s : r->stages) {
          if (!stage_sum.count(s.name)) stage_order.push_back(s.name);
          stage_sum[s.name] += s.ms;
        }
      }
    };
    t_start = now_ns();
    t_measure = t_start;
    std::vector<std::thread> threads;
    for (uint32_t t = 0; t < o->concurrency; ++t)
      threads.emplace_back(worker, t);
    for (auto& t : threads)
      t.join();
    double secs = (now_ns() - t_measure.load()) / 1e9;
    auto n = ttft.size();
    if (n == 0) {
      std::fprintf(stderr, "tokenmill bench: no request succeeded (%u failed): %s\n",
                   failures.load(), first_error.c_str());
      return 1;
    }
    auto st_ttft = summarize(ttft), st_itl = summarize(itl), st_e2e = summarize(e2e),
         st_tpot = summarize(tpot);
    nlohmann::ordered_json j;
    j["concurrency"] = o->concurrency;
    j["requests"] = n;
    j["failed"] = failures.load();
    j["input_len"] = o->input_len;
    j["output_len"] = o->output_len;
    j["duration_s"] = secs;
    j["ttft_ms"] = pct(st_ttft);
    j["itl_ms"] = pct(st_itl);
    j["tpot_ms"] = pct(st_tpot);
    j["e2e_ms"] = pct(st_e2e);
    j["requests_per_s"] = n / secs;
    j["output_tokens_per_s"] = tokens / secs;
    nlohmann::ordered_json stages = nlohmann::ordered_json::object();
    for (const auto& name : stage_order)
      stages[name] = stage_sum[name] / static_cast<double>(n);
    j["ttft_stages_mean_ms"] = stages;
    if (o->step_ms > 0)
      j["itl_over_step"] = {{"p50", st_itl.p50 / o->step_ms}, {"p99", st_itl.p99 / o->step_ms}};
    if (o->prefill_us_per_token > 0) {
      double modelled = o->input_len * o->prefill_us_per_token / 1e3;
      j["prefill_modelled_ms"] = modelled;
      j["ttft_runtime_share_ms"] = {{"p50", st_ttft.p50 - modelled},
                                    {"mean", st_ttft.mean - modelled}};
    }
    if (o->json) {
      std::printf("%s\n", j.dump().c_str());
    } else {
      std::printf("%s\n", j.dump(2).c_str());
    }
    return failures.load() == 0 ? 0 : 1;
  };
}

}  // namespace tokenmill::app
