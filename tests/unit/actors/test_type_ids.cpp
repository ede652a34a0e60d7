// The type-id block: every message of actors/protocol.hpp is registered under the wire name
// nodes have always used ("tokenmill::<type>"), so nodes built before and after the block
// still understand each other.
#include <catch2/catch.hpp>

#include <string>
#include <typeindex>

#include "actors/type_ids.hpp"

using namespace tokenmill;

namespace {

template <class T>
std::string registered_name(const caf::actor_system_config& cfg) {
  auto it = cfg.type_names_by_rtti.find(std::type_index(typeid(T)));
  return it == cfg.type_names_by_rtti.end() ? std::string("(not registered)") : it->second;
}

}  // namespace

TEST_CASE("type ids: every message keeps its wire name", "[type_ids]") {
  caf::actor_system_config cfg;
  register_types(cfg);
  CHECK(registered_name<error_info>(cfg) == "tokenmill::error_info");
  CHECK(registered_name<generate_request>(cfg) == "tokenmill::generate_request");
  CHECK(registered_name<decode_assignment>(cfg) == "tokenmill::decode_assignment");
  CHECK(registered_name<prefill_job>(cfg) == "tokenmill::prefill_job");
  CHECK(registered_name<kv_transfer>(cfg) == "tokenmill::kv_transfer");
  CHECK(registered_name<kv_write_done>(cfg) == "tokenmill::kv_write_done");
  CHECK(registered_name<engine_step_done>(cfg) == "tokenmill::engine_step_done");
  CHECK(registered_name<kv_ready>(cfg) == "tokenmill::kv_ready");
  CHECK(registered_name<prefill_failed>(cfg) == "tokenmill::prefill_failed");
  CHECK(registered_name<kv_drained>(cfg) == "tokenmill::kv_drained");
  CHECK(registered_name<drain_expired>(cfg) == "tokenmill::drain_expired");
  CHECK(registered_name<first_token>(cfg) == "tokenmill::first_token");
  CHECK(registered_name<token_batch>(cfg) == "tokenmill::token_batch");
  CHECK(registered_name<request_done>(cfg) == "tokenmill::request_done");
  CHECK(registered_name<cancel_request>(cfg) == "tokenmill::cancel_request");
  CHECK(registered_name<token_chunk>(cfg) == "tokenmill::token_chunk");
  CHECK(registered_name<request_summary>(cfg) == "tokenmill::request_summary");
  CHECK(registered_name<kv_event>(cfg) == "tokenmill::kv_event");
  CHECK(registered_name<overlap_query>(cfg) == "tokenmill::overlap_query");
  CHECK(registered_name<overlap_reply>(cfg) == "tokenmill::overlap_reply");
  CHECK(registered_name<register_worker>(cfg) == "tokenmill::register_worker");
  CHECK(registered_name<join_node>(cfg) == "tokenmill::join_node");
  CHECK(registered_name<node_peers>(cfg) == "tokenmill::node_peers");
  CHECK(registered_name<clock_update>(cfg) == "tokenmill::clock_update");
  CHECK(registered_name<membership>(cfg) == "tokenmill::membership");
  CHECK(registered_name<worker_status>(cfg) == "tokenmill::worker_status");
  CHECK(registered_name<cluster_status>(cfg) == "tokenmill::cluster_status");
  CHECK(registered_name<migrate_request>(cfg) == "tokenmill::migrate_request");
  CHECK(registered_name<migrate_offer>(cfg) == "tokenmill::migrate_offer");
  CHECK(registered_name<migrate_accept>(cfg) == "tokenmill::migrate_accept");
  CHECK(registered_name<migrate_commit>(cfg) == "tokenmill::migrate_commit");
  CHECK(registered_name<migrate_committed>(cfg) == "tokenmill::migrate_committed");
  CHECK(registered_name<migrate_abort>(cfg) == "tokenmill::migrate_abort");
  CHECK(registered_name<migrate_result>(cfg) == "tokenmill::migrate_result");
  CHECK(registered_name<attempt_moved>(cfg) == "tokenmill::attempt_moved");
  CHECK(registered_name<change_role>(cfg) == "tokenmill::change_role");
  CHECK(registered_name<role_changed>(cfg) == "tokenmill::role_changed");
  CHECK(registered_name<drain_request>(cfg) == "tokenmill::drain_request");
  CHECK(registered_name<drain_report>(cfg) == "tokenmill::drain_report");
  CHECK(registered_name<latency_samples>(cfg) == "tokenmill::latency_samples");
  CHECK(registered_name<kv_fetch_request>(cfg) == "tokenmill::kv_fetch_request");
  CHECK(registered_name<kv_fetch_reply>(cfg) == "tokenmill::kv_fetch_reply");
  CHECK(registered_name<kv_fetch_written>(cfg) == "tokenmill::kv_fetch_written");
  CHECK(registered_name<rebalance_request>(cfg) == "tokenmill::rebalance_request");
  // As add_message_type always did, vectors of a message are registered too.
  CHECK(registered_name<std::vector<token_chunk>>(cfg) == "std::vector<tokenmill::token_chunk>");
}

TEST_CASE("type ids: the block holds exactly the registered messages", "[type_ids]") {
  using block = caf::id_block::tokenmill;
  CHECK(block::begin == caf::first_custom_type_id);
  CHECK(block::end - block::begin == 46);
  CHECK(caf::type_id<token_batch>::value >= block::begin);
  CHECK(caf::type_id<token_batch>::value < block::end);
  CHECK(std::string(caf::type_name<cluster_status>::value) == "tokenmill::cluster_status");
}

// Regression (fuzz_kv_descriptor): CAF 0.17 sized a byte vector from the length on the wire
// before reading it, so a message of a few bytes claiming 4 GiB of KV bytes made the node
// allocate and zero 4 GiB. Byte vectors longer than the message are refused instead, and
// the wire format is unchanged.
TEST_CASE("type ids: a byte vector longer than its message is refused before it is allocated",
          "[type_ids]") {
  kv_transfer sent;
  sent.id = 7;
  sent.payload.dst_blocks = {4, 5};
  sent.payload.bytes.assign(64, 9);
  sent.checksums = {1, 2};
  pool_descriptor d;
  d.owner = 3;
  d.remote_key = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  d.worker_address = {10, 11};
  d.host = "boot";
  std::vector<char> buf;
  caf::binary_serializer sink(nullptr, buf);
  REQUIRE_FALSE(sink(sent, d));

  SECTION("a well-formed message round-trips") {
    caf::binary_deserializer src(static_cast<caf::execution_unit*>(nullptr), buf);
    kv_transfer got;
    pool_descriptor gd;
    REQUIRE_FALSE(src(got, gd));
    CHECK(got.payload.bytes == sent.payload.bytes);
    CHECK(got.payload.dst_blocks == sent.payload.dst_blocks);
    CHECK(gd.remote_key == d.remote_key);
    CHECK(gd.worker_address == d.worker_address);
    CHECK(gd.host == "boot");
  }
  SECTION("a length of 4 GiB - 1 with 64 bytes behind it") {
    // id (8 bytes), dst_blocks (1 + 2 * 4 bytes), then the bytes' length (varbyte).
    std::vector<char> bad(buf.begin(), buf.begin() + 8 + 1 + 8);
    for (char c : {'\xff', '\xff', '\xff', '\xff', '\x0f'})
      bad.push_back(c);
    bad.insert(bad.end(), 64, '\x09');
    caf::binary_deserializer src(static_cast<caf::execution_unit*>(nullptr), bad);
    kv_transfer got;
    CHECK(src(got));  // an error
    CHECK(got.payload.bytes.size() <= 64);
  }
}
