#pragma once
/// Error codes that cross actor and RPC boundaries. Every value is documented; each
/// layer translates foreign errors into these once, where it first understands them.
#include <cstdint>
#include <string>
#include <string_view>

namespace tokenmill {

enum class errc : uint8_t {
  ok = 0,
  invalid_request,  ///< the client's request is malformed (empty prompt, bad ids, …)
  overloaded,       ///< admission control refused the request; retry later
  no_workers,       ///< the cluster has no live worker for a needed role
  worker_failed,    ///< a worker died or misbehaved while serving the request
  cancelled,        ///< the request was cancelled (client disconnect)
  kv_corrupt,       ///< received KV blocks failed their checksum or content check
  out_of_blocks,    ///< a KV pool cannot hold the request even when idle
  timeout,          ///< a bounded wait expired
  unavailable,      ///< the server cannot be reached or the connection was lost
  invalid_model,    ///< a model file is malformed, truncated or unsupported
  /// The caller did not prove who it is: no API key or a wrong one (RPC, HTTP 401), or a
  /// KV peer the supervisor did not announce. Retrying with the same credentials fails again.
  unauthenticated,
  internal,  ///< a bug: an invariant did not hold
};

/// Stable lower-case name, used in logs, RPC errors and JSON.
std::string_view to_string(errc e);

/// The code named `name` (as to_string gives it); errc::internal for unknown names.
errc errc_from_string(std::string_view name);

/// An error value: a code and a human-readable message that says what was wrong.
struct error_info {
  errc code = errc::ok;
  std::string message;
  explicit operator bool() const { return code != errc::ok; }
};

}  // namespace tokenmill
