// A decode worker: reserves KV blocks for each assigned request, receives the prompt's KV
// from a prefill worker (or prefills locally: conditional disaggregation), verifies it,
// and runs continuous batching — sequences join and leave between steps; each step's
// tokens go to the router in one message. Engine calls run on the worker's engine thread;
// the actor stays responsive (reservations, KV arrivals, cancels, status) during a step.
// Its KV pool is a prefix cache (engine/kv_cache): full blocks are committed under their
// chain hash once written, a request reuses the cached blocks of its prompt's prefix (no
// prefill, no transfer for them), and unreferenced blocks are evicted least recently used.
#include <algorithm>
#include <deque>
#include <unordered_map>
#include <unordered_set>

#include <spdlog/spdlog.h>

#include "actors/actors.hpp"
#include "actors/decode/decode_policy.hpp"
#include "actors/detail/role_flip.hpp"
#include "actors/detail/worker_common.hpp"
#include "actors/prefix_reuse.hpp"
#include "common/clock.hpp"
#include "engine/block_hash.hpp"
#include "engine/kv_cache.hpp"
#include "engine/scheduler.hpp"

namespace tokenmill {
namespace {

enum class seq_phase : uint8_t { waiting_blocks, waiting_kv, local_prefill, ready, running };

struct sequence {
  generate_request req;
  caf::actor router;
  caf::actor prefill;  ///< remote prefill worker, if any
  seq_phase phase = seq_phase::waiting_blocks;
  std::vector<block_id> blocks;  ///< reserved: prompt + max_tokens (cached prefix first)
  std::vector<token_id> tokens;  ///< prompt, then generated tokens
  std::vector<uint64_t> chain;   ///< chain hashes of the full blocks known so far
  uint32_t prompt_len = 0;
  uint32_t generated = 0;
  uint32_t prefill_done = 0;              ///< local prefill progress (tokens)
  uint32_t reused = 0;                    ///< leading blocks taken from the prefix cache
  uint32_t committed = 0;                 ///< leading blocks committed to the prefix cache
  std::unordered_set<block_id> received;  ///< prompt blocks that arrived (remote prefill)
  /// Set when the sequence must end while the engine is using its blocks; applied when
  /// the step returns.
  std::optional<std::pair<finish_reason, error_info>> pending_end;
};

/// What the engine is computing right now.
struct step_in_flight {
  bool active = false;
  std::vector<planned_chunk> prefill;  ///< local prefill chunks
  std::vector<request_id> decode;      ///< the decode batch, in order
  int64_t started_ns = 0;              ///< when the iteration was handed to the engine
};

struct decode_state {
  decode_config cfg;
  std::unordered_map<request_id, sequence> seqs;
  std::deque<request_id> waiting_blocks;  ///< assignments waiting for free KV blocks
  std::deque<request_id> local_queue;     ///< local prefills, in order
  std::deque<request_id> ready;           ///< KV complete, waiting for a batch slot
  std::vector<request_id> running;        ///< the running batch
  step_in_flight step;
  uint64_t completed = 0;
  uint64_t tokens_out = 0;
  uint64_t kv_bytes_received = 0;  ///< prompt KV that arrived from prefill workers
  /// Blocks of sequences that ended while a one-sided transport was writing their KV: a put
  /// still in flight may land in them, so they are held until the prefill worker reports its
  /// writes drained (kv_drained), or until cfg.kv_drain_timeout.
  std::unordered_map<request_id, std::vector<block_id>> draining;
  /// Role change or drain (change_role): supervisor, address, the other role's settings.
  flip_context flip;
  /// Pool, cache, engine and its thread. Last: the engine thread joins before the
  /// sequences its step points into go.
  kv_worker w;
  static inline const char* name = "decode";
};

using decode_ptr = caf::stateful_actor<decode_state>*;

bool on_engine(const decode_state& st, request_id id) {
  if (!st.step.active) return false;
  for (const auto& c : st.step.prefill)
    if (c.key == id) return true;
  return std::find(st.step.decode.begin(), st.step.decode.end(), id) != st.step.decode.end();
}

template <class C>
void erase_id(C& c, request_id id) {
  c.erase(std::remove(c.begin(), c.end(), id), c.end());
}

void reserve_waiting(decode_ptr self);
void drain_progress(decode_ptr self);
void hand_back_assignment(decode_ptr self, const decode_assignment& a);

/// Ends a sequence: frees its blocks, tells the kv-store and the router.
void finish(decode_ptr self, request_id id, finish_reason reason, error_info err = {}) {
  auto& st = self->state;
  auto it = st.seqs.find(id);
  if (it == st.seqs.end()) return;
  auto& s = it->second;
  if (on_engine(st, id)) {
    // Its blocks are in the engine's hands: end it when the step returns.
    if (!s.pending_end) s.pending_end.emplace(reason, std::move(err));
    return;
  }
  if (s.phase == seq_phase::waiting_kv && s.prefill) self->send(s.prefill, cancel_request{id});
  if (!s.blocks.empty()) {
    if (hold_until_drained(s.phase == seq_phase::waiting_kv, st.w.transport->one_sided())) {
      st.draining.emplace(id, std::move(s.blocks));
      self->delayed_send(self, st.cfg.kv_drain_timeout, drain_expired{id});
    } else if (!st.w.cache->release(s.blocks)) {
      spdlog::error("decode {}: releasing blocks of request {} failed", st.w.info.name, id);
    }
  }
  request_done d;
  d.id = id;
  d.reason = reason;
  d.error = std::move(err);
  d.prompt_tokens = s.prompt_len;
  d.completion_tokens = s.generated;
  d.tr.id = id;
  for (const auto& h : s.req.tr.hops)
    if (!on_ttft_path(h.where)) d.tr.hops.push_back(h);
  d.tr.stamp(stage::finished, st.w.info.node_index);
  self->send(s.router, std::move(d));
  if (reason != finish_reason::cancelled && reason != finish_reason::error) {
    ++st.completed;
    if (st.flip.draining()) ++st.flip.finished;
  }
  erase_id(st.waiting_blocks, id);
  erase_id(st.local_queue, id);
  erase_id(st.ready, id);
  erase_id(st.running, id);
  st.seqs.erase(it);
  reserve_waiting(self);
}

/// Frees the held blocks of an ended sequence once no write can land in them any more.
void release_drained(decode_ptr self, request_id id, bool expired) {
  auto& st = self->state;
  auto it = st.draining.find(id);
  if (it == st.draining.end()) return;
  if (expired)
    spdlog::warn(
        "decode {}: no word from the prefill worker on request {}'s writes after {} ms; "
        "freeing its {} blocks",
        st.w.info.name, id, st.cfg.kv_drain_timeout.count(), it->second.size());
  if (!st.w.cache->release(it->second))
    spdlog::error("decode {}: releasing blocks of request {} failed", st.w.info.name, id);
  st.draining.erase(it);
  reserve_waiting(self);
}

/// Commits the sequence's full blocks whose KV is written (the first `written` tokens) to
/// the prefix cache, extending its hash chain as blocks fill.
void commit_written(decode_state& st, sequence& s, size_t written) {
  auto bt = st.w.pool->layout().block_tokens;
  auto full = static_cast<uint32_t>(written / bt);
  while (s.chain.size() < full) {
    auto k = s.chain.size();
    auto next = block_hashes(std::span(s.tokens).subspan(k * bt, bt), bt,
                             s.chain.empty() ? 0 : s.chain.back());
    s.chain.push_back(next.front());
  }
  for (; s.committed < full && s.committed < s.blocks.size(); ++s.committed)
    st.w.cache->commit(s.blocks[s.committed], s.chain[s.committed]);
}

void fail(decode_ptr self, request_id id, errc code, std::string msg) {
  spdlog::warn("decode {}: request {} failed: {}", self->state.w.info.name, id, msg);
  finish(self, id, finish_reason::error, {code, std::move(msg)});
}

/// Why a sequence should stop after producing `tok`, if it should (decode_policy decides).
finish_reason stop_reason(const decode_state& st, const sequence& s, token_id tok) {
  return stop_reason(s.req.options, s.generated, tok, st.w.eng->info().eos);
}

/// The blocks of the prompt a remote prefill writes: those after the reused prefix.
std::span<const block_id> transfer_blocks(const decode_state& st, const sequence& s) {
  auto prompt_blocks = st.w.pool->layout().blocks_for(s.prompt_len);
  return std::span(s.blocks).subspan(s.reused, prompt_blocks - s.reused);
}

/// The prompt's KV is in place and the first token is known: join the ready queue.
void prompt_complete(decode_ptr self, sequence& s, token_id first) {
  auto& st = self->state;
  auto id = s.req.id;
  commit_written(st, s, s.prompt_len);
  st.w.publish_cache_events(self);
  s.phase = seq_phase::ready;  // KV complete: nothing left to cancel at a prefill worker
  s.tokens.push_back(first);
  s.generated = 1;
  if (auto r = stop_reason(st, s, first); r != finish_reason::none) {
    finish(self, id, r);
    return;
  }
  s.phase = seq_phase::ready;
  st.ready.push_back(id);
}

/// Reserves blocks for assignments in arrival order, while the pool allows.
void reserve_waiting(decode_ptr self) {
  auto& st = self->state;
  while (!st.waiting_blocks.empty()) {
    auto id = st.waiting_blocks.front();
    auto& s = st.seqs.at(id);
    auto bt = st.w.pool->layout().block_tokens;
    auto need = blocks_to_reserve(s.prompt_len, s.req.options.max_tokens, bt);
    // The cached prefix is reused (prefix_reuse.hpp says how much of it may be).
    auto r = st.w.reserve(s.chain, s.prompt_len, need);
    if (!r) return;
    st.waiting_blocks.pop_front();
    s.reused = s.committed = r->reused;
    s.prefill_done = first_computed_token(s.reused, bt);
    s.blocks = std::move(r->blocks);
    st.w.publish_cache_events(self);  // the allocation may have evicted cached blocks
    s.req.tr.stamp(stage::decode_reserved, st.w.info.node_index);
    if (s.prefill) {
      s.phase = seq_phase::waiting_kv;
      prefill_job job;
      job.id = id;
      job.prompt = s.req.prompt;
      job.sampling = s.req.options.sampling;
      job.dst = st.w.info.pool;
      job.skip_blocks = s.reused;
      auto dst = transfer_blocks(st, s);
      job.dst_blocks.assign(dst.begin(), dst.end());
      job.decode = self;
      job.router = s.router;
      job.tr = s.req.tr;
      self->send(s.prefill, std::move(job));
    } else {
      s.phase = seq_phase::local_prefill;
      s.req.tr.stamp(stage::prefill_queued, st.w.info.node_index);
      st.local_queue.push_back(id);
    }
  }
}

/// Plans the next iteration — local prefill chunks (piggy-backed) and one decode step over
/// the running batch — and hands it to the engine thread.
void launch(decode_ptr self) {
  auto& st = self->state;
  if (st.step.active) return;
  // Continuous batching: sequences whose KV is complete join between steps.
  auto n = decode_admissions(static_cast<uint32_t>(st.running.size()),
                             static_cast<uint32_t>(st.ready.size()), st.cfg.max_batch);
  for (uint32_t i = 0; i < n; ++i) {
    auto id = st.ready.front();
    st.ready.pop_front();
    auto& s = st.seqs.at(id);
    s.phase = seq_phase::running;
    s.req.tr.stamp(stage::decode_admitted, st.w.info.node_index);
    st.running.push_back(id);
  }
  std::deque<prefill_progress> progress;
  for (auto id : st.local_queue) {
    auto& s = st.seqs.at(id);
    progress.push_back({id, s.prompt_len, s.prefill_done});
  }
  auto plan = plan_prefill_batch(progress, st.cfg.local_prefill_budget, st.cfg.max_batch);
  if (plan.empty() && st.running.empty()) {
    // Idle: a pending role change may complete (launch is the last thing a handler does,
    // so the state's kv_worker may be handed over).
    if (st.flip.draining()) drain_progress(self);
    return;
  }
  // Spans point into sequences, which are neither erased nor grown while on the engine.
  std::vector<prefill_chunk> chunks;
  for (const auto& c : plan) {
    auto& s = st.seqs.at(c.key);
    // The first chunk starts after the cached prefix.
    if (c.begin == first_computed_token(s.reused, st.w.pool->layout().block_tokens))
      s.req.tr.stamp(stage::prefill_started, st.w.info.node_index);
    chunks.push_back({std::span(s.tokens).subspan(0, s.prompt_len), c.begin, c.end, s.blocks,
                      s.req.options.sampling});
  }
  std::vector<decode_seq> batch;
  batch.reserve(st.running.size());
  for (auto id : st.running) {
    auto& s = st.seqs.at(id);
    batch.push_back({s.tokens, s.blocks, s.req.options.sampling});
  }
  st.step = step_in_flight{true, std::move(plan), st.running, now_ns()};
  st.w.submit_step(caf::actor_cast<caf::actor>(self), std::move(chunks), std::move(batch));
}

/// Re-plans when a handler that may have changed the queues returns, on every path.
struct launch_on_exit {
  decode_ptr self;
  ~launch_on_exit() { launch(self); }
};

void step_done(decode_ptr self, engine_step_done& d) {
  auto& st = self->state;
  auto done = std::exchange(st.step, step_in_flight{});
  std::vector<request_id> ended_early;  // sequences that ended while on the engine
  auto check_pending = [&](request_id id) {
    auto& s = st.seqs.at(id);
    if (!s.pending_end) return false;
    ended_early.push_back(id);
    return true;
  };
  // Local prefill results.
  for (size_t i = 0; i < done.prefill.size(); ++i) {
    auto id = done.prefill[i].key;
    if (check_pending(id)) continue;
    if (d.error) {
      fail(self, id, d.error.code, "decode engine (local prefill): " + d.error.message);
      continue;
    }
    auto& s = st.seqs.at(id);
    s.prefill_done = done.prefill[i].end;
    if (s.prefill_done < s.prompt_len) continue;
    s.req.tr.stamp(stage::prefill_done, st.w.info.node_index);
    erase_id(st.local_queue, id);
    self->send(s.router, first_token{id, d.prefill_next[i], s.req.tr});
    prompt_complete(self, s, d.prefill_next[i]);
  }
  // Decode results: one token_batch per router.
  std::unordered_map<caf::actor, token_batch> out;
  std::vector<std::pair<request_id, finish_reason>> ended;
  for (size_t i = 0; i < done.decode.size(); ++i) {
    auto id = done.decode[i];
    if (check_pending(id)) continue;
    if (d.error) {
      fail(self, id, d.error.code, "decode engine: " + d.error.message);
      continue;
    }
    auto& s = st.seqs.at(id);
    auto tok = d.decode_next[i];
    commit_written(st, s, s.tokens.size());  // the step wrote the KV of the newest token
    s.tokens.push_back(tok);
    out[s.router].tokens.push_back({id, s.generated, tok});
    ++s.generated;
    ++st.tokens_out;
    if (auto r = stop_reason(st, s, tok); r != finish_reason::none) ended.emplace_back(id, r);
  }
  const int64_t ended_ns = now_ns();
  uint32_t prefill_tokens = 0;
  for (const auto& c : done.prefill)
    prefill_tokens += c.end - c.begin;
  for (auto& [router, b] : out) {
    b.batch_size = static_cast<uint32_t>(done.decode.size());
    b.step_ns = d.decode_ns;
    b.piggyback_prefill = !done.prefill.empty();
    b.node = st.w.info.node_index;
    b.step_start_ns = done.started_ns;
    b.step_end_ns = ended_ns;
    b.prefill_tokens = prefill_tokens;
    self->send(router, std::move(b));
  }
  st.w.publish_cache_events(self);
  for (auto [id, r] : ended)
    finish(self, id, r);
  for (auto id : ended_early) {
    auto& s = st.seqs.at(id);
    auto [reason, err] = std::move(*s.pending_end);
    s.pending_end.reset();
    finish(self, id, reason, std::move(err));
  }
  launch(self);
}

caf::behavior decode_behavior(decode_ptr self) {
  return {
      [self](decode_assignment& a) {
        launch_on_exit relaunch{self};
        auto& st = self->state;
        auto id = a.req.id;
        if (st.flip.draining()) {
          hand_back_assignment(self, a);
          return;
        }
        if (st.seqs.count(id) != 0) {
          // A repeated delivery of an assignment we already serve: the live request goes on.
          spdlog::warn("decode {}: ignoring a repeated assignment of request {}", st.w.info.name,
                       id);
          return;
        }
        if (a.req.prompt.empty()) {
          request_done d;
          d.id = id;
          d.reason = finish_reason::error;
          d.error = {errc::invalid_request, "the prompt is empty"};
          self->send(a.router, std::move(d));
          return;
        }
        auto prompt_len = static_cast<uint32_t>(a.req.prompt.size());
        auto need = blocks_to_reserve(prompt_len, a.req.options.max_tokens,
                                      st.w.pool->layout().block_tokens);
        sequence s;
        s.router = a.router;
        s.prefill = a.prefill;
        s.prompt_len = prompt_len;
        s.tokens = a.req.prompt;
        s.tokens.reserve(size_t{prompt_len} + a.req.options.max_tokens);
        s.chain = block_hashes(s.tokens, st.w.pool->layout().block_tokens);
        s.req = std::move(a.req);
        auto too_big =
            check_capacity(need, prompt_len, s.req.options.max_tokens, st.w.pool->total());
        st.seqs.emplace(id, std::move(s));
        if (too_big) {
          fail(self, id, too_big->code, std::move(too_big->message));
          return;
        }
        st.waiting_blocks.push_back(id);
        reserve_waiting(self);
      },
      [self](kv_transfer& t) {
        launch_on_exit relaunch{self};
        auto& st = self->state;
        auto it = st.seqs.find(t.id);
        if (it == st.seqs.end() || it->second.phase != seq_phase::waiting_kv) return;
        auto& s = it->second;
        // Only the blocks reserved for the transfer may be written: never a cached one.
        if (auto err = check_kv_transfer(transfer_blocks(st, s), t.payload.dst_blocks,
                                         t.checksums.size())) {
          fail(self, t.id, err->code, std::move(err->message));
          return;
        }
        if (auto err = st.w.transport->deliver(t.payload, st.w.pool->storage(),
                                               st.w.pool->block_bytes())) {
          fail(self, t.id, err.code, err.message);
          return;
        }
        for (size_t i = 0; i < t.payload.dst_blocks.size(); ++i) {
          auto b = t.payload.dst_blocks[i];
          if (auto err = check_block_checksum(b, block_checksum(*st.w.pool, b), t.checksums[i])) {
            fail(self, t.id, err->code, std::move(err->message));
            return;
          }
          s.received.insert(b);
        }
      },
      [self](kv_ready& r) {
        launch_on_exit relaunch{self};
        auto& st = self->state;
        auto it = st.seqs.find(r.id);
        if (it == st.seqs.end() || it->second.phase != seq_phase::waiting_kv) {
          // Every write of the job is done: held blocks of an ended sequence are free again.
          release_drained(self, r.id, false);
          return;
        }
        auto& s = it->second;
        s.req.tr = std::move(r.tr);
        s.req.tr.stamp(stage::kv_ready, st.w.info.node_index);
        auto expected = static_cast<uint32_t>(transfer_blocks(st, s).size());
        if (auto err = check_kv_ready(s.received.size(), r.blocks, expected)) {
          fail(self, r.id, err->code, std::move(err->message));
          return;
        }
        // Content check: a block that is intact but misplaced fails here.
        if (auto kv = st.w.check_kv(s.tokens, s.blocks, 0, s.prompt_len); !kv) {
          fail(self, r.id, errc::kv_corrupt, kv.error().message);
          return;
        }
        st.kv_bytes_received += uint64_t{expected} * st.w.pool->block_bytes();
        prompt_complete(self, s, r.first_token);
      },
      [self](const prefill_failed& f) {
        launch_on_exit relaunch{self};
        auto it = self->state.seqs.find(f.id);
        if (it == self->state.seqs.end()) return;
        it->second.prefill = caf::actor{};  // nothing to cancel there
        fail(self, f.id, f.error.code, "prefill failed: " + f.error.message);
      },
      [self](const kv_drained& d) {
        launch_on_exit relaunch{self};
        release_drained(self, d.id, false);
      },
      [self](const drain_expired& d) {
        launch_on_exit relaunch{self};
        release_drained(self, d.id, true);
      },
      [self](step_atom) { launch(self); },
      [self](const membership& m) {
        self->state.flip.last_membership = m;
        self->state.w.learn_kv_store(m);
      },
      [self](engine_step_done& d) { step_done(self, d); },
      [self](const cancel_request& c) {
        launch_on_exit relaunch{self};
        finish(self, c.id, finish_reason::cancelled);
      },
      [self](status_atom) {
        auto& st = self->state;
        size_t waiting_kv = 0;
        for (const auto& [id, s] : st.seqs)
          waiting_kv += s.phase == seq_phase::waiting_kv;
        auto ws = st.w.status(role::decode, fmt::format("{} awaiting KV, ", waiting_kv));
        ws.queued = static_cast<uint32_t>(st.waiting_blocks.size() + st.local_queue.size() +
                                          st.ready.size());
        ws.running = static_cast<uint32_t>(st.running.size());
        ws.completed = st.completed;
        ws.tokens_out = st.tokens_out;
        ws.kv_bytes = st.kv_bytes_received;
        if (!st.draining.empty())
          ws.detail += fmt::format(", {} ended requests' blocks held until their writes drain",
                                   st.draining.size());
        if (st.flip.pending)
          ws.detail += fmt::format(", draining ({}{}): {} finished, {} handed back since",
                                   flip_summary(st.flip), st.flip.reported ? ", drained" : "",
                                   st.flip.finished, st.flip.handed_back);
        return ws;
      },
      // ---- role change and drain (actors/detail/role_flip.hpp; drain_progress below)
      [self](const change_role& c) {
        launch_on_exit relaunch{self};  // completes the change at once when idle
        auto& st = self->state;
        begin_role_change(st.flip, st.w.info, c, now_ns());
        drain_progress(self);
      },
      [self](prefill_job& j) {
        // Sent to this worker's address while it served as prefill (a late message):
        // nothing was written, so the decode worker may free the blocks and the router
        // routes the request again.
        auto& st = self->state;
        self->send(j.decode, prefill_failed{j.id, no_longer_serving(st.w.info, role::prefill)});
        self->send(j.decode, kv_drained{j.id});
      },
  };
}

// ---------------------------------------------------------------- role change and drain
// change_role: no new assignment is taken (each goes back to the router), every held
// sequence gets decode_policy's on_drain decision, and once the worker holds nothing
// (no sequence, no step, no held blocks) role_flip.cpp completes the change.

/// Whether live migration of a decode sequence (with its KV) to another decode worker is
/// wired in. TODO(merge): true once the live-migration path lands, with its call below.
constexpr bool live_migration_available = false;

/// An assignment that arrives while the worker drains goes back to its router, which
/// routes it again: nothing was reserved or computed for it here.
void hand_back_assignment(decode_ptr self, const decode_assignment& a) {
  auto& st = self->state;
  request_done d;
  d.id = a.req.id;
  d.reason = finish_reason::error;
  d.error = {errc::unavailable,
             fmt::format("decode worker '{}' is draining ({}); the request is routed again",
                         st.w.info.name, flip_summary(st.flip))};
  d.prompt_tokens = static_cast<uint32_t>(a.req.prompt.size());
  self->send(a.router, std::move(d));
  ++st.flip.handed_back;
}

held_sequence held_stage(const sequence& s) {
  switch (s.phase) {
    case seq_phase::waiting_blocks:
      return held_sequence::unreserved;
    case seq_phase::waiting_kv:
    case seq_phase::local_prefill:
      return held_sequence::prefilling;
    case seq_phase::ready:
    case seq_phase::running:
      return held_sequence::decoding;
  }
  return held_sequence::decoding;
}

/// Applies on_drain to every held sequence, then completes the role change when nothing
/// is held any more. Called on change_role and whenever the worker goes idle.
void drain_progress(decode_ptr self) {
  auto& st = self->state;
  std::vector<request_id> back;
  for (const auto& [id, s] : st.seqs) {
    switch (on_drain(held_stage(s), live_migration_available)) {
      case drain_action::hand_back:
        back.push_back(id);
        break;
      case drain_action::migrate:  // TODO(merge): start the live migration of `id` here
      case drain_action::finish_in_place:
        break;
    }
  }
  for (auto id : back) {
    finish(self, id, finish_reason::error,
           {errc::unavailable, fmt::format("decode worker '{}' is draining ({}); the request "
                                           "is routed again",
                                           st.w.info.name, flip_summary(st.flip))});
    ++st.flip.handed_back;
  }
  if (!st.seqs.empty() || !st.draining.empty() || st.step.active) return;
  complete_role_change(self, st.flip, st.w, role::decode);
}

caf::behavior decode_worker(decode_ptr self, worker_info info, decode_config cfg,
                            prefill_config as_prefill, std::shared_ptr<engine> eng,
                            std::shared_ptr<kv_transport> transport, caf::actor sup,
                            caf::actor kv_store) {
  auto& st = self->state;
  st.cfg = cfg;
  st.flip.supervisor = sup;
  st.flip.face = caf::actor_cast<caf::actor>(self);
  st.flip.prefill = as_prefill;
  st.flip.decode = cfg;
  st.w.kv_store = std::move(kv_store);
  st.w.start(self, std::move(info), cfg.num_blocks, std::move(eng), std::move(transport), sup,
             "decode");
  return decode_behavior(self);
}

/// A decode worker built from a prefill worker's engine and pool (a role change).
caf::behavior decode_successor(decode_ptr self, std::shared_ptr<role_handover> h) {
  auto& st = self->state;
  adopt_handover(self, *h, st.flip, st.w, "decode");
  st.cfg = st.flip.decode;
  return decode_behavior(self);
}

}  // namespace

caf::actor spawn_decode(caf::actor_system& sys, worker_info info, decode_config cfg,
                        std::unique_ptr<engine> eng, std::shared_ptr<kv_transport> transport,
                        caf::actor supervisor, caf::actor kv_store, prefill_config as_prefill) {
  return sys.spawn(decode_worker, std::move(info), cfg, as_prefill,
                   std::shared_ptr<engine>(std::move(eng)), std::move(transport),
                   std::move(supervisor), std::move(kv_store));
}

caf::actor spawn_decode_successor(caf::actor_system& sys, std::shared_ptr<role_handover> h) {
  return sys.spawn(decode_successor, std::move(h));
}

}  // namespace tokenmill
