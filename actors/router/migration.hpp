#pragma once
/// Request migration and the router's watchdog, free of CAF (STYLE.md §2). The router
/// wires these decisions: when a worker serving a request is lost, fails, or stops making
/// progress, the request is re-submitted through the normal routing path as its original
/// prompt plus the tokens already delivered to the client, and the new attempt's tokens
/// continue at the next index. Seeded sampling depends only on (seed, absolute position)
/// and greedy on the context, so the resumed stream is the one the lost worker would have
/// produced (DESIGN.md §2).
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/api_types.hpp"
#include "common/errors.hpp"
#include "common/ids.hpp"

namespace tokenmill {

/// Attempts a request may be moved at most, unless configured otherwise.
inline constexpr uint32_t default_migration_limit = 3;

/// Why a request moved to another worker.
enum class migration_reason : uint8_t {
  worker_lost,      ///< its decode worker left the membership (node or actor down)
  prefill_lost,     ///< its remote prefill worker left before the first token
  transfer_failed,  ///< the prompt's KV transfer failed, timed out or arrived corrupt
  worker_failed,    ///< the decode (or prefill) engine failed while serving it
  stalled,          ///< its worker produced nothing for the router's stall timeout
  live_migration,   ///< moved live with its KV to another decode worker (drain, rebalance)
  drained,          ///< a draining worker (drain, role change) gave it back before decoding
  count_            ///< number of reasons; not a reason
};

/// Stable snake_case name, as it appears in summaries, metrics and logs.
std::string_view to_string(migration_reason r);

/// The reason named `name` (as to_string gives it), if any.
std::optional<migration_reason> migration_reason_from_string(std::string_view name);

/// Whether a request that ended on its decode worker with error `code` should move to
/// another worker (and why): failures of the worker or of the KV transfer migrate; errors
/// that would repeat anywhere (invalid_request, out_of_blocks, cancelled, …) do not.
std::optional<migration_reason> migration_for_error(errc code);

/// What the next attempt of a request runs.
struct resume_plan {
  std::vector<token_id> prompt;  ///< original prompt + every token delivered so far
  uint32_t max_tokens = 0;       ///< original max_tokens minus the tokens delivered
  uint32_t offset = 0;           ///< the new attempt's index 0 is this client index
};

/// The decision for a request whose worker is gone.
struct migration_decision {
  enum class kind : uint8_t {
    resubmit,  ///< route `plan` as the next attempt
    complete,  ///< nothing is left to generate: end the request with `reason`
    lost,      ///< cannot continue: end it with errc::worker_failed and `error`
  };
  kind what = kind::lost;
  resume_plan plan;
  finish_reason reason = finish_reason::none;  ///< for `complete`
  std::string error;                           ///< for `lost`: what happened and why it ends
};

/// Decides how a request continues after losing its attempt for `why` on `worker` (a
/// name, for the error text). `delivered` holds the tokens the client already received;
/// `migrations` counts the moves made before this one; `limit` is the most moves allowed
/// (0: migration off); a `drained` hand-back is routed again whatever the limit. `eos` is
/// the model's end-of-sequence id when the router knows it.
migration_decision plan_migration(std::span<const token_id> prompt, const request_options& opts,
                                  std::span<const token_id> delivered, uint32_t migrations,
                                  uint32_t limit, migration_reason why, std::string_view worker,
                                  std::optional<token_id> eos = std::nullopt);

/// The client index of token `index` of an attempt whose index 0 is client index `offset`,
/// or nothing when that index was already delivered (`next_index` is the next one the
/// client expects): a token delivered twice, or one of an attempt the request moved away
/// from, is dropped.
std::optional<uint32_t> client_index(uint32_t offset, uint32_t index, uint32_t next_index);

/// Router-minted attempt ids: the top bit set (frontends never set it), the router's
/// worker id in bits 48..62 and a counter below, so that ids stay cluster-unique when
/// several routers share a decode worker.
request_id mint_attempt_id(worker_id router, uint64_t counter);

/// True for ids of the form mint_attempt_id gives (reserved: clients may not use them).
constexpr bool is_attempt_id(request_id id) {
  return (id >> 63) != 0;
}

/// Where a request is, for the watchdog and for error texts.
enum class request_phase : uint8_t {
  routing,      ///< admitted, waiting for the kv-store's answer or for a route
  prefill,      ///< its remote prefill worker has not produced the first token yet
  first_token,  ///< on its decode worker (local prefill), no first token yet
  decoding,     ///< streaming tokens from its decode worker
};

/// Bounds the router's periodic tick enforces; durations in ns, 0 = no bound.
struct watchdog_limits {
  int64_t request_timeout_ns = 0;  ///< since admission, for the whole request
  int64_t stall_timeout_ns = 0;    ///< since the current attempt last made progress
};

enum class watchdog_verdict : uint8_t { ok, stalled, timed_out };

/// The verdict for one request at `now_ns`: it timed out (admitted at `admitted_ns`), its
/// attempt stalled (no progress since `progress_ns`: routed, first token or a token), or
/// it is fine. A request still being routed cannot stall (the router itself holds it);
/// the request timeout wins over a stall.
watchdog_verdict check_request(int64_t now_ns, int64_t admitted_ns, int64_t progress_ns,
                               request_phase phase, const watchdog_limits& limits);

/// Error text of a request that timed out in `phase` on `worker` after `elapsed_ns`.
std::string timeout_message(request_phase phase, std::string_view worker, int64_t elapsed_ns,
                            uint32_t delivered);

}  // namespace tokenmill
