#include <catch2/catch.hpp>

#include <cstdint>
#include <optional>
#include <string>

#include "cluster/serving_defaults.hpp"

using namespace tokenmill;

namespace {

constexpr uint64_t KiB = 1024, MiB = KiB * 1024, GiB = MiB * 1024;

/// The `125m` preset's KV with an f16 cache: 12 layers x K|V x 4 heads x 16 tokens x 64 x 2 B.
kv_demand demand_125m(uint32_t prefill_workers, uint32_t decode_workers) {
  kv_demand d;
  d.block_bytes = 12 * 2 * 4 * 16 * 64 * 2;  // 192 KiB
  d.block_tokens = 16;
  d.max_context = 2048;  // 128 blocks per sequence
  d.prefill_workers = prefill_workers;
  d.decode_workers = decode_workers;
  d.prefill_max_seqs = 16;
  d.decode_max_batch = 64;
  return d;
}

}  // namespace

TEST_CASE("memory sizes parse with binary and decimal units", "[serving]") {
  CHECK(*parse_memory_size("4096") == 4096);
  CHECK(*parse_memory_size("512B") == 512);
  CHECK(*parse_memory_size("512M") == 512 * MiB);
  CHECK(*parse_memory_size("512MiB") == 512 * MiB);
  CHECK(*parse_memory_size("2g") == 2 * GiB);
  CHECK(*parse_memory_size("2 GiB") == 2 * GiB);
  CHECK(*parse_memory_size("1.5G") == 3 * GiB / 2);
  CHECK(*parse_memory_size("1GB") == 1000000000ull);
  CHECK(*parse_memory_size("64kb") == 64000);
  CHECK(*parse_memory_size("1T") == 1024 * GiB);
  CHECK(*parse_memory_size(" 8K ") == 8 * KiB);
}

TEST_CASE("bad memory sizes are refused with the text and what is expected", "[serving]") {
  for (const char* text : {"", "G", "-1G", "1.2.3G", "12X", "1GiBs", "0.5B", "0", ".", "1e9",
                           "1G extra", "100000000T"}) {
    INFO(text);
    auto r = parse_memory_size(text);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == errc::invalid_request);
    CHECK_THAT(r.error().message, Catch::Contains(std::string("'") + text + "'"));
  }
  CHECK_THAT(parse_memory_size("12X").error().message, Catch::Contains("e.g. 512M or 2GiB"));
  CHECK_THAT(parse_memory_size("0").error().message, Catch::Contains("at least 1 byte"));
  CHECK_THAT(parse_memory_size("100000000T").error().message, Catch::Contains("too large"));
}

TEST_CASE("memory sizes format for messages", "[serving]") {
  CHECK(format_memory_size(512) == "512 B");
  CHECK(format_memory_size(192 * KiB) == "192.0 KiB");
  CHECK(format_memory_size(768 * MiB) == "768.0 MiB");
  CHECK(format_memory_size(3 * GiB / 2) == "1.50 GiB");
}

TEST_CASE("the topology splits the cores between the workers", "[serving]") {
  SECTION("by default one prefill and one decode worker sharing every core (cpu engine)") {
    auto t = choose_topology(2, true, {}, {}, {});
    CHECK(t.prefill_workers == 1);
    CHECK(t.decode_workers == 1);
    CHECK(t.shared_pool);
    CHECK(t.threads == 2);
    CHECK(choose_topology(64, true, {}, {}, {}).threads == 64);
    CHECK(choose_topology(0, true, {}, {}, {}).threads == 1);  // unknown core count
  }
  SECTION("own pools, or an engine that does not compute on the cores: half the cores each") {
    auto t = choose_topology(2, false, {}, {}, {});
    CHECK(!t.shared_pool);
    CHECK(t.threads == 1);
    t = choose_topology(2, true, {}, {}, {}, false, false);
    CHECK(!t.shared_pool);
    CHECK(t.threads == 1);
    CHECK(choose_topology(64, true, {}, {}, {}, false, false).threads == 32);
  }
  SECTION("what the user gives is kept and the cores split across it") {
    auto t = choose_topology(2, true, 0u, {}, {});
    CHECK(t.prefill_workers == 0);
    CHECK(t.threads == 2);
    CHECK(!choose_topology(2, true, 0u, {}, {}, false, true).shared_pool);  // one worker
    t = choose_topology(16, true, 0u, 2u, {}, false, false);
    CHECK(t.prefill_workers == 0);
    CHECK(t.decode_workers == 2);
    CHECK(t.threads == 8);
    t = choose_topology(2, true, {}, {}, 3u);
    CHECK(t.threads == 3);
    t = choose_topology(2, true, 3u, 3u, {}, false, false);
    CHECK(t.threads == 1);  // more workers than cores: one each, never 0
  }
  SECTION("the shared pool as asked: every core, or the user's count") {
    auto t = choose_topology(2, true, {}, {}, {}, false, true);
    CHECK(t.shared_pool);
    CHECK(t.threads == 2);
    t = choose_topology(2, true, {}, {}, 3u, false, true);
    CHECK(t.shared_pool);
    CHECK(t.threads == 3);  // the pool's size
    t = choose_topology(8, true, 3u, 3u, {}, false, true);
    CHECK(t.shared_pool);
    CHECK(t.threads == 8);
    CHECK(!choose_topology(2, false, {}, {}, {}, false, true).shared_pool);  // sim, cuda
  }
  SECTION("a decode worker that prefills between its steps gets small chunks") {
    CHECK(choose_topology(2, true, 0u, {}, {}).local_prefill_chunk == aggregated_prefill_chunk);
    CHECK(choose_topology(2, true, 0u, {}, {}, true).local_prefill_chunk == 0);  // user's chunk
    CHECK(choose_topology(2, true, {}, {}, {}).local_prefill_chunk == 0);        // a prefill worker
    CHECK(choose_topology(2, false, 0u, {}, {}).local_prefill_chunk == 0);       // sim, cuda
  }
}

TEST_CASE("the default KV memory is what the workers can use, capped by the machine", "[serving]") {
  auto d = demand_125m(0, 1);
  const uint64_t seq = 128 * d.block_bytes;  // 24 MiB
  SECTION("a large machine holds a full batch of full-context sequences") {
    CHECK(default_kv_memory(d, 64 * GiB, 300 * MiB) == 64 * seq);
    auto both = demand_125m(1, 1);
    CHECK(default_kv_memory(both, 64 * GiB, 300 * MiB) == (64 + 16) * seq);
  }
  SECTION("a small machine gets a quarter of what the weights leave") {
    CHECK(default_kv_memory(d, 4 * GiB, 1 * GiB) == 3 * GiB / 4);
  }
  SECTION("never less than one full-context sequence per worker") {
    CHECK(default_kv_memory(d, 64 * MiB, 60 * MiB) == seq);
    CHECK(default_kv_memory(demand_125m(1, 2), 0 + 1, 0) == 3 * seq);
  }
  SECTION("unknown physical memory: what the workers can use") {
    CHECK(default_kv_memory(d, 0, 0) == 64 * seq);
  }
}

TEST_CASE("a KV budget is split by what each worker uses at once", "[serving]") {
  auto d = demand_125m(1, 1);
  SECTION("a given budget: decode gets max_batch shares, prefill max_seqs shares") {
    auto p = plan_kv_pools(d, 1 * GiB, 64 * GiB, 0);
    REQUIRE(p);
    // 1 GiB / 192 KiB = 5461 blocks; 64:16.
    CHECK(p->decode_blocks == 5461 * 64 / 80);
    CHECK(p->prefill_blocks == 5461 * 16 / 80);
    CHECK(p->budget_bytes == 1 * GiB);
    CHECK_FALSE(p->default_budget);
    CHECK_THAT(p->summary, Catch::Contains("1 decode x 4368 blocks (69888 tokens)"));
  }
  SECTION("several decode workers share it equally") {
    auto two = demand_125m(0, 2);
    auto p = plan_kv_pools(two, 1 * GiB, 64 * GiB, 0);
    REQUIRE(p);
    CHECK(p->decode_blocks == 5461 / 2);
    CHECK(p->prefill_blocks == 0);
  }
  SECTION("no budget: the default, marked as such") {
    auto p = plan_kv_pools(d, std::nullopt, 64 * GiB, 0);
    REQUIRE(p);
    CHECK(p->default_budget);
    CHECK(p->decode_blocks == 64 * 128);
    CHECK(p->prefill_blocks == 16 * 128);
    CHECK_THAT(p->summary, Catch::Contains("(default)"));
  }
  SECTION("a role with fixed blocks keeps them; the other gets the rest") {
    d.decode_blocks = 1000;
    auto p = plan_kv_pools(d, 1 * GiB, 64 * GiB, 0);
    REQUIRE(p);
    CHECK(p->decode_blocks == 1000);
    CHECK(p->prefill_blocks == 5461 - 1000);
    d.prefill_blocks = 7;
    p = plan_kv_pools(d, std::nullopt, 64 * GiB, 0);
    REQUIRE(p);
    CHECK(p->decode_blocks == 1000);
    CHECK(p->prefill_blocks == 7);  // fixed pools are the user's call, even below a sequence
  }
  SECTION("the default never starves a worker that fixed pools left without memory") {
    d.decode_blocks = 1 << 20;
    auto p = plan_kv_pools(d, std::nullopt, 0, 0);
    REQUIRE(p);
    CHECK(p->prefill_blocks == 128);
  }
}

TEST_CASE("KV budgets that cannot serve are refused with what is needed", "[serving]") {
  auto d = demand_125m(1, 1);
  SECTION("less than one full-context sequence per worker") {
    auto p = plan_kv_pools(d, 32 * MiB, 64 * GiB, 0);
    REQUIRE_FALSE(p);
    CHECK(p.error().code == errc::invalid_request);
    CHECK_THAT(p.error().message, Catch::Contains("KV memory 32.0 MiB"));
    CHECK_THAT(p.error().message, Catch::Contains("prefill worker 34 blocks"));
    CHECK_THAT(p.error().message, Catch::Contains("2048 tokens, 128 blocks"));
    CHECK_THAT(p.error().message, Catch::Contains("at least 48.0 MiB"));
  }
  SECTION("more than this machine holds") {
    auto p = plan_kv_pools(d, 10 * GiB, 8 * GiB, 0);
    REQUIRE_FALSE(p);
    CHECK_THAT(p.error().message, Catch::Contains("this machine has 8.00 GiB"));
  }
  SECTION("fixed pools beyond the machine") {
    d.decode_blocks = 1 << 20;  // 192 GiB
    auto p = plan_kv_pools(d, std::nullopt, 8 * GiB, 0);
    REQUIRE_FALSE(p);
    CHECK_THAT(p.error().message, Catch::Contains("1 decode x 1048576 blocks"));
  }
  SECTION("an empty layout") {
    d.block_bytes = 0;
    auto p = plan_kv_pools(d, 1 * GiB, 8 * GiB, 0);
    REQUIRE_FALSE(p);
    CHECK_THAT(p.error().message, Catch::Contains("empty blocks"));
  }
}
