#pragma once
/// The queueing model behind `tokenmill plan`: from an engine profile, SLOs, a workload and
/// the hosts available, how many prefill and decode workers, their chunk size and batch
/// limit, and the router's local-prefill threshold. CAF-free; pure functions.
///
/// The model (its assumptions are printed by `tokenmill plan` too):
/// - Requests arrive as a Poisson stream of `rate` per second, no prefix-cache hits; the
///   router spreads them evenly over the workers of a role. Their lengths are the
///   workload's samples, drawn with equal probability (a single sample: fixed lengths).
/// - A prefill worker serves one prompt at a time in chunks of `chunk` tokens: service time
///   S_i = profiled prefill time of sample i's prompt at that chunk. Each worker is an M/G/1
///   queue at rate/P, utilisation rho = (rate/P) E[S]. Its waiting time is approximated by
///   the heavy-traffic exponential tail P(W > t) = rho * exp(-t / m) with
///   m = E[S^2] / (2 E[S] (1 - rho)), whose mean rho * m is the Pollaczek-Khinchine mean
///   wait (fixed lengths: the M/D/1 case, m = S / (2 (1 - rho))). TTFT at q is the q-quantile
///   of W + S over the samples (the prefill worker samples the first token). KV transfer,
///   routing and network time are not modelled.
/// - A decode worker holds a sequence for output - 1 steps. Its mean batch n solves
///   Little's law n = (rate / D) * E[output - 1] * step(n) at the mean context a step
///   sees (each sample's input + output / 2, weighted by its steps); the batch at
///   percentile q is n + z_q sqrt(n) (Poisson occupancy, normal approximation), and ITL at
///   q is the profiled step time at that batch. max_batch is the largest profiled batch
///   whose step meets the ITL SLO, bounded by the KV blocks a worker has for sequences of
///   the step-weighted mean length (the longest sample must fit on its own).
/// - Local prefill: a prompt prefilled on a decode worker delays one decode step by its
///   prefill time, so the threshold is the longest prompt whose one-call prefill fits in the
///   ITL SLO beside the step at the percentile batch. When every prompt of the workload is
///   below it and prefilling locally takes fewer workers in all, the plan has no prefill
///   workers and counts the prefill time as decode-worker load.
#include <cstdint>
#include <string>
#include <vector>

#include "cluster/engine_profile.hpp"
#include "common/result.hpp"

namespace tokenmill {

struct plan_slo {
  double ttft_s = 0;        ///< time to first token at `percentile`, seconds
  double itl_s = 0;         ///< inter-token latency at `percentile`, seconds
  double percentile = 0.9;  ///< in (0, 1)
};

/// One request's lengths.
struct length_sample {
  uint32_t input = 0;
  uint32_t output = 0;
};

struct plan_workload {
  double rate = 0;  ///< requests per second
  /// Fixed lengths, used when `samples` is empty.
  uint32_t input_tokens = 0;
  uint32_t output_tokens = 0;
  /// A length distribution (e.g. drawn from a ShareGPT file), each sample equally likely.
  std::vector<length_sample> samples;
};

/// The workload's samples: `samples`, or the one fixed-length sample.
std::vector<length_sample> workload_samples(const plan_workload& w);

/// Summary of a length distribution.
struct length_stats {
  double mean_input = 0, mean_output = 0;
  uint32_t min_input = 0, max_input = 0;
  uint32_t p50_input = 0, p90_input = 0, p50_output = 0, p90_output = 0, max_output = 0;
};
length_stats summarize(const std::vector<length_sample>& samples);

struct plan_request {
  plan_slo slo;
  plan_workload load;
  uint32_t hosts = 1;             ///< hosts available
  uint32_t workers_per_host = 1;  ///< engine workers one host can run
  /// KV blocks per decode worker; 0 = the profile's memory divided among a host's workers.
  uint32_t decode_kv_blocks = 0;
  uint32_t max_workers = 4096;  ///< search bound per role
};

/// Success when every field makes sense for the profile, else errc::invalid_request naming
/// the field by its `tokenmill plan` option ("--ttft-ms: must be positive, got 0").
result<void> check_plan_request(const plan_request& r, const engine_profile& p);

struct prefill_estimate {
  uint32_t workers = 0;    ///< 0: prompts are prefilled on the decode workers
  uint32_t chunk = 0;      ///< tokens per engine call (token_budget)
  uint32_t max_seqs = 1;   ///< prompts per engine call
  uint32_t kv_blocks = 0;  ///< per prefill worker
  double service_s = 0;    ///< prefill time of one prompt
  double utilization = 0;  ///< per worker
  double wait_p_s = 0;     ///< queueing at the percentile
  double ttft_mean_s = 0;
  double ttft_p_s = 0;
};

struct decode_estimate {
  uint32_t workers = 0;
  uint32_t max_batch = 0;
  uint32_t kv_blocks = 0;        ///< per decode worker
  uint32_t kv_batch_bound = 0;   ///< sequences the KV blocks hold
  uint32_t itl_batch_bound = 0;  ///< largest profiled batch whose step meets the ITL SLO
  double mean_batch = 0;
  double batch_p = 0;
  double context = 0;  ///< mean context of a sequence in the batch
  double step_batch1_s = 0;
  double itl_mean_s = 0;
  double itl_p_s = 0;
  double prefill_share = 0;  ///< time spent on local prefills (local plans)
  double tokens_per_s = 0;   ///< output tokens per second per worker at the mean batch
};

struct cluster_plan {
  bool feasible = false;
  /// Why not (when !feasible): what fails, and the workers it would take.
  std::string refusal;
  /// Workers each role would need (0 with `unreachable`: no count can meet the SLO).
  uint32_t prefill_needed = 0;
  uint32_t decode_needed = 0;
  bool unreachable = false;
  prefill_estimate prefill;
  decode_estimate decode;
  uint32_t local_prefill_threshold = 0;  ///< tokens; 0 = always remote
  bool local = false;                    ///< prompts are prefilled on decode workers
  uint32_t saturation_chunk = 0;
  /// One line each: what the plan chose and why.
  std::vector<std::string> reasons;
};

/// The plan, or the refusal (feasible = false) with the counts it would take. Call
/// check_plan_request first; this assumes a valid request.
cluster_plan make_plan(const engine_profile& p, const plan_request& r);

/// Where the planned workers go and what the manifest calls things.
struct plan_placement {
  std::vector<std::string> hosts;  ///< addresses; the first also runs router and supervisor
  uint32_t workers_per_host = 1;
  std::string cluster = "planned";
  uint16_t rpc_port = 7700;   ///< frontend.rpc_port
  uint16_t http_port = 8000;  ///< frontend.http_port
  uint16_t base_port = 0;     ///< node control ports base + index; 0: the manifest's default
  std::string header;         ///< comment lines put at the top (without '#')
};

/// The host manifest of a feasible plan: a head node (router, supervisor, kv_store) on the
/// first host and one node per worker, spread round-robin over the hosts (cuda workers get
/// the host's next device). The model is the profile's sim timing model and KV layout, or
/// its model file.
std::string render_manifest(const engine_profile& p, const cluster_plan& plan,
                            const plan_placement& where);

/// The standard normal quantile (z_q), q in (0, 1).
double normal_quantile(double q);

/// M/D/1 waiting time at percentile `q` under the exponential-tail approximation above.
double md1_wait(double service_s, double utilization, double q);

/// The q-quantile of W + S_i + extra_s, where S_i is one of `service_s` (equally likely) and
/// W the M/G/1 wait with P(W > t) = rho * exp(-t / m), m = E[S^2] / (2 E[S] (1 - rho)).
/// +infinity when rho >= 1; with one service time and extra 0 it is md1_wait + S.
double mg1_response_quantile(const std::vector<double>& service_s, double utilization, double q,
                             double extra_s = 0);

}  // namespace tokenmill
