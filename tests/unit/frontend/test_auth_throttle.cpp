#include <catch2/catch.hpp>

#include <string>

#include "frontend/api_keys.hpp"
#include "frontend/auth_throttle.hpp"
#include "frontend/http_routes.hpp"

using namespace tokenmill;
using namespace std::chrono_literals;

namespace {

const auto t0 = auth_throttle::clock::time_point{} + 1000s;

}  // namespace

TEST_CASE("auth throttle: a burst of failures, then one attempt per refill", "[auth_throttle]") {
  auth_throttle t({.burst = 3, .refill_per_s = 0.5, .max_addresses = 16});
  CHECK(t.blocked_for("10.0.0.1", t0) == 0);  // never failed
  for (int i = 0; i < 3; ++i) {
    CHECK(t.blocked_for("10.0.0.1", t0) == 0);
    t.failed("10.0.0.1", t0);
  }
  // The burst is spent: refused for the 2 s one token takes to come back.
  CHECK(t.blocked_for("10.0.0.1", t0) == 2);
  CHECK(t.blocked_for("10.0.0.1", t0 + 1500ms) == 1);  // rounded up, never 0 while blocked
  CHECK(t.blocked_for("10.0.0.1", t0 + 2s) == 0);
  // Other addresses are not affected.
  CHECK(t.blocked_for("10.0.0.2", t0) == 0);
  CHECK(t.blocked_for("::1", t0) == 0);
  // One more failure right after the refill blocks again: the sustained rate is the refill.
  t.failed("10.0.0.1", t0 + 2s);
  CHECK(t.blocked_for("10.0.0.1", t0 + 2s) == 2);
  // Long enough idle, the whole burst is back.
  for (int i = 0; i < 3; ++i) {
    CHECK(t.blocked_for("10.0.0.1", t0 + 60s) == 0);
    t.failed("10.0.0.1", t0 + 60s);
  }
  CHECK(t.blocked_for("10.0.0.1", t0 + 60s) > 0);
}

TEST_CASE("auth throttle: failures while blocked do not go below empty", "[auth_throttle]") {
  auth_throttle t({.burst = 2, .refill_per_s = 1, .max_addresses = 16});
  for (int i = 0; i < 50; ++i)
    t.failed("a", t0);
  // Fifty failures at once cost no more than the burst: a refill's time frees one attempt.
  CHECK(t.blocked_for("a", t0) == 1);
  CHECK(t.blocked_for("a", t0 + 1s) == 0);
}

TEST_CASE("auth throttle: the table of addresses is bounded", "[auth_throttle]") {
  auth_throttle t({.burst = 1, .refill_per_s = 0.1, .max_addresses = 3});
  t.failed("a", t0);
  t.failed("b", t0 + 1s);
  t.failed("c", t0 + 2s);
  CHECK(t.size() == 3);
  // A fourth address evicts the one whose last failure is oldest (none has refilled).
  t.failed("d", t0 + 3s);
  CHECK(t.size() == 3);
  CHECK(t.blocked_for("a", t0 + 3s) == 0);  // forgotten
  CHECK(t.blocked_for("b", t0 + 3s) > 0);
  CHECK(t.blocked_for("d", t0 + 3s) > 0);
  // Refilled buckets go first: after 100 s all have refilled, and are dropped together.
  t.failed("e", t0 + 100s);
  CHECK(t.size() == 1);
  CHECK(t.blocked_for("e", t0 + 100s) > 0);
}

TEST_CASE("auth throttle: nonsense limits are clamped", "[auth_throttle]") {
  auth_throttle t({.burst = 0, .refill_per_s = 0, .max_addresses = 0});
  t.failed("a", t0);  // burst at least 1, at least one address
  CHECK(t.size() == 1);
  CHECK(t.blocked_for("a", t0) > 0);
}

TEST_CASE("check_api_key with a throttle: wrong keys count, a blocked address gets 429",
          "[auth_throttle][http_routes]") {
  auto made = api_keys::from_key("right-key");
  REQUIRE(made.ok());
  const api_keys* k = made->get();
  auth_throttle t({.burst = 2, .refill_per_s = 0.5, .max_addresses = 16});
  auto check = [&](std::string_view path, std::string_view auth, std::string_view peer,
                   auth_throttle::clock::time_point now) {
    return check_api_key(path, auth, k, false, t, peer, now);
  };
  // A missing key is refused (401) but is no guess: it does not count.
  for (int i = 0; i < 5; ++i)
    CHECK(check("/v1/completions", "", "1.2.3.4", t0)->status == 401);
  CHECK(t.blocked_for("1.2.3.4", t0) == 0);
  // Open paths are not throttled or counted.
  CHECK_FALSE(check("/health", "Bearer nope", "1.2.3.4", t0));
  CHECK(t.size() == 0);
  // Two wrong keys: 401 each; then 429 without the key being looked at, even the right one.
  CHECK(check("/v1/models", "Bearer guess1", "1.2.3.4", t0)->status == 401);
  CHECK(check("/v1/models", "Bearer guess2", "1.2.3.4", t0)->status == 401);
  auto blocked = check("/v1/models", "Bearer right-key", "1.2.3.4", t0);
  REQUIRE(blocked);
  CHECK(blocked->status == 429);
  CHECK(blocked->type == "rate_limit_error");
  CHECK(blocked->code == "too_many_failed_attempts");
  CHECK(blocked->retry_after_s == 2);  // the Retry-After header
  CHECK_THAT(blocked->message, Catch::Contains("from 1.2.3.4") && Catch::Contains("retry in 2 s"));
  // Another address, and this one once the bucket refilled, get in with the right key.
  CHECK_FALSE(check("/v1/models", "Bearer right-key", "5.6.7.8", t0));
  CHECK_FALSE(check("/v1/models", "Bearer right-key", "1.2.3.4", t0 + 2s));
  // The right key does not count as a failure.
  CHECK(t.blocked_for("5.6.7.8", t0) == 0);
  // Without keys nothing is guarded, counted or throttled.
  auth_throttle open;
  CHECK_FALSE(check_api_key("/v1/models", "Bearer x", nullptr, false, open, "1.2.3.4", t0));
  CHECK(open.size() == 0);
}
