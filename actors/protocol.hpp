#pragma once
/// Every message exchanged by tokenmill's actors (STYLE.md §1). Actors are untyped CAF
/// actors; each message is a distinct struct (or an atom for a bare query), so a handler's
/// signature names exactly what it accepts. Request-scoped messages carry a `trace`.
///
/// Flow of one request (DESIGN.md §2):
///   frontend --generate_request--> router --decode_assignment--> decode
///   decode --prefill_job--> prefill (remote) | its own engine (local prefill)
///   prefill --kv_transfer*--> decode, then --kv_ready--> decode and --first_token--> router
///     (first-token release `decode`: decode --first_token--> router as the sequence joins a step)
///   decode --token_batch (one per step)--> router --token_chunk--> frontend
///   decode --request_done--> router --request_summary--> frontend
///   frontend --cancel_request--> router --> decode --> prefill
///   live migration: decode A --migrate_offer, migrate_commit--> decode B --attempt_moved-->
///   router (see "live migration" below)
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include <caf/all.hpp>

#include "common/api_types.hpp"
#include "common/errors.hpp"
#include "common/ids.hpp"
#include "common/trace.hpp"
#include "engine/engine.hpp"
#include "transport/kv_transport.hpp"

namespace tokenmill {

// ---------------------------------------------------------------- atoms (bare queries)

/// Ask an actor for its `worker_status` (or the supervisor for `cluster_status`).
using status_atom = caf::atom_constant<caf::atom("status")>;
/// Ask the supervisor whether the cluster can serve (reply: bool).
using ready_atom = caf::atom_constant<caf::atom("ready")>;
/// A worker's self-sent tick: plan and launch one engine step.
using step_atom = caf::atom_constant<caf::atom("step")>;
/// The router's self-sent watchdog tick: request timeouts and stalled attempts.
using tick_atom = caf::atom_constant<caf::atom("tick")>;
/// A prefill worker's self-sent (announce_atom, request_id): the job's decode pool was not
/// announced in time (prefill_config::announce_wait); fail it if it is still waiting.
using announce_atom = caf::atom_constant<caf::atom("announce")>;

// ---------------------------------------------------------------- request payloads

/// frontend -> router: a new request. Tokens and the summary go back to `client`.
struct generate_request {
  request_id id = 0;
  std::vector<token_id> prompt;
  request_options options;
  trace tr;
  caf::actor client;
};

/// Fetch instead of recompute (actors/router/fetch_policy.hpp): the worker that computes
/// the prompt (the decode worker for a local prefill, else the prefill worker) pulls the
/// prompt's blocks after those it holds, up to `end_block`, from `from`'s prefix cache
/// (kv_fetch_request) before computing the rest. `from` invalid: no fetch.
struct fetch_hint {
  caf::actor from;
  std::string source;  ///< its name, for logs and errors
  uint32_t end_block = 0;
};

/// router -> decode: serve this request; prefill it on `prefill`, or locally when
/// `prefill` is invalid. Tokens and completion go to `router`.
struct decode_assignment {
  generate_request req;
  caf::actor prefill;
  caf::actor router;
  /// Pull a prefix from a peer first: the decode worker itself (local prefill), or it
  /// passes the hint on in the prefill_job (remote prefill).
  fetch_hint fetch;
};

/// decode -> prefill: compute the prompt and write the KV of its blocks from `skip_blocks`
/// on into `dst_blocks` of the pool `dst` (the decode worker has the first `skip_blocks`
/// in its prefix cache); then send kv_ready to `decode` and first_token to `router`.
struct prefill_job {
  request_id id = 0;
  std::vector<token_id> prompt;
  sampling_params sampling;
  pool_descriptor dst;
  uint32_t skip_blocks = 0;
  std::vector<block_id> dst_blocks;  ///< one per prompt block from skip_blocks on
  caf::actor decode;
  caf::actor router;
  trace tr;
  fetch_hint fetch;  ///< pull a prefix from a peer before computing (the router's plan)
  /// The prompt's segments (request_options::segment_ends): a prefill worker whose engine
  /// blends reuses their KV from its chunk cache. Empty: not segmented.
  std::vector<uint32_t> segment_ends;
  /// Share of reused segment tokens recomputed, resolved by the decode worker (never < 0
  /// when segment_ends is set; < 0: the prefill worker's default).
  float recompute_ratio = -1;
  /// First-token release `decode` (decode_policy.hpp): send the first token only to the
  /// decode worker (kv_ready), which releases it to the router when the sequence joins its
  /// first decode step. False: it goes to the router too, as soon as the KV is pushed.
  bool hold_first_token = false;
};

/// prefill -> decode: blocks of a prompt's KV (written as each chunk completes). With a
/// one-sided transport `payload.bytes` is empty and the data is already in place.
/// `checksums[i]` is the xxh3 of block `payload.dst_blocks[i]` as the sender wrote it.
struct kv_transfer {
  request_id id = 0;
  kv_payload payload;
  std::vector<uint64_t> checksums;
};

/// prefill -> decode: every block of the prompt has been sent (and flushed); the sequence
/// may join the decode batch. `blocks` is how many blocks were transferred in total.
struct kv_ready {
  request_id id = 0;
  token_id first_token = 0;
  uint32_t blocks = 0;
  trace tr;
  /// The first token's log-probabilities, when the request asked for them (the decode
  /// worker sends them on with a held first token, prefill_job::hold_first_token).
  token_logprobs first_logprobs;
};

/// prefill -> decode: the job failed; the decode worker frees the reservation and fails
/// the request.
struct prefill_failed {
  request_id id = 0;
  error_info error;
  /// A draining (or former) prefill worker gave the job back with nothing computed: the
  /// router's move of the request is labelled `drained`, not a failure.
  bool handed_back = false;
};

/// prefill -> decode: the job of `id` was cancelled or failed and none of its transport
/// writes is in flight any more: nothing else will land in the blocks the decode worker
/// reserved for it (with a one-sided transport it holds them until then).
struct kv_drained {
  request_id id = 0;
};

/// decode -> itself: stop waiting for kv_drained of `id` (its prefill worker may be gone).
struct drain_expired {
  request_id id = 0;
};

/// serving worker -> source worker (request; reply kv_fetch_reply or an error): write the
/// KV of the blocks of your prefix cache with these chain hashes (a prompt's consecutive
/// blocks, in order) into `dst_blocks` of the pool `dst`, one block each. The source pins
/// the leading run it holds until the write is flushed, then replies.
struct kv_fetch_request {
  request_id id = 0;
  std::vector<uint64_t> hashes;
  pool_descriptor dst;
  std::vector<block_id> dst_blocks;
};

/// source -> serving worker (reply to kv_fetch_request): the blocks written (a leading run
/// of dst_blocks: the source stops at the first block it does not hold) with the xxh3 of
/// each as the source wrote it; with a one-sided transport the bytes are in place already.
/// No write of the fetch is in flight any more when it is sent.
struct kv_fetch_reply {
  request_id id = 0;
  kv_transfer transfer;
  error_info error;  ///< set: the source wrote nothing usable (a refusal or a failed write)
};

/// transport -> source worker (its own mailbox): the write of fetch `key` finished.
struct kv_fetch_written {
  uint64_t key = 0;
  error_info error;
  kv_transfer transfer;
};

/// transport -> prefill (its own mailbox): a kv write finished; forward the control
/// message to the decode worker. Completions may come from a transport thread, so they
/// re-enter the worker as a message.
struct kv_write_done {
  request_id id = 0;
  error_info error;
  kv_transfer transfer;
};

/// engine thread -> its worker: an engine call finished. `prefill_next[i]` is the token
/// after chunk i of the step's prefill batch, `decode_next[i]` the next token of sequence
/// i of its decode batch (empty when the call failed; then `error` says why).
struct engine_step_done {
  std::vector<token_id> prefill_next;
  std::vector<token_id> decode_next;
  /// Per entry of prefill_next / decode_next: its log-probabilities (empty when the
  /// sequence did not ask for them, see sampling_params::top_logprobs).
  std::vector<token_logprobs> prefill_logprobs;
  std::vector<token_logprobs> decode_logprobs;
  int64_t prefill_ns = 0;  ///< engine time of the prefill part
  int64_t decode_ns = 0;   ///< engine time of the decode part
  /// The engine's failure as it reported it (invalid_request for a batch it refused before
  /// touching the pool, internal for a failure while computing); every sequence of the
  /// step fails with it.
  error_info error;
};

/// prefill (or decode after local prefill) -> router: the first generated token.
struct first_token {
  request_id id = 0;
  token_id token = 0;
  trace tr;
  token_logprobs logprobs;  ///< when the request asked for them
};

/// One generated token of one request; `index` counts from 0 (the first token).
struct token_event {
  request_id id = 0;
  uint32_t index = 0;
  token_id token = 0;
  token_logprobs logprobs;  ///< when the request asked for them
};

/// decode -> router: the tokens of one decode step (one message per step and router).
struct token_batch {
  std::vector<token_event> tokens;
  uint32_t batch_size = 0;         ///< sequences in the step
  int64_t step_ns = 0;             ///< engine time of the step
  bool piggyback_prefill = false;  ///< a local prefill ran in this iteration
  uint32_t node = 0;               ///< the decode worker's node (its clock for the times)
  int64_t step_start_ns = 0;       ///< the iteration started (prefill part included)
  int64_t step_end_ns = 0;         ///< the iteration ended
  uint32_t prefill_tokens = 0;     ///< prompt tokens prefilled in the iteration
};

/// decode -> router: the request ended (finished, cancelled or failed); its blocks are
/// free. `tr` holds the decode side's stamps.
struct request_done {
  request_id id = 0;
  finish_reason reason = finish_reason::none;
  error_info error;
  uint32_t prompt_tokens = 0;
  uint32_t completion_tokens = 0;
  trace tr;
  /// The worker gave the attempt back because it drains or changed role (nothing of it is
  /// lost but, at most, the prefill chunk under way): the router routes it again and
  /// labels the move `drained`.
  bool handed_back = false;
};

/// frontend -> router -> decode -> prefill: stop working on a request and free its blocks.
struct cancel_request {
  request_id id = 0;
};

/// router -> frontend: tokens of one request, in order, starting at `first_index`.
struct token_chunk {
  request_id id = 0;
  uint32_t first_index = 0;
  std::vector<token_id> tokens;
  /// One per token when the request asked for log-probabilities, else empty.
  std::vector<token_logprobs> logprobs;
};

/// router -> frontend: the last message of a request.
struct request_summary {
  request_id id = 0;
  finish_reason reason = finish_reason::none;
  error_info error;
  uint32_t prompt_tokens = 0;
  uint32_t completion_tokens = 0;
  trace tr;                ///< every stamp of the request (TTFT path and decode)
  double itl_mean_ms = 0;  ///< inter-token latency measured at the router
  double itl_p50_ms = 0;
  double itl_p99_ms = 0;
  std::string prefill_worker;        ///< name; empty when prefilled on the decode worker
  std::string decode_worker;         ///< name
  std::vector<uint32_t> itl_spikes;  ///< by itl_cause
  std::vector<step_record> steps;    ///< per released token (capped), router clock
  uint32_t migrations = 0;           ///< times the request moved to another worker
  /// Why, one per move (migration_reason names: worker_lost, stalled, …).
  std::vector<std::string> migration_reasons;
  /// The routing decision of the current attempt: every candidate's cost-model score.
  std::vector<routing_score> routing;
  /// Refused as overloaded: when to retry, ms (the router's estimate of the time its
  /// queue needs to drain to the admission target); 0 otherwise.
  uint32_t retry_after_ms = 0;
};

// ---------------------------------------------------------------- KV index

/// worker -> kv_store: the worker now holds (stored) or no longer holds (removed) the
/// blocks with these chain hashes, in its pool or in a level of its second tier.
struct kv_event {
  worker_id worker = 0;
  bool stored = true;
  std::vector<uint64_t> hashes;
  uint8_t tier = 0;  ///< kv_tier_level: 0 pool, 1 host, 2 disk
};

/// router -> kv_store (request): how many leading blocks of this chain each worker holds,
/// and which of a segmented prompt's chunks it holds (issue 17).
struct overlap_query {
  std::vector<uint64_t> hashes;
  /// The chunk_block_hashes of each segment the router asks about (engine/block_hash.hpp),
  /// in prompt order; empty: the prompt is not segmented.
  std::vector<std::vector<uint64_t>> chunks;
};

/// One worker's prefix overlap.
struct worker_overlap {
  worker_id worker = 0;
  uint32_t blocks = 0;       ///< leading blocks it holds, in its pool or its second tier
  uint32_t host_blocks = 0;  ///< of those, in its host tier (to onboard, not compute)
  uint32_t disk_blocks = 0;  ///< of those, in its disk tier
  /// Indices into overlap_query::chunks of the chunks it holds whole in its pool,
  /// ascending. A worker holding chunks but no leading block has blocks = 0.
  std::vector<uint32_t> chunks;
};

/// kv_store -> router (reply to overlap_query).
struct overlap_reply {
  std::vector<worker_overlap> workers;
};

// ---------------------------------------------------------------- membership & status

/// Static description of a worker, sent when it registers.
struct worker_info {
  worker_id id = 0;
  role kind = role::decode;
  std::string name;
  std::string node;
  uint32_t node_index = 0;  ///< index of the node in the manifest; stamped into traces
  pool_descriptor pool;     ///< empty for actors without a KV pool
};

/// actor -> supervisor (request, reply: bool): I exist; monitor me.
struct register_worker {
  worker_info info;
  caf::actor handle;
};

/// A cluster member as the supervisor sees it.
struct member {
  worker_info info;
  caf::actor handle;
  bool up = true;
  /// Told to change role or to drain (change_role): routers send it no new work.
  bool draining = false;
};

/// supervisor -> router: the full membership, sent on every change.
struct membership {
  std::vector<member> members;
};

/// Ask a node agent for the supervisor handle it knows (reply: caf::actor, maybe invalid).
using supervisor_atom = caf::atom_constant<caf::atom("sup")>;
/// Clock probe: (ping_atom, t0) to a node agent; reply (t0, t_node) on its steady clock.
using ping_atom = caf::atom_constant<caf::atom("ping")>;

/// node -> supervisor (request, reply: std::string, a fresh challenge in hex): the first
/// step of a join when the cluster has a secret (actors/supervisor/join_policy.hpp). Each
/// challenge is good for one join_node within a short window.
using join_challenge_atom = caf::atom_constant<caf::atom("joinchal")>;

/// node -> supervisor (request, reply: std::string, empty = accepted): a node of the
/// manifest joins. Nodes that serve another model or another manifest are refused, and,
/// when the cluster has a secret, nodes whose proof of it does not check out.
struct join_node {
  std::string name;
  uint32_t index = 0;
  uint64_t manifest_hash = 0;
  std::string model;
  caf::actor agent;       ///< the node's published agent (answers ping_atom)
  std::string host_id;    ///< host_clock_id(): equal ids share one monotonic clock
  std::string challenge;  ///< from join_challenge_atom, hex; empty without a secret
  /// HMAC-SHA256 under the cluster secret over the challenge and the fields above (hex;
  /// join_proof()); empty without a secret. The secret itself never travels.
  std::string proof;
};

/// supervisor -> node agents, on every node join or loss: the indices of the nodes that
/// are up. Each agent opens direct connections to the up nodes of a lower index.
struct node_peers {
  std::vector<uint32_t> up;
};

/// supervisor -> routers: each node's clock offset (ns to add to that node's stamps to put
/// them on the supervisor's clock), indexed by node index.
struct clock_update {
  std::vector<int64_t> offsets;
};

// ---------------------------------------------------------------- role changes & draining

/// supervisor -> prefill or decode worker: stop taking new work, finish or hand off (live
/// migration of decode sequences with their KV) what it holds, then serve as `to` with the
/// same engine and KV pool under the same worker id. With `drain_only` the worker empties
/// and stays out of routing under its current role (`to` is ignored): maintenance,
/// `tokenmill drain`. The supervisor marks the member `draining` before it sends this.
struct change_role {
  role to = role::decode;
  bool drain_only = false;
  std::string reason;  ///< for logs and the trace: the planner's evidence, or "drain"
};

/// worker -> supervisor: the role change (or drain) of `worker` is complete, or failed
/// (`error` set; the worker then keeps its old role). After a role change the worker has
/// registered under its new role (register_worker, same id) before it sends this.
struct role_changed {
  worker_id worker = 0;
  role from = role::decode;
  role to = role::decode;
  bool drain_only = false;
  int64_t drain_ns = 0;   ///< from change_role until it held nothing
  int64_t total_ns = 0;   ///< from change_role until it served under `to`
  uint32_t migrated = 0;  ///< decode sequences handed off live to another worker
  uint32_t finished = 0;  ///< sequences or jobs it finished before switching
  error_info error;
};

/// client (through a frontend) -> supervisor (request, reply: drain_report): empty every
/// prefill and decode worker of node `node` without failing a request.
struct drain_request {
  std::string node;
  /// Instead of draining: the node's drained workers take work again (an "undrain").
  bool resume = false;
};

/// supervisor -> client: one role_changed per drained worker, or why the drain failed.
struct drain_report {
  std::vector<role_changed> workers;
  error_info error;
};

// ---------------------------------------------------------------- live migration

/// Live migration of a running decode sequence with its KV (actors/decode/decode_actor.cpp,
/// section "live migration"; decisions in actors/decode/migration_policy.hpp). Order:
///   trigger --migrate_request--> A (source decode worker)
///   A --migrate_offer (request)--> B; B reserves blocks, replies migrate_accept or an error
///   A writes the KV blocks into B's pool over the transport (flushed before it goes on)
///   A --migrate_commit (request)--> B; B verifies, admits the sequence, sends
///   attempt_moved to the router, replies migrate_committed; A frees its blocks
/// On a refusal, an error, a timeout or B going down A keeps the sequence (or ends the
/// attempt so that the router re-submits it) and sends B migrate_abort.

/// anyone (tests, drain) -> decode worker A: move the running sequence of attempt `id` to
/// the decode worker `target` with its KV; with no `target`, to the decode worker A picks
/// from its membership (up, not draining, not A; the one it moved fewest sequences to:
/// pick_migration_target). With `keep_on_failure` false A ends the attempt
/// (errc::unavailable: the router re-submits it) when the move fails, rather than decoding
/// it on (a draining worker). The outcome is reported to `reply_to` (if set) as
/// migrate_result.
struct migrate_request {
  request_id id = 0;
  caf::actor target;
  bool keep_on_failure = true;
  caf::actor reply_to;
};

/// decode A -> decode B (request; reply migrate_accept or an error): take over a sequence.
/// `tokens` is the prompt then every generated token; the KV of the first `kv_tokens`
/// positions is in A's blocks (the newest token's KV is computed by B's first step).
struct migrate_offer {
  generate_request req;  ///< as A was assigned it (id = the attempt id)
  caf::actor router;
  std::vector<token_id> tokens;
  uint32_t prompt_len = 0;
  uint32_t generated = 0;
  uint32_t kv_tokens = 0;
  uint32_t epoch = 0;  ///< moves of this attempt so far, this one included (attempt_moved)
  worker_id source = 0;
  uint64_t block_bytes = 0;  ///< A's block size: the pools must match
};

/// decode B -> decode A (reply to migrate_offer): write the KV blocks from `skip_blocks` on
/// into `dst_blocks` of `dst` (B holds the first `skip_blocks` in its prefix cache); or,
/// with `error` set, B refuses (no capacity, a mismatched pool, …) and holds nothing.
struct migrate_accept {
  request_id id = 0;
  pool_descriptor dst;
  uint32_t skip_blocks = 0;
  std::vector<block_id> dst_blocks;
  error_info error;
};

/// transport -> decode A (its own mailbox): the migration's KV write finished.
struct migrate_write_done {
  request_id id = 0;
  uint32_t epoch = 0;
  error_info error;
  kv_transfer transfer;
};

/// decode A -> decode B (request; reply migrate_committed): every block is written (and
/// flushed); verify it and continue the sequence at token index `generated`.
struct migrate_commit {
  request_id id = 0;
  kv_transfer transfer;
};

/// decode B -> decode A (reply to migrate_commit): B serves the sequence now (and told the
/// router so); or, with `error` set, the KV failed B's checks and B holds nothing.
struct migrate_committed {
  request_id id = 0;
  error_info error;
};

/// decode A -> decode B: forget the reservation (or the sequence) of move `epoch`, which A
/// gave up on (A keeps the sequence or ends the attempt itself).
struct migrate_abort {
  request_id id = 0;
  uint32_t epoch = 0;
};

/// decode -> itself: a reservation of an incoming move that was never committed expires.
struct migrate_expired {
  request_id id = 0;
  uint32_t epoch = 0;
};

/// decode A -> migrate_request's reply_to: how a move ended.
struct migrate_result {
  request_id id = 0;
  bool moved = false;
  uint64_t bytes = 0;  ///< KV bytes written to the target
  uint32_t blocks = 0;
  /// From the start of the move (after the engine step the sequence was in, if any) to
  /// the target's confirmation or the failure.
  int64_t elapsed_ns = 0;
  error_info error;  ///< why not, when not moved
};

/// supervisor -> decode worker (request, reply: uint32_t, the moves started): after the
/// planner flipped `target` to decode, move up to `count` of the sequences this worker
/// decodes live to it, those with the most tokens still to generate first
/// (pick_rebalance). A failed move keeps its sequence here. Nothing moves while the
/// worker drains.
struct rebalance_request {
  caf::actor target;
  uint32_t count = 0;
};

/// decode B (or A taking a failed move back) -> router: attempt `id` is now served by
/// `handle` (worker `worker`, named `name`). Move `epoch` n supersedes moves below n.
struct attempt_moved {
  request_id id = 0;
  uint32_t epoch = 0;
  worker_id worker = 0;
  std::string name;
  caf::actor handle;
};

/// The supervisor's self-sent planner tick (every planner.interval_ms): gather the workers'
/// status and the routers' latency samples, then decide. Tests send it to step the planner.
using plan_atom = caf::atom_constant<caf::atom("plan")>;

/// supervisor -> router (request, reply: latency_samples): the planner's measure of the
/// service level. The router answers with what it measured since the previous query and
/// forgets it (one supervisor asks).
using latency_atom = caf::atom_constant<caf::atom("latency")>;

/// router -> supervisor: the TTFTs (admission to the first token released) and the gaps
/// between consecutive released tokens of every request, recorded as the tokens were
/// released since the previous query (running requests included); capped.
struct latency_samples {
  std::vector<double> ttft_ms;
  std::vector<double> itl_ms;
};

// ---------------------------------------------------------------- inspectors (CAF 0.17)

/// A byte-vector field of a message, as inspectors see it. CAF 0.17 resizes (and zeroes) a
/// byte vector to the length on the wire before it reads the bytes, so a peer's message of
/// a few bytes claiming 4 GiB made a node allocate 4 GiB (found by fuzz_kv_descriptor).
/// Read from a binary deserializer (the middleman's), the length is checked against the
/// bytes the message still holds first. The wire format is CAF's own.
struct wire_bytes {
  std::vector<uint8_t>& bytes;
};
template <class F>
typename F::result_type inspect(F& f, wire_bytes& x) {
  if constexpr (std::is_base_of_v<caf::deserializer, F>) {
    size_t n = 0;
    if (auto err = f.begin_sequence(n)) return err;
    if (auto* b = dynamic_cast<caf::binary_deserializer*>(&f); b != nullptr && n > b->remaining())
      return caf::make_error(caf::sec::end_of_stream);
    x.bytes.resize(n);
    if (n > 0)
      if (auto err = f.apply_raw(n, x.bytes.data())) return err;
    return f.end_sequence();
  } else {
    return f(x.bytes);
  }
}

template <class F>
typename F::result_type inspect(F& f, sampling_params& x) {
  return f(caf::meta::type_name("sampling_params"), x.temperature, x.top_p, x.top_k, x.min_p,
           x.seed, x.presence_penalty, x.frequency_penalty, x.repetition_penalty, x.logit_bias,
           x.top_logprobs, x.grammar, x.grammar_source, x.resumed);
}
template <class F>
typename F::result_type inspect(F& f, logit_bias_entry& x) {
  return f(caf::meta::type_name("logit_bias_entry"), x.token, x.bias);
}
template <class F>
typename F::result_type inspect(F& f, top_logprob& x) {
  return f(caf::meta::type_name("top_logprob"), x.token, x.logprob);
}
template <class F>
typename F::result_type inspect(F& f, token_logprobs& x) {
  return f(caf::meta::type_name("token_logprobs"), x.logprob, x.top);
}
template <class F>
typename F::result_type inspect(F& f, hop& x) {
  return f(caf::meta::type_name("hop"), x.where, x.node, x.t_ns);
}
template <class F>
typename F::result_type inspect(F& f, trace& x) {
  return f(caf::meta::type_name("trace"), x.id, x.hops);
}
template <class F>
typename F::result_type inspect(F& f, error_info& x) {
  return f(caf::meta::type_name("error_info"), x.code, x.message);
}
template <class F>
typename F::result_type inspect(F& f, pool_descriptor& x) {
  return f(caf::meta::type_name("pool_descriptor"), x.owner, x.block_bytes, x.num_blocks,
           wire_bytes{x.remote_key}, wire_bytes{x.worker_address}, x.host);
}
template <class F>
typename F::result_type inspect(F& f, kv_payload& x) {
  return f(caf::meta::type_name("kv_payload"), x.dst_blocks, wire_bytes{x.bytes});
}
template <class F>
typename F::result_type inspect(F& f, request_options& x) {
  return f(caf::meta::type_name("request_options"), x.max_tokens, x.stop_ids, x.sampling,
           x.ignore_eos, x.segment_ends, x.recompute_ratio);
}
template <class F>
typename F::result_type inspect(F& f, generate_request& x) {
  return f(caf::meta::type_name("generate_request"), x.id, x.prompt, x.options, x.tr, x.client);
}
template <class F>
typename F::result_type inspect(F& f, decode_assignment& x) {
  return f(caf::meta::type_name("decode_assignment"), x.req, x.prefill, x.router, x.fetch);
}
template <class F>
typename F::result_type inspect(F& f, fetch_hint& x) {
  return f(caf::meta::type_name("fetch_hint"), x.from, x.source, x.end_block);
}
template <class F>
typename F::result_type inspect(F& f, kv_fetch_request& x) {
  return f(caf::meta::type_name("kv_fetch_request"), x.id, x.hashes, x.dst, x.dst_blocks);
}
template <class F>
typename F::result_type inspect(F& f, kv_fetch_reply& x) {
  return f(caf::meta::type_name("kv_fetch_reply"), x.id, x.transfer, x.error);
}
template <class F>
typename F::result_type inspect(F& f, kv_fetch_written& x) {
  return f(caf::meta::type_name("kv_fetch_written"), x.key, x.error, x.transfer);
}
template <class F>
typename F::result_type inspect(F& f, prefill_job& x) {
  return f(caf::meta::type_name("prefill_job"), x.id, x.prompt, x.sampling, x.dst, x.skip_blocks,
           x.dst_blocks, x.decode, x.router, x.tr, x.fetch, x.segment_ends, x.recompute_ratio,
           x.hold_first_token);
}
template <class F>
typename F::result_type inspect(F& f, kv_transfer& x) {
  return f(caf::meta::type_name("kv_transfer"), x.id, x.payload, x.checksums);
}
template <class F>
typename F::result_type inspect(F& f, kv_write_done& x) {
  return f(caf::meta::type_name("kv_write_done"), x.id, x.error, x.transfer);
}
template <class F>
typename F::result_type inspect(F& f, engine_step_done& x) {
  return f(caf::meta::type_name("engine_step_done"), x.prefill_next, x.decode_next,
           x.prefill_logprobs, x.decode_logprobs, x.prefill_ns, x.decode_ns, x.error);
}
template <class F>
typename F::result_type inspect(F& f, kv_ready& x) {
  return f(caf::meta::type_name("kv_ready"), x.id, x.first_token, x.blocks, x.tr, x.first_logprobs);
}
template <class F>
typename F::result_type inspect(F& f, kv_drained& x) {
  return f(caf::meta::type_name("kv_drained"), x.id);
}
template <class F>
typename F::result_type inspect(F& f, drain_expired& x) {
  return f(caf::meta::type_name("drain_expired"), x.id);
}
template <class F>
typename F::result_type inspect(F& f, prefill_failed& x) {
  return f(caf::meta::type_name("prefill_failed"), x.id, x.error, x.handed_back);
}
template <class F>
typename F::result_type inspect(F& f, first_token& x) {
  return f(caf::meta::type_name("first_token"), x.id, x.token, x.tr, x.logprobs);
}
template <class F>
typename F::result_type inspect(F& f, token_event& x) {
  return f(caf::meta::type_name("token_event"), x.id, x.index, x.token, x.logprobs);
}
template <class F>
typename F::result_type inspect(F& f, token_batch& x) {
  return f(caf::meta::type_name("token_batch"), x.tokens, x.batch_size, x.step_ns,
           x.piggyback_prefill, x.node, x.step_start_ns, x.step_end_ns, x.prefill_tokens);
}
template <class F>
typename F::result_type inspect(F& f, step_record& x) {
  return f(caf::meta::type_name("step_record"), x.index, x.released_ns, x.step_start_ns,
           x.step_end_ns, x.batch, x.prefill_tokens, x.cause);
}
template <class F>
typename F::result_type inspect(F& f, routing_score& x) {
  return f(caf::meta::type_name("routing_score"), x.worker, x.prefill, x.chosen, x.eligible,
           x.local, x.cached_tokens, x.prefill_ms, x.queue_ms, x.transfer_ms, x.load_ms,
           x.total_ms);
}
template <class F>
typename F::result_type inspect(F& f, request_done& x) {
  return f(caf::meta::type_name("request_done"), x.id, x.reason, x.error, x.prompt_tokens,
           x.completion_tokens, x.tr, x.handed_back);
}
template <class F>
typename F::result_type inspect(F& f, cancel_request& x) {
  return f(caf::meta::type_name("cancel_request"), x.id);
}
template <class F>
typename F::result_type inspect(F& f, token_chunk& x) {
  return f(caf::meta::type_name("token_chunk"), x.id, x.first_index, x.tokens, x.logprobs);
}
template <class F>
typename F::result_type inspect(F& f, request_summary& x) {
  return f(caf::meta::type_name("request_summary"), x.id, x.reason, x.error, x.prompt_tokens,
           x.completion_tokens, x.tr, x.itl_mean_ms, x.itl_p50_ms, x.itl_p99_ms, x.prefill_worker,
           x.decode_worker, x.itl_spikes, x.steps, x.migrations, x.migration_reasons, x.routing,
           x.retry_after_ms);
}
template <class F>
typename F::result_type inspect(F& f, kv_event& x) {
  return f(caf::meta::type_name("kv_event"), x.worker, x.stored, x.hashes, x.tier);
}
template <class F>
typename F::result_type inspect(F& f, overlap_query& x) {
  return f(caf::meta::type_name("overlap_query"), x.hashes, x.chunks);
}
template <class F>
typename F::result_type inspect(F& f, worker_overlap& x) {
  return f(caf::meta::type_name("worker_overlap"), x.worker, x.blocks, x.host_blocks, x.disk_blocks,
           x.chunks);
}
template <class F>
typename F::result_type inspect(F& f, overlap_reply& x) {
  return f(caf::meta::type_name("overlap_reply"), x.workers);
}
template <class F>
typename F::result_type inspect(F& f, join_node& x) {
  return f(caf::meta::type_name("join_node"), x.name, x.index, x.manifest_hash, x.model, x.agent,
           x.host_id, x.challenge, x.proof);
}
template <class F>
typename F::result_type inspect(F& f, node_peers& x) {
  return f(caf::meta::type_name("node_peers"), x.up);
}
template <class F>
typename F::result_type inspect(F& f, clock_update& x) {
  return f(caf::meta::type_name("clock_update"), x.offsets);
}
template <class F>
typename F::result_type inspect(F& f, worker_info& x) {
  return f(caf::meta::type_name("worker_info"), x.id, x.kind, x.name, x.node, x.node_index, x.pool);
}
template <class F>
typename F::result_type inspect(F& f, register_worker& x) {
  return f(caf::meta::type_name("register_worker"), x.info, x.handle);
}
template <class F>
typename F::result_type inspect(F& f, member& x) {
  return f(caf::meta::type_name("member"), x.info, x.handle, x.up, x.draining);
}
template <class F>
typename F::result_type inspect(F& f, membership& x) {
  return f(caf::meta::type_name("membership"), x.members);
}
template <class F>
typename F::result_type inspect(F& f, kv_tier_status& x) {
  return f(caf::meta::type_name("kv_tier_status"), x.tier, x.hits, x.bytes_in, x.bytes_out,
           x.evictions, x.used, x.capacity);
}
template <class F>
typename F::result_type inspect(F& f, kv_fetch_status& x) {
  return f(caf::meta::type_name("kv_fetch_status"), x.started, x.completed, x.failed, x.blocks,
           x.bytes, x.missing, x.time_ns, x.served, x.served_blocks, x.served_bytes,
           x.serve_failures);
}
template <class F>
typename F::result_type inspect(F& f, worker_status& x) {
  return f(caf::meta::type_name("worker_status"), x.id, x.kind, x.name, x.node, x.up, x.queued,
           x.running, x.kv_used, x.kv_total, x.completed, x.tokens_out, x.detail, x.kv_bytes,
           x.prefix_hit_blocks, x.prefix_lookup_blocks, x.tiers, x.chunk_lookup_tokens,
           x.chunk_hit_tokens, x.chunk_recomputed_tokens, x.fetch);
}
template <class F>
typename F::result_type inspect(F& f, node_status& x) {
  return f(caf::meta::type_name("node_status"), x.name, x.index, x.up, x.clock_offset_ns,
           x.clock_rtt_ns, x.restarts);
}
template <class F>
typename F::result_type inspect(F& f, planner_event& x) {
  return f(caf::meta::type_name("planner_event"), x.t_ns, x.kind, x.worker, x.from, x.to, x.took_ns,
           x.why);
}
template <class F>
typename F::result_type inspect(F& f, planner_status& x) {
  return f(caf::meta::type_name("planner_status"), x.enabled, x.decisions, x.flips_to_prefill,
           x.flips_to_decode, x.changes_failed, x.drains, x.last_decision, x.events);
}
template <class F>
typename F::result_type inspect(F& f, cluster_status& x) {
  return f(caf::meta::type_name("cluster_status"), x.cluster, x.ready, x.workers, x.nodes,
           x.planner);
}

template <class F>
typename F::result_type inspect(F& f, change_role& x) {
  return f(caf::meta::type_name("change_role"), x.to, x.drain_only, x.reason);
}
template <class F>
typename F::result_type inspect(F& f, role_changed& x) {
  return f(caf::meta::type_name("role_changed"), x.worker, x.from, x.to, x.drain_only, x.drain_ns,
           x.total_ns, x.migrated, x.finished, x.error);
}
template <class F>
typename F::result_type inspect(F& f, drain_request& x) {
  return f(caf::meta::type_name("drain_request"), x.node, x.resume);
}
template <class F>
typename F::result_type inspect(F& f, drain_report& x) {
  return f(caf::meta::type_name("drain_report"), x.workers, x.error);
}
template <class F>
typename F::result_type inspect(F& f, latency_samples& x) {
  return f(caf::meta::type_name("latency_samples"), x.ttft_ms, x.itl_ms);
}

template <class F>
typename F::result_type inspect(F& f, rebalance_request& x) {
  return f(caf::meta::type_name("rebalance_request"), x.target, x.count);
}

template <class F>
typename F::result_type inspect(F& f, migrate_request& x) {
  return f(caf::meta::type_name("migrate_request"), x.id, x.target, x.keep_on_failure, x.reply_to);
}
template <class F>
typename F::result_type inspect(F& f, migrate_offer& x) {
  return f(caf::meta::type_name("migrate_offer"), x.req, x.router, x.tokens, x.prompt_len,
           x.generated, x.kv_tokens, x.epoch, x.source, x.block_bytes);
}
template <class F>
typename F::result_type inspect(F& f, migrate_accept& x) {
  return f(caf::meta::type_name("migrate_accept"), x.id, x.dst, x.skip_blocks, x.dst_blocks,
           x.error);
}
template <class F>
typename F::result_type inspect(F& f, migrate_write_done& x) {
  return f(caf::meta::type_name("migrate_write_done"), x.id, x.epoch, x.error, x.transfer);
}
template <class F>
typename F::result_type inspect(F& f, migrate_commit& x) {
  return f(caf::meta::type_name("migrate_commit"), x.id, x.transfer);
}
template <class F>
typename F::result_type inspect(F& f, migrate_committed& x) {
  return f(caf::meta::type_name("migrate_committed"), x.id, x.error);
}
template <class F>
typename F::result_type inspect(F& f, migrate_abort& x) {
  return f(caf::meta::type_name("migrate_abort"), x.id, x.epoch);
}
template <class F>
typename F::result_type inspect(F& f, migrate_expired& x) {
  return f(caf::meta::type_name("migrate_expired"), x.id, x.epoch);
}
template <class F>
typename F::result_type inspect(F& f, migrate_result& x) {
  return f(caf::meta::type_name("migrate_result"), x.id, x.moved, x.bytes, x.blocks, x.elapsed_ns,
           x.error);
}
template <class F>
typename F::result_type inspect(F& f, attempt_moved& x) {
  return f(caf::meta::type_name("attempt_moved"), x.id, x.epoch, x.worker, x.name, x.handle);
}

}  // namespace tokenmill
