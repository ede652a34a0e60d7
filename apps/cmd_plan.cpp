// `tokenmill plan`: from an engine profile (`tokenmill profile`), SLOs, a workload and the
// hosts available, the workers it takes (cluster/plan_model.hpp) written as a host manifest
// that `tokenmill manifest check` and `tokenmill launch` accept, with the model's reasons on
// stdout. Exit 0: written; 1: no plan meets the SLO with these hosts (the counts it would
// take are printed); 2: bad input (the option or profile field is named).
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "apps/commands.hpp"
#include "cluster/engine_profile.hpp"
#include "cluster/manifest.hpp"
#include "cluster/plan_model.hpp"
#include "engine/engine_factory.hpp"
#include "frontend/workload.hpp"

namespace tokenmill::app {
namespace {

struct plan_opts {
  std::string profile;
  double ttft_ms = 0;
  double itl_ms = 0;
  double percentile = 90;
  double rate = 0;
  double output_tokens_per_s = 0;
  uint32_t input_len = 0;
  uint32_t output_len = 0;
  double range_ratio = 0;
  std::string dataset;
  size_t samples = 1000;
  uint64_t seed = 1;
  std::string hosts = "1";
  uint32_t workers_per_host = 1;
  uint32_t kv_blocks = 0;
  std::string out;
  std::string cluster = "planned";
  uint16_t rpc_port = 7700;
  uint16_t http_port = 8000;
  uint16_t base_port = 0;
  bool json = false;
};

/// "3" -> three local hosts; "a,b" -> those addresses. Errors name --hosts.
result<std::vector<std::string>> parse_hosts(const std::string& s) {
  auto bad = [&](const std::string& why) {
    return error_info{errc::invalid_request, fmt::format("--hosts '{}': {}", s, why)};
  };
  if (s.empty()) return bad("empty; expected a count or a comma-separated list of addresses");
  if (s.find_first_not_of("0123456789") == std::string::npos) {
    if (s.size() > 4) return bad("too many hosts");
    int n = std::stoi(s);
    if (n < 1) return bad("at least one host");
    return std::vector<std::string>(static_cast<size_t>(n), "127.0.0.1");
  }
  std::vector<std::string> out;
  std::stringstream in(s);
  for (std::string h; std::getline(in, h, ',');) {
    auto b = h.find_first_not_of(" \t"), e = h.find_last_not_of(" \t");
    if (b == std::string::npos) return bad("an empty host name");
    out.push_back(h.substr(b, e - b + 1));
  }
  if (s.back() == ',') return bad("an empty host name");
  return out;
}

/// The workload's length samples: drawn uniformly from the --range-ratio ranges (as
/// `bench --workload random` draws them), or the prompts and answers of a ShareGPT file
/// tokenized with the profiled model's tokenizer (as `bench --workload sharegpt` selects
/// them). Errors name the option or the file.
result<std::vector<length_sample>> draw_samples(const plan_opts& o, const engine_profile& p,
                                                bool output_given) {
  namespace wl = workload;
  std::vector<length_sample> out;
  if (o.dataset.empty()) {
    if (o.range_ratio == 0) return out;
    wl::length_range in{o.input_len, o.range_ratio}, outr{o.output_len, o.range_ratio};
    std::mt19937_64 rng(o.seed);
    for (size_t i = 0; i < o.samples; ++i) {
      uint32_t a = wl::sample_length(in, rng);
      out.push_back({a, wl::sample_length(outr, rng)});
    }
    return out;
  }
  auto entries = wl::read_sharegpt(o.dataset);
  if (!entries) return entries.error();
  engine_spec spec;
  spec.kind = p.engine;
  spec.sim = p.sim;
  spec.model_path = p.model_path;
  auto tok = make_tokenizer(spec);
  if (!tok)
    return error_info{
        errc::invalid_request,
        fmt::format("--dataset: the profile's model cannot tokenize it: {}", tok.error().message)};
  wl::sharegpt_spec ss;
  ss.path = o.dataset;
  ss.requests = o.samples;
  ss.max_len = p.max_context;
  ss.fixed_output_len = output_given ? o.output_len : 0;
  ss.seed = o.seed;
  auto t = *tok;
  auto chosen = wl::select_sharegpt(*entries, ss,
                                    [t](const std::string& text) -> result<std::vector<token_id>> {
                                      return t->encode(text, true);
                                    });
  if (!chosen) return chosen.error();
  for (const auto& r : *chosen)
    out.push_back({r.prompt_len, std::max(1u, r.expected_output_len)});
  return out;
}

std::string ms(double s) {
  return fmt::format("{:.1f} ms", s * 1e3);
}

}  // namespace

command add_plan(CLI::App& app) {
  auto o = std::make_shared<plan_opts>();
  app.add_option("--profile", o->profile, "Engine profile (JSON from tokenmill profile)")
      ->required();
  auto* slo = app.add_option_group("SLO", "What every request should get");
  slo->add_option("--ttft-ms", o->ttft_ms, "Time to first token at the percentile (ms)")
      ->required();
  slo->add_option("--itl-ms", o->itl_ms, "Inter-token latency at the percentile (ms)")->required();
  slo->add_option("--percentile", o->percentile, "Percentile the SLOs hold at (e.g. 90, 99)")
      ->capture_default_str();
  auto* w = app.add_option_group("workload", "The load to plan for");
  auto* rate = w->add_option("--rate", o->rate, "Requests per second");
  auto* tps = w->add_option("--output-tokens-per-s", o->output_tokens_per_s,
                            "Output tokens per second (the rate is this / the mean output length)");
  rate->excludes(tps);
  auto* input_len = w->add_option("--input-len", o->input_len, "Prompt tokens per request");
  auto* output_len = w->add_option("--output-len", o->output_len,
                                   "Output tokens per request (with --dataset: replaces the "
                                   "answers' lengths)");
  auto* range = w->add_option("--range-ratio", o->range_ratio,
                              "Lengths uniform in [len (1 - r), len (1 + r)], as bench's random "
                              "workload draws them (0 = fixed)")
                    ->capture_default_str();
  auto* dataset = w->add_option("--dataset", o->dataset,
                                "A ShareGPT JSON file: the lengths of its prompts and answers, "
                                "tokenized by the profiled model");
  dataset->excludes(input_len)->excludes(range);
  w->add_option("--samples", o->samples, "Requests drawn from the distribution or the dataset")
      ->capture_default_str();
  w->add_option("--seed", o->seed, "Seed of the draw")->capture_default_str();
  auto* h = app.add_option_group("hosts", "Where the workers go");
  h->add_option("--hosts", o->hosts,
                "Host addresses (a,b,c; the first runs router and supervisor) or a count of "
                "local hosts (127.0.0.1)")
      ->capture_default_str();
  h->add_option("--workers-per-host", o->workers_per_host,
                "Engine workers one host can run (GPUs, or CPU workers)")
      ->capture_default_str();
  h->add_option("--kv-blocks", o->kv_blocks,
                "KV blocks per decode worker (0 = the profile's memory / workers per host)")
      ->capture_default_str();
  auto* m = app.add_option_group("manifest", "The written manifest");
  m->add_option("-o,--output", o->out, "Write the manifest here (default: print it)");
  m->add_option("--cluster-name", o->cluster)->capture_default_str();
  m->add_option("--rpc-port", o->rpc_port, "frontend.rpc_port")->capture_default_str();
  m->add_option("--http-port", o->http_port, "frontend.http_port")->capture_default_str();
  m->add_option("--base-port", o->base_port,
                "Node control ports from this one up (0 = the manifest's default, 7800 + index)")
      ->capture_default_str();
  app.add_flag("--json", o->json, "Print the plan's figures as one JSON line at the end");
  return [o, rate, tps, input_len, output_len, dataset]() -> int {
    auto usage = [](const std::string& m) {
      std::fprintf(stderr, "tokenmill plan: %s\n", m.c_str());
      return 2;
    };
    if (rate->count() == 0 && tps->count() == 0)
      return usage("the workload needs --rate (requests/s) or --output-tokens-per-s");
    if (dataset->count() == 0 && (input_len->count() == 0 || output_len->count() == 0))
      return usage("the workload needs --input-len and --output-len, or --dataset FILE");
    if (!(o->range_ratio >= 0 && o->range_ratio < 1))
      return usage(fmt::format("--range-ratio: must be in [0, 1), got {}", o->range_ratio));
    if (o->samples == 0 || o->samples > 1000000)
      return usage(fmt::format("--samples: must be 1 to 1000000, got {}", o->samples));
    std::ifstream in(o->profile, std::ios::binary);
    if (!in || std::filesystem::is_directory(o->profile))
      return usage(fmt::format("--profile {}: cannot read the file", o->profile));
    std::stringstream text;
    text << in.rdbuf();
    auto prof = parse_profile(text.str(), o->profile);
    if (!prof) return usage(prof.error().message);
    const auto& p = *prof;
    auto hosts = parse_hosts(o->hosts);
    if (!hosts) return usage(hosts.error().message);

    plan_request r;
    r.slo = {o->ttft_ms / 1e3, o->itl_ms / 1e3, o->percentile / 100};
    r.load.input_tokens = o->input_len;
    r.load.output_tokens = o->output_len;
    if (dataset->count() > 0 || o->range_ratio > 0) {
      if (output_len->count() > 0 && o->output_len == 0)
        return usage("--output-len: must be at least 1 token");
      if (o->range_ratio > 0 && (o->input_len == 0 || o->output_len == 0))
        return usage("--input-len and --output-len: must be at least 1 token");
      auto drawn = draw_samples(*o, p, output_len->count() > 0);
      if (!drawn) return usage(drawn.error().message);
      r.load.samples = std::move(*drawn);
    }
    const length_stats lengths = summarize(workload_samples(r.load));
    if (tps->count() > 0) {
      if (!(o->output_tokens_per_s > 0))
        return usage(
            fmt::format("--output-tokens-per-s: must be positive, got {}", o->output_tokens_per_s));
      if (lengths.mean_output <= 0) return usage("--output-len: must be at least 1 token");
      r.load.rate = o->output_tokens_per_s / lengths.mean_output;
    } else {
      r.load.rate = o->rate;
    }
    r.hosts = static_cast<uint32_t>(hosts->size());
    r.workers_per_host = o->workers_per_host;
    r.decode_kv_blocks = o->kv_blocks;
    if (auto c = check_plan_request(r, p); !c) return usage(c.error().message);

    const int pct = static_cast<int>(std::lround(o->percentile));
    auto plan = make_plan(p, r);
    const std::string shape =
        r.load.samples.empty()
            ? fmt::format("{} prompt + {} output tokens", r.load.input_tokens, r.load.output_tokens)
            : fmt::format(
                  "{} samples{}: prompt mean {:.0f} (p50 {}, p90 {}, {}-{}), output mean "
                  "{:.0f} (p50 {}, p90 {}, max {}) tokens",
                  r.load.samples.size(),
                  o->dataset.empty() ? fmt::format(" (range ratio {})", o->range_ratio)
                                     : fmt::format(" of {}", o->dataset),
                  lengths.mean_input, lengths.p50_input, lengths.p90_input, lengths.min_input,
                  lengths.max_input, lengths.mean_output, lengths.p50_output, lengths.p90_output,
                  lengths.max_output);
    std::printf(
        "workload %.2f requests/s (%.0f output tokens/s), %s; SLO TTFT p%d %.0f ms, ITL p%d "
        "%.1f ms; %zu host(s) x %u worker(s)\n",
        r.load.rate, r.load.rate * lengths.mean_output, shape.c_str(), pct, o->ttft_ms, pct,
        o->itl_ms, hosts->size(), r.workers_per_host);
    std::printf("profile  %s engine, model %s, on %s; prefill saturates at %u tokens per call\n",
                p.engine.c_str(), p.model_name.c_str(), p.cpu.c_str(), p.saturation_chunk);
    std::printf(
        "model    Poisson arrivals, %s, no prefix-cache hits, load spread evenly; "
        "prefill worker = %s queue (exponential-tail percentile); decode batch by Little's "
        "law (Poisson occupancy); KV transfer and network time not modelled\n\n",
        r.load.samples.empty() ? "fixed lengths" : "lengths as sampled",
        r.load.samples.empty() ? "M/D/1" : "M/G/1");
    nlohmann::ordered_json j;
    j["feasible"] = plan.feasible;
    if (!plan.feasible) {
      std::printf("refused: %s\n", plan.refusal.c_str());
      std::fprintf(stderr, "tokenmill plan: refused: %s\n", plan.refusal.c_str());
      j["refusal"] = plan.refusal;
      j["unreachable"] = plan.unreachable;
      j["prefill_needed"] = plan.prefill_needed;
      j["decode_needed"] = plan.decode_needed;
      if (o->json) std::printf("%s\n", j.dump().c_str());
      return 1;
    }
    const auto& pf = plan.prefill;
    const auto& d = plan.decode;
    std::printf("%-8s %7s  %-34s %-24s %s\n", "role", "workers", "setting",
                fmt::format("predicted p{}", pct).c_str(), "mean / load");
    if (plan.local)
      std::printf(
          "%-8s %7u  %-34s %-24s %s\n", "prefill", 0u,
          fmt::format("on decode workers, < {} tokens", plan.local_prefill_threshold).c_str(),
          fmt::format("TTFT {}", ms(pf.ttft_p_s)).c_str(),
          fmt::format("TTFT {}, {:.0f}% of decode time", ms(pf.ttft_mean_s), 100 * pf.utilization)
              .c_str());
    else
      std::printf(
          "%-8s %7u  %-34s %-24s %s\n", "prefill", pf.workers,
          fmt::format("chunk {}, max_seqs {}", pf.chunk, pf.max_seqs).c_str(),
          fmt::format("TTFT {}", ms(pf.ttft_p_s)).c_str(),
          fmt::format("TTFT {}, {:.0f}% busy", ms(pf.ttft_mean_s), 100 * pf.utilization).c_str());
    std::printf("%-8s %7u  %-34s %-24s %s\n", "decode", d.workers,
                fmt::format("max_batch {}, kv_blocks {}", d.max_batch, d.kv_blocks).c_str(),
                fmt::format("ITL {}", ms(d.itl_p_s)).c_str(),
                fmt::format("ITL {}, batch {:.1f} (p{} {:.1f})", ms(d.itl_mean_s), d.mean_batch,
                            pct, d.batch_p)
                    .c_str());
    std::printf("router   local_prefill_threshold %u tokens\n\nwhy:\n",
                plan.local_prefill_threshold);
    for (const auto& why : plan.reasons)
      std::printf("  - %s\n", why.c_str());

    plan_placement where;
    where.hosts = *hosts;
    where.workers_per_host = r.workers_per_host;
    where.cluster = o->cluster;
    where.rpc_port = o->rpc_port;
    where.http_port = o->http_port;
    where.base_port = o->base_port;
    where.header = fmt::format(
        "Written by tokenmill plan from {} ({} engine, model {}).\n"
        "Workload: {:.2f} requests/s, {}. SLO: TTFT p{} {} ms, "
        "ITL p{} {} ms.\n"
        "Predicted: TTFT p{} {}, ITL p{} {} ({} prefill, {} decode workers).",
        o->profile, p.engine, p.model_name, r.load.rate, shape, pct, o->ttft_ms, pct, o->itl_ms,
        pct, ms(pf.ttft_p_s), pct, ms(d.itl_p_s), pf.workers, d.workers);
    std::string manifest_text = render_manifest(p, plan, where);
    // What is written must load: checked here, not discovered at launch.
    std::string base = o->out.empty() ? std::string(".")
                                      : std::filesystem::absolute(o->out).parent_path().string();
    auto check = parse_manifest(manifest_text, o->out.empty() ? "<plan>" : o->out, base,
                                manifest_options{false});
    if (!check) {
      std::fprintf(stderr, "tokenmill plan: the planned manifest does not load:\n%s\n",
                   check.error().message.c_str());
      return 1;
    }
    if (o->out.empty()) {
      std::printf("\n%s", manifest_text.c_str());
    } else {
      std::ofstream f(o->out, std::ios::binary | std::ios::trunc);
      f << manifest_text;
      f.close();
      if (!f) {
        std::fprintf(stderr, "tokenmill plan: cannot write %s\n", o->out.c_str());
        return 1;
      }
      std::printf("\nwrote %s: %zu node(s) on %zu host(s); tokenmill manifest check %s\n",
                  o->out.c_str(), check->nodes.size(), hosts->size(), o->out.c_str());
    }
    if (o->json) {
      j["prefill"] = {{"workers", pf.workers},         {"chunk", pf.chunk},
                      {"max_seqs", pf.max_seqs},       {"service_s", pf.service_s},
                      {"utilization", pf.utilization}, {"ttft_p_s", pf.ttft_p_s},
                      {"ttft_mean_s", pf.ttft_mean_s}, {"local", plan.local}};
      j["decode"] = {{"workers", d.workers},       {"max_batch", d.max_batch},
                     {"kv_blocks", d.kv_blocks},   {"mean_batch", d.mean_batch},
                     {"batch_p", d.batch_p},       {"itl_p_s", d.itl_p_s},
                     {"itl_mean_s", d.itl_mean_s}, {"step_batch1_s", d.step_batch1_s}};
      j["workload"] = {{"rate", r.load.rate},
                       {"samples", workload_samples(r.load).size()},
                       {"mean_input", lengths.mean_input},
                       {"mean_output", lengths.mean_output},
                       {"p90_input", lengths.p90_input},
                       {"max_input", lengths.max_input}};
      j["local_prefill_threshold"] = plan.local_prefill_threshold;
      j["saturation_chunk"] = plan.saturation_chunk;
      std::printf("%s\n", j.dump().c_str());
    }
    return 0;
  };
}

}  // namespace tokenmill::app
