// The supervisor: registration, monitoring, readiness, cluster status, role changes and
// drains, and the planner's periodic decision (planner_policy.hpp decides; this carries out).
#include <algorithm>
#include <array>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <vector>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <caf/binary_serializer.hpp>

#include "actors/actors.hpp"
#include "actors/supervisor/join_policy.hpp"
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
/// Self-sent with a worker id and change number: the bound of that role change.
using change_expired_atom = caf::atom_constant<caf::atom("chg_expd")>;

/// Planner events kept for `status` (oldest dropped first).
constexpr size_t max_planner_events = 32;

/// A change_role sent and not yet answered.
struct pending_change {
  uint64_t seq = 0;  ///< matches the change_expired_atom of this change
  role from = role::decode;
  role to = role::decode;
  bool drain_only = false;
  bool planned = false;           ///< the planner decided it (cooldown restarts when it ends)
  std::optional<uint64_t> drain;  ///< the drain_request it belongs to
  caf::actor old_handle;          ///< the handle change_role went to
  bool registered = false;        ///< the worker registered again (under `to`)
  bool old_down = false;          ///< old_handle exited before the worker registered again
  int64_t started_ns = 0;
};

/// A drain_request waiting for its workers.
struct drain_op {
  caf::typed_response_promise<drain_report> rp;
  std::string node;
  std::set<worker_id> waiting;
  drain_report report;
};

struct supervisor_state {
  supervisor_config cfg;
  std::map<worker_id, member> members;
  std::map<uint32_t, node_entry> nodes;
  std::map<worker_id, pending_change> changes;
  uint64_t change_seq = 0;
  std::map<uint64_t, drain_op> drains;
  uint64_t drain_seq = 0;
  planner_memory memory;
  planner_status planner;      ///< counters and recent events, for status and metrics
  bool gathering = false;      ///< a planner tick's queries are out
  std::string last_rule;       ///< the rule of the planner's previous decision (for the log)
  join_challenges challenges;  ///< outstanding join challenges (with a cluster secret)
  static inline const char* name = "supervisor";
};

using supervisor_ptr = caf::stateful_actor<supervisor_state>*;

/// `node` as CAF serializes it, which is how it starts the payload of that node's BASP
/// client handshake (node_certificates.hpp). Empty when it cannot be serialized.
std::vector<uint8_t> node_key(caf::actor_system& sys, const caf::node_id& node) {
  std::vector<char> buf;
  caf::binary_serializer sink{sys, buf};
  if (inspect(sink, node)) return {};
  return {buf.begin(), buf.end()};
}

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

/// Every member hears about every change: routers route by it, decode workers find the
/// kv-store through it, the kv-store forgets what departed workers held.
void broadcast(supervisor_ptr self) {
  auto m = snapshot(self->state);
  for (const auto& [id, mem] : self->state.members)
    if (mem.up) self->send(mem.handle, m);
}

void record(supervisor_state& st, planner_event ev) {
  ev.t_ns = now_ns();
  auto& evs = st.planner.events;
  evs.push_back(std::move(ev));
  if (evs.size() > max_planner_events)
    evs.erase(evs.begin(),
              evs.begin() + static_cast<std::ptrdiff_t>(evs.size() - max_planner_events));
}

/// Marks `id` draining and sends it change_role (the caller broadcasts the membership, so
/// that routers stop sending it work, once for all the workers it changes). The answer is
/// bounded by cfg.change_timeout (change_expired_atom).
void start_change(supervisor_ptr self, worker_id id, role to, bool drain_only, std::string reason,
                  bool planned, std::optional<uint64_t> drain) {
  auto& st = self->state;
  auto& m = st.members.at(id);
  m.draining = true;
  pending_change ch;
  ch.seq = ++st.change_seq;
  ch.from = m.info.kind;
  ch.to = drain_only ? m.info.kind : to;
  ch.drain_only = drain_only;
  ch.planned = planned;
  ch.drain = drain;
  ch.old_handle = m.handle;
  ch.started_ns = now_ns();
  spdlog::info(
      "supervisor: {} '{}' {} ({})", to_string(m.info.kind), m.info.name,
      drain_only ? std::string("drains") : fmt::format("changes role to {}", to_string(ch.to)),
      reason);
  self->send(m.handle, change_role{ch.to, drain_only, std::move(reason)});
  self->delayed_send(self, st.cfg.change_timeout, change_expired_atom::value, id, ch.seq);
  st.changes[id] = std::move(ch);
}

void rebalance_after_flip(supervisor_ptr self, worker_id target);

/// A role change ended: `rc` is the worker's answer, or one the supervisor made up for a
/// worker that failed to answer. Updates the member, the counters and any drain it
/// belongs to; the caller broadcasts.
void finish_change(supervisor_ptr self, worker_id id, role_changed rc) {
  auto& st = self->state;
  auto it = st.changes.find(id);
  if (it == st.changes.end()) return;
  auto ch = std::move(it->second);
  st.changes.erase(it);
  auto mit = st.members.find(id);
  std::string name = mit != st.members.end() ? mit->second.info.name : std::to_string(id);
  rc.worker = id;
  planner_event ev;
  ev.worker = name;
  ev.from = ch.from;
  ev.to = ch.to;
  ev.took_ns = rc.total_ns > 0 ? rc.total_ns : now_ns() - ch.started_ns;
  if (rc.error) {
    // The worker keeps (or is taken back under) the role it registered last.
    if (mit != st.members.end()) mit->second.draining = false;
    ++st.planner.changes_failed;
    ev.kind = "failed";
    ev.why = rc.error.message;
    spdlog::warn("supervisor: {} of '{}' failed: {} ({}); it serves as {} again",
                 ch.drain_only ? "drain" : "role change", name, rc.error.message,
                 to_string(rc.error.code),
                 mit != st.members.end() ? to_string(mit->second.info.kind) : "nothing");
  } else if (ch.drain_only) {
    // Drained: stays out of routing until it registers again (a restart of its node) or
    // a change_role to its own role brings it back.
    ++st.planner.drains;
    ev.kind = "changed";
    ev.why = fmt::format("drained: {} finished, {} migrated", rc.finished, rc.migrated);
    spdlog::info("supervisor: '{}' drained in {:.1f} ms ({} finished, {} migrated)", name,
                 ev.took_ns / 1e6, rc.finished, rc.migrated);
  } else {
    if (mit != st.members.end()) {
      auto& m = mit->second;
      if (!ch.registered && m.info.kind != ch.to) {
        // The contract is register-then-role_changed; a worker that changed in place
        // without registering is still the same handle: take its word for the role.
        spdlog::warn("supervisor: '{}' reported its role change without registering again", name);
        m.info.kind = ch.to;
      }
      m.draining = false;
    }
    if (ch.from == role::decode && ch.to == role::prefill) ++st.planner.flips_to_prefill;
    if (ch.from == role::prefill && ch.to == role::decode) ++st.planner.flips_to_decode;
    if (ch.planned) st.memory.last_flip_ms = now_ns() / 1'000'000;
    ev.kind = "changed";
    ev.why = fmt::format("drain {:.1f} ms, {} finished, {} migrated", rc.drain_ns / 1e6,
                         rc.finished, rc.migrated);
    spdlog::info("supervisor: '{}' serves as {} now ({} -> {} in {:.1f} ms; {})", name,
                 to_string(ch.to), to_string(ch.from), to_string(ch.to), ev.took_ns / 1e6, ev.why);
    // A new decode worker would otherwise take only new requests while the sequences that
    // made decode the bottleneck stay where they are until they end.
    if (ch.planned && ch.to == role::decode && st.cfg.planner) rebalance_after_flip(self, id);
  }
  record(st, std::move(ev));
  if (!ch.drain) return;
  auto d = st.drains.find(*ch.drain);
  if (d == st.drains.end()) return;
  auto& op = d->second;
  op.report.workers.push_back(rc);
  op.waiting.erase(id);
  if (!op.waiting.empty()) return;
  std::vector<std::string> failed;
  for (const auto& w : op.report.workers)
    if (w.error) {
      auto m = st.members.find(w.worker);
      failed.push_back(fmt::format(
          "'{}': {}", m != st.members.end() ? m->second.info.name : std::to_string(w.worker),
          w.error.message));
    }
  if (!failed.empty())
    op.report.error = {errc::timeout, fmt::format("node '{}': {} of {} workers did not drain: {}",
                                                  op.node, failed.size(), op.report.workers.size(),
                                                  fmt::join(failed, "; "))};
  op.rp.deliver(std::move(op.report));
  st.drains.erase(d);
}

/// Runs one planner decision on gathered signals and carries out a flip.
void plan(supervisor_ptr self, planner_signals sig, std::vector<double> ttft,
          std::vector<double> itl) {
  auto& st = self->state;
  const auto& cfg = *st.cfg.planner;
  // The membership now, not as it was when the queries went out.
  for (auto& w : sig.workers) {
    auto it = st.members.find(w.id);
    if (it == st.members.end()) {
      w.up = false;
      continue;
    }
    w.kind = it->second.info.kind;
    w.up = w.up && it->second.up;
    w.draining = it->second.draining;
  }
  sig.ttft_ms = percentile_of(std::move(ttft), cfg.percentile);
  sig.itl_ms = percentile_of(std::move(itl), cfg.percentile);
  sig.now_ms = now_ns() / 1'000'000;
  sig.change_in_flight = std::any_of(st.changes.begin(), st.changes.end(),
                                     [](const auto& c) { return !c.second.drain_only; });
  auto d = decide_flip(cfg, sig, st.memory);
  ++st.planner.decisions;
  // Every decision is logged with its evidence; a keep for the same rule as the previous
  // decision only at debug level, so that a steady cluster does not fill the log.
  if (d.flip || d.rule != st.last_rule)
    spdlog::info("planner: {}", d.why);
  else
    spdlog::debug("planner: {}", d.why);
  st.last_rule = d.rule;
  st.planner.last_decision = d.why;
  if (!d.flip) return;
  auto it = st.members.find(d.worker);
  if (it == st.members.end() || !it->second.up) return;
  planner_event ev;
  ev.kind = "flip";
  ev.worker = it->second.info.name;
  ev.from = d.from;
  ev.to = d.to;
  ev.why = d.why;
  record(st, std::move(ev));
  start_change(self, d.worker, d.to, false, d.why, true, std::nullopt);
  broadcast(self);
}

/// After the planner flipped `target` to decode: asks every available decode worker for
/// its load, plans who hands `target` how many sequences (plan_rebalance) and asks them
/// (rebalance_request). Each move is a live migration; the outcome shows in the workers'
/// migration metrics and in the planner's events.
void rebalance_after_flip(supervisor_ptr self, worker_id target) {
  auto& st = self->state;
  const uint32_t max_moves = st.cfg.planner->rebalance_moves;
  if (max_moves == 0) return;
  struct acc {
    std::vector<planner_worker> workers;
    size_t pending = 0;
  };
  auto a = std::make_shared<acc>();
  std::vector<std::pair<worker_id, caf::actor>> decoders;
  for (const auto& [id, m] : st.members)
    if (m.up && !m.draining && m.info.kind == role::decode) decoders.emplace_back(id, m.handle);
  a->pending = decoders.size();
  if (a->pending < 2) return;
  auto done = [self, a, target, max_moves] {
    if (--a->pending > 0) return;
    auto& st = self->state;
    auto t = st.members.find(target);
    if (t == st.members.end() || !t->second.up || t->second.info.kind != role::decode) return;
    auto moves = plan_rebalance(a->workers, target, max_moves);
    for (const auto& mv : moves) {
      auto m = st.members.find(mv.from);
      if (m == st.members.end() || !m->second.up) continue;
      const std::string from = m->second.info.name, to = t->second.info.name;
      self->request(m->second.handle, st.cfg.planner_query_timeout,
                    rebalance_request{t->second.handle, mv.count})
          .then(
              [self, from, to, want = mv.count](uint32_t started) {
                auto& st = self->state;
                planner_event ev;
                ev.kind = "rebalance";
                ev.worker = from;
                ev.from = role::decode;
                ev.to = role::decode;
                ev.why = fmt::format("{} of {} sequences move live from '{}' to '{}'", started,
                                     want, from, to);
                spdlog::info("planner: {}", ev.why);
                record(st, std::move(ev));
              },
              [from](caf::error& e) {
                spdlog::warn("planner: rebalance request to '{}' failed: {}", from,
                             caf::to_string(e));
              });
    }
  };
  for (const auto& [id, h] : decoders) {
    self->request(h, st.cfg.planner_query_timeout, status_atom::value)
        .then(
            [a, done, id = id](const worker_status& ws) {
              planner_worker w;
              w.id = id;
              w.queued = ws.queued;
              w.running = ws.running;
              a->workers.push_back(w);
              done();
            },
            [done](caf::error&) { done(); });
  }
}

/// One planner tick: asks every up prefill and decode worker for its status and every
/// router for its latency samples, then decides (plan). Workers that do not answer in
/// time count as unavailable; a router that does not answer contributes no samples.
void gather(supervisor_ptr self) {
  auto& st = self->state;
  struct acc {
    planner_signals sig;
    std::vector<double> ttft, itl;
    size_t pending = 0;
  };
  auto a = std::make_shared<acc>();
  std::vector<std::pair<worker_id, caf::actor>> workers, routers;
  for (const auto& [id, m] : st.members) {
    if (!m.up) continue;
    if (m.info.kind == role::prefill || m.info.kind == role::decode)
      workers.emplace_back(id, m.handle);
    else if (m.info.kind == role::router)
      routers.emplace_back(id, m.handle);
  }
  a->pending = workers.size() + routers.size();
  if (a->pending == 0) return;
  st.gathering = true;
  auto done = [self, a] {
    if (--a->pending > 0) return;
    self->state.gathering = false;
    plan(self, std::move(a->sig), std::move(a->ttft), std::move(a->itl));
  };
  auto timeout = st.cfg.planner_query_timeout;
  for (const auto& [id, h] : workers) {
    self->request(h, timeout, status_atom::value)
        .then(
            [a, done, id = id](const worker_status& ws) {
              planner_worker w;
              w.id = id;
              w.queued = ws.queued;
              w.running = ws.running;
              w.kv_used = ws.kv_used;
              w.kv_total = ws.kv_total;
              a->sig.workers.push_back(w);
              done();
            },
            [a, done, id = id](caf::error&) {
              planner_worker w;
              w.id = id;
              w.up = false;
              a->sig.workers.push_back(w);
              done();
            });
  }
  for (const auto& [id, h] : routers) {
    self->request(h, timeout, latency_atom::value)
        .then(
            [a, done](const latency_samples& l) {
              a->ttft.insert(a->ttft.end(), l.ttft_ms.begin(), l.ttft_ms.end());
              a->itl.insert(a->itl.end(), l.itl_ms.begin(), l.itl_ms.end());
              done();
            },
            [done](caf::error&) { done(); });
  }
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
  self->delayed_send(self, self->state.cfg.sync_interval, sync_atom::value);
  if (auto& p = self->state.cfg.planner) {
    self->state.planner.enabled = true;
    self->delayed_send(self, std::chrono::milliseconds(p->interval_ms), plan_atom::value);
  }
  auto broadcast = [self] { tokenmill::broadcast(self); };
  // A worker that cannot take change_role (an older build) answers it with an error, which
  // CAF delivers as a message: without this handler it would take the supervisor down.
  // It ends that worker's change at once instead of at the bound.
  self->set_error_handler([self](caf::error& err) {
    auto& st = self->state;
    auto sender = self->current_sender();
    for (auto& [id, ch] : st.changes) {
      if (ch.old_handle.address() != sender) continue;
      role_changed rc;
      rc.from = ch.from;
      rc.to = ch.to;
      rc.drain_only = ch.drain_only;
      rc.error = {errc::worker_failed,
                  fmt::format("answered change_role with {}", caf::to_string(err))};
      finish_change(self, id, std::move(rc));
      tokenmill::broadcast(self);
      return;
    }
    spdlog::warn("supervisor: an actor sent an error it was not asked for: {}",
                 caf::to_string(err));
  });
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
      if (!m.up || m.handle.address() != dm.source) continue;
      auto ch = self->state.changes.find(id);
      if (ch != self->state.changes.end() && !ch->second.drain_only && !ch->second.registered) {
        // Changing role: the worker may replace this actor with one serving the new role,
        // which registers under the same id. Not a loss unless that does not happen
        // within the change's bound.
        ch->second.old_down = true;
        spdlog::info("supervisor: the old actor of '{}' exited during its role change ({})",
                     m.info.name, caf::to_string(dm.reason));
        continue;
      }
      m.up = false;
      spdlog::warn("supervisor: {} '{}' is down ({})", to_string(m.info.kind), m.info.name,
                   caf::to_string(dm.reason));
      if (ch != self->state.changes.end()) {
        role_changed rc;
        rc.error = {errc::worker_failed,
                    fmt::format("went down during its {} ({})",
                                ch->second.drain_only ? "drain" : "role change",
                                caf::to_string(dm.reason))};
        finish_change(self, id, std::move(rc));
      }
    }
    broadcast();
  });
  return {
      [self, broadcast](const register_worker& r) -> bool {
        auto& st = self->state;
        if (st.cfg.members_from_joined_nodes) {
          // Pool descriptors go to members: only a joined node's own actors become one.
          auto n = st.nodes.find(r.info.node_index);
          if (n == st.nodes.end() || !n->second.up || !r.handle ||
              r.handle.node() != n->second.agent.node()) {
            spdlog::warn(
                "supervisor: refusing worker '{}': its node (index {}) has not joined, or the "
                "worker is not that node's",
                r.info.name, r.info.node_index);
            return false;
          }
        }
        if (auto it = st.members.find(r.info.id); it != st.members.end() && it->second.up) {
          auto ch = st.changes.find(r.info.id);
          // Once per role change: a second registration of the id is a duplicate again.
          if (ch == st.changes.end() || ch->second.registered) {
            spdlog::error("supervisor: refusing duplicate worker id {} ('{}')", r.info.id,
                          r.info.name);
            return false;
          }
          // A worker told to change role registers again under its new role, from the
          // same actor or from one that replaces it: the member takes the new kind and
          // handle, and the old handle's exit is no longer its loss.
          auto& m = it->second;
          if (m.handle != r.handle) {
            self->demonitor(m.handle);
            self->monitor(r.handle);
          }
          spdlog::info("supervisor: '{}' registered again as {} (was {})", r.info.name,
                       to_string(r.info.kind), to_string(m.info.kind));
          m.info = r.info;
          m.handle = r.handle;
          m.draining = ch->second.drain_only;  // a drained worker stays out of routing
          ch->second.registered = true;
          broadcast();
          return true;
        }
        self->monitor(r.handle);
        st.members[r.info.id] = member{r.info, r.handle, true};
        spdlog::debug("supervisor: {} '{}' joined", to_string(r.info.kind), r.info.name);
        broadcast();
        if (r.info.kind == role::router) self->send(r.handle, offsets_of(st));
        return true;
      },
      [self](join_challenge_atom) -> std::string {
        std::array<uint8_t, join_nonce_bytes> nonce{};
        if (!fill_random(nonce)) {
          spdlog::error("supervisor: no random bytes for a join challenge");
          return {};
        }
        return self->state.challenges.issue(nonce, now_ns());
      },
      [self](const join_node& j) -> std::string {
        auto& st = self->state;
        auto refuse = [&](const std::string& why) {
          spdlog::warn("supervisor: refused the join of node '{}' (index {}) from {}: {}", j.name,
                       j.index, j.agent ? caf::to_string(j.agent.node()) : std::string("?"), why);
          return why;
        };
        // The agent named in the join is the joining process's own: a node cannot join in
        // the name of another process's actor.
        auto sender = self->current_sender();
        if (!j.agent || !sender || sender->node() != j.agent.node())
          return refuse("the join names an agent of another process than the one sending it");
        if (!st.cfg.secret.empty()) {
          join_statement s{st.cfg.cluster, j.name, j.index, j.manifest_hash, j.model, j.host_id};
          auto why = st.challenges.verify(st.cfg.secret, j.challenge, j.proof, s, now_ns());
          if (!why.empty()) return refuse("cluster secret: " + why);
        }
        // With TLS, the certificate the node's link presented must be issued for its name.
        if (st.cfg.certificates && j.agent.node() != self->node()) {
          auto links = st.cfg.certificates->names_of(node_key(self->system(), j.agent.node()));
          if (auto why = judge_node_certificate(j.name, links); !why.empty())
            return refuse("certificate: " + why);
        }
        std::optional<earlier_join> earlier;
        if (auto it = st.nodes.find(j.index); it != st.nodes.end())
          earlier = earlier_join{it->second.up, it->second.restarts};
        auto v = judge_join(
            join_terms{st.cfg.manifest_hash, st.cfg.model, st.cfg.node_index, st.cfg.host_id},
            join_claim{j.name, j.index, j.manifest_hash, j.model, j.host_id}, earlier);
        if (!v.accepted()) return refuse(v.refusal);
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
      [self, broadcast](const role_changed& rc) {
        auto& st = self->state;
        auto ch = st.changes.find(rc.worker);
        if (ch == st.changes.end()) {
          spdlog::debug("supervisor: role_changed of worker {} that is not changing (late?)",
                        rc.worker);
          return;
        }
        finish_change(self, rc.worker, rc);
        broadcast();
      },
      [self, broadcast](change_expired_atom, worker_id id, uint64_t seq) {
        auto& st = self->state;
        auto ch = st.changes.find(id);
        if (ch == st.changes.end() || ch->second.seq != seq) return;
        auto m = st.members.find(id);
        if (ch->second.old_down && !ch->second.registered && m != st.members.end()) {
          // Its actor exited and nothing replaced it: that was a loss after all.
          m->second.up = false;
          spdlog::warn("supervisor: {} '{}' is down (exited during its role change)",
                       to_string(m->second.info.kind), m->second.info.name);
        }
        role_changed rc;
        rc.from = ch->second.from;
        rc.to = ch->second.to;
        rc.drain_only = ch->second.drain_only;
        rc.error = {
            errc::timeout,
            fmt::format("no role_changed within {} ms",
                        std::chrono::duration_cast<std::chrono::milliseconds>(st.cfg.change_timeout)
                            .count())};
        finish_change(self, id, std::move(rc));
        broadcast();
      },
      [self, broadcast](const drain_request& req) -> caf::result<drain_report> {
        auto& st = self->state;
        bool known = std::any_of(st.nodes.begin(), st.nodes.end(),
                                 [&](const auto& n) { return n.second.name == req.node; });
        std::vector<worker_id> ids;
        for (const auto& [id, m] : st.members) {
          known |= m.info.node == req.node;
          // A resume takes the drained workers only (draining, no change under way).
          if (m.up && m.info.node == req.node &&
              (m.info.kind == role::prefill || m.info.kind == role::decode) &&
              (!req.resume || (m.draining && !st.changes.count(id))))
            ids.push_back(id);
        }
        drain_report refused;
        if (!known) {
          refused.error = {
              errc::invalid_request,
              fmt::format("unknown node '{}': no member of the cluster runs on it", req.node)};
          return refused;
        }
        if (ids.empty()) {
          refused.error = {
              errc::no_workers,
              req.resume ? fmt::format("node '{}' has no drained worker to resume", req.node)
                         : fmt::format("node '{}' has no prefill or decode worker up", req.node)};
          return refused;
        }
        for (auto id : ids)
          if (st.changes.count(id)) {
            refused.error = {errc::overloaded,
                             fmt::format("'{}' on node '{}' is changing role already; drain "
                                         "again when it is done",
                                         st.members.at(id).info.name, req.node)};
            return refused;
          }
        auto key = ++st.drain_seq;
        auto& op = st.drains[key];
        op.rp = self->make_response_promise<drain_report>();
        op.node = req.node;
        op.waiting.insert(ids.begin(), ids.end());
        const std::string what = req.resume ? "resume" : "drain";
        for (auto id : ids) {
          planner_event ev;
          ev.kind = what;
          ev.worker = st.members.at(id).info.name;
          ev.from = ev.to = st.members.at(id).info.kind;
          ev.why = fmt::format("{} node '{}'", what, req.node);
          record(st, std::move(ev));
          // A resume is a change to the worker's own role: it registers again, which
          // takes it back into routing.
          start_change(self, id, st.members.at(id).info.kind, !req.resume, what, false, key);
        }
        broadcast();
        return op.rp;
      },
      [self](plan_atom) {
        auto& st = self->state;
        self->delayed_send(self, std::chrono::milliseconds(st.cfg.planner->interval_ms),
                           plan_atom::value);
        if (!st.gathering) gather(self);
      },
      [self](status_atom) -> caf::result<cluster_status> {
        auto& st = self->state;
        auto rp = self->make_response_promise();
        auto result = std::make_shared<cluster_status>();
        result->cluster = st.cfg.cluster;
        result->ready = is_ready(st);
        // The planner's part is taken when the answer goes out: a planner tick whose
        // queries went to the same workers first has decided by then.
        result->planner = st.planner;
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
          auto finish = [self, result, pending, rp]() mutable {
            if (--*pending == 0) {
              result->planner = self->state.planner;
              std::sort(result->workers.begin(), result->workers.end(),
                        [](const auto& a, const auto& b) { return a.id < b.id; });
              rp.deliver(*result);
            }
          };
          self->request(m->handle, status_timeout, status_atom::value)
              .then(
                  [self, result, finish](worker_status ws) mutable {
                    // Out of routing: say so, and why, before the worker's own detail.
                    auto& st = self->state;
                    if (auto m = st.members.find(ws.id);
                        m != st.members.end() && m->second.draining) {
                      auto ch = st.changes.find(ws.id);
                      ws.detail = fmt::format("draining ({}); {}",
                                              ch == st.changes.end() ? std::string("drained")
                                              : ch->second.drain_only
                                                  ? std::string("drain")
                                                  : fmt::format("to {}", to_string(ch->second.to)),
                                              ws.detail);
                    }
                    result->workers.push_back(std::move(ws));
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
