#pragma once
/// The composition root of `tokenmill serve` (STYLE.md §3): builds the actor system, the
/// engines and the inline transport, and runs a whole cluster inside one process as a
/// manifest of one node (router, prefill workers, decode workers, kv-store, supervisor)
/// through the same wiring as a node of a multi-node cluster (cluster/detail/node_wiring),
/// with the RPC and HTTP frontend. Unlike a node it publishes no control port: no other
/// node joins it.
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include <caf/fwd.hpp>

#include "actors/actors.hpp"
#include "cluster/serving_defaults.hpp"
#include "common/result.hpp"
#include "engine/engine_factory.hpp"
#include "frontend/http_server.hpp"
#include "frontend/rpc_server.hpp"

namespace tokenmill {

struct embedded_config {
  std::string cluster_name = "tokenmill";
  engine_spec engine;
  router_config router;
  prefill_config prefill;
  decode_config decode;
  /// 0 = every prompt is prefilled on the decode worker; unset: choose_topology decides
  /// from the core count (cpu engine; 1 for the others).
  std::optional<uint32_t> prefill_workers;
  uint32_t decode_workers = 1;
  /// The cpu workers share one compute pool (serve_topology::shared_pool); unset:
  /// choose_topology decides.
  std::optional<bool> shared_pool;
  /// KV budget of all pools together, bytes; unset: default_kv_memory (serving_defaults.hpp).
  std::optional<uint64_t> kv_memory;
  /// The user set the prefill chunk (prefill.token_budget); else a decode worker that
  /// prefills between its steps may get a smaller one (choose_topology).
  bool prefill_chunk_given = false;
  /// Pool sizes fixed per worker of a role (blocks), instead of a share of the budget.
  std::optional<uint32_t> prefill_kv_blocks, decode_kv_blocks;
  rpc_server_config rpc;
  http_server_config http;
  bool http_enabled = true;            ///< serve the OpenAI HTTP API beside the RPC one
  std::string chat_template = "auto";  ///< see choose_chat_format
  uint32_t scheduler_threads = 2;      ///< CAF cooperative threads (workers run detached)
  double ready_timeout_s = 10;
};

class embedded_cluster {
 public:
  /// Starts everything and waits until the supervisor reports the cluster ready and the
  /// RPC port is bound. Errors say which part failed.
  static result<std::unique_ptr<embedded_cluster>> start(embedded_config cfg);
  ~embedded_cluster();

  uint16_t rpc_port() const { return port_; }
  /// The HTTP port (0 when the HTTP API is off).
  uint16_t http_port() const { return http_port_; }
  /// The model every worker serves.
  const model_info& model() const { return model_; }
  /// The workers and compute threads it runs (chosen or given).
  const serve_topology& topology() const { return topology_; }
  /// How the KV pools were sized.
  const kv_pool_plan& kv_pools() const { return kv_pools_; }
  caf::actor_system& system();
  /// Stops the frontend (cancelling requests in flight), then every actor.
  void stop();

 private:
  struct impl;
  explicit embedded_cluster(std::unique_ptr<impl> i);
  std::unique_ptr<impl> impl_;
  uint16_t port_ = 0;
  uint16_t http_port_ = 0;
  model_info model_;
  serve_topology topology_;
  kv_pool_plan kv_pools_;
};

}  // namespace tokenmill
