#include "actors/router/migration.hpp"

#include <algorithm>

#include <fmt/format.h>

namespace tokenmill {

std::string_view to_string(migration_reason r) {
  switch (r) {
    case migration_reason::worker_lost:
      return "worker_lost";
    case migration_reason::prefill_lost:
      return "prefill_lost";
    case migration_reason::transfer_failed:
      return "transfer_failed";
    case migration_reason::worker_failed:
      return "worker_failed";
    case migration_reason::stalled:
      return "stalled";
    case migration_reason::live_migration:
      return "live_migration";
    case migration_reason::drained:
      return "drained";
    case migration_reason::count_:
      break;
  }
  return "unknown";
}

std::optional<migration_reason> migration_reason_from_string(std::string_view name) {
  for (int i = 0; i < static_cast<int>(migration_reason::count_); ++i)
    if (to_string(static_cast<migration_reason>(i)) == name)
      return static_cast<migration_reason>(i);
  return std::nullopt;
}

std::optional<migration_reason> migration_for_error(errc code) {
  switch (code) {
    // The KV never arrived intact: a transport or prefill-side fault (kv_transport and
    // decode_actor use these for failed, timed-out, refused and corrupt transfers).
    case errc::kv_corrupt:
    case errc::timeout:
    case errc::unavailable:
    // A KV write the transport refused (its peer was not announced yet, or any more): the
    // membership moves on, and another worker or a retry can serve the request.
    case errc::unauthenticated:
      return migration_reason::transfer_failed;
    // An engine threw (decode_actor / prefill_actor report `internal`), or a worker
    // reported a failure of its own.
    case errc::internal:
    case errc::worker_failed:
      return migration_reason::worker_failed;
    // The request itself is at fault, or it was meant to end: it would fail the same way
    // anywhere, or must not continue.
    case errc::ok:
    case errc::invalid_request:
    case errc::overloaded:
    case errc::no_workers:
    case errc::cancelled:
    case errc::out_of_blocks:
    case errc::invalid_model:
      return std::nullopt;
  }
  return std::nullopt;
}

migration_decision plan_migration(std::span<const token_id> prompt, const request_options& opts,
                                  std::span<const token_id> delivered, uint32_t migrations,
                                  uint32_t limit, migration_reason why, std::string_view worker,
                                  std::optional<token_id> eos) {
  migration_decision d;
  const auto n = static_cast<uint32_t>(delivered.size());
  // A request whose last delivered token already ended it is complete: the lost worker
  // only had not reported it yet. Continuing would generate past the end.
  if (n >= opts.max_tokens) {
    d.what = migration_decision::kind::complete;
    d.reason = finish_reason::length;
    return d;
  }
  if (n > 0) {
    auto last = delivered.back();
    if (std::find(opts.stop_ids.begin(), opts.stop_ids.end(), last) != opts.stop_ids.end()) {
      d.what = migration_decision::kind::complete;
      d.reason = finish_reason::stop;
      return d;
    }
    if (eos && !opts.ignore_eos && last == *eos) {
      d.what = migration_decision::kind::complete;
      d.reason = finish_reason::eos;
      return d;
    }
  }
  // A drain's hand-back is no failure (the attempt had not started decoding): it is routed
  // again even with migration off or at the limit.
  if (why != migration_reason::drained && migrations >= limit) {
    d.what = migration_decision::kind::lost;
    d.error = limit == 0
                  ? fmt::format("worker {} failed ({}) and request migration is off", worker,
                                to_string(why))
                  : fmt::format(
                        "worker {} failed ({}) after the request had moved {} time{}; the "
                        "migration limit is {}",
                        worker, to_string(why), migrations, migrations == 1 ? "" : "s", limit);
    return d;
  }
  d.what = migration_decision::kind::resubmit;
  d.plan.prompt.reserve(prompt.size() + delivered.size());
  d.plan.prompt.assign(prompt.begin(), prompt.end());
  d.plan.prompt.insert(d.plan.prompt.end(), delivered.begin(), delivered.end());
  d.plan.max_tokens = opts.max_tokens - n;
  d.plan.offset = n;
  return d;
}

std::optional<uint32_t> client_index(uint32_t offset, uint32_t index, uint32_t next_index) {
  uint64_t abs = uint64_t{offset} + index;
  if (abs < next_index || abs > UINT32_MAX) return std::nullopt;
  return static_cast<uint32_t>(abs);
}

request_id mint_attempt_id(worker_id router, uint64_t counter) {
  return (uint64_t{1} << 63) | ((uint64_t{router} & 0x7fff) << 48) |
         (counter & ((uint64_t{1} << 48) - 1));
}

watchdog_verdict check_request(int64_t now_ns, int64_t admitted_ns, int64_t progress_ns,
                               request_phase phase, const watchdog_limits& limits) {
  if (limits.request_timeout_ns > 0 && now_ns - admitted_ns >= limits.request_timeout_ns)
    return watchdog_verdict::timed_out;
  if (phase != request_phase::routing && limits.stall_timeout_ns > 0 &&
      now_ns - progress_ns >= limits.stall_timeout_ns)
    return watchdog_verdict::stalled;
  return watchdog_verdict::ok;
}

std::string timeout_message(request_phase phase, std::string_view worker, int64_t elapsed_ns,
                            uint32_t delivered) {
  const double s = static_cast<double>(elapsed_ns) / 1e9;
  switch (phase) {
    case request_phase::routing:
      return fmt::format("request timed out after {:.3f} s awaiting routing", s);
    case request_phase::prefill:
      return fmt::format("request timed out after {:.3f} s in prefill on worker {}", s, worker);
    case request_phase::first_token:
      return fmt::format(
          "request timed out after {:.3f} s awaiting its first token on decode worker {}", s,
          worker);
    case request_phase::decoding:
      return fmt::format(
          "request timed out after {:.3f} s in decode on worker {} ({} tokens "
          "delivered)",
          s, worker, delivered);
  }
  return fmt::format("request timed out after {:.3f} s", s);
}

}  // namespace tokenmill
