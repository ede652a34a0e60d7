// The supervisor: registration, monitoring, readiness and cluster status.
#include <map>
#include <memory>
#include <optional>
#include <vector>

#include <spdlog/spdlog.h>

#include "actors/actors.hpp"
#include "actors/supervisor/supervisor_policy.hpp"
#include "common/clock.hpp"

namespace tokenmill {
namespace {

/// How long a member may take to answer a status query before it is reported as not
/// answering. Workers answer between engine steps' bookkeeping, never behind compute, so
/// this is short; it stays below typical connection timeouts so that `status` answers
/// before a hung node is even declared down.
constexpr auto status_timeout = std::chrono::milliseconds(500);

/// A joined node and its clock estimate.
struct node_entry {
  std::string name;
  caf::actor agent;
  bool up = true;
  clock_estimate clock;     ///< same_clock: offset 0 from a zero round trip
  bool same_clock = false;  ///< same host as the supervisor: offset exactly 0, no probing
  uint32_t restarts = 0;    ///< joins after the first (the launcher restarted the node)
};

/// Self-sent: refresh every node's clock estimate.
using sync_atom = caf::atom_constant<caf::atom("sync")>;

struct supervisor_state {
  supervisor_config cfg;
  std::map<worker_id, member> members;
  std::map<uint32_t, node_entry> nodes;
  static inline const char* name = "supervisor";
};

membership snapshot(const supervisor_state& st) {
  membership m;
  for (const auto& [id, mem] : st.members)
    m.members.push_back(mem);
  return m;
}

/// See cluster_ready (supervisor_policy.hpp).
bool is_ready(const supervisor_state& st) {
  std::vector<member_state> members;
  members.reserve(st.members.size());
  for (const auto& [id, m] : st.members)
    members.push_back({m.info.kind, m.up});
  return cluster_ready(members, st.cfg.expected_workers);
}

/// Tells every up node which nodes are up (node_peers), so that they connect directly.
void announce_nodes(caf::stateful_actor<supervisor_state>* self) {
  node_peers p;
  for (const auto& [idx, n] : self->state.nodes)
    if (n.up) p.up.push_back(idx);
  for (const auto& [idx, n] : self->state.nodes)
    if (n.up) self->send(n.agent, p);
}

clock_update offsets_of(const supervisor_state& st) {
  clock_update u;
  for (const auto& [idx, n] : st.nodes) {
    if (u.offsets.size() <= idx) u.offsets.resize(idx + 1, 0);
    u.offsets[idx] = n.clock.offset_ns;
  }
  return u;
}

/// `left` more NTP-style probes of node `idx`, then its estimate is the best of them
/// (fold_clock_sample) and the routers hear the new offsets.
void probe(caf::stateful_actor<supervisor_state>* self, uint32_t idx, uint32_t left,
           clock_estimate best) {
  auto it = self->state.nodes.find(idx);
  if (it == self->state.nodes.end() || !it->second.up) return;
  if (left == 0) {
    if (!best.has_sample()) return;
    it->second.clock = best;
    auto u = offsets_of(self->state);
    for (const auto& [id, m] : self->state.members)
      if (m.up && m.info.kind == role::router) self->send(m.handle, u);
    return;
  }
  int64_t t0 = now_ns();
  self->request(it->second.agent, std::chrono::seconds(1), ping_atom::value, t0)
      .then(
          [self, idx, left, best](int64_t sent, int64_t t_node) {
            probe(self, idx, left - 1, fold_clock_sample(best, {sent, t_node, now_ns()}));
          },
          [self, idx, left, best](caf::error&) { probe(self, idx, left - 1, best); });
}

caf::behavior supervisor(caf::stateful_actor<supervisor_state>* self, supervisor_config cfg) {
  self->state.cfg = std::move(cfg);
  // Every member hears about every change: routers route by it, decode workers find the
  // kv-store through it, the kv-store forgets what departed workers held.
  auto broadcast = [self] {
    auto m = snapshot(self->state);
    for (const auto& [id, mem] : self->state.members)
      if (mem.up) self->send(mem.handle, m);
  };
  self->delayed_send(self, self->state.cfg.sync_interval, sync_atom::value);
  self->set_down_handler([self, broadcast](caf::down_msg& dm) {
    bool node_lost = false;
    for (auto& [idx, n] : self->state.nodes) {
      if (n.up && n.agent.address() == dm.source) {
        n.up = false;
        node_lost = true;
        spdlog::warn("supervisor: node '{}' is down ({})", n.name, caf::to_string(dm.reason));
      }
    }
    if (node_lost) announce_nodes(self);
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
        if (r.info.kind == role::router) self->send(r.handle, offsets_of(st));
        return true;
      },
      [self](const join_node& j) -> std::string {
        auto& st = self->state;
        std::optional<earlier_join> earlier;
        if (auto it = st.nodes.find(j.index); it != st.nodes.end())
          earlier = earlier_join{it->second.up, it->second.restarts};
        auto v = judge_join(
            join_terms{st.cfg.manifest_hash, st.cfg.model, st.cfg.node_index, st.cfg.host_id},
            join_claim{j.name, j.index, j.manifest_hash, j.model, j.host_id}, earlier);
        if (!v.accepted()) return v.refusal;
        self->monitor(j.agent);
        // A restarted node's workers register again under their old ids, and membership
        // makes them routable.
        st.nodes[j.index] = node_entry{
            j.name,       j.agent,   true, v.same_clock ? clock_estimate{0, 0} : clock_estimate{},
            v.same_clock, v.restarts};
        if (v.restarts > 0)
          spdlog::info("supervisor: node '{}' joined again (restart {})", j.name, v.restarts);
        else
          spdlog::debug("supervisor: node '{}' joined", j.name);
        announce_nodes(self);
        if (!v.same_clock) probe(self, j.index, st.cfg.sync_pings, {});
        return {};
      },
      [self](sync_atom) {
        auto& st = self->state;
        for (const auto& [idx, n] : st.nodes)
          if (n.up && !n.same_clock) probe(self, idx, st.cfg.sync_pings, {});
        self->delayed_send(self, st.cfg.sync_interval, sync_atom::value);
      },
      [self](ready_atom) { return is_ready(self->state); },
      [self](status_atom) -> caf::result<cluster_status> {
        auto& st = self->state;
        auto rp = self->make_response_promise();
        auto result = std::make_shared<cluster_status>();
        result->cluster = st.cfg.cluster;
        result->ready = is_ready(st);
        for (const auto& [idx, n] : st.nodes)
          result->nodes.push_back(
              {n.name, idx, n.up, n.clock.offset_ns, n.clock.rtt_ns, n.restarts});
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
                  [self, result, finish, info](caf::error& err) mutable {
                    worker_status ws;
                    ws.id = info.id;
                    ws.kind = info.kind;
                    ws.name = info.name;
                    ws.node = info.node;
                    // It may have been declared down while we waited: say so, not "up".
                    auto it = self->state.members.find(info.id);
                    ws.up = it != self->state.members.end() && it->second.up;
                    ws.detail = ws.up ? "not answering: " + caf::to_string(err) : "down";
                    result->workers.push_back(ws);
                    finish();
                  });
        }
        return rp;
      },
  };
}

}  // namespace

caf::actor spawn_supervisor(caf::actor_system& sys, supervisor_config cfg) {
  return sys.spawn(supervisor, std::move(cfg));
}

}  // namespace tokenmill
