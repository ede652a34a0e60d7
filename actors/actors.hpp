#pragma once
/// Spawn functions of every actor. The composition root (cluster/) builds their
/// configuration and dependencies and passes them in; no actor looks anything up.
#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <caf/all.hpp>

#include "actors/decode/decode_policy.hpp"
#include "actors/protocol.hpp"
#include "actors/router/admission_policy.hpp"
#include "actors/router/fetch_policy.hpp"
#include "actors/router/migration.hpp"
#include "actors/router/routing_policy.hpp"
#include "actors/supervisor/node_certificates.hpp"
#include "actors/supervisor/planner_policy.hpp"
#include "engine/blend.hpp"
#include "engine/engine.hpp"
#include "engine/kv_tier.hpp"
#include "grammar/grammar.hpp"
#include "transport/kv_transport.hpp"

namespace tokenmill {

struct supervisor_config {
  std::string cluster = "tokenmill";
  uint64_t manifest_hash = 0;   ///< joining nodes must announce the same hash
  std::string model;            ///< joining nodes must serve the same model
  size_t expected_workers = 0;  ///< ready only once this many actors registered (0: any)
  uint32_t node_index = 0;      ///< the supervisor's own node (its clock is the reference)
  std::string host_id;          ///< host_clock_id() of the supervisor's host
  uint32_t sync_pings = 16;     ///< ping-pongs per clock estimate (minimum RTT wins)
  caf::timespan sync_interval = std::chrono::seconds(5);  ///< clock estimate refresh
  /// The planner (manifest `planner:`): none = roles never change on their own.
  std::optional<planner_config> planner;
  /// A worker told to change role or drain that has not answered (role_changed) within
  /// this is taken back into routing under its old role, and the change reported failed.
  /// Draining a decode worker may wait for its longest sequence, so it is generous.
  caf::timespan change_timeout = std::chrono::seconds(120);
  /// Bound of the status and latency queries of one planner tick.
  caf::timespan planner_query_timeout = std::chrono::milliseconds(500);
  /// The cluster secret (manifest security.secret_file): a node joins only with a proof of
  /// it (join_policy.hpp). Empty: no proof asked.
  std::vector<uint8_t> secret;
  /// Workers register only from a node that joined and is up, and only from that node's
  /// process, so that pool descriptors (remote keys) reach joined members only. Manifest
  /// clusters set it; the embedded cluster has no joins.
  bool members_from_joined_nodes = false;
  /// With TLS between nodes: the certificates the links to this node presented (written by
  /// the control gate). A node other than the supervisor's own then joins only when its
  /// links' certificates name it (node_certificates.hpp). Null: no such check (no TLS).
  std::shared_ptr<const node_certificates> certificates;
};

/// Asks every actor in `actors` to exit (user_shutdown) and forgets them. Composition roots
/// use it on shutdown and when a start fails half-way.
inline void shutdown_actors(std::vector<caf::actor>& actors) {
  for (auto& a : actors)
    caf::anon_send_exit(a, caf::exit_reason::user_shutdown);
  actors.clear();
}

/// The supervisor: membership (register, monitor, mark down), node joins, clock offsets,
/// readiness, cluster status, role changes and drains, and the planner (with cfg.planner).
caf::actor spawn_supervisor(caf::actor_system& sys, supervisor_config cfg);

/// The kv-store: global index of which worker holds which block hashes.
caf::actor spawn_kv_store(caf::actor_system& sys, worker_info info, caf::actor supervisor);

struct router_config {
  admission_limits limits;
  /// Admission by measured capacity (admission_policy.hpp): refuses a request whose
  /// estimated queue wait exceeds admission.max_queue_ns, with a retry hint.
  adaptive_admission_config admission;
  uint32_t local_prefill_threshold = 0;  ///< tokens; 0 = always prefill remotely when possible
  uint32_t block_tokens = 16;
  /// Moves per request when its worker is lost, fails or stalls (0: fail it instead).
  uint32_t migration_limit = default_migration_limit;
  /// Server-side bound of every request, from admission (0: none). It ends with
  /// errc::timeout and names where the request was stuck.
  caf::timespan request_timeout = std::chrono::seconds(600);
  /// An attempt that produced nothing (no first token, no token) for this long moves to
  /// another worker as `stalled` (0: off). Queueing at a loaded worker and the prefill of
  /// the longest prompt count against it, so it must stay well above both: 120 s covers
  /// an 8k-token prefill on a slow CPU with a queue in front of it.
  caf::timespan stall_timeout = std::chrono::seconds(120);
  /// Period of the router's self-sent watchdog tick (0: no periodic tick; tests send
  /// tick_atom themselves).
  caf::timespan tick_interval = std::chrono::seconds(1);
  /// How long routing waits for the kv-store's prefix overlap before it routes without
  /// it: the cache is an optimisation, never a reason to stall a request.
  caf::timespan overlap_timeout = std::chrono::milliseconds(20);
  /// The model's end-of-sequence id, when known: a request whose last delivered token is
  /// EOS is complete rather than migrated.
  std::optional<token_id> eos;
  /// The cost model's weights and constants (manifest `router: {...}`); its
  /// kv_bytes_per_block comes from the model's KV layout.
  cost_model cost;
  /// Fetch instead of recompute (fetch_policy.hpp): the worker that computes a prompt (its
  /// decode worker, or its prefill worker) may pull the prefix blocks another worker holds
  /// instead; the cost model counts such a fetch as reuse when it picks the workers.
  fetch_settings fetch;
  /// Chunk reuse (issue 17): the share of a segmented prompt's reused chunk tokens the
  /// workers recompute when a request names none (their `serve --recompute-ratio`), so the
  /// cost model discounts a chunk hit by the recompute it still costs.
  float recompute_ratio = 0.15f;
  /// Prefill speed of workers without an entry in `speeds`: the configured rate
  /// (router.prefill_tokens_per_s).
  prefill_speed default_speed;
  /// Prefill speed by worker name, from the engine profile (router.profile) of the
  /// workers whose engine it profiled.
  std::map<std::string, prefill_speed> speeds;
};

/// The router: admission, worker choice, token streaming, timelines.
caf::actor spawn_router(caf::actor_system& sys, worker_info info, router_config cfg,
                        caf::actor supervisor);

struct prefill_config {
  uint32_t num_blocks = 1024;   ///< KV pool size
  uint32_t token_budget = 512;  ///< prompt tokens per engine call (chunk size)
  uint32_t max_seqs = 16;       ///< prompts per engine call
  kv_tier_config tier;          ///< second KV tier for evicted blocks (off by default)
  /// The node's compiled grammars over the model's vocabulary (constrained decoding),
  /// shared by its workers; null: constrained requests are refused.
  std::shared_ptr<grammar::grammar_cache> grammars;
  /// How long a job whose decode pool the transport does not accept yet (its membership
  /// has not reached this worker: kv_transport::accepts_peer) waits for it before failing
  /// with errc::unauthenticated (the router then retries it elsewhere).
  std::chrono::milliseconds announce_wait{3000};
  /// Fetch instead of recompute (prefill_job::fetch): how long the prefill worker waits for
  /// the source's reply before it computes the blocks itself.
  std::chrono::milliseconds fetch_timeout{2000};
  /// With a one-sided transport, blocks a fetch it gave up on (no reply) may still receive
  /// a late put: they are held until the source's late reply, or this long at most (as
  /// decode_config::kv_drain_timeout).
  std::chrono::milliseconds kv_drain_timeout{6000};
  /// Chunk reuse (issue 17): share of a segmented prompt's reused tokens recomputed when the
  /// request names none (`serve --recompute-ratio`), in [0, 1].
  float recompute_ratio = 0.15f;
  /// How those tokens are chosen (`serve --blend-policy`, engine/blend.hpp).
  blend_policy blend = blend_policy::deviation;
};

struct decode_config {
  uint32_t num_blocks = 4096;           ///< KV pool size
  uint32_t max_batch = 64;              ///< sequences per decode step
  uint32_t local_prefill_budget = 512;  ///< prompt tokens per local prefill chunk
  kv_tier_config tier;                  ///< second KV tier for evicted blocks (off by default)
  /// With a one-sided transport, the blocks of a sequence that ends while its KV is being
  /// written are held until the prefill worker reports its writes drained (kv_drained), or
  /// this long at most: longer than the transport's op timeout, after which no write of it
  /// can still be in flight.
  std::chrono::milliseconds kv_drain_timeout{6000};
  /// Live migration: how long the source waits for each answer of the target (offer,
  /// commit) before it takes the sequence back; the target drops a reservation no commit
  /// followed within twice this.
  std::chrono::milliseconds migration_timeout{5000};
  /// Fetch instead of recompute: how long the serving worker waits for the source's reply
  /// before it computes the blocks itself.
  std::chrono::milliseconds fetch_timeout{2000};
  /// As prefill_config::grammars.
  std::shared_ptr<grammar::grammar_cache> grammars;
  /// As prefill_config::recompute_ratio (resolved here for remote prefills too).
  float recompute_ratio = 0.15f;
  /// As prefill_config::blend (for this worker's local prefills).
  blend_policy blend = blend_policy::deviation;
  /// Who streams a remotely prefilled sequence's first token (decode_policy.hpp): the
  /// prefill worker (lowest TTFT) or this worker, as the sequence joins its first step.
  first_token_release first_token = first_token_release::prefill;
};

/// A prefill worker (detached: engine compute runs on its own thread). On change_role it
/// finishes its jobs and serves as a decode worker with `as_decode` (its pool stays).
caf::actor spawn_prefill(caf::actor_system& sys, worker_info info, prefill_config cfg,
                         std::unique_ptr<engine> eng, std::shared_ptr<kv_transport> transport,
                         caf::actor supervisor, decode_config as_decode = {});

/// A decode worker (detached). Prefills locally when the router assigns no prefill worker.
/// On change_role it empties and serves as a prefill worker with `as_prefill` (its pool
/// stays).
caf::actor spawn_decode(caf::actor_system& sys, worker_info info, decode_config cfg,
                        std::unique_ptr<engine> eng, std::shared_ptr<kv_transport> transport,
                        caf::actor supervisor, caf::actor kv_store, prefill_config as_prefill = {});

}  // namespace tokenmill
