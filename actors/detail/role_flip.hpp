#pragma once
/// A worker's role change in place (change_role): what the prefill and the
/// decode worker share to stop taking work, report a drain, and hand their engine and KV
/// pool to a worker of the other role without reloading or reallocating anything.
///
/// A CAF actor cannot change its state type, so a flip spawns a *successor* actor of the
/// new role and moves the kv_worker (engine, engine thread, pool, prefix cache, transport
/// registration) into it once nothing is in flight. The worker's address does not change:
/// the actor first spawned for the worker id (its *face*, the handle the composition root,
/// the supervisor and the routers know) forwards every message to the current successor
/// from then on and is linked with it, so shutdown and failure propagate both ways. The
/// successor registers with the supervisor under the same id and the new role with the
/// face as its handle, then reports role_changed. A later flip of a successor retargets
/// the face and leaves the old successor forwarding late messages for a while.
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <caf/all.hpp>

#include "actors/actors.hpp"
#include "actors/detail/worker_common.hpp"
#include "actors/protocol.hpp"

namespace tokenmill {

/// successor -> the worker's face: forward to this actor from now on.
using forward_atom = caf::atom_constant<caf::atom("forward")>;
/// A retired successor's self-sent message: stop forwarding and exit.
using retire_atom = caf::atom_constant<caf::atom("retire")>;

/// How long a successor that flipped again keeps forwarding messages sent to it directly
/// (by peers that had its handle) before it exits.
inline constexpr auto flip_forward_linger = std::chrono::seconds(30);

/// What a KV-holding worker keeps for a role change, beside its kv_worker: where it
/// registers, its address, the settings of either role, and the change in progress.
struct flip_context {
  caf::actor supervisor;
  caf::actor face;         ///< the worker's address across flips (the actor first spawned for it)
  prefill_config prefill;  ///< settings when it serves as prefill (num_blocks unused after start)
  decode_config decode;    ///< settings when it serves as decode (num_blocks unused after start)
  std::optional<membership> last_membership;  ///< replayed to a successor (pools, kv-store)
  // -- the change in progress (empty `pending` when none)
  std::optional<change_role> pending;
  int64_t started_ns = 0;    ///< change_role arrived (steady clock)
  int64_t drained_ns = 0;    ///< it held nothing any more (0: not yet)
  uint32_t finished = 0;     ///< jobs or sequences finished since change_role
  uint32_t migrated = 0;     ///< decode sequences handed off live since change_role
  uint32_t handed_back = 0;  ///< work given back to its sender (re-routed) since change_role
  bool reported = false;     ///< drain_only: role_changed sent (it stays drained)

  /// Whether the worker takes no new work: a change of role or a drain is under way.
  bool draining() const { return pending.has_value(); }
  /// The role change this worker is told to make, or nothing.
  std::optional<role> target() const;
};

/// Starts (or, when one is under way, retargets) a role change on `ctx` for `c`, at
/// `now_ns`. Logs it with the reason, naming the worker `info`.
void begin_role_change(flip_context& ctx, const worker_info& info, const change_role& c,
                       int64_t now_ns);

/// "to decode: <reason>" or "drain only: <reason>", for status and logs.
std::string flip_summary(const flip_context& ctx);

/// Everything a successor is built from.
struct role_handover {
  flip_context ctx;
  role from = role::prefill;
  kv_worker w;  ///< last: see kv_worker
};

/// Called by a worker of role `from` that holds nothing (no job, sequence, step or write
/// in flight) while a change is pending: for drain_only, reports role_changed once and
/// stays; for a change to its own role, re-registers and reports (an "undrain"); else
/// moves `w` into a successor of the target role and turns `self` into a forwarder.
/// Returns true when `w` was moved out: the caller must not touch its state afterwards.
bool complete_role_change(caf::event_based_actor* self, flip_context& ctx, kv_worker& w, role from);

/// Builds a successor worker of each role from a handover (defined beside each worker).
caf::actor spawn_prefill_successor(caf::actor_system& sys, std::shared_ptr<role_handover> h);
caf::actor spawn_decode_successor(caf::actor_system& sys, std::shared_ptr<role_handover> h);

/// In a successor: takes the handover's context and kv_worker, registers under
/// `w.info` (kind already set to the new role) with the face as its handle, and sends
/// role_changed once the supervisor accepted it (with the error when it refused).
void adopt_handover(caf::event_based_actor* self, role_handover& h, flip_context& ctx, kv_worker& w,
                    std::string_view what);

/// The answer of a worker that no longer serves `as` to work of that role arriving late
/// (sent before its sender learnt of the change): errc::unavailable naming the worker,
/// so that the request is routed again (the router migrates on it).
error_info no_longer_serving(const worker_info& info, role as);

}  // namespace tokenmill
