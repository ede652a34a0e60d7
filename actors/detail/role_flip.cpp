#include "actors/detail/role_flip.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "common/clock.hpp"

namespace tokenmill {

std::optional<role> flip_context::target() const {
  if (!pending || pending->drain_only) return std::nullopt;
  return pending->to;
}

void begin_role_change(flip_context& ctx, const worker_info& info, const change_role& c,
                       int64_t now_ns) {
  if (!ctx.pending || ctx.reported) {  // a new change (a finished drain_only counts as over)
    ctx.started_ns = now_ns;
    ctx.drained_ns = 0;
    ctx.finished = ctx.migrated = ctx.handed_back = 0;
    ctx.reported = false;
  } else {
    spdlog::info("{} '{}': a new role change replaces the one under way", to_string(info.kind),
                 info.name);
  }
  ctx.pending = c;
  if (c.drain_only)
    spdlog::info("{} '{}': draining ({})", to_string(info.kind), info.name, c.reason);
  else
    spdlog::info("{} '{}': changing role to {} ({})", to_string(info.kind), info.name,
                 to_string(c.to), c.reason);
}

std::string flip_summary(const flip_context& ctx) {
  if (!ctx.pending) return {};
  if (ctx.pending->drain_only) return "drain only: " + ctx.pending->reason;
  return fmt::format("to {}: {}", to_string(ctx.pending->to), ctx.pending->reason);
}

error_info no_longer_serving(const worker_info& info, role as) {
  return {errc::unavailable, fmt::format("worker '{}' no longer serves as {} (it is now {}); "
                                         "the request is routed again",
                                         info.name, to_string(as), to_string(info.kind))};
}

namespace {

role_changed make_report(const flip_context& ctx, worker_id id, role from, role to) {
  role_changed r;
  r.worker = id;
  r.from = from;
  r.to = to;
  r.drain_only = ctx.pending && ctx.pending->drain_only;
  r.drain_ns = ctx.drained_ns > 0 ? ctx.drained_ns - ctx.started_ns : 0;
  r.total_ns = now_ns() - ctx.started_ns;
  r.migrated = ctx.migrated;
  r.finished = ctx.finished;
  return r;
}

/// Registers `info` with the supervisor under the face's handle, then reports the change.
void register_and_report(caf::event_based_actor* self, flip_context& ctx, const worker_info& info,
                         role from, std::string_view what) {
  auto sup = ctx.supervisor;
  auto report = make_report(ctx, info.id, from, info.kind);
  auto started = ctx.started_ns;
  auto name = info.name;
  self->request(sup, std::chrono::seconds(5), register_worker{info, ctx.face})
      .then(
          [self, sup, report, started, name](bool accepted) mutable {
            report.total_ns = now_ns() - started;
            if (!accepted)
              report.error = {errc::internal,
                              fmt::format("the supervisor refused the registration of '{}' "
                                          "under its new role",
                                          name)};
            spdlog::info("{} '{}': now {} after {:.1f} ms (drained in {:.1f} ms, {} finished)",
                         to_string(report.from), name, to_string(report.to), report.total_ns / 1e6,
                         report.drain_ns / 1e6, report.finished);
            self->send(sup, report);
          },
          [self, sup, report, started, what = std::string(what)](caf::error& e) mutable {
            spdlog::error("{}: registration under the new role failed: {}", what,
                          caf::to_string(e));
            report.total_ns = now_ns() - started;
            report.error = {errc::unavailable,
                            "registration under the new role failed: " + caf::to_string(e)};
            self->send(sup, report);
          });
  ctx.pending.reset();
}

/// Turns `self` into a forwarder to `target` (see role_flip.hpp). The face forwards for
/// good and follows retargets; any other actor forwards for flip_forward_linger, then exits.
void become_forwarder(caf::event_based_actor* self, caf::actor target, bool face) {
  auto tgt = std::make_shared<caf::actor>(target);
  self->link_to(target);
  self->set_default_handler(
      [tgt](caf::scheduled_actor* ptr, caf::message_view& x) -> caf::result<caf::message> {
        auto rp = ptr->make_response_promise();
        rp.delegate(*tgt, x.move_content_to_message());
        return rp;
      });
  // What only the previous role's own machinery sends to itself is stale here: dropped.
  auto stale = caf::message_handler{
      [](const drain_expired&) {}, [](const kv_drained&) {}, [](const engine_step_done&) {},
      [](const kv_write_done&) {}, [](step_atom) {},
  };
  if (face) {
    self->become(stale.or_else([self, tgt](forward_atom, caf::actor next) {
      self->unlink_from(*tgt);
      *tgt = std::move(next);
      self->link_to(*tgt);
    }));
  } else {
    self->become(stale.or_else([self](retire_atom) { self->quit(); }));
    self->delayed_send(self, flip_forward_linger, retire_atom::value);
  }
}

}  // namespace

bool complete_role_change(caf::event_based_actor* self, flip_context& ctx, kv_worker& w,
                          role from) {
  if (!ctx.pending) return false;
  if (ctx.drained_ns == 0) ctx.drained_ns = now_ns();
  if (ctx.pending->drain_only) {
    if (!ctx.reported) {
      ctx.reported = true;
      auto r = make_report(ctx, w.info.id, from, from);
      spdlog::info("{} '{}': drained in {:.1f} ms ({} finished, {} handed back)", to_string(from),
                   w.info.name, r.drain_ns / 1e6, r.finished, ctx.handed_back);
      self->send(ctx.supervisor, std::move(r));
    }
    return false;  // stays drained (and out of routing) under its role
  }
  const role to = ctx.pending->to;
  if (to == from) {
    // Back into service under the same role: registering again clears `draining`.
    register_and_report(self, ctx, w.info, from, to_string(from));
    return false;
  }
  auto h = std::make_shared<role_handover>();
  h->from = from;
  h->ctx = ctx;
  h->w = std::move(w);
  h->w.info.kind = to;
  const bool face = ctx.face == caf::actor_cast<caf::actor>(self);
  auto& sys = self->system();
  caf::actor next =
      to == role::decode ? spawn_decode_successor(sys, h) : spawn_prefill_successor(sys, h);
  if (!face) self->send(ctx.face, forward_atom::value, next);
  become_forwarder(self, next, face);
  ctx.pending.reset();
  return true;
}

void adopt_handover(caf::event_based_actor* self, role_handover& h, flip_context& ctx, kv_worker& w,
                    std::string_view what) {
  ctx = std::move(h.ctx);
  w = std::move(h.w);
  register_and_report(self, ctx, w.info, h.from, what);
  // Pools to connect to and the kv-store, as the previous role last saw them.
  if (ctx.last_membership) self->send(self, *ctx.last_membership);
}

}  // namespace tokenmill
