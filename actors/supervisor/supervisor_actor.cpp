// The supervisor: registration, monitoring, readiness and cluster status.
#include <map>
#include <memory>

#include <spdlog/spdlog.h>

#include "actors/actors.hpp"

namespace tokenmill {
namespace {

/// How long a member may take to answer a status query before it is reported as
/// not answering (it is still up as far as monitors know).
constexpr auto status_timeout = std::chrono::milliseconds(1000);

struct supervisor_state {
  std::string cluster;
  std::map<worker_id, member> members;
  static inline const char* name = "supervisor";
};

membership snapshot(const supervisor_state& st) {
  membership m;
  for (const auto& [id, mem] : st.members)
    m.members.push_back(mem);
  return m;
}

bool is_ready(const supervisor_state& st) {
  bool router = false, decode = false;
  for (const auto& [id, m] : st.members) {
    if (!m.up) continue;
    router |= m.info.kind == role::router;
    decode |= m.info.kind == role::decode;
  }
  return router && decode;
}

caf::behavior supervisor(caf::stateful_actor<supervisor_state>* self, std::string cluster) {
  self->state.cluster = std::move(cluster);
  auto broadcast = [self] {
    auto m = snapshot(self->state);
    for (const auto& [id, mem] : self->state.members)
      if (mem.up && (mem.info.kind == role::router || mem.info.kind == role::kv_store))
        self->send(mem.handle, m);
  };
  self->set_down_handler([self, broadcast](caf::down_msg& dm) {
    for (auto& [id, m] : self->state.members) {
      if (m.up && m.handle.address() == dm.source) {
        m.up = false;
        spdlog::warn("supervisor: {} '{}' is down ({})", to_string(m.info.kind), m.info.name,
                     caf::to_string(dm.reason));
      }
    }
    broadcast();
  });
  return {
      [self, broadcast](const register_worker& r) -> bool {
        auto& st = self->state;
        if (auto it = st.members.find(r.info.id); it != st.members.end() && it->second.up) {
          spdlog::error("supervisor: refusing duplicate worker id {} ('{}')", r.info.id,
                        r.info.name);
          return false;
        }
        self->monitor(r.handle);
        st.members[r.info.id] = member{r.info, r.handle, true};
        spdlog::debug("supervisor: {} '{}' joined", to_string(r.info.kind), r.info.name);
        broadcast();
        return true;
      },
      [self](ready_atom) { return is_ready(self->state); },
      [self](status_atom) -> caf::result<cluster_status> {
        auto& st = self->state;
        auto rp = self->make_response_promise();
        auto result = std::make_shared<cluster_status>();
        result->cluster = st.cluster;
        result->ready = is_ready(st);
        auto pending = std::make_shared<size_t>(0);
        std::vector<const member*> live;
        for (const auto& [id, m] : st.members) {
          if (m.up) {
            live.push_back(&m);
          } else {
            worker_status ws;
            ws.id = m.info.id;
            ws.kind = m.info.kind;
            ws.name = m.info.name;
            ws.node = m.info.node;
            ws.up = false;
            ws.detail = "down";
            result->workers.push_back(ws);
          }
        }
        if (live.empty()) {
          rp.deliver(*result);
          return rp;
        }
        *pending = live.size();
        for (const auto* m : live) {
          auto info = m->info;
          auto finish = [result, pending, rp]() mutable {
            if (--*pending == 0) {
              std::sort(result->workers.begin(), result->workers.end(),
                        [](const auto& a, const auto& b) { return a.id < b.id; });
              rp.deliver(*result);
            }
          };
          self->request(m->handle, status_timeout, status_atom::value)
              .then(
                  [result, finish](const worker_status& ws) mutable {
                    result->workers.push_back(ws);
                    finish();
                  },
                  [result, finish, info](caf::error& err) mutable {
                    worker_status ws;
                    ws.id = info.id;
                    ws.kind = info.kind;
                    ws.name = info.name;
                    ws.node = info.node;
                    ws.detail = "not answering: " + caf::to_string(err);
                    result->workers.push_back(ws);
                    finish();
                  });
        }
        return rp;
      },
  };
}

}  // namespace

caf::actor spawn_supervisor(caf::actor_system& sys, std::string cluster_name) {
  return sys.spawn(supervisor, std::move(cluster_name));
}

}  // namespace tokenmill
