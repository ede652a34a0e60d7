#include "frontend/router_bridge.hpp"

#include <chrono>
#include <memory>
#include <utility>

#include <fmt/format.h>
#include <caf/all.hpp>

#include "actors/protocol.hpp"

namespace tokenmill {
namespace {

drain_summary to_summary(std::string node, drain_report& r) {
  drain_summary s;
  s.node = std::move(node);
  s.error = std::move(r.error);
  for (auto& w : r.workers)
    s.workers.push_back({w.worker, w.from, w.to, w.drain_only, w.drain_ns, w.total_ns, w.migrated,
                         w.finished, std::move(w.error)});
  return s;
}

caf::behavior router_bridge(caf::event_based_actor* self, caf::actor supervisor,
                            std::shared_ptr<const router_bridge_callbacks> cb) {
  return {
      [cb](token_chunk& c) { cb->on_chunk(std::move(c)); },
      [cb](request_summary& s) { cb->on_summary(std::move(s)); },
      [self, cb, supervisor](status_atom, uint64_t call) {
        self->request(supervisor, std::chrono::seconds(3), status_atom::value)
            .then([cb, call](cluster_status& st) { cb->on_status(call, std::move(st)); },
                  [cb, call](caf::error& e) {
                    cb->on_status(call,
                                  error_info{errc::unavailable,
                                             "supervisor did not answer: " + caf::to_string(e)});
                  });
      },
      [self, cb, supervisor](drain_request& r, uint64_t call, uint32_t timeout_ms) {
        auto node = r.node;
        if (!cb->on_drain) return;
        self->request(supervisor, std::chrono::milliseconds(timeout_ms), std::move(r))
            .then(
                [cb, call, node](drain_report& rep) { cb->on_drain(call, to_summary(node, rep)); },
                [cb, call, node, timeout_ms](caf::error& e) {
                  drain_summary s;
                  s.node = node;
                  if (e == caf::sec::request_timeout)
                    s.error = {errc::timeout,
                               fmt::format("the drain of node '{}' did not complete within {} "
                                           "ms; its workers go on draining",
                                           node, timeout_ms)};
                  else
                    s.error = {errc::unavailable,
                               "the supervisor did not carry out the drain: " + caf::to_string(e)};
                  cb->on_drain(call, std::move(s));
                });
      },
  };
}

}  // namespace

caf::actor spawn_router_bridge(caf::actor_system& sys, caf::actor supervisor,
                               router_bridge_callbacks callbacks) {
  return sys.spawn(router_bridge, std::move(supervisor),
                   std::make_shared<const router_bridge_callbacks>(std::move(callbacks)));
}

}  // namespace tokenmill
