// Live-migration benchmark (STYLE.md §14): two decode workers (sim engine, inline KV
// transport) in one process; a sequence with a context of N tokens decodes on the first,
// moves live with its KV to the second and finishes there. Prints, per context length,
// the KV bytes and blocks moved and the time the move took: `move` from the start of the
// move (after the engine step the sequence was in) to the target's confirmation, as the
// source measures it, and `request` from migrate_request to migrate_result at the caller
// (the wait for that step included). Medians over --repeats moves. A table, or JSON with
// --json.
//   build/bench/tokenmill_bench_migration [--contexts 1024,8192] [--repeats 5]
//       [--layers L] [--kv-heads H] [--head-dim D] [--block-tokens B] [--step-ms S] [--json]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <caf/all.hpp>
#include <nlohmann/json.hpp>

#include "actors/actors.hpp"
#include "actors/type_ids.hpp"
#include "common/stats.hpp"
#include "engine/scheduler.hpp"
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

std::optional<uint32_t> parse_u32(const char* s) {
  char* end = nullptr;
  auto v = std::strtoul(s, &end, 10);
  if (!s[0] || *end || v == 0 || v > UINT32_MAX) return std::nullopt;
  return static_cast<uint32_t>(v);
}

struct one_move {
  bool moved = false;
  std::string error;
  uint64_t bytes = 0;
  uint32_t blocks = 0;
  double move_ms = 0, request_ms = 0;
};

}  // namespace

int main(int argc, char** argv) {
  std::vector<uint32_t> contexts{1024, 8192};
  uint32_t repeats = 5, step_ms = 5;
  bool json = false;
  sim_config scfg;
  scfg.prefill_ns_per_token = 0;  // the prompt's prefill is not what is measured
  auto usage = [&] {
    std::fprintf(stderr,
                 "usage: %s [--contexts N,N,...] [--repeats R] [--layers L] [--kv-heads H] "
                 "[--head-dim D] [--block-tokens B] [--step-ms S] [--json]\n",
                 argv[0]);
    return 2;
  };
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--json") {
      json = true;
      continue;
    }
    if (i + 1 >= argc) return usage();
    const char* v = argv[++i];
    if (a == "--contexts") {
      contexts.clear();
      std::stringstream ss(v);
      std::string item;
      while (std::getline(ss, item, ',')) {
        auto n = parse_u32(item.c_str());
        if (!n) {
          std::fprintf(stderr, "--contexts: '%s' is not a positive token count\n", item.c_str());
          return 2;
        }
        contexts.push_back(*n);
      }
      continue;
    }
    auto n = parse_u32(v);
    if (!n && a != "--step-ms") {
      std::fprintf(stderr, "%s: '%s' is not a positive number\n", a.c_str(), v);
      return 2;
    }
    if (a == "--repeats") {
      repeats = *n;
    } else if (a == "--layers") {
      scfg.layout.layers = *n;
    } else if (a == "--kv-heads") {
      scfg.layout.kv_heads = *n;
    } else if (a == "--head-dim") {
      scfg.layout.head_dim = *n;
    } else if (a == "--block-tokens") {
      scfg.layout.block_tokens = *n;
    } else if (a == "--step-ms") {
      step_ms = static_cast<uint32_t>(std::strtoul(v, nullptr, 10));
    } else {
      return usage();
    }
  }
  if (auto ok = scfg.layout.validate(); !ok) {
    std::fprintf(stderr, "invalid KV layout: %s\n", ok.error().message.c_str());
    return 2;
  }
  // Paced decode steps, so that the move happens mid-stream like in a server.
  scfg.decode_base_ns = uint64_t{step_ms} * 1'000'000;
  constexpr uint32_t max_tokens = 64, move_at = 4;
  uint32_t longest = 0;
  for (auto c : contexts)
    longest = std::max(longest, c);
  scfg.max_context = longest + max_tokens + 1;

  bench_config cfg;
  caf::actor_system sys{cfg};
  caf::scoped_actor self{sys};
  decode_config dc;
  dc.num_blocks = blocks_to_reserve(longest, max_tokens, scfg.layout.block_tokens) + 1;
  dc.max_batch = 1;
  std::vector<caf::actor> workers;
  for (worker_id id : {2u, 3u}) {
    worker_info info;
    info.id = id;
    info.kind = role::decode;
    info.name = "decode-" + std::to_string(id);
    workers.push_back(spawn_decode(sys, info, dc, std::make_unique<sim_engine>(scfg),
                                   std::make_shared<inline_transport>(),
                                   caf::actor_cast<caf::actor>(self), caf::actor{}));
    self->receive([](register_worker&) { return true; });
  }

  nlohmann::json out = nlohmann::json::array();
  if (!json)
    std::printf(
        "KV layout: %u layers, %u KV heads, head_dim %u, %u tokens/block, %zu bytes/block\n"
        "%8s %8s %12s %10s %10s %12s\n",
        scfg.layout.layers, scfg.layout.kv_heads, scfg.layout.head_dim, scfg.layout.block_tokens,
        scfg.layout.block_bytes(), "context", "blocks", "bytes", "move_ms", "req_ms", "GB/s");
  request_id next_id = 1;
  int failures = 0;
  for (auto ctx : contexts) {
    std::vector<one_move> moves;
    for (uint32_t r = 0; r < repeats; ++r) {
      auto& src = workers[r % 2];
      auto& dst = workers[(r + 1) % 2];
      generate_request req;
      req.id = next_id++;
      req.prompt.resize(ctx);
      for (uint32_t i = 0; i < ctx; ++i)
        req.prompt[i] = 300 + static_cast<token_id>((i * 7919 + req.id * 104729) % 20000);
      req.options.max_tokens = max_tokens;
      req.client = caf::actor_cast<caf::actor>(self);
      self->send(src, decode_assignment{req, caf::actor{}, caf::actor_cast<caf::actor>(self), {}});
      one_move m;
      bool asked = false, answered = false, done = false;
      std::chrono::steady_clock::time_point t0;
      uint32_t seen = 0;
      while (!done) {
        self->receive([&](first_token&) { ++seen; },
                      [&](token_batch& b) { seen += static_cast<uint32_t>(b.tokens.size()); },
                      [&](attempt_moved&) {},
                      [&](migrate_result& res) {
                        m.request_ms = std::chrono::duration<double, std::milli>(
                                           std::chrono::steady_clock::now() - t0)
                                           .count();
                        m.moved = res.moved;
                        m.error = res.error.message;
                        m.bytes = res.bytes;
                        m.blocks = res.blocks;
                        m.move_ms = static_cast<double>(res.elapsed_ns) / 1e6;
                        answered = true;
                      },
                      [&](request_done&) { done = true; },
                      caf::after(std::chrono::seconds(60)) >> [&] { done = true; });
        if (!asked && seen >= move_at) {
          asked = true;
          t0 = std::chrono::steady_clock::now();
          self->send(src, migrate_request{req.id, dst, true, caf::actor_cast<caf::actor>(self)});
        }
      }
      if (!answered || !m.moved) {
        ++failures;
        std::fprintf(stderr, "context %u: the move failed: %s\n", ctx,
                     answered ? m.error.c_str() : "no answer");
        continue;
      }
      moves.push_back(m);
    }
    if (moves.empty()) continue;
    std::vector<double> mv, rq;
    for (const auto& m : moves) {
      mv.push_back(m.move_ms);
      rq.push_back(m.request_ms);
    }
    const double move_ms = median(mv), req_ms = median(rq);
    const double gbps = static_cast<double>(moves[0].bytes) / (move_ms / 1e3) / 1e9;
    if (json) {
      out.push_back({{"context_tokens", ctx},
                     {"blocks", moves[0].blocks},
                     {"bytes", moves[0].bytes},
                     {"block_bytes", scfg.layout.block_bytes()},
                     {"move_ms_median", move_ms},
                     {"request_ms_median", req_ms},
                     {"move_gb_per_s", gbps},
                     {"moves", moves.size()},
                     {"transport", "inline"},
                     {"engine", "sim"}});
    } else {
      std::printf("%8u %8u %12lu %10.3f %10.3f %12.2f\n", ctx, moves[0].blocks,
                  static_cast<unsigned long>(moves[0].bytes), move_ms, req_ms, gbps);
    }
  }
  if (json) std::printf("%s\n", out.dump().c_str());
  for (auto& w : workers)
    caf::anon_send_exit(w, caf::exit_reason::kill);
  return failures == 0 ? 0 : 1;
}
