// The router: admits requests, picks workers, streams tokens back in order and builds
// each request's timeline. Decisions live in routing_policy.cpp (admission, worker choice,
// whether to ask the kv-store), token_order.cpp (client order across attempts),
// prefill_backlog.cpp (prompt tokens queued at prefill workers) and clock_shift.cpp. When there is
// a choice to make (several workers of a role, or local prefill allowed), it first asks the
// kv-store which workers hold the prompt's leading blocks, so that a prompt goes where its prefix
// is cached (KV-aware routing); the wait is part of the `routing` stage.
//
// Migration (decisions in migration.cpp): when a request's decode worker leaves, its
// remote prefill worker leaves before the first token, its worker reports a worker or
// transfer failure, or its attempt stalls, the request is routed again as prompt +
// delivered tokens under a fresh attempt id; the new attempt's tokens reach the client at
// offset + index. A periodic tick enforces the request timeout and detects stalls.
// A live migration (decode workers move a sequence with its KV, same attempt id) needs
// no re-submission: attempt_moved only points the request at its new decode worker.
#include <map>
#include <unordered_map>
#include <utility>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "actors/actors.hpp"
#include "actors/detail/worker_common.hpp"
#include "actors/router/admission_policy.hpp"
#include "actors/router/clock_shift.hpp"
#include "actors/router/itl_attribution.hpp"
#include "actors/router/prefill_backlog.hpp"
#include "actors/router/token_order.hpp"
#include "common/clock.hpp"
#include "common/stats.hpp"
#include "engine/block_hash.hpp"
#include "engine/chunk_prefill.hpp"

namespace tokenmill {
namespace {

struct worker_load {
  caf::actor handle;
  uint32_t active = 0;  ///< decode: requests assigned and not done
  std::string name;
  /// Changing role or draining (member.draining): its requests go on, new ones go elsewhere.
  bool draining = false;
  /// Its engine's prefill speed for the cost model (into router_config's speeds or
  /// default_speed, which live as long as the router).
  const prefill_speed* speed = nullptr;
};

/// Workers of `ws` that take new requests.
size_t taking_work(const std::map<worker_id, worker_load>& ws) {
  size_t n = 0;
  for (const auto& [id, w] : ws)
    n += !w.draining;
  return n;
}

/// Steps kept per request for the summary (the spike counts cover every token).
constexpr size_t max_recorded_steps = 4096;

struct request_state {
  /// The request as admitted: original prompt and options, the client, and the trace up
  /// to router_received. Every attempt is built from it.
  generate_request req;
  request_id attempt = 0;  ///< the id the workers know the current attempt by
  request_phase phase = request_phase::routing;
  worker_id decode = 0;
  caf::actor decode_handle;         ///< invalid while routing
  token_order order;                ///< the client's view of the tokens, across attempts
  std::vector<int64_t> release_ns;  ///< when each token was released (for ITL)
  itl_attribution itl;
  std::string prefill_name, decode_name;
  trace tr;
  int64_t admitted_ns = 0;  ///< router clock
  int64_t progress_ns = 0;  ///< the current attempt was routed or last produced a token
  bool cancelling = false;  ///< the client cancelled; the decode worker's answer ends it
  uint32_t migrations = 0;
  std::vector<std::string> migration_reasons;
  uint32_t live_moves = 0;  ///< of `migrations`, moves with the KV (no recompute, no limit)
  /// Of `migrations`, attempts a draining worker gave back (no failure: no limit either;
  /// drains are finite, so a request cannot bounce for ever).
  uint32_t drained_moves = 0;
  uint32_t move_epoch = 0;             ///< the current attempt's latest attempt_moved epoch
  std::vector<routing_score> routing;  ///< the current attempt's routing decision
  /// Its first decode step reached the router (or it ended complete): it no longer waits
  /// as far as adaptive admission is concerned.
  bool started = false;
  /// Requests that waited in front of it when it was admitted (adaptive admission
  /// measures the unloaded start time on those that found none).
  uint32_t ahead = 0;
};

struct router_state {
  worker_info info;
  router_config cfg;
  std::map<worker_id, worker_load> decodes;
  std::map<worker_id, worker_load> prefills;
  caf::actor kv_store;
  /// Every admitted request, by the client's id, from admission (routing included) to its
  /// summary.
  std::unordered_map<request_id, request_state> requests;
  /// The attempt each worker-facing id belongs to (attempt id -> client id). The first
  /// attempt uses the client's id; later ones a minted id (mint_attempt_id), so messages
  /// of a dead or cancelled attempt find nothing here and are dropped.
  std::unordered_map<request_id, request_id> attempts;
  uint64_t attempt_counter = 0;
  uint64_t overlap_queries = 0;
  uint64_t overlap_failures = 0;  ///< queries that failed or timed out (routed without)
  uint64_t routed_to_cache = 0;   ///< requests sent to a worker holding part of the prefix
  /// Requests whose computing worker (prefill, or decode for a local prefill) holds some of
  /// their segments' chunks (issue 17).
  uint64_t routed_to_chunks = 0;
  /// Prompt tokens at prefill workers, by request (client id) and worker.
  prefill_backlog backlog;
  /// Uncached prompt tokens of local prefills, by request and decode worker: the queue
  /// term of a decode worker in the cost model (not counted for admission).
  prefill_backlog local_backlog;
  uint64_t routed_local = 0;
  uint64_t routed_fetch = 0;  ///< prefills (local or remote) told to fetch a prefix from a peer
                              ///< prefilled on their decode worker
  uint64_t completed = 0;
  uint64_t tokens_out = 0;
  uint64_t rejected = 0;
  uint64_t rejected_adaptive = 0;  ///< of `rejected`, by the estimated queue wait
  /// Admission by measured capacity: waiting requests and the service rate.
  adaptive_admission admission{adaptive_admission_config{}};
  uint64_t migrated = 0;         ///< moves of requests to another worker
  uint64_t lost = 0;             ///< requests failed because a worker failed and no move was left
  uint64_t timed_out = 0;        ///< requests ended by the request timeout
  std::vector<int64_t> offsets;  ///< clock offset per node index (supervisor's estimate)
  /// TTFT and token gaps of the requests that ended since the supervisor's last
  /// latency query (the planner's service-level signal).
  latency_samples recent_latency;
  /// When the planner last asked for `recent_latency` (0: never). Samples are kept only
  /// while it asks, so a cluster without a planner holds none.
  int64_t latency_asked_ns = 0;
  static inline const char* name = "router";
};

using router_ptr = caf::stateful_actor<router_state>*;

request_summary make_summary(const router_state& st, const request_state& rs, request_id id) {
  request_summary s;
  s.id = id;
  s.prompt_tokens = static_cast<uint32_t>(rs.req.prompt.size());
  s.completion_tokens = rs.order.next_index();
  // Every hop on the router's clock (the frontend beside it stamps on the same one).
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
  s.migrations = rs.migrations;
  s.migration_reasons = rs.migration_reasons;
  s.routing = rs.routing;
  return s;
}

/// Forgets the current attempt: its worker loads and its id. Late messages of the attempt
/// find nothing afterwards.
void detach_attempt(router_state& st, request_state& rs) {
  st.backlog.release(rs.req.id);
  st.local_backlog.release(rs.req.id);
  if (rs.decode_handle) {
    if (auto d = st.decodes.find(rs.decode); d != st.decodes.end() && d->second.active > 0)
      --d->second.active;
    rs.decode_handle = caf::actor{};
  }
  if (rs.attempt != 0) st.attempts.erase(rs.attempt);
  rs.attempt = 0;
  rs.move_epoch = 0;
  rs.phase = request_phase::routing;
}

/// Keeps, for the next latency query, the TTFT of a request's first released token or the
/// gap since its previous one, as the token is released: the planner sees a phase's
/// latencies while its requests run, not when they end (a long generation ends many
/// planner intervals after its first tokens). Kept only while a planner asks (within a
/// minute of its last query): without one, the buffers grew to their cap (2 x 512 KiB),
/// which the soak saw as the head node's RSS growing. Capped, in case the planner's
/// queries stop coming.
void note_release(router_state& st, const request_state& rs, int64_t now) {
  constexpr int64_t keep_ns = 60'000'000'000;
  if (st.latency_asked_ns == 0 || now - st.latency_asked_ns > keep_ns) return;
  auto& l = st.recent_latency;
  constexpr size_t cap = 1 << 16;
  if (rs.release_ns.empty()) {
    if (l.ttft_ms.size() < cap)
      l.ttft_ms.push_back(static_cast<double>(now - rs.admitted_ns) / 1e6);
  } else if (l.itl_ms.size() < cap) {
    l.itl_ms.push_back(static_cast<double>(now - rs.release_ns.back()) / 1e6);
  }
}

/// Sends the last message of a request and forgets it everywhere.
void end_request(router_ptr self, request_id id, request_summary s) {
  auto& st = self->state;
  auto it = st.requests.find(id);
  if (it == st.requests.end()) return;
  detach_attempt(st, it->second);
  if (!it->second.started) {
    // Complete without a decode step (max_tokens 1, an EOS first token) is a service too.
    if (s.reason == finish_reason::cancelled || s.reason == finish_reason::error)
      st.admission.dropped(now_ns());
    else
      st.admission.started(now_ns(), it->second.admitted_ns, it->second.ahead);
  }
  self->send(it->second.req.client, std::move(s));
  st.requests.erase(it);
}

/// Ends a request with an error (or cancelled) summary.
void fail_request(router_ptr self, request_id id, errc code, std::string message) {
  auto& st = self->state;
  auto it = st.requests.find(id);
  if (it == st.requests.end()) return;
  auto s = make_summary(st, it->second, id);
  s.reason = code == errc::cancelled ? finish_reason::cancelled : finish_reason::error;
  s.error = error_info{code, std::move(message)};
  end_request(self, id, std::move(s));
}

/// Releases every token that is next in line, as one chunk.
void release_tokens(router_ptr self, request_id id, request_state& rs) {
  token_chunk chunk;
  chunk.id = id;
  chunk.first_index = rs.order.next_index();
  auto now = now_ns();
  const bool logprobs = rs.req.options.sampling.top_logprobs >= 0;
  for (auto& r : rs.order.take_ready()) {
    chunk.tokens.push_back(r.token);
    if (logprobs) chunk.logprobs.push_back(std::move(r.logprobs));
    note_release(self->state, rs, now);
    rs.release_ns.push_back(now);
    rs.itl.add(r.index, now, r.step.start_ns, r.step.end_ns, r.step.batch, r.step.prefill_tokens);
  }
  if (!chunk.tokens.empty()) {
    self->state.tokens_out += chunk.tokens.size();
    self->send(rs.req.client, std::move(chunk));
  }
}

/// The prefill speed the cost model uses for the worker named `name`.
const prefill_speed* speed_of(const router_config& cfg, const std::string& name) {
  auto it = cfg.speeds.find(name);
  return it != cfg.speeds.end() ? &it->second : &cfg.default_speed;
}

/// A candidate for worker `w` with the prompt's prefix it holds (in its pool and second
/// tier) and the segments whose chunks it holds (`segments`: the ranges the query's chunks
/// were of), per the kv-store's answer.
route_candidate candidate(const std::vector<worker_overlap>& overlap,
                          std::span<const token_range> segments, worker_id w, uint64_t queued,
                          uint32_t active, bool draining, const prefill_speed* speed) {
  route_candidate c{w, 0, queued, active, draining, speed};
  for (const auto& o : overlap)
    if (o.worker == w) {
      c.overlap_blocks = o.blocks;
      c.host_blocks = o.host_blocks;
      c.disk_blocks = o.disk_blocks;
      for (auto i : o.chunks)
        if (i < segments.size()) c.chunk_hits.push_back(segments[i]);
    }
  return c;
}

/// The segments of a segmented request whose chunks are worth asking the kv-store about:
/// those a worker whose engine blends looks up in its chunk cache (kv_worker::blends: at
/// least two segment ends), unless the recompute ratio that will apply is 1 (a blend at 1
/// recomputes every token: a chunk hit saves nothing). Empty otherwise, or when the ends do
/// not fit the prompt (the workers then prefill it in full).
std::vector<token_range> chunk_segments(const generate_request& req, float default_ratio) {
  std::vector<token_range> out;
  const auto& ends = req.options.segment_ends;
  if (ends.size() < 2) return out;
  if (resolve_recompute_ratio(req.options.recompute_ratio, default_ratio) >= 1.0f) return out;
  auto segs = segments_from_ends(ends, static_cast<uint32_t>(req.prompt.size()));
  if (!segs) return out;
  out.reserve(segs->size());
  for (const auto& sg : *segs)
    out.push_back({sg.begin, sg.end});
  return out;
}

/// The cost model's scores as the trace and `tokenmill top` show them (ms, by name).
std::vector<routing_score> score_record(const router_state& st, const route_plan& plan,
                                        std::span<const route_candidate> dc,
                                        std::span<const route_candidate> pc) {
  std::vector<routing_score> out;
  out.reserve(dc.size() + pc.size());
  auto add = [&](const candidate_score& c, const std::map<worker_id, worker_load>& ws,
                 bool chosen) {
    routing_score r;
    auto it = ws.find(c.id);
    r.worker = it != ws.end() ? it->second.name : fmt::format("worker {}", c.id);
    r.prefill = c.prefill_worker;
    r.chosen = chosen;
    r.eligible = c.eligible;
    r.local = c.local;
    r.cached_tokens = c.cached_tokens;
    r.prefill_ms = c.prefill_s * 1e3;
    r.queue_ms = c.queue_s * 1e3;
    r.transfer_ms = (c.transfer_s + c.onboard_s + c.fetch_s) * 1e3;
    r.load_ms = c.load_s * 1e3;
    r.total_ms = c.total * 1e3;
    out.push_back(std::move(r));
  };
  for (size_t i = 0; i < plan.decode_scores.size(); ++i)
    add(plan.decode_scores[i], st.decodes, plan.decode == i);
  for (size_t i = 0; i < plan.prefill_scores.size(); ++i)
    add(plan.prefill_scores[i], st.prefills, plan.prefill == i);
  return out;
}

/// Routes attempt `req` of request `cid` (in `requests`, phase routing) by the cost model
/// (routing_policy.hpp): the decode worker (not `avoid` when another is up) and, for a
/// remote prefill, the prefill worker.
void route(router_ptr self, request_id cid, generate_request req,
           const std::vector<worker_overlap>& overlap, std::span<const token_range> segments,
           std::optional<worker_id> avoid) {
  auto& st = self->state;
  auto rit = st.requests.find(cid);
  if (rit == st.requests.end()) return;
  auto& rs = rit->second;
  auto prompt_tokens = static_cast<uint32_t>(req.prompt.size());
  std::vector<route_candidate> dc;
  dc.reserve(st.decodes.size());
  for (const auto& [wid, w] : st.decodes)
    if (!avoid || wid != *avoid || taking_work(st.decodes) == 1)
      dc.push_back(candidate(overlap, segments, wid, st.local_backlog.queued(wid), w.active,
                             w.draining, w.speed));
  std::vector<route_candidate> pc;
  pc.reserve(st.prefills.size());
  for (const auto& [wid, w] : st.prefills)
    pc.push_back(candidate(overlap, segments, wid, st.backlog.queued(wid), 0, w.draining, w.speed));
  // The ratio the computing worker will blend at: the request's, else the workers' default.
  const float ratio = resolve_recompute_ratio(req.options.recompute_ratio, st.cfg.recompute_ratio);
  auto plan = plan_route(dc, pc, prompt_tokens, st.cfg.block_tokens, st.cfg.local_prefill_threshold,
                         st.cfg.cost, &st.cfg.fetch, ratio);
  if (!plan.decode) {
    if (rs.migrations == 0) {
      fail_request(self, cid, errc::no_workers,
                   st.decodes.empty() ? std::string("no decode worker is up")
                                      : fmt::format("no decode worker takes new requests ({} "
                                                    "draining or changing role)",
                                                    st.decodes.size()));
    } else {
      ++st.lost;
      fail_request(self, cid, errc::worker_failed,
                   fmt::format("request lost: it moved {} time{} ({}) and no decode worker is "
                               "left to continue on",
                               rs.migrations, rs.migrations == 1 ? "" : "s",
                               fmt::join(rs.migration_reasons, ", ")));
    }
    return;
  }
  const auto& d = dc[*plan.decode];
  const bool local = !plan.prefill;
  bool to_cache = d.overlap_blocks > 0;
  const auto& computing =
      local ? plan.decode_scores[*plan.decode] : plan.prefill_scores[*plan.prefill];
  if (computing.chunk_tokens > 0) ++st.routed_to_chunks;
  caf::actor prefill;
  rs.prefill_name.clear();
  // The backlog counts only what the computing worker will prefill: not the prefix it
  // reuses from its cache or fetches from a peer.
  const auto computed = computed_tokens(plan, prompt_tokens, st.cfg.block_tokens);
  if (local) {
    st.local_backlog.add(cid, d.id, computed);
    ++st.routed_local;
  } else {
    const auto& p = pc[*plan.prefill];
    to_cache = to_cache || p.overlap_blocks > 0;
    auto& pw = st.prefills[p.id];
    prefill = pw.handle;
    st.backlog.add(cid, p.id, computed);
    rs.prefill_name = pw.name;
  }
  if (to_cache) ++st.routed_to_cache;
  rs.routing = score_record(st, plan, dc, pc);
  decode_assignment a{std::move(req), prefill, self, {}};
  // Fetch instead of recompute: the prefix another worker (decode or prefill) holds beyond
  // what the computing worker (the decode worker for a local prefill, else the prefill
  // worker) holds, when the cost model found pulling it cheaper than prefilling it. The
  // decode worker passes the hint on to its prefill worker with the job.
  if (computing.fetch_source) {
    const size_t src = *computing.fetch_source;
    const bool from_prefill = src >= dc.size();
    const auto& x = from_prefill ? pc[src - dc.size()] : dc[src];
    const auto& pool = from_prefill ? st.prefills : st.decodes;
    if (auto it = pool.find(x.id); it != pool.end() && it->second.handle) {
      a.fetch.from = it->second.handle;
      a.fetch.source = it->second.name;
      a.fetch.end_block = computing.fetch_end;
      ++st.routed_fetch;
      // In the trace's routing candidates as "fetch:<source>": the tokens it brings, the
      // estimated fetch time (transfer), the prefill time it saves and the net gain.
      routing_score r;
      r.worker = "fetch:" + it->second.name;
      r.prefill = from_prefill;
      r.chosen = true;
      r.cached_tokens = (computing.fetch_end - computing.fetch_first) * st.cfg.block_tokens;
      r.prefill_ms = computing.fetch_saved_s * 1e3;
      r.transfer_ms = computing.fetch_s * 1e3;
      r.total_ms = (st.cfg.cost.weights.prefill * computing.fetch_saved_s -
                    st.cfg.cost.weights.transfer * computing.fetch_s) *
                   1e3;
      rs.routing.push_back(std::move(r));
    }
  }
  auto& dw = st.decodes[d.id];
  ++dw.active;
  rs.decode = d.id;
  rs.decode_handle = dw.handle;
  rs.decode_name = dw.name;
  rs.attempt = a.req.id;
  rs.phase = local ? request_phase::first_token : request_phase::prefill;
  rs.progress_ns = now_ns();
  st.attempts[a.req.id] = cid;
  a.req.tr.stamp(stage::routed, st.info.node_index);
  self->send(dw.handle, std::move(a));
}

/// Asks the kv-store for the prompt's overlap, then routes (without it, after a failure or
/// after cfg.overlap_timeout: the cache is an optimisation, never a reason to stall a request). A
/// request that ended or moved on meanwhile (cancel, timeout) is left alone.
void route_with_overlap(router_ptr self, request_id cid, generate_request req,
                        std::optional<worker_id> avoid) {
  auto& st = self->state;
  ++st.overlap_queries;
  overlap_query q{block_hashes(req.prompt, st.cfg.block_tokens), {}};
  // Chunk reuse (issue 17): each segment's chunk hashes, as the workers cache them
  // (chunk_prefill.hpp), asked in the same round trip.
  auto segments =
      std::make_shared<std::vector<token_range>>(chunk_segments(req, st.cfg.recompute_ratio));
  const std::span<const token_id> prompt(req.prompt);
  for (const auto& sg : *segments)
    q.chunks.push_back(
        chunk_block_hashes(prompt.subspan(sg.begin, sg.end - sg.begin), st.cfg.block_tokens));
  auto shared = std::make_shared<generate_request>(std::move(req));
  auto gen = st.requests.at(cid).migrations;
  auto resume = [self, shared, segments, cid, gen, avoid](std::vector<worker_overlap> overlap) {
    auto& st = self->state;
    auto it = st.requests.find(cid);
    if (it == st.requests.end() || it->second.phase != request_phase::routing ||
        it->second.migrations != gen)
      return;
    route(self, cid, std::move(*shared), overlap, *segments, avoid);
  };
  self->request(st.kv_store, st.cfg.overlap_timeout, std::move(q))
      .then([resume](overlap_reply& r) { resume(std::move(r.workers)); },
            [self, resume, cid](caf::error& e) {
              ++self->state.overlap_failures;
              spdlog::debug("router: overlap query for request {} failed: {}", cid,
                            caf::to_string(e));
              resume({});
            });
}

/// Routes attempt `req` of request `cid`, asking the kv-store first when that can matter.
void dispatch(router_ptr self, request_id cid, generate_request req,
              std::optional<worker_id> avoid = std::nullopt) {
  const auto& st = self->state;
  const bool known = static_cast<bool>(st.kv_store);
  const auto prompt = static_cast<uint32_t>(req.prompt.size());
  const auto decodes = taking_work(st.decodes), prefills = taking_work(st.prefills);
  // With fetch on, the overlap matters even without a choice of worker: any other worker
  // (one decode and one prefill worker are two) may hold a prefix the computing one can pull.
  if (overlap_matters(known, prompt, st.cfg.block_tokens, decodes, prefills,
                      st.cfg.local_prefill_threshold) ||
      (st.cfg.fetch.enabled &&
       overlap_matters(known, prompt, st.cfg.block_tokens, decodes + prefills, 0, 0)))
    route_with_overlap(self, cid, std::move(req), avoid);
  else
    route(self, cid, std::move(req), {}, {}, avoid);
}

/// The current attempt of request `cid` is gone for `why` (the caller has cancelled it on
/// a decode worker that may still hold it): continue on another worker, or end the
/// request with a clear error (plan_migration decides). `detail` says what failed.
void migrate(router_ptr self, request_id cid, migration_reason why, const std::string& worker,
             const std::string& detail) {
  auto& st = self->state;
  auto it = st.requests.find(cid);
  if (it == st.requests.end()) return;
  auto& rs = it->second;
  const auto previous = rs.decode;
  detach_attempt(st, rs);
  if (rs.cancelling) {
    fail_request(self, cid, errc::cancelled, "cancelled (its worker was lost meanwhile)");
    return;
  }
  auto d = plan_migration(rs.req.prompt, rs.req.options, rs.order.delivered(),
                          rs.migrations - rs.live_moves - rs.drained_moves, st.cfg.migration_limit,
                          why, worker, st.cfg.eos);
  switch (d.what) {
    case migration_decision::kind::complete: {
      auto s = make_summary(st, rs, cid);
      s.reason = d.reason;
      end_request(self, cid, std::move(s));
      return;
    }
    case migration_decision::kind::lost:
      spdlog::warn("router: request {} lost: {}: {}", cid, d.error, detail);
      ++st.lost;
      fail_request(self, cid, errc::worker_failed, d.error + ": " + detail);
      return;
    case migration_decision::kind::resubmit:
      break;
  }
  if (st.decodes.empty()) {
    spdlog::warn("router: request {} lost: no decode worker is left: {}", cid, detail);
    ++st.lost;
    fail_request(self, cid, errc::worker_failed,
                 fmt::format("{}; no decode worker is left to continue on", detail));
    return;
  }
  spdlog::warn("router: request {} moves ({}, {} tokens delivered): {}", cid, to_string(why),
               rs.order.next_index(), detail);
  ++rs.migrations;
  if (why == migration_reason::drained) ++rs.drained_moves;
  ++st.migrated;
  rs.migration_reasons.emplace_back(to_string(why));
  rs.tr.stamp(stage::migrated, st.info.node_index);
  rs.order.restart(d.plan.offset);  // waiting tokens: the new attempt produces them again
  generate_request next = rs.req;
  next.id = mint_attempt_id(st.info.id, ++st.attempt_counter);
  next.prompt = std::move(d.plan.prompt);
  next.options.max_tokens = d.plan.max_tokens;
  // The prompt now ends with the tokens delivered so far: the penalties count them as
  // output, and workers replay them through the request's grammar.
  next.options.sampling.resumed = d.plan.offset;
  const bool avoid_previous = why == migration_reason::stalled ||
                              why == migration_reason::worker_failed ||
                              why == migration_reason::transfer_failed;
  dispatch(self, cid, std::move(next),
           avoid_previous ? std::optional<worker_id>{previous} : std::nullopt);
}

/// The request of a worker-facing attempt id, if it is still the current attempt.
request_state* find_attempt(router_state& st, request_id attempt, request_id* cid = nullptr) {
  auto a = st.attempts.find(attempt);
  if (a == st.attempts.end()) return nullptr;
  auto it = st.requests.find(a->second);
  if (it == st.requests.end()) return nullptr;
  if (cid) *cid = a->second;
  return &it->second;
}

/// The watchdog (one self-sent tick for all requests): ends requests past their timeout
/// and moves attempts that stopped making progress.
void watchdog(router_ptr self) {
  auto& st = self->state;
  const watchdog_limits limits{st.cfg.request_timeout.count(), st.cfg.stall_timeout.count()};
  const auto now = now_ns();
  std::vector<std::pair<request_id, watchdog_verdict>> hits;
  for (const auto& [id, rs] : st.requests) {
    auto v = check_request(now, rs.admitted_ns, rs.progress_ns, rs.phase, limits);
    if (v != watchdog_verdict::ok) hits.emplace_back(id, v);
  }
  for (auto [id, v] : hits) {
    auto it = st.requests.find(id);
    if (it == st.requests.end()) continue;
    auto& rs = it->second;
    // The worker may be alive but slow: cancel there, so that it frees the blocks.
    if (rs.decode_handle) self->send(rs.decode_handle, cancel_request{rs.attempt});
    const auto& worker = rs.phase == request_phase::prefill ? rs.prefill_name : rs.decode_name;
    if (v == watchdog_verdict::timed_out) {
      auto msg = timeout_message(rs.phase, worker, now - rs.admitted_ns, rs.order.next_index());
      spdlog::warn("router: request {}: {}", id, msg);
      ++st.timed_out;
      fail_request(self, id, errc::timeout, std::move(msg));
    } else {
      auto name = worker;
      migrate(
          self, id, migration_reason::stalled, name,
          fmt::format(
              "no progress on worker {} for {} ms", name,
              std::chrono::duration_cast<std::chrono::milliseconds>(st.cfg.stall_timeout).count()));
    }
  }
}

caf::behavior router(router_ptr self, worker_info info, router_config cfg, caf::actor sup) {
  self->state.info = info;
  self->state.cfg = cfg;
  self->state.admission = adaptive_admission(cfg.admission);
  register_with_supervisor(self, sup, info, "router");
  if (cfg.tick_interval.count() > 0) self->delayed_send(self, cfg.tick_interval, tick_atom::value);
  return {
      [self](generate_request& req) {
        auto& st = self->state;
        req.tr.stamp(stage::router_received, st.info.node_index);
        auto prompt_tokens = static_cast<uint32_t>(req.prompt.size());
        auto refuse = [&](errc code, std::string msg, int64_t retry_after_ns = 0) {
          request_summary s;
          s.id = req.id;
          s.reason = finish_reason::error;
          s.error = {code, std::move(msg)};
          s.retry_after_ms = static_cast<uint32_t>(
              std::min<int64_t>((retry_after_ns + 999'999) / 1'000'000, UINT32_MAX));
          self->send(req.client, std::move(s));
        };
        if (req.prompt.empty() || req.options.max_tokens == 0)
          return refuse(errc::invalid_request, "empty prompt or max_tokens 0");
        if (is_attempt_id(req.id))
          return refuse(errc::invalid_request,
                        fmt::format("request id {:#x} has the top bit set, which the router "
                                    "reserves for migrated attempts",
                                    req.id));
        if (st.requests.count(req.id) != 0)
          return refuse(errc::invalid_request,
                        fmt::format("request id {} is already in flight", req.id));
        auto inflight = static_cast<uint32_t>(st.requests.size());
        const auto now = now_ns();
        auto verdict = st.admission.decide(now);
        if (admit(inflight, st.backlog.total(), prompt_tokens, st.cfg.limits) ==
            admission::overloaded) {
          ++st.rejected;
          return refuse(errc::overloaded,
                        fmt::format("router is at capacity ({} requests in flight, {} prompt "
                                    "tokens queued); retry later",
                                    st.requests.size(), st.backlog.total()),
                        std::max(verdict.retry_after_ns, st.cfg.admission.retry_after_min_ns));
        }
        if (!verdict.admit) {
          ++st.rejected;
          ++st.rejected_adaptive;
          const auto& ac = st.cfg.admission;
          std::string target =
              verdict.by_ttft_slo
                  ? fmt::format("TTFT objective {} ms, unloaded start {} ms",
                                ac.ttft_slo_ns / 1'000'000,
                                st.admission.unloaded_start_ns().value_or(0) / 1'000'000)
                  : fmt::format("target {} ms", ac.max_queue_ns / 1'000'000);
          return refuse(errc::overloaded,
                        fmt::format("router is at capacity: a new request would wait about {} ms "
                                    "({}; {} waiting, {:.1f} started/s); retry in {} ms",
                                    verdict.estimated_wait_ns / 1'000'000, target,
                                    st.admission.waiting(), st.admission.service_rate().value_or(0),
                                    verdict.retry_after_ns / 1'000'000),
                        verdict.retry_after_ns);
        }
        auto id = req.id;
        request_state rs;
        rs.req = req;
        rs.tr.id = id;
        rs.admitted_ns = rs.progress_ns = now;
        rs.ahead = st.admission.admitted(now);
        st.requests.emplace(id, std::move(rs));
        dispatch(self, id, std::move(req));
      },
      [self](first_token& ft) {
        auto& st = self->state;
        request_id cid = 0;
        auto* rs = find_attempt(st, ft.id, &cid);
        if (!rs) return;
        rs->progress_ns = now_ns();
        if (rs->order.offset() == 0) {
          ft.tr.stamp(stage::first_token_router, st.info.node_index);
          rs->tr.merge(ft.tr);
        } else {
          // The client has had its first token since the first attempt: this attempt's
          // TTFT-path stamps would only blur the request's TTFT breakdown.
          for (const auto& h : ft.tr.hops)
            if (!on_ttft_path(h.where)) rs->tr.hops.push_back(h);
        }
        st.backlog.release(cid);
        st.local_backlog.release(cid);
        rs->phase = request_phase::decoding;
        // Delivered twice (or already released): dropped.
        rs->order.accept(0, ft.token, std::nullopt, std::move(ft.logprobs));
        release_tokens(self, cid, *rs);
      },
      [self](const token_batch& b) {
        auto& st = self->state;
        for (const auto& t : b.tokens) {
          request_id cid = 0;
          auto* rs = find_attempt(st, t.id, &cid);
          if (!rs) continue;  // an ended request, or an attempt it moved away from
          rs->progress_ns = now_ns();
          if (!rs->started) {
            rs->started = true;
            st.admission.started(rs->progress_ns, rs->admitted_ns, rs->ahead);
          }
          // Decode tokens mean the prompt's KV arrived: the prefill part is over.
          st.backlog.release(cid);
          st.local_backlog.release(cid);
          rs->phase = request_phase::decoding;
          // The step's times, moved from the decode node's clock onto the router's.
          const int64_t shift = clock_shift(st.offsets, b.node, st.info.node_index);
          // A token delivered twice (index already released) is dropped: re-queueing it
          // would block every later token behind it.
          if (!rs->order.accept(t.index, t.token,
                                pending_step{b.step_start_ns + shift, b.step_end_ns + shift,
                                             b.batch_size, b.prefill_tokens},
                                t.logprobs))
            continue;
          release_tokens(self, cid, *rs);
        }
      },
      [self](request_done& d) {
        auto& st = self->state;
        request_id cid = 0;
        auto* rs = find_attempt(st, d.id, &cid);
        if (!rs) return;
        if (d.reason == finish_reason::error && !rs->cancelling) {
          auto why = d.handed_back ? std::optional{migration_reason::drained}
                                   : migration_for_error(d.error.code);
          if (why) {
            // The worker has already let go of the attempt. Its decode-side stamps stay
            // out of the trace: `finished` and the rest describe the attempt that serves
            // the request to its end.
            auto worker = rs->decode_name;
            migrate(self, cid, *why, worker,
                    fmt::format("{} on worker {}: {}", to_string(d.error.code), worker,
                                d.error.message));
            return;
          }
        }
        rs->tr.merge(d.tr);
        if (rs->order.next_index() < rs->order.offset() + d.completion_tokens)
          spdlog::error("router: request {} finished with {} of {} tokens released", cid,
                        rs->order.next_index(), rs->order.offset() + d.completion_tokens);
        auto s = make_summary(st, *rs, cid);
        s.reason = d.reason;
        s.error = d.error;
        if (rs->migrations == 0) s.prompt_tokens = d.prompt_tokens;
        ++st.completed;
        end_request(self, cid, std::move(s));
      },
      [self](const attempt_moved& m) {
        // A live migration: the attempt goes on, with its id and token indices, on another
        // decode worker; cancels, the watchdog, loads and the summary follow it there. A
        // later epoch wins (the source takes a move back with the next one).
        auto& st = self->state;
        request_id cid = 0;
        auto* rs = find_attempt(st, m.id, &cid);
        if (!rs || m.epoch <= rs->move_epoch) return;
        rs->move_epoch = m.epoch;
        rs->progress_ns = now_ns();
        if (rs->decode_handle == m.handle) return;
        if (auto d = st.decodes.find(rs->decode); d != st.decodes.end() && d->second.active > 0)
          --d->second.active;
        if (auto d = st.decodes.find(m.worker); d != st.decodes.end()) ++d->second.active;
        rs->decode = m.worker;
        rs->decode_handle = m.handle;
        rs->decode_name = m.name;
        ++rs->migrations;
        ++rs->live_moves;
        ++st.migrated;
        rs->migration_reasons.emplace_back(to_string(migration_reason::live_migration));
        rs->tr.stamp(stage::migrated, st.info.node_index);
        // A cancel sent to the old worker may have missed the sequence there.
        if (rs->cancelling) self->send(m.handle, cancel_request{m.id});
      },
      [self](const cancel_request& c) {
        auto& st = self->state;
        auto it = st.requests.find(c.id);
        if (it == st.requests.end()) return;
        auto& rs = it->second;
        if (rs.phase == request_phase::routing) {
          fail_request(self, c.id, errc::cancelled, "cancelled before it was routed");
          return;
        }
        // The decode worker owns the request's blocks: it frees them, cancels the prefill
        // job and answers with request_done(cancelled), which ends the request here.
        rs.cancelling = true;
        self->send(rs.decode_handle, cancel_request{rs.attempt});
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
            w.draining = mem.draining;
            w.speed = speed_of(st.cfg, w.name);
          } else if (mem.info.kind == role::prefill) {
            auto& w = prefills[mem.info.id];
            w = st.prefills.count(mem.info.id) ? st.prefills[mem.info.id] : worker_load{};
            w.handle = mem.handle;
            w.name = mem.info.name;
            w.draining = mem.draining;
            w.speed = speed_of(st.cfg, w.name);
          } else if (mem.info.kind == role::kv_store) {
            st.kv_store = mem.handle;
          }
        }
        for (const auto& [wid, w] : st.prefills)
          if (!prefills.count(wid)) st.backlog.forget_worker(wid);
        for (const auto& [wid, w] : st.decodes)
          if (!decodes.count(wid)) st.local_backlog.forget_worker(wid);
        st.decodes = std::move(decodes);
        st.prefills = std::move(prefills);
        // Requests on a worker that left (or changed role) move to another one, or end with
        // a clear error. A draining worker has not left: its requests go on there.
        struct loss {
          request_id id;
          migration_reason why;
          std::string worker;
        };
        std::vector<loss> lost;
        for (auto& [id, rs] : st.requests) {
          if (rs.phase == request_phase::routing) continue;
          if (!st.decodes.count(rs.decode)) {
            lost.push_back({id, migration_reason::worker_lost, rs.decode_name});
          } else if (auto p = st.backlog.worker_of(id); p && !st.prefills.count(*p)) {
            if (st.decodes.count(*p)) {
              // The prefill worker changed role in place. It finished or handed back every
              // job before it registered again, so this request's outcome (its first
              // token, or the hand-back as a failed attempt) comes through its decode
              // worker: nothing is lost, and re-prefilling it would repeat the work.
              st.backlog.release(id);
              continue;
            }
            // The decode worker holds blocks reserved for the KV that will not come.
            self->send(rs.decode_handle, cancel_request{rs.attempt});
            lost.push_back({id, migration_reason::prefill_lost, rs.prefill_name});
          }
        }
        for (auto& l : lost)
          migrate(self, l.id, l.why, l.worker,
                  fmt::format("{} worker {} left the cluster",
                              l.why == migration_reason::prefill_lost ? "prefill" : "decode",
                              l.worker));
      },
      [self](const clock_update& u) { self->state.offsets = u.offsets; },
      [self](tick_atom) {
        watchdog(self);
        const auto& cfg = self->state.cfg;
        if (cfg.tick_interval.count() > 0)
          self->delayed_send(self, cfg.tick_interval, tick_atom::value);
      },
      [self](latency_atom) {
        self->state.latency_asked_ns = now_ns();
        return std::exchange(self->state.recent_latency, {});
      },
      [self](status_atom) {
        auto& st = self->state;
        worker_status ws;
        ws.id = st.info.id;
        ws.kind = role::router;
        ws.name = st.info.name;
        ws.node = st.info.node;
        ws.queued = static_cast<uint32_t>(st.requests.size());
        ws.completed = st.completed;
        ws.tokens_out = st.tokens_out;
        ws.detail = fmt::format(
            "{} decode, {} prefill workers ({} draining); {} rejected (overloaded; {} by "
            "estimated wait, {} waiting, {:.1f} started/s, unloaded start {} ms); {} routed to a "
            "cached "
            "prefix ({} overlap queries, {} failed); {} to cached chunks; {} told to fetch a "
            "prefix; {} migrated, {} "
            "lost, {} timed out; {} "
            "attempts tracked",
            st.decodes.size(), st.prefills.size(),
            st.decodes.size() + st.prefills.size() - taking_work(st.decodes) -
                taking_work(st.prefills),
            st.rejected, st.rejected_adaptive, st.admission.waiting(),
            st.admission.service_rate().value_or(0),
            st.admission.unloaded_start_ns().value_or(0) / 1'000'000, st.routed_to_cache,
            st.overlap_queries, st.overlap_failures, st.routed_to_chunks, st.routed_fetch,
            st.migrated, st.lost, st.timed_out, st.attempts.size());
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
