#include "actors/detail/worker_common.hpp"

#include <chrono>
#include <exception>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "actors/prefix_reuse.hpp"
#include "common/clock.hpp"

namespace tokenmill {

void register_with_supervisor(caf::event_based_actor* self, const caf::actor& sup,
                              const worker_info& info, std::string_view what) {
  self->request(sup, std::chrono::seconds(5), register_worker{info, self})
      .then([](bool) {},
            [what = std::string(what)](caf::error& e) {
              spdlog::error("{}: registration failed: {}", what, caf::to_string(e));
            });
}

void kv_worker::start(caf::event_based_actor* self, worker_info worker, uint32_t num_blocks,
                      std::shared_ptr<engine> engine, std::shared_ptr<kv_transport> kv,
                      const caf::actor& sup, std::string_view what, const kv_tier_config& tier) {
  eng = std::move(engine);
  pool = make_pool(*eng, num_blocks);
  cache = std::make_unique<kv_cache>(*pool);
  if (tier.enabled()) {
    auto t = kv_tier::make(*pool, tier, fmt::format("{}-{}", what, worker.id));
    if (t)
      cache->attach_tier(std::move(t.value()));
    else
      spdlog::error("{} {}: no second KV tier: {}", what, worker.name, t.error().message);
  }
  transport = std::move(kv);
  runner = std::make_unique<engine_thread>();
  worker.pool = transport->register_pool(worker.id, pool->storage(), pool->block_bytes());
  info = std::move(worker);
  register_with_supervisor(self, sup, info, what);
}

std::optional<prefix_reservation> kv_worker::reserve(std::span<const uint64_t> chain,
                                                     uint32_t prompt_tokens, uint32_t need) {
  auto bt = pool->layout().block_tokens;
  auto prefix = cache->acquire_prefix(chain, reusable_prefix_blocks(prompt_tokens, bt));
  auto fresh = cache->allocate(need - static_cast<uint32_t>(prefix.size()));
  if (!fresh) {
    cache->release(prefix);
    return std::nullopt;
  }
  prefix_reservation r;
  r.reused = static_cast<uint32_t>(prefix.size());
  r.blocks = std::move(prefix);
  r.blocks.insert(r.blocks.end(), fresh->begin(), fresh->end());
  return r;
}

void kv_worker::publish_cache_events(caf::event_based_actor* self) {
  auto ev = cache->take_events();
  if (!kv_store) return;
  // Per level, removed before stored (kv_cache's event rule); the kv-store keeps an index
  // per level, so the order between levels does not matter.
  auto send = [&](std::vector<uint64_t>& hashes, bool stored, kv_tier_level t) {
    if (!hashes.empty())
      self->send(kv_store, kv_event{info.id, stored, std::move(hashes), static_cast<uint8_t>(t)});
  };
  send(ev.removed, false, kv_tier_level::pool);
  send(ev.stored, true, kv_tier_level::pool);
  send(ev.tier.host_removed, false, kv_tier_level::host);
  send(ev.tier.host_stored, true, kv_tier_level::host);
  send(ev.tier.disk_removed, false, kv_tier_level::disk);
  send(ev.tier.disk_stored, true, kv_tier_level::disk);
}

void kv_worker::learn_kv_store(const membership& m) {
  for (const auto& mem : m.members)
    if (mem.info.kind == role::kv_store) kv_store = mem.up ? mem.handle : caf::actor{};
}

void kv_worker::announce_pools(const membership& m) {
  std::vector<pool_descriptor> pools;
  pools.reserve(m.members.size());
  for (const auto& mem : m.members)
    if (mem.up && !mem.info.pool.worker_address.empty()) pools.push_back(mem.info.pool);
  transport->announce_pools(pools);
}

caf::result<kv_fetch_reply> kv_worker::serve_fetch(caf::event_based_actor* self,
                                                   kv_fetch_request& r) {
  auto refuse = [&](errc code, std::string msg) { return refuse_fetch(r, code, std::move(msg)); };
  if (r.hashes.size() != r.dst_blocks.size())
    return refuse(errc::invalid_request,
                  fmt::format("fetch of {} blocks names {} destination blocks", r.hashes.size(),
                              r.dst_blocks.size()));
  if (r.dst.block_bytes != pool->block_bytes())
    return refuse(errc::invalid_request,
                  fmt::format("the requester's blocks have {} bytes, {}'s have {}",
                              r.dst.block_bytes, info.name, pool->block_bytes()));
  if (!transport->accepts_peer(r.dst))
    return refuse(errc::unavailable, fmt::format("the pool of worker {} is not announced to {} yet",
                                                 r.dst.owner, info.name));
  auto pinned = cache->acquire_prefix(r.hashes, static_cast<uint32_t>(r.hashes.size()));
  if (pinned.empty()) return kv_fetch_reply{r.id, {}, {}};  // evicted meanwhile: nothing to send
  std::vector<uint64_t> sums;
  sums.reserve(pinned.size());
  for (auto b : pinned)
    sums.push_back(block_checksum(*pool, b));
  const auto key = ++fetch_seq;
  auto& h = fetches[key];
  h.id = r.id;
  h.pinned = pinned;
  h.rp = self->make_response_promise<kv_fetch_reply>();
  auto rp = h.rp;
  caf::actor me = caf::actor_cast<caf::actor>(self);
  const auto id = r.id;
  transport->write(
      pool->storage(), pool->block_bytes(), pinned, r.dst,
      std::span(r.dst_blocks).first(pinned.size()),
      [me, key, id, sums = std::move(sums)](error_info err, kv_payload payload) mutable {
        caf::anon_send(me, kv_fetch_written{key, std::move(err),
                                            kv_transfer{id, std::move(payload), std::move(sums)}});
      });
  return rp;
}

kv_fetch_reply kv_worker::refuse_fetch(const kv_fetch_request& r, errc code, std::string why) {
  ++fetch_serve_failures;
  spdlog::warn("{}: refusing a fetch for request {}: {}", info.name, r.id, why);
  return kv_fetch_reply{r.id, {}, {code, std::move(why)}};
}

void kv_worker::fetch_written(kv_fetch_written& w) {
  auto it = fetches.find(w.key);
  if (it == fetches.end()) return;
  auto h = std::move(it->second);
  fetches.erase(it);
  if (!cache->release(h.pinned))
    spdlog::error("{}: unpinning the blocks of fetch {} (request {}) failed", info.name, w.key,
                  h.id);
  if (w.error) {
    ++fetch_serve_failures;
    spdlog::warn("{}: the write of fetch {} (request {}) failed: {}", info.name, w.key, h.id,
                 w.error.message);
    h.rp.deliver(kv_fetch_reply{h.id, {}, std::move(w.error)});
    return;
  }
  ++fetches_served;
  fetch_blocks_served += h.pinned.size();
  fetch_bytes_served += uint64_t{h.pinned.size()} * pool->block_bytes();
  h.rp.deliver(kv_fetch_reply{h.id, std::move(w.transfer), {}});
}

bool kv_worker::blends(std::span<const uint32_t> segment_ends) const {
  return segment_ends.size() >= 2 && eng->blender() != nullptr;
}

std::unique_ptr<chunk_prefill> kv_worker::plan_chunks(request_id id,
                                                      std::span<const token_id> prompt,
                                                      std::span<const uint32_t> segment_ends,
                                                      uint32_t cached_prefix, float ratio,
                                                      blend_policy policy) {
  auto segs = segments_from_ends(segment_ends, static_cast<uint32_t>(prompt.size()));
  if (!segs) {
    spdlog::warn("{}: request {}: its segments do not fit its prompt ({}); prefilled in full",
                 info.name, id, segs.error().message);
    return nullptr;
  }
  auto cp = plan_chunk_prefill(*cache, prompt, std::move(*segs), cached_prefix, ratio);
  if (cp) cp->policy = policy;
  return cp;
}

void kv_worker::finish_chunks(chunk_prefill& cp, bool computed) {
  finish_chunk_prefill(*cache, cp, computed);
  if (!computed) return;
  chunk_lookup_tokens += cp.lookup_tokens;
  chunk_hit_tokens += cp.hit_tokens;
  chunk_recomputed_tokens += cp.recomputed_tokens;
  if (cp.hit_tokens > 0) last_blend_policy = cp.policy;
}

worker_status kv_worker::status(role kind, std::string_view extra) const {
  worker_status ws;
  ws.id = info.id;
  ws.kind = kind;
  ws.name = info.name;
  ws.node = info.node;
  ws.kv_used = cache->referenced();
  ws.kv_total = pool->total();
  ws.prefix_hit_blocks = cache->hits();
  ws.prefix_lookup_blocks = cache->lookups();
  ws.chunk_lookup_tokens = chunk_lookup_tokens;
  ws.chunk_hit_tokens = chunk_hit_tokens;
  ws.chunk_recomputed_tokens = chunk_recomputed_tokens;
  ws.detail =
      fmt::format("engine {}, transport {}, {}prefix cache {} blocks ({} reused)", eng->info().name,
                  transport->name(), extra, cache->cached(), cache->hits());
  if (chunk_lookup_tokens > 0)
    ws.detail += fmt::format(
        ", chunk cache {} of {} segment tokens reused ({} recomputed{})", chunk_hit_tokens,
        chunk_lookup_tokens, chunk_recomputed_tokens,
        last_blend_policy ? fmt::format(", last by {}", blend_policy_name(*last_blend_policy))
                          : "");
  ws.fetch.served = fetches_served;
  ws.fetch.served_blocks = fetch_blocks_served;
  ws.fetch.served_bytes = fetch_bytes_served;
  ws.fetch.serve_failures = fetch_serve_failures;
  if (fetch_seq > 0 || fetch_serve_failures > 0)
    ws.detail += fmt::format(", served {} blocks ({} bytes) to fetches, {} failed",
                             fetch_blocks_served, fetch_bytes_served, fetch_serve_failures);
  if (const auto* t = cache->tier()) {
    for (auto level : {kv_tier_level::host, kv_tier_level::disk}) {
      auto s = t->stats(level);
      if (s.capacity == 0) continue;
      ws.tiers.push_back({std::string(kv_tier_name(level)), s.hits, s.bytes_in, s.bytes_out,
                          s.evictions, s.used, s.capacity});
      ws.detail += fmt::format(", {} tier {}/{} blocks ({} onboarded)", kv_tier_name(level), s.used,
                               s.capacity, s.hits);
    }
  }
  return ws;
}

result<void> kv_worker::check_kv(std::span<const token_id> tokens, std::span<const block_id> blocks,
                                 uint32_t begin, uint32_t end) const {
  return eng->check_kv(*pool, tokens, blocks, begin, end);
}

void kv_worker::submit_step(caf::actor me, std::vector<prefill_chunk> chunks,
                            std::vector<decode_seq> batch, std::optional<blend_step> blend) {
  runner->submit([eng = eng.get(), pool = pool.get(), chunks = std::move(chunks),
                  batch = std::move(batch), me = std::move(me), blend]() mutable {
    engine_step_done d;
    // The engine writes each sequence's logprobs straight into the reply.
    d.prefill_logprobs.resize(chunks.size() + (blend ? 1 : 0));
    d.decode_logprobs.resize(batch.size());
    for (size_t i = 0; i < chunks.size(); ++i)
      chunks[i].logprobs = &d.prefill_logprobs[i];
    for (size_t i = 0; i < batch.size(); ++i)
      batch[i].logprobs = &d.decode_logprobs[i];
    auto t0 = now_ns();
    result<std::vector<token_id>> prefilled = std::vector<token_id>{};
    if (!chunks.empty()) prefilled = eng->prefill(*pool, chunks);
    if (prefilled && blend) {
      blend->whole.logprobs = &d.prefill_logprobs.back();
      auto t = run_chunk_prefill(*eng, *eng->blender(), *pool, *blend->plan, blend->whole);
      if (t)
        prefilled->push_back(*t);
      else
        prefilled = t.error();
    }
    auto t1 = now_ns();
    result<std::vector<token_id>> decoded = std::vector<token_id>{};
    if (prefilled && !batch.empty()) decoded = eng->decode(*pool, batch);
    if (!prefilled || !decoded) {
      d.error = (!prefilled ? prefilled : decoded).error();
      d.prefill_logprobs.clear();
      d.decode_logprobs.clear();
    } else {
      d.prefill_next = std::move(*prefilled);
      d.decode_next = std::move(*decoded);
      d.prefill_ns = t1 - t0;
      d.decode_ns = now_ns() - t1;
    }
    caf::anon_send(me, std::move(d));
  });
}

}  // namespace tokenmill
