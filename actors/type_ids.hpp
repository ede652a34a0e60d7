#pragma once
/// The single CAF type-id block of tokenmill (STYLE.md §1): every message type of
/// actors/protocol.hpp, in one list. CAF 0.17 still registers types by name at run time;
/// register_types() walks this block and registers each type under
/// `caf::type_name<T>::value`, the fully qualified name written here. Names go on the wire
/// between nodes, so they must be identical on every node: never rename an entry. CAF
/// 0.18+ requires this block; in 0.17 it assigns ids without further effect.
#include <caf/actor_system_config.hpp>
#include <caf/type_id.hpp>

#include "actors/protocol.hpp"

CAF_BEGIN_TYPE_ID_BLOCK(tokenmill, caf::first_custom_type_id)
CAF_ADD_TYPE_ID(tokenmill, (tokenmill::error_info))
CAF_ADD_TYPE_ID(tokenmill, (tokenmill::generate_request))
CAF_ADD_TYPE_ID(tokenmill, (tokenmill::decode_assignment))
CAF_ADD_TYPE_ID(tokenmill, (tokenmill::prefill_job))
CAF_ADD_TYPE_ID(tokenmill, (tokenmill::kv_transfer))
CAF_ADD_TYPE_ID(tokenmill, (tokenmill::kv_write_done))
CAF_ADD_TYPE_ID(tokenmill, (tokenmill::engine_step_done))
CAF_ADD_TYPE_ID(tokenmill, (tokenmill::kv_ready))
CAF_ADD_TYPE_ID(tokenmill, (tokenmill::prefill_failed))
CAF_ADD_TYPE_ID(tokenmill, (tokenmill::kv_drained))
CAF_ADD_TYPE_ID(tokenmill, (tokenmill::drain_expired))
CAF_ADD_TYPE_ID(tokenmill, (tokenmill::first_token))
CAF_ADD_TYPE_ID(tokenmill, (tokenmill::token_batch))
CAF_ADD_TYPE_ID(tokenmill, (tokenmill::request_done))
CAF_ADD_TYPE_ID(tokenmill, (tokenmill::cancel_request))
CAF_ADD_TYPE_ID(tokenmill, (tokenmill::token_chunk))
CAF_ADD_TYPE_ID(tokenmill, (tokenmill::request_summary))
CAF_ADD_TYPE_ID(tokenmill, (tokenmill::kv_event))
CAF_ADD_TYPE_ID(tokenmill, (tokenmill::overlap_query))
CAF_ADD_TYPE_ID(tokenmill, (tokenmill::overlap_reply))
CAF_ADD_TYPE_ID(tokenmill, (tokenmill::register_worker))
CAF_ADD_TYPE_ID(tokenmill, (tokenmill::join_node))
CAF_ADD_TYPE_ID(tokenmill, (tokenmill::node_peers))
CAF_ADD_TYPE_ID(tokenmill, (tokenmill::clock_update))
CAF_ADD_TYPE_ID(tokenmill, (tokenmill::membership))
CAF_ADD_TYPE_ID(tokenmill, (tokenmill::worker_status))
CAF_ADD_TYPE_ID(tokenmill, (tokenmill::cluster_status))
CAF_ADD_TYPE_ID(tokenmill, (tokenmill::change_role))
CAF_ADD_TYPE_ID(tokenmill, (tokenmill::role_changed))
CAF_ADD_TYPE_ID(tokenmill, (tokenmill::drain_request))
CAF_ADD_TYPE_ID(tokenmill, (tokenmill::drain_report))
CAF_ADD_TYPE_ID(tokenmill, (tokenmill::migrate_request))
CAF_ADD_TYPE_ID(tokenmill, (tokenmill::migrate_offer))
CAF_ADD_TYPE_ID(tokenmill, (tokenmill::migrate_accept))
CAF_ADD_TYPE_ID(tokenmill, (tokenmill::migrate_write_done))
CAF_ADD_TYPE_ID(tokenmill, (tokenmill::migrate_commit))
CAF_ADD_TYPE_ID(tokenmill, (tokenmill::migrate_committed))
CAF_ADD_TYPE_ID(tokenmill, (tokenmill::migrate_abort))
CAF_ADD_TYPE_ID(tokenmill, (tokenmill::migrate_expired))
CAF_ADD_TYPE_ID(tokenmill, (tokenmill::migrate_result))
CAF_ADD_TYPE_ID(tokenmill, (tokenmill::attempt_moved))
CAF_ADD_TYPE_ID(tokenmill, (tokenmill::latency_samples))
CAF_ADD_TYPE_ID(tokenmill, (tokenmill::kv_fetch_request))
CAF_ADD_TYPE_ID(tokenmill, (tokenmill::kv_fetch_reply))
CAF_ADD_TYPE_ID(tokenmill, (tokenmill::kv_fetch_written))
CAF_ADD_TYPE_ID(tokenmill, (tokenmill::rebalance_request))
CAF_END_TYPE_ID_BLOCK(tokenmill)

namespace tokenmill {

/// Registers every type of the block above with `cfg`, under its name in the block (also
/// `std::vector<T>` and `stream<T>`, as `add_message_type` does). Composition roots call it
/// once per actor system, before constructing the system.
void register_types(caf::actor_system_config& cfg);

}  // namespace tokenmill
