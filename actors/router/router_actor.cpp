// The router: admits requests, picks workers, streams tokens back in order and builds
// each request's timeline. Decisions live in routing_policy.cpp. When there is a choice to
// make (several workers of a role, or local prefill allowed), it first asks the kv-store
// which workers hold the prompt's leading blocks, so that a prompt goes where its prefix
// is cached (KV-aware routing); the wait is part of the `routing` stage.
#include <map>
#include <unordered_map>

#include <spdlog/spdlog.h>

#include "actors/actors.hpp"
#include "actors/router/itl_attribution.hpp"
#include "common/clock.hpp"
#include "common/stats.hpp"
#include "engine/block_hash.hpp"

namespace tokenmill {
namespace {

struct worker_load {
  caf::actor handle;
  uint32_t active = 0;         ///< decode: requests assigned and not done
  uint64_t queued_tokens = 0;  ///< prefill: prompt tokens assigned and not prefilled
  std::string name;
};

/// The decode step behind a token that waits for its turn, on the router's clock.
struct pending_step {
  int64_t start_ns = 0, end_ns = 0;
  uint32_t batch = 0, prefill_tokens = 0;
};

/// Steps kept per request for the summary (the spike counts cover every token).
constexpr size_t max_recorded_steps = 4096;

struct request_state {
  caf::actor client;
  worker_id decode = 0;
  caf::actor decode_handle;
  std::optional<worker_id> prefill;  ///< set while a remote prefill is outstanding
  uint32_t prompt_tokens = 0;
  uint32_t next_index = 0;                 ///< next token index to release to the client
  std::map<uint32_t, token_id> pending;    ///< tokens that arrived ahead of their turn
  std::vector<int64_t> release_ns;         ///< when each token was released (for ITL)
  std::map<uint32_t, pending_step> steps;  ///< step behind each pending token
  itl_attribution itl;
  std::string prefill_name, decode_name;
  trace tr;
};

struct router_state {
  worker_info info;
  router_config cfg;
  std::map<worker_id, worker_load> decodes;
  std::map<worker_id, worker_load> prefills;
  caf::actor kv_store;
  std::unordered_map<request_id, request_state> requests;
  /// Requests waiting for the kv-store's overlap answer; true once cancelled meanwhile.
  std::unordered_map<request_id, bool> awaiting_overlap;
  uint64_t overlap_queries = 0;
  uint64_t overlap_failures = 0;  ///< queries that failed or timed out (routed without)
  uint64_t routed_to_cache = 0;   ///< requests sent to a worker holding part of the prefix
  uint64_t queued_prompt_tokens = 0;
  uint64_t completed = 0;
  uint64_t tokens_out = 0;
  uint64_t rejected = 0;
  std::vector<int64_t> offsets;  ///< clock offset per node index (supervisor's estimate)
  static inline const char* name = "router";
};

using router_ptr = caf::stateful_actor<router_state>*;

/// Puts every hop on the router's clock (the frontend beside it stamps on the same one):
/// a hop from node n moves by offset[n] - offset[router's node].
trace on_local_clock(const trace& tr, const std::vector<int64_t>& offsets, uint32_t self_node) {
  auto off = [&](uint32_t n) { return n < offsets.size() ? offsets[n] : int64_t{0}; };
  trace out = tr;
  for (auto& h : out.hops)
    h.t_ns += off(h.node) - off(self_node);
  return out;
}

request_summary make_summary(const router_state& st, const request_state& rs, request_id id) {
  request_summary s;
  s.id = id;
  s.prompt_tokens = rs.prompt_tokens;
  s.completion_tokens = rs.next_index;
  s.tr = on_local_clock(rs.tr, st.offsets, st.info.node_index);
  std::vector<double> gaps;
  for (size_t i = 1; i < rs.release_ns.size(); ++i)
    gaps.push_back(static_cast<double>(rs.release_ns[i] - rs.release_ns[i - 1]) / 1e6);
  auto itl = summarize(gaps);
  s.itl_mean_ms = itl.mean;
  s.itl_p50_ms = itl.p50;
  s.itl_p99_ms = itl.p99;
  s.prefill_worker = rs.prefill_name;
  s.decode_worker = rs.decode_name;
  s.itl_spikes = rs.itl.spikes();
  const auto& steps = rs.itl.steps();
  s.steps.assign(steps.begin(), steps.begin() + static_cast<std::ptrdiff_t>(
                                                    std::min(steps.size(), max_recorded_steps)));
  return s;
}

/// Sends a summary for a request that never reached a worker (or lost it) and forgets it.
void fail_request(router_ptr self, request_id id, errc code, std::string message) {
  auto& st = self->state;
  auto it = st.requests.find(id);
  if (it == st.requests.end()) return;
  auto s = make_summary(st, it->second, id);
  s.reason = code == errc::cancelled ? finish_reason::cancelled : finish_reason::error;
  s.error = error_info{code, std::move(message)};
  self->send(it->second.client, std::move(s));
  if (auto d = st.decodes.find(it->second.decode); d != st.decodes.end() && d->second.active > 0)
    --d->second.active;
  if (it->second.prefill) {
    if (auto p = st.prefills.find(*it->second.prefill); p != st.prefills.end())
      p->second.queued_tokens -=
          std::min<uint64_t>(p->second.queued_tokens, it->second.prompt_tokens);
    st.queued_prompt_tokens -=
        std::min<uint64_t>(st.queued_prompt_tokens, it->second.prompt_tokens);
  }
  st.requests.erase(it);
}

/// Releases every token that is next in line, as one chunk.
void release_tokens(router_ptr self, request_id id, request_state& rs) {
  token_chunk chunk;
  chunk.id = id;
  chunk.first_index = rs.next_index;
  auto now = now_ns();
  for (auto it = rs.pending.begin(); it != rs.pending.end() && it->first == rs.next_index;
       it = rs.pending.erase(it)) {
    chunk.tokens.push_back(it->second);
    rs.release_ns.push_back(now);
    pending_step ps;
    if (auto sit = rs.steps.find(it->first); sit != rs.steps.end()) {
      ps = sit->second;
      rs.steps.erase(sit);
    }
    rs.itl.add(it->first, now, ps.start_ns, ps.end_ns, ps.batch, ps.prefill_tokens);
    ++rs.next_index;
  }
  if (!chunk.tokens.empty()) {
    self->state.tokens_out += chunk.tokens.size();
    self->send(rs.client, std::move(chunk));
  }
}

/// Blocks of the prompt's prefix that worker `w` holds, per the kv-store's answer.
uint32_t overlap_of(const std::vector<worker_overlap>& overlap, worker_id w) {
  for (const auto& o : overlap)
    if (o.worker == w) return o.blocks;
  return 0;
}

void route(router_ptr self, generate_request req, const std::vector<worker_overlap>& overlap) {
  auto& st = self->state;
  auto id = req.id;
  auto prompt_tokens = static_cast<uint32_t>(req.prompt.size());
  std::vector<decode_candidate> dc;
  for (const auto& [wid, w] : st.decodes)
    dc.push_back({wid, w.active, overlap_of(overlap, wid)});
  auto d = pick_decode(dc);
  if (!d) {
    request_summary s;
    s.id = id;
    s.reason = finish_reason::error;
    s.error = {errc::no_workers, "no decode worker is up"};
    self->send(req.client, std::move(s));
    return;
  }
  const uint32_t cached = std::min(prompt_tokens, dc[*d].overlap_blocks * st.cfg.block_tokens);
  bool local =
      prefill_locally(prompt_tokens, cached, st.cfg.local_prefill_threshold, !st.prefills.empty());
  bool to_cache = local && dc[*d].overlap_blocks > 0;
  std::optional<worker_id> pid;
  caf::actor prefill;
  if (!local) {
    std::vector<prefill_candidate> pc;
    for (const auto& [wid, w] : st.prefills)
      pc.push_back({wid, w.queued_tokens, overlap_of(overlap, wid)});
    auto p = pick_prefill(pc, prompt_tokens, st.cfg.block_tokens);
    to_cache = pc[*p].overlap_blocks > 0 || dc[*d].overlap_blocks > 0;
    pid = pc[*p].id;
    prefill = st.prefills[*pid].handle;
    st.prefills[*pid].queued_tokens += prompt_tokens;
    st.queued_prompt_tokens += prompt_tokens;
  }
  if (to_cache) ++st.routed_to_cache;
  auto& dw = st.decodes[dc[*d].id];
  ++dw.active;
  request_state rs;
  rs.client = req.client;
  rs.decode = dc[*d].id;
  rs.decode_handle = dw.handle;
  rs.decode_name = dw.name;
  if (pid) rs.prefill_name = st.prefills[*pid].name;
  rs.prefill = pid;
  rs.prompt_tokens = prompt_tokens;
  req.tr.stamp(stage::routed, st.info.node_index);
  rs.tr.id = id;
  st.requests.emplace(id, std::move(rs));
  self->send(dw.handle, decode_assignment{std::move(req), prefill, self});
}

/// Whether the kv-store's overlap can change where `req` goes: some choice exists and the
/// prompt has a full block.
bool overlap_matters(const router_state& st, const generate_request& req) {
  if (!st.kv_store || req.prompt.size() < st.cfg.block_tokens) return false;
  return st.decodes.size() > 1 || st.prefills.size() > 1 ||
         (st.cfg.local_prefill_threshold > 0 && !st.prefills.empty());
}

/// Asks the kv-store for the prompt's overlap, then routes (without it, after a failure or
/// after 20 ms: the cache is an optimisation, never a reason to stall a request).
void route_with_overlap(router_ptr self, generate_request req) {
  auto& st = self->state;
  auto id = req.id;
  ++st.overlap_queries;
  st.awaiting_overlap.emplace(id, false);
  overlap_query q{block_hashes(req.prompt, st.cfg.block_tokens)};
  auto shared = std::make_shared<generate_request>(std::move(req));
  auto resume = [self, shared](std::vector<worker_overlap> overlap) {
    auto& st = self->state;
    auto it = st.awaiting_overlap.find(shared->id);
    if (it == st.awaiting_overlap.end()) return;
    bool cancelled = it->second;
    st.awaiting_overlap.erase(it);
    if (cancelled) {
      request_summary s;
      s.id = shared->id;
      s.reason = finish_reason::cancelled;
      s.error = {errc::cancelled, "cancelled before it was routed"};
      self->send(shared->client, std::move(s));
      return;
    }
    route(self, std::move(*shared), overlap);
  };
  self->request(st.kv_store, std::chrono::milliseconds(20), std::move(q))
      .then([resume](overlap_reply& r) { resume(std::move(r.workers)); },
            [self, resume, id](caf::error& e) {
              ++self->state.overlap_failures;
              spdlog::debug("router: overlap query for request {} failed: {}", id,
                            caf::to_string(e));
              resume({});
            });
}

caf::behavior router(router_ptr self, worker_info info, router_config cfg, caf::actor sup) {
  self->state.info = info;
  self->state.cfg = cfg;
  self->request(sup, std::chrono::seconds(5), register_worker{info, self})
      .then([](bool) {},
            [](caf::error& e) {
              spdlog::error("router: registration failed: {}", caf::to_string(e));
            });
  return {
      [self](generate_request& req) {
        auto& st = self->state;
        req.tr.stamp(stage::router_received, st.info.node_index);
        auto prompt_tokens = static_cast<uint32_t>(req.prompt.size());
        if (req.prompt.empty() || req.options.max_tokens == 0) {
          request_summary s;
          s.id = req.id;
          s.reason = finish_reason::error;
          s.error = {errc::invalid_request, "empty prompt or max_tokens 0"};
          self->send(req.client, std::move(s));
          return;
        }
        if (st.requests.count(req.id) != 0 || st.awaiting_overlap.count(req.id) != 0) {
          request_summary s;
          s.id = req.id;
          s.reason = finish_reason::error;
          s.error = {errc::invalid_request,
                     fmt::format("request id {} is already in flight", req.id)};
          self->send(req.client, std::move(s));
          return;
        }
        auto inflight = static_cast<uint32_t>(st.requests.size() + st.awaiting_overlap.size());
        if (admit(inflight, st.queued_prompt_tokens, prompt_tokens, st.cfg.limits) ==
            admission::overloaded) {
          ++st.rejected;
          request_summary s;
          s.id = req.id;
          s.reason = finish_reason::error;
          s.error = {errc::overloaded,
                     fmt::format("router is at capacity ({} requests in flight, {} prompt tokens "
                                 "queued); retry later",
                                 st.requests.size(), st.queued_prompt_tokens)};
          self->send(req.client, std::move(s));
          return;
        }
        if (overlap_matters(st, req))
          route_with_overlap(self, std::move(req));
        else
          route(self, std::move(req), {});
      },
      [self](first_token& ft) {
        auto& st = self->state;
        auto it = st.requests.find(ft.id);
        if (it == st.requests.end()) return;
        auto& rs = it->second;
        ft.tr.stamp(stage::first_token_router, st.info.node_index);
        rs.tr.merge(ft.tr);
        if (rs.prefill) {
          if (auto p = st.prefills.find(*rs.prefill); p != st.prefills.end())
            p->second.queued_tokens -=
                std::min<uint64_t>(p->second.queued_tokens, rs.prompt_tokens);
          st.queued_prompt_tokens -= std::min<uint64_t>(st.queued_prompt_tokens, rs.prompt_tokens);
          rs.prefill.reset();
        }
        if (rs.next_index == 0) rs.pending.emplace(0, ft.token);  // else: delivered twice
        release_tokens(self, ft.id, rs);
      },
      [self](const token_batch& b) {
        auto& st = self->state;
        for (const auto& t : b.tokens) {
          auto it = st.requests.find(t.id);
          if (it == st.requests.end()) continue;
          // A token delivered twice (index already released) is dropped: re-queueing it
          // would block every later token behind it.
          if (t.index < it->second.next_index) continue;
          it->second.pending.emplace(t.index, t.token);
          // The step's times, moved from the decode node's clock onto the router's.
          auto off = [&](uint32_t n) { return n < st.offsets.size() ? st.offsets[n] : int64_t{0}; };
          const int64_t shift = off(b.node) - off(st.info.node_index);
          it->second.steps[t.index] = {b.step_start_ns + shift, b.step_end_ns + shift, b.batch_size,
                                       b.prefill_tokens};
          release_tokens(self, t.id, it->second);
        }
      },
      [self](request_done& d) {
        auto& st = self->state;
        auto it = st.requests.find(d.id);
        if (it == st.requests.end()) return;
        auto& rs = it->second;
        rs.tr.merge(d.tr);
        if (rs.next_index < d.completion_tokens)
          spdlog::error("router: request {} finished with {} of {} tokens released", d.id,
                        rs.next_index, d.completion_tokens);
        auto s = make_summary(st, rs, d.id);
        s.reason = d.reason;
        s.error = d.error;
        s.prompt_tokens = d.prompt_tokens;
        self->send(rs.client, std::move(s));
        ++st.completed;
        if (auto w = st.decodes.find(rs.decode); w != st.decodes.end() && w->second.active > 0)
          --w->second.active;
        if (rs.prefill) {
          if (auto p = st.prefills.find(*rs.prefill); p != st.prefills.end())
            p->second.queued_tokens -=
                std::min<uint64_t>(p->second.queued_tokens, rs.prompt_tokens);
          st.queued_prompt_tokens -= std::min<uint64_t>(st.queued_prompt_tokens, rs.prompt_tokens);
        }
        st.requests.erase(it);
      },
      [self](const cancel_request& c) {
        auto& st = self->state;
        if (auto w = st.awaiting_overlap.find(c.id); w != st.awaiting_overlap.end()) {
          w->second = true;  // answered when the overlap query returns
          return;
        }
        auto it = st.requests.find(c.id);
        if (it == st.requests.end()) return;
        // The decode worker owns the request's blocks: it frees them, cancels the prefill
        // job and answers with request_done(cancelled), which ends the request here.
        self->send(it->second.decode_handle, c);
      },
      [self](const membership& m) {
        auto& st = self->state;
        std::map<worker_id, worker_load> decodes, prefills;
        for (const auto& mem : m.members) {
          if (!mem.up) continue;
          if (mem.info.kind == role::decode) {
            auto& w = decodes[mem.info.id];
            w = st.decodes.count(mem.info.id) ? st.decodes[mem.info.id] : worker_load{};
            w.handle = mem.handle;
            w.name = mem.info.name;
          } else if (mem.info.kind == role::prefill) {
            auto& w = prefills[mem.info.id];
            w = st.prefills.count(mem.info.id) ? st.prefills[mem.info.id] : worker_load{};
            w.handle = mem.handle;
            w.name = mem.info.name;
          } else if (mem.info.kind == role::kv_store) {
            st.kv_store = mem.handle;
          }
        }
        st.decodes = std::move(decodes);
        st.prefills = std::move(prefills);
        // Requests on a worker that left end now, with an error their client can act on.
        std::vector<std::pair<request_id, std::string>> lost;
        for (auto& [id, rs] : st.requests) {
          if (!st.decodes.count(rs.decode)) {
            lost.emplace_back(id, fmt::format("decode worker {} failed", rs.decode));
          } else if (rs.prefill && !st.prefills.count(*rs.prefill)) {
            lost.emplace_back(id, fmt::format("prefill worker {} failed", *rs.prefill));
            self->send(rs.decode_handle, cancel_request{id});
          }
        }
        for (auto& [id, msg] : lost) {
          spdlog::warn("router: request {}: {}", id, msg);
          fail_request(self, id, errc::worker_failed, msg);
        }
      },
      [self](const clock_update& u) { self->state.offsets = u.offsets; },
      [self](status_atom) {
        auto& st = self->state;
        worker_status ws;
        ws.id = st.info.id;
        ws.kind = role::router;
        ws.name = st.info.name;
        ws.node = st.info.node;
        ws.queued = static_cast<uint32_t>(st.requests.size() + st.awaiting_overlap.size());
        ws.completed = st.completed;
        ws.tokens_out = st.tokens_out;
        ws.detail = fmt::format(
            "{} decode, {} prefill workers; {} rejected (overloaded); {} routed to a cached "
            "prefix ({} overlap queries, {} failed)",
            st.decodes.size(), st.prefills.size(), st.rejected, st.routed_to_cache,
            st.overlap_queries, st.overlap_failures);
        return ws;
      },
  };
}

}  // namespace

caf::actor spawn_router(caf::actor_system& sys, worker_info info, router_config cfg,
                        caf::actor supervisor) {
  return sys.spawn(router, std::move(info), cfg, std::move(supervisor));
}

}  // namespace tokenmill
