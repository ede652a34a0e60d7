// Worker series from the supervisor's status: the second KV tier's per-level series, the
// fetch series and the chunk cache counters.
#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "frontend/frontend_metrics.hpp"
#include "frontend/workload.hpp"

using namespace tokenmill;

TEST_CASE("worker metrics: one series per second-tier level", "[metrics][kv_tier]") {
  worker_status w;
  w.kind = role::decode;
  w.name = "decode0";
  w.node = "n0";
  w.kv_total = 8;
  w.tiers = {kv_tier_status{"host", 3, 4096, 1024, 2, 5, 16},
             kv_tier_status{"disk", 1, 2048, 512, 0, 7, 64}};
  worker_status plain = w;
  plain.name = "decode1";
  plain.tiers.clear();
  metrics::registry r;
  export_worker_metrics(r, {w, plain});
  auto text = r.expose();
  INFO(text);
  const std::string l = "node=\"n0\",role=\"decode\",";
  CHECK_THAT(text, Catch::Contains("tokenmill_kv_tier_hits_total{" + l +
                                   "tier=\"host\",worker=\"decode0\"} 3"));
  CHECK_THAT(text, Catch::Contains("tokenmill_kv_tier_bytes_total{direction=\"in\"," + l +
                                   "tier=\"disk\",worker=\"decode0\"} 2048"));
  CHECK_THAT(text, Catch::Contains("tokenmill_kv_tier_bytes_total{direction=\"out\"," + l +
                                   "tier=\"host\",worker=\"decode0\"} 1024"));
  CHECK_THAT(text, Catch::Contains("tokenmill_kv_tier_evictions_total{" + l +
                                   "tier=\"host\",worker=\"decode0\"} 2"));
  CHECK_THAT(text, Catch::Contains("tokenmill_kv_tier_blocks_used{" + l +
                                   "tier=\"disk\",worker=\"decode0\"} 7"));
  CHECK_THAT(text, Catch::Contains("tokenmill_kv_tier_blocks_capacity{" + l +
                                   "tier=\"disk\",worker=\"decode0\"} 64"));
  // A worker without a tier has no tier series.
  CHECK(text.find("tier=\"host\",worker=\"decode1\"") == std::string::npos);
}

TEST_CASE("worker metrics: KV fetched from and served to peers", "[metrics][kv_fetch]") {
  worker_status p;
  p.kind = role::prefill;
  p.name = "prefill0";
  p.node = "n0";
  p.fetch = kv_fetch_status{5, 3, 1, 12, 12288, 2, 1'500'000'000, 0, 0, 0, 0};
  worker_status d;
  d.kind = role::decode;
  d.name = "decode0";
  d.node = "n0";
  d.fetch.served = 4;
  d.fetch.served_blocks = 14;
  d.fetch.served_bytes = 14336;
  d.fetch.serve_failures = 2;
  worker_status sup;
  sup.kind = role::supervisor;
  sup.name = "supervisor";
  sup.node = "n0";
  metrics::registry r;
  export_worker_metrics(r, {p, d, sup});
  auto text = r.expose();
  INFO(text);
  const std::string pl = "node=\"n0\",outcome=\"", pw = "\",role=\"prefill\",worker=\"prefill0\"}";
  CHECK_THAT(text, Catch::Contains("tokenmill_kv_fetches_total{" + pl + "started" + pw + " 5"));
  CHECK_THAT(text, Catch::Contains("tokenmill_kv_fetches_total{" + pl + "completed" + pw + " 3"));
  CHECK_THAT(text, Catch::Contains("tokenmill_kv_fetches_total{" + pl + "failed" + pw + " 1"));
  const std::string l = "{node=\"n0\",role=\"prefill\",worker=\"prefill0\"}";
  CHECK_THAT(text, Catch::Contains("tokenmill_kv_fetch_blocks_total" + l + " 12"));
  CHECK_THAT(text, Catch::Contains("tokenmill_kv_fetch_bytes_total" + l + " 12288"));
  CHECK_THAT(text, Catch::Contains("tokenmill_kv_fetch_missing_blocks_total" + l + " 2"));
  CHECK_THAT(text, Catch::Contains("tokenmill_kv_fetch_seconds_total" + l + " 1.5"));
  const std::string dl = "{node=\"n0\",role=\"decode\",worker=\"decode0\"}";
  CHECK_THAT(text, Catch::Contains("tokenmill_kv_fetch_served_total{node=\"n0\",outcome=\"ok\","
                                   "role=\"decode\",worker=\"decode0\"} 4"));
  CHECK_THAT(text, Catch::Contains("tokenmill_kv_fetch_served_total{node=\"n0\",outcome=\"failed\","
                                   "role=\"decode\",worker=\"decode0\"} 2"));
  CHECK_THAT(text, Catch::Contains("tokenmill_kv_fetch_served_blocks_total" + dl + " 14"));
  CHECK_THAT(text, Catch::Contains("tokenmill_kv_fetch_served_bytes_total" + dl + " 14336"));
  // A worker that never fetched exposes its series at 0 (a counter that exists from the start).
  CHECK_THAT(text, Catch::Contains("tokenmill_kv_fetch_blocks_total" + dl + " 0"));
  // Only KV workers have fetch series.
  CHECK(text.find("tokenmill_kv_fetch_blocks_total{node=\"n0\",role=\"supervisor\"") ==
        std::string::npos);

  // Counts only rise: a later status with more fetches advances the series.
  p.fetch.started = 7;
  p.fetch.time_ns = 2'000'000'000;
  export_worker_metrics(r, {p});
  text = r.expose();
  CHECK_THAT(text, Catch::Contains("tokenmill_kv_fetches_total{" + pl + "started" + pw + " 7"));
  CHECK_THAT(text, Catch::Contains("tokenmill_kv_fetch_seconds_total" + l + " 2"));
}

TEST_CASE("worker metrics: chunk cache tokens, summed by bench over http", "[metrics][chunks]") {
  worker_status p;
  p.kind = role::prefill;
  p.name = "prefill0";
  p.node = "n0";
  p.chunk_lookup_tokens = 120;
  p.chunk_hit_tokens = 90;
  p.chunk_recomputed_tokens = 14;
  worker_status d = p;
  d.kind = role::decode;
  d.name = "decode0";
  d.chunk_lookup_tokens = 30;
  d.chunk_hit_tokens = 10;
  d.chunk_recomputed_tokens = 2;
  metrics::registry r;
  export_worker_metrics(r, {p, d});
  const auto text = r.expose();
  INFO(text);
  const std::string l = "{node=\"n0\",role=\"prefill\",worker=\"prefill0\"}";
  CHECK_THAT(text, Catch::Contains("tokenmill_chunk_lookup_tokens_total" + l + " 120"));
  CHECK_THAT(text, Catch::Contains("tokenmill_chunk_hit_tokens_total" + l + " 90"));
  CHECK_THAT(text, Catch::Contains("tokenmill_chunk_recomputed_tokens_total" + l + " 14"));
  // What `tokenmill bench --backend http --workload rag` reads: the sum over the workers.
  CHECK(workload::metric_sum(text, "tokenmill_chunk_lookup_tokens_total") == 150);
  CHECK(workload::metric_sum(text, "tokenmill_chunk_hit_tokens_total") == 100);
  CHECK(workload::metric_sum(text, "tokenmill_chunk_recomputed_tokens_total") == 16);
}
