#pragma once
/// Converts between Cap'n Proto messages (schema/tokenmill.capnp) and plain structs
/// (common/api_types.hpp). Nothing else in tokenmill touches readers or builders.
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "common/api_types.hpp"
#include "schema/tokenmill.capnp.h"

namespace tokenmill::codec {

generate_params decode(rpc::GenerateRequest::Reader r);
void encode(const generate_params& p, rpc::GenerateRequest::Builder b);

generation_summary decode(rpc::Summary::Reader r);
void encode(const generation_summary& s, rpc::Summary::Builder b);

cluster_status decode(rpc::ClusterStatus::Reader r);
void encode(const cluster_status& s, rpc::ClusterStatus::Builder b);

drain_summary decode(rpc::DrainReport::Reader r);
void encode(const drain_summary& s, rpc::DrainReport::Builder b);

model_summary decode(rpc::ModelInfo::Reader r);
void encode(const model_summary& m, rpc::ModelInfo::Builder b);

/// A token chunk in plain form.
struct chunk {
  uint32_t first_index = 0;
  std::vector<token_id> ids;
  std::string text;
  int64_t sent_ns = 0;
  std::vector<token_logprobs> logprobs;  ///< one per id when asked for, else empty
};
chunk decode(rpc::TokenChunk::Reader r);
void encode(const chunk& c, rpc::TokenChunk::Builder b);

std::vector<token_id> decode_ids(capnp::List<int32_t>::Reader r);
void encode_ids(std::span<const token_id> ids, capnp::List<int32_t>::Builder b);

}  // namespace tokenmill::codec
