// The planner's queueing model (cluster/plan_model.hpp) as plain function calls on a
// profile of an analytic engine: how worker counts, chunk and batch respond to load and
// SLOs, what it refuses and why, and that the manifest it writes is one the parser accepts.
#include <string>

#include <catch2/catch.hpp>

#include "cluster/manifest.hpp"
#include "cluster/plan_model.hpp"
#include "test_profile_fixture.hpp"

using namespace tokenmill;
using tokenmill::testing::analytic_profile;

namespace {

/// 10 requests/s of 1024 prompt + 128 output tokens, TTFT p90 500 ms, ITL p90 30 ms, on
/// up to 64 single-worker hosts.
plan_request base_request() {
  plan_request r;
  r.slo = {0.5, 0.030, 0.9};
  r.load = {10, 1024, 128};
  r.hosts = 64;
  r.workers_per_host = 1;
  return r;
}

cluster_plan plan_for(const plan_request& r) {
  auto p = analytic_profile();
  REQUIRE(check_plan_request(r, p));
  return make_plan(p, r);
}

}  // namespace

TEST_CASE("plan: a light load takes one worker per role", "[plan]") {
  auto plan = plan_for(base_request());
  INFO(plan.refusal);
  REQUIRE(plan.feasible);
  CHECK(plan.prefill.workers == 1);
  CHECK(plan.decode.workers == 1);
  CHECK_FALSE(plan.local);
  // The chunk is a measured one near the saturation point (1024 for this engine).
  CHECK(plan.prefill.chunk == 1024);
  CHECK(plan.saturation_chunk == 1024);
  CHECK(plan.prefill.ttft_p_s <= 0.5);
  CHECK(plan.prefill.ttft_p_s >= plan.prefill.service_s);
  CHECK(plan.decode.itl_p_s <= 0.030);
  CHECK(plan.decode.itl_p_s >= plan.decode.step_batch1_s);
  CHECK(plan.decode.max_batch == 128);  // the ITL would allow more; 128 was measured
  // Prompts of this workload stay on the prefill workers.
  CHECK(plan.local_prefill_threshold <= 1024);
  CHECK_FALSE(plan.reasons.empty());
}

TEST_CASE("plan: more load takes more workers", "[plan]") {
  auto r = base_request();
  uint32_t last_p = 0, last_d = 0;
  for (double rate : {5.0, 20.0, 80.0, 160.0}) {
    r.load.rate = rate;
    auto plan = plan_for(r);
    INFO("rate " << rate << ": " << plan.refusal);
    REQUIRE(plan.feasible);
    CHECK(plan.prefill.workers >= last_p);
    CHECK(plan.decode.workers >= last_d);
    CHECK(plan.prefill.utilization < 1);
    last_p = plan.prefill.workers;
    last_d = plan.decode.workers;
  }
  r.load.rate = 5;
  auto light = plan_for(r);
  CHECK(last_p > light.prefill.workers);
  CHECK(last_d > light.decode.workers);
}

TEST_CASE("plan: a tighter TTFT takes more prefill workers", "[plan]") {
  auto r = base_request();
  r.load.rate = 40;
  r.slo.ttft_s = 1.0;
  auto loose = plan_for(r);
  r.slo.ttft_s = 0.1;
  auto tight = plan_for(r);
  REQUIRE(loose.feasible);
  REQUIRE(tight.feasible);
  CHECK(tight.prefill.workers > loose.prefill.workers);
  CHECK(tight.prefill.ttft_p_s <= 0.1);
  CHECK(tight.decode.workers == loose.decode.workers);
}

TEST_CASE("plan: a tighter ITL takes a smaller batch and more decode workers", "[plan]") {
  auto r = base_request();
  r.load.rate = 40;
  r.slo.itl_s = 0.040;
  auto loose = plan_for(r);
  r.slo.itl_s = 0.012;
  auto tight = plan_for(r);
  REQUIRE(loose.feasible);
  REQUIRE(tight.feasible);
  CHECK(tight.decode.max_batch < loose.decode.max_batch);
  CHECK(tight.decode.workers > loose.decode.workers);
  CHECK(tight.decode.itl_p_s <= 0.012);
  CHECK(tight.decode.batch_p <= tight.decode.max_batch);
}

TEST_CASE("plan: an ITL below the batch-1 step is refused for any count", "[plan]") {
  auto r = base_request();
  r.slo.itl_s = 0.005;  // one step is >= 10 ms
  auto plan = plan_for(r);
  CHECK_FALSE(plan.feasible);
  CHECK(plan.unreachable);
  CHECK_THAT(plan.refusal,
             Catch::Contains("no number of decode workers") && Catch::Contains("batch 1"));
}

TEST_CASE("plan: a TTFT below one prompt's prefill is refused for any count", "[plan]") {
  auto r = base_request();
  r.slo.ttft_s = 0.020;  // one 1024-token prompt takes >= 56 ms
  auto plan = plan_for(r);
  CHECK_FALSE(plan.feasible);
  CHECK(plan.unreachable);
  CHECK_THAT(plan.refusal, Catch::Contains("no number of prefill workers") &&
                               Catch::Contains("1024-token prompt"));
}

TEST_CASE("plan: too few hosts is refused with the workers it would take", "[plan]") {
  auto r = base_request();
  r.load.rate = 160;
  r.hosts = 64;
  auto enough = plan_for(r);
  REQUIRE(enough.feasible);
  uint32_t need = enough.prefill.workers + enough.decode.workers;
  REQUIRE(need > 2);
  r.hosts = 1;
  r.workers_per_host = 2;
  auto plan = plan_for(r);
  CHECK_FALSE(plan.feasible);
  CHECK_FALSE(plan.unreachable);
  CHECK(plan.prefill_needed == enough.prefill.workers);
  CHECK(plan.decode_needed == enough.decode.workers);
  CHECK_THAT(plan.refusal,
             Catch::Contains(std::to_string(need) + " workers") &&
                 Catch::Contains("needs " + std::to_string((need + 1) / 2) + " host(s)"));
}

TEST_CASE(
    "plan: the KV blocks bound the batch, and a pool too small for one sequence is "
    "refused",
    "[plan]") {
  auto r = base_request();
  const uint32_t per_seq = (1024 + 128) / 16;  // 72 blocks of 16 tokens
  r.decode_kv_blocks = 10 * per_seq;
  auto plan = plan_for(r);
  REQUIRE(plan.feasible);
  CHECK(plan.decode.kv_batch_bound == 10);
  CHECK(plan.decode.max_batch == 10);
  CHECK(plan.decode.kv_blocks <= 10 * per_seq);
  r.decode_kv_blocks = per_seq - 1;
  plan = plan_for(r);
  CHECK_FALSE(plan.feasible);
  CHECK(plan.unreachable);
  CHECK_THAT(plan.refusal, Catch::Contains("needs 72 KV blocks"));
}

TEST_CASE("plan: short prompts are prefilled on the decode workers", "[plan]") {
  auto r = base_request();
  r.load = {5, 128, 256};
  auto plan = plan_for(r);
  INFO(plan.refusal);
  REQUIRE(plan.feasible);
  CHECK(plan.local);
  CHECK(plan.prefill.workers == 0);
  CHECK(plan.local_prefill_threshold > 128);
  CHECK(plan.decode.prefill_share > 0);
  CHECK(plan.decode.itl_p_s <= 0.030);
  // Long prompts at the same SLO are not.
  r.load = {5, 2048, 256};
  auto remote = plan_for(r);
  REQUIRE(remote.feasible);
  CHECK_FALSE(remote.local);
  CHECK(remote.prefill.workers >= 1);
}

TEST_CASE("plan: bad requests name their option", "[plan]") {
  auto p = analytic_profile();
  auto error_of = [&](auto edit) {
    auto r = base_request();
    edit(r);
    auto c = check_plan_request(r, p);
    return c ? std::string() : c.error().message;
  };
  CHECK(error_of([](plan_request&) {}).empty());
  CHECK_THAT(error_of([](plan_request& r) { r.slo.ttft_s = 0; }), Catch::Contains("--ttft-ms"));
  CHECK_THAT(error_of([](plan_request& r) { r.slo.itl_s = -1; }), Catch::Contains("--itl-ms"));
  CHECK_THAT(error_of([](plan_request& r) { r.slo.percentile = 1; }),
             Catch::Contains("--percentile"));
  CHECK_THAT(error_of([](plan_request& r) { r.load.rate = 0; }), Catch::Contains("--rate"));
  CHECK_THAT(error_of([](plan_request& r) { r.load.input_tokens = 0; }),
             Catch::Contains("--input-len"));
  CHECK_THAT(error_of([](plan_request& r) { r.load.output_tokens = 0; }),
             Catch::Contains("--output-len"));
  CHECK_THAT(error_of([](plan_request& r) { r.load.input_tokens = 9000; }),
             Catch::Contains("exceed the model's context of 8192"));
  CHECK_THAT(error_of([](plan_request& r) { r.hosts = 0; }), Catch::Contains("--hosts"));
}

TEST_CASE("plan: the queueing formulas", "[plan]") {
  CHECK(normal_quantile(0.5) == Approx(0).margin(1e-9));
  CHECK(normal_quantile(0.9) == Approx(1.2816).epsilon(1e-4));
  CHECK(md1_wait(0.1, 0, 0.9) == 0);
  CHECK(md1_wait(0.1, 0.05, 0.9) == 0);  // at 5% load 90% of arrivals find it idle
  double w5 = md1_wait(0.1, 0.5, 0.9), w9 = md1_wait(0.1, 0.9, 0.9);
  CHECK(w5 > 0);
  CHECK(w9 > w5);
  CHECK(md1_wait(0.1, 0.5, 0.99) > w5);
  CHECK(std::isinf(md1_wait(0.1, 1, 0.9)));
}

TEST_CASE("plan: the M/G/1 response quantile", "[plan]") {
  // One service time: the M/D/1 wait plus the service.
  for (double rho : {0.0, 0.05, 0.5, 0.9})
    CHECK(mg1_response_quantile({0.1}, rho, 0.9) ==
          Approx(md1_wait(0.1, rho, 0.9) + 0.1).epsilon(1e-6));
  // Idle: the quantile of the service times alone (9 of 10 at 10 ms, one at 1 s).
  std::vector<double> mixed(9, 0.01);
  mixed.push_back(1.0);
  CHECK(mg1_response_quantile(mixed, 0, 0.5) == Approx(0.01).epsilon(1e-6));
  CHECK(mg1_response_quantile(mixed, 0, 0.95) == Approx(1.0).epsilon(1e-6));
  // The same mean with a spread waits longer than fixed service (E[S^2] grows).
  const double mean = (9 * 0.01 + 1.0) / 10;
  CHECK(mg1_response_quantile(mixed, 0.7, 0.5) > mg1_response_quantile({mean}, 0.7, 0.5));
  CHECK(mg1_response_quantile({0.1}, 0.5, 0.9, 0.02) ==
        Approx(md1_wait(0.1, 0.5, 0.9) + 0.12).epsilon(1e-6));
  CHECK(std::isinf(mg1_response_quantile(mixed, 1, 0.9)));
  CHECK(mg1_response_quantile(mixed, 0.5, 0.99) > mg1_response_quantile(mixed, 0.5, 0.9));
}

TEST_CASE("plan: length distributions", "[plan]") {
  auto r = base_request();
  r.load.rate = 20;
  auto fixed = plan_for(r);
  REQUIRE(fixed.feasible);

  SECTION("one sample equals fixed lengths") {
    r.load.samples = {{1024, 128}};
    auto same = plan_for(r);
    REQUIRE(same.feasible);
    CHECK(same.prefill.workers == fixed.prefill.workers);
    CHECK(same.prefill.ttft_p_s == Approx(fixed.prefill.ttft_p_s));
    CHECK(same.decode.itl_p_s == Approx(fixed.decode.itl_p_s));
    CHECK(same.decode.context == Approx(fixed.decode.context));
  }
  SECTION("a spread of prompts with the same mean has a longer TTFT tail") {
    // Half at 256, half at 1792 tokens: the mean prompt is 1024 again.
    for (int i = 0; i < 50; ++i) {
      r.load.samples.push_back({256, 128});
      r.load.samples.push_back({1792, 128});
    }
    auto spread = plan_for(r);
    INFO(spread.refusal);
    REQUIRE(spread.feasible);
    CHECK(spread.prefill.ttft_p_s > fixed.prefill.ttft_p_s);
    CHECK(spread.decode.context == Approx(fixed.decode.context));
    // The threshold stays below every prompt of the workload, so none is prefilled locally.
    CHECK(spread.local_prefill_threshold <= 256);
  }
  SECTION("a decode step sees contexts weighted by how long sequences stay") {
    // A long prompt answered in one token never decodes; the short one decodes 255 steps.
    r.load.samples = {{4000, 1}, {64, 256}};
    auto plan = plan_for(r);
    INFO(plan.refusal);
    REQUIRE(plan.feasible);
    CHECK(plan.decode.context == Approx(64 + 128));
  }
  SECTION("a sample longer than the context is refused by its index") {
    r.load.samples = {{1024, 128}, {8000, 500}};
    auto c = check_plan_request(r, analytic_profile());
    REQUIRE_FALSE(c);
    CHECK_THAT(c.error().message, Catch::Contains("workload sample 1"));
    r.load.samples = {{0, 128}};
    CHECK_FALSE(check_plan_request(r, analytic_profile()));
  }
  SECTION("prompts go local only when all of them are below the threshold") {
    r.load.rate = 5;
    r.load.samples = {{128, 256}, {96, 256}};
    auto local = plan_for(r);
    REQUIRE(local.feasible);
    CHECK(local.local);
    r.load.samples.push_back({2048, 256});
    auto mixed = plan_for(r);
    REQUIRE(mixed.feasible);
    CHECK_FALSE(mixed.local);
    CHECK(mixed.local_prefill_threshold <= 96);
  }
}

TEST_CASE("plan: the written manifest is one the parser accepts", "[plan]") {
  auto p = analytic_profile();
  auto r = base_request();
  r.load.rate = 80;
  r.hosts = 3;
  r.workers_per_host = 8;
  auto plan = make_plan(p, r);
  INFO(plan.refusal);
  REQUIRE(plan.feasible);
  plan_placement where;
  where.hosts = {"127.0.0.1", "127.0.0.2", "127.0.0.3"};
  where.workers_per_host = 8;
  where.header = "planned for a test\nsecond line";
  auto text = render_manifest(p, plan, where);
  auto m = parse_manifest(text, "planned.yaml", ".", {false});
  INFO(text);
  REQUIRE(m);
  size_t prefill = 0, decode = 0;
  for (const auto& n : m->nodes) {
    prefill += n.count(role::prefill);
    decode += n.count(role::decode);
    for (const auto& a : n.actors) {
      if (const auto* o = a.prefill()) {
        CHECK(o->chunk == plan.prefill.chunk);
        CHECK(o->max_seqs == plan.prefill.max_seqs);
      }
      if (const auto* o = a.decode()) {
        CHECK(o->max_batch == plan.decode.max_batch);
        CHECK(o->kv_blocks == plan.decode.kv_blocks);
      }
    }
  }
  CHECK(prefill == plan.prefill.workers);
  CHECK(decode == plan.decode.workers);
  CHECK(m->router.local_prefill_threshold == plan.local_prefill_threshold);
  CHECK(m->model.sim);
  CHECK(m->model.sim_cfg.prefill_base_ns == p.sim.prefill_base_ns);
  CHECK(m->nodes[0].count(role::router) == 1);
  CHECK(m->nodes[1].address == "127.0.0.1");
  CHECK(m->nodes[2].address == "127.0.0.2");
}
