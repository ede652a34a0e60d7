// `tokenmill generate` and `tokenmill status`: the command-line client.
#include <charconv>
#include <cstdio>
#include <fstream>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "apps/client_options.hpp"
#include "apps/commands.hpp"
#include "common/stats.hpp"
#include "frontend/client.hpp"
#include "frontend/frontend_metrics.hpp"
#include "frontend/trace_export.hpp"

namespace tokenmill::app {
namespace {

struct generate_opts {
  std::string connect = "127.0.0.1:7700";
  int64_t max_tokens = 16;
  bool json = false;
  bool token_ids = false;
  bool quiet = false;
  float temperature = 0;
  float top_p = 1;
  uint32_t top_k = 0;
  float min_p = 0;
  uint64_t seed = 0;
  float presence_penalty = 0;
  float frequency_penalty = 0;
  float repetition_penalty = 1;
  std::vector<std::string> logit_bias;  ///< ID=BIAS
  int64_t logprobs = -1;
  std::vector<int64_t> stop_ids;
  std::vector<std::string> stops;
  bool ignore_eos = false;
  bool no_bos = false;
  double timeout_s = 600;
  std::string trace_out;
  std::string prompt;
  /// --segment: the prompt as segments (chunk reuse); each text, or ids with --token-ids.
  std::vector<std::string> segments;
  double recompute_ratio = -1;  ///< --recompute-ratio; < 0: the server's default
  client_options security;
  std::string json_schema_file;  ///< --json-schema: the output is valid under this schema
  std::string regex;             ///< --regex: the output matches this expression
  bool json_object = false;      ///< --json-object: the output is a JSON object
};

/// Parses space-separated token ids; an error names the bad word and its position.
result<std::vector<int64_t>> parse_ids(const std::string& s) {
  std::vector<int64_t> out;
  std::istringstream in(s);
  std::string word;
  while (in >> word) {
    int64_t v = 0;
    auto [p, ec] = std::from_chars(word.data(), word.data() + word.size(), v);
    if (ec != std::errc() || p != word.data() + word.size())
      return error_info{errc::invalid_request,
                        fmt::format("--token-ids: '{}' (word {}) is not an integer token id", word,
                                    out.size() + 1)};
    out.push_back(v);
  }
  return out;
}

result<std::unique_ptr<client>> connect_to(const std::string& endpoint, double timeout_s,
                                           client_options opts) {
  auto ep = parse_endpoint(endpoint);
  if (!ep) return ep.error();
  resolve_client_options(opts);
  return client::connect(ep->first, ep->second, timeout_s, opts);
}

/// Parses --logit-bias ID=BIAS words; an error names the bad one.
result<std::vector<std::pair<int64_t, double>>> parse_bias(const std::vector<std::string>& words) {
  std::vector<std::pair<int64_t, double>> out;
  for (const auto& w : words) {
    auto eq = w.find('=');
    int64_t id = 0;
    double bias = 0;
    bool ok = eq != std::string::npos;
    if (ok) {
      auto [p, ec] = std::from_chars(w.data(), w.data() + eq, id);
      ok = ec == std::errc() && p == w.data() + eq && eq > 0;
    }
    if (ok) {
      try {
        size_t used = 0;
        bias = std::stod(w.substr(eq + 1), &used);
        ok = used == w.size() - eq - 1;
      } catch (const std::exception&) {
        ok = false;
      }
    }
    if (!ok)
      return error_info{errc::invalid_request,
                        fmt::format("--logit-bias: '{}' is not TOKEN_ID=BIAS", w)};
    out.emplace_back(id, bias);
  }
  return out;
}

int fail(const char* cmd, const error_info& e) {
  std::fprintf(stderr, "tokenmill %s: %s: %s\n", cmd, std::string(to_string(e.code)).c_str(),
               e.message.c_str());
  return 1;
}

}  // namespace

command add_generate(CLI::App& app) {
  auto o = std::make_shared<generate_opts>();
  app.add_option("--connect", o->connect, "Gateway address HOST:PORT")->capture_default_str();
  add_client_options(app, o->security);
  app.add_option("--max-tokens", o->max_tokens, "Tokens to generate (> 0)")->capture_default_str();
  app.add_flag("--json", o->json,
               "End the output with one JSON line: tokens, ttft_ms, itl_ms_p50, "
               "itl_ms_p99, stages, …");
  app.add_flag("--token-ids", o->token_ids,
               "PROMPT is space-separated token ids, and ids are printed instead of text");
  app.add_flag("--quiet", o->quiet, "Print only the completion");
  app.add_option("--temperature", o->temperature, "0 = greedy")->capture_default_str();
  app.add_option("--top-p", o->top_p, "Nucleus sampling mass in (0, 1]")->capture_default_str();
  app.add_option("--top-k", o->top_k, "Sample among the k most likely tokens (0 = all)")
      ->capture_default_str();
  app.add_option("--min-p", o->min_p, "Drop tokens below min_p x the top probability")
      ->capture_default_str();
  app.add_option("--seed", o->seed, "Sampling seed (reproducible with temperature > 0)");
  app.add_option("--presence-penalty", o->presence_penalty,
                 "Subtract from the logit of every token generated so far, in [-2, 2]");
  app.add_option("--frequency-penalty", o->frequency_penalty,
                 "Subtract per time a token was generated so far, in [-2, 2]");
  app.add_option("--repetition-penalty", o->repetition_penalty,
                 "Divide positive (multiply negative) logits of prompt and output tokens (> 0)")
      ->capture_default_str();
  app.add_option("--logit-bias", o->logit_bias,
                 "TOKEN_ID=BIAS added to that token's logit, in [-100, 100] (repeatable)");
  app.add_option("--logprobs", o->logprobs,
                 "Print each generated token's log-probability and the N most likely tokens "
                 "(0..20; computed from the raw logits)");
  // One value per occurrence: a repeatable option must not swallow the PROMPT after it.
  app.add_option("--stop-id", o->stop_ids, "Stop after generating this token id (repeatable)")
      ->allow_extra_args(false);
  app.add_option("--stop", o->stops,
                 "Stop when the text contains this string, which is not printed (repeatable)")
      ->allow_extra_args(false);
  app.add_flag("--ignore-eos", o->ignore_eos, "Keep generating past the model's EOS");
  app.add_flag("--no-bos", o->no_bos, "Do not prepend BOS to a text prompt");
  app.add_option("--timeout", o->timeout_s, "Seconds before giving up on the request")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--trace", o->trace_out,
                 "Write this request's timeline as a Chrome/Perfetto trace file "
                 "(ui.perfetto.dev)");
  auto* schema_opt = app.add_option(
      "--json-schema", o->json_schema_file,
      "Constrain the output to JSON valid under the JSON Schema in this file (README: "
      "structured output lists the keywords supported)");
  auto* regex_opt =
      app.add_option("--regex", o->regex, "Constrain the output to match this regular expression");
  auto* object_opt =
      app.add_flag("--json-object", o->json_object, "Constrain the output to a JSON object");
  schema_opt->excludes(regex_opt)->excludes(object_opt);
  regex_opt->excludes(object_opt);
  app.add_option("--segment", o->segments,
                 "Give the prompt as segments instead of PROMPT, one per --segment (text, or ids "
                 "with --token-ids): the server reuses each segment's KV wherever it sat before "
                 "(chunk reuse; README)")
      ->allow_extra_args(false);
  app.add_option("--recompute-ratio", o->recompute_ratio,
                 "With --segment: share of reused segment tokens recomputed, 0..1 (default: the "
                 "server's)");
  auto* prompt_opt =
      app.add_option("PROMPT", o->prompt, "The prompt (text, or ids with --token-ids)");
  return [o, prompt_opt]() -> int {
    // The trace file is opened first, so that a bad path costs no request.
    std::ofstream trace_file;
    if (!o->trace_out.empty()) {
      trace_file.open(o->trace_out, std::ios::binary | std::ios::trunc);
      if (!trace_file)
        return fail("generate", {errc::invalid_request,
                                 "cannot open '" + o->trace_out + "' to write the trace"});
    }
    generate_params p;
    if (o->segments.empty() == (prompt_opt->count() == 0))
      return fail("generate", {errc::invalid_request,
                               "give the prompt as PROMPT or as --segment, one of them"});
    if (o->recompute_ratio != -1) p.recompute_ratio = o->recompute_ratio;  // bad ones: refused
    for (const auto& seg : o->segments) {
      prompt_segment ps;
      if (o->token_ids) {
        auto ids = parse_ids(seg);
        if (!ids) return fail("generate", ids.error());
        ps.has_text = false;
        ps.token_ids = std::move(*ids);
      } else {
        ps.text = seg;
      }
      p.segments.push_back(std::move(ps));
    }
    if (!o->segments.empty()) {
      p.has_text = false;  // (the segments are the prompt)
    } else if (o->token_ids) {
      auto ids = parse_ids(o->prompt);
      if (!ids) return fail("generate", ids.error());
      p.has_text = false;
      p.token_ids = std::move(*ids);
    } else {
      p.text = o->prompt;
    }
    p.max_tokens = o->max_tokens;
    p.stop_ids = o->stop_ids;
    p.stop_strings = o->stops;
    p.sampling.temperature = o->temperature;
    p.sampling.top_p = o->top_p;
    p.sampling.top_k = o->top_k;
    p.sampling.min_p = o->min_p;
    p.sampling.seed = o->seed;
    p.sampling.presence_penalty = o->presence_penalty;
    p.sampling.frequency_penalty = o->frequency_penalty;
    p.sampling.repetition_penalty = o->repetition_penalty;
    auto bias = parse_bias(o->logit_bias);
    if (!bias) return fail("generate", bias.error());
    p.logit_bias = std::move(*bias);
    p.top_logprobs = o->logprobs;
    p.ignore_eos = o->ignore_eos;
    p.add_bos = !o->no_bos;
    if (!o->json_schema_file.empty()) {
      std::ifstream in(o->json_schema_file, std::ios::binary);
      if (!in)
        return fail("generate", {errc::invalid_request,
                                 "--json-schema: cannot read '" + o->json_schema_file + "'"});
      std::stringstream text;
      text << in.rdbuf();
      p.sampling.grammar = grammar_kind::json_schema;
      p.sampling.grammar_source = text.str();
    } else if (!o->regex.empty()) {
      p.sampling.grammar = grammar_kind::regex;
      p.sampling.grammar_source = o->regex;
    } else if (o->json_object) {
      p.sampling.grammar = grammar_kind::json_object;
    }
    auto c = connect_to(o->connect, std::min(o->timeout_s, 10.0), o->security);
    if (!c) return fail("generate", c.error());
    bool first = true;
    auto r = (*c)->generate(
        p,
        [&](const client_chunk& ch) {
          if (o->token_ids) {
            for (auto id : ch.ids) {
              std::printf(first ? "%d" : " %d", id);
              first = false;
            }
          } else {
            std::fwrite(ch.text.data(), 1, ch.text.size(), stdout);
          }
          std::fflush(stdout);
        },
        o->timeout_s);
    if (!r) {
      if (!first || !o->token_ids) std::fflush(stdout);
      return fail("generate", r.error());
    }
    std::printf("\n");
    if (trace_file.is_open()) {
      trace_file << chrome_trace(std::vector<generation_summary>{r->server}).dump() << "\n";
      trace_file.flush();
      if (!trace_file)
        return fail("generate",
                    {errc::invalid_request, "cannot write the trace to '" + o->trace_out + "'"});
    }
    auto itl = summarize(r->itl_ms);
    double stage_sum = 0;
    for (const auto& s : r->stages)
      stage_sum += s.ms;
    if (!o->quiet && !o->json) {
      std::printf(
          "--\n%u tokens, finish: %s, ttft %.2f ms, itl p50 %.2f ms p99 %.2f ms, e2e %.2f ms\n",
          static_cast<unsigned>(r->tokens.size()), std::string(to_string(r->server.reason)).c_str(),
          r->ttft_ms, itl.p50, itl.p99, (r->done_ns - r->sent_ns) / 1e6);
      std::printf("ttft breakdown:");
      for (const auto& s : r->stages)
        std::printf(" %s %.3f ms |", s.name.c_str(), s.ms);
      std::printf(" sum %.3f ms\n", stage_sum);
      const auto& sv = r->server;
      std::string spikes;
      for (size_t c = 1; c < sv.itl_spikes.size(); ++c)
        if (sv.itl_spikes[c] > 0)
          spikes += fmt::format("{}{} {}", spikes.empty() ? "" : ", ", sv.itl_spikes[c],
                                to_string(static_cast<itl_cause>(c)));
      std::printf("served by: prefill %s, decode %s; itl spikes: %s\n",
                  sv.prefill_worker.empty() ? "(on the decode worker)" : sv.prefill_worker.c_str(),
                  sv.decode_worker.c_str(), spikes.empty() ? "none" : spikes.c_str());
      if (!r->logprobs.empty()) {
        std::printf("logprobs (natural log, raw logits):\n");
        for (size_t i = 0; i < r->logprobs.size() && i < r->tokens.size(); ++i) {
          const auto& lp = r->logprobs[i];
          std::string top;
          for (const auto& a : lp.top)
            top += fmt::format(" {}:{:.4f}", a.token, a.logprob);
          std::printf("  %zu: %d %.4f%s%s\n", i, r->tokens[i], lp.logprob,
                      top.empty() ? "" : " | top", top.c_str());
        }
      }
    }
    if (o->json) {
      nlohmann::ordered_json j;
      j["request_id"] = r->server.id;
      j["tokens"] = r->tokens.size();
      j["token_ids"] = r->tokens;
      j["text"] = r->text;
      j["finish_reason"] = std::string(to_string(r->server.reason));
      j["prompt_tokens"] = r->server.prompt_tokens;
      j["ttft_ms"] = r->ttft_ms;
      j["itl_ms_mean"] = itl.mean;
      j["itl_ms_p50"] = itl.p50;
      j["itl_ms_p99"] = itl.p99;
      j["e2e_ms"] = (r->done_ns - r->sent_ns) / 1e6;
      nlohmann::ordered_json stages = nlohmann::ordered_json::object();
      for (const auto& s : r->stages)
        stages[s.name] = s.ms;
      j["stages"] = stages;
      j["stages_sum_ms"] = stage_sum;
      nlohmann::ordered_json server;
      server["ttft_ms"] = r->server.ttft_ms;
      server["itl_ms_mean"] = r->server.itl_mean_ms;
      server["itl_ms_p50"] = r->server.itl_p50_ms;
      server["itl_ms_p99"] = r->server.itl_p99_ms;
      nlohmann::ordered_json sst = nlohmann::ordered_json::object();
      for (const auto& s : r->server.stages)
        sst[s.name] = s.ms;
      server["stages"] = sst;
      server["prefill_worker"] = r->server.prefill_worker;
      server["decode_worker"] = r->server.decode_worker;
      nlohmann::ordered_json spk = nlohmann::ordered_json::object();
      for (size_t c = 1; c < r->server.itl_spikes.size(); ++c)
        spk[std::string(to_string(static_cast<itl_cause>(c)))] = r->server.itl_spikes[c];
      server["itl_spikes"] = spk;
      server["migrations"] = r->server.migrations;
      server["migration_reasons"] = r->server.migration_reasons;
      // The decode step behind each token: [index, gap before it at the router (ms), step
      // (ms), batch, prefill tokens in the iteration, cause of the gap, gap before it at
      // this client (ms; 0 inside a chunk), time the router held it after its step ended
      // (ms)]. Where a client gap exceeds the router's, the token was late on its way from
      // the router to the client; where the router's exceeds the step, between steps.
      auto steps = nlohmann::ordered_json::array();
      const auto& recs = r->server.steps;
      for (size_t i = 0; i < recs.size(); ++i) {
        const auto& rec = recs[i];
        double gap = i == 0 ? 0 : (rec.released_ns - recs[i - 1].released_ns) / 1e6;
        double step = rec.step_start_ns == 0 ? 0 : (rec.step_end_ns - rec.step_start_ns) / 1e6;
        double client_gap =
            rec.index >= 1 && rec.index - 1 < r->itl_ms.size() ? r->itl_ms[rec.index - 1] : 0;
        double held = rec.step_end_ns == 0 ? 0 : (rec.released_ns - rec.step_end_ns) / 1e6;
        steps.push_back({rec.index, gap, step, rec.batch, rec.prefill_tokens,
                         std::string(to_string(rec.cause)), client_gap, held});
      }
      server["steps"] = steps;
      j["server"] = server;
      if (!r->logprobs.empty()) {
        // [{"token": id, "logprob": x, "top": [[id, logprob], ...]}], one per token.
        auto lps = nlohmann::ordered_json::array();
        for (size_t i = 0; i < r->logprobs.size() && i < r->tokens.size(); ++i) {
          nlohmann::ordered_json e;
          e["token"] = r->tokens[i];
          e["logprob"] = r->logprobs[i].logprob;
          auto top = nlohmann::ordered_json::array();
          for (const auto& a : r->logprobs[i].top)
            top.push_back({a.token, a.logprob});
          e["top"] = top;
          lps.push_back(e);
        }
        j["logprobs"] = lps;
      }
      std::printf("%s\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    }
    return 0;
  };
}

command add_status(CLI::App& app) {
  struct opts {
    std::string connect = "127.0.0.1:7700";
    bool json = false;
    double timeout_s = 10;
    client_options security;
  };
  auto o = std::make_shared<opts>();
  app.add_option("--connect", o->connect, "Gateway address HOST:PORT")->capture_default_str();
  add_client_options(app, o->security);
  app.add_flag("--json", o->json, "Print one JSON object");
  app.add_option("--timeout", o->timeout_s)->check(CLI::PositiveNumber)->capture_default_str();
  return [o]() -> int {
    auto c = connect_to(o->connect, o->timeout_s, o->security);
    if (!c) return fail("status", c.error());
    auto st = (*c)->status(o->timeout_s);
    if (!st) return fail("status", st.error());
    if (o->json) {
      nlohmann::ordered_json j;
      j["cluster"] = st->cluster;
      j["ready"] = st->ready;
      j["model"] = {{"name", (*c)->model().name},
                    {"vocab_size", (*c)->model().vocab_size},
                    {"max_context", (*c)->model().max_context},
                    {"block_tokens", (*c)->model().block_tokens}};
      auto ws = nlohmann::ordered_json::array();
      for (const auto& w : st->workers) {
        auto tiers = nlohmann::ordered_json::array();
        for (const auto& t : w.tiers)
          tiers.push_back({{"tier", t.tier},
                           {"hits", t.hits},
                           {"bytes_in", t.bytes_in},
                           {"bytes_out", t.bytes_out},
                           {"evictions", t.evictions},
                           {"used", t.used},
                           {"capacity", t.capacity}});
        ws.push_back({{"id", w.id},
                      {"role", std::string(to_string(w.kind))},
                      {"name", w.name},
                      {"node", w.node},
                      {"up", w.up},
                      {"queued", w.queued},
                      {"running", w.running},
                      {"kv_used", w.kv_used},
                      {"kv_total", w.kv_total},
                      {"completed", w.completed},
                      {"tokens_out", w.tokens_out},
                      {"kv_bytes", w.kv_bytes},
                      {"prefix_hit_blocks", w.prefix_hit_blocks},
                      {"prefix_lookup_blocks", w.prefix_lookup_blocks},
                      {"chunk_lookup_tokens", w.chunk_lookup_tokens},
                      {"chunk_hit_tokens", w.chunk_hit_tokens},
                      {"chunk_recomputed_tokens", w.chunk_recomputed_tokens},
                      {"tiers", tiers},
                      {"fetch",
                       {{"started", w.fetch.started},
                        {"completed", w.fetch.completed},
                        {"failed", w.fetch.failed},
                        {"blocks", w.fetch.blocks},
                        {"bytes", w.fetch.bytes},
                        {"missing", w.fetch.missing},
                        {"time_ms", static_cast<double>(w.fetch.time_ns) / 1e6},
                        {"served", w.fetch.served},
                        {"served_blocks", w.fetch.served_blocks},
                        {"served_bytes", w.fetch.served_bytes},
                        {"serve_failures", w.fetch.serve_failures}}},
                      {"detail", w.detail}});
      }
      j["workers"] = ws;
      auto ns = nlohmann::ordered_json::array();
      for (const auto& n : st->nodes)
        ns.push_back({{"name", n.name},
                      {"index", n.index},
                      {"up", n.up},
                      {"clock_offset_ms", n.clock_offset_ns / 1e6},
                      {"clock_rtt_ms", n.clock_rtt_ns < 0 ? -1.0 : n.clock_rtt_ns / 1e6},
                      {"restarts", n.restarts}});
      j["nodes"] = ns;
      j["planner"] = planner_to_json(st->planner);
      std::printf("%s\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
      return 0;
    }
    std::printf("cluster %s: %s; model %s (vocab %u, context %u, %u tokens/block)\n",
                st->cluster.c_str(), st->ready ? "ready" : "NOT ready", (*c)->model().name.c_str(),
                (*c)->model().vocab_size, (*c)->model().max_context, (*c)->model().block_tokens);
    if (!st->nodes.empty()) {
      std::printf("%-12s %5s %-5s %8s %16s %14s\n", "node", "index", "state", "restarts",
                  "clock offset ms", "probe rtt ms");
      for (const auto& n : st->nodes)
        std::printf("%-12s %5u %-5s %8u %16.3f %14.3f\n", n.name.c_str(), n.index,
                    n.up ? "up" : "down", n.restarts, n.clock_offset_ns / 1e6,
                    n.clock_rtt_ns < 0 ? -1.0 : n.clock_rtt_ns / 1e6);
    }
    std::printf("%-4s %-10s %-16s %-8s %-5s %7s %7s %13s %9s %10s  %s\n", "id", "role", "name",
                "node", "state", "queued", "running", "kv used/total", "completed", "tokens",
                "detail");
    for (const auto& w : st->workers) {
      std::string kv = w.kv_total ? fmt::format("{}/{}", w.kv_used, w.kv_total) : "-";
      std::printf("%-4u %-10s %-16s %-8s %-5s %7u %7u %13s %9llu %10llu  %s\n", w.id,
                  std::string(to_string(w.kind)).c_str(), w.name.c_str(), w.node.c_str(),
                  w.up ? "up" : "down", w.queued, w.running, kv.c_str(),
                  static_cast<unsigned long long>(w.completed),
                  static_cast<unsigned long long>(w.tokens_out), w.detail.c_str());
    }
    const auto& p = st->planner;
    if (p.enabled || !p.events.empty()) {
      std::printf(
          "planner: %s; %llu decisions, %llu flips prefill->decode, %llu decode->prefill, "
          "%llu drained, %llu failed\n",
          p.enabled ? "on" : "off", static_cast<unsigned long long>(p.decisions),
          static_cast<unsigned long long>(p.flips_to_decode),
          static_cast<unsigned long long>(p.flips_to_prefill),
          static_cast<unsigned long long>(p.drains),
          static_cast<unsigned long long>(p.changes_failed));
      if (!p.last_decision.empty()) std::printf("  last: %s\n", p.last_decision.c_str());
      for (const auto& e : p.events)
        std::printf(
            "  %-7s %-16s %s -> %s%s  %s\n", e.kind.c_str(), e.worker.c_str(),
            std::string(to_string(e.from)).c_str(), std::string(to_string(e.to)).c_str(),
            e.kind == "changed" ? fmt::format(" in {:.1f} ms", e.took_ns / 1e6).c_str() : "",
            e.why.c_str());
    }
    return 0;
  };
}

}  // namespace tokenmill::app
