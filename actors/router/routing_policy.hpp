#pragma once
/// The router's decisions, free of CAF (STYLE.md §2): admission, choice of decode and
/// prefill worker, and conditional disaggregation.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "common/ids.hpp"

namespace tokenmill {

/// Bounds that keep the router from queueing without limit (DESIGN.md §9).
struct admission_limits {
  uint32_t max_inflight = 1024;                 ///< requests admitted and not finished
  uint64_t max_queued_prompt_tokens = 1 << 22;  ///< prompt tokens not yet prefilled
};

enum class admission { accept, overloaded };

/// Admit a request with `prompt_tokens` given the router's current load.
admission admit(uint32_t inflight, uint64_t queued_prompt_tokens, uint32_t prompt_tokens,
                const admission_limits& limits);

/// How fast one worker's engine prefills, for the cost model. From its engine profile
/// (`tokenmill profile`): `points` samples the seconds to prefill a prompt of n tokens
/// from position 0 (so the cost of attention over a longer context shows), and
/// `tokens_per_s` is the engine's peak prefill throughput. Without a profile `points` is
/// empty and `tokens_per_s` is the configured rate (router.prefill_tokens_per_s).
struct prefill_speed {
  /// (prompt tokens, seconds), tokens strictly ascending, seconds non-decreasing. The first
  /// point need not be (0, 0): below it the time is proportional to the first point.
  std::vector<std::pair<uint32_t, double>> points;
  double tokens_per_s = 4000;   ///< throughput for queued work (and for all work without points)
  std::string source = "rate";  ///< where it came from ("rate" or the profile file), for traces
};

/// Seconds to prefill tokens [cached, prompt) of a prompt on an engine of speed `s`: the
/// profile's time for `prompt` tokens minus its time for `cached` (linear between points,
/// extrapolated by the last segment past the last point), or (prompt - cached) /
/// tokens_per_s without points. 0 when cached >= prompt.
double uncached_prefill_seconds(const prefill_speed& s, uint32_t prompt, uint32_t cached);

/// The cost model's weights (manifest `router: {...}`). Every term is an estimate in
/// seconds of what a plan adds to this request's time to first token (prefill, queue,
/// transfer) or to the cluster's load; the weights scale them (0 turns a term off).
struct routing_weights {
  double prefill = 1.0;  ///< × seconds to compute the uncached tokens
  double queue = 1.0;    ///< × seconds of prompt work queued in front of the request
  /// × seconds to move the KV the plan moves to the decode worker, and to onboard the
  /// blocks a worker holds only in its second tier (copy them back into its pool)
  double transfer = 1.0;
  double load = 1.0;  ///< × the load term (active decode requests × load_s_per_request)
};

/// Everything the cost model needs besides the candidates.
struct cost_model {
  routing_weights weights;
  /// Bytes of one KV block (all layers); 0: unknown, the transfer term is 0.
  uint64_t kv_bytes_per_block = 0;
  double kv_bytes_per_s = 5e9;             ///< KV transfer bandwidth for the transfer term
  double load_s_per_request = 0.01;        ///< load term per request active on a decode worker, s
  double host_onboard_bytes_per_s = 10e9;  ///< copy rate from a host tier into a pool
  double disk_onboard_bytes_per_s = 2e9;   ///< copy rate from a disk tier into a pool
};

/// What fetching costs besides the bytes (manifest `router: {...}`; fetch_policy.hpp plans
/// a fetch, plan_route counts one as reuse).
struct fetch_settings {
  bool enabled = true;  ///< false: never fetch (every uncached token is computed)
  /// Fixed cost of one fetch, seconds: the request to the source, its pinning and the
  /// reply (a round trip on the control plane), so a fetch of a block or two is not
  /// planned when the transfer would barely beat computing it.
  double overhead_s = 0.0005;
  /// Fewest blocks worth a fetch (at least 1).
  uint32_t min_blocks = 1;
};

/// A run of prompt positions [begin, end): one segment of a prompt given as segments.
struct token_range {
  uint32_t begin = 0, end = 0;
  friend bool operator==(const token_range&, const token_range&) = default;
};

/// A worker as the router sees it when routing one request.
struct route_candidate {
  worker_id id = 0;
  uint32_t overlap_blocks = 0;  ///< leading blocks of this prompt it holds (kv-store)
  /// Prompt tokens queued at it and not yet prefilled (prefill worker: remote jobs;
  /// decode worker: its local prefills).
  uint64_t queued_tokens = 0;
  uint32_t active = 0;    ///< decode worker: requests assigned and not finished
  bool draining = false;  ///< changing role or draining: gets no new request
  /// Its engine's speed; nullptr: the default (configured rate).
  const prefill_speed* speed = nullptr;
  /// Of overlap_blocks, those only in its second tier: reused by onboarding (a copy at
  /// cost_model's onboard rates), not by pinning.
  uint32_t host_blocks = 0, disk_blocks = 0;
  /// Chunk reuse (issue 17): the segments of a segmented prompt whose chunk KV it holds
  /// whole in its pool (the kv-store's chunk lookup), in prompt order. Only a worker whose
  /// engine blends caches chunks, so for every other worker this stays empty.
  std::vector<token_range> chunk_hits{};
};

/// One candidate's score: the terms (seconds, unweighted) and the weighted total of the
/// best plan that uses it. For a decode worker that plan is either local prefill or a
/// remote one with the best prefill worker (whose total is then included).
struct candidate_score {
  worker_id id = 0;
  bool prefill_worker = false;  ///< a prefill worker (else a decode worker)
  bool eligible = true;         ///< false: draining, not scored
  bool local = false;           ///< decode worker: its plan prefills locally
  uint32_t cached_tokens = 0;   ///< prompt tokens it would reuse from its cache
  /// Chunk reuse (issue 17), when it computes the prompt: tokens of the segments it would
  /// take from its chunk cache (those past the prefix it reuses or fetches), and of those
  /// the ones not computed again (chunk_credit_tokens: the rest is recomputed).
  uint32_t chunk_tokens = 0, chunk_saved_tokens = 0;
  double prefill_s = 0, queue_s = 0, transfer_s = 0, load_s = 0;
  double onboard_s = 0;  ///< copying its reused second-tier blocks back (weight: transfer)
  double total = 0;      ///< weighted sum (decode, remote plan: + the chosen prefill worker's)
  /// Fetch instead of recompute, counted as reuse (plan_route with fetch settings): the
  /// worker that computes the prompt (this prefill worker, or this decode worker when
  /// `local`) pulls blocks [fetch_first, fetch_end) from candidate `fetch_source` (an index
  /// into the decode candidates followed by the prefill ones); prefill_s is then the time
  /// of the rest and fetch_s (weight: transfer) the estimated fetch.
  std::optional<size_t> fetch_source;
  uint32_t fetch_first = 0, fetch_end = 0;
  double fetch_s = 0;
  double fetch_saved_s = 0;  ///< the prefill time the fetched blocks save
};

/// The cost model's decision: the decode worker and, unless it prefills locally, the
/// prefill worker (indices into the candidate lists), and every candidate's score in the
/// order given.
struct route_plan {
  std::optional<size_t> decode;   ///< none: no decode worker takes new requests
  std::optional<size_t> prefill;  ///< none with a decode worker: prefill locally
  double cost = 0;                ///< the chosen plan's total
  std::vector<candidate_score> decode_scores, prefill_scores;
};

/// Seconds to onboard the reused second-tier blocks of a candidate reusing `reused` leading
/// blocks: its host blocks first, then disk ones, each at its rate (an estimate: the kv-store
/// says how many, not where in the run they are). 0 without tiered blocks or block size.
double onboard_seconds(const route_candidate& c, uint32_t reused, const cost_model& model);

/// Prompt tokens a worker whose exact prefix (prefix cache, or fetched) covers
/// [0, `prefix`) takes from its chunk cache: the whole of every held segment that starts at
/// or past `prefix`. A segment the prefix cuts is computed, not looked up
/// (plan_chunk_prefill in engine/chunk_prefill.hpp), so no token counts as both a prefix and
/// a chunk hit.
uint32_t chunk_hit_tokens(std::span<const token_range> hits, uint32_t prefix);

/// Of `hit_tokens` chunk-hit tokens blended at `recompute_ratio` (clamped to [0, 1]), the
/// ones not computed: hit_tokens − round(ratio × hit_tokens), i.e. hit_tokens × (1 − ratio).
/// A blend recomputes recompute_budget (engine/blend.hpp) = round(ratio × the reused
/// tokens) in every layer, so that share costs as much as computing it. What the blend spends
/// besides (the KV moves, and in (0, 1) the one full-width selection layer out of the model's L,
/// about 1/L of a prefill of the reused tokens) is left out: the router knows no layer count, the
/// move is a copy, and a chunk hit must not look worse than it is next to a partial prefix hit.
/// Ratio 1 recomputes everything: no credit.
uint32_t chunk_credit_tokens(uint32_t hit_tokens, float recompute_ratio);

/// Scores every candidate and picks the cheapest plan. A prefill worker costs its
/// uncached prefill time, its onboarding, plus its queue; a decode worker costs its load,
/// its onboarding, plus either its
/// own local prefill (uncached time + its queue of local prefills, when prefill_locally
/// allows it with `local_prefill_threshold`) or the KV moved to it (prompt blocks it does not hold)
/// plus the cheapest prefill worker. Ties go to the larger overlap, then the lower id. Draining
/// workers are scored as not eligible and never chosen.
/// With `fetch` (enabled), a possible fetch counts as reuse: a worker that would compute the
/// prompt (every prefill worker; a decode worker for its local plan) gets the best fetch
/// plan_fetch (fetch_policy.hpp) finds among all other candidates, and its uncached part is
/// then the fetch's time (weight: transfer) plus the prefill of the rest, whenever that is
/// cheaper; for local prefill's threshold the fetched tokens count as cached.
/// Chunk reuse (issue 17): a worker that would compute the prompt also reuses its
/// `chunk_hits` past the prefix it reuses (or fetches): chunk_credit_tokens of them at
/// `recompute_ratio` (the one that will apply) count as cached in its prefill time, in local
/// prefill's threshold and in computed_tokens; a fetch is then kept only when it still beats
/// computing. Ratio 1 (the default) gives chunk hits no credit.
route_plan plan_route(std::span<const route_candidate> decodes,
                      std::span<const route_candidate> prefills, uint32_t prompt_tokens,
                      uint32_t block_tokens, uint32_t local_prefill_threshold,
                      const cost_model& model, const fetch_settings* fetch = nullptr,
                      float recompute_ratio = 1.0f);

/// Prompt tokens the worker that computes the prompt under `plan` will prefill: the chosen
/// prefill worker, or the decode worker for a local prefill. The prompt less what that
/// worker reuses from its own cache (cached_tokens) or fetches from a peer (up to
/// fetch_end), less the chunk-hit tokens it does not recompute (chunk_saved_tokens): what
/// the router's backlog (prefill_backlog.hpp) counts as queued at it, so that a worker
/// serving cached or fetched prefixes or cached chunks does not look busier than it is.
/// 0 when the plan has no decode worker.
uint32_t computed_tokens(const route_plan& plan, uint32_t prompt_tokens, uint32_t block_tokens);

/// Conditional disaggregation: prefill on the decode worker itself when the uncached part
/// of the prompt is shorter than `threshold` tokens (0 disables local prefill), or when
/// there is no prefill worker at all (`any_prefill_worker`: one that is not draining).
bool prefill_locally(uint32_t prompt_tokens, uint32_t cached_tokens, uint32_t threshold,
                     bool any_prefill_worker);

/// Whether the kv-store's prefix overlap can change where a request goes, so that asking
/// it is worth the wait: a kv-store is known, the prompt has a full block, and there is a
/// choice to make (several decode or prefill workers, or local prefill allowed beside
/// prefill workers). The counts are of workers that take new requests (not draining).
bool overlap_matters(bool kv_store_known, uint32_t prompt_tokens, uint32_t block_tokens,
                     size_t decode_workers, size_t prefill_workers,
                     uint32_t local_prefill_threshold);

}  // namespace tokenmill
