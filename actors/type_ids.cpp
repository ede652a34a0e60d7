#include "actors/type_ids.hpp"

#include "actors/protocol.hpp"

namespace tokenmill {

void register_types(caf::actor_system_config& cfg) {
  cfg.add_message_type<error_info>("tokenmill::error_info");
  cfg.add_message_type<generate_request>("tokenmill::generate_request");
  cfg.add_message_type<decode_assignment>("tokenmill::decode_assignment");
  cfg.add_message_type<prefill_job>("tokenmill::prefill_job");
  cfg.add_message_type<kv_transfer>("tokenmill::kv_transfer");
  cfg.add_message_type<kv_write_done>("tokenmill::kv_write_done");
  cfg.add_message_type<engine_step_done>("tokenmill::engine_step_done");
  cfg.add_message_type<kv_ready>("tokenmill::kv_ready");
  cfg.add_message_type<prefill_failed>("tokenmill::prefill_failed");
  cfg.add_message_type<kv_drained>("tokenmill::kv_drained");
  cfg.add_message_type<drain_expired>("tokenmill::drain_expired");
  cfg.add_message_type<first_token>("tokenmill::first_token");
  cfg.add_message_type<token_batch>("tokenmill::token_batch");
  cfg.add_message_type<request_done>("tokenmill::request_done");
  cfg.add_message_type<cancel_request>("tokenmill::cancel_request");
  cfg.add_message_type<token_chunk>("tokenmill::token_chunk");
  cfg.add_message_type<request_summary>("tokenmill::request_summary");
  cfg.add_message_type<kv_event>("tokenmill::kv_event");
  cfg.add_message_type<overlap_query>("tokenmill::overlap_query");
  cfg.add_message_type<overlap_reply>("tokenmill::overlap_reply");
  cfg.add_message_type<register_worker>("tokenmill::register_worker");
  cfg.add_message_type<join_node>("tokenmill::join_node");
  cfg.add_message_type<node_peers>("tokenmill::node_peers");
  cfg.add_message_type<clock_update>("tokenmill::clock_update");
  cfg.add_message_type<membership>("tokenmill::membership");
  cfg.add_message_type<worker_status>("tokenmill::worker_status");
  cfg.add_message_type<cluster_status>("tokenmill::cluster_status");
}

}  // namespace tokenmill
