// `tokenmill profile`: measures one engine (sim, cpu or cuda; the engine options of `serve`)
// the way `tokenmill plan` needs it: prefill time per chunk size and prompt length, the
// decode step per batch size and context, the prefill saturation point, and the KV layout
// with the blocks this machine's memory would hold. JSON (cluster/engine_profile.hpp) to
// stdout (--json) or a file (-o), a table otherwise, progress on stderr.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "apps/commands.hpp"
#include "apps/engine_options.hpp"
#include "apps/engine_timing.hpp"
#include "cluster/engine_profile.hpp"
#include "engine/engine_factory.hpp"

namespace tokenmill::app {
namespace {

struct profile_opts {
  engine_spec spec;
  engine_options engine;
  std::vector<uint32_t> chunks;       ///< default per engine kind, see defaults_for
  std::vector<uint32_t> prompt_lens;  ///< prompts longer than a chunk, timed in chunks
  std::vector<uint32_t> batches;
  std::vector<uint32_t> contexts;
  uint32_t repeat = 3;        ///< timed runs per prefill point (median)
  uint32_t decode_steps = 6;  ///< timed steps per decode point (median)
  double saturation = 0.9;
  double kv_memory_gib = 0;         ///< 0: measured (MemAvailable, or the device's memory)
  uint64_t kv_bytes_per_token = 0;  ///< 0: the engine's layout
  bool json = false;
  std::string out;
};

/// Sweeps that finish well under a minute: the sim engine's default timing model, the
/// `small` CPU preset on two cores, and a large model on one GPU.
void defaults_for(const std::string& kind, profile_opts& o) {
  auto fill = [](std::vector<uint32_t>& v, std::vector<uint32_t> d) {
    if (v.empty()) v = std::move(d);
  };
  if (kind == "cpu") {
    fill(o.chunks, {16, 32, 64, 128, 256, 512});
    fill(o.prompt_lens, {512});
    fill(o.batches, {1, 4, 16, 32});
    fill(o.contexts, {64, 512});
  } else if (kind == "cuda") {
    fill(o.chunks, {64, 128, 256, 512, 1024, 2048, 4096});
    fill(o.prompt_lens, {4096});
    fill(o.batches, {1, 8, 32, 128});
    fill(o.contexts, {512, 2048});
  } else {
    fill(o.chunks, {32, 64, 128, 256, 512, 1024, 2048});
    fill(o.prompt_lens, {2048});
    fill(o.batches, {1, 8, 32, 128});
    fill(o.contexts, {512, 2048});
  }
  for (auto* v : {&o.chunks, &o.prompt_lens, &o.batches, &o.contexts}) {
    std::sort(v->begin(), v->end());
    v->erase(std::unique(v->begin(), v->end()), v->end());
  }
}

void print_table(const engine_profile& p) {
  std::printf("engine  %s, model %s, %u thread(s), max context %u\n", p.engine.c_str(),
              p.model_name.c_str(), p.threads, p.max_context);
  std::printf("machine %s (%u hardware threads), load %.2f before / %.2f after%s\n", p.cpu.c_str(),
              p.hardware_threads, p.loadavg_before, p.loadavg_after,
              p.device_name.empty() ? "" : fmt::format(", device {}", p.device_name).c_str());
  std::printf(
      "KV      %u tokens per block of %llu bytes (%u layers x %u kv heads x %u dims x %u bytes); "
      "capacity counted at %llu bytes per token: %.1f GiB (%s) hold %llu blocks\n\n",
      p.layout.block_tokens, static_cast<unsigned long long>(p.layout.block_bytes()),
      p.layout.layers, p.layout.kv_heads, p.layout.head_dim, p.layout.dtype_bytes,
      static_cast<unsigned long long>(p.kv_bytes_per_token), p.kv_memory_bytes / 1073741824.0,
      p.kv_memory_source.c_str(), static_cast<unsigned long long>(p.kv_max_blocks));
  std::printf("%-8s %8s %6s %12s %12s\n", "chunk", "prompt", "calls", "time", "tokens/s");
  for (const auto& x : p.prefill)
    std::printf("%-8u %8u %6u %9.2f ms %12.0f%s\n", x.chunk_tokens, x.prompt_tokens, x.calls,
                x.seconds * 1e3, x.prompt_tokens / x.seconds,
                x.chunk_tokens == p.saturation_chunk && x.prompt_tokens == x.chunk_tokens
                    ? "  <- saturation"
                    : "");
  std::printf(
      "prefill saturates at %u tokens per call: %.0f%% of the peak %.0f tokens/s (bigger calls "
      "only add queueing)\n\n",
      p.saturation_chunk, 100 * p.saturation_fraction, p.peak_prefill_tokens_per_s);
  std::printf("%-8s %8s %12s %12s\n", "batch", "context", "step", "tokens/s");
  for (const auto& x : p.decode)
    std::printf("%-8u %8u %9.2f ms %12.0f\n", x.batch, x.context_tokens, x.step_seconds * 1e3,
                x.batch / x.step_seconds);
}

}  // namespace

command add_profile(CLI::App& app) {
  auto o = std::make_shared<profile_opts>();
  add_engine_options(app, o->spec, o->engine, "Compute threads (0 = all hardware threads)");
  auto* s = app.add_option_group("sweep", "What to measure (defaults depend on --engine)");
  s->add_option("--chunks", o->chunks,
                "Prefill chunk sizes, tokens per engine call (default sim: 32..2048, cpu: "
                "16..512, cuda: 64..4096, powers of two)")
      ->check(CLI::Range(1u, 1u << 20));
  s->add_option("--prompt-lens", o->prompt_lens,
                "Prompt lengths prefilled in chunks of each size (default sim 2048, cpu 512, "
                "cuda 4096)")
      ->check(CLI::Range(1u, 1u << 20));
  s->add_option("--batches", o->batches,
                "Decode batch sizes (default sim/cuda 1 8 32 128, cpu 1 4 16 32)")
      ->check(CLI::Range(1u, 4096u));
  s->add_option("--contexts", o->contexts,
                "Context tokens of each decoded sequence (default sim/cuda 512 2048, cpu 64 512)")
      ->check(CLI::Range(1u, 1u << 20));
  s->add_option("--repeat", o->repeat, "Timed runs per prefill point (median)")
      ->check(CLI::Range(1u, 1000u))
      ->capture_default_str();
  s->add_option("--decode-steps", o->decode_steps, "Timed steps per decode point (median)")
      ->check(CLI::Range(1u, 100000u))
      ->capture_default_str();
  s->add_option("--saturation", o->saturation,
                "Share of the peak prefill throughput that counts as saturated")
      ->check(CLI::Range(0.01, 1.0))
      ->capture_default_str();
  auto* k = o->engine.kv_group;
  k->add_option("--kv-memory-gib", o->kv_memory_gib,
                "Memory for KV blocks on one host (GiB; 0 = measured: MemAvailable, or the "
                "device's memory less the weights)")
      ->check(CLI::Range(0.0, 1e6))
      ->capture_default_str();
  k->add_option("--kv-bytes-per-token", o->kv_bytes_per_token,
                "KV bytes per token the capacity is counted with (0 = the engine's layout; set "
                "it to model a large model's KV with the sim engine's small layout)")
      ->capture_default_str();
  app.add_flag("--json", o->json, "Print the profile as JSON on stdout instead of the table");
  app.add_option("-o,--output", o->out, "Write the profile (JSON) to this file");
  return [o]() -> int {
    auto usage = [](const std::string& m) {
      std::fprintf(stderr, "tokenmill profile: %s\n", m.c_str());
      return 2;
    };
    auto failed = [](const std::string& m) {
      std::fprintf(stderr, "tokenmill profile: %s\n", m.c_str());
      return 1;
    };
    if (auto r = resolve_engine_spec(o->spec, o->engine); !r) return usage(r.error().message);
    auto& spec = o->spec;
    defaults_for(spec.kind, *o);
    engine_profile p;
    p.loadavg_before = loadavg_1min();
    p.engine = spec.kind;
    if (spec.kind != "sim") {
      std::fprintf(stderr, "[profile] loading %s\n", spec.model_path.c_str());
      if (auto r = load_engine_model(spec); !r) return failed(r.error().message);
      std::error_code ec;
      auto abs = std::filesystem::absolute(spec.model_path, ec);
      p.model_path = ec ? spec.model_path : abs.lexically_normal().string();
    }
    if (spec.kind == "cpu" && spec.cpu.threads == 0)
      spec.cpu.threads = std::thread::hardware_concurrency();
    auto made = make_engine(spec);
    if (!made) return failed(made.error().message);
    std::unique_ptr<engine> eng = std::move(*made);
    const auto& info = eng->info();
    p.model_name = spec.kind == "sim" ? "sim" : info.name;
    p.threads = spec.kind == "cpu" ? spec.cpu.threads : 1;
    p.device = spec.kind == "cuda" ? static_cast<uint32_t>(spec.cuda.device) : 0;
    p.max_context = info.max_context;
    p.has_sim = spec.kind == "sim";
    p.sim = spec.sim;
    p.layout = info.layout;
    p.saturation_fraction = o->saturation;
    p.cpu = cpu_model_name();
    p.hardware_threads = std::thread::hardware_concurrency();

    // The points the context allows; a decode point needs room for its steps.
    const uint32_t warm = 2;
    auto fits = [&](uint32_t tokens) { return tokens <= info.max_context; };
    std::vector<std::pair<uint32_t, uint32_t>> pre;  // (chunk, prompt)
    for (uint32_t c : o->chunks) {
      if (fits(c)) pre.emplace_back(c, c);
      for (uint32_t l : o->prompt_lens)
        if (l > c && fits(l)) pre.emplace_back(c, l);
    }
    std::vector<std::pair<uint32_t, uint32_t>> dec;  // (context, batch)
    for (uint32_t ctx : o->contexts)
      if (fits(ctx + warm + o->decode_steps + 1))
        for (uint32_t b : o->batches)
          dec.emplace_back(ctx, b);
    if (pre.empty())
      return usage(
          fmt::format("no --chunks size fits the model's context of {} tokens", info.max_context));
    if (dec.empty())
      return usage(
          fmt::format("no --contexts value leaves room for {} decode steps in the "
                      "model's context of {} tokens",
                      o->decode_steps + warm + 1, info.max_context));
    uint32_t blocks = 0;
    for (auto [c, l] : pre)
      blocks = std::max(blocks, info.layout.blocks_for(l));
    for (auto [ctx, b] : dec)
      blocks = std::max(blocks, b * decode_blocks_per_seq(info.layout, ctx, o->decode_steps, warm));
    std::unique_ptr<block_pool> pool;
    try {
      pool = make_pool(*eng, blocks);
    } catch (const std::exception& e) {
      return failed(fmt::format("a KV pool of {} blocks for the sweep: {}", blocks, e.what()));
    }

    const size_t total = pre.size() + dec.size();
    size_t done = 0;
    for (auto [c, l] : pre) {
      auto t = time_prefill(*eng, *pool, l, c, o->repeat, p.threads);
      if (!t) return failed(t.error().message);
      p.prefill.push_back({c, l, t->calls, t->median_s});
      std::fprintf(stderr, "[profile %zu/%zu] prefill chunk %u, prompt %u: %.2f ms\n", ++done,
                   total, c, l, t->median_s * 1e3);
    }
    for (auto [ctx, b] : dec) {
      auto t = time_decode(*eng, *pool, b, ctx, o->decode_steps, warm, p.threads);
      if (!t) return failed(t.error().message);
      p.decode.push_back({b, ctx, t->median_s});
      std::fprintf(stderr, "[profile %zu/%zu] decode batch %u, context %u: %.2f ms/step\n", ++done,
                   total, b, ctx, t->median_s * 1e3);
    }
    pool.reset();
    auto sat = find_prefill_saturation(p.prefill, p.saturation_fraction);
    if (!sat) return failed(sat.error().message);
    p.saturation_chunk = sat->chunk_tokens;
    p.peak_prefill_tokens_per_s = sat->peak_tokens_per_s;

    // KV capacity: what the pools of this host could take.
    p.kv_bytes_per_token = o->kv_bytes_per_token
                               ? o->kv_bytes_per_token
                               : info.layout.block_bytes() / info.layout.block_tokens;
    if (o->kv_memory_gib > 0) {
      p.kv_memory_bytes = static_cast<uint64_t>(o->kv_memory_gib * 1073741824.0);
      p.kv_memory_source = "--kv-memory-gib";
    } else if (spec.kind == "cuda") {
      try {
        auto dev = probe_cuda_device(spec.cuda.device, size_t{64} << 20);
        p.device_name = dev.name;
        const uint32_t elem = spec.cuda.dtype == "f32" ? 4 : 2;
        double usable = dev.memory_gb * 1e9 * 0.9 - double(step_weight_bytes(*spec.model, elem));
        p.kv_memory_bytes = usable > 0 ? static_cast<uint64_t>(usable) : 0;
        p.kv_memory_source = "90% of the device memory less the weights";
      } catch (const std::exception& e) {
        return failed(fmt::format("device probe: {}", e.what()));
      }
    } else {
      p.kv_memory_bytes = available_memory_bytes() * 9 / 10;
      p.kv_memory_source = "90% of MemAvailable";
    }
    const uint64_t block_bytes = p.kv_bytes_per_token * info.layout.block_tokens;
    p.kv_max_blocks = std::min<uint64_t>(p.kv_memory_bytes / block_bytes, 0xffffffffu);
    p.loadavg_after = loadavg_1min();

    std::string text = profile_to_json(p);
    if (!o->out.empty()) {
      std::ofstream f(o->out, std::ios::binary | std::ios::trunc);
      f << text;
      f.close();
      if (!f) return failed(fmt::format("cannot write {}", o->out));
      std::fprintf(stderr, "[profile] wrote %s\n", o->out.c_str());
    }
    if (o->json)
      std::printf("%s", text.c_str());
    else
      print_table(p);
    return 0;
  };
}

}  // namespace tokenmill::app
