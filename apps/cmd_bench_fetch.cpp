// `tokenmill bench-fetch`: the throughput of fetch instead of recompute (issue 16), the whole
// path between two real decode workers in this process, for the block sizes bench-transfer
// measures. Worker A (the source) prefills prompts and caches their blocks; worker B is then
// assigned each prompt with the plan "its prefix is cached on A" and pulls the blocks: the
// kv_fetch_request to A, A's pinning and xxh3 checksums, the transport's write into B's
// reserved blocks and its flush, A's reply, B's delivery (two-sided transports) and its
// checks of every block's checksum. The figures come from B's own fetch counters (status
// `fetch`: bytes, and the time from asking to taking the answer), the ones behind
// tokenmill_kv_fetch_*. Transports: inline (the bytes travel in the reply message, as in a
// single-process cluster) or UCX (one transport per worker, a one-sided put over loopback,
// UCX_TLS from the environment: e.g. tcp, or sm,cma). The sim engine (modelled costs 0) makes
// blocks of the asked size; its content check of fetched blocks is left out unless
// --check-kv (it recomputes every byte, which no real engine does).
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <caf/all.hpp>
#include <nlohmann/json.hpp>

#include "actors/actors.hpp"
#include "actors/protocol.hpp"
#include "actors/type_ids.hpp"
#include "apps/commands.hpp"
#include "common/clock.hpp"
#include "engine/sim_engine.hpp"
#include "transport/kv_transport.hpp"
#include "transport/ucx_transport.hpp"

namespace tokenmill::app {
namespace {

constexpr uint64_t kib = 1024, mib = 1024 * 1024;
constexpr uint32_t block_tokens = 16;
/// Bytes of one layer of a block: K and V, 1 head of 128 f16 values, 16 tokens.
constexpr uint64_t layer_bytes = 2 * 128 * block_tokens * 2;

struct bench_fetch_opts {
  std::string transport = "inline";
  std::vector<std::string> sizes;  ///< e.g. 16K, 1M
  uint64_t fetch_bytes = 16 * mib;
  uint32_t max_blocks = 64;
  uint32_t fetches = 8;
  bool check_kv = false;
  bool json = false;
};

/// "16K", "4M" or plain bytes; 0 when unparsable.
uint64_t parse_size(const std::string& s) {
  if (s.empty()) return 0;
  char* end = nullptr;
  unsigned long long v = std::strtoull(s.c_str(), &end, 10);
  std::string suffix(end);
  if (suffix.empty() || suffix == "B") return v;
  if (suffix == "K" || suffix == "k" || suffix == "KiB") return v * kib;
  if (suffix == "M" || suffix == "m" || suffix == "MiB") return v * mib;
  return 0;
}

std::string size_name(uint64_t b) {
  if (b % mib == 0) return fmt::format("{} MiB", b / mib);
  if (b % kib == 0) return fmt::format("{} KiB", b / kib);
  return fmt::format("{} B", b);
}

double loadavg_1min() {
  std::ifstream in("/proc/loadavg");
  double l = -1;
  in >> l;
  return in ? l : -1;
}

int fail(const std::string& msg) {
  std::fprintf(stderr, "tokenmill bench-fetch: %s\n", msg.c_str());
  return 1;
}

/// The sim engine, its content check of fetched blocks optional.
class bench_engine final : public engine {
 public:
  bench_engine(sim_config cfg, bool check) : sim_(cfg), check_(check) {}
  const model_info& info() const override { return sim_.info(); }
  result<std::vector<token_id>> prefill(block_pool& pool,
                                        std::span<const prefill_chunk> batch) override {
    return sim_.prefill(pool, batch);
  }
  result<std::vector<token_id>> decode(block_pool& pool,
                                       std::span<const decode_seq> batch) override {
    return sim_.decode(pool, batch);
  }
  result<void> check_kv(const block_pool& pool, std::span<const token_id> tokens,
                        std::span<const block_id> blocks, uint32_t begin,
                        uint32_t end) const override {
    if (!check_) return {};
    return sim_.check_kv(pool, tokens, blocks, begin, end);
  }

 private:
  sim_engine sim_;
  bool check_;
};

class bench_config : public caf::actor_system_config {
 public:
  bench_config() {
    register_types(*this);
    set("logger.console", caf::atom("none"));
  }
};

struct size_row {
  uint64_t block_bytes = 0;
  uint32_t blocks_per_fetch = 0;
  uint32_t fetches = 0;
  kv_fetch_status fetch;  ///< B's counters over the timed fetches
  double gbps = 0;        ///< fetch.bytes / fetch.time_ns
  double fetch_ms_mean = 0;
  double request_ms_p50 = 0;  ///< assignment to request_done (fetch + last block + 1 token)
  std::string error;
};

/// A prompt of `n` tokens, distinct for every `seed`.
std::vector<token_id> prompt(uint32_t n, uint32_t seed) {
  std::vector<token_id> v(n);
  for (uint32_t i = 0; i < n; ++i)
    v[i] = static_cast<token_id>(300 + (seed * 7919 + i * 13) % 20000);
  return v;
}

/// Waits for request `id`'s request_done (tokens ignored); its error, or empty.
std::string await_done(caf::scoped_actor& self, request_id id) {
  std::string problem;
  for (bool done = false; !done && problem.empty();)
    self->receive([](first_token&) {}, [](token_batch&) {},
                  [&](request_done& d) {
                    if (d.id != id) return;
                    done = true;
                    if (d.reason == finish_reason::error)
                      problem = fmt::format("request {} failed: {}", id, d.error.message);
                  },
                  caf::after(std::chrono::seconds(60)) >>
                      [&] { problem = fmt::format("request {}: no answer in 60 s", id); });
  return problem;
}

result<worker_status> status_of(caf::scoped_actor& self, const caf::actor& w) {
  std::optional<worker_status> ws;
  std::string err;
  self->request(w, std::chrono::seconds(10), status_atom::value)
      .receive([&](worker_status& s) { ws = std::move(s); },
               [&](caf::error& e) { err = caf::to_string(e); });
  if (!ws) return error_info{errc::unavailable, "status: " + err};
  return *ws;
}

result<std::shared_ptr<kv_transport>> make_transport(const std::string& kind,
                                                     std::shared_ptr<kv_transport>& shared) {
  if (kind == "inline") {
    if (!shared) shared = std::make_shared<inline_transport>();
    return shared;
  }
  auto t = ucx_transport::create(ucx_config{});
  if (!t) return t.error();
  return std::shared_ptr<kv_transport>(std::move(*t));
}

/// One block size: spawns A and B, fills A, times B's fetches.
size_row run_size(caf::actor_system& sys, const bench_fetch_opts& o, uint64_t size,
                  std::shared_ptr<kv_transport>& shared_inline, request_id& next_id) {
  size_row row;
  row.block_bytes = size;
  row.blocks_per_fetch = static_cast<uint32_t>(
      std::clamp<uint64_t>(o.fetch_bytes / size, 1, std::max<uint32_t>(o.max_blocks, 1)));
  row.fetches = o.fetches;
  const uint32_t n = row.blocks_per_fetch;
  const uint32_t prompts = o.fetches + 1;  // the first fetch warms up, untimed
  sim_config sc;
  sc.prefill_ns_per_token = 0;
  sc.prefill_base_ns = 0;
  sc.decode_base_ns = 0;
  sc.layout.block_tokens = block_tokens;
  sc.layout.dtype_bytes = 2;
  sc.layout.kv_heads = 1;
  sc.layout.head_dim = 128;
  sc.layout.layers = static_cast<uint32_t>(size / layer_bytes);
  sc.max_context = n * block_tokens + 64;
  caf::scoped_actor self{sys};
  std::vector<caf::actor> spawned;
  auto cleanup = [&] {
    for (auto& a : spawned)
      caf::anon_send_exit(a, caf::exit_reason::user_shutdown);
  };
  auto spawn = [&](worker_id id, const char* name, uint32_t blocks) -> result<caf::actor> {
    auto t = make_transport(o.transport, shared_inline);
    if (!t) return t.error();
    decode_config c;
    c.num_blocks = blocks;
    c.fetch_timeout = std::chrono::seconds(60);
    worker_info info;
    info.id = id;
    info.kind = role::decode;
    info.name = name;
    info.node = "bench";
    auto a = spawn_decode(sys, info, c, std::make_unique<bench_engine>(sc, o.check_kv), *t,
                          caf::actor_cast<caf::actor>(self), caf::actor{});
    spawned.push_back(a);
    bool ok = false;
    self->receive(
        [&](register_worker&) {
          ok = true;
          return true;
        },
        caf::after(std::chrono::seconds(30)) >> [] {});
    if (!ok) return error_info{errc::unavailable, fmt::format("{} did not register", name)};
    return a;
  };
  // A holds every prompt (n full blocks and the block of the last token each); B one at a
  // time, twice over.
  auto a = spawn(1, "source", prompts * (n + 2) + 4);
  if (!a) {
    row.error = a.error().message;
    cleanup();
    return row;
  }
  auto b = spawn(2, "requester", 2 * (n + 2) + 4);
  if (!b) {
    row.error = b.error().message;
    cleanup();
    return row;
  }
  const auto router = caf::actor_cast<caf::actor>(self);
  auto assign = [&](const caf::actor& w, uint32_t p, fetch_hint hint) {
    generate_request r;
    r.id = next_id++;
    r.prompt = prompt(n * block_tokens + 1, p);
    r.options.max_tokens = 1;
    r.tr.id = r.id;
    r.client = router;
    const auto id = r.id;
    self->send(w, decode_assignment{std::move(r), caf::actor{}, router, std::move(hint)});
    return id;
  };
  for (uint32_t p = 0; p < prompts && row.error.empty(); ++p)
    row.error = await_done(self, assign(*a, p, {}));
  std::optional<kv_fetch_status> before;
  std::vector<double> request_ms;
  for (uint32_t p = 0; p < prompts && row.error.empty(); ++p) {
    if (p == 1) {
      auto s = status_of(self, *b);
      if (!s) {
        row.error = s.error().message;
        break;
      }
      before = s->fetch;
    }
    const auto t0 = now_ns();
    row.error = await_done(self, assign(*b, p, fetch_hint{*a, "source", n}));
    if (p >= 1) request_ms.push_back(static_cast<double>(now_ns() - t0) / 1e6);
  }
  if (row.error.empty() && before) {
    auto s = status_of(self, *b);
    if (!s) {
      row.error = s.error().message;
    } else {
      const auto& x = s->fetch;
      auto& f = row.fetch;
      f.started = x.started - before->started;
      f.completed = x.completed - before->completed;
      f.failed = x.failed - before->failed;
      f.blocks = x.blocks - before->blocks;
      f.bytes = x.bytes - before->bytes;
      f.missing = x.missing - before->missing;
      f.time_ns = x.time_ns - before->time_ns;
      row.gbps = f.time_ns ? static_cast<double>(f.bytes) / static_cast<double>(f.time_ns) : 0;
      row.fetch_ms_mean =
          f.completed ? static_cast<double>(f.time_ns) / 1e6 / static_cast<double>(f.completed) : 0;
      std::sort(request_ms.begin(), request_ms.end());
      if (!request_ms.empty()) row.request_ms_p50 = request_ms[request_ms.size() / 2];
    }
  }
  cleanup();
  return row;
}

}  // namespace

command add_bench_fetch(CLI::App& app) {
  auto o = std::make_shared<bench_fetch_opts>();
  app.add_option("--transport", o->transport,
                 "inline: the bytes travel in the reply (single-process clusters); ucx: a "
                 "one-sided put over loopback (UCX_TLS from the environment)")
      ->check(CLI::IsMember({"inline", "ucx"}))
      ->capture_default_str();
  app.add_option("--sizes", o->sizes,
                 "Block sizes, multiples of 8K (default 16K,64K,256K,1M,4M,16M, as bench-transfer)")
      ->delimiter(',');
  app.add_option("--fetch-bytes", o->fetch_bytes,
                 "Bytes per fetch: blocks per fetch = this / block size (at least 1)")
      ->check(CLI::Range(uint64_t{1}, uint64_t{1} << 30))
      ->capture_default_str();
  app.add_option("--max-blocks", o->max_blocks, "At most this many blocks per fetch")
      ->check(CLI::Range(1u, 1024u))
      ->capture_default_str();
  app.add_option("--fetches", o->fetches, "Timed fetches per size (after one untimed)")
      ->check(CLI::Range(1u, 1000u))
      ->capture_default_str();
  app.add_flag("--check-kv", o->check_kv,
               "Include the sim engine's check of every fetched byte in the fetch time");
  app.add_flag("--json", o->json, "Print one JSON object");
  return [o]() -> int {
    std::vector<uint64_t> sizes;
    if (o->sizes.empty()) sizes = {16 * kib, 64 * kib, 256 * kib, 1 * mib, 4 * mib, 16 * mib};
    for (const auto& s : o->sizes) {
      uint64_t b = parse_size(s);
      if (b == 0 || b % layer_bytes != 0 || b > 64 * mib)
        return fail(fmt::format("bad block size '{}' (a multiple of {}, at most 64 MiB)", s,
                                size_name(layer_bytes)));
      sizes.push_back(b);
    }
    const char* tls = std::getenv("UCX_TLS");
    const double load_before = loadavg_1min();
    std::vector<size_row> rows;
    {
      bench_config cfg;
      caf::actor_system sys{cfg};
      std::shared_ptr<kv_transport> shared_inline;
      request_id next_id = 1;
      for (auto s : sizes) {
        rows.push_back(run_size(sys, *o, s, shared_inline, next_id));
        if (!rows.back().error.empty())
          return fail(fmt::format("{} blocks: {}", size_name(s), rows.back().error));
      }
    }
    const double load_after = loadavg_1min();
    nlohmann::ordered_json j;
    j["transport"] = o->transport;
    j["ucx_tls"] = o->transport == "ucx" ? (tls ? tls : "default") : "";
    j["check_kv"] = o->check_kv;
    j["machine"] = {{"loadavg_1min", load_before}, {"loadavg_1min_after", load_after}};
    auto arr = nlohmann::ordered_json::array();
    for (const auto& r : rows)
      arr.push_back({{"block_bytes", r.block_bytes},
                     {"blocks_per_fetch", r.blocks_per_fetch},
                     {"fetches", r.fetch.completed},
                     {"failed", r.fetch.failed},
                     {"blocks", r.fetch.blocks},
                     {"missing", r.fetch.missing},
                     {"bytes", r.fetch.bytes},
                     {"gbps", r.gbps},
                     {"fetch_ms_mean", r.fetch_ms_mean},
                     {"request_ms_p50", r.request_ms_p50}});
    j["sizes"] = arr;
    if (o->json) {
      std::printf("%s\n", j.dump().c_str());
      return 0;
    }
    std::printf(
        "fetch between two decode workers, transport %s%s, sim engine%s\n", o->transport.c_str(),
        o->transport == "ucx" ? fmt::format(" (UCX_TLS={})", tls ? tls : "default").c_str() : "",
        o->check_kv ? " (content check on)" : "");
    std::printf("load %.2f before / %.2f after\n\n", load_before, load_after);
    std::printf("%10s %8s %8s %7s %9s %9s %12s %12s\n", "block", "blocks/f", "fetches", "failed",
                "missing", "GB/s", "fetch ms", "request ms");
    for (const auto& r : rows)
      std::printf("%10s %8u %8llu %7llu %9llu %9.2f %12.2f %12.2f\n",
                  size_name(r.block_bytes).c_str(), r.blocks_per_fetch,
                  static_cast<unsigned long long>(r.fetch.completed),
                  static_cast<unsigned long long>(r.fetch.failed),
                  static_cast<unsigned long long>(r.fetch.missing), r.gbps, r.fetch_ms_mean,
                  r.request_ms_p50);
    std::printf(
        "\nGB/s: bytes fetched / the requester's fetch time (asking to taking the answer: "
        "pinning, checksums, write, flush, reply, delivery, checks), 1e9 B/s; fetch ms: mean "
        "per fetch; request ms: p50 assignment to done (fetch, last block, one token)\n");
    return 0;
  };
}

}  // namespace tokenmill::app
