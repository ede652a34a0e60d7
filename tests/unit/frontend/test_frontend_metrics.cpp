// Worker series from the supervisor's status: the second KV tier's per-level series.
#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "frontend/frontend_metrics.hpp"

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
