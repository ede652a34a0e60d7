// The supervisor: registration, monitoring, readiness and cluster status.
#include <map>
#include <memory>

#include <spdlog/spdlog.h>

#include "actors/actors.hpp"
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
  int64_t offset_ns = 0;     ///< add to the node's stamps to land on the supervisor's clock
  int64_t best_rtt_ns = -1;  ///< RTT of the sample the offset comes from (-1: none yet)
  bool same_clock = false;   ///< same host as the supervisor: offset exactly 0, no probing
  uint32_t restarts = 0;     ///< joins after the first (the launcher restarted the node)
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

/// Ready means "can serve": every expected actor has registered once (the cluster came
/// up as the manifest says), and a router and a decode worker are up now. A lost prefill
/// worker, kv-store or spare decode worker does not take a serving cluster out of a load
/// balancer's rotation (the router prefills on a decode worker when no prefill worker is
/// left).
bool is_ready(const supervisor_state& st) {
  bool router = false, decode = false;
  for (const auto& [id, m] : st.members) {
    if (!m.up) continue;
    router |= m.info.kind == role::router;
    decode |= m.info.kind == role::decode;
  }
  return router && decode && st.members.size() >= st.cfg.expected_workers;
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
    u.offsets[idx] = n.offset_ns;
  }
  return u;
}

/// One NTP-style probe: the sample with the smallest round trip bounds the offset error
/// by half that round trip.
void probe(caf::stateful_actor<supervisor_state>* self, uint32_t idx, uint32_t left,
           int64_t best_rtt, int64_t best_offset) {
  auto it = self->state.nodes.find(idx);
  if (it == self->state.nodes.end() || !it->second.up) return;
  if (left == 0) {
    if (best_rtt < 0) return;
    it->second.offset_ns = best_offset;
    it->second.best_rtt_ns = best_rtt;
    auto u = offsets_of(self->state);
    for (const auto& [id, m] : self->state.members)
      if (m.up && m.info.kind == role::router) self->send(m.handle, u);
    return;
  }
  int64_t t0 = now_ns();
  self->request(it->second.agent, std::chrono::seconds(1), ping_atom::value, t0)
      .then(
          [self, idx, left, best_rtt, best_offset](int64_t sent, int64_t t_node) {
            int64_t t1 = now_ns();
            int64_t rtt = t1 - sent;
            int64_t offset = sent + rtt / 2 - t_node;
            bool better = best_rtt < 0 || rtt < best_rtt;
            probe(self, idx, left - 1, better ? rtt : best_rtt, better ? offset : best_offset);
          },
          [self, idx, left, best_rtt, best_offset](caf::error&) {
            probe(self, idx, left - 1, best_rtt, best_offset);
          });
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
        if (st.cfg.manifest_hash != 0 && j.manifest_hash != st.cfg.manifest_hash)
          return fmt::format(
              "node '{}' runs manifest {:016x} but the cluster runs {:016x}: start "
              "every node from the same manifest",
              j.name, j.manifest_hash, st.cfg.manifest_hash);
        if (!st.cfg.model.empty() && j.model != st.cfg.model)
          return fmt::format("node '{}' serves model '{}' but the cluster serves '{}'", j.name,
                             j.model, st.cfg.model);
        if (auto it = st.nodes.find(j.index); it != st.nodes.end() && it->second.up)
          return fmt::format("node '{}' (index {}) has already joined", j.name, j.index);
        self->monitor(j.agent);
        bool same =
            j.index == st.cfg.node_index || (!j.host_id.empty() && j.host_id == st.cfg.host_id);
        // A node whose earlier process is down joins again: a restart. Its workers
        // register again under their old ids, and membership makes them routable.
        auto old = st.nodes.find(j.index);
        uint32_t restarts = old == st.nodes.end() ? 0 : old->second.restarts + 1;
        st.nodes[j.index] = node_entry{j.name, j.agent, true, 0, same ? 0 : -1, same, restarts};
        if (restarts > 0)
          spdlog::info("supervisor: node '{}' joined again (restart {})", j.name, restarts);
        else
          spdlog::debug("supervisor: node '{}' joined", j.name);
        announce_nodes(self);
        if (!same) probe(self, j.index, st.cfg.sync_pings, -1, 0);
        return {};
      },
      [self](sync_atom) {
        auto& st = self->state;
        for (const auto& [idx, n] : st.nodes)
          if (n.up && !n.same_clock) probe(self, idx, st.cfg.sync_pings, -1, 0);
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
          result->nodes.push_back({n.name, idx, n.up, n.offset_ns, n.best_rtt_ns, n.restarts});
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
