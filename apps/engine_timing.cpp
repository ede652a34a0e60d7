#include "apps/engine_timing.hpp"

#include <sched.h>
#include <sys/resource.h>

#include <fstream>
#include <optional>
#include <thread>

#include <fmt/format.h>

#include "common/stats.hpp"
#include "grammar/grammar.hpp"

namespace tokenmill::app {

double loadavg_1min() {
  std::ifstream in("/proc/loadavg");
  double l = -1;
  in >> l;
  return in ? l : -1;
}

std::pair<uint64_t, uint64_t> cpu_steal_jiffies() {
  std::ifstream in("/proc/stat");
  std::string tag;
  in >> tag;
  if (tag != "cpu") return {0, 0};
  uint64_t v[8] = {};
  for (auto& x : v)
    in >> x;
  if (!in) return {0, 0};
  uint64_t total = 0;
  for (uint64_t x : v)
    total += x;
  return {v[7], total};
}

std::string cpu_model_name() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0) {
      auto p = line.find(':');
      return p == std::string::npos ? line : line.substr(p + 2);
    }
  return "unknown";
}

uint32_t usable_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return std::thread::hardware_concurrency();
  return static_cast<uint32_t>(CPU_COUNT(&set));
}

uint64_t available_memory_bytes() {
  std::ifstream in("/proc/meminfo");
  std::string key, unit;
  uint64_t kib = 0;
  while (in >> key >> kib >> unit)
    if (key == "MemAvailable:") return kib * 1024;
  return 0;
}

double process_cpu_s() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

double cpu_share_meter::share() const {
  double wall = (now_ns() - wall0) / 1e9;
  return wall > 0 ? (process_cpu_s() - cpu0) / (wall * threads) : 0;
}

namespace {

uint64_t view_bytes(const tensor_view& v) {
  return v.present() ? v.rows * row_bytes(v.type, v.cols) : 0;
}

}  // namespace

uint64_t step_weight_bytes(const loaded_model& m, uint32_t elem_bytes) {
  auto bytes = [&](const tensor_view& v) {
    return elem_bytes == 0 ? view_bytes(v) : (v.present() ? v.rows * v.cols * elem_bytes : 0);
  };
  uint64_t n = bytes(m.weights.output);
  for (const auto& l : m.weights.layers)
    n += bytes(l.wq) + bytes(l.wk) + bytes(l.wv) + bytes(l.wo) + bytes(l.w_gate) + bytes(l.w_up) +
         bytes(l.w_down);
  return n;
}

std::vector<token_id> prompt_ids(uint32_t n, uint32_t vocab, uint64_t salt) {
  std::vector<token_id> t(n);
  for (uint32_t i = 0; i < n; ++i)
    t[i] = static_cast<token_id>(3 + ((i + 1) * 2654435761ull + salt * 40503ull) % (vocab - 3));
  return t;
}

result<engine_timing> time_prefill(engine& eng, block_pool& pool, uint32_t prompt_tokens,
                                   uint32_t chunk, uint32_t repeat, uint32_t threads) {
  const auto& info = eng.info();
  auto toks = prompt_ids(prompt_tokens, info.vocab_size, prompt_tokens);
  auto bt = pool.allocate(info.layout.blocks_for(prompt_tokens));
  if (!bt)
    return error_info{
        errc::out_of_blocks,
        fmt::format("a {}-token prompt needs {} KV blocks; the pool has {} free", prompt_tokens,
                    info.layout.blocks_for(prompt_tokens), pool.free())};
  auto run = [&]() -> result<void> {
    for (uint32_t begin = 0; begin < prompt_tokens; begin += chunk) {
      prefill_chunk c;
      c.tokens = toks;
      c.begin = begin;
      c.end = std::min(prompt_tokens, begin + chunk);
      c.blocks = *bt;
      if (auto r = eng.prefill(pool, std::span<const prefill_chunk>(&c, 1)); !r) return r.error();
    }
    return {};
  };
  engine_timing t;
  t.calls = (prompt_tokens + chunk - 1) / chunk;
  auto warm = run();
  std::vector<double> secs;
  cpu_share_meter meter{threads};
  for (uint32_t r = 0; warm && r < repeat; ++r) {
    int64_t t0 = now_ns();
    warm = run();
    secs.push_back((now_ns() - t0) / 1e9);
  }
  t.cpu_share = meter.share();
  pool.release(*bt);
  if (!warm) return warm.error();
  t.median_s = median(secs);
  return t;
}

uint32_t decode_blocks_per_seq(const kv_layout& layout, uint32_t context, uint32_t steps,
                               uint32_t warm_steps) {
  return layout.blocks_for(context + warm_steps + steps + 1);
}

result<engine_timing> time_decode(engine& eng, block_pool& pool, uint32_t batch, uint32_t context,
                                  uint32_t steps, uint32_t warm_steps, uint32_t threads,
                                  std::shared_ptr<const grammar::token_automaton> grammar) {
  const auto& info = eng.info();
  const auto& layout = info.layout;
  const uint32_t per_seq = decode_blocks_per_seq(layout, context, steps, warm_steps);
  std::vector<std::vector<block_id>> tables;
  auto release = [&] {
    for (const auto& t : tables)
      pool.release(t);
  };
  for (uint32_t s = 0; s < batch; ++s) {
    auto bt = pool.allocate(per_seq);
    if (!bt) {
      release();
      return error_info{errc::out_of_blocks,
                        fmt::format("a batch of {} at {} tokens of context needs {} KV blocks",
                                    batch, context, size_t{batch} * per_seq)};
    }
    tables.push_back(std::move(*bt));
  }
  auto ctx_toks = prompt_ids(context, info.vocab_size, 7);
  prefill_chunk chunk;
  chunk.tokens = ctx_toks;
  chunk.begin = 0;
  chunk.end = context;
  chunk.blocks = tables[0];
  auto prefilled = eng.prefill(pool, std::span<const prefill_chunk>(&chunk, 1));
  if (!prefilled) {
    release();
    return prefilled.error();
  }
  token_id first = (*prefilled)[0];
  std::vector<std::byte> staged(pool.block_bytes());
  for (uint32_t s = 1; s < batch; ++s)
    for (uint32_t k = 0; k < layout.blocks_for(context); ++k) {
      pool.storage().copy_out(size_t{tables[0][k]} * pool.block_bytes(), staged.data(),
                              staged.size());
      pool.storage().copy_in(size_t{tables[s][k]} * pool.block_bytes(), staged.data(),
                             staged.size());
    }
  std::vector<std::vector<token_id>> seqs(batch, ctx_toks);
  // Constrained: the output starts after the context, so the first token (sampled
  // unconstrained by the prefill above) is replaced by one the grammar allows.
  std::vector<grammar::grammar_state> states(grammar ? batch : 0);
  if (grammar) {
    auto m = grammar->allowed(grammar->start());
    for (size_t id = 0; id < m.size() * 64; ++id)
      if (grammar::mask_allows(m, token_id(id))) {
        first = token_id(id);
        break;
      }
    for (auto& g : states)
      g.start(grammar, context);
  }
  for (auto& s : seqs)
    s.push_back(first);
  std::vector<double> times, grammar_times;
  std::optional<cpu_share_meter> meter;
  for (uint32_t step = 0; step < warm_steps + steps; ++step) {
    if (step == warm_steps) meter.emplace(cpu_share_meter{threads});
    std::vector<decode_seq> b(batch);
    int64_t t0 = now_ns();
    for (uint32_t s = 0; s < batch; ++s) {
      b[s].tokens = seqs[s];
      b[s].blocks = tables[s];
      if (grammar) {
        if (auto g = states[s].catch_up(seqs[s]); !g) {
          release();
          return g.error();
        }
        b[s].allowed = states[s].allowed();
      }
    }
    const double grammar_dt = (now_ns() - t0) / 1e9;
    auto next = eng.decode(pool, b);
    double dt = (now_ns() - t0) / 1e9;
    if (!next) {
      release();
      return next.error();
    }
    if (step >= warm_steps) {
      times.push_back(dt);
      grammar_times.push_back(grammar_dt);
    }
    for (uint32_t s = 0; s < batch; ++s)
      seqs[s].push_back((*next)[s]);
  }
  engine_timing t;
  t.cpu_share = meter ? meter->share() : 0;
  release();
  t.median_s = median(times);
  t.grammar_s = grammar ? median(grammar_times) : 0;
  t.calls = 1;
  return t;
}

}  // namespace tokenmill::app
