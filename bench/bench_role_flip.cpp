// Role-flip benchmark (STYLE.md §14): how long a worker takes from change_role to
// role_changed (re-registered under the new role, same engine and KV pool), on the sim
// engine. The program plays the supervisor (it answers each registration at once) and
// the router. Two cases:
//   idle:      nothing in flight; the worker flips prefill -> decode -> prefill … --flips times.
//   in flight: a decode worker serving one sequence of --tokens tokens (sim: --step-ms per
//              step) is told to become prefill; drain = the sequence finishing in place,
//              switch = the rest (total - drain).
// Prints a table, or JSON with --json.
//   build/bench/tokenmill_bench_role_flip [--flips N] [--blocks B] [--tokens T] [--step-ms S]
//   [--json]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <spdlog/spdlog.h>
#include <caf/all.hpp>
#include <nlohmann/json.hpp>

#include "actors/actors.hpp"
#include "actors/protocol.hpp"
#include "actors/type_ids.hpp"
#include "common/clock.hpp"
#include "common/stats.hpp"
#include "engine/sim_engine.hpp"
#include "transport/kv_transport.hpp"

using namespace tokenmill;

namespace {

class bench_config : public caf::actor_system_config {
 public:
  bench_config() {
    register_types(*this);
    set("logger.console", caf::atom("none"));
  }
};

struct opts {
  int flips = 20;
  uint32_t blocks = 1024;
  uint32_t tokens = 64;
  double step_ms = 10;
  bool json = false;
};

opts parse(int argc, char** argv) {
  opts o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "bench_role_flip: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--flips")
      o.flips = std::max(1, std::atoi(next()));
    else if (a == "--blocks")
      o.blocks = static_cast<uint32_t>(std::max(16, std::atoi(next())));
    else if (a == "--tokens")
      o.tokens = static_cast<uint32_t>(std::max(2, std::atoi(next())));
    else if (a == "--step-ms")
      o.step_ms = std::max(0.0, std::atof(next()));
    else if (a == "--json")
      o.json = true;
    else {
      std::fprintf(stderr,
                   "usage: bench_role_flip [--flips N] [--blocks B] [--tokens T] [--step-ms S] "
                   "[--json]\n");
      std::exit(2);
    }
  }
  return o;
}

/// Receives one message of type T (anything else is dropped), or fails the run.
template <class T>
T receive_one(caf::scoped_actor& self, const char* what) {
  for (;;) {
    std::optional<T> got;
    bool timed_out = false;
    self->receive([&](T& x) { got = std::move(x); },
                  [&](register_worker&) { return true; },  // a re-registration: accepted
                  caf::others >> [](caf::message_view&) -> caf::result<caf::message> {
                    return caf::message{};
                  },
                  caf::after(std::chrono::seconds(60)) >> [&] { timed_out = true; });
    if (got) return std::move(*got);
    if (timed_out) {
      std::fprintf(stderr, "bench_role_flip: no %s within 60 s\n", what);
      std::exit(1);
    }
  }
}

/// Answers the worker's registration (the program plays the supervisor).
void accept_registration(caf::scoped_actor& self) {
  bool got = false;
  self->receive(
      [&](register_worker&) {
        got = true;
        return true;
      },
      caf::after(std::chrono::seconds(60)) >> [] {});
  if (!got) {
    std::fprintf(stderr, "bench_role_flip: no registration within 60 s\n");
    std::exit(1);
  }
}

worker_info info_of(role r) {
  worker_info w;
  w.id = 1;
  w.kind = r;
  w.name = "w";
  w.node = "bench";
  return w;
}

}  // namespace

int main(int argc, char** argv) {
  auto o = parse(argc, argv);
  spdlog::set_level(
      spdlog::level::warn);  // the workers log each flip at info: keep the output clean
  bench_config cfg;
  caf::actor_system sys{cfg};
  caf::scoped_actor self{sys};
  sim_config sc;
  sc.decode_base_ns = static_cast<uint64_t>(o.step_ms * 1e6);
  auto transport = std::make_shared<inline_transport>();
  prefill_config pc;
  pc.num_blocks = o.blocks;
  decode_config dc;
  dc.num_blocks = o.blocks;
  const uint64_t block_bytes = sc.layout.block_bytes();

  // Idle flips.
  auto worker = spawn_prefill(sys, info_of(role::prefill), pc, std::make_unique<sim_engine>(sc),
                              transport, self, dc);
  accept_registration(self);
  std::vector<double> total_ms, seen_ms;
  role now = role::prefill;
  for (int i = 0; i < o.flips; ++i) {
    change_role c;
    c.to = now == role::prefill ? role::decode : role::prefill;
    c.reason = "bench";
    auto t0 = now_ns();
    self->send(worker, c);
    auto r = receive_one<role_changed>(self, "role_changed");
    seen_ms.push_back((now_ns() - t0) / 1e6);
    if (r.error) {
      std::fprintf(stderr, "bench_role_flip: flip failed: %s\n", r.error.message.c_str());
      return 1;
    }
    total_ms.push_back(r.total_ns / 1e6);
    now = c.to;
  }
  caf::anon_send_exit(worker, caf::exit_reason::user_shutdown);

  // A decode worker with one sequence in flight becomes prefill.
  auto dec = spawn_decode(sys, info_of(role::decode), dc, std::make_unique<sim_engine>(sc),
                          transport, self, caf::actor{}, pc);
  accept_registration(self);
  generate_request req;
  req.id = 1;
  for (uint32_t i = 0; i < 32; ++i)
    req.prompt.push_back(static_cast<token_id>(300 + i));
  req.options.max_tokens = o.tokens;
  req.client = self;
  self->send(dec, decode_assignment{req, caf::actor{}, self, {}});
  receive_one<first_token>(self, "first token");
  change_role c;
  c.to = role::prefill;
  c.reason = "bench";
  self->send(dec, c);
  auto busy = receive_one<role_changed>(self, "role_changed");
  caf::anon_send_exit(dec, caf::exit_reason::user_shutdown);

  auto idle = summarize(total_ms);
  auto idle_seen = summarize(seen_ms);
  const double drain = busy.drain_ns / 1e6, total = busy.total_ns / 1e6;
  if (o.json) {
    nlohmann::ordered_json j;
    j["engine"] = "sim";
    j["pool_blocks"] = o.blocks;
    j["block_bytes"] = block_bytes;
    j["idle"] = {
        {"flips", o.flips},         {"total_ms_p50", idle.p50},     {"total_ms_p99", idle.p99},
        {"total_ms_max", idle.max}, {"seen_ms_p50", idle_seen.p50}, {"seen_ms_max", idle_seen.max}};
    j["in_flight"] = {{"tokens", o.tokens}, {"step_ms", o.step_ms}, {"finished", busy.finished},
                      {"drain_ms", drain},  {"total_ms", total},    {"switch_ms", total - drain}};
    std::printf("%s\n", j.dump().c_str());
    return 0;
  }
  std::printf(
      "sim engine, pool %u blocks of %llu bytes (the pool is handed over, never "
      "reallocated)\n",
      o.blocks, static_cast<unsigned long long>(block_bytes));
  std::printf(
      "idle flip (change_role -> role_changed, worker clock), %d flips: p50 %.3f ms, "
      "p99 %.3f ms, max %.3f ms\n",
      o.flips, idle.p50, idle.p99, idle.max);
  std::printf(
      "  as the supervisor sees it (send -> receive):              p50 %.3f ms, max "
      "%.3f ms\n",
      idle_seen.p50, idle_seen.max);
  std::printf(
      "decode -> prefill with 1 sequence in flight (%u tokens, %.1f ms/step): drain "
      "%.1f ms (%u finished), switch %.3f ms, total %.1f ms\n",
      o.tokens, o.step_ms, drain, busy.finished, total - drain, total);
  return 0;
}
