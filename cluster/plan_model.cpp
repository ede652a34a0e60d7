#include "cluster/plan_model.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include <fmt/format.h>

namespace tokenmill {
namespace {

constexpr double inf = std::numeric_limits<double>::infinity();

/// One decode worker under a load, as the header's model sees it.
struct decode_eval {
  bool ok = false;
  std::string why;  ///< when !ok
  double n = 0, n_p = 0, itl_mean = 0, itl_p = 0, share = 0;
};

struct decode_inputs {
  const engine_profile* p;
  double rate;     ///< requests/s per worker
  double steps;    ///< mean decode steps per request (output - 1)
  double context;  ///< mean context a step sees
  uint32_t max_batch;
  double local_s;    ///< mean prefill time per request done on the worker (local plans)
  double local_q_s;  ///< its q-quantile over the workload's prompts
  double q, z;
  double itl_slo;
};

decode_eval eval_decode(const decode_inputs& in) {
  decode_eval e;
  auto step = [&](double b) { return profile_decode_seconds(*in.p, std::max(b, 1.0), in.context); };
  e.share = in.rate * in.local_s;
  if (e.share >= 1) {
    e.why = fmt::format("local prefills alone take {:.0f}% of a decode worker", 100 * e.share);
    return e;
  }
  if (in.steps <= 0) {
    e.itl_mean = e.itl_p = step(1);
    e.ok = true;
    return e;
  }
  // Little's law fixed point: the iteration rises monotonically to the least fixed point,
  // or past max_batch when the worker cannot keep up.
  double n = 0;
  for (int i = 0; i < 500; ++i) {
    double next = in.rate * in.steps * step(n) / (1 - e.share);
    if (next > 4.0 * in.max_batch + 1) {
      n = next;
      break;
    }
    if (std::abs(next - n) < 1e-9) {
      n = next;
      break;
    }
    n = next;
  }
  e.n = n;
  e.itl_mean = step(n) / (1 - e.share);
  e.n_p = n + in.z * std::sqrt(n);
  if (n > in.max_batch) {
    e.why = fmt::format("the mean batch would be {:.1f} > max_batch {}", n, in.max_batch);
    return e;
  }
  if (e.n_p > in.max_batch) {
    e.why = fmt::format("the batch at the percentile would be {:.1f} > max_batch {}", e.n_p,
                        in.max_batch);
    return e;
  }
  e.itl_p = step(e.n_p);
  // A local prefill delays one step by its length; when more than 1 - q of the steps carry
  // one, the percentile ITL includes it.
  double prefills_per_step = in.rate * e.itl_mean;
  if (in.local_s > 0 && prefills_per_step > 1 - in.q) e.itl_p += in.local_q_s;
  if (e.itl_p > in.itl_slo) {
    e.why = fmt::format("ITL at the percentile would be {:.2f} ms", e.itl_p * 1e3);
    return e;
  }
  e.ok = true;
  return e;
}

}  // namespace

double normal_quantile(double q) {
  double lo = -12, hi = 12;
  for (int i = 0; i < 200; ++i) {
    double mid = (lo + hi) / 2;
    (0.5 * std::erfc(-mid / std::sqrt(2.0)) < q ? lo : hi) = mid;
  }
  return (lo + hi) / 2;
}

double md1_wait(double service_s, double utilization, double q) {
  if (utilization <= 0) return 0;
  if (utilization >= 1) return inf;
  if (utilization <= 1 - q) return 0;
  return service_s / (2 * (1 - utilization)) * std::log(utilization / (1 - q));
}

double mg1_response_quantile(const std::vector<double>& service_s, double utilization, double q,
                             double extra_s) {
  if (service_s.empty()) return extra_s;
  if (utilization >= 1) return inf;
  double s1 = 0, s2 = 0, hi = 0;
  for (double s : service_s) {
    s1 += s;
    s2 += s * s;
    hi = std::max(hi, s);
  }
  s1 /= static_cast<double>(service_s.size());
  s2 /= static_cast<double>(service_s.size());
  const double rho = std::max(0.0, utilization);
  const double m = s1 > 0 ? s2 / (2 * s1 * (1 - rho)) : 0;
  // P(W + S > t) over the samples; decreasing in t, so bisect for the first t where it
  // falls to 1 - q.
  auto tail = [&](double t) {
    double sum = 0;
    for (double s : service_s) {
      double x = t - s;
      sum += x < 0 ? 1.0 : (m > 0 ? rho * std::exp(-x / m) : 0.0);
    }
    return sum / static_cast<double>(service_s.size());
  };
  double lo = 0,
         up = hi + (rho > 0 && m > 0 ? m * std::log(std::max(rho / (1 - q), 1.0)) : 0) + 1e-12;
  while (tail(up) > 1 - q)
    up *= 2;
  for (int i = 0; i < 100; ++i) {
    double mid = (lo + up) / 2;
    (tail(mid) > 1 - q ? lo : up) = mid;
  }
  return up + extra_s;
}

std::vector<length_sample> workload_samples(const plan_workload& w) {
  if (!w.samples.empty()) return w.samples;
  return {{w.input_tokens, w.output_tokens}};
}

length_stats summarize(const std::vector<length_sample>& samples) {
  length_stats st;
  if (samples.empty()) return st;
  std::vector<uint32_t> in, out;
  for (const auto& s : samples) {
    in.push_back(s.input);
    out.push_back(s.output);
    st.mean_input += s.input;
    st.mean_output += s.output;
  }
  st.mean_input /= static_cast<double>(samples.size());
  st.mean_output /= static_cast<double>(samples.size());
  std::sort(in.begin(), in.end());
  std::sort(out.begin(), out.end());
  auto at = [](const std::vector<uint32_t>& v, double q) {
    size_t i = static_cast<size_t>(std::ceil(q * static_cast<double>(v.size()))) - 1;
    return v[std::min(i, v.size() - 1)];
  };
  st.min_input = in.front();
  st.max_input = in.back();
  st.p50_input = at(in, 0.5);
  st.p90_input = at(in, 0.9);
  st.p50_output = at(out, 0.5);
  st.p90_output = at(out, 0.9);
  st.max_output = out.back();
  return st;
}

result<void> check_plan_request(const plan_request& r, const engine_profile& p) {
  auto bad = [](std::string m) { return error_info{errc::invalid_request, std::move(m)}; };
  auto positive = [](double v) { return std::isfinite(v) && v > 0; };
  if (!positive(r.slo.ttft_s))
    return bad(fmt::format("--ttft-ms: must be a positive number of milliseconds, got {}",
                           r.slo.ttft_s * 1e3));
  if (!positive(r.slo.itl_s))
    return bad(fmt::format("--itl-ms: must be a positive number of milliseconds, got {}",
                           r.slo.itl_s * 1e3));
  if (!(r.slo.percentile > 0 && r.slo.percentile < 1))
    return bad(
        fmt::format("--percentile: must be above 0 and below 100, got {}", r.slo.percentile * 100));
  if (!positive(r.load.rate))
    return bad(
        fmt::format("--rate / --output-tokens-per-s: the load must be positive, got {} "
                    "requests/s",
                    r.load.rate));
  if (r.load.samples.empty()) {
    if (r.load.input_tokens == 0) return bad("--input-len: must be at least 1 token");
    if (r.load.output_tokens == 0) return bad("--output-len: must be at least 1 token");
    uint64_t total = uint64_t{r.load.input_tokens} + r.load.output_tokens;
    if (p.max_context > 0 && total > p.max_context)
      return bad(
          fmt::format("--input-len + --output-len: {} tokens exceed the model's context of {}",
                      total, p.max_context));
  }
  for (size_t i = 0; i < r.load.samples.size(); ++i) {
    const auto& s = r.load.samples[i];
    if (s.input == 0 || s.output == 0)
      return bad(
          fmt::format("workload sample {}: {} prompt + {} output tokens; both must be at "
                      "least 1",
                      i, s.input, s.output));
    uint64_t total = uint64_t{s.input} + s.output;
    if (p.max_context > 0 && total > p.max_context)
      return bad(fmt::format("workload sample {}: {} tokens exceed the model's context of {}", i,
                             total, p.max_context));
  }
  if (r.hosts == 0) return bad("--hosts: at least one host");
  if (r.workers_per_host == 0) return bad("--workers-per-host: at least 1");
  if (r.max_workers == 0) return bad("max_workers: at least 1");
  return {};
}

cluster_plan make_plan(const engine_profile& p, const plan_request& r) {
  cluster_plan plan;
  plan.saturation_chunk = p.saturation_chunk;
  const double q = r.slo.percentile;
  const double z = normal_quantile(q);
  const std::vector<length_sample> samples = workload_samples(r.load);
  const length_stats st = summarize(samples);
  const int pct = static_cast<int>(std::lround(q * 100));
  auto refuse = [&](std::string why) {
    plan.feasible = false;
    plan.refusal = std::move(why);
    return plan;
  };

  // ---- decode: batch bound from the ITL SLO and the KV blocks, then the worker count.
  auto& d = plan.decode;
  double steps_sum = 0, ctx_sum = 0, blocks_sum = 0;
  uint32_t per_seq_max = 0;
  for (const auto& s : samples) {
    double steps = s.output - 1.0;
    steps_sum += steps;
    ctx_sum += steps * (s.input + s.output / 2.0);
    blocks_sum += steps * p.layout.blocks_for(s.input + s.output);
    per_seq_max = std::max(per_seq_max, p.layout.blocks_for(s.input + s.output));
  }
  const double mean_steps = steps_sum / static_cast<double>(samples.size());
  d.context = steps_sum > 0 ? ctx_sum / steps_sum : st.mean_input + 0.5;
  d.step_batch1_s = profile_decode_seconds(p, 1, d.context);
  if (d.step_batch1_s > r.slo.itl_s) {
    plan.unreachable = true;
    return refuse(fmt::format(
        "no number of decode workers meets ITL p{} {:.2f} ms: one decode step at batch 1 and a "
        "{:.0f}-token context already takes {:.2f} ms",
        pct, r.slo.itl_s * 1e3, d.context, d.step_batch1_s * 1e3));
  }
  const uint32_t max_profiled = profile_max_batch(p);
  for (uint32_t b = 1; b <= max_profiled; ++b)
    if (profile_decode_seconds(p, b, d.context) <= r.slo.itl_s) d.itl_batch_bound = b;
  // Blocks a resident sequence holds, weighted by how long it stays (its steps).
  const uint32_t per_seq =
      steps_sum > 0 ? static_cast<uint32_t>(std::ceil(blocks_sum / steps_sum)) : per_seq_max;
  const uint64_t host_share = r.decode_kv_blocks ? r.decode_kv_blocks
                              : p.kv_max_blocks  ? p.kv_max_blocks / r.workers_per_host
                                                 : uint64_t{1} << 24;
  const uint32_t cap = static_cast<uint32_t>(std::min<uint64_t>(host_share, 1u << 24));
  d.kv_batch_bound = per_seq && per_seq_max <= cap ? cap / per_seq : 0;
  if (d.kv_batch_bound == 0) {
    plan.unreachable = true;
    return refuse(fmt::format(
        "a sequence of {} tokens needs {} KV blocks but a decode worker gets {} ({}): no "
        "worker can hold one",
        st.max_input + st.max_output, per_seq_max, cap,
        r.decode_kv_blocks ? "--kv-blocks"
                           : fmt::format("the profile's {} blocks / {} workers per host",
                                         p.kv_max_blocks, r.workers_per_host)));
  }
  d.max_batch = std::min(d.itl_batch_bound, d.kv_batch_bound);
  d.kv_blocks = std::min<uint32_t>(cap, (d.max_batch + std::max(1u, d.max_batch / 4)) * per_seq);

  decode_inputs di{&p, 0, mean_steps, d.context, d.max_batch, 0, 0, q, z, r.slo.itl_s};
  uint32_t decode_workers = 0;
  decode_eval de;
  std::string last_why;
  for (uint32_t n = 1; n <= r.max_workers; ++n) {
    di.rate = r.load.rate / n;
    de = eval_decode(di);
    if (de.ok) {
      decode_workers = n;
      break;
    }
    last_why = de.why;
  }
  if (decode_workers == 0) {
    plan.unreachable = true;
    return refuse(fmt::format("no count up to {} decode workers meets ITL p{} {:.2f} ms ({})",
                              r.max_workers, pct, r.slo.itl_s * 1e3, last_why));
  }
  auto set_decode = [&](uint32_t workers, const decode_eval& e, double rate_w) {
    d.workers = workers;
    d.mean_batch = e.n;
    d.batch_p = e.n_p;
    d.itl_mean_s = e.itl_mean;
    d.itl_p_s = e.itl_p;
    d.prefill_share = e.share;
    d.tokens_per_s = rate_w * st.mean_output;
  };
  set_decode(decode_workers, de, r.load.rate / decode_workers);

  // ---- prefill: per measured chunk size, the fewest workers meeting the TTFT SLO.
  struct candidate {
    uint32_t chunk = 0, workers = 0;
    double service = 0, rho = 0, wait = 0, ttft = 0, mean_wait = 0;
  };
  std::vector<candidate> ok;
  double best_service = inf;
  for (uint32_t c : profile_chunks(p)) {
    candidate k;
    k.chunk = c;
    std::vector<double> service;
    for (const auto& s : samples)
      service.push_back(profile_prefill_seconds(p, c, s.input));
    k.service = 0;
    for (double v : service)
      k.service += v / static_cast<double>(service.size());
    // The alone-on-the-worker TTFT at the percentile: no worker count goes below it.
    double floor_ttft = mg1_response_quantile(service, 0, q);
    best_service = std::min(best_service, floor_ttft);
    if (floor_ttft >= r.slo.ttft_s) continue;
    for (uint32_t n = 1; n <= r.max_workers; ++n) {
      double rho = r.load.rate * k.service / n;
      if (rho >= 1) continue;
      double t = mg1_response_quantile(service, rho, q);
      if (t <= r.slo.ttft_s) {
        k.workers = n;
        k.rho = rho;
        k.ttft = t;
        // The wait alone at the percentile (what the service adds on top).
        double s2 = 0;
        for (double v : service)
          s2 += v * v / static_cast<double>(service.size());
        double m = k.service > 0 ? s2 / (2 * k.service * (1 - rho)) : 0;
        k.wait = rho > 1 - q && m > 0 ? m * std::log(rho / (1 - q)) : 0;
        k.mean_wait = rho * m;
        break;
      }
    }
    if (k.workers) ok.push_back(k);
  }
  candidate chosen;
  if (!ok.empty()) {
    uint32_t fewest = r.max_workers;
    for (const auto& k : ok)
      fewest = std::min(fewest, k.workers);
    double best_ttft = inf;
    for (const auto& k : ok)
      if (k.workers == fewest) best_ttft = std::min(best_ttft, k.ttft);
    // Among the chunks as good as the best (within 5% of its TTFT), the one nearest the
    // saturation point: smaller calls waste the engine's throughput when prompts queue,
    // bigger ones only make other prompts wait behind them.
    for (const auto& k : ok) {
      if (k.workers != fewest || k.ttft > 1.05 * best_ttft) continue;
      auto dist = [&](uint32_t c) {
        return std::abs(std::log2(static_cast<double>(c) / std::max(1u, p.saturation_chunk)));
      };
      if (chosen.chunk == 0 || dist(k.chunk) < dist(chosen.chunk)) chosen = k;
    }
  }
  auto& pf = plan.prefill;
  const uint32_t prefill_cap = static_cast<uint32_t>(std::min<uint64_t>(
      p.kv_max_blocks ? p.kv_max_blocks / r.workers_per_host : uint64_t{1} << 24, 1u << 24));

  // ---- local prefill: the longest prompt whose one-call prefill fits beside the step.
  double margin = r.slo.itl_s - d.itl_p_s;
  const auto chunks = profile_chunks(p);
  const uint32_t bt = p.layout.block_tokens;
  uint32_t threshold = 0;
  for (uint32_t l = bt; l <= chunks.back(); l += bt)
    if (profile_prefill_seconds(p, l, l) <= margin) threshold = l;
  std::vector<double> local_service;
  double local_s = 0;
  for (const auto& s : samples) {
    local_service.push_back(profile_prefill_seconds(p, std::max(s.input, 1u), s.input));
    local_s += local_service.back() / static_cast<double>(samples.size());
  }
  double local_q_s = 0;
  {
    auto sorted = local_service;
    std::sort(sorted.begin(), sorted.end());
    size_t i = static_cast<size_t>(std::ceil(q * static_cast<double>(sorted.size()))) - 1;
    local_q_s = sorted[std::min(i, sorted.size() - 1)];
  }
  // A plan that prefills on the decode workers, when the prompts are short enough.
  bool local_ok = false;
  uint32_t local_workers = 0;
  decode_eval le;
  double local_ttft_p = 0, local_ttft_mean = 0, local_wait = 0;
  if (threshold > 0 && st.max_input < threshold) {
    decode_inputs li = di;
    li.local_s = local_s;
    li.local_q_s = local_q_s;
    for (uint32_t n = 1; n <= r.max_workers; ++n) {
      li.rate = r.load.rate / n;
      le = eval_decode(li);
      if (!le.ok) continue;
      // The prompt waits for the step under way and for the local prefills queued before it
      // (an M/D/1 queue of the worker's prefill share), then its own prefill.
      local_ttft_p = mg1_response_quantile(local_service, le.share, q, le.itl_p);
      local_wait = local_ttft_p - le.itl_p - local_q_s;
      if (local_ttft_p > r.slo.ttft_s) continue;
      double s2 = 0;
      for (double v : local_service)
        s2 += v * v / static_cast<double>(local_service.size());
      local_ttft_mean = le.share * s2 / (2 * local_s * (1 - le.share)) + le.itl_mean / 2 + local_s;
      local_workers = n;
      local_ok = true;
      break;
    }
  }
  const uint32_t remote_total = chosen.workers ? chosen.workers + decode_workers : 0;
  if (local_ok && (remote_total == 0 || local_workers <= remote_total)) {
    plan.local = true;
    plan.local_prefill_threshold = threshold;
    set_decode(local_workers, le, r.load.rate / local_workers);
    pf.workers = 0;
    pf.chunk = threshold;
    pf.service_s = local_s;
    pf.utilization = le.share;
    pf.wait_p_s = local_wait;
    pf.ttft_p_s = local_ttft_p;
    pf.ttft_mean_s = local_ttft_mean;
    plan.reasons.push_back(fmt::format(
        "prompts of {} tokens are below the local-prefill threshold of {} tokens (a one-call "
        "prefill of {} tokens, {:.2f} ms, fits in the ITL SLO beside a decode step): they are "
        "prefilled on the decode workers, which spend {:.0f}% of their time on it",
        samples.size() > 1 ? fmt::format("up to {}", st.max_input) : std::to_string(st.max_input),
        threshold, threshold, profile_prefill_seconds(p, threshold, threshold) * 1e3,
        100 * le.share));
  } else if (chosen.workers) {
    plan.local_prefill_threshold = std::min(threshold, st.min_input);
    pf.workers = chosen.workers;
    pf.chunk = chosen.chunk;
    pf.service_s = chosen.service;
    pf.utilization = chosen.rho;
    pf.wait_p_s = chosen.wait;
    pf.ttft_p_s = chosen.ttft;
    pf.ttft_mean_s = chosen.mean_wait + chosen.service;
    const auto mean_in = std::max<uint32_t>(1, static_cast<uint32_t>(std::lround(st.mean_input)));
    pf.max_seqs = std::clamp<uint32_t>((chosen.chunk + mean_in - 1) / mean_in, 1, 64);
    pf.kv_blocks =
        std::min(prefill_cap, std::max({64u, 4 * pf.max_seqs * p.layout.blocks_for(mean_in),
                                        2 * p.layout.blocks_for(st.max_input)}));
    plan.reasons.push_back(fmt::format(
        "prefill: chunk {} tokens (the engine reaches {:.0f}% of its peak {:.0f} tokens/s from "
        "{} tokens per call); {} prompt takes {:.2f} ms; {} worker(s) at {:.0f}% "
        "utilisation wait {:.2f} ms at p{}",
        chosen.chunk, 100 * p.saturation_fraction, p.peak_prefill_tokens_per_s, p.saturation_chunk,
        samples.size() > 1 ? fmt::format("the mean ({:.0f}-token)", st.mean_input)
                           : fmt::format("one {}-token", st.max_input),
        chosen.service * 1e3, chosen.workers, 100 * chosen.rho, chosen.wait * 1e3, pct));
    if (threshold > 0)
      plan.reasons.push_back(fmt::format(
          "local prefill below {} tokens: a one-call prefill of that many fits in the ITL "
          "margin of {:.2f} ms beside a decode step{}",
          plan.local_prefill_threshold, margin * 1e3,
          plan.local_prefill_threshold < threshold
              ? fmt::format(" (up to {}; capped at the workload's prompt length so its prompts "
                            "stay on the prefill workers)",
                            threshold)
              : ""));
  } else {
    plan.unreachable = true;
    plan.decode_needed = decode_workers;
    if (best_service >= r.slo.ttft_s)
      return refuse(fmt::format(
          "no number of prefill workers meets TTFT p{} {:.0f} ms: prefilling {} takes {:.2f} ms "
          "at the best measured chunk size",
          pct, r.slo.ttft_s * 1e3,
          samples.size() > 1 ? fmt::format("the workload's p{} prompt", pct)
                             : fmt::format("one {}-token prompt", st.max_input),
          best_service * 1e3));
    return refuse(fmt::format("no count up to {} prefill workers meets TTFT p{} {:.0f} ms",
                              r.max_workers, pct, r.slo.ttft_s * 1e3));
  }
  plan.reasons.push_back(fmt::format(
      "decode: max_batch {} (ITL allows {}, KV blocks {} of {} per sequence allow {}); {} "
      "worker(s) at a mean batch {:.1f} (p{} {:.1f}), step {:.2f} ms at batch 1",
      d.max_batch, d.itl_batch_bound, d.kv_blocks, per_seq, d.kv_batch_bound, d.workers,
      d.mean_batch, pct, d.batch_p, d.step_batch1_s * 1e3));

  plan.prefill_needed = pf.workers;
  plan.decode_needed = d.workers;
  uint64_t slots = uint64_t{r.hosts} * r.workers_per_host;
  uint32_t needed = pf.workers + d.workers;
  if (needed > slots) {
    uint32_t hosts = (needed + r.workers_per_host - 1) / r.workers_per_host;
    return refuse(fmt::format(
        "the SLO takes {} prefill + {} decode = {} workers, but {} host(s) x {} worker(s) give "
        "{}: it needs {} host(s) at {} worker(s) each",
        pf.workers, d.workers, needed, r.hosts, r.workers_per_host, slots, hosts,
        r.workers_per_host));
  }
  plan.feasible = true;
  return plan;
}

std::string render_manifest(const engine_profile& p, const cluster_plan& plan,
                            const plan_placement& where) {
  std::string y;
  std::string header = where.header;
  size_t start = 0;
  while (start < header.size()) {
    size_t nl = header.find('\n', start);
    if (nl == std::string::npos) nl = header.size();
    y += fmt::format("# {}\n", header.substr(start, nl - start));
    start = nl + 1;
  }
  y += fmt::format("cluster: {}\n", where.cluster);
  if (p.engine == "sim") {
    const auto& s = p.sim;
    y += fmt::format(
        "model:\n  sim: {{vocab: {}, max_context: {}, prefill_us_per_token: {}, "
        "prefill_base_us: {}, decode_step_ms: {}, decode_per_seq_us: {}, decode_per_ctx_ns: {}, "
        "slowdown: {}, seed: {}}}\n",
        s.vocab_size, s.max_context, s.prefill_ns_per_token / 1e3, s.prefill_base_ns / 1e3,
        s.decode_base_ns / 1e6, s.decode_per_seq_ns / 1e3, s.decode_per_ctx_token_ns, s.slowdown,
        s.seed);
    y += fmt::format("kv_layout: {{layers: {}, kv_heads: {}, head_dim: {}, dtype_bytes: {}}}\n",
                     p.layout.layers, p.layout.kv_heads, p.layout.head_dim, p.layout.dtype_bytes);
  } else {
    std::string quoted;
    for (char c : p.model_path) {
      if (c == '"' || c == '\\') quoted += '\\';
      quoted += c;
    }
    y += fmt::format("model:\n  path: \"{}\"\n", quoted);
  }
  y += fmt::format("defaults: {{engine: {}, block_tokens: {}, kv_transport: ucx}}\n", p.engine,
                   p.layout.block_tokens);
  y += fmt::format("frontend: {{node: head, rpc_port: {}, http_port: {}}}\n", where.rpc_port,
                   where.http_port);
  y += fmt::format("router: {{local_prefill_threshold: {}}}\n", plan.local_prefill_threshold);
  // Hosts other than this one: the manifest must authenticate and encrypt between nodes
  // (launch creates the certificates of tls: auto).
  if (std::any_of(where.hosts.begin(), where.hosts.end(), [](const std::string& h) {
        return h != "localhost" && h != "::1" && h.rfind("127.", 0) != 0;
      }))
    y += "security: {tls: auto}\n";
  y += "nodes:\n";
  uint32_t index = 0;
  auto node = [&](const std::string& name, const std::string& address, const std::string& actors) {
    y += fmt::format("  - name: {}\n    address: {}\n", name, address);
    if (where.base_port) y += fmt::format("    port: {}\n", where.base_port + index);
    y += fmt::format("    actors: {}\n", actors);
    ++index;
  };
  const size_t hosts = std::max<size_t>(1, where.hosts.size());
  auto host = [&](size_t i) {
    return where.hosts.empty() ? std::string("127.0.0.1") : where.hosts[i];
  };
  node("head", host(0), "[router, supervisor, kv_store]");
  std::vector<uint32_t> on_host(hosts, 0);
  uint32_t worker = 0;
  auto place = [&](const std::string& name, const std::string& role, const std::string& opts) {
    size_t h = worker++ % hosts;
    std::string device = p.engine == "cuda" ? fmt::format(", device: {}", on_host[h]) : "";
    ++on_host[h];
    node(name, host(h),
         fmt::format("[{{{}: {{threads: {}{}, {}}}}}]", role, p.threads, device, opts));
  };
  const auto& pf = plan.prefill;
  const auto& d = plan.decode;
  for (uint32_t i = 0; i < pf.workers; ++i)
    place(
        fmt::format("p{}", i), "prefill",
        fmt::format("kv_blocks: {}, chunk: {}, max_seqs: {}", pf.kv_blocks, pf.chunk, pf.max_seqs));
  const uint32_t local_budget =
      std::max(1u, plan.local_prefill_threshold ? plan.local_prefill_threshold : pf.chunk);
  for (uint32_t i = 0; i < d.workers; ++i)
    place(fmt::format("d{}", i), "decode",
          fmt::format("kv_blocks: {}, max_batch: {}, local_prefill_budget: {}", d.kv_blocks,
                      d.max_batch, local_budget));
  return y;
}

}  // namespace tokenmill
