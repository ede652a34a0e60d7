// A prefill worker: batches prompts under a token budget, computes them chunk by chunk on
// its engine thread, and writes each chunk's finished KV blocks into the decode worker's
// reserved blocks as soon as the chunk is done. The actor itself never blocks: jobs,
// cancels, KV completions and status are handled while the engine computes.
// Its KV pool is a prefix cache (engine/kv_cache): a prompt whose leading full blocks were
// computed before skips their prefill; blocks the decode worker already holds are not sent.
#include <algorithm>
#include <deque>
#include <unordered_map>
#include <unordered_set>

#include <spdlog/spdlog.h>

#include "actors/actors.hpp"
#include "actors/engine_thread.hpp"
#include "common/clock.hpp"
#include "engine/block_hash.hpp"
#include "engine/kv_cache.hpp"
#include "engine/scheduler.hpp"

namespace tokenmill {
namespace {

struct job_state {
  prefill_job job;
  std::vector<block_id> blocks;  ///< local blocks holding the computed KV (cached prefix first)
  std::vector<uint64_t> chain;   ///< chain hashes of the prompt's full blocks
  uint32_t reused = 0;           ///< leading blocks taken from the prefix cache
  uint32_t done = 0;             ///< prompt tokens computed (or reused)
  uint32_t blocks_sent = 0;      ///< leading blocks sent, or skipped (the decode side has them)
  uint32_t writes_pending = 0;   ///< transport writes not completed yet
  bool computed = false;         ///< every chunk computed
  token_id first = 0;            ///< token sampled after the prompt
  bool dropped = false;          ///< cancelled or failed while on the engine or writing: drop after
  bool notify_drained = false;  ///< cancelled or failed: kv_drained to the decode worker at the end
};

struct prefill_state {
  worker_info info;
  prefill_config cfg;
  std::shared_ptr<engine> eng;
  std::unique_ptr<block_pool> pool;
  std::unique_ptr<kv_cache> cache;  ///< over `pool`
  std::shared_ptr<kv_transport> transport;
  caf::actor kv_store;                      ///< learnt from the membership
  std::unordered_set<worker_id> connected;  ///< decode workers whose pools we connected to
  std::unordered_map<request_id, job_state> jobs;
  std::deque<request_id> queue;           ///< jobs with blocks, in arrival order
  std::deque<request_id> waiting;         ///< jobs waiting for local blocks
  std::vector<planned_chunk> on_engine;   ///< the batch the engine is computing
  std::unique_ptr<engine_thread> runner;  ///< declared after eng/pool: joins before they go
  uint64_t completed = 0;
  uint64_t tokens_computed = 0;
  uint64_t kv_bytes_sent = 0;  ///< KV handed to the transport for decode workers
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
  if (on_engine(st, id) || js.writes_pending > 0) {
    // The engine is writing into this job's blocks, or the transport is reading them (and
    // may still put into the decode worker's): free them when that is over.
    js.dropped = true;
    return;
  }
  if (js.notify_drained) self->send(js.job.decode, kv_drained{id});
  if (!st.cache->release(it->second.blocks))
    spdlog::error("prefill {}: releasing blocks of request {} failed", st.info.name, id);
  st.jobs.erase(it);
  st.queue.erase(std::remove(st.queue.begin(), st.queue.end(), id), st.queue.end());
  st.waiting.erase(std::remove(st.waiting.begin(), st.waiting.end(), id), st.waiting.end());
}

void fail_job(prefill_ptr self, request_id id, error_info err) {
  auto& st = self->state;
  auto it = st.jobs.find(id);
  if (it == st.jobs.end() || it->second.dropped) return;
  spdlog::warn("prefill {}: request {} failed: {}", st.info.name, id, err.message);
  self->send(it->second.job.decode, prefill_failed{id, std::move(err)});
  it->second.notify_drained = true;
  drop_job(self, id);
}

/// Tells the kv-store what entered and left this worker's prefix cache.
void publish_cache_events(prefill_ptr self) {
  auto& st = self->state;
  auto ev = st.cache->take_events();
  if (!st.kv_store) return;
  if (!ev.removed.empty()) self->send(st.kv_store, kv_event{st.info.id, false, ev.removed});
  if (!ev.stored.empty()) self->send(st.kv_store, kv_event{st.info.id, true, ev.stored});
}

/// Moves waiting jobs into the queue while local blocks allow.
void admit_waiting(prefill_ptr self) {
  auto& st = self->state;
  auto bt = st.pool->layout().block_tokens;
  while (!st.waiting.empty()) {
    auto id = st.waiting.front();
    auto& js = st.jobs.at(id);
    auto len = static_cast<uint32_t>(js.job.prompt.size());
    auto need = st.pool->layout().blocks_for(len);
    // The prompt's last token is always computed: its logits give the first token.
    auto prefix = st.cache->acquire_prefix(js.chain, (len - 1) / bt);
    auto fresh = st.cache->allocate(need - static_cast<uint32_t>(prefix.size()));
    if (!fresh) {
      st.cache->release(prefix);
      break;
    }
    js.reused = static_cast<uint32_t>(prefix.size());
    js.done = js.reused * bt;
    js.blocks = std::move(prefix);
    js.blocks.insert(js.blocks.end(), fresh->begin(), fresh->end());
    js.blocks_sent = js.job.skip_blocks;
    st.waiting.pop_front();
    st.queue.push_back(id);
  }
  publish_cache_events(self);
}

/// Hands the job's newly completed blocks to the transport.
void push_blocks(prefill_ptr self, request_id id, job_state& js) {
  auto& st = self->state;
  auto bt = st.pool->layout().block_tokens;
  auto total = static_cast<uint32_t>(js.job.prompt.size());
  uint32_t complete = js.done == total ? st.pool->layout().blocks_for(total) : js.done / bt;
  if (complete <= js.blocks_sent) return;
  std::vector<block_id> src(js.blocks.begin() + js.blocks_sent, js.blocks.begin() + complete);
  auto skip = js.job.skip_blocks;
  std::vector<block_id> dst(js.job.dst_blocks.begin() + (js.blocks_sent - skip),
                            js.job.dst_blocks.begin() + (complete - skip));
  std::vector<uint64_t> sums;
  sums.reserve(src.size());
  for (auto b : src)
    sums.push_back(block_checksum(*st.pool, b));
  js.blocks_sent = complete;
  ++js.writes_pending;
  st.kv_bytes_sent += uint64_t{src.size()} * st.pool->block_bytes();
  caf::actor me = caf::actor_cast<caf::actor>(self);
  st.transport->write(st.pool->storage(), st.pool->block_bytes(), src, js.job.dst, dst,
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
  std::deque<prefill_progress> progress;
  for (auto id : st.queue) {
    auto& js = st.jobs.at(id);
    if (!js.computed && !js.dropped)
      progress.push_back({id, static_cast<uint32_t>(js.job.prompt.size()), js.done});
  }
  auto plan = plan_prefill_batch(progress, st.cfg.token_budget, st.cfg.max_seqs);
  if (plan.empty()) return;
  std::vector<prefill_chunk> batch;
  for (const auto& c : plan) {
    auto& js = st.jobs.at(c.key);
    // The first chunk starts after the cached prefix.
    if (c.begin == js.reused * st.pool->layout().block_tokens)
      js.job.tr.stamp(stage::prefill_started, st.info.node_index);
    // Spans point into state that stays put until the step is done (jobs on the engine
    // are never erased meanwhile).
    batch.push_back({js.job.prompt, c.begin, c.end, js.blocks, js.job.sampling});
  }
  st.on_engine = std::move(plan);
  auto me = caf::actor_cast<caf::actor>(self);
  st.runner->submit([eng = st.eng.get(), pool = st.pool.get(), batch = std::move(batch), me] {
    engine_step_done d;
    auto t0 = now_ns();
    if (auto next = eng->prefill(*pool, batch))
      d.prefill_next = std::move(*next);
    else
      d.error = next.error().message;
    d.prefill_ns = now_ns() - t0;
    caf::anon_send(me, std::move(d));
  });
}

void step_done(prefill_ptr self, engine_step_done& d) {
  auto& st = self->state;
  auto plan = std::exchange(st.on_engine, {});
  for (size_t i = 0; i < plan.size(); ++i) {
    auto id = plan[i].key;
    auto it = st.jobs.find(id);
    if (it == st.jobs.end()) continue;
    auto& js = it->second;
    if (js.dropped) {
      drop_job(self, id);
      continue;
    }
    if (!d.error.empty()) {
      fail_job(self, id, {errc::internal, "prefill engine: " + d.error});
      continue;
    }
    js.done = plan[i].end;
    st.tokens_computed += plan[i].end - plan[i].begin;
    if (js.done == js.job.prompt.size()) {
      js.computed = true;
      js.job.tr.stamp(stage::prefill_done, st.info.node_index);
      js.first = d.prefill_next[i];
      // The prompt's full blocks are written: later prompts with this prefix reuse them.
      for (size_t b = js.reused; b < js.chain.size(); ++b)
        st.cache->commit(js.blocks[b], js.chain[b]);
      publish_cache_events(self);
    }
    push_blocks(self, id, js);
  }
  launch(self);
}

caf::behavior prefill_worker(prefill_ptr self, worker_info info, prefill_config cfg,
                             std::shared_ptr<engine> eng, std::shared_ptr<kv_transport> transport,
                             caf::actor sup) {
  auto& st = self->state;
  st.cfg = cfg;
  st.eng = std::move(eng);
  st.pool = make_pool(*st.eng, cfg.num_blocks);
  st.cache = std::make_unique<kv_cache>(*st.pool);
  st.transport = std::move(transport);
  st.runner = std::make_unique<engine_thread>();
  info.pool = st.transport->register_pool(info.id, st.pool->storage(), st.pool->block_bytes());
  st.info = info;
  self->request(sup, std::chrono::seconds(5), register_worker{info, self})
      .then([](bool) {},
            [](caf::error& e) {
              spdlog::error("prefill: registration failed: {}", caf::to_string(e));
            });
  return {
      [self](prefill_job& job) {
        launch_on_exit relaunch{self};
        auto& st = self->state;
        auto id = job.id;
        job.tr.stamp(stage::prefill_queued, st.info.node_index);
        auto bt = st.pool->layout().block_tokens;
        auto len = static_cast<uint32_t>(job.prompt.size());
        auto need = st.pool->layout().blocks_for(len);
        if (st.jobs.count(id) != 0) {
          // A repeated delivery of a job we already have: the live job goes on.
          spdlog::warn("prefill {}: ignoring a repeated job for request {}", st.info.name, id);
          return;
        }
        // The decode side may skip cached leading blocks, never the last prompt token's.
        bool skip_ok = len > 0 && job.skip_blocks <= (len - 1) / bt;
        if (job.prompt.empty() || !skip_ok || job.dst_blocks.size() != need - job.skip_blocks ||
            job.dst.block_bytes != st.pool->block_bytes()) {
          self->send(job.decode,
                     prefill_failed{
                         id,
                         {errc::invalid_request,
                          fmt::format("prefill job for {} tokens skips {} and names {} "
                                      "destination blocks of {} B (expected {} of {} B)",
                                      job.prompt.size(), job.skip_blocks, job.dst_blocks.size(),
                                      job.dst.block_bytes, skip_ok ? need - job.skip_blocks : need,
                                      st.pool->block_bytes())}});
          self->send(job.decode, kv_drained{id});  // nothing was written
          return;
        }
        if (need > st.pool->total()) {
          self->send(job.decode, prefill_failed{id,
                                                {errc::out_of_blocks,
                                                 fmt::format("prompt needs {} KV blocks; the "
                                                             "prefill pool has {}",
                                                             need, st.pool->total())}});
          self->send(job.decode, kv_drained{id});  // nothing was written
          return;
        }
        auto& js = st.jobs[id];
        js.chain = block_hashes(job.prompt, bt);
        js.job = std::move(job);
        st.waiting.push_back(id);
      },
      [self](step_atom) { launch(self); },
      [self](const membership& m) {
        auto& st = self->state;
        for (const auto& mem : m.members) {
          // The kv-store (for prefix cache events) may live on another node and join later.
          if (mem.info.kind == role::kv_store) st.kv_store = mem.up ? mem.handle : caf::actor{};
          // Connect to every decode worker's pool now rather than at the first transfer.
          if (mem.info.kind != role::decode) continue;
          if (!mem.up)
            st.connected.erase(mem.info.id);  // a restarted worker has a new address
          else if (st.connected.insert(mem.info.id).second)
            st.transport->connect(mem.info.pool);
        }
      },
      [self](engine_step_done& done) { step_done(self, done); },
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
          js.job.tr.stamp(stage::kv_pushed, st.info.node_index);
          self->send(js.job.router, first_token{d.id, js.first, js.job.tr});
          self->send(js.job.decode,
                     kv_ready{d.id, js.first, js.blocks_sent - js.job.skip_blocks, js.job.tr});
          ++st.completed;
          drop_job(self, d.id);
        }
      },
      [self](const cancel_request& c) {
        if (auto it = self->state.jobs.find(c.id); it != self->state.jobs.end())
          it->second.notify_drained = true;
        drop_job(self, c.id);
        launch(self);
      },
      [self](status_atom) {
        auto& st = self->state;
        worker_status ws;
        ws.id = st.info.id;
        ws.kind = role::prefill;
        ws.name = st.info.name;
        ws.node = st.info.node;
        ws.queued = static_cast<uint32_t>(st.waiting.size());
        ws.running = static_cast<uint32_t>(st.queue.size());
        ws.kv_used = st.cache->referenced();
        ws.kv_total = st.pool->total();
        ws.completed = st.completed;
        ws.tokens_out = st.tokens_computed;
        ws.kv_bytes = st.kv_bytes_sent;
        ws.prefix_hit_blocks = st.cache->hits();
        ws.prefix_lookup_blocks = st.cache->lookups();
        ws.detail = fmt::format("engine {}, transport {}, prefix cache {} blocks ({} reused)",
                                st.eng->info().name, st.transport->name(), st.cache->cached(),
                                st.cache->hits());
        return ws;
      },
  };
}

}  // namespace

caf::actor spawn_prefill(caf::actor_system& sys, worker_info info, prefill_config cfg,
                         std::unique_ptr<engine> eng, std::shared_ptr<kv_transport> transport,
                         caf::actor supervisor) {
  // Spawn arguments are copied, so the engine travels as a shared_ptr; the worker is its
  // only owner afterwards.
  return sys.spawn(prefill_worker, std::move(info), cfg, std::shared_ptr<engine>(std::move(eng)),
                   std::move(transport), std::move(supervisor));
}

}  // namespace tokenmill
