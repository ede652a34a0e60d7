// A decode worker: reserves KV blocks for each assigned request, receives the prompt's KV
// from a prefill worker (or prefills locally: conditional disaggregation), verifies it,
// and runs continuous batching — sequences join and leave between steps; each step's
// tokens go to the router in one message. Engine calls run on the worker's engine thread;
// the actor stays responsive (reservations, KV arrivals, cancels, status) during a step.
// Its KV pool is a prefix cache (engine/kv_cache): full blocks are committed under their
// chain hash once written, a request reuses the cached blocks of its prompt's prefix (no
// prefill, no transfer for them), and unreferenced blocks are evicted least recently used.
// A decoding sequence can move live, with its KV, to another decode worker (section "live
// migration" at the end of this file).
#include <algorithm>
#include <deque>
#include <unordered_map>
#include <unordered_set>

#include <spdlog/spdlog.h>

#include "actors/actors.hpp"
#include "actors/decode/decode_policy.hpp"
#include "actors/decode/migration_policy.hpp"
#include "actors/detail/kv_fetch.hpp"
#include "actors/detail/role_flip.hpp"
#include "actors/detail/worker_common.hpp"
#include "actors/prefix_reuse.hpp"
#include "common/clock.hpp"
#include "engine/block_hash.hpp"
#include "engine/kv_cache.hpp"
#include "engine/scheduler.hpp"
#include "grammar/grammar.hpp"

namespace tokenmill {
namespace {

enum class seq_phase : uint8_t {
  waiting_blocks,
  waiting_kv,
  fetching,  ///< pulling cached prefix blocks from a peer (kv_fetch_request), then local prefill
  local_prefill,
  ready,
  running,
  migrating_out,  ///< live migration: its KV is on its way to another worker (not stepped)
  migrating_in,   ///< live migration: blocks reserved for a sequence on its way here
};

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
  /// Fetch instead of recompute (decode_assignment::fetch): the plan, for a local prefill
  /// or passed on to the prefill worker with its job.
  prompt_fetch fetch;
  /// Set when the sequence must end while the engine is using its blocks; applied when
  /// the step returns.
  std::optional<std::pair<finish_reason, error_info>> pending_end;
  // Live migration (section "live migration").
  uint32_t move_epoch = 0;  ///< moves of this attempt so far (attempt_moved's epoch)
  /// A move asked for while the sequence was in the engine's step: starts when it returns.
  std::optional<migrate_request> move_pending;
  /// Another worker serves it now (a move whose confirmation got lost): it ends without a
  /// word to the router.
  bool silent = false;
  /// A drain (change_role) already tried to move it live: a failed move is not retried;
  /// it finishes here.
  bool drain_move_tried = false;
  /// Constrained decoding: where the output is in its grammar (empty without one). Built
  /// from the request and the tokens wherever the sequence lands (assignment, migration).
  grammar::grammar_state grammar;
  /// Chunk reuse (issue 17): the recompute ratio resolved for this request, the leading
  /// blocks whose KV is exact (exact_prefix_tokens; later ones never enter the prefix
  /// cache), and the chunk plan while a local prefill serves it from the chunk cache.
  float recompute_ratio = 0;
  uint32_t commit_limit = UINT32_MAX;
  std::unique_ptr<chunk_prefill> blend;
  bool blend_refused = false;  ///< its segments did not fit its prompt: prefilled in chunks
  /// First-token release `decode`: its prefill job asked the prefill worker to send the first
  /// token here only; it stays held (true) until release_first sends it to the router.
  bool first_held = false;
  token_logprobs first_logprobs;  ///< the held first token's, when the request asked
};

/// Live migration: a move of one of this worker's sequences to another decode worker.
struct move_out {
  migrate_request req;  ///< target, what to do on failure, whom to tell
  uint32_t epoch = 0;
  int64_t started_ns = 0;
  bool cancelled = false;   ///< the router cancelled it meanwhile
  bool committing = false;  ///< migrate_commit sent: the target may have told the router
  uint64_t bytes = 0;       ///< KV bytes written to the target
  uint32_t blocks = 0;
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
  fetch_stats fetched;             ///< fetch instead of recompute, as the serving worker
  /// Blocks of sequences that ended while a one-sided transport was writing their KV: a put
  /// still in flight may land in them, so they are held until the prefill worker reports its
  /// writes drained (kv_drained), or until cfg.kv_drain_timeout.
  std::unordered_map<request_id, std::vector<block_id>> draining;
  // Live migration.
  std::unordered_map<request_id, move_out> moves_out;  ///< moves under way, by attempt id
  uint64_t migrated_out = 0, migrated_in = 0, migrations_failed = 0;
  uint64_t migrated_bytes_out = 0, migrated_bytes_in = 0;
  std::vector<migration_candidate> peers;            ///< decode workers of the membership
  std::vector<caf::actor> peer_handles;              ///< peers[i]'s handle
  std::unordered_map<worker_id, uint32_t> moved_to;  ///< moves started towards each peer
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
void start_move_out(decode_ptr self, migrate_request m);

/// First-token release `decode`: sends the held first token (the prefill worker's) to the
/// router now, stamped first_token_released (its TTFT interval is `decode_join`).
void release_first(decode_ptr self, sequence& s) {
  auto& st = self->state;
  s.first_held = false;
  s.req.tr.stamp(stage::first_token_released, st.w.info.node_index);
  self->send(s.router, first_token{s.req.id, s.tokens.at(s.prompt_len), s.req.tr,
                                   std::move(s.first_logprobs)});
  s.first_logprobs = {};
}
void drain_progress(decode_ptr self);
void hand_back_assignment(decode_ptr self, const decode_assignment& a);

/// Ends a sequence: frees its blocks, tells the kv-store and the router.
/// `handed_back`: the attempt goes back to the router because this worker drains (see
/// request_done::handed_back).
void finish(decode_ptr self, request_id id, finish_reason reason, error_info err = {},
            bool handed_back = false) {
  auto& st = self->state;
  auto it = st.seqs.find(id);
  if (it == st.seqs.end()) return;
  auto& s = it->second;
  if (s.phase == seq_phase::migrating_out) {
    // Live migration: the move ends it (a cancel there, or here if the move fails).
    if (auto m = st.moves_out.find(id);
        m != st.moves_out.end() && reason == finish_reason::cancelled)
      m->second.cancelled = true;
    return;
  }
  if (on_engine(st, id)) {
    // Its blocks are in the engine's hands: end it when the step returns.
    if (!s.pending_end) s.pending_end.emplace(reason, std::move(err));
    return;
  }
  if (s.phase == seq_phase::waiting_kv && s.prefill) self->send(s.prefill, cancel_request{id});
  if (!s.blocks.empty()) {
    // A fetch under way writes into the blocks like a prefill worker: held the same way (its
    // reply, or drain_expired, frees them).
    const bool writes_pending = s.phase == seq_phase::waiting_kv || s.phase == seq_phase::fetching;
    if (hold_until_drained(writes_pending, st.w.transport->one_sided())) {
      st.draining.emplace(id, std::move(s.blocks));
      self->delayed_send(self, st.cfg.kv_drain_timeout, drain_expired{id});
    } else if (!st.w.cache->release(s.blocks)) {
      spdlog::error("decode {}: releasing blocks of request {} failed", st.w.info.name, id);
    }
  }
  if (s.move_pending && s.move_pending->reply_to)
    self->send(s.move_pending->reply_to,
               migrate_result{
                   id,
                   false,
                   0,
                   0,
                   0,
                   {errc::invalid_request, fmt::format("request {} ended ({}) before it could move",
                                                       id, to_string(reason))}});
  // A reservation for an incoming move, or a sequence another worker serves now, ends
  // without a word to the router: the request goes on elsewhere.
  const bool ours = s.phase != seq_phase::migrating_in && !s.silent;
  if (ours && s.first_held && release_held_token(held_token_moment::ends, reason, handed_back))
    release_first(self, s);
  if (ours) {
    request_done d;
    d.id = id;
    d.reason = reason;
    d.error = std::move(err);
    d.prompt_tokens = s.prompt_len;
    d.completion_tokens = s.generated;
    d.handed_back = handed_back;
    d.tr.id = id;
    for (const auto& h : s.req.tr.hops)
      if (!on_ttft_path(h.where)) d.tr.hops.push_back(h);
    d.tr.stamp(stage::finished, st.w.info.node_index);
    self->send(s.router, std::move(d));
  }
  if (ours && reason != finish_reason::cancelled && reason != finish_reason::error) {
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

/// Chunk reuse: sets the sequence's recompute ratio and commit limit from its request.
void set_chunk_reuse(const decode_state& st, sequence& s) {
  s.recompute_ratio =
      resolve_recompute_ratio(s.req.options.recompute_ratio, st.cfg.recompute_ratio);
  const auto exact =
      exact_prefix_tokens(s.req.options.segment_ends, s.prompt_len, s.recompute_ratio);
  // An unsegmented (or ratio-1) prompt: everything it writes, output included, is exact.
  s.commit_limit = exact >= s.prompt_len ? UINT32_MAX : exact / st.w.pool->layout().block_tokens;
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
  for (; s.committed < full && s.committed < s.blocks.size() && s.committed < s.commit_limit;
       ++s.committed)
    st.w.cache->commit(s.blocks[s.committed], s.chain[s.committed]);
}

void fail(decode_ptr self, request_id id, errc code, std::string msg) {
  spdlog::warn("decode {}: request {} failed: {}", self->state.w.info.name, id, msg);
  finish(self, id, finish_reason::error, {code, std::move(msg)});
}

/// Why a sequence should stop after producing `tok`, if it should (decode_policy decides);
/// a complete grammar (nothing may follow) stops it too.
finish_reason stop_reason(const decode_state& st, const sequence& s, token_id tok) {
  auto r = stop_reason(s.req.options, s.generated, tok, st.w.eng->info().eos);
  if (r == finish_reason::none && s.grammar && s.grammar.finished()) r = finish_reason::stop;
  return r;
}

/// Sets up the sequence's grammar (compiled once per worker node, cached) and advances it
/// over the output the sequence already has: none after an assignment, the replayed tail
/// of the prompt after a recompute migration, every generated token after a live one.
result<void> start_grammar(const decode_state& st, const generate_request& req, uint32_t prompt_len,
                           std::span<const token_id> tokens, grammar::grammar_state& g) {
  const auto& sp = req.options.sampling;
  if (sp.grammar == grammar_kind::none) return {};
  if (!st.cfg.grammars)
    return error_info{errc::invalid_request,
                      fmt::format("decode worker {} cannot decode constrained output (it has "
                                  "no vocabulary)",
                                  st.w.info.name)};
  auto a = st.cfg.grammars->get(sp.grammar, sp.grammar_source);
  if (!a) return a.error();
  g.start(std::move(*a), prompt_len - std::min(sp.resumed, prompt_len));
  return g.catch_up(tokens);
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
  if (auto g = s.grammar.catch_up(s.tokens); !g) {
    fail(self, id, g.error().code, g.error().message);
    return;
  }
  if (auto r = stop_reason(st, s, first); r != finish_reason::none) {
    finish(self, id, r);
    return;
  }
  s.phase = seq_phase::ready;
  st.ready.push_back(id);
}

/// Queues a sequence whose blocks are reserved (and fetched, if it fetched) for local prefill.
void queue_local(decode_ptr self, sequence& s) {
  auto& st = self->state;
  s.phase = seq_phase::local_prefill;
  s.req.tr.stamp(stage::prefill_queued, st.w.info.node_index);
  st.local_queue.push_back(s.req.id);
}

void start_fetch(decode_ptr self, sequence& s);
void launch(decode_ptr self);

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
      job.fetch = s.fetch.hint();
      job.segment_ends = s.req.options.segment_ends;
      job.recompute_ratio = s.recompute_ratio;
      job.hold_first_token = s.first_held = hold_first_token(st.cfg.first_token, true);
      self->send(s.prefill, std::move(job));
    } else if (s.fetch.from && s.fetch.end > s.reused) {
      start_fetch(self, s);
    } else {
      queue_local(self, s);
    }
  }
}

// ================================================================ fetch instead of recompute
// The router planned (fetch_policy.hpp) that the prompt's blocks [reused, fetch.end) come
// from a peer's prefix cache (actors/detail/kv_fetch.hpp): whatever goes wrong, the
// sequence computes those tokens itself.

/// Gives up (the rest of) a fetch: the sequence prefills from its own cached prefix on.
/// `may_land`: the source may still be writing (timeout, source lost); with a one-sided
/// transport its puts could land later, so the asked blocks are held (freed by the late reply
/// or drain_expired) and fresh blocks take their place.
void fetch_fallback(decode_ptr self, sequence& s, const std::string& why, bool may_land) {
  auto& st = self->state;
  const auto id = s.req.id;
  note_fetch_failed(st.w, st.fetched, "decode", id, s.fetch, why);
  if (may_land) {
    auto held = swap_fetched_blocks(st.w, s.blocks, s.reused, s.fetch);
    if (!held) {
      // finish() holds every block of a fetching sequence until the writes drain.
      fail(self, id, held.error().code, held.error().message);
      return;
    }
    if (!held->empty()) {
      auto& h = st.draining[id];
      h.insert(h.end(), held->begin(), held->end());
      self->delayed_send(self, st.cfg.kv_drain_timeout, drain_expired{id});
    }
  }
  s.fetch.asked = 0;
  queue_local(self, s);
}

/// The source's answer: take the leading run it wrote, then prefill the rest.
void on_fetched(decode_ptr self, request_id id, kv_fetch_reply& rep) {
  auto& st = self->state;
  auto it = st.seqs.find(id);
  if (it == st.seqs.end() || it->second.phase != seq_phase::fetching) {
    // Ended or gave up meanwhile: no write of the fetch is in flight any more.
    release_drained(self, id, false);
    return;
  }
  auto& s = it->second;
  auto n = take_fetch_reply(st.w, st.fetched, rep, s.tokens, s.blocks, s.reused, s.fetch);
  if (!n) {
    fetch_fallback(self, s, n.error().message, false);
    return;
  }
  if (*n > 0) {
    // The fetched blocks are this worker's cached prefix now, for this and later requests.
    const auto bt = st.w.pool->layout().block_tokens;
    commit_written(st, s, first_computed_token(s.reused + *n, bt));
    st.w.publish_cache_events(self);
    s.prefill_done = first_computed_token(s.reused + *n, bt);
  }
  s.fetch.asked = 0;
  queue_local(self, s);
}

void start_fetch(decode_ptr self, sequence& s) {
  auto& st = self->state;
  const auto id = s.req.id;
  auto r = make_fetch_request(st.w, id, s.chain, s.blocks, s.prompt_len, s.reused, s.fetch);
  if (!r) {
    queue_local(self, s);
    return;
  }
  s.phase = seq_phase::fetching;
  fetch_started(st.fetched, s.fetch);
  self->request(s.fetch.from, st.cfg.fetch_timeout, std::move(*r))
      .then(
          [self, id](kv_fetch_reply& rep) {
            on_fetched(self, id, rep);
            launch(self);
          },
          [self, id](caf::error& e) {
            auto it = self->state.seqs.find(id);
            if (it == self->state.seqs.end() || it->second.phase != seq_phase::fetching) return;
            fetch_fallback(self, it->second, "no reply: " + caf::to_string(e), true);
            launch(self);
          });
}

/// A fetch source that left the membership (or is down) will not answer: compute now.
void fetch_sources_lost(decode_ptr self, const membership& m) {
  std::vector<request_id> lost;
  for (auto& [id, s] : self->state.seqs)
    if (s.phase == seq_phase::fetching && fetch_source_lost(m, s.fetch.from)) lost.push_back(id);
  for (auto id : lost)
    fetch_fallback(self, self->state.seqs.at(id), "the source left the membership", true);
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
    // A held first token goes out just before the step that computes the second starts.
    if (s.first_held &&
        release_held_token(held_token_moment::joins_step, finish_reason::none, false))
      release_first(self, s);
  }
  // Chunk reuse (issue 17): the first segmented local prefill with nothing computed yet is
  // served from the chunk cache, whole, beside the chunks of the others; later segmented
  // ones wait for their turn rather than be prefilled in chunks.
  // (The pool is only touched for queued sequences: after a role change's handover it is gone.)
  auto blends = [&](const sequence& s) {
    return !s.blend_refused && st.w.blends(s.req.options.segment_ends) &&
           s.prefill_done == first_computed_token(s.reused, st.w.pool->layout().block_tokens);
  };
  std::optional<blend_step> blend;
  planned_chunk blend_chunk;
  for (auto id : st.local_queue) {
    auto& s = st.seqs.at(id);
    if (!blends(s)) continue;
    auto prompt = std::span<const token_id>(s.tokens).first(s.prompt_len);
    s.blend = st.w.plan_chunks(id, prompt, s.req.options.segment_ends, s.prefill_done,
                               s.recompute_ratio, st.cfg.blend);
    if (!s.blend) {
      s.blend_refused = true;  // its segments do not fit: prefilled in chunks
      continue;
    }
    st.w.publish_cache_events(self);  // fills may have evicted cached blocks
    blend = blend_step{s.blend.get(),
                       {prompt, s.prefill_done, s.prompt_len, s.blocks, s.req.options.sampling,
                        nullptr, s.grammar ? s.grammar.allowed() : std::span<const uint64_t>{}}};
    blend_chunk = {id, s.prefill_done, s.prompt_len};
    break;
  }
  std::deque<prefill_progress> progress;
  for (auto id : st.local_queue) {
    auto& s = st.seqs.at(id);
    if (blends(s) || (blend && id == blend_chunk.key)) continue;
    progress.push_back({id, s.prompt_len, s.prefill_done});
  }
  auto plan = plan_prefill_batch(progress, st.cfg.local_prefill_budget, st.cfg.max_batch);
  if (plan.empty() && !blend && st.running.empty()) {
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
    chunks.push_back(
        {std::span(s.tokens).subspan(0, s.prompt_len), c.begin, c.end, s.blocks,
         s.req.options.sampling, nullptr,
         s.grammar && c.end == s.prompt_len ? s.grammar.allowed() : std::span<const uint64_t>{}});
  }
  std::vector<decode_seq> batch;
  batch.reserve(st.running.size());
  for (auto id : st.running) {
    auto& s = st.seqs.at(id);
    batch.push_back({s.tokens, s.blocks, s.req.options.sampling, s.prompt_len, nullptr,
                     s.grammar ? s.grammar.allowed() : std::span<const uint64_t>{}});
  }
  if (blend) {
    st.seqs.at(blend_chunk.key).req.tr.stamp(stage::prefill_started, st.w.info.node_index);
    plan.push_back(blend_chunk);  // last, as submit_step returns its token
  }
  st.step = step_in_flight{true, std::move(plan), st.running, now_ns()};
  st.w.submit_step(caf::actor_cast<caf::actor>(self), std::move(chunks), std::move(batch), blend);
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
    if (auto& s = st.seqs.at(id); s.blend) {  // its chunk blocks: cached (fills) and unpinned
      st.w.finish_chunks(*s.blend, !d.error && !s.pending_end);
      s.blend.reset();
      st.w.publish_cache_events(self);
    }
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
    self->send(s.router,
               first_token{id, d.prefill_next[i], s.req.tr, std::move(d.prefill_logprobs[i])});
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
    if (auto g = s.grammar.catch_up(s.tokens); !g) {
      fail(self, id, g.error().code, g.error().message);
      continue;
    }
    out[s.router].tokens.push_back({id, s.generated, tok, std::move(d.decode_logprobs[i])});
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
  // Live migration: moves asked for while these sequences were in the step start now.
  for (auto id : done.decode)
    if (auto it = st.seqs.find(id); it != st.seqs.end() && it->second.move_pending) {
      auto m = std::move(*it->second.move_pending);
      it->second.move_pending.reset();
      start_move_out(self, std::move(m));
    }
  launch(self);
}

// ================================================================ live migration
// A decoding sequence moves to another decode worker with its KV: no recompute, and the
// stream goes on at the next token index, so the router sees no gap and no duplicate
// (seeded sampling depends only on (seed, position), greedy on the context). Decisions in
// migration_policy.hpp. A is the source, B the target:
//   1. migrate_request{id, target} reaches A. A sequence in the engine's step moves when
//      the step returns; one not decoding yet (waiting for blocks, for its prompt's KV, or
//      in local prefill) does not move. A takes it out of the batch (phase migrating_out).
//   2. A --migrate_offer (request, cfg.migration_timeout)--> B: the request, every token,
//      the KV length (all positions but the newest). B checks it, reserves prompt +
//      max_tokens blocks, the full KV blocks it holds in its prefix cache first, and
//      answers migrate_accept (its pool, the blocks to skip, the blocks to write) or a
//      refusal (no capacity, mismatched pool). B drops a reservation that no commit
//      follows within 2 x cfg.migration_timeout.
//   3. A writes the KV blocks into B's pool over the KV transport with their xxh3
//      checksums; the write's completion (flushed for a one-sided transport) re-enters A.
//   4. A --migrate_commit (request)--> B: B checks the blocks, delivers an inline payload,
//      verifies every checksum and the engine's content check, commits the full blocks to
//      its prefix cache, admits the sequence to its batch, sends the router attempt_moved
//      (epoch = moves so far) and answers migrate_committed.
//   5. A frees its blocks (the full ones stay in its prefix cache) and forgets the
//      sequence; a cancel that reached A meanwhile is forwarded to B.
// Failure (a refusal, a failed write, a failed check at B, no answer in time, B down): A
// sends B migrate_abort (B frees whatever it holds of the move, silently) and keeps the
// sequence: it decodes on, or, when the request said so (keep_on_failure false: a
// draining worker), ends the attempt with errc::unavailable so that the router re-submits
// it (recompute migration, reason transfer_failed); a cancel that arrived meanwhile ends
// it cancelled. If the commit had been sent, B may have told the router already: A points
// the router back at itself with the next epoch (attempt_moved), which wins over B's.
// Every path reports migrate_result to the request's reply_to.

/// The move of `id` if it is still move `epoch` (late answers of a finished move find
/// nothing).
move_out* current_move(decode_state& st, request_id id, uint32_t epoch) {
  auto it = st.moves_out.find(id);
  return it == st.moves_out.end() || it->second.epoch != epoch ? nullptr : &it->second;
}

void report_move(decode_ptr self, const move_out& m, request_id id, bool moved, error_info err) {
  if (!m.req.reply_to) return;
  self->send(m.req.reply_to, migrate_result{id, moved, moved ? m.bytes : 0, moved ? m.blocks : 0,
                                            now_ns() - m.started_ns, std::move(err)});
}

/// The move of `id` failed for `err`: the sequence stays here (after_failed_move decides
/// what becomes of it); with `abort_target` B is told to drop what it holds of the move.
void move_failed(decode_ptr self, request_id id, error_info err, bool abort_target) {
  auto& st = self->state;
  auto it = st.moves_out.find(id);
  if (it == st.moves_out.end()) return;
  auto m = std::move(it->second);
  st.moves_out.erase(it);
  ++st.migrations_failed;
  if (abort_target) self->send(m.req.target, migrate_abort{id, m.epoch});
  auto& s = st.seqs.at(id);
  spdlog::warn("decode {}: live migration of request {} failed: {}", st.w.info.name, id,
               err.message);
  if (m.committing) {
    // B may have told the router it serves the attempt: this epoch supersedes that.
    s.move_epoch = m.epoch + 1;
    self->send(s.router,
               attempt_moved{id, s.move_epoch, st.w.info.id, st.w.info.name,
                             st.flip.face ? st.flip.face : caf::actor_cast<caf::actor>(self)});
  }
  report_move(self, m, id, false, err);
  s.phase = seq_phase::ready;  // its blocks are ours again: the usual paths from here
  switch (after_failed_move(m.cancelled, m.req.keep_on_failure, true)) {
    case migration_fallback::continue_here:
      st.ready.push_front(id);
      break;
    case migration_fallback::cancel:
      finish(self, id, finish_reason::cancelled);
      break;
    case migration_fallback::end_attempt:
      fail(self, id, errc::unavailable,
           fmt::format("live migration failed ({}) and worker {} does not keep the sequence: "
                       "the router continues it elsewhere",
                       err.message, st.w.info.name));
      break;
  }
}

void on_committed(decode_ptr self, request_id id, uint32_t epoch, migrate_committed& c) {
  auto& st = self->state;
  auto* mo = current_move(st, id, epoch);
  if (!mo) return;
  if (c.error) {  // B dropped what it held
    move_failed(self, id, std::move(c.error), false);
    return;
  }
  auto m = std::move(*mo);
  st.moves_out.erase(id);
  auto it = st.seqs.find(id);
  if (m.cancelled) self->send(m.req.target, cancel_request{id});
  if (!st.w.cache->release(it->second.blocks))
    spdlog::error("decode {}: releasing blocks of request {} failed", st.w.info.name, id);
  ++st.migrated_out;
  if (st.flip.draining()) ++st.flip.migrated;
  st.migrated_bytes_out += m.bytes;
  spdlog::info("decode {}: request {} moved live at token {} ({} KV blocks, {} bytes, {:.3f} ms)",
               st.w.info.name, id, it->second.generated, m.blocks, m.bytes,
               static_cast<double>(now_ns() - m.started_ns) / 1e6);
  report_move(self, m, id, true, {});
  st.seqs.erase(it);
  reserve_waiting(self);
}

/// Step 4: every block is at B; ask B to take the sequence over.
void send_commit(decode_ptr self, request_id id, uint32_t epoch, kv_transfer t) {
  auto& st = self->state;
  auto* mo = current_move(st, id, epoch);
  mo->committing = true;
  self->request(mo->req.target, st.cfg.migration_timeout, migrate_commit{id, std::move(t)})
      .then(
          [self, id, epoch](migrate_committed& c) {
            launch_on_exit relaunch{self};
            on_committed(self, id, epoch, c);
          },
          [self, id, epoch](caf::error& e) {
            launch_on_exit relaunch{self};
            if (!current_move(self->state, id, epoch)) return;
            move_failed(
                self, id,
                {errc::unavailable, "the target did not confirm the commit: " + caf::to_string(e)},
                true);
          });
}

/// Step 3: B reserved blocks; write the KV into them.
void on_accept(decode_ptr self, request_id id, uint32_t epoch, migrate_accept& a) {
  auto& st = self->state;
  auto* mo = current_move(st, id, epoch);
  if (!mo) return;
  if (a.error) {  // a refusal: B holds nothing
    move_failed(self, id, std::move(a.error), false);
    return;
  }
  auto& s = st.seqs.at(id);
  const auto bt = st.w.pool->layout().block_tokens;
  const auto kv_blocks = migration_kv_blocks(static_cast<uint32_t>(s.tokens.size() - 1), bt);
  if (auto err =
          check_migrate_accept(kv_blocks, a.skip_blocks, a.dst_blocks.size(),
                               st.w.pool->block_bytes(), a.dst.block_bytes, a.dst.num_blocks)) {
    move_failed(self, id, std::move(*err), true);
    return;
  }
  if (mo->cancelled) {
    move_failed(self, id, {errc::cancelled, "cancelled while moving"}, true);
    return;
  }
  std::vector<block_id> src(s.blocks.begin() + a.skip_blocks, s.blocks.begin() + kv_blocks);
  std::vector<uint64_t> sums;
  sums.reserve(src.size());
  for (auto b : src)
    sums.push_back(block_checksum(*st.w.pool, b));
  mo->blocks = static_cast<uint32_t>(src.size());
  mo->bytes = uint64_t{src.size()} * st.w.pool->block_bytes();
  if (src.empty()) {  // B holds every KV block in its prefix cache already
    send_commit(self, id, epoch, kv_transfer{id, {}, {}});
    return;
  }
  caf::actor me = caf::actor_cast<caf::actor>(self);
  st.w.transport->write(
      st.w.pool->storage(), st.w.pool->block_bytes(), src, a.dst, a.dst_blocks,
      [me, id, epoch, sums = std::move(sums)](error_info err, kv_payload payload) mutable {
        caf::anon_send(me,
                       migrate_write_done{id, epoch, std::move(err),
                                          kv_transfer{id, std::move(payload), std::move(sums)}});
      });
}

/// Step 1 and 2: take the sequence out of the batch and offer it to the target.
void start_move_out(decode_ptr self, migrate_request m) {
  auto& st = self->state;
  const auto id = m.id;
  auto refuse = [&](error_info err) {
    if (m.reply_to) self->send(m.reply_to, migrate_result{id, false, 0, 0, 0, std::move(err)});
  };
  if (!m.target) {  // the caller leaves the choice to us (drain)
    auto cands = st.peers;
    for (auto& c : cands)
      c.load = st.moved_to[c.id];
    auto pick = pick_migration_target(cands, st.w.info.id);
    if (!pick)
      return refuse(
          {errc::no_workers,
           fmt::format("no other decode worker (up, not draining) to move request {} to", id)});
    m.target = st.peer_handles[*pick];
    ++st.moved_to[cands[*pick].id];
  }
  auto it = st.seqs.find(id);
  const bool known = it != st.seqs.end();
  const bool decoding =
      known && (it->second.phase == seq_phase::ready || it->second.phase == seq_phase::running);
  const bool moving =
      known && (it->second.phase == seq_phase::migrating_out || it->second.move_pending);
  if (auto err = check_can_migrate(id, known, decoding, moving,
                                   m.target == caf::actor_cast<caf::actor>(self)))
    return refuse(std::move(*err));
  auto& s = it->second;
  if (on_engine(st, id)) {  // never while the engine uses its blocks: after the step
    s.move_pending = std::move(m);
    return;
  }
  if (s.first_held && release_held_token(held_token_moment::moves_out, finish_reason::none, false))
    release_first(self, s);
  erase_id(st.ready, id);
  erase_id(st.running, id);
  s.phase = seq_phase::migrating_out;
  const auto epoch = ++s.move_epoch;
  auto& mo = st.moves_out[id];
  mo = move_out{};
  mo.req = m;
  mo.epoch = epoch;
  mo.started_ns = now_ns();
  migrate_offer o;
  o.req = s.req;
  o.router = s.router;
  o.tokens = s.tokens;
  o.prompt_len = s.prompt_len;
  o.generated = s.generated;
  o.kv_tokens = static_cast<uint32_t>(s.tokens.size() - 1);
  o.epoch = epoch;
  o.source = st.w.info.id;
  o.block_bytes = st.w.pool->block_bytes();
  self->request(m.target, st.cfg.migration_timeout, std::move(o))
      .then(
          [self, id, epoch](migrate_accept& a) {
            launch_on_exit relaunch{self};
            on_accept(self, id, epoch, a);
          },
          [self, id, epoch](caf::error& e) {
            launch_on_exit relaunch{self};
            if (!current_move(self->state, id, epoch)) return;
            move_failed(
                self, id,
                {errc::unavailable, "the target did not answer the offer: " + caf::to_string(e)},
                true);
          });
}

/// rebalance_request: after the planner flipped `r.target` to decode, move up to
/// `r.count` of the sequences decoding here to it (pick_rebalance). Answers the moves
/// started; their outcomes count in the migration metrics, and a failed one keeps its
/// sequence here.
uint32_t start_rebalance(decode_ptr self, const rebalance_request& r) {
  auto& st = self->state;
  if (st.flip.draining() || !r.target || r.target == caf::actor_cast<caf::actor>(self)) return 0;
  std::vector<rebalance_candidate> cands;
  for (const auto& [id, s] : st.seqs) {
    if (s.phase != seq_phase::ready && s.phase != seq_phase::running) continue;
    if (s.move_pending || s.pending_end || s.silent) continue;
    const uint32_t max = s.req.options.max_tokens;
    cands.push_back({id, max > s.generated ? max - s.generated : 0});
  }
  auto picked = pick_rebalance(std::move(cands), r.count);
  for (auto id : picked)
    start_move_out(self, migrate_request{id, r.target, true, caf::actor{}});
  spdlog::info("decode '{}': rebalance moves {} of {} asked sequences to a new decode worker",
               st.w.info.name, picked.size(), r.count);
  return static_cast<uint32_t>(picked.size());
}

/// The decode workers of the membership, for moves without a given target.
void learn_decode_peers(decode_state& st, const membership& m) {
  st.peers.clear();
  st.peer_handles.clear();
  for (const auto& mem : m.members) {
    if (mem.info.kind != role::decode || !mem.handle) continue;
    st.peers.push_back({mem.info.id, mem.up, mem.draining, 0});
    st.peer_handles.push_back(mem.handle);
  }
}

/// Step 2 at B: reserve blocks for an offered sequence (or refuse it).
migrate_accept accept_move_in(decode_ptr self, migrate_offer& o) {
  auto& st = self->state;
  const auto id = o.req.id;
  migrate_accept a;
  a.id = id;
  const auto bt = st.w.pool->layout().block_tokens;
  migrate_offer_shape shape;
  shape.prompt_len = o.prompt_len;
  shape.generated = o.generated;
  shape.tokens = static_cast<uint32_t>(o.tokens.size());
  shape.kv_tokens = o.kv_tokens;
  shape.max_tokens = o.req.options.max_tokens;
  shape.src_block_bytes = o.block_bytes;
  shape.dst_block_bytes = st.w.pool->block_bytes();
  shape.need_blocks = blocks_to_reserve(o.prompt_len, o.req.options.max_tokens, bt);
  shape.pool_blocks = st.w.pool->total();
  shape.known = st.seqs.count(id) != 0;
  if (st.flip.draining()) {  // it is emptying itself: take nothing new
    a.error = {errc::unavailable, fmt::format("decode worker {} is draining ({})", st.w.info.name,
                                              flip_summary(st.flip))};
    return a;
  }
  if (auto err = check_migrate_offer(shape)) {
    a.error = std::move(*err);
    return a;
  }
  // The grammar state is rebuilt here from the tokens (a bad fit refuses the move: the
  // source keeps the sequence).
  grammar::grammar_state grammar;
  if (auto g = start_grammar(st, o.req, o.prompt_len, o.tokens, grammar); !g) {
    a.error = g.error();
    return a;
  }
  auto chain = block_hashes(std::span(o.tokens).first(o.kv_tokens), bt);
  // reserve() reuses the full blocks before the one holding position `prompt_tokens - 1`:
  // with kv_tokens + 1 that is every full KV block (migration_reusable_blocks).
  auto r = st.w.reserve(chain, o.kv_tokens + 1, shape.need_blocks);
  if (!r) {
    a.error = {errc::out_of_blocks,
               fmt::format("no capacity on decode worker {}: the sequence needs {} KV blocks, "
                           "{} are available",
                           st.w.info.name, shape.need_blocks, st.w.cache->available())};
    return a;
  }
  const auto kv_blocks = migration_kv_blocks(o.kv_tokens, bt);
  sequence s;
  s.req = std::move(o.req);
  s.router = std::move(o.router);
  s.phase = seq_phase::migrating_in;
  s.prompt_len = o.prompt_len;
  s.generated = o.generated;
  s.prefill_done = o.prompt_len;
  s.tokens = std::move(o.tokens);
  s.tokens.reserve(size_t{s.prompt_len} + s.req.options.max_tokens);
  s.chain = std::move(chain);
  s.blocks = std::move(r->blocks);
  s.reused = s.committed = r->reused;
  s.move_epoch = o.epoch;
  s.grammar = std::move(grammar);
  set_chunk_reuse(st, s);
  a.dst = st.w.info.pool;
  a.skip_blocks = s.reused;
  a.dst_blocks.assign(s.blocks.begin() + s.reused, s.blocks.begin() + kv_blocks);
  st.seqs.emplace(id, std::move(s));
  st.w.publish_cache_events(self);  // the allocation may have evicted cached blocks
  self->delayed_send(self, 2 * st.cfg.migration_timeout, migrate_expired{id, o.epoch});
  return a;
}

/// Step 4 at B: check the KV that arrived and take the sequence over.
migrate_committed commit_move_in(decode_ptr self, migrate_commit& c) {
  auto& st = self->state;
  auto it = st.seqs.find(c.id);
  if (it == st.seqs.end() || it->second.phase != seq_phase::migrating_in)
    return {c.id,
            {errc::invalid_request,
             fmt::format("no move of request {} is pending on decode worker {} (aborted or "
                         "expired)",
                         c.id, st.w.info.name)}};
  auto& s = it->second;
  const auto kv_tokens = static_cast<uint32_t>(s.tokens.size() - 1);
  const auto kv_blocks = migration_kv_blocks(kv_tokens, st.w.pool->layout().block_tokens);
  auto expected = std::span(s.blocks).subspan(s.reused, kv_blocks - s.reused);
  auto reject = [&](error_info err) {
    spdlog::warn("decode {}: refusing the KV of request {}'s move: {}", st.w.info.name, c.id,
                 err.message);
    finish(self, c.id, finish_reason::cancelled);  // migrating_in: silently
    return migrate_committed{c.id, std::move(err)};
  };
  const auto& t = c.transfer;
  if (auto err = check_migrate_commit(expected, t.payload.dst_blocks, t.checksums.size()))
    return reject(std::move(*err));
  if (!t.payload.dst_blocks.empty())
    if (auto err =
            st.w.transport->deliver(t.payload, st.w.pool->storage(), st.w.pool->block_bytes()))
      return reject(std::move(err));
  for (size_t i = 0; i < t.payload.dst_blocks.size(); ++i) {
    auto b = t.payload.dst_blocks[i];
    if (auto err = check_block_checksum(b, block_checksum(*st.w.pool, b), t.checksums[i]))
      return reject(std::move(*err));
  }
  if (auto kv = st.w.check_kv(s.tokens, s.blocks, 0, kv_tokens); !kv)
    return reject({errc::kv_corrupt, kv.error().message});
  commit_written(st, s, kv_tokens);
  st.w.publish_cache_events(self);
  s.phase = seq_phase::ready;
  st.ready.push_back(c.id);
  ++st.migrated_in;
  st.migrated_bytes_in += uint64_t{expected.size()} * st.w.pool->block_bytes();
  // Before any token of it leaves this worker.
  // The worker's lasting address (its face across role changes), for cancels.
  auto me = st.flip.face ? st.flip.face : caf::actor_cast<caf::actor>(self);
  self->send(s.router, attempt_moved{c.id, s.move_epoch, st.w.info.id, st.w.info.name, me});
  return {c.id, {}};
}

// ================================================================ behaviour

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
        if (a.fetch.from) s.fetch = prompt_fetch(std::move(a.fetch));
        s.prompt_len = prompt_len;
        s.tokens = a.req.prompt;
        s.tokens.reserve(size_t{prompt_len} + a.req.options.max_tokens);
        s.chain = block_hashes(s.tokens, st.w.pool->layout().block_tokens);
        s.req = std::move(a.req);
        set_chunk_reuse(st, s);
        auto too_big =
            check_capacity(need, prompt_len, s.req.options.max_tokens, st.w.pool->total());
        auto grammar = start_grammar(st, s.req, s.prompt_len, s.tokens, s.grammar);
        st.seqs.emplace(id, std::move(s));
        if (too_big) {
          fail(self, id, too_big->code, std::move(too_big->message));
          return;
        }
        if (!grammar) {
          fail(self, id, grammar.error().code, grammar.error().message);
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
        if (s.first_held) s.first_logprobs = std::move(r.first_logprobs);
        prompt_complete(self, s, r.first_token);
      },
      [self](const prefill_failed& f) {
        launch_on_exit relaunch{self};
        auto it = self->state.seqs.find(f.id);
        if (it == self->state.seqs.end()) return;
        it->second.prefill = caf::actor{};  // nothing to cancel there
        if (f.handed_back) {  // a draining prefill worker: routed again, not a failure
          finish(self, f.id, finish_reason::error,
                 {f.error.code, "prefill handed back: " + f.error.message}, true);
          return;
        }
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
        self->state.w.announce_pools(m);     // migration targets' pools: announced ones only
        learn_decode_peers(self->state, m);  // live migration: targets for drain
        launch_on_exit relaunch{self};
        fetch_sources_lost(self, m);
      },
      // Fetch instead of recompute, as the source: a peer pulls blocks of this cache.
      [self](kv_fetch_request& r) -> caf::result<kv_fetch_reply> {
        auto& st = self->state;
        if (st.flip.draining())  // its pool is about to change hands: the requester computes
          return st.w.refuse_fetch(r, errc::unavailable,
                                   fmt::format("decode worker '{}' is draining ({})",
                                               st.w.info.name, flip_summary(st.flip)));
        auto res = self->state.w.serve_fetch(self, r);
        self->state.w.publish_cache_events(self);  // onboarding may have evicted blocks
        return res;
      },
      [self](kv_fetch_written& w) {
        launch_on_exit relaunch{self};
        self->state.w.fetch_written(w);
        reserve_waiting(self);  // unpinned blocks may be evictable again
      },
      [self](engine_step_done& d) { step_done(self, d); },
      [self](const cancel_request& c) {
        launch_on_exit relaunch{self};
        finish(self, c.id, finish_reason::cancelled);
      },
      // Live migration (section "live migration").
      [self](migrate_request& m) {
        launch_on_exit relaunch{self};
        start_move_out(self, std::move(m));
      },
      [self](const rebalance_request& r) -> uint32_t {
        launch_on_exit relaunch{self};
        return start_rebalance(self, r);
      },
      [self](migrate_offer& o) -> migrate_accept {
        launch_on_exit relaunch{self};
        return accept_move_in(self, o);
      },
      [self](migrate_write_done& d) {
        launch_on_exit relaunch{self};
        if (!current_move(self->state, d.id, d.epoch)) return;
        if (d.error) {
          move_failed(self, d.id,
                      {d.error.code, "KV write to the target failed: " + d.error.message}, true);
          return;
        }
        if (self->state.moves_out.at(d.id).cancelled) {
          move_failed(self, d.id, {errc::cancelled, "cancelled while moving"}, true);
          return;
        }
        send_commit(self, d.id, d.epoch, std::move(d.transfer));
      },
      [self](migrate_commit& c) -> migrate_committed {
        launch_on_exit relaunch{self};
        return commit_move_in(self, c);
      },
      [self](const migrate_abort& a) {
        launch_on_exit relaunch{self};
        auto it = self->state.seqs.find(a.id);
        if (it == self->state.seqs.end() || it->second.move_epoch != a.epoch) return;
        if (it->second.phase == seq_phase::migrating_out) return;  // moving on: not that move
        it->second.silent = true;                                  // the source keeps (or ends) it
        finish(self, a.id, finish_reason::cancelled);
      },
      [self](const migrate_expired& e) {
        launch_on_exit relaunch{self};
        auto it = self->state.seqs.find(e.id);
        if (it == self->state.seqs.end() || it->second.phase != seq_phase::migrating_in ||
            it->second.move_epoch != e.epoch)
          return;
        spdlog::warn(
            "decode {}: the move of request {} was not committed in time; freeing its "
            "{} reserved blocks",
            self->state.w.info.name, e.id, it->second.blocks.size());
        finish(self, e.id, finish_reason::cancelled);
      },
      [self](status_atom) {
        auto& st = self->state;
        size_t waiting_kv = 0;
        for (const auto& [id, s] : st.seqs)
          waiting_kv += s.phase == seq_phase::waiting_kv;
        auto extra = fmt::format("{} awaiting KV, ", waiting_kv);
        if (st.fetched.fetches > 0) extra += st.fetched.summary() + ", ";
        auto ws = st.w.status(role::decode, extra);
        st.fetched.report(ws.fetch);
        ws.queued = static_cast<uint32_t>(st.waiting_blocks.size() + st.local_queue.size() +
                                          st.ready.size());
        ws.running = static_cast<uint32_t>(st.running.size());
        ws.completed = st.completed;
        ws.tokens_out = st.tokens_out;
        ws.kv_bytes = st.kv_bytes_received;
        if (st.migrated_out + st.migrated_in + st.migrations_failed + st.moves_out.size() > 0)
          ws.detail += fmt::format(
              ", live migration: {} out ({} bytes), {} in ({} bytes), {} "
              "failed, {} moving",
              st.migrated_out, st.migrated_bytes_out, st.migrated_in, st.migrated_bytes_in,
              st.migrations_failed, st.moves_out.size());
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
        self->send(j.decode,
                   prefill_failed{j.id, no_longer_serving(st.w.info, role::prefill), true});
        self->send(j.decode, kv_drained{j.id});
      },
  };
}

// ---------------------------------------------------------------- role change and drain
// change_role: no new assignment is taken (each goes back to the router), every held
// sequence gets decode_policy's on_drain decision, and once the worker holds nothing
// (no sequence, no step, no held blocks) role_flip.cpp completes the change.

/// Decode sequences of a draining worker move live (with their KV) to another decode
/// worker (section "live migration"); one whose move fails finishes here.
constexpr bool live_migration_available = true;

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
  d.handed_back = true;
  self->send(a.router, std::move(d));
  ++st.flip.handed_back;
}

held_sequence held_stage(const sequence& s) {
  switch (s.phase) {
    case seq_phase::waiting_blocks:
      return held_sequence::unreserved;
    case seq_phase::waiting_kv:
      return s.prefill ? held_sequence::awaiting_kv : held_sequence::prefilling;
    case seq_phase::fetching:
    case seq_phase::local_prefill:
      return held_sequence::prefilling;
    case seq_phase::migrating_in:  // a move here accepted before the drain: let it land
      return held_sequence::prefilling;
    case seq_phase::ready:
    case seq_phase::running:
    case seq_phase::migrating_out:
      return held_sequence::decoding;
  }
  return held_sequence::decoding;
}

/// Applies on_drain to every held sequence, then completes the role change when nothing
/// is held any more. Called on change_role and whenever the worker goes idle.
void drain_progress(decode_ptr self) {
  auto& st = self->state;
  std::vector<request_id> back, move;
  for (auto& [id, s] : st.seqs) {
    switch (on_drain(held_stage(s), live_migration_available)) {
      case drain_action::hand_back:
        back.push_back(id);
        break;
      case drain_action::migrate:
        if (s.phase != seq_phase::migrating_out && !s.move_pending && !s.drain_move_tried) {
          s.drain_move_tried = true;
          move.push_back(id);
        }
        break;
      case drain_action::finish_in_place:
        break;
    }
  }
  // To a decode worker of the membership (the least moved-to); kept here if the move fails.
  for (auto id : move)
    start_move_out(self, migrate_request{id, caf::actor{}, true, caf::actor{}});
  for (auto id : back) {
    finish(self, id, finish_reason::error,
           {errc::unavailable, fmt::format("decode worker '{}' is draining ({}); the request "
                                           "is routed again",
                                           st.w.info.name, flip_summary(st.flip))},
           true);
    ++st.flip.handed_back;
  }
  // Fetches it serves as a source hold pinned blocks and a reply owed by this actor.
  if (!st.seqs.empty() || !st.draining.empty() || st.step.active || !st.w.fetches.empty()) return;
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
             "decode", cfg.tier);
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
