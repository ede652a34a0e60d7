#pragma once
/// Plain data shared by the actors, the RPC codec and the client library. No CAF here:
/// actors/protocol.hpp adds the inspectors.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/errors.hpp"
#include "common/ids.hpp"
#include "common/trace.hpp"

namespace tokenmill {

/// A bias added to one token's logit before sampling (OpenAI `logit_bias`).
struct logit_bias_entry {
  token_id token = 0;
  float bias = 0;  ///< added to the raw logit; OpenAI's range is [-100, 100]
};

/// What constrains a request's output (grammar/grammar.hpp compiles it).
enum class grammar_kind : uint8_t {
  none,         ///< unconstrained
  regex,        ///< grammar_source is a regular expression the whole output matches
  json_schema,  ///< grammar_source is a JSON Schema (subset) the output is valid under
  json_object,  ///< any JSON object; grammar_source is empty
};
constexpr std::string_view to_string(grammar_kind k) {
  switch (k) {
    case grammar_kind::none:
      return "none";
    case grammar_kind::regex:
      return "regex";
    case grammar_kind::json_schema:
      return "json_schema";
    case grammar_kind::json_object:
      return "json_object";
  }
  return "none";
}

/// Sampling options, passed through to the engine.
struct sampling_params {
  float temperature = 0;  ///< 0 = greedy
  float top_p = 1;        ///< nucleus mass in (0, 1]
  uint32_t top_k = 0;     ///< keep the k most likely tokens; 0 = all
  float min_p = 0;        ///< drop tokens below min_p x the top probability; 0 = off
  uint64_t seed = 0;      ///< makes sampling with temperature > 0 reproducible
  /// Subtracted once from the logit of every token the sequence has generated (OpenAI, in
  /// [-2, 2]; 0 = off).
  float presence_penalty = 0;
  /// Subtracted from a token's logit once per time the sequence generated it ([-2, 2]).
  float frequency_penalty = 0;
  /// vLLM's multiplicative penalty for tokens of the prompt or the output: a positive logit
  /// is divided by it, a negative one multiplied (> 0; 1 = off).
  float repetition_penalty = 1;
  std::vector<logit_bias_entry> logit_bias;  ///< added to the raw logits; empty = none
  /// Log-probabilities to report per generated token: -1 none, 0 only the chosen token's,
  /// N the chosen token's and the N most likely tokens' (computed from the raw logits).
  int32_t top_logprobs = -1;
  // Constrained decoding: the output must match this grammar. The decode worker compiles
  // it (cached by source) and keeps each sequence's automaton state beside the sequence.
  grammar_kind grammar = grammar_kind::none;
  std::string grammar_source;  ///< the regex or schema text; empty for none/json_object
  /// How many of the prompt's last tokens are output of an earlier attempt of the request
  /// (a migrated request re-prefilled with the tokens it had produced): penalties count
  /// them as generated, so the resumed request samples what the first attempt would have,
  /// and a grammar constrains the output from before them (workers replay them).
  uint32_t resumed = 0;
};

/// One candidate at a generated position: a token and its log-probability (natural log).
struct top_logprob {
  token_id token = 0;
  float logprob = 0;
};

/// The log-probabilities of one generated token, from the raw logits (see engine/sampler.hpp).
struct token_logprobs {
  float logprob = 0;             ///< of the chosen token
  std::vector<top_logprob> top;  ///< the sampling's top_logprobs most likely tokens, best first
};

/// What the client asked for, validated by the frontend.
struct request_options {
  uint32_t max_tokens = 16;        ///< > 0
  std::vector<token_id> stop_ids;  ///< generation stops after producing one of these
  sampling_params sampling;        ///< passed through to the engine
  bool ignore_eos = false;         ///< keep generating past the model's EOS
  /// The prompt given as segments (chunk reuse, issue 17): the prompt position where each
  /// segment ends, ascending, the last one the prompt's length (a recompute migration may
  /// append output after it: that tail is one more segment). A worker whose engine blends
  /// reuses each segment's KV from its chunk cache wherever the segment sat before. Empty:
  /// the prompt is not segmented.
  std::vector<uint32_t> segment_ends;
  /// Share of the reused segments' tokens recomputed, in [0, 1]; < 0: the worker's default
  /// (`serve --recompute-ratio`).
  float recompute_ratio = -1;
};

/// One level of a worker's second KV tier (engine/kv_tier.hpp), since the worker started.
struct kv_tier_status {
  std::string tier;        ///< "host" or "disk"
  uint64_t hits = 0;       ///< blocks onboarded from it (copied back, not recomputed)
  uint64_t bytes_in = 0;   ///< bytes written into it
  uint64_t bytes_out = 0;  ///< bytes copied from it back into the pool
  uint64_t evictions = 0;  ///< blocks pushed out of it (host: to disk or dropped)
  uint32_t used = 0;       ///< blocks held now
  uint32_t capacity = 0;   ///< blocks it holds at most
};

/// A worker's fetches of KV blocks from peers (fetch instead of recompute,
/// actors/detail/kv_fetch.hpp) since it started: as the worker that pulls a prompt's prefix
/// from a peer's prefix cache, and as the source a peer pulls from.
struct kv_fetch_status {
  uint64_t started = 0;    ///< fetches asked of a source
  uint64_t completed = 0;  ///< answered and taken (the blocks written, possibly none)
  uint64_t failed = 0;     ///< given up (error, no reply, source lost): it computed the tokens
  uint64_t blocks = 0;     ///< blocks that arrived, checked and reused
  uint64_t bytes = 0;      ///< bytes of those blocks
  uint64_t missing = 0;    ///< blocks asked for and not written (evicted at the source)
  uint64_t time_ns = 0;    ///< from asking to the answer or giving up, over every fetch that ended
  uint64_t served = 0;     ///< fetches this worker served as the source (written and answered)
  uint64_t served_blocks = 0;   ///< blocks it wrote into peers' pools for them
  uint64_t served_bytes = 0;    ///< bytes of those blocks
  uint64_t serve_failures = 0;  ///< fetches it refused or whose write failed
};

/// One actor's live state, as `tokenmill status` shows it.
struct worker_status {
  worker_id id = 0;
  role kind = role::decode;
  std::string name;
  std::string node;
  bool up = true;
  uint32_t queued = 0;      ///< requests waiting (router: requests in flight)
  uint32_t running = 0;     ///< sequences in the running batch / jobs being computed
  uint32_t kv_used = 0;     ///< blocks
  uint32_t kv_total = 0;    ///< blocks
  uint64_t completed = 0;   ///< requests finished since start
  uint64_t tokens_out = 0;  ///< tokens generated (decode) or prompt tokens computed (prefill)
  uint64_t kv_bytes = 0;    ///< KV bytes sent (prefill) or received (decode) since start
  uint64_t prefix_hit_blocks = 0;     ///< prompt blocks found in the prefix cache
  uint64_t prefix_lookup_blocks = 0;  ///< prompt blocks looked up in the prefix cache
  /// Chunk reuse (issue 17): prompt tokens of segments looked up in the chunk cache, found
  /// there (their KV moved, not computed), and of those recomputed (selective recompute).
  uint64_t chunk_lookup_tokens = 0;
  uint64_t chunk_hit_tokens = 0;
  uint64_t chunk_recomputed_tokens = 0;
  std::string detail;                 ///< one line of free text (engine, transport, errors)
  std::vector<kv_tier_status> tiers;  ///< the second KV tier's levels; empty without one
  kv_fetch_status fetch;              ///< KV fetched from and served to peers (KV workers)
};

/// A node of a multi-node cluster, as the supervisor sees it.
struct node_status {
  std::string name;
  uint32_t index = 0;  ///< position in the manifest
  bool up = true;
  int64_t clock_offset_ns = 0;  ///< add to the node's stamps to land on the supervisor's clock
  int64_t clock_rtt_ns = -1;    ///< round trip of the best clock probe (-1: none yet)
  /// Joins after the node's first: each is a new process of the node (the launcher
  /// restarted it after it died).
  uint32_t restarts = 0;
};

/// One thing the planner or a role change did, for `tokenmill status` and the trace.
struct planner_event {
  int64_t t_ns = 0;  ///< when, on the supervisor's steady clock
  /// "flip" (the planner decided one), "drain" (a drain asked), "resume" (a drained worker
  /// asked back into service), "changed" (a worker
  /// finished its role change or drain), "failed" (it answered with an error or not in time)
  std::string kind;
  std::string worker;  ///< the worker's name
  role from = role::decode;
  role to = role::decode;
  int64_t took_ns = 0;  ///< "changed": from change_role to serving under `to`
  std::string why;      ///< the evidence, or the error
};

/// The planner and the role changes the supervisor carried out.
struct planner_status {
  bool enabled = false;               ///< the manifest has a planner section
  uint64_t decisions = 0;             ///< planner decisions made (flip or keep)
  uint64_t flips_to_prefill = 0;      ///< role changes completed decode -> prefill
  uint64_t flips_to_decode = 0;       ///< role changes completed prefill -> decode
  uint64_t changes_failed = 0;        ///< role changes or drains that failed or timed out
  uint64_t drains = 0;                ///< workers drained (drain_only changes completed)
  std::string last_decision;          ///< the planner's last decision, in words
  std::vector<planner_event> events;  ///< the most recent, oldest first
};

/// Every member's status, as the supervisor sees the cluster.
struct cluster_status {
  std::string cluster;
  bool ready = false;
  std::vector<worker_status> workers;
  std::vector<node_status> nodes;  ///< empty for a single-process cluster
  planner_status planner;
};

/// One worker's drain (or role change), as `tokenmill drain` reports it.
struct worker_drain {
  worker_id id = 0;
  role from = role::decode;
  role to = role::decode;  ///< equal to `from` for a drain
  bool drain_only = false;
  int64_t drain_ns = 0;   ///< from the order until it held nothing
  int64_t total_ns = 0;   ///< from the order until it reported
  uint32_t migrated = 0;  ///< decode sequences moved live to another worker
  uint32_t finished = 0;  ///< sequences or jobs it finished meanwhile
  error_info error;
};

/// The answer to a drain of node `node`: one entry per drained worker, or why it failed.
struct drain_summary {
  std::string node;
  std::vector<worker_drain> workers;
  error_info error;
};

/// One segment of a prompt given as segments (generate_params::segments): text, tokenized
/// alone (no BOS), or token ids.
struct prompt_segment {
  bool has_text = true;
  std::string text;                ///< when has_text
  std::vector<int64_t> token_ids;  ///< when !has_text; wide, as generate_params::token_ids
};

/// A generate call as the client sent it, before validation. Numbers are wide so that
/// out-of-range values can be reported exactly.
struct generate_params {
  bool has_text = true;
  std::string text;                ///< when has_text
  std::vector<int64_t> token_ids;  ///< when !has_text
  int64_t max_tokens = 16;
  /// Ignore max_tokens and generate up to the end of the context (OpenAI chat without
  /// max_tokens).
  bool max_tokens_to_context = false;
  std::vector<int64_t> stop_ids;
  std::vector<std::string> stop_strings;  ///< text that ends generation (not returned)
  /// Everything but logit_bias and top_logprobs, which come wide below.
  sampling_params sampling;
  /// logit_bias as sent: token ids wide, so that out-of-range ids can be reported exactly.
  std::vector<std::pair<int64_t, double>> logit_bias;
  int64_t top_logprobs = -1;  ///< as sent (-1 none, 0 only the chosen token, N <= 20)
  bool ignore_eos = false;
  bool add_bos = true;
  int64_t client_sent_ns = 0;
  /// Where sampling.grammar came from ("response_format", "tokenmill.regex", …): validate
  /// names it when the grammar is refused. Empty: "grammar".
  std::string grammar_field;
  /// A grammar kind the client named that is not one (RPC grammarKind): validate refuses it.
  std::string unknown_grammar_kind;
  /// The prompt as segments (chunk reuse, issue 17): when non-empty the prompt is BOS (for
  /// add_bos, as a segment of its own) followed by the segments' tokens, and text/token_ids
  /// are not used. validate() refuses empty segments, too many, ids outside the vocabulary.
  std::vector<prompt_segment> segments;
  /// Share of reused segment tokens to recompute, as sent; validate() wants [0, 1]. Absent:
  /// the worker's default.
  std::optional<double> recompute_ratio;
  /// Where the segments came from ("tokenmill.segments", "segments"): validate() names it.
  /// Empty: "segments".
  std::string segments_field;
};

/// One named interval of a TTFT breakdown, in milliseconds.
struct stage_ms {
  std::string name;
  double ms = 0;
};

/// Why a gap between two tokens of a request was long (an ITL spike), as the router
/// attributes it from the decode step that produced the later token.
enum class itl_cause : uint8_t {
  none,           ///< not a spike
  prefill,        ///< a local prefill ran in the same iteration (piggy-backed)
  batch_growth,   ///< the step's batch was larger than the previous step's
  transfer_wait,  ///< the decode worker sat between steps (receiving KV, admitting)
  network,        ///< the step was on time; the token was late reaching the router
  slow_step,      ///< the iteration itself took long (engine, CPU contention)
  other,          ///< no step information to explain it
  count_          ///< number of causes; not a cause
};
constexpr std::string_view to_string(itl_cause c) {
  switch (c) {
    case itl_cause::none:
      return "none";
    case itl_cause::prefill:
      return "prefill";
    case itl_cause::batch_growth:
      return "batch_growth";
    case itl_cause::transfer_wait:
      return "transfer_wait";
    case itl_cause::network:
      return "network";
    case itl_cause::slow_step:
      return "slow_step";
    case itl_cause::other:
      return "other";
    case itl_cause::count_:
      break;
  }
  return "unknown";
}

/// The decode step that produced one token of a request, on the router's clock.
struct step_record {
  uint32_t index = 0;                 ///< token index in the completion (0 = first token)
  int64_t released_ns = 0;            ///< the router released the token to the frontend
  int64_t step_start_ns = 0;          ///< the decode step started (0 for the first token)
  int64_t step_end_ns = 0;            ///< the decode step ended
  uint32_t batch = 0;                 ///< sequences in the step
  uint32_t prefill_tokens = 0;        ///< prompt tokens prefilled in the same iteration
  itl_cause cause = itl_cause::none;  ///< of the gap before this token
};

/// One candidate of a request's routing decision (the router's cost model,
/// actors/router/routing_policy.hpp): its terms in ms, unweighted, and the weighted total of
/// the best plan through it.
struct routing_score {
  std::string worker;          ///< worker name
  bool prefill = false;        ///< a prefill worker (else a decode worker)
  bool chosen = false;         ///< the decision uses it
  bool eligible = true;        ///< false: draining, not a candidate
  bool local = false;          ///< decode worker: its plan prefills locally
  uint32_t cached_tokens = 0;  ///< prompt tokens it would reuse from its prefix cache
  double prefill_ms = 0, queue_ms = 0, transfer_ms = 0, load_ms = 0;
  double total_ms = 0;  ///< weighted sum (decode, remote plan: + the best prefill worker)
};

/// The end of a generate call, as the client sees it.
struct generation_summary {
  request_id id = 0;
  finish_reason reason = finish_reason::none;
  errc error_code = errc::ok;
  std::string error;
  uint32_t prompt_tokens = 0;
  uint32_t completion_tokens = 0;
  double ttft_ms = 0;  ///< server side: arrived -> first token written to the client
  double itl_mean_ms = 0, itl_p50_ms = 0, itl_p99_ms = 0;  ///< measured at the router
  std::vector<stage_ms> stages;                            ///< server-side TTFT breakdown
  std::vector<hop> hops;                                   ///< every stamp of the request
  std::string prefill_worker;  ///< name of the worker that prefilled (empty: decode's own)
  std::string decode_worker;   ///< name of the worker that decoded
  /// ITL spikes by cause, indexed by itl_cause (size itl_cause::count_, or empty).
  std::vector<uint32_t> itl_spikes;
  std::vector<step_record> steps;  ///< per token after the first (may be capped)
  uint32_t migrations = 0;         ///< times the request moved to another worker
  /// Why, one per move (names of migration_reason: worker_lost, prefill_lost, …).
  std::vector<std::string> migration_reasons;
  /// The routing decision of the attempt that served it: every candidate's score.
  std::vector<routing_score> routing;
  /// Refused as overloaded: when to retry, ms (HTTP Retry-After, rounded up to s); 0: none.
  uint32_t retry_after_ms = 0;
};

/// What a client needs to know about the served model.
struct model_summary {
  std::string name;
  uint32_t vocab_size = 0;
  uint32_t max_context = 0;
  uint32_t block_tokens = 0;
};

}  // namespace tokenmill
