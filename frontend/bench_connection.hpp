#pragma once
/// The client connections `tokenmill bench` measures through: one request at a time over
/// Cap'n Proto RPC (client.hpp) or the OpenAI HTTP API (http_client.hpp, streamed), every
/// figure taken on the client's clock. connection_pool.hpp keeps one per worker thread.
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "common/api_types.hpp"
#include "common/result.hpp"
#include "frontend/client.hpp"
#include "frontend/http_client.hpp"
#include "frontend/workload.hpp"

namespace tokenmill::workload {

/// What the client saw of one request, for --record and the token-index check: every token
/// with its index as delivered, and the times on the client's steady clock (ns).
struct client_record {
  std::vector<delivered_token> tokens;  ///< in arrival order
  std::vector<int64_t> recv_ns;         ///< arrival of each of `tokens`
  int64_t sent_ns = 0;
  int64_t end_ns = 0;
  std::string outcome;  ///< finish reason (length, stop, eos) or error code (worker_failed, ...)
  uint32_t completion_tokens = 0;  ///< as the server counted them (0 when it failed)
  std::string prefill_worker, decode_worker;
  uint32_t migrations = 0;  ///< times the router moved it to another worker
  std::vector<std::string> migration_reasons;
};

/// One worker's connection to the server; runs one request at a time.
class connection {
 public:
  virtual ~connection() = default;
  /// Runs `r` with sampling `s` to completion; failures are results with ok = false. When
  /// `rec` is set, fills it (only connections that see token ids support that).
  virtual request_result run(const bench_request& r, const sampling_params& s,
                             client_record* rec) = 0;
  /// True after an error that left the connection unusable (reconnect before the next).
  virtual bool broken() const = 0;
};

/// Makes a connection (one per worker thread); errors are values.
using connection_factory = std::function<result<std::unique_ptr<connection>>()>;

/// Connections to `host`:`port` over HTTP (`http`) or RPC, each connect waiting up to 10 s.
/// `ignore_eos` goes into every request; `timeout_s` bounds each request. `security`: the
/// API key both send, and the TLS CA of an RPC port (HTTP: no TLS).
connection_factory connection_factory_for(bool http, std::string host, uint16_t port,
                                          bool ignore_eos, double timeout_s,
                                          client_options security = {});

/// run_rpc_one_loop's connections.
struct one_loop_spec {
  std::string host;
  uint16_t port = 0;
  client_options security;
  bool ignore_eos = false;
  double timeout_s = 600;
  size_t streams = 1;                                  ///< concurrent streams (connections)
  std::function<sampling_params(size_t)> sampling_of;  ///< request index -> its sampling
  std::function<void()> on_done;                       ///< after each request (may be empty)
};

/// Closed loop on the calling thread alone: spec.streams RPC connections on the thread's
/// one event loop, each running the next request of `reqs` (in index order) as its last
/// ends, until every request ran. One thread reads every stream, so a chunk's arrival is
/// stamped as the loop takes it from its socket, not when a thread of its own gets a core
/// (with a thread per stream on a few cores the client's own wake-ups land in the ITL).
/// Fills results[i] and, when `records` is not empty, records[i] as connection::run does.
/// Returns the streams it ran, or the first connect error.
result<size_t> run_rpc_one_loop(const one_loop_spec& spec, std::span<const bench_request> reqs,
                                std::span<request_result> results,
                                std::span<client_record> records);

/// "code: message", as the bench reports a failure.
std::string describe(const error_info& e);

/// "HTTP <status>: <message>": the message of an OpenAI error body, or the body itself
/// (its first 300 bytes).
std::string http_error_text(const http_response& r);

/// `j[key]` when it is a non-negative integer that fits 32 bits, else 0 (nlohmann::json or
/// ordered_json).
template <class Json>
uint32_t uint_field(const Json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_number_unsigned()) return 0;
  auto v = it->template get<uint64_t>();
  return v > UINT32_MAX ? 0 : static_cast<uint32_t>(v);
}

}  // namespace tokenmill::workload
