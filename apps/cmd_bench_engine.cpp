// `tokenmill bench-engine`: one engine alone, no cluster. Measures prefill and decode
// throughput on a model file and puts the decode step's weight traffic next to the memory
// bandwidth measured by the same program: the host's with the same threads (cpu engine),
// or the device's copy bandwidth and cuBLAS GEMM throughput (cuda engine).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <thread>
#include <vector>

#include <sched.h>
#include <sys/resource.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "apps/commands.hpp"
#include "apps/engine_timing.hpp"
#include "common/clock.hpp"
#include "common/stats.hpp"
#include "engine/cpu/quant.hpp"
#include "engine/cpu_engine.hpp"
#include "engine/engine_factory.hpp"
#include "engine/model.hpp"
#include "grammar/grammar.hpp"

namespace tokenmill::app {
namespace {

struct bench_engine_opts {
  std::string engine = "cpu";
  std::string model;
  int device = 0;
  std::string dtype = "bf16";
  bool no_graphs = false;
  std::vector<uint32_t> prefill_lens;  ///< default: 128 512 2048 (cpu), 512 2048 (cuda)
  std::vector<uint32_t> batches;       ///< default: 1 8 32 (cpu), 1 16 64 (cuda)
  uint32_t threads = 0;
  std::string kv_dtype = "f16";
  bool json = false;
  uint32_t repeat = 3;             ///< timed runs of each prefill
  uint32_t decode_steps = 16;      ///< timed decode steps per batch size
  std::vector<uint32_t> contexts;  ///< context tokens before decoding; default 128 2048
  uint64_t bw_mib = 1024;          ///< buffer of the bandwidth measurement (MiB)
  bool constrained = false;        ///< also time decode steps under a json_object grammar
  std::string hugepages = "auto";  ///< --weights-hugepages (weights_memory.hpp)
};

/// Sum of n words read with 128-bit vector adds, four independent accumulators (the scalar
/// loop -O2 makes of the plain version caps well below one core's memory bandwidth).
uint64_t sum_words(const uint64_t* p, size_t n) {
  using u64x2 = uint64_t __attribute__((vector_size(16)));
  u64x2 a0{}, a1{}, a2{}, a3{};
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    u64x2 x0, x1, x2, x3;
    std::memcpy(&x0, p + i, 16);
    std::memcpy(&x1, p + i + 2, 16);
    std::memcpy(&x2, p + i + 4, 16);
    std::memcpy(&x3, p + i + 6, 16);
    a0 += x0;
    a1 += x1;
    a2 += x2;
    a3 += x3;
  }
  u64x2 s = a0 + a1 + a2 + a3;
  uint64_t r = s[0] + s[1];
  for (; i < n; ++i)
    r += p[i];
  return r;
}

struct bandwidth {
  double bytes_per_s = 0;  ///< best pass
  double cpu_share = 0;    ///< over all passes
};

/// Streaming-read bandwidth of `buf` split over `threads` threads; the best of `runs`
/// passes (the machine may be shared: the best pass is the least disturbed).
bandwidth read_bandwidth(const std::vector<uint64_t>& buf, uint32_t threads, int runs) {
  std::atomic<uint64_t> sink{0};
  bandwidth bw;
  cpu_share_meter meter{threads};
  for (int r = 0; r < runs; ++r) {
    size_t per = buf.size() / threads;
    int64_t t0 = now_ns();
    std::vector<std::thread> pool;
    for (uint32_t t = 0; t < threads; ++t) {
      size_t begin = t * per, end = t + 1 == threads ? buf.size() : (t + 1) * per;
      pool.emplace_back([&, begin, end] { sink += sum_words(buf.data() + begin, end - begin); });
    }
    for (auto& t : pool)
      t.join();
    double secs = (now_ns() - t0) / 1e9;
    bw.bytes_per_s =
        std::max(bw.bytes_per_s, static_cast<double>(buf.size() * sizeof(uint64_t)) / secs);
  }
  bw.cpu_share = meter.share();
  if (sink.load() == 42) std::fprintf(stderr, " ");  // keeps the sums alive
  return bw;
}

/// Multiply-adds per token of every linear layer and the output head.
uint64_t linear_params(const loaded_model& m) {
  auto n = [](const tensor_view& v) { return v.present() ? v.rows * v.cols : 0; };
  uint64_t p = n(m.weights.output);
  for (const auto& l : m.weights.layers)
    p += n(l.wq) + n(l.wk) + n(l.wv) + n(l.wo) + n(l.w_gate) + n(l.w_up) + n(l.w_down);
  return p;
}

uint64_t parameter_count(const loaded_model& m) {
  auto n = [](const tensor_view& v) { return v.present() ? v.rows * v.cols : 0; };
  const auto& w = m.weights;
  uint64_t p = n(w.tok_embd) + n(w.out_norm) + (m.config.tied_output ? 0 : n(w.output));
  for (const auto& l : w.layers)
    for (const auto* v : {&l.attn_norm, &l.wq, &l.wk, &l.wv, &l.wo, &l.bq, &l.bk, &l.bv,
                          &l.ffn_norm, &l.w_gate, &l.w_up, &l.w_down})
      p += n(*v);
  return p;
}

}  // namespace

command add_bench_engine(CLI::App& app) {
  auto o = std::make_shared<bench_engine_opts>();
  app.add_option("--model", o->model, "GGUF file or Hugging Face directory")->required();
  app.add_option("--engine", o->engine, "Engine to measure")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  app.add_option("--device", o->device, "CUDA device ordinal (cuda)")->capture_default_str();
  app.add_option("--dtype", o->dtype, "Weights and GEMM inputs (cuda)")
      ->check(CLI::IsMember({"bf16", "f16", "f32"}))
      ->capture_default_str();
  app.add_flag("--no-cuda-graphs", o->no_graphs, "Decode without CUDA graphs (cuda)");
  app.add_option("--prefill-lens", o->prefill_lens,
                 "Prompt lengths to prefill (default 128 512 2048; cuda: 512 2048)")
      ->check(CLI::Range(1u, 1u << 20));
  app.add_option("--batches", o->batches, "Decode batch sizes (default 1 8 32; cuda: 1 16 64)")
      ->check(CLI::Range(1u, 4096u));
  app.add_option("--threads", o->threads, "Compute threads (0: all hardware threads)")
      ->capture_default_str();
  app.add_option("--kv-dtype", o->kv_dtype, "KV cache element type")
      ->check(CLI::IsMember({"f16", "f32"}))
      ->capture_default_str();
  app.add_flag("--json", o->json, "Print one JSON object");
  app.add_option("--repeat", o->repeat, "Timed runs of each prefill (median reported)")
      ->check(CLI::Range(1u, 1000u))
      ->capture_default_str();
  app.add_option("--decode-steps", o->decode_steps,
                 "Timed decode steps per batch size (median step reported)")
      ->check(CLI::Range(1u, 100000u))
      ->capture_default_str();
  app.add_option("--context,--contexts", o->contexts,
                 "Context tokens of each sequence before decoding; every batch size runs at "
                 "each (default 128 2048; cuda: 128)")
      ->check(CLI::Range(1u, 1u << 20));
  app.add_flag("--constrained", o->constrained,
               "Also time each decode batch with constrained decoding (a json_object grammar "
               "masking the logits, as a decode worker does it) and report the time it adds");
  app.add_option("--bw-mib", o->bw_mib, "Buffer of the memory bandwidth measurement (MiB)")
      ->check(CLI::Range(uint64_t{16}, uint64_t{1} << 20))
      ->capture_default_str();
  app.add_option("--weights-hugepages", o->hugepages,
                 "cpu: copy the weights into transparent huge pages (on), map the file (off), "
                 "or on when the kernel's THP mode is always/madvise (auto)")
      ->capture_default_str();
  return [o]() -> int {
    double load_before = loadavg_1min();
    const auto steal_before = cpu_steal_jiffies();
    auto failed = [](const error_info& e) {
      std::fprintf(stderr, "tokenmill bench-engine: %s\n", e.message.c_str());
      return 1;
    };
    auto huge_mode = parse_weights_hugepages(o->hugepages, "--weights-hugepages");
    if (!huge_mode) return failed(huge_mode.error());
    const bool huge_copy =
        o->engine == "cpu" && use_weights_hugepages(*huge_mode, read_thp_enabled());
    const auto load_start = std::chrono::steady_clock::now();
    auto loaded = load_model(o->model, huge_copy);
    if (!loaded) return failed(loaded.error());
    const double load_s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();
    (*loaded)->wait_for_weights();  // the huge-page copy fills in the background
    const double filled_s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();
    const uint64_t huge_bytes = anon_huge_bytes();
    auto model = *loaded;
    const auto& c = model->config;
    const bool cuda = o->engine == "cuda";
    engine_spec spec;
    spec.kind = o->engine;
    spec.model = model;
    spec.cpu.threads = o->threads == 0 ? std::thread::hardware_concurrency() : o->threads;
    spec.cpu.kv_dtype_bytes = o->kv_dtype == "f32" ? 4 : 2;
    spec.cuda.device = o->device;
    spec.cuda.dtype = o->dtype;
    spec.cuda.kv_dtype_bytes = spec.cpu.kv_dtype_bytes;
    spec.cuda.graphs = !o->no_graphs;
    auto made = make_engine(spec);
    if (!made) return failed(made.error());
    std::unique_ptr<engine> eng = std::move(*made);
    const uint32_t threads = cuda ? 1 : spec.cpu.threads;
    const std::vector<uint32_t> prefill_lens = !o->prefill_lens.empty() ? o->prefill_lens
                                               : cuda ? std::vector<uint32_t>{512, 2048}
                                                      : std::vector<uint32_t>{128, 512, 2048};
    const std::vector<uint32_t> batches = !o->batches.empty() ? o->batches
                                          : cuda              ? std::vector<uint32_t>{1, 16, 64}
                                                              : std::vector<uint32_t>{1, 8, 32};
    const uint32_t warm_steps = 2;
    if (c.max_context < o->decode_steps + warm_steps + 2) {
      std::fprintf(stderr, "tokenmill bench-engine: --decode-steps exceeds the context (%u)\n",
                   c.max_context);
      return 1;
    }
    // Each context is capped so that the decode steps still fit in the model's context.
    std::vector<uint32_t> contexts = !o->contexts.empty() ? o->contexts
                                     : cuda               ? std::vector<uint32_t>{128}
                                                          : std::vector<uint32_t>{128, 2048};
    for (auto& ctx : contexts)
      ctx = std::min(ctx, c.max_context - o->decode_steps - warm_steps - 1);
    contexts.erase(std::unique(contexts.begin(), contexts.end()), contexts.end());
    const uint32_t max_ctx = *std::max_element(contexts.begin(), contexts.end());
    kv_layout layout = eng->info().layout;
    uint32_t per_seq = decode_blocks_per_seq(layout, max_ctx, o->decode_steps, warm_steps);
    uint32_t blocks =
        layout.blocks_for(*std::max_element(prefill_lens.begin(), prefill_lens.end())) +
        per_seq * *std::max_element(batches.begin(), batches.end());
    std::unique_ptr<block_pool> pool_owner;
    try {
      pool_owner = make_pool(*eng, blocks);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "tokenmill bench-engine: a pool of %u blocks: %s\n", blocks, e.what());
      return 1;
    }
    block_pool& pool = *pool_owner;
    // Untimed warm-up: a fresh process's threads often share one core until the load
    // balancer spreads them (0.1-0.5 s here), which made a run's first figures up to 3x
    // slower than its later ones. Short decodes run for a quarter second first.
    for (const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(250);
         std::chrono::steady_clock::now() < until;)
      if (auto w =
              time_decode(*eng, pool, 1, std::min<uint32_t>(32, max_ctx), 16, warm_steps, threads);
          !w)
        return failed(w.error());
    if (!o->json)
      std::fprintf(
          stderr,
          "model %s: %u layers, dim %u, vocab %u; %s engine, %u threads, KV %s, %u blocks\n",
          c.name.c_str(), c.layers, c.dim, c.vocab, o->engine.c_str(), threads, o->kv_dtype.c_str(),
          blocks);

    nlohmann::ordered_json j;
    dtype wtype = model->weights.layers.empty() ? dtype::f32 : model->weights.layers[0].wq.type;
    const uint32_t cuda_elem = o->dtype == "f32" ? 4 : 2;
    uint64_t step_bytes = step_weight_bytes(*model, cuda ? cuda_elem : 0);
    j["model"] = {{"path", o->model},
                  {"name", c.name},
                  {"format", model->format},
                  {"arch", c.arch},
                  {"params", parameter_count(*model)},
                  {"dtype", cuda ? o->dtype : std::string(dtype_name(wtype))},
                  {"dim", c.dim},
                  {"layers", c.layers},
                  {"heads", c.heads},
                  {"kv_heads", c.kv_heads},
                  {"ffn", c.ffn},
                  {"vocab", c.vocab},
                  {"step_weight_bytes", step_bytes}};
    j["engine"] = o->engine;
    // What the weights live in: the copy's huge pages (anon_huge_bytes once it is filled)
    // or the file mapping, and what loading cost (load_s: until load_model returned;
    // filled_s: until the background copy was done).
    j["weights_memory"] = {{"hugepages", o->hugepages},
                           {"huge_copy", huge_copy},
                           {"anon_huge_bytes", huge_bytes},
                           {"load_s", load_s},
                           {"filled_s", filled_s}};
    j["threads"] = threads;
    j["kv_dtype"] = o->kv_dtype;
    if (cuda) j["cuda_graphs"] = !o->no_graphs;

    // Prefill: one chunk per prompt, the whole prompt at once.
    nlohmann::ordered_json prefill = nlohmann::ordered_json::array();
    for (uint32_t len : prefill_lens) {
      if (len > c.max_context) continue;
      auto t = time_prefill(*eng, pool, len, len, o->repeat, threads);
      if (!t) return failed(t.error());
      prefill.push_back({{"prompt_tokens", len},
                         {"median_s", t->median_s},
                         {"tokens_per_s", len / t->median_s},
                         {"runs", o->repeat},
                         {"cpu_share", t->cpu_share}});
      if (!o->json) std::fprintf(stderr, "prefill %u: %.3f s\n", len, t->median_s);
    }
    j["prefill"] = prefill;

    // Constrained decoding: the json_object grammar over the model's vocabulary.
    std::shared_ptr<const grammar::token_automaton> automaton;
    if (o->constrained) {
      auto tok = make_tokenizer(spec);
      if (!tok) return failed(tok.error());
      std::vector<std::string> pieces(std::max((*tok)->vocab_size(), c.vocab));
      for (uint32_t i = 0; i < (*tok)->vocab_size(); ++i)
        pieces[i] = (*tok)->piece(static_cast<token_id>(i));
      const token_id eos = eng->info().eos;
      if (eos >= 0 && static_cast<size_t>(eos) < pieces.size()) pieces[size_t(eos)].clear();
      auto d = grammar::compile_grammar(grammar_kind::json_object, "");
      if (!d) return failed(d.error());
      automaton = std::make_shared<const grammar::token_automaton>(
          *d, std::make_shared<const grammar::vocabulary>(std::move(pieces), eos));
    }

    // Decode: every sequence of the batch has the same `ctx`-token context (prefilled once,
    // its KV copied into each sequence's own blocks, so the cache traffic is real).
    nlohmann::ordered_json decode = nlohmann::ordered_json::array();
    for (uint32_t ctx : contexts)
      for (uint32_t b : batches) {
        auto t = time_decode(*eng, pool, b, ctx, o->decode_steps, warm_steps, threads);
        if (!t) return failed(t.error());
        // Constrained: plain and constrained runs alternate twice, and each keeps its
        // fastest median, so that a burst of load on a shared machine hits both alike.
        std::optional<engine_timing> masked;
        if (automaton) {
          for (int round = 0; round < 2; ++round) {
            if (round > 0) {
              auto again = time_decode(*eng, pool, b, ctx, o->decode_steps, warm_steps, threads);
              if (!again) return failed(again.error());
              if (again->median_s < t->median_s) *t = *again;
            }
            auto m =
                time_decode(*eng, pool, b, ctx, o->decode_steps, warm_steps, threads, automaton);
            if (!m) return failed(m.error());
            if (!masked || m->median_s < masked->median_s) masked = *m;
          }
        }
        double med = t->median_s, share = t->cpu_share;
        // KV read by the step: every context position of every sequence, K and V, all layers.
        uint64_t kv_bytes = uint64_t{b} * (ctx + warm_steps + o->decode_steps / 2) * layout.layers *
                            2 * layout.kv_heads * layout.head_dim * layout.dtype_bytes;
        decode.push_back({{"batch", b},
                          {"context_tokens", ctx},
                          {"median_step_s", med},
                          {"tokens_per_s", b / med},
                          {"weight_bytes_per_s", step_bytes / med},
                          {"step_bytes", step_bytes + kv_bytes},
                          {"steps", o->decode_steps},
                          {"cpu_share", share}});
        if (masked) {
          auto& d = decode.back();
          d["constrained_median_step_s"] = masked->median_s;
          d["constrained_grammar_s"] = masked->grammar_s;
          d["constrained_added_share"] = masked->median_s / med - 1;
          d["constrained_cpu_share"] = masked->cpu_share;
        }
        if (!o->json)
          std::fprintf(stderr, "decode batch %u, context %u: %.2f ms/step\n", b, ctx, med * 1e3);
        if (!o->json && masked)
          std::fprintf(stderr,
                       "  constrained (json_object): %.2f ms/step (%+.1f%%), grammar work "
                       "outside the engine %.3f ms/step\n",
                       masked->median_s * 1e3, 100 * (masked->median_s / med - 1),
                       masked->grammar_s * 1e3);
      }
    j["decode"] = decode;

    if (cuda) {
      // The device's roofline: bytes a decode step must read / measured copy bandwidth, and
      // the prefill's linear-layer FLOPs / cuBLAS GEMM throughput at the prefill's shape.
      cuda_device_probe dev;
      double gemm = 0;
      try {
        dev = probe_cuda_device(o->device, size_t{o->bw_mib} * 1024 * 1024);
        uint32_t m = prefill_lens.back();
        gemm = cuda_gemm_flops_per_s(o->device, o->dtype, m, 2 * c.ffn, c.dim);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "tokenmill bench-engine: device probe: %s\n", e.what());
        return 1;
      }
      for (auto& d : decode) {
        double roofline_s = d["step_bytes"].get<double>() / dev.copy_bytes_per_s;
        d["roofline_step_s"] = roofline_s;
        d["roofline_fraction"] = roofline_s / d["median_step_s"].get<double>();
      }
      double flops_per_token = 2.0 * static_cast<double>(linear_params(*model));
      for (auto& p : prefill) {
        double bound = gemm / flops_per_token;
        p["gemm_bound_tokens_per_s"] = bound;
        p["gemm_fraction"] = p["tokens_per_s"].get<double>() / bound;
      }
      j["prefill"] = prefill;
      j["decode"] = decode;
      j["device"] = {{"name", dev.name},
                     {"memory_gb", dev.memory_gb},
                     {"copy_bytes_per_s", dev.copy_bytes_per_s},
                     {"gemm_flops_per_s", gemm},
                     {"gemm_shape", {prefill_lens.back(), 2 * c.ffn, c.dim}}};
      if (o->json) {
        std::printf("%s\n", j.dump().c_str());
        return 0;
      }
      std::printf("model   %s: %.1fM parameters, %s on %s, %.1f MB of weights per decode step\n",
                  c.name.c_str(), parameter_count(*model) / 1e6, o->dtype.c_str(), dev.name.c_str(),
                  step_bytes / 1e6);
      std::printf(
          "device  copy bandwidth %.0f GB/s (read + write), cuBLAS %s GEMM %.1f TFLOP/s\n\n",
          dev.copy_bytes_per_s / 1e9, o->dtype.c_str(), gemm / 1e12);
      for (const auto& p : prefill)
        std::printf("prefill %5u tokens: %8.2f ms, %9.0f tokens/s (%.0f%% of the GEMM bound)\n",
                    p["prompt_tokens"].get<uint32_t>(), p["median_s"].get<double>() * 1e3,
                    p["tokens_per_s"].get<double>(), 100 * p["gemm_fraction"].get<double>());
      for (const auto& d : decode)
        std::printf("decode batch %3u: %7.3f ms/step, %9.0f tokens/s, roofline %.3f ms (%.0f%%)\n",
                    d["batch"].get<uint32_t>(), d["median_step_s"].get<double>() * 1e3,
                    d["tokens_per_s"].get<double>(), d["roofline_step_s"].get<double>() * 1e3,
                    100 * d["roofline_fraction"].get<double>());
      return 0;
    }

    // Memory bandwidth: a buffer far beyond the last-level cache, touched first so that
    // page faults are not timed.
    std::vector<uint64_t> buf(o->bw_mib * 1024 * 1024 / sizeof(uint64_t));
    for (size_t i = 0; i < buf.size(); ++i)
      buf[i] = i;
    auto multi = read_bandwidth(buf, threads, 5);
    auto single = read_bandwidth(buf, 1, 3);
    buf = {};
    double bw_multi = multi.bytes_per_s, bw_single = single.bytes_per_s;
    j["memory_bandwidth"] = {{"buffer_bytes", o->bw_mib * 1024 * 1024},
                             {"threads", threads},
                             {"bytes_per_s", bw_multi},
                             {"cpu_share", multi.cpu_share},
                             {"single_thread_bytes_per_s", bw_single},
                             {"single_thread_cpu_share", single.cpu_share}};
    // The roofline of a decode step: its weight bytes at the measured read bandwidth.
    for (auto& d : decode)
      d["weight_bandwidth_fraction"] = d["weight_bytes_per_s"].get<double>() / bw_multi;
    j["decode"] = decode;
    double load_after = loadavg_1min();
    const auto steal_after = cpu_steal_jiffies();
    const uint64_t total_jiffies = steal_after.second - steal_before.second;
    const double steal_share =
        total_jiffies > 0
            ? static_cast<double>(steal_after.first - steal_before.first) / total_jiffies
            : -1;
    j["machine"] = {{"cpu", cpu_model_name()},
                    {"hardware_threads", std::thread::hardware_concurrency()},
                    {"nproc", usable_cpus()},
                    {"loadavg_1min_before", load_before},
                    {"loadavg_1min_after", load_after},
                    {"cpu_steal_share", steal_share}};
    const bool quant = !cuda && cpu::is_int_dot_dtype(wtype);
    if (quant) j["quant_kernels"] = std::string(cpu::quant_isa_name(cpu::best_quant_isa()));

    if (o->json) {
      std::printf("%s\n", j.dump().c_str());
      return 0;
    }
    std::printf("model   %s (%s, %s): %.1fM parameters, %s weights, %.1f MB read per decode step\n",
                c.name.c_str(), model->format.c_str(), c.arch.c_str(),
                parameter_count(*model) / 1e6, std::string(dtype_name(wtype)).c_str(),
                step_bytes / 1e6);
    std::printf("machine %s, %u hardware threads (nproc %u), load %.2f before / %.2f after\n",
                cpu_model_name().c_str(), std::thread::hardware_concurrency(), usable_cpus(),
                load_before, load_after);
    const std::string kernels = quant ? fmt::format(", {} integer dot products (decode)",
                                                    cpu::quant_isa_name(cpu::best_quant_isa()))
                                      : "";
    std::printf("engine  %u threads, KV %s%s; CPU steal during the run %.1f%%\n", threads,
                o->kv_dtype.c_str(), kernels.c_str(), 100 * steal_share);
    std::printf(
        "weights %s (--weights-hugepages %s; %.1f MB in anonymous huge pages), loaded "
        "in %.3f s, the copy filled after %.3f s\n\n",
        huge_copy ? "copied into huge-page memory" : "mapped from the file", o->hugepages.c_str(),
        huge_bytes / 1e6, load_s, filled_s);
    std::printf("%-28s %12s %12s %14s %10s\n", "phase", "median", "tokens/s", "weights GB/s",
                "cpu share");
    for (const auto& p : prefill)
      std::printf("%-28s %9.1f ms %12.1f %14s %9.0f%%\n",
                  fmt::format("prefill {} tokens", p["prompt_tokens"].get<uint32_t>()).c_str(),
                  p["median_s"].get<double>() * 1e3, p["tokens_per_s"].get<double>(), "-",
                  100 * p["cpu_share"].get<double>());
    for (const auto& d : decode)
      std::printf("%-28s %9.2f ms %12.1f %14.2f %9.0f%%\n",
                  fmt::format("decode batch {} context {}", d["batch"].get<uint32_t>(),
                              d["context_tokens"].get<uint32_t>())
                      .c_str(),
                  d["median_step_s"].get<double>() * 1e3, d["tokens_per_s"].get<double>(),
                  d["weight_bytes_per_s"].get<double>() / 1e9, 100 * d["cpu_share"].get<double>());
    std::printf(
        "\nmemory read bandwidth (%llu MiB buffer): %.2f GB/s with %u threads (cpu share "
        "%.0f%%), %.2f GB/s single-threaded (%.0f%%)\n",
        static_cast<unsigned long long>(o->bw_mib), bw_multi / 1e9, threads, 100 * multi.cpu_share,
        bw_single / 1e9, 100 * single.cpu_share);
    for (const auto& d : decode)
      if (d.contains("constrained_median_step_s"))
        std::printf("%-28s %9.2f ms (%+.1f%% per step; grammar work outside the engine %.3f ms)\n",
                    fmt::format("  constrained batch {}", d["batch"].get<uint32_t>()).c_str(),
                    d["constrained_median_step_s"].get<double>() * 1e3,
                    100 * d["constrained_added_share"].get<double>(),
                    d["constrained_grammar_s"].get<double>() * 1e3);
    for (const auto& d : decode)
      if (d["batch"].get<uint32_t>() == 1)
        std::printf(
            "decode batch 1, context %u: weights read at %.0f%% of the measured bandwidth\n",
            d["context_tokens"].get<uint32_t>(),
            100 * d["weight_bandwidth_fraction"].get<double>());
    std::printf(
        "(cpu share: CPU time / (wall time x threads); below 100%% the machine was busy)\n");
    return 0;
  };
}

}  // namespace tokenmill::app
