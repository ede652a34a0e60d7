// The engine profile (cluster/engine_profile.hpp): its JSON round trip, every bad input
// named by its field, the saturation point and the interpolation the planner reads.
#include <string>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "cluster/engine_profile.hpp"
#include "test_profile_fixture.hpp"

using namespace tokenmill;
using tokenmill::testing::analytic_profile;

namespace {

/// The error message of parsing `text`, or "" when it parsed.
std::string parse_error(const std::string& text) {
  auto r = parse_profile(text, "p.json");
  return r ? std::string() : r.error().message;
}

/// The analytic profile as JSON with `edit` applied.
template <class F>
std::string edited(F edit) {
  auto j = nlohmann::json::parse(profile_to_json(analytic_profile()));
  edit(j);
  return j.dump();
}

}  // namespace

TEST_CASE("profile: JSON round trip keeps every field the planner reads", "[plan]") {
  auto p = analytic_profile();
  auto r = parse_profile(profile_to_json(p), "p.json");
  REQUIRE(r);
  CHECK(r->version == engine_profile_version);
  CHECK(r->engine == "sim");
  CHECK(r->has_sim);
  CHECK(r->sim.max_context == p.sim.max_context);
  CHECK(r->layout.layers == p.layout.layers);
  CHECK(r->layout.block_tokens == p.layout.block_tokens);
  CHECK(r->kv_max_blocks == p.kv_max_blocks);
  CHECK(r->cpu == "test cpu");
  REQUIRE(r->prefill.size() == p.prefill.size());
  REQUIRE(r->decode.size() == p.decode.size());
  for (size_t i = 0; i < p.prefill.size(); ++i) {
    CHECK(r->prefill[i].chunk_tokens == p.prefill[i].chunk_tokens);
    CHECK(r->prefill[i].seconds == Approx(p.prefill[i].seconds));
  }
  CHECK(r->saturation_chunk == p.saturation_chunk);
}

TEST_CASE("profile: bad input is refused naming the field", "[plan]") {
  CHECK_THAT(parse_error(""), Catch::Contains("p.json: not JSON"));
  CHECK_THAT(parse_error("{\"version\": 1,"), Catch::Contains("not JSON"));
  CHECK_THAT(parse_error("[1, 2]"), Catch::Contains("expected a JSON object"));
  CHECK_THAT(parse_error(edited([](auto& j) { j.erase("version"); })),
             Catch::Contains("p.json: version: missing"));
  CHECK_THAT(parse_error(edited([](auto& j) { j["version"] = 7; })),
             Catch::Contains("version: 7 is not supported"));
  CHECK_THAT(parse_error(edited([](auto& j) { j["engine"]["kind"] = "tpu"; })),
             Catch::Contains("engine.kind: 'tpu' is not an engine"));
  CHECK_THAT(parse_error(edited([](auto& j) {
               j["engine"]["kind"] = "cpu";
               j["engine"]["model"] = "";
             })),
             Catch::Contains("engine.model: empty"));
  CHECK_THAT(parse_error(edited([](auto& j) { j["engine"].erase("sim"); })),
             Catch::Contains("engine.sim: missing"));
  CHECK_THAT(parse_error(edited([](auto& j) { j["layout"]["dtype_bytes"] = 3; })),
             Catch::Contains("layout"));
  CHECK_THAT(parse_error(edited([](auto& j) { j["layout"]["layers"] = "two"; })),
             Catch::Contains("layout.layers: expected a whole number"));
  CHECK_THAT(parse_error(edited([](auto& j) { j["decode"][1]["step_seconds"] = -0.01; })),
             Catch::Contains("decode[1].step_seconds: -0.01 is out of range"));
  CHECK_THAT(parse_error(edited([](auto& j) { j["decode"][0].erase("batch"); })),
             Catch::Contains("decode[0].batch: missing"));
  CHECK_THAT(parse_error(edited([](auto& j) { j["prefill"] = nlohmann::json::array(); })),
             Catch::Contains("prefill: missing or empty"));
  CHECK_THAT(parse_error(edited([](auto& j) { j["prefill"][2]["seconds"] = 0; })),
             Catch::Contains("prefill[2].seconds"));
  // Several problems: one line each.
  auto many = parse_error(edited([](auto& j) {
    j["engine"]["threads"] = 0;
    j["decode"][0]["batch"] = 0;
  }));
  CHECK_THAT(many, Catch::Contains("engine.threads") && Catch::Contains("decode[0].batch"));
}

TEST_CASE("profile: the saturation point is the smallest chunk at 90% of the peak", "[plan]") {
  // 5 ms per call + 50 us per token: tokens/s = c / (0.005 + 50e-6 c), peak at the largest
  // measured chunk; 90% of it first at 1024 (18221 of 19069 tokens/s; 512: 16732, 88%).
  auto p = analytic_profile();
  auto s = find_prefill_saturation(p.prefill, 0.9);
  REQUIRE(s);
  CHECK(s->chunk_tokens == 1024);
  CHECK(s->peak_tokens_per_s == Approx(2048 / (0.005 + 50e-6 * 2048)));
  CHECK(find_prefill_saturation(p.prefill, 0.5)->chunk_tokens == 128);
  CHECK_FALSE(find_prefill_saturation(p.prefill, 0));
  CHECK_FALSE(find_prefill_saturation(p.prefill, 1.5));
  // No per-call overhead: every chunk is saturated.
  auto flat = analytic_profile({0.0, 50e-6, 0.01, 0, 0});
  CHECK(find_prefill_saturation(flat.prefill, 0.9)->chunk_tokens == 64);
  // The chunked prompts alone give the same answer (every chunk divides the prompts).
  std::vector<profile_prefill_point> chunked;
  for (const auto& x : p.prefill)
    if (x.prompt_tokens == 2048) chunked.push_back(x);
  CHECK(find_prefill_saturation(chunked, 0.9)->chunk_tokens == 1024);
  CHECK_FALSE(find_prefill_saturation({}, 0.9));
  // One noisy fast single call does not move the point: its chunk's other calls outweigh it.
  auto noisy = p.prefill;
  for (auto& x : noisy)
    if (x.chunk_tokens == 64 && x.prompt_tokens == 64) x.seconds /= 4;
  CHECK(find_prefill_saturation(noisy, 0.9)->chunk_tokens == 1024);
}

TEST_CASE("profile: prefill and decode times between and beyond the measured points", "[plan]") {
  auto p = analytic_profile();
  // Measured points come back exactly.
  CHECK(profile_prefill_seconds(p, 256, 2048) == Approx(8 * 0.005 + 50e-6 * 2048));
  CHECK(profile_prefill_seconds(p, 512, 512) == Approx(0.005 + 50e-6 * 512));
  // A prompt shorter than the chunk is one call of its length (between single calls).
  CHECK(profile_prefill_seconds(p, 2048, 100) == Approx(0.005 + 50e-6 * 100));
  // Longer than measured: extrapolated along the last segment (linear in the length).
  CHECK(profile_prefill_seconds(p, 256, 4096) > profile_prefill_seconds(p, 256, 2048));
  // Decode: exact on the grid, linear between.
  CHECK(profile_decode_seconds(p, 8, 512) == Approx(0.010 + 100e-6 * 8 + 5e-9 * 8 * 512));
  CHECK(profile_decode_seconds(p, 20, 1024) == Approx(0.010 + 100e-6 * 20 + 5e-9 * 20 * 1024));
  CHECK(profile_decode_seconds(p, 1, 100) > 0);
  CHECK(profile_chunks(p).front() == 64);
  CHECK(profile_max_batch(p) == 128);
  // A disturbed profile (batch 1 measured slower than batch 8, the longer context faster)
  // never makes a bigger batch or a longer context cheaper, inside or beyond the points.
  engine_profile noisy = p;
  noisy.decode = {{1, 128, 0.006}, {8, 128, 0.004}, {1, 512, 0.005}, {8, 512, 0.0045}};
  double last = 0;
  for (double b : {1.0, 2.0, 4.0, 8.0, 16.0}) {
    double s = profile_decode_seconds(noisy, b, 1024);
    CHECK(s >= last);
    CHECK(s >= 0.006);
    last = s;
  }
  CHECK(profile_decode_seconds(noisy, 4, 2048) >= profile_decode_seconds(noisy, 4, 256));
}

TEST_CASE("profile: the router's prefill speed samples the curve at the worker's chunk",
          "[plan][routing_policy]") {
  auto p = analytic_profile();
  auto s = profile_speed(p, 256, "p.json");
  CHECK(s.source == "p.json");
  CHECK(s.tokens_per_s == Approx(p.peak_prefill_tokens_per_s));
  REQUIRE(s.points.size() >= 9);  // 16 ... 8192 (the model's context)
  CHECK(s.points.front().first == 16);
  CHECK(s.points.back().first == 8192);
  for (size_t i = 1; i < s.points.size(); ++i) {
    CHECK(s.points[i].first > s.points[i - 1].first);
    CHECK(s.points[i].second >= s.points[i - 1].second);
  }
  // A measured point comes back exactly, and the cost model reads the same curve.
  CHECK(uncached_prefill_seconds(s, 2048, 0) == Approx(profile_prefill_seconds(p, 256, 2048)));
  CHECK(uncached_prefill_seconds(s, 2048, 1024) ==
        Approx(profile_prefill_seconds(p, 256, 2048) - profile_prefill_seconds(p, 256, 1024)));
  // A smaller chunk pays more per-call overhead on the same prompt.
  auto small = profile_speed(p, 64, "p.json");
  CHECK(uncached_prefill_seconds(small, 2048, 0) > uncached_prefill_seconds(s, 2048, 0));
  // No prefill points: no curve, the rate stays the configured default.
  auto empty = p;
  empty.prefill.clear();
  empty.peak_prefill_tokens_per_s = 0;
  auto none = profile_speed(empty, 256, "p.json");
  CHECK(none.points.empty());
  CHECK(none.tokens_per_s == prefill_speed{}.tokens_per_s);
}
