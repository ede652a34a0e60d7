// The migration policy as plain functions: what a moved request resends, which tokens of
// the new attempt reach the client, when moving stops, and the watchdog's verdicts.
#include <catch2/catch.hpp>

#include "actors/router/migration.hpp"

using namespace tokenmill;

namespace {
request_options opts(uint32_t max_tokens, std::vector<token_id> stop_ids = {}) {
  request_options o;
  o.max_tokens = max_tokens;
  o.stop_ids = std::move(stop_ids);
  return o;
}
constexpr int64_t s_ns = 1'000'000'000;
}  // namespace

TEST_CASE("migration: the next attempt resends prompt + delivered tokens", "[migration]") {
  std::vector<token_id> prompt{1, 2, 3};
  std::vector<token_id> delivered{7, 8};
  auto d = plan_migration(prompt, opts(10), delivered, 0, 3, migration_reason::worker_lost, "d0");
  REQUIRE(d.what == migration_decision::kind::resubmit);
  CHECK(d.plan.prompt == std::vector<token_id>{1, 2, 3, 7, 8});
  CHECK(d.plan.max_tokens == 8);  // max_tokens counts across the move
  CHECK(d.plan.offset == 2);      // the new attempt's index 0 is the client's index 2
}

TEST_CASE("migration: before the first token the original request is resent", "[migration]") {
  std::vector<token_id> prompt{1, 2, 3};
  auto d = plan_migration(prompt, opts(4), {}, 0, 3, migration_reason::prefill_lost, "p0");
  REQUIRE(d.what == migration_decision::kind::resubmit);
  CHECK(d.plan.prompt == prompt);
  CHECK(d.plan.max_tokens == 4);
  CHECK(d.plan.offset == 0);
}

TEST_CASE("migration: a request whose delivered tokens already ended it completes", "[migration]") {
  std::vector<token_id> prompt{1, 2};
  SECTION("max_tokens delivered") {
    std::vector<token_id> delivered{5, 6, 7};
    auto d = plan_migration(prompt, opts(3), delivered, 0, 3, migration_reason::worker_lost, "d");
    CHECK(d.what == migration_decision::kind::complete);
    CHECK(d.reason == finish_reason::length);
  }
  SECTION("a stop id delivered last") {
    std::vector<token_id> delivered{5, 9};
    auto d =
        plan_migration(prompt, opts(8, {9}), delivered, 0, 3, migration_reason::worker_lost, "d");
    CHECK(d.what == migration_decision::kind::complete);
    CHECK(d.reason == finish_reason::stop);
  }
  SECTION("eos delivered last, unless ignore_eos") {
    std::vector<token_id> delivered{5, 2};
    auto o = opts(8);
    auto d = plan_migration(prompt, o, delivered, 0, 3, migration_reason::worker_lost, "d", 2);
    CHECK(d.what == migration_decision::kind::complete);
    CHECK(d.reason == finish_reason::eos);
    o.ignore_eos = true;
    d = plan_migration(prompt, o, delivered, 0, 3, migration_reason::worker_lost, "d", 2);
    CHECK(d.what == migration_decision::kind::resubmit);
    // Without knowing the model's eos the router continues: the worker would have stopped.
    o.ignore_eos = false;
    d = plan_migration(prompt, o, delivered, 0, 3, migration_reason::worker_lost, "d");
    CHECK(d.what == migration_decision::kind::resubmit);
  }
}

TEST_CASE("migration: the limit ends the request with an error naming why", "[migration]") {
  std::vector<token_id> prompt{1, 2};
  std::vector<token_id> delivered{5};
  auto ok = plan_migration(prompt, opts(8), delivered, 2, 3, migration_reason::stalled, "d1");
  CHECK(ok.what == migration_decision::kind::resubmit);
  auto d = plan_migration(prompt, opts(8), delivered, 3, 3, migration_reason::stalled, "d1");
  REQUIRE(d.what == migration_decision::kind::lost);
  CHECK_THAT(d.error, Catch::Contains("d1") && Catch::Contains("stalled") &&
                          Catch::Contains("migration limit is 3"));
  auto off = plan_migration(prompt, opts(8), delivered, 0, 0, migration_reason::worker_lost, "d2");
  REQUIRE(off.what == migration_decision::kind::lost);
  CHECK_THAT(off.error, Catch::Contains("migration is off") && Catch::Contains("worker_lost"));
  // A drain's hand-back is no failure: routed again at the limit and with migration off.
  for (uint32_t limit : {0u, 3u}) {
    auto back = plan_migration(prompt, opts(8), {}, 3, limit, migration_reason::drained, "d3");
    CHECK(back.what == migration_decision::kind::resubmit);
    CHECK(back.plan.prompt == prompt);
  }
}

TEST_CASE("migration: tokens at or below the last delivered index are dropped", "[migration]") {
  // Attempt with offset 3: its index 0 is client index 3.
  CHECK(client_index(3, 0, 3) == 3u);
  CHECK(client_index(3, 2, 3) == 5u);  // ahead of its turn: kept, released in order later
  CHECK_FALSE(client_index(3, 0, 4));  // delivered twice
  CHECK_FALSE(client_index(0, 2, 3));  // a late token of an earlier attempt
  CHECK(client_index(0, 0, 0) == 0u);
  CHECK_FALSE(client_index(UINT32_MAX, 1, 0));  // beyond any index: dropped, not wrapped
}

TEST_CASE("migration: only worker and transfer failures migrate", "[migration]") {
  CHECK(migration_for_error(errc::kv_corrupt) == migration_reason::transfer_failed);
  CHECK(migration_for_error(errc::timeout) == migration_reason::transfer_failed);
  CHECK(migration_for_error(errc::unavailable) == migration_reason::transfer_failed);
  // A KV write refused because the peer was not (yet) announced: another try may succeed.
  CHECK(migration_for_error(errc::unauthenticated) == migration_reason::transfer_failed);
  CHECK(migration_for_error(errc::internal) == migration_reason::worker_failed);
  CHECK(migration_for_error(errc::worker_failed) == migration_reason::worker_failed);
  for (auto e : {errc::ok, errc::invalid_request, errc::overloaded, errc::no_workers,
                 errc::cancelled, errc::out_of_blocks, errc::invalid_model})
    CHECK_FALSE(migration_for_error(e));
}

TEST_CASE("migration: reason names are stable and round-trip", "[migration]") {
  CHECK(to_string(migration_reason::worker_lost) == "worker_lost");
  CHECK(to_string(migration_reason::stalled) == "stalled");
  CHECK(to_string(migration_reason::live_migration) == "live_migration");
  CHECK(to_string(migration_reason::count_) == "unknown");
  for (int i = 0; i < static_cast<int>(migration_reason::count_); ++i) {
    auto r = static_cast<migration_reason>(i);
    CHECK(migration_reason_from_string(to_string(r)) == r);
  }
  CHECK_FALSE(migration_reason_from_string("nope"));
}

TEST_CASE("migration: attempt ids are reserved, distinct per router and counter", "[migration]") {
  auto a = mint_attempt_id(1, 1);
  auto b = mint_attempt_id(1, 2);
  auto c = mint_attempt_id(2, 1);
  CHECK(is_attempt_id(a));
  CHECK(a != b);
  CHECK(a != c);
  // Frontend ids (node << 48 | api bit 47 | counter) never look like attempts.
  CHECK_FALSE(is_attempt_id((uint64_t{5} << 48) | (uint64_t{1} << 47) | 12345));
}

TEST_CASE("watchdog: request timeout, stall, and neither", "[migration]") {
  watchdog_limits l{600 * s_ns, 30 * s_ns};
  const int64_t t0 = 1000 * s_ns;
  CHECK(check_request(t0 + 10 * s_ns, t0, t0, request_phase::decoding, l) == watchdog_verdict::ok);
  CHECK(check_request(t0 + 30 * s_ns, t0, t0, request_phase::decoding, l) ==
        watchdog_verdict::stalled);
  CHECK(check_request(t0 + 30 * s_ns, t0, t0, request_phase::prefill, l) ==
        watchdog_verdict::stalled);
  // Progress resets the stall clock.
  CHECK(check_request(t0 + 40 * s_ns, t0, t0 + 20 * s_ns, request_phase::first_token, l) ==
        watchdog_verdict::ok);
  // The router itself holds a request being routed: it cannot stall, only time out.
  CHECK(check_request(t0 + 40 * s_ns, t0, t0, request_phase::routing, l) == watchdog_verdict::ok);
  // The request timeout wins.
  CHECK(check_request(t0 + 600 * s_ns, t0, t0, request_phase::decoding, l) ==
        watchdog_verdict::timed_out);
  CHECK(check_request(t0 + 600 * s_ns, t0, t0, request_phase::routing, l) ==
        watchdog_verdict::timed_out);
  // 0 disables a bound.
  watchdog_limits none{0, 0};
  CHECK(check_request(t0 + 100000 * s_ns, t0, t0, request_phase::decoding, none) ==
        watchdog_verdict::ok);
}

TEST_CASE("watchdog: a timeout names where the request was stuck", "[migration]") {
  CHECK_THAT(timeout_message(request_phase::routing, "", 600 * s_ns, 0),
             Catch::Contains("awaiting routing") && Catch::Contains("600.000 s"));
  CHECK_THAT(timeout_message(request_phase::prefill, "prefill-0", s_ns, 0),
             Catch::Contains("prefill on worker prefill-0"));
  CHECK_THAT(timeout_message(request_phase::first_token, "decode-1", s_ns, 0),
             Catch::Contains("first token on decode worker decode-1"));
  CHECK_THAT(timeout_message(request_phase::decoding, "decode-1", s_ns, 7),
             Catch::Contains("decode on worker decode-1") && Catch::Contains("7 tokens"));
}
