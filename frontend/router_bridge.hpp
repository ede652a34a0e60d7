#pragma once
/// The one actor between the router and a frontend's own thread (DESIGN.md §6). The HTTP
/// and the RPC server each run a non-actor event loop (Asio, kj); each spawns this bridge
/// and names it as generate_request::client, so the router's token chunks and summaries,
/// and the supervisor's answers to status queries, reach that loop through the callbacks.
#include <cstdint>
#include <functional>

#include <caf/fwd.hpp>

#include "common/api_types.hpp"
#include "common/result.hpp"

namespace tokenmill {

struct token_chunk;
struct request_summary;

/// Where the bridge delivers. Every callback runs on a CAF worker thread, so each must
/// only hand its argument over to the frontend's thread (an Asio post, an eventfd inbox);
/// whatever the callbacks capture lives as long as the bridge actor.
struct router_bridge_callbacks {
  /// The router's tokens of one request, in order (router -> frontend).
  std::function<void(token_chunk&&)> on_chunk;
  /// The last message of one request (router -> frontend).
  std::function<void(request_summary&&)> on_summary;
  /// The answer to status query `call`: the supervisor's status, or errc::unavailable when
  /// it did not answer within 3 s.
  std::function<void(uint64_t call, result<cluster_status>)> on_status;
  /// The answer to drain call `call` (drain_request to the supervisor): its report, or one
  /// whose error says why there is none (timeout, no answer). Unset: drains are refused.
  std::function<void(uint64_t call, drain_summary)> on_drain = {};
};

/// Spawns the bridge. Sending it `(status_atom, call)` asks the supervisor for the cluster
/// status and answers through `on_status` with the same `call`; `(drain_request, call,
/// timeout_ms)` asks it to drain a node and answers through `on_drain`. The caller ends it
/// with an exit message when its loop stops.
caf::actor spawn_router_bridge(caf::actor_system& sys, caf::actor supervisor,
                               router_bridge_callbacks callbacks);

}  // namespace tokenmill
