// The launcher's restart policy (cluster/restart_policy.hpp) as plain function calls:
// backoff, its cap, giving up, the streak reset after a stable life, and max 0.
#include <vector>

#include <catch2/catch.hpp>

#include "cluster/restart_policy.hpp"

using namespace tokenmill;
using action = restart_decision::action;

namespace {

/// Lives that each ran `up_ms` and were restarted `gap_ms` after dying, the first from 0.
std::vector<node_life> lives(size_t n, int64_t up_ms, int64_t gap_ms = 0) {
  std::vector<node_life> h;
  int64_t t = 0;
  for (size_t i = 0; i < n; ++i) {
    h.push_back({t, t + up_ms});
    t += up_ms + gap_ms;
  }
  return h;
}

}  // namespace

TEST_CASE("restart policy: the first death restarts after backoff_ms", "[restart_policy]") {
  restart_config cfg{5, 500};
  std::vector<node_life> h{{0, 10'000}};
  auto d = decide_restart(h, cfg, 10'000);
  CHECK(d.what == action::restart_later);
  CHECK(d.streak == 1);
  CHECK(d.delay_ms == 500);
  CHECK(d.at_ms == 10'500);
  // Asked again once the wait is over: now.
  CHECK(decide_restart(h, cfg, 10'500).what == action::restart_now);
  CHECK(decide_restart(h, cfg, 99'000).what == action::restart_now);
  CHECK(decide_restart(h, cfg, 10'499).what == action::restart_later);
}

TEST_CASE("restart policy: the backoff doubles along a streak", "[restart_policy]") {
  restart_config cfg{5, 500};
  const int64_t want[] = {500, 1000, 2000, 4000, 8000};
  for (size_t n = 1; n <= 5; ++n) {
    auto h = lives(n, 1000, 100);
    auto d = decide_restart(h, cfg, h.back().died_ms);
    INFO("death " << n);
    CHECK(d.what == action::restart_later);
    CHECK(d.streak == n);
    CHECK(d.delay_ms == want[n - 1]);
    CHECK(d.at_ms == h.back().died_ms + want[n - 1]);
  }
}

TEST_CASE("restart policy: more than max deaths in a streak gives up", "[restart_policy]") {
  restart_config cfg{5, 500};
  auto h = lives(6, 1000);
  auto d = decide_restart(h, cfg, h.back().died_ms);
  CHECK(d.what == action::give_up);
  CHECK(d.streak == 6);
  CHECK(d.delay_ms == 0);
  // And stays given up, however long one waits.
  CHECK(decide_restart(h, cfg, h.back().died_ms + 3'600'000).what == action::give_up);
}

TEST_CASE("restart policy: max 0 never restarts", "[restart_policy]") {
  restart_config cfg{0, 500};
  std::vector<node_life> h{{0, 3'600'000}};
  auto d = decide_restart(h, cfg, 3'600'000);
  CHECK(d.what == action::give_up);
  CHECK(d.streak == 1);
}

TEST_CASE("restart policy: the backoff is capped at 30 s", "[restart_policy]") {
  restart_config cfg{100, 1000};
  auto h = lives(20, 10);
  auto d = decide_restart(h, cfg, h.back().died_ms);
  CHECK(d.what == action::restart_later);
  CHECK(d.streak == 20);
  CHECK(d.delay_ms == restart_backoff_cap_ms);
  // No overflow however long the streak.
  auto many = lives(100, 10);
  CHECK(decide_restart(many, cfg, 0).delay_ms == restart_backoff_cap_ms);
  // A backoff longer than the cap is taken as it is, not shortened.
  restart_config slow{3, 40'000};
  CHECK(decide_restart(lives(2, 10), slow, 0).delay_ms == 40'000);
}

TEST_CASE("restart policy: a restart that stays up 60 s ends the streak", "[restart_policy]") {
  restart_config cfg{2, 500};
  // Two quick deaths, then a restart that lived exactly the stable time, then a death.
  std::vector<node_life> h{{0, 1000}, {1500, 2000}, {3000, 3000 + restart_stable_ms}};
  auto d = decide_restart(h, cfg, h.back().died_ms);
  CHECK(d.what == action::restart_later);
  CHECK(d.streak == 1);
  CHECK(d.delay_ms == 500);
  // One ms short of stable: the streak goes on, and with max 2 this third death gives up.
  h.back().died_ms -= 1;
  auto g = decide_restart(h, cfg, h.back().died_ms);
  CHECK(g.what == action::give_up);
  CHECK(g.streak == 3);
  // Only restarts can be stable or not: however short the launch's own first life, the
  // first death is restart 1.
  std::vector<node_life> first{{0, 1}};
  CHECK(decide_restart(first, cfg, 1).streak == 1);
}

TEST_CASE("restart policy: an empty history gives up", "[restart_policy]") {
  auto d = decide_restart({}, restart_config{}, 0);
  CHECK(d.what == action::give_up);
  CHECK(d.streak == 0);
}

TEST_CASE("restart policy: the defaults are 5 restarts from 500 ms", "[restart_policy]") {
  restart_config cfg;
  CHECK(cfg.max == 5);
  CHECK(cfg.backoff_ms == 500);
}
