#pragma once
/// Spawn functions of every actor. The composition root (cluster/) builds their
/// configuration and dependencies and passes them in; no actor looks anything up.
#include <memory>
#include <string>

#include <caf/all.hpp>

#include "actors/protocol.hpp"
#include "actors/router/routing_policy.hpp"
#include "engine/engine.hpp"
#include "transport/kv_transport.hpp"

namespace tokenmill {

/// The supervisor: membership (register, monitor, mark down), readiness, cluster status.
caf::actor spawn_supervisor(caf::actor_system& sys, std::string cluster_name);

/// The kv-store: global index of which worker holds which block hashes.
caf::actor spawn_kv_store(caf::actor_system& sys, worker_info info, caf::actor supervisor);

struct router_config {
  admission_limits limits;
  uint32_t local_prefill_threshold = 0;  ///< tokens; 0 = always prefill remotely when possible
  uint32_t block_tokens = 16;
};

/// The router: admission, worker choice, token streaming, timelines.
caf::actor spawn_router(caf::actor_system& sys, worker_info info, router_config cfg,
                        caf::actor supervisor);

struct prefill_config {
  uint32_t num_blocks = 1024;   ///< KV pool size
  uint32_t token_budget = 512;  ///< prompt tokens per engine call (chunk size)
  uint32_t max_seqs = 16;       ///< prompts per engine call
};

/// A prefill worker (detached: engine compute runs on its own thread).
caf::actor spawn_prefill(caf::actor_system& sys, worker_info info, prefill_config cfg,
                         std::unique_ptr<engine> eng, std::shared_ptr<kv_transport> transport,
                         caf::actor supervisor);

struct decode_config {
  uint32_t num_blocks = 4096;           ///< KV pool size
  uint32_t max_batch = 64;              ///< sequences per decode step
  uint32_t local_prefill_budget = 512;  ///< prompt tokens per local prefill chunk
};

/// A decode worker (detached). Prefills locally when the router assigns no prefill worker.
caf::actor spawn_decode(caf::actor_system& sys, worker_info info, decode_config cfg,
                        std::unique_ptr<engine> eng, std::shared_ptr<kv_transport> transport,
                        caf::actor supervisor, caf::actor kv_store);

}  // namespace tokenmill
