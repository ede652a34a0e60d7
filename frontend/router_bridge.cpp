#include "frontend/router_bridge.hpp"

#include <chrono>
#include <memory>
#include <utility>

#include <caf/all.hpp>

#include "actors/protocol.hpp"

namespace tokenmill {
namespace {

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
  };
}

}  // namespace

caf::actor spawn_router_bridge(caf::actor_system& sys, caf::actor supervisor,
                               router_bridge_callbacks callbacks) {
  return sys.spawn(router_bridge, std::move(supervisor),
                   std::make_shared<const router_bridge_callbacks>(std::move(callbacks)));
}

}  // namespace tokenmill
