#pragma once
/// The one wiring path of a node's actors (STYLE.md §3), shared by both composition roots:
/// `tokenmill node` (cluster/node.cpp, one node of a multi-node manifest) and
/// `tokenmill serve` (cluster/embedded_cluster.cpp, a manifest of one node). The roots
/// build the actor system, the engines and the transport; these functions spawn what the
/// node's manifest entry names and hand every dependency in.
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <caf/fwd.hpp>

#include "actors/actors.hpp"
#include "cluster/manifest.hpp"
#include "common/result.hpp"
#include "frontend/http_server.hpp"
#include "frontend/rpc_server.hpp"

namespace tokenmill::detail {

/// CAF's cooperative scheduler for a node process: `threads` workers that sleep while
/// there is nothing to do. CAF 0.17's work stealing has each worker poll for ~25 ms after
/// every job (500 sleeps of 50 us) and then wake every 10 ms to try stealing: with the
/// router's 1 s tick that was about 1% of a core per worker at idle, the whole idle CPU of
/// `serve`, and on a 2-core machine the polling competes with the engine threads. A
/// message from outside the scheduler (engine threads, frontends, the network) wakes a
/// sleeping worker at once anyway, so workers poll briefly (10 sleeps) and retry stealing
/// every 50 ms.
void configure_scheduler(caf::actor_system_config& cfg, size_t threads);

/// Spawns the supervisor when node `index` of `m` runs it (else returns an invalid
/// handle): it expects every other actor of the manifest to register, and joining nodes
/// to run `m` and serve `model_name`. With a `secret`, joining nodes must prove they know
/// it; with `members_from_joined_nodes`, workers register only from joined nodes (a
/// cluster of node processes; the embedded cluster has no joins); with `certificates` (TLS),
/// a node joins only under a name its certificate carries.
caf::actor spawn_node_supervisor(caf::actor_system& sys, const manifest& m, uint32_t index,
                                 const std::string& model_name,
                                 const std::vector<uint8_t>& secret = {},
                                 bool members_from_joined_nodes = false,
                                 std::shared_ptr<const node_certificates> certificates = {});

/// What a composition root built for one node's actors.
struct node_services {
  /// The node's one KV transport, shared by its workers.
  std::shared_ptr<kv_transport> transport;
  /// The engine of one worker (a prefill or decode actor of the node), in spawn order.
  std::function<result<std::unique_ptr<engine>>(const manifest_actor&)> engine_for;
  /// The router's configuration, resolved (the model's block size and EOS included).
  router_config router;
  /// How long a decode worker holds the blocks of a sequence whose KV may still be being
  /// written (decode_config::kv_drain_timeout; a prefill worker the blocks of a fetch it
  /// gave up on, prefill_config::kv_drain_timeout), ms.
  std::chrono::milliseconds kv_drain_timeout{6000};
  /// Pool sizes (blocks) from the node's KV budget (defaults.kv_memory) for its workers whose
  /// manifest entry gives no kv_blocks; unset: their kv_blocks default.
  std::optional<uint32_t> prefill_blocks, decode_blocks;
  /// The node's compiled grammars over the model's vocabulary, shared by its workers
  /// (constrained decoding); null: its workers refuse constrained requests.
  std::shared_ptr<grammar::grammar_cache> grammars;
};

/// A grammar cache over `tok`'s vocabulary, padded with unusable ids to the model's
/// `model_vocab` (the logits' width); `eos` ends constrained output.
std::shared_ptr<grammar::grammar_cache> make_grammar_cache(const tokenizer& tok,
                                                           uint32_t model_vocab, token_id eos);

/// The actors spawn_node_actors spawned, supervisor not included.
struct node_actors {
  caf::actor router;                ///< invalid when the node runs none
  caf::actor kv_store;              ///< invalid when the node runs none
  std::vector<caf::actor> workers;  ///< every one, in spawn order; each answers status_atom
  std::vector<std::string> names;   ///< every actor of the node entry (supervisor included)
};

/// Spawns the actors of node `index` of `m` except the supervisor: the kv-store first (a
/// decode worker needs its handle), then the others in manifest order. Worker ids are
/// `index * 256` counting up in that order; every actor registers with `supervisor`.
/// Actors spawned before a failure are in `spawned`, so the caller can shut them down.
result<node_actors> spawn_node_actors(caf::actor_system& sys, const manifest& m, uint32_t index,
                                      const caf::actor& supervisor, node_services& services,
                                      std::vector<caf::actor>& spawned);

/// How the frontend beside a node's router serves clients.
struct frontend_plan {
  std::string node_name;  ///< labels the node's metrics
  rpc_server_config rpc;
  /// The OpenAI HTTP API; none: RPC only. Its chat_format and collect_node_metrics are
  /// filled in here.
  std::optional<http_server_config> http;
  std::string chat_template = "auto";  ///< see choose_chat_format
  std::string model_chat_template;     ///< the model file's own template ("" if none)
};

/// The running frontend servers of a node.
struct frontend_servers {
  std::unique_ptr<rpc_server> rpc;
  std::unique_ptr<http_server> http;  ///< null when the plan had no HTTP API
  uint16_t rpc_port = 0;
  uint16_t http_port = 0;  ///< 0 without the HTTP API
};

/// Starts the RPC server, then the HTTP server, in front of `router`; they share one
/// metrics registry, and /metrics also exports `transport`'s counters. On an error
/// nothing stays running.
result<frontend_servers> start_frontend(caf::actor_system& sys, const caf::actor& router,
                                        const caf::actor& supervisor,
                                        std::shared_ptr<const tokenizer> tok,
                                        const model_info& model, frontend_plan plan,
                                        std::shared_ptr<kv_transport> transport);

}  // namespace tokenmill::detail
