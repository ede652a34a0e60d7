#pragma once
/// Identifiers shared by every layer.
#include <cstdint>
#include <optional>
#include <string_view>

namespace tokenmill {

/// Cluster-unique request id, assigned by the frontend that accepted the request.
using request_id = uint64_t;
/// Token id in the model's vocabulary.
using token_id = int32_t;
/// Index of a block inside one worker's KV pool.
using block_id = uint32_t;
/// Cluster-unique worker id, assigned by the composition root.
using worker_id = uint32_t;

/// What an actor does in the cluster.
enum class role : uint8_t { router, prefill, decode, kv_store, supervisor, frontend };

/// Lower-case name of a role, as shown by `tokenmill status`.
constexpr std::string_view to_string(role r) {
  switch (r) {
    case role::router:
      return "router";
    case role::prefill:
      return "prefill";
    case role::decode:
      return "decode";
    case role::kv_store:
      return "kv_store";
    case role::supervisor:
      return "supervisor";
    case role::frontend:
      return "frontend";
  }
  return "unknown";
}

/// Why a generation ended.
enum class finish_reason : uint8_t {
  none,       ///< still running
  length,     ///< max_tokens reached
  stop,       ///< a stop token id was produced
  eos,        ///< the model's end-of-sequence token
  cancelled,  ///< the client went away or cancelled
  error,      ///< the request failed; see the error text
};

constexpr std::string_view to_string(finish_reason r) {
  switch (r) {
    case finish_reason::none:
      return "none";
    case finish_reason::length:
      return "length";
    case finish_reason::stop:
      return "stop";
    case finish_reason::eos:
      return "eos";
    case finish_reason::cancelled:
      return "cancelled";
    case finish_reason::error:
      return "error";
  }
  return "unknown";
}

/// The finish reason named `name` (as to_string gives it), if any.
constexpr std::optional<finish_reason> finish_reason_from_string(std::string_view name) {
  for (int i = 0; i <= static_cast<int>(finish_reason::error); ++i)
    if (to_string(static_cast<finish_reason>(i)) == name) return static_cast<finish_reason>(i);
  return std::nullopt;
}

/// The role named `name` (as to_string gives it), if any.
constexpr std::optional<role> role_from_string(std::string_view name) {
  for (int i = 0; i <= static_cast<int>(role::frontend); ++i)
    if (to_string(static_cast<role>(i)) == name) return static_cast<role>(i);
  return std::nullopt;
}

}  // namespace tokenmill
