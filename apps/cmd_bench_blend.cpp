// `tokenmill bench-blend`: position-independent chunk reuse on the cpu engine (issue 17).
// A RAG-shaped prompt (a system prompt, k documents drawn from a pool and shuffled, a
// question) is prefilled three ways: in full, with the system prompt from a prefix cache,
// and by blending: every document's KV computed once alone (the chunk cache), moved to its
// offset with one rotation per key, and recompute_ratio of its tokens recomputed
// (engine/blend.hpp), chosen by each selection policy (CacheBlend's deviation, EPIC's
// leading tokens). Prints TTFT of each, where a blend's TTFT went (prefill_blend's phases,
// the moves, sampling), and the blend's fidelity to the full prefill: first-token top-1
// agreement, KL divergence and max logit error, and whether a greedy continuation is token
// for token the same.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <memory>
#include <numeric>
#include <random>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "apps/commands.hpp"
#include "apps/engine_timing.hpp"
#include "common/clock.hpp"
#include "common/stats.hpp"
#include "engine/blend.hpp"
#include "engine/cpu_engine.hpp"
#include "engine/make_model.hpp"
#include "engine/model.hpp"
#include "engine/sampler.hpp"
#include "engine/tensor.hpp"

namespace tokenmill::app {
namespace {

struct bench_blend_opts {
  std::string model;
  std::string preset;
  std::string preset_dtype = "f16";
  uint32_t threads = 0;
  std::string kv_dtype = "f16";
  std::vector<double> ratios = {0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1};
  uint32_t docs = 6;            ///< documents per prompt
  uint32_t pool_docs = 10;      ///< documents to draw from
  uint32_t doc_tokens = 96;     ///< tokens per document
  uint32_t system_tokens = 32;  ///< BOS + system prompt (a prefix-cache hit when whole blocks)
  uint32_t question_tokens = 16;
  /// "random": fresh random tokens; "quote": a span copied from one of the prompt's
  /// documents, so a model trained for retrieval (scripts/train-blend-model.py) has a
  /// meaningful answer: the tokens that followed the span.
  std::string question = "random";
  uint32_t trials = 4;  ///< prompts (different draws, orders and questions)
  uint32_t greedy_tokens = 32;
  uint32_t first_tokens = 1;
  uint32_t select_layer = 1;
  std::vector<std::string> policies = {"deviation", "leading"};
  uint64_t seed = 1;
  bool json = false;
};

std::vector<token_id> random_ids(std::mt19937_64& rng, uint32_t n, uint32_t vocab) {
  std::uniform_int_distribution<uint32_t> d(3, vocab - 1);  // past <unk>, BOS, EOS
  std::vector<token_id> t(n);
  for (auto& x : t)
    x = static_cast<token_id>(d(rng));
  return t;
}

/// log-softmax of `logits` in double.
std::vector<double> log_softmax(std::span<const float> logits) {
  double mx = *std::max_element(logits.begin(), logits.end());
  double s = 0;
  for (float x : logits)
    s += std::exp(x - mx);
  double lse = mx + std::log(s);
  std::vector<double> out(logits.size());
  for (size_t i = 0; i < logits.size(); ++i)
    out[i] = logits[i] - lse;
  return out;
}

/// KL(p || q) of the softmaxes of two logit rows: p the full prefill's, q the blend's (nats).
double kl_divergence(std::span<const float> p_logits, std::span<const float> q_logits) {
  auto lp = log_softmax(p_logits), lq = log_softmax(q_logits);
  double kl = 0;
  for (size_t i = 0; i < lp.size(); ++i)
    kl += std::exp(lp[i]) * (lp[i] - lq[i]);
  return std::max(0.0, kl);
}

token_id argmax(std::span<const float> row) {
  return static_cast<token_id>(std::max_element(row.begin(), row.end()) - row.begin());
}

double ms_since(int64_t t0) {
  return (now_ns() - t0) / 1e6;
}

/// One blend policy and ratio's results over all trials.
struct ratio_row {
  blend_policy policy = blend_policy::deviation;
  double ratio = 0;
  /// Where the TTFT went, per trial: moving the KV (move_chunk_kv), prefill_blend's phases
  /// (blend_phases), sampling the first token, and what is left (validation, bookkeeping).
  std::vector<double> full_width_ms, select_ms, selected_ms, attention_ms, logits_ms, sample_ms,
      other_ms;
  std::vector<double> ttft_ms, move_ms, kl, max_err, recomputed_share;
  /// Token-layers computed / those of the prefix-cache prefill: select_layer layers at
  /// full width (the selection layer's projections too), the rest over the kept rows only.
  std::vector<double> work_share;
  std::vector<double> deviation_share;  ///< blend_outcome::selected_deviation_share
  uint32_t top1_agree = 0, greedy_same = 0;
  std::vector<double> greedy_prefix;  ///< leading greedy tokens equal to the full prefill's
};

}  // namespace

command add_bench_blend(CLI::App& app) {
  auto o = std::make_shared<bench_blend_opts>();
  auto* src = app.add_option_group("model", "The model: a file or a make-model preset");
  src->add_option("--model", o->model, "GGUF file or Hugging Face directory");
  src->add_option("--preset", o->preset,
                  "make-model preset, written to a temporary GGUF file (e.g. small, 125m)");
  src->require_option(1);
  app.add_option("--preset-dtype", o->preset_dtype, "Weight type of the --preset model")
      ->check(CLI::IsMember({"f32", "f16", "bf16", "q8_0"}))
      ->capture_default_str();
  app.add_option("--threads", o->threads, "Compute threads (0: all hardware threads)")
      ->capture_default_str();
  app.add_option("--kv-dtype", o->kv_dtype, "KV cache element type")
      ->check(CLI::IsMember({"f16", "f32"}))
      ->capture_default_str();
  app.add_option("--ratios", o->ratios, "recompute_ratio values, one row each")
      ->check(CLI::Range(0.0, 1.0));
  app.add_option("--docs", o->docs, "Documents per prompt")
      ->check(CLI::Range(1u, 64u))
      ->capture_default_str();
  app.add_option("--pool-docs", o->pool_docs, "Documents in the pool the prompts draw from")
      ->check(CLI::Range(1u, 1024u))
      ->capture_default_str();
  app.add_option("--doc-tokens", o->doc_tokens, "Tokens per document")
      ->check(CLI::Range(1u, 65536u))
      ->capture_default_str();
  app.add_option("--system-tokens", o->system_tokens,
                 "Tokens of the system prompt (BOS included); its whole KV blocks come from the "
                 "prefix cache in the prefix-cache and blend runs")
      ->check(CLI::Range(1u, 65536u))
      ->capture_default_str();
  app.add_option("--question-tokens", o->question_tokens, "Tokens of the question")
      ->check(CLI::Range(1u, 65536u))
      ->capture_default_str();
  app.add_option("--question", o->question,
                 "Question shape: random (fresh random tokens; figures comparable with earlier "
                 "runs) or quote (a span of --question-tokens copied from one of the prompt's "
                 "documents at a random place, leaving at least one of its tokens after it: the "
                 "answer a retrieval-trained model continues with)")
      ->check(CLI::IsMember({"random", "quote"}))
      ->capture_default_str();
  app.add_option("--trials", o->trials, "Prompts measured (each a new draw, order and question)")
      ->check(CLI::Range(1u, 1000u))
      ->capture_default_str();
  app.add_option("--greedy-tokens", o->greedy_tokens, "Greedy continuation compared per prompt")
      ->check(CLI::Range(0u, 4096u))
      ->capture_default_str();
  app.add_option("--first-tokens", o->first_tokens,
                 "Leading tokens of each reused document recomputed first")
      ->capture_default_str();
  app.add_option("--select-layer", o->select_layer,
                 "Layer whose K/V deviation selects the recomputed tokens")
      ->capture_default_str();
  app.add_option("--policies", o->policies,
                 "Selection policies, rows for each ratio: deviation (CacheBlend: K/V deviation "
                 "on --select-layer) and/or leading (EPIC: each chunk's leading tokens)")
      ->check(CLI::IsMember({"deviation", "leading"}))
      ->capture_default_str();
  app.add_option("--seed", o->seed, "Seed of the documents, draws and questions")
      ->capture_default_str();
  app.add_flag("--json", o->json, "Print one JSON object");
  return [o]() -> int {
    auto failed = [](const std::string& what) {
      std::fprintf(stderr, "tokenmill bench-blend: %s\n", what.c_str());
      return 1;
    };
    if (o->pool_docs < o->docs)
      return failed(fmt::format("--pool-docs {} is below --docs {}", o->pool_docs, o->docs));
    const bool quote = o->question == "quote";
    if (quote && o->question_tokens >= o->doc_tokens)
      return failed(fmt::format(
          "--question quote needs --question-tokens ({}) below --doc-tokens ({}): the quote is "
          "a span of one document with a token left after it",
          o->question_tokens, o->doc_tokens));
    const auto steal_before = cpu_steal_jiffies();
    const double load_before = loadavg_1min();

    std::string path = o->model;
    std::filesystem::path tmp_dir;
    if (!o->preset.empty()) {
      tmp_dir = std::filesystem::temp_directory_path() /
                fmt::format("tokenmill-bench-blend-{}", static_cast<long>(::getpid()));
      std::error_code ec;
      std::filesystem::create_directories(tmp_dir, ec);
      if (ec) return failed(fmt::format("cannot create {}: {}", tmp_dir.string(), ec.message()));
      make_model_options mo;
      mo.preset = o->preset;
      mo.output = (tmp_dir / (o->preset + ".gguf")).string();
      parse_dtype(o->preset_dtype, mo.type);  // checked by CLI::IsMember
      if (auto r = make_model(mo); !r) {
        std::filesystem::remove_all(tmp_dir, ec);
        return failed(r.error().message);
      }
      path = mo.output;
    }
    auto loaded = load_model(path);
    if (!tmp_dir.empty()) {
      std::error_code ec;
      std::filesystem::remove_all(tmp_dir, ec);  // the mapping keeps the file alive
    }
    if (!loaded) return failed(loaded.error().message);
    auto model = *loaded;
    const llama_config& c = model->config;

    cpu_engine_config cfg;
    cfg.threads = o->threads == 0 ? std::thread::hardware_concurrency() : o->threads;
    cfg.kv_dtype_bytes = o->kv_dtype == "f32" ? 4 : 2;
    std::unique_ptr<cpu_engine> eng;
    try {
      eng = std::make_unique<cpu_engine>(model, cfg);
    } catch (const std::exception& e) {
      return failed(e.what());
    }
    const kv_layout& lay = eng->info().layout;
    const uint32_t bt = lay.block_tokens;
    const uint32_t n = o->system_tokens + o->docs * o->doc_tokens + o->question_tokens;
    const uint32_t seq_tokens = n + o->greedy_tokens;
    if (seq_tokens > c.max_context)
      return failed(
          fmt::format("a prompt of {} tokens plus {} greedy tokens exceeds the "
                      "model's context ({})",
                      n, o->greedy_tokens, c.max_context));
    const uint32_t prefix_blocks = o->system_tokens / bt;  // whole blocks only
    const uint32_t cached_prefix = std::min(prefix_blocks * bt, n - 1);
    const uint32_t doc_blocks = lay.blocks_for(o->doc_tokens);
    const uint32_t seq_blocks = lay.blocks_for(seq_tokens);
    // Shared prefix, the chunk cache, and one sequence each for full / prefix-only / blend.
    const uint32_t total = prefix_blocks + o->pool_docs * doc_blocks + 3 * seq_blocks;
    std::unique_ptr<block_pool> pool;
    try {
      pool = make_pool(*eng, total);
    } catch (const std::exception& e) {
      return failed(fmt::format("a pool of {} blocks: {}", total, e.what()));
    }
    auto take = [&](uint32_t k) { return *pool->allocate(k); };

    std::mt19937_64 rng(o->seed);
    std::vector<token_id> system = random_ids(rng, o->system_tokens, c.vocab);
    system[0] = c.bos;
    std::vector<std::vector<token_id>> docs;
    for (uint32_t d = 0; d < o->pool_docs; ++d)
      docs.push_back(random_ids(rng, o->doc_tokens, c.vocab));

    // The caches, filled before anything is timed: the system prompt's whole blocks (a
    // prefix-cache entry) and each document computed alone at base position 0.
    auto prefix = take(prefix_blocks);
    if (prefix_blocks > 0)
      if (auto r = eng->prefill(
              *pool, std::vector<prefill_chunk>{{system, 0, prefix_blocks * bt, prefix, {}, {}}});
          !r)
        return failed(r.error().message);
    std::vector<std::vector<block_id>> doc_kv;
    double chunk_cache_ms = 0;
    for (const auto& d : docs) {
      doc_kv.push_back(take(doc_blocks));
      int64_t t0 = now_ns();
      if (auto r = eng->prefill_at(*pool, {d, 0, o->doc_tokens, doc_kv.back(), {}, {}}, 0); !r)
        return failed(r.error().message);
      chunk_cache_ms += ms_since(t0);
    }
    auto seq_table = [&](std::vector<block_id> own) {
      std::vector<block_id> t(prefix.begin(), prefix.end());
      t.insert(t.end(), own.begin() + prefix_blocks, own.end());
      return t;
    };
    const auto full_blocks = take(seq_blocks);  // no sharing: computed from position 0
    const auto prefix_seq = seq_table(take(seq_blocks));
    const auto blend_seq = seq_table(take(seq_blocks));

    /// Greedy continuation of `k` tokens after a prefilled prompt whose next token is `first`.
    auto greedy = [&](std::vector<token_id> ctx, token_id first,
                      std::span<const block_id> blocks) -> result<std::vector<token_id>> {
      std::vector<token_id> out = {first};
      ctx.push_back(first);
      while (out.size() < o->greedy_tokens) {
        decode_seq s{ctx, blocks, {}, {}};
        auto next = eng->decode(*pool, {&s, 1});
        if (!next) return next.error();
        out.push_back((*next)[0]);
        ctx.push_back((*next)[0]);
      }
      return out;
    };

    std::vector<ratio_row> rows;
    for (const auto& name : o->policies)
      for (double ratio : o->ratios) {
        rows.emplace_back();
        rows.back().policy = *parse_blend_policy(name);  // checked by CLI::IsMember
        rows.back().ratio = ratio;
      }
    std::vector<double> full_ms, prefix_ms, move_all_ms;
    uint32_t prefix_top1 = 0;
    std::vector<double> top1_gap;  ///< full prefill's top-1 minus top-2 logit, per trial
    std::vector<uint32_t> order(o->pool_docs);
    for (uint32_t trial = 0; trial < o->trials; ++trial) {
      std::iota(order.begin(), order.end(), 0u);
      std::shuffle(order.begin(), order.end(), rng);
      std::vector<token_id> prompt = system;
      std::vector<blend_segment> segs = {{0, o->system_tokens, false}};
      for (uint32_t k = 0; k < o->docs; ++k) {
        const auto& d = docs[order[k]];
        auto b = static_cast<uint32_t>(prompt.size());
        prompt.insert(prompt.end(), d.begin(), d.end());
        segs.push_back({b, b + o->doc_tokens, true});
      }
      std::vector<token_id> question;
      if (quote) {
        // A span of one drawn document, ending before the document's last token.
        const auto& d = docs[order[rng() % o->docs]];
        const size_t at = rng() % (o->doc_tokens - o->question_tokens);
        question.assign(d.begin() + at, d.begin() + at + o->question_tokens);
      } else {
        question = random_ids(rng, o->question_tokens, c.vocab);
      }
      segs.push_back({static_cast<uint32_t>(prompt.size()), n, false});
      prompt.insert(prompt.end(), question.begin(), question.end());

      int64_t t0 = now_ns();
      auto want = eng->prefill_last_logits(*pool, {prompt, 0, n, full_blocks, {}, {}});
      full_ms.push_back(ms_since(t0));
      if (!want) return failed(want.error().message);
      std::vector<token_id> want_greedy;
      if (o->greedy_tokens > 0) {
        auto g = greedy(prompt, argmax(*want), full_blocks);
        if (!g) return failed(g.error().message);
        want_greedy = std::move(*g);
      }

      t0 = now_ns();
      auto pre = eng->prefill_last_logits(*pool, {prompt, cached_prefix, n, prefix_seq, {}, {}});
      prefix_ms.push_back(ms_since(t0));
      if (!pre) return failed(pre.error().message);
      if (argmax(*pre) == argmax(*want)) ++prefix_top1;
      {
        std::vector<float> top(want->begin(), want->end());
        std::nth_element(top.begin(), top.begin() + 1, top.end(), std::greater<float>());
        top1_gap.push_back(top[0] - top[1]);
      }

      for (auto& row : rows) {
        t0 = now_ns();
        for (uint32_t k = 0; k < o->docs; ++k)
          if (auto r = eng->move_chunk_kv(
                  *pool, {doc_kv[order[k]], 0, o->doc_tokens, blend_seq, segs[k + 1].begin});
              !r)
            return failed(r.error().message);
        double moved = ms_since(t0);
        blend_prefill req{prompt,
                          segs,
                          blend_seq,
                          cached_prefix,
                          static_cast<float>(row.ratio),
                          o->first_tokens,
                          o->select_layer,
                          row.policy};
        auto got = eng->prefill_blend(*pool, req);
        if (!got) return failed(got.error().message);
        const int64_t t_sample = now_ns();
        const token_id first = sample_token(got->logits, {}, n);
        const double sampled = ms_since(t_sample);
        double ttft = ms_since(t0);
        if (first != argmax(got->logits)) return failed("greedy sampling is not the argmax");
        const auto& ph = got->phases;
        row.full_width_ms.push_back(ph.full_width_ms);
        row.select_ms.push_back(ph.select_ms);
        row.selected_ms.push_back(ph.selected_ms);
        row.attention_ms.push_back(ph.attention_ms);
        row.logits_ms.push_back(ph.logits_ms);
        row.sample_ms.push_back(sampled);
        row.other_ms.push_back(ttft - moved - ph.full_width_ms - ph.select_ms - ph.selected_ms -
                               ph.logits_ms - sampled);
        row.ttft_ms.push_back(ttft);
        row.move_ms.push_back(moved);
        move_all_ms.push_back(moved);
        row.kl.push_back(kl_divergence(*want, got->logits));
        float err = 0;
        for (size_t v = 0; v < want->size(); ++v)
          err = std::max(err, std::fabs((*want)[v] - got->logits[v]));
        row.max_err.push_back(err);
        {
          const double L = c.layers, s_l = std::min(o->select_layer, c.layers - 1);
          const double full_rows = n - cached_prefix;
          row.work_share.push_back(
              (s_l * got->select_layer_tokens + (L - s_l) * got->computed_tokens) /
              (L * full_rows));
        }
        row.deviation_share.push_back(got->selected_deviation_share);
        row.recomputed_share.push_back(
            got->reused_tokens ? double(got->recomputed_reused) / got->reused_tokens : 0);
        if (argmax(got->logits) == argmax(*want)) ++row.top1_agree;
        if (o->greedy_tokens > 0) {
          auto g = greedy(prompt, argmax(got->logits), blend_seq);
          if (!g) return failed(g.error().message);
          size_t same = 0;
          while (same < g->size() && (*g)[same] == want_greedy[same])
            ++same;
          row.greedy_prefix.push_back(static_cast<double>(same));
          if (same == g->size()) ++row.greedy_same;
        }
      }
      if (!o->json)
        std::fprintf(stderr, "trial %u/%u: full prefill %.1f ms\n", trial + 1, o->trials,
                     full_ms.back());
    }

    const auto steal_after = cpu_steal_jiffies();
    const double steal_share = steal_after.second > steal_before.second
                                   ? double(steal_after.first - steal_before.first) /
                                         double(steal_after.second - steal_before.second)
                                   : 0;
    const double full_med = median(full_ms), prefix_med = median(prefix_ms);
    auto mean = [](const std::vector<double>& v) {
      return v.empty() ? 0.0 : std::accumulate(v.begin(), v.end(), 0.0) / v.size();
    };
    auto maxv = [](const std::vector<double>& v) {
      return v.empty() ? 0.0 : *std::max_element(v.begin(), v.end());
    };
    nlohmann::ordered_json j;
    j["model"] = {{"path", o->preset.empty() ? o->model : "preset:" + o->preset},
                  {"name", c.name},
                  {"layers", c.layers},
                  {"dim", c.dim},
                  {"heads", c.heads},
                  {"kv_heads", c.kv_heads},
                  {"vocab", c.vocab}};
    j["prompt"] = {{"tokens", n},
                   {"system_tokens", o->system_tokens},
                   {"cached_prefix_tokens", cached_prefix},
                   {"docs", o->docs},
                   {"pool_docs", o->pool_docs},
                   {"doc_tokens", o->doc_tokens},
                   {"question_tokens", o->question_tokens},
                   {"question", o->question}};
    j["trials"] = o->trials;
    j["threads"] = cfg.threads;
    j["kv_dtype"] = o->kv_dtype;
    j["select_layer"] = std::min(o->select_layer, c.layers - 1);
    j["first_tokens"] = o->first_tokens;
    j["full_prefill_ttft_ms"] = full_med;
    j["prefix_cache_ttft_ms"] = prefix_med;
    j["prefix_cache_top1_agreement"] = double(prefix_top1) / o->trials;
    const double gap_min =
        top1_gap.empty() ? 0.0 : *std::min_element(top1_gap.begin(), top1_gap.end());
    j["full_top1_gap_median"] = median(top1_gap);
    j["full_top1_gap_min"] = gap_min;
    j["chunk_cache_fill_ms"] = chunk_cache_ms;
    j["cpu"] = cpu_model_name();
    j["cpu_steal_share"] = steal_share;
    j["loadavg_1min_before"] = load_before;
    nlohmann::ordered_json jrows = nlohmann::ordered_json::array();
    for (const auto& r : rows) {
      jrows.push_back(
          {{"policy", blend_policy_name(r.policy)},
           {"ratio", r.ratio},
           {"ttft_ms", median(r.ttft_ms)},
           {"full_prefill_ttft_ms", full_med},
           {"prefix_cache_ttft_ms", prefix_med},
           {"speedup_vs_full", full_med / median(r.ttft_ms)},
           {"move_ms", median(r.move_ms)},
           {"recomputed_share", mean(r.recomputed_share)},
           {"work_share", mean(r.work_share)},
           {"selected_deviation_share", mean(r.deviation_share)},
           {"top1_agreement", double(r.top1_agree) / o->trials},
           {"kl", mean(r.kl)},
           {"kl_max", maxv(r.kl)},
           {"max_logit_error", maxv(r.max_err)},
           {"greedy_identical", o->greedy_tokens ? double(r.greedy_same) / o->trials : 0.0},
           {"greedy_matching_tokens", mean(r.greedy_prefix)},
           {"phases_ms",
            {{"move", median(r.move_ms)},
             {"full_width", median(r.full_width_ms)},
             {"select", median(r.select_ms)},
             {"selected", median(r.selected_ms)},
             {"attention", median(r.attention_ms)},
             {"logits", median(r.logits_ms)},
             {"sample", median(r.sample_ms)},
             {"other", median(r.other_ms)}}}});
    }
    j["rows"] = jrows;
    if (o->json) {
      std::printf("%s\n", j.dump().c_str());
      return 0;
    }
    std::printf(
        "model %s (%u layers, dim %u); prompt %u tokens = system %u (%u from the prefix cache) + "
        "%u docs x %u (pool %u) + question %u (%s); %u trials, %u threads, KV %s, select layer "
        "%u\n",
        c.name.c_str(), c.layers, c.dim, n, o->system_tokens, cached_prefix, o->docs, o->doc_tokens,
        o->pool_docs, o->question_tokens, o->question.c_str(), o->trials, cfg.threads,
        o->kv_dtype.c_str(), std::min(o->select_layer, c.layers - 1));
    std::printf(
        "full prefill %.1f ms; prefix cache only %.1f ms (top-1 agreement %.2f); full prefill's "
        "top-1/top-2 logit gap: median %.3g, min %.3g\n",
        full_med, prefix_med, double(prefix_top1) / o->trials, median(top1_gap), gap_min);
    std::printf("%9s %6s %9s %8s %8s %6s %6s %6s %6s %10s %10s %7s %7s\n", "policy", "ratio",
                "ttft_ms", "move_ms", "speedup", "recomp", "work", "devsh", "top1", "kl", "max_err",
                "greedy", "gr_tok");
    for (const auto& r : rows)
      std::printf(
          "%9s %6.2f %9.1f %8.2f %7.2fx %6.3f %6.3f %6.3f %6.2f %10.3g %10.3g %7.2f %7.1f\n",
          std::string(blend_policy_name(r.policy)).c_str(), r.ratio, median(r.ttft_ms),
          median(r.move_ms), full_med / median(r.ttft_ms), mean(r.recomputed_share),
          mean(r.work_share), mean(r.deviation_share), double(r.top1_agree) / o->trials, mean(r.kl),
          maxv(r.max_err), o->greedy_tokens ? double(r.greedy_same) / o->trials : 0.0,
          mean(r.greedy_prefix));
    std::printf(
        "where the TTFT goes (median ms): move = moving the reused KV; full = layers over every "
        "position up to the selection layer's Q/K/V; select = deviations and selection; kept = "
        "the other layers over the kept positions (attn: of full + kept, the attention; not split "
        "when every position is computed); logits; sample; other\n");
    std::printf("%9s %6s %8s %8s %8s %8s %8s %8s %8s %8s\n", "policy", "ratio", "move", "full",
                "select", "kept", "attn", "logits", "sample", "other");
    for (const auto& r : rows)
      std::printf("%9s %6.2f %8.2f %8.2f %8.2f %8.2f %8.2f %8.2f %8.3f %8.2f\n",
                  std::string(blend_policy_name(r.policy)).c_str(), r.ratio, median(r.move_ms),
                  median(r.full_width_ms), median(r.select_ms), median(r.selected_ms),
                  median(r.attention_ms), median(r.logits_ms), median(r.sample_ms),
                  median(r.other_ms));
    std::printf("cpu %s; steal %.1f%% of CPU time during the run; load average %.1f before\n",
                cpu_model_name().c_str(), 100 * steal_share, load_before);
    return 0;
  };
}

}  // namespace tokenmill::app
