// A prefill worker: batches prompts under a token budget, computes them chunk by chunk on
// its engine thread, and writes each chunk's finished KV blocks into the decode worker's
// reserved blocks as soon as the chunk is done. The actor itself never blocks: jobs,
// cancels, KV completions and status are handled while the engine computes.
// Its KV pool is a prefix cache (engine/kv_cache): a prompt whose leading full blocks were
// computed before skips their prefill; blocks the decode worker already holds are not sent.
// When the router planned it (prefill_job::fetch), the leading blocks another worker holds
// beyond its own are pulled from that worker's cache before the rest is computed
// (actors/detail/kv_fetch.hpp).
#include <algorithm>
#include <deque>
#include <unordered_map>
#include <unordered_set>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "actors/actors.hpp"
#include "actors/detail/kv_fetch.hpp"
#include "actors/detail/role_flip.hpp"
#include "actors/detail/worker_common.hpp"
#include "actors/prefill/prefill_policy.hpp"
#include "actors/prefix_reuse.hpp"
#include "common/clock.hpp"
#include "engine/block_hash.hpp"
#include "engine/kv_cache.hpp"
#include "engine/scheduler.hpp"
#include "grammar/grammar.hpp"

namespace tokenmill {
namespace {

struct job_state {
  prefill_job job;
  std::vector<block_id> blocks;   ///< local blocks holding the computed KV (cached prefix first)
  std::vector<uint64_t> chain;    ///< chain hashes of the prompt's full blocks
  uint32_t reused = 0;            ///< leading blocks taken from the prefix cache
  uint32_t fetched = 0;           ///< blocks pulled from a peer after the reused ones
  prompt_fetch fetch;             ///< the router's fetch plan, then the fetch under way
  uint32_t done = 0;              ///< prompt tokens computed (or reused)
  uint32_t blocks_sent = 0;       ///< leading blocks sent, or skipped (the decode side has them)
  uint32_t writes_pending = 0;    ///< transport writes not completed yet
  bool computed = false;          ///< every chunk computed
  token_id first = 0;             ///< token sampled after the prompt
  token_logprobs first_logprobs;  ///< its log-probabilities, when the request asked
  bool dropped = false;         ///< cancelled or failed while on the engine or writing: drop after
  bool notify_drained = false;  ///< cancelled or failed: kv_drained to the decode worker at the end
  /// Constrained decoding: the grammar's state before the first output token (after the
  /// prompt's replayed tail, when a recompute migration re-submitted output as prompt).
  grammar::grammar_state grammar;
  /// Chunk reuse (issue 17): the recompute ratio resolved for this job, the leading tokens
  /// whose KV is exact (only their full blocks enter the prefix cache), and the chunk plan
  /// while the engine serves the prompt from the chunk cache.
  float recompute_ratio = 0;
  uint32_t exact_tokens = 0;
  std::unique_ptr<chunk_prefill> blend;
  bool blend_refused = false;  ///< its segments did not fit its prompt: prefilled in chunks
};

struct prefill_state {
  prefill_config cfg;
  std::unordered_set<worker_id> connected;  ///< decode workers whose pools we connected to
  std::unordered_map<request_id, job_state> jobs;
  std::deque<request_id> queue;    ///< jobs with blocks, in arrival order
  std::deque<request_id> waiting;  ///< jobs waiting for local blocks
  /// Jobs whose decode pool the transport does not accept yet: its membership has not
  /// reached this worker (a job can overtake the supervisor's announcement). They wait
  /// for it, at most cfg.announce_wait, before they take local blocks.
  std::deque<request_id> unannounced;
  std::vector<planned_chunk> on_engine;  ///< the batch the engine is computing
  uint64_t completed = 0;
  uint64_t tokens_computed = 0;
  uint64_t kv_bytes_sent = 0;  ///< KV handed to the transport for decode workers
  fetch_stats fetched;         ///< fetch instead of recompute, as the serving worker
  /// Blocks of fetches given up on while a one-sided transport's put may still land in them
  /// (no reply from the source): held until its late reply or cfg.kv_drain_timeout.
  std::unordered_map<request_id, std::vector<block_id>> held;
  /// Role change or drain (change_role): supervisor, address, the other role's settings.
  flip_context flip;
  /// Pool, cache, engine and its thread (kv_store learnt from the membership). Last: the
  /// engine thread joins before the jobs its step points into go.
  kv_worker w;
  static inline const char* name = "prefill";
};

using prefill_ptr = caf::stateful_actor<prefill_state>*;

void launch(prefill_ptr self);

/// Re-plans when a handler that may have changed the queues returns, on every path.
struct launch_on_exit {
  prefill_ptr self;
  ~launch_on_exit() { launch(self); }
};

bool on_engine(const prefill_state& st, request_id id) {
  for (const auto& c : st.on_engine)
    if (c.key == id) return true;
  return false;
}

/// Frees a job's local blocks and forgets it.
void drop_job(prefill_ptr self, request_id id) {
  auto& st = self->state;
  auto it = st.jobs.find(id);
  if (it == st.jobs.end()) return;
  auto& js = it->second;
  if (on_engine(st, id) || js.writes_pending > 0 || js.fetch.under_way()) {
    // The engine is writing into this job's blocks, or the transport is reading them (and
    // may still put into the decode worker's), or a fetch source is writing into them:
    // free them when that is over.
    js.dropped = true;
    return;
  }
  if (js.notify_drained) self->send(js.job.decode, kv_drained{id});
  if (!st.w.cache->release(it->second.blocks))
    spdlog::error("prefill {}: releasing blocks of request {} failed", st.w.info.name, id);
  st.jobs.erase(it);
  st.queue.erase(std::remove(st.queue.begin(), st.queue.end(), id), st.queue.end());
  st.waiting.erase(std::remove(st.waiting.begin(), st.waiting.end(), id), st.waiting.end());
  st.unannounced.erase(std::remove(st.unannounced.begin(), st.unannounced.end(), id),
                       st.unannounced.end());
}

void fail_job(prefill_ptr self, request_id id, error_info err) {
  auto& st = self->state;
  auto it = st.jobs.find(id);
  if (it == st.jobs.end() || it->second.dropped) return;
  spdlog::warn("prefill {}: request {} failed: {}", st.w.info.name, id, err.message);
  self->send(it->second.job.decode, prefill_failed{id, std::move(err)});
  it->second.notify_drained = true;
  drop_job(self, id);
}

/// A role change or drain starts: every job with nothing computed or written yet goes back
/// to its decode worker, which ends the attempt with errc::unavailable so that the router
/// routes the request again (hand_back_on_drain). The change then waits only for the jobs
/// under way, not for a queue that could take seconds.
void hand_back_unstarted(prefill_ptr self) {
  auto& st = self->state;
  const auto bt = st.w.pool->layout().block_tokens;
  std::vector<request_id> back;
  for (const auto& [id, js] : st.jobs) {
    if (js.dropped) continue;
    job_progress p;
    p.on_engine = on_engine(st, id);
    p.computed = js.computed;
    p.done = js.done;
    p.first_to_compute = first_computed_token(js.reused + js.fetched, bt);
    p.writes_pending = js.writes_pending;
    p.blocks_sent = js.blocks_sent;
    p.skip_blocks = js.job.skip_blocks;
    if (hand_back_on_drain(p)) back.push_back(id);
  }
  std::sort(back.begin(), back.end());  // a stable order, for logs and tests
  for (auto id : back) {
    auto& js = st.jobs.at(id);
    self->send(
        js.job.decode,
        prefill_failed{id,
                       {errc::unavailable, fmt::format("prefill worker '{}' is draining ({}): the "
                                                       "request is routed again",
                                                       st.w.info.name, flip_summary(st.flip))},
                       true});
    js.notify_drained = true;
    drop_job(self, id);
    ++st.flip.handed_back;
  }
  if (!back.empty())
    spdlog::info("prefill '{}': {} queued jobs handed back for the role change", st.w.info.name,
                 back.size());
}

// ================================================================ fetch instead of recompute
// The router planned that blocks [reused, fetch.end) of the job's prompt come from a peer's
// prefix cache (actors/detail/kv_fetch.hpp). The job waits for them outside the queue, then
// computes the rest; whatever goes wrong, it computes those tokens itself.

/// Frees the blocks of a fetch given up on once no put can land in them any more.
void release_held(prefill_ptr self, request_id id, bool expired) {
  auto& st = self->state;
  auto it = st.held.find(id);
  if (it == st.held.end()) return;
  if (expired)
    spdlog::warn(
        "prefill {}: no reply from the fetch source of request {} after {} ms; freeing "
        "its {} blocks",
        st.w.info.name, id, st.cfg.kv_drain_timeout.count(), it->second.size());
  if (!st.w.cache->release(it->second))
    spdlog::error("prefill {}: releasing held blocks of request {} failed", st.w.info.name, id);
  st.held.erase(it);
}

/// Holds `blocks` of job `id` until the source's late reply or the drain timeout.
void hold_blocks(prefill_ptr self, request_id id, std::span<const block_id> blocks) {
  auto& st = self->state;
  auto& h = st.held[id];
  h.insert(h.end(), blocks.begin(), blocks.end());
  self->delayed_send(self, st.cfg.kv_drain_timeout, drain_expired{id});
}

/// Gives up the job's fetch: it computes from its own cached prefix on (or, dropped
/// meanwhile, is freed). `may_land`: the source may still be writing (see
/// swap_fetched_blocks).
void fetch_fallback(prefill_ptr self, request_id id, job_state& js, const std::string& why,
                    bool may_land) {
  auto& st = self->state;
  note_fetch_failed(st.w, st.fetched, "prefill", id, js.fetch, why);
  if (may_land && st.w.transport->one_sided()) {
    auto swapped = js.dropped ? result<std::vector<block_id>>(error_info{errc::cancelled, ""})
                              : swap_fetched_blocks(st.w, js.blocks, js.reused, js.fetch);
    if (swapped) {
      if (!swapped->empty()) hold_blocks(self, id, *swapped);
    } else {
      // Dropped meanwhile, or no blocks to swap in: hold them all, the job has none left.
      hold_blocks(self, id, js.blocks);
      js.blocks.clear();
      js.fetch.asked = 0;
      if (!js.dropped) {
        fail_job(self, id, swapped.error());
        return;
      }
      drop_job(self, id);
      return;
    }
  }
  js.fetch.asked = 0;
  if (js.dropped) {
    drop_job(self, id);
    return;
  }
  st.queue.push_back(id);
}

/// The source's answer: take the leading run it wrote, then compute the rest.
void on_fetched(prefill_ptr self, request_id id, kv_fetch_reply& rep) {
  auto& st = self->state;
  auto it = st.jobs.find(id);
  if (it == st.jobs.end() || !it->second.fetch.under_way()) {
    // Gave up meanwhile: no write of the fetch is in flight any more.
    release_held(self, id, false);
    return;
  }
  auto& js = it->second;
  if (js.dropped) {  // cancelled or failed while fetching: nothing lands any more
    js.fetch.asked = 0;
    drop_job(self, id);
    return;
  }
  auto n = take_fetch_reply(st.w, st.fetched, rep, js.job.prompt, js.blocks, js.reused, js.fetch);
  if (!n) {
    fetch_fallback(self, id, js, n.error().message, false);
    return;
  }
  // The fetched blocks are this worker's cached prefix now, for this and later prompts.
  for (uint32_t b = js.reused; b < js.reused + *n; ++b)
    st.w.cache->commit(js.blocks[b], js.chain[b]);
  st.w.publish_cache_events(self);
  js.fetched = *n;
  js.done = first_computed_token(js.reused + *n, st.w.pool->layout().block_tokens);
  js.fetch.asked = 0;
  st.queue.push_back(id);
}

/// Starts the job's planned fetch, if any is left to do; false: the job computes now.
bool start_fetch(prefill_ptr self, request_id id, job_state& js) {
  auto& st = self->state;
  auto r = make_fetch_request(st.w, id, js.chain, js.blocks,
                              static_cast<uint32_t>(js.job.prompt.size()), js.reused, js.fetch);
  if (!r) return false;
  fetch_started(st.fetched, js.fetch);
  self->request(js.fetch.from, st.cfg.fetch_timeout, std::move(*r))
      .then(
          [self, id](kv_fetch_reply& rep) {
            launch_on_exit relaunch{self};
            on_fetched(self, id, rep);
          },
          [self, id](caf::error& e) {
            launch_on_exit relaunch{self};
            auto it = self->state.jobs.find(id);
            if (it == self->state.jobs.end() || !it->second.fetch.under_way()) return;
            fetch_fallback(self, id, it->second, "no reply: " + caf::to_string(e), true);
          });
  return true;
}

/// Fetch sources that left the membership (or are down) will not answer: compute now.
void fetch_sources_lost(prefill_ptr self, const membership& m) {
  std::vector<request_id> lost;
  for (auto& [id, js] : self->state.jobs)
    if (js.fetch.under_way() && fetch_source_lost(m, js.fetch.from)) lost.push_back(id);
  for (auto id : lost)
    fetch_fallback(self, id, self->state.jobs.at(id), "the source left the membership", true);
}

/// Moves waiting jobs into the queue while local blocks allow.
void admit_waiting(prefill_ptr self) {
  auto& st = self->state;
  auto bt = st.w.pool->layout().block_tokens;
  while (!st.waiting.empty()) {
    auto id = st.waiting.front();
    auto& js = st.jobs.at(id);
    auto len = static_cast<uint32_t>(js.job.prompt.size());
    // The cached prefix is reused (prefix_reuse.hpp says how much of it may be).
    auto r = st.w.reserve(js.chain, len, st.w.pool->layout().blocks_for(len));
    if (!r) break;
    js.reused = r->reused;
    js.done = first_computed_token(js.reused, bt);
    js.blocks = std::move(r->blocks);
    js.blocks_sent = js.job.skip_blocks;
    st.waiting.pop_front();
    if (!start_fetch(self, id, js)) st.queue.push_back(id);
  }
  st.w.publish_cache_events(self);
}

/// Hands the job's newly completed blocks to the transport.
void push_blocks(prefill_ptr self, request_id id, job_state& js) {
  auto& st = self->state;
  const auto& layout = st.w.pool->layout();
  auto total = static_cast<uint32_t>(js.job.prompt.size());
  auto complete = complete_blocks(js.done, total, layout.blocks_for(total), layout.block_tokens);
  auto next = next_transfer(complete, js.blocks_sent, js.job.skip_blocks);
  if (!next) return;
  std::vector<block_id> src(js.blocks.begin() + next->src_begin, js.blocks.begin() + next->src_end);
  std::vector<block_id> dst(js.job.dst_blocks.begin() + next->dst_begin,
                            js.job.dst_blocks.begin() + next->dst_end);
  std::vector<uint64_t> sums;
  sums.reserve(src.size());
  for (auto b : src)
    sums.push_back(block_checksum(*st.w.pool, b));
  js.blocks_sent = complete;
  ++js.writes_pending;
  st.kv_bytes_sent += uint64_t{src.size()} * st.w.pool->block_bytes();
  caf::actor me = caf::actor_cast<caf::actor>(self);
  st.w.transport->write(
      st.w.pool->storage(), st.w.pool->block_bytes(), src, js.job.dst, dst,
      [me, id, sums = std::move(sums)](error_info err, kv_payload payload) mutable {
        kv_write_done d;
        d.id = id;
        d.error = std::move(err);
        d.transfer = kv_transfer{id, std::move(payload), std::move(sums)};
        caf::anon_send(me, std::move(d));
      });
}

/// Plans the next chunked-prefill batch and hands it to the engine thread.
void launch(prefill_ptr self) {
  auto& st = self->state;
  if (!st.on_engine.empty()) return;
  admit_waiting(self);
  // Chunk reuse (issue 17): the first segmented job with nothing computed yet is served
  // from the chunk cache, whole, beside the chunked batch of the others; later segmented
  // jobs wait for their turn rather than be prefilled in chunks.
  // (The pool is only touched for queued jobs: after a role change's handover it is gone.)
  auto blends = [&](const job_state& js) {
    return !js.computed && !js.dropped && !js.blend_refused && st.w.blends(js.job.segment_ends) &&
           js.done ==
               first_computed_token(js.reused + js.fetched, st.w.pool->layout().block_tokens);
  };
  std::optional<blend_step> blend;
  planned_chunk blend_chunk;
  for (auto id : st.queue) {
    auto& js = st.jobs.at(id);
    const auto len = static_cast<uint32_t>(js.job.prompt.size());
    if (!blends(js)) continue;
    js.blend = st.w.plan_chunks(id, js.job.prompt, js.job.segment_ends, js.done, js.recompute_ratio,
                                st.cfg.blend);
    if (!js.blend) {
      js.blend_refused = true;  // its segments do not fit: prefilled in chunks
      continue;
    }
    st.w.publish_cache_events(self);  // fills may have evicted cached blocks
    blend = blend_step{js.blend.get(),
                       {js.job.prompt, js.done, len, js.blocks, js.job.sampling, nullptr,
                        js.grammar ? js.grammar.allowed() : std::span<const uint64_t>{}}};
    blend_chunk = {id, js.done, len};
    break;
  }
  std::deque<prefill_progress> progress;
  for (auto id : st.queue) {
    auto& js = st.jobs.at(id);
    if (!js.computed && !js.dropped && !blends(js) && !(blend && id == blend_chunk.key))
      progress.push_back({id, static_cast<uint32_t>(js.job.prompt.size()), js.done});
  }
  auto plan = plan_prefill_batch(progress, st.cfg.token_budget, st.cfg.max_seqs);
  if (plan.empty() && !blend) {
    // Nothing to compute. When it also holds nothing, a pending role change completes
    // (the state's kv_worker may be gone afterwards: launch is the last thing a handler does).
    // Fetches it serves hold pinned blocks and a reply owed by this actor; blocks of fetches
    // it gave up on may still receive a put.
    if (st.flip.draining() && st.jobs.empty() && st.held.empty() && st.w.fetches.empty())
      complete_role_change(self, st.flip, st.w, role::prefill);
    return;
  }
  std::vector<prefill_chunk> batch;
  for (const auto& c : plan) {  // (the blended job is not in the plan yet)
    auto& js = st.jobs.at(c.key);
    // The first chunk starts after the cached prefix.
    if (c.begin == first_computed_token(js.reused + js.fetched, st.w.pool->layout().block_tokens))
      js.job.tr.stamp(stage::prefill_started, st.w.info.node_index);
    // Spans point into state that stays put until the step is done (jobs on the engine
    // are never erased meanwhile).
    batch.push_back({js.job.prompt, c.begin, c.end, js.blocks, js.job.sampling, nullptr,
                     js.grammar && c.end == js.job.prompt.size() ? js.grammar.allowed()
                                                                 : std::span<const uint64_t>{}});
  }
  if (blend) {
    st.jobs.at(blend_chunk.key).job.tr.stamp(stage::prefill_started, st.w.info.node_index);
    plan.push_back(blend_chunk);  // last, as submit_step returns its token
  }
  st.on_engine = std::move(plan);
  st.w.submit_step(caf::actor_cast<caf::actor>(self), std::move(batch), {}, blend);
}

void step_done(prefill_ptr self, engine_step_done& d) {
  auto& st = self->state;
  auto plan = std::exchange(st.on_engine, {});
  for (size_t i = 0; i < plan.size(); ++i) {
    auto id = plan[i].key;
    auto it = st.jobs.find(id);
    if (it == st.jobs.end()) continue;
    auto& js = it->second;
    if (js.blend) {  // its chunk blocks: cached (fills) and unpinned
      st.w.finish_chunks(*js.blend, !d.error && !js.dropped);
      js.blend.reset();
      st.w.publish_cache_events(self);
    }
    if (js.dropped) {
      drop_job(self, id);
      continue;
    }
    if (d.error) {
      fail_job(self, id, {d.error.code, "prefill engine: " + d.error.message});
      continue;
    }
    js.done = plan[i].end;
    st.tokens_computed += plan[i].end - plan[i].begin;
    if (js.done == js.job.prompt.size()) {
      js.computed = true;
      js.job.tr.stamp(stage::prefill_done, st.w.info.node_index);
      js.first = d.prefill_next[i];
      js.first_logprobs = std::move(d.prefill_logprobs[i]);
      // The prompt's full blocks are written: later prompts with this prefix reuse them
      // (those with exact KV: not blended ones, chunk_prefill.hpp).
      const auto bt = st.w.pool->layout().block_tokens;
      for (size_t b = js.reused + js.fetched;
           b < js.chain.size() && (b + 1) * bt <= js.exact_tokens; ++b)
        st.w.cache->commit(js.blocks[b], js.chain[b]);
      st.w.publish_cache_events(self);
    }
    push_blocks(self, id, js);
  }
  launch(self);
}

caf::behavior prefill_behavior(prefill_ptr self) {
  return {
      [self](prefill_job& job) {
        launch_on_exit relaunch{self};
        auto& st = self->state;
        auto id = job.id;
        job.tr.stamp(stage::prefill_queued, st.w.info.node_index);
        auto bt = st.w.pool->layout().block_tokens;
        auto len = static_cast<uint32_t>(job.prompt.size());
        if (st.jobs.count(id) != 0) {
          // A repeated delivery of a job we already have: the live job goes on.
          spdlog::warn("prefill {}: ignoring a repeated job for request {}", st.w.info.name, id);
          return;
        }
        prefill_job_shape shape;
        shape.prompt_tokens = len;
        shape.prompt_blocks = st.w.pool->layout().blocks_for(len);
        shape.block_tokens = bt;
        shape.skip_blocks = job.skip_blocks;
        shape.dst_blocks = job.dst_blocks.size();
        shape.dst_block_bytes = job.dst.block_bytes;
        shape.local_block_bytes = st.w.pool->block_bytes();
        shape.pool_blocks = st.w.pool->total();
        if (auto err = check_prefill_job(shape)) {
          self->send(job.decode, prefill_failed{id, std::move(*err)});
          self->send(job.decode, kv_drained{id});  // nothing was written
          return;
        }
        grammar::grammar_state grammar;
        if (const auto& sp = job.sampling; sp.grammar != grammar_kind::none) {
          auto g = [&]() -> result<void> {
            if (!st.cfg.grammars)
              return error_info{errc::invalid_request,
                                fmt::format("prefill worker {} cannot decode constrained output "
                                            "(it has no vocabulary)",
                                            st.w.info.name)};
            auto a = st.cfg.grammars->get(sp.grammar, sp.grammar_source);
            if (!a) return a.error();
            grammar.start(std::move(*a), len - std::min(sp.resumed, len));
            return grammar.catch_up(job.prompt);
          }();
          if (!g) {
            self->send(job.decode, prefill_failed{id, g.error()});
            self->send(job.decode, kv_drained{id});  // nothing was written
            return;
          }
        }
        auto& js = st.jobs[id];
        js.chain = block_hashes(job.prompt, bt);
        js.job = std::move(job);
        js.grammar = std::move(grammar);
        js.recompute_ratio =
            resolve_recompute_ratio(js.job.recompute_ratio, st.cfg.recompute_ratio);
        js.exact_tokens = exact_prefix_tokens(js.job.segment_ends, len, js.recompute_ratio);
        if (js.job.fetch.from) js.fetch = prompt_fetch(js.job.fetch);
        if (st.w.transport->accepts_peer(js.job.dst)) {
          st.waiting.push_back(id);
          return;
        }
        // The announcement of this pool has not reached us (or names it otherwise): wait
        // for the next membership rather than have the transport refuse the first write.
        spdlog::info(
            "prefill {}: request {} waits for the supervisor to announce the pool of "
            "worker {}",
            st.w.info.name, id, js.job.dst.owner);
        st.unannounced.push_back(id);
        self->delayed_send(self, st.cfg.announce_wait, announce_atom::value, id);
      },
      [self](announce_atom, request_id id) {
        launch_on_exit relaunch{self};
        auto& st = self->state;
        if (std::find(st.unannounced.begin(), st.unannounced.end(), id) == st.unannounced.end())
          return;  // announced meanwhile, or gone
        auto owner = st.jobs.at(id).job.dst.owner;
        fail_job(self, id,
                 {errc::unauthenticated,
                  fmt::format("the pool of worker {} was not announced by the supervisor within "
                              "{} ms; no endpoint was opened to it",
                              owner, st.cfg.announce_wait.count())});
      },
      [self](step_atom) { launch(self); },
      [self](const membership& m) {
        auto& st = self->state;
        st.flip.last_membership = m;
        st.w.learn_kv_store(m);  // for prefix cache events
        st.w.announce_pools(m);  // before connecting: the transport takes announced pools only
        // Jobs that overtook this announcement go on (launch after the handler).
        launch_on_exit relaunch{self};
        for (auto it = st.unannounced.begin(); it != st.unannounced.end();) {
          auto job = st.jobs.find(*it);
          if (job != st.jobs.end() && !st.w.transport->accepts_peer(job->second.job.dst)) {
            ++it;
            continue;
          }
          if (job != st.jobs.end()) st.waiting.push_back(*it);
          it = st.unannounced.erase(it);
        }
        fetch_sources_lost(self, m);
        for (const auto& mem : m.members) {
          // Connect to every decode worker's pool now rather than at the first transfer.
          if (mem.info.kind != role::decode) continue;
          if (!mem.up)
            st.connected.erase(mem.info.id);  // a restarted worker has a new address
          else if (st.connected.insert(mem.info.id).second)
            st.w.transport->connect(mem.info.pool);
        }
      },
      [self](engine_step_done& done) { step_done(self, done); },
      // Fetch instead of recompute, as the source: a decode worker pulls blocks of this
      // worker's prefix cache.
      [self](kv_fetch_request& r) -> caf::result<kv_fetch_reply> {
        auto& st = self->state;
        if (st.flip.draining())  // its pool is about to change hands: the requester computes
          return st.w.refuse_fetch(r, errc::unavailable,
                                   fmt::format("prefill worker '{}' is draining ({})",
                                               st.w.info.name, flip_summary(st.flip)));
        auto res = self->state.w.serve_fetch(self, r);
        self->state.w.publish_cache_events(self);  // onboarding may have evicted blocks
        return res;
      },
      [self](kv_fetch_written& w) {
        self->state.w.fetch_written(w);
        launch(self);  // unpinned blocks may be evictable again
      },
      [self](kv_write_done& d) {
        launch_on_exit relaunch{self};
        auto& st = self->state;
        auto it = st.jobs.find(d.id);
        if (it == st.jobs.end()) return;
        auto& js = it->second;
        --js.writes_pending;
        if (js.dropped) {  // cancelled or failed meanwhile: free it once nothing is in flight
          drop_job(self, d.id);
          return;
        }
        if (d.error) {
          fail_job(self, d.id, std::move(d.error));
          return;
        }
        self->send(js.job.decode, std::move(d.transfer));
        if (js.computed && js.writes_pending == 0) {
          js.job.tr.stamp(stage::kv_pushed, st.w.info.node_index);
          // First-token release `decode`: the decode worker sends it when the sequence joins
          // its first step (it gets the log-probabilities too).
          if (!js.job.hold_first_token)
            self->send(js.job.router, first_token{d.id, js.first, js.job.tr, js.first_logprobs});
          self->send(
              js.job.decode,
              kv_ready{d.id, js.first, js.blocks_sent - js.job.skip_blocks, js.job.tr,
                       js.job.hold_first_token ? std::move(js.first_logprobs) : token_logprobs{}});
          ++st.completed;
          if (st.flip.draining()) ++st.flip.finished;
          drop_job(self, d.id);
        }
      },
      [self](const drain_expired& d) {
        launch_on_exit relaunch{self};
        release_held(self, d.id, true);
      },
      [self](const cancel_request& c) {
        if (auto it = self->state.jobs.find(c.id); it != self->state.jobs.end())
          it->second.notify_drained = true;
        drop_job(self, c.id);
        launch(self);
      },
      [self](status_atom) {
        auto& st = self->state;
        auto ws = st.w.status(role::prefill,
                              st.fetched.fetches > 0 ? st.fetched.summary() + ", " : std::string());
        st.fetched.report(ws.fetch);
        // Jobs waiting for blocks or for their decode pool's announcement are queued; jobs
        // whose prefix is being fetched are under way, like those queued for the engine
        // (the planner's and the router's load signals count them).
        ws.queued = static_cast<uint32_t>(st.waiting.size() + st.unannounced.size());
        uint32_t fetching = 0;
        for (const auto& [id, js] : st.jobs)
          fetching += js.fetch.under_way() && !js.dropped;
        ws.running = static_cast<uint32_t>(st.queue.size()) + fetching;
        ws.completed = st.completed;
        ws.tokens_out = st.tokens_computed;
        ws.kv_bytes = st.kv_bytes_sent;
        if (!st.held.empty())
          ws.detail += fmt::format(", {} given-up fetches' blocks held until their writes drain",
                                   st.held.size());
        if (st.flip.pending)
          ws.detail += fmt::format(", draining ({}{}): {} finished since", flip_summary(st.flip),
                                   st.flip.reported ? ", drained" : "", st.flip.finished);
        return ws;
      },
      // ---- role change and drain (actors/detail/role_flip.hpp)
      [self](const change_role& c) {
        launch_on_exit relaunch{self};  // completes the change at once when idle
        auto& st = self->state;
        begin_role_change(st.flip, st.w.info, c, now_ns());
        hand_back_unstarted(self);
      },
      [self](decode_assignment& a) {
        // Sent to this worker's address while it served as decode (a late message): the
        // router routes the request again.
        auto& st = self->state;
        request_done d;
        d.id = a.req.id;
        d.reason = finish_reason::error;
        d.error = no_longer_serving(st.w.info, role::decode);
        d.handed_back = true;
        self->send(a.router, std::move(d));
      },
  };
}

caf::behavior prefill_worker(prefill_ptr self, worker_info info, prefill_config cfg,
                             decode_config as_decode, std::shared_ptr<engine> eng,
                             std::shared_ptr<kv_transport> transport, caf::actor sup) {
  auto& st = self->state;
  st.cfg = cfg;
  st.flip.supervisor = sup;
  st.flip.face = caf::actor_cast<caf::actor>(self);
  st.flip.prefill = cfg;
  st.flip.decode = as_decode;
  st.w.start(self, std::move(info), cfg.num_blocks, std::move(eng), std::move(transport), sup,
             "prefill", cfg.tier);
  return prefill_behavior(self);
}

/// A prefill worker built from a decode worker's engine and pool (a role change).
caf::behavior prefill_successor(prefill_ptr self, std::shared_ptr<role_handover> h) {
  auto& st = self->state;
  adopt_handover(self, *h, st.flip, st.w, "prefill");
  st.cfg = st.flip.prefill;
  return prefill_behavior(self);
}

}  // namespace

caf::actor spawn_prefill(caf::actor_system& sys, worker_info info, prefill_config cfg,
                         std::unique_ptr<engine> eng, std::shared_ptr<kv_transport> transport,
                         caf::actor supervisor, decode_config as_decode) {
  // Spawn arguments are copied, so the engine travels as a shared_ptr; the worker is its
  // only owner afterwards.
  return sys.spawn(prefill_worker, std::move(info), cfg, as_decode,
                   std::shared_ptr<engine>(std::move(eng)), std::move(transport),
                   std::move(supervisor));
}

caf::actor spawn_prefill_successor(caf::actor_system& sys, std::shared_ptr<role_handover> h) {
  return sys.spawn(prefill_successor, std::move(h));
}

}  // namespace tokenmill
