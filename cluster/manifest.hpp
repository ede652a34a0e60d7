#pragma once
/// The host manifest (DESIGN.md §8): which nodes make up a cluster, where each listens,
/// which actors each runs and with what options. Parsing applies every default, so that
/// the rest of the runtime reads resolved values only, and reports every problem of a
/// file at once, one line each: `FILE:LINE:COLUMN: FIELD.PATH: what is wrong; expected
/// what`. CAF-free: the conversions to the actors' config types are declared here against
/// forward declarations; include "actors/actors.hpp" to call them.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "actors/supervisor/planner_policy.hpp"
#include "cluster/engine_profile.hpp"
#include "cluster/restart_policy.hpp"
#include "common/ids.hpp"
#include "common/result.hpp"
#include "engine/engine_factory.hpp"

namespace tokenmill {

struct router_config;   // actors/actors.hpp
struct prefill_config;  // actors/actors.hpp
struct decode_config;   // actors/actors.hpp

/// Options every engine-running worker has.
struct worker_options {
  std::string engine;     ///< "sim", "cpu" or "cuda"; defaults.engine when not given
  uint32_t threads = 1;   ///< compute threads the engine may use
  uint32_t device = 0;    ///< accelerator ordinal (cuda engine)
  double slowdown = 1.0;  ///< multiplies the sim engine's modelled times (× model.sim.slowdown)
  /// Second KV tier (engine/kv_tier.hpp): blocks evicted from the pool kept in host memory
  /// and then in a disk file, onboarded on a later prefix hit. 0: off (the default).
  uint32_t kv_host_blocks = 0;
  uint32_t kv_disk_blocks = 0;  ///< needs kv_host_blocks > 0
  std::string kv_disk_dir;      ///< directory of the disk tier's file; empty: $TMPDIR or /tmp
  /// Chunk reuse (issue 17): share of a segmented prompt's reused tokens recomputed when the
  /// request names none, in [0, 1] (prefill_config::recompute_ratio).
  double recompute_ratio = 0.15;
  /// How a blend chooses the tokens it recomputes: "deviation" (CacheBlend) or "leading"
  /// (EPIC) (prefill_config::blend).
  std::string blend_policy = "deviation";
};

/// A prefill worker's options (`prefill: {...}`); defaults match prefill_config's.
struct prefill_options : worker_options {
  uint32_t kv_blocks = 1024;     ///< KV pool size, blocks
  bool kv_blocks_given = false;  ///< kv_blocks was written (else defaults.kv_memory may size it)
  uint32_t chunk = 512;          ///< prompt tokens per engine call
  uint32_t max_seqs = 16;        ///< prompts per engine call
};

/// A decode worker's options (`decode: {...}`); defaults match decode_config's.
struct decode_options : worker_options {
  uint32_t kv_blocks = 4096;     ///< KV pool size, blocks
  bool kv_blocks_given = false;  ///< kv_blocks was written (else defaults.kv_memory may size it)
  uint32_t max_batch = 64;       ///< sequences per decode step
  uint32_t local_prefill_budget = 512;  ///< prompt tokens per local prefill chunk
  /// Who streams a remotely prefilled sequence's first token: "prefill" (the prefill
  /// worker, lowest TTFT) or "decode" (this worker, as the sequence joins its first decode
  /// step: a uniform first gap) (decode_config::first_token).
  std::string first_token = "prefill";
};

/// One actor a node runs. Router, supervisor and kv_store take no options.
struct manifest_actor {
  role kind = role::router;
  /// "<node>.<role><k>", k counting this role on its node from 0 (e.g. "p0.prefill0");
  /// unique in the cluster because node names are.
  std::string name;
  /// prefill_options for role::prefill, decode_options for role::decode, else monostate.
  std::variant<std::monostate, prefill_options, decode_options> options;

  const prefill_options* prefill() const { return std::get_if<prefill_options>(&options); }
  const decode_options* decode() const { return std::get_if<decode_options>(&options); }
  /// The engine options of a prefill or decode worker; nullptr for other roles.
  const worker_options* worker() const;
};

/// One node: one `tokenmill node` process.
struct manifest_node {
  std::string name;     ///< unique, [A-Za-z0-9_-]+
  std::string address;  ///< IP address or host name the node listens on
  std::string ssh;      ///< "user@host" to launch over ssh; empty = launch locally
  uint16_t port = 0;    ///< CAF control port; 7800 + the node's index when not given
  /// HTTP port serving /metrics and /health. The frontend's node serves them on
  /// frontend.http_port (with the OpenAI API); another node on this port, by default
  /// frontend.http_port + 1 + the node's index.
  uint16_t http_port = 0;
  /// The address is loopback or "localhost" (derived; the launcher may start it directly).
  bool local = false;
  std::vector<manifest_actor> actors;

  /// How many of the node's actors have role `r`.
  size_t count(role r) const;
};

/// The model every engine serves: a file, or the sim engine's timing model.
struct manifest_model {
  /// The model file resolved against the manifest's directory; empty for a sim model.
  std::string path;
  /// The path as written (lexically normalised). The hash covers this, not `path`, so
  /// that copies of one manifest in different directories agree.
  std::string declared_path;
  bool sim = false;  ///< `model: {sim: ...}`; then sim_cfg holds it, else sim_cfg is unused
  /// The sim timing model, with the layout from `kv_layout` and defaults.block_tokens.
  sim_config sim_cfg;
};

struct manifest_defaults {
  std::string engine = "sim";        ///< "sim", "cpu" or "cuda"; "cpu" when the model is a file
  uint32_t block_tokens = 16;        ///< tokens per KV block
  std::string kv_transport = "ucx";  ///< "ucx" (between node processes) or "inline"
  /// Each node's KV budget, bytes: the node's workers without kv_blocks share it
  /// (plan_kv_pools, cluster/serving_defaults.hpp). Unset: every pool is its kv_blocks.
  std::optional<uint64_t> kv_memory;
  /// Where each node's cpu engine keeps the model's weights (loaded once per node, shared
  /// by its workers): "on" copies them into transparent huge pages, "off" maps the file,
  /// "auto" is on when the kernel's THP mode is madvise or always (engine/weights_memory.hpp).
  std::string weights_hugepages = "auto";
};

/// Where clients connect: the RPC and HTTP servers beside the router.
struct manifest_frontend {
  std::string node;  ///< the node that runs the router
  std::string host;  ///< bind address; the node's address when not given
  uint16_t rpc_port = 7700;
  uint16_t http_port = 8000;
  /// API keys for RPC and HTTP (as `serve --api-key-file`; the frontend's node reads it at
  /// start and on SIGHUP); empty: $TOKENMILL_API_KEY of the node, else open. Relative paths
  /// resolve against the manifest's directory, as do tls_cert and tls_key.
  std::string api_key_file;
  bool protect_metrics = false;  ///< with keys: /metrics and /debug/* need a key too
  std::string tls_cert;          ///< both set: the RPC and HTTP ports speak TLS
  std::string tls_key;
};

struct manifest_router {
  uint32_t local_prefill_threshold = 0;         ///< tokens; 0 = always prefill remotely
  uint32_t max_inflight = 1024;                 ///< requests admitted and not finished
  uint64_t max_queued_prompt_tokens = 1 << 22;  ///< prompt tokens not yet prefilled
  uint32_t migration_limit = 3;      ///< moves per request when its worker fails (0: off)
  uint32_t request_timeout_s = 600;  ///< server-side bound of a request, s (0: none)
  uint32_t stall_timeout_s = 120;    ///< no token from a worker this long: move, s (0: off)
  /// Adaptive admission (actors/router/admission_policy.hpp): refuse a request whose
  /// estimated queue wait exceeds this, ms (0: off, only the fixed limits apply).
  uint32_t max_queue_ms = 2000;
  /// Refuse a request whose unloaded start time plus estimated wait exceeds this time to
  /// first token, ms (0: off).
  uint32_t ttft_slo_ms = 0;
  uint32_t admission_window_ms = 5000;  ///< the service rate is measured over this, ms
  uint32_t admission_min_waiting = 16;  ///< always admit while fewer requests wait
  /// The cost model's weights (actors/router/routing_policy.hpp, routing_weights): each
  /// scales one term of a plan's estimated cost in seconds; 0 turns the term off.
  double prefill_weight = 1.0;   ///< time to compute the uncached tokens
  double queue_weight = 1.0;     ///< prompt work queued in front of the request
  double transfer_weight = 1.0;  ///< time to move the prompt's KV to the decode worker
  double load_weight = 1.0;      ///< active decode requests × load_ms_per_request
  /// Prefill speed of a worker whose engine `profile` does not describe, tokens/s.
  double prefill_tokens_per_s = 4000;
  double kv_transfer_gbps = 5;       ///< KV bandwidth for the transfer term, GB/s (1e9 B/s)
  double load_ms_per_request = 10;   ///< load term per active decode request, ms
  double kv_host_onboard_gbps = 10;  ///< copy rate from a worker's host tier into its pool, GB/s
  double kv_disk_onboard_gbps = 2;   ///< copy rate from a worker's disk tier into its pool, GB/s
  /// Fetch instead of recompute (actors/router/fetch_policy.hpp): the worker that computes a
  /// prompt (decode or prefill) may pull the prefix another worker holds;
  /// `fetch_overhead_ms` is the fixed cost of one fetch.
  bool fetch = true;
  double fetch_overhead_ms = 0.5;
  /// `tokenmill profile` output (resolved against the manifest's directory; empty: none).
  /// Workers running the engine it profiled use its prefill curve.
  std::string profile;
  std::string profile_declared;                ///< as written (lexically normalised); hashed
  std::optional<engine_profile> profile_data;  ///< parsed when `profile` is given
};

struct manifest_failure {
  uint32_t heartbeat_ms = 200;            ///< period of node heartbeats, ms
  uint32_t connection_timeout_ms = 1000;  ///< a silent peer is down after this, ms
};

/// The UCX KV transport's limits (used with defaults.kv_transport: ucx).
struct manifest_ucx {
  uint32_t op_timeout_ms = 5000;     ///< a KV write not done by then fails (peer hung/unreachable)
  uint32_t stall_timeout_ms = 1000;  ///< a write without progress this long is reported stalled
  uint32_t window_mib = 256;         ///< KV write bytes in flight per node; more wait in turn
};

/// Mutual TLS between nodes (`security: {tls: ...}`): every node presents its certificate,
/// signed by the cluster's CA, and accepts only peers whose certificate chains to that CA.
/// Paths are resolved against the manifest's directory; "{node}" in `cert` and `key`
/// stands for the node's name (one manifest, a certificate per node).
struct manifest_tls {
  std::string ca;    ///< the cluster CA's certificate (PEM)
  std::string cert;  ///< the node's certificate (PEM), may contain {node}
  std::string key;   ///< the node's private key (PEM), may contain {node}
  /// `tls: auto`: the layout `tokenmill certs init` writes in certs/ beside the manifest
  /// (ca.crt, NODE.crt, NODE.key); `tokenmill launch` creates what is missing.
  bool generated = false;

  /// `cert` with {node} replaced by `node`.
  std::string cert_for(std::string_view node) const;
  /// `key` with {node} replaced by `node`.
  std::string key_for(std::string_view node) const;
};

/// `security:`: how nodes authenticate each other. Without TLS, a cluster whose nodes do
/// not all listen on loopback is refused unless `insecure: true` says so in so many words.
struct manifest_security {
  std::optional<manifest_tls> tls;  ///< absent: plain TCP between nodes
  /// The cluster secret's file (resolved); a node joins only by proving it knows the
  /// secret (HMAC over a challenge of the supervisor). Empty: no secret.
  std::string secret_file;
  bool insecure = false;  ///< `insecure: true`: plaintext between hosts, on purpose
  /// The certificates directory of `tls: auto` (resolved), where launch creates them.
  std::string certs_dir;
};

/// A parsed, validated manifest with every default applied.
struct manifest {
  std::string path;  ///< the file it was read from (not covered by the hash)
  std::string cluster;
  manifest_model model;
  manifest_defaults defaults;
  manifest_frontend frontend;
  manifest_router router;
  manifest_failure failure;
  manifest_ucx ucx;
  /// `planner:` turns the planner in the supervisor on: it flips workers between prefill
  /// and decode to meet the TTFT/ITL objectives (actors/supervisor/planner_policy.hpp).
  /// Absent: roles stay as the nodes say. decode_max_batch is taken from the first decode
  /// worker's max_batch.
  std::optional<planner_config> planner;
  /// How `tokenmill launch` restarts a node that dies after the cluster is ready. Only the
  /// launcher reads it, so it is not part of the hash (see canonical_form).
  restart_config restart;
  /// Node authentication. The hash covers whether TLS, a secret and insecure are on, not
  /// the paths (each host may keep its files elsewhere).
  manifest_security security;
  std::vector<manifest_node> nodes;

  /// The node named `name`, or nullptr.
  const manifest_node* find_node(std::string_view name) const;
};

struct manifest_options {
  /// Fail when a control, RPC or HTTP port of a local node (loopback or "localhost")
  /// cannot be bound right now. `manifest check` wants it; a node about to bind its own
  /// port, and tests, turn it off.
  bool check_ports = true;
};

/// Reads and validates `file`; relative model paths resolve against its directory. A
/// missing file, a directory, an empty file and every invalid field are errors
/// (errc::invalid_request) whose message has one line per problem.
result<manifest> load_manifest(const std::string& file, const manifest_options& opts = {});

/// Validates manifest text. `file_name_for_errors` prefixes every error line;
/// `base_dir` is where relative model paths resolve.
result<manifest> parse_manifest(const std::string& yaml_text,
                                const std::string& file_name_for_errors,
                                const std::string& base_dir, const manifest_options& opts = {});

/// The canonical serialisation of the resolved content, one `key=value` line each: equal
/// for manifests that mean the same (key order, spelled-out defaults, flow or block
/// style), different when anything that matters changes. Excludes `path`, and `restart`:
/// no node acts on it (only the launcher does), so nodes need not agree on it, and a
/// restarted node is not refused because its launcher's policy was edited meanwhile.
std::string canonical_form(const manifest& m);

/// XXH3-64 of canonical_form(): nodes refuse peers whose manifest hash differs.
uint64_t manifest_hash(const manifest& m);

/// Human-readable resolved cluster for `tokenmill manifest check`: the model, defaults,
/// frontend endpoint, router and failure settings, and every node with address, port,
/// ssh and actors with their options.
std::string describe(const manifest& m);

/// The router's configuration from the manifest: limits, timeouts, and the cost model's
/// weights and speeds (from router.profile for the workers running its engine, sampled at
/// each worker's chunk size). kv_bytes_per_block is left for the caller, which knows the
/// model's layout.
router_config to_router_config(const manifest& m);
/// A prefill worker's configuration.
prefill_config to_prefill_config(const prefill_options& o);
/// A decode worker's configuration.
decode_config to_decode_config(const decode_options& o);
/// The engine a worker runs: its engine kind, and the model's sim timing (with
/// defaults.block_tokens and the worker's slowdown) for the sim engine.
/// For a model file, the spec names the path; the node loads it once (load_engine_model).
engine_spec to_engine_spec(const manifest& m, const worker_options& o);

}  // namespace tokenmill
