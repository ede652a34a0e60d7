#pragma once
/// What the prefill and the decode worker share: the KV pool with its prefix cache, the
/// engine thread and the one closure that calls the engine, cache events to the kv-store,
/// the common part of the status, and registration with the supervisor (which every actor
/// does). This file wires; the decisions are in the policy files beside each actor.
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <caf/all.hpp>

#include "actors/engine_thread.hpp"
#include "actors/protocol.hpp"
#include "common/result.hpp"
#include "engine/chunk_prefill.hpp"
#include "engine/engine.hpp"
#include "engine/kv_cache.hpp"
#include "transport/kv_transport.hpp"

namespace tokenmill {

/// Registers `self`, described by `info`, with the supervisor (which monitors it from then
/// on). A failure is logged once, naming `what` (the actor's role, e.g. "decode").
void register_with_supervisor(caf::event_based_actor* self, const caf::actor& sup,
                              const worker_info& info, std::string_view what);

/// Blocks reserved for one prompt: the cached prefix first, then fresh blocks.
struct prefix_reservation {
  std::vector<block_id> blocks;
  uint32_t reused = 0;  ///< leading blocks taken from the prefix cache
};

/// One segmented prompt for the engine thread (kv_worker::submit_step): the plan (owned by
/// the worker's state, which keeps it until the step is done) and the prompt's prefill from
/// the cached prefix on.
struct blend_step {
  chunk_prefill* plan = nullptr;
  prefill_chunk whole;
};

/// The parts a KV-holding worker is built from. A worker's state keeps one as its *last*
/// member: the engine thread joins first, before the pool and before any state its queued
/// steps point into (prefill chunks and decode sequences are spans into the state).
struct kv_worker {
  worker_info info;  ///< with the pool descriptor start() registered
  std::shared_ptr<engine> eng;
  std::unique_ptr<block_pool> pool;
  std::unique_ptr<kv_cache> cache;  ///< over `pool`
  std::shared_ptr<kv_transport> transport;
  caf::actor kv_store;  ///< given at spawn or learnt from the membership
  /// Fetches this worker serves as a source (a peer pulls blocks of its prefix cache), by
  /// key: the blocks pinned until the write is flushed, and the reply owed.
  struct fetch_hold {
    request_id id = 0;
    std::vector<block_id> pinned;
    caf::typed_response_promise<kv_fetch_reply> rp;
  };
  std::unordered_map<uint64_t, fetch_hold> fetches;
  uint64_t fetch_seq = 0;
  /// Chunk reuse (issue 17), since start: segment tokens looked up in the chunk cache,
  /// found there, and of those recomputed.
  uint64_t chunk_lookup_tokens = 0, chunk_hit_tokens = 0, chunk_recomputed_tokens = 0;
  /// The blend policy of the last segmented prompt with a hit (shown in status detail).
  std::optional<blend_policy> last_blend_policy;
  uint64_t fetches_served = 0, fetch_blocks_served = 0, fetch_bytes_served = 0;
  uint64_t fetch_serve_failures = 0;
  std::unique_ptr<engine_thread> runner;  ///< declared after eng/pool: joins before they go

  /// Builds a pool of `num_blocks` blocks with its prefix cache (and a second tier when
  /// `tier` asks for one) and the engine thread, registers the pool with the transport and
  /// the worker with the supervisor (as `what`). A tier that cannot be made is logged once
  /// and the worker serves without it.
  void start(caf::event_based_actor* self, worker_info worker, uint32_t num_blocks,
             std::shared_ptr<engine> engine, std::shared_ptr<kv_transport> kv,
             const caf::actor& sup, std::string_view what, const kv_tier_config& tier = {});

  /// Reserves `need` blocks for a `prompt_tokens`-token prompt whose full blocks hash to
  /// `chain`: the cached prefix first (at most reusable_prefix_blocks), fresh blocks after.
  /// Nothing, and nothing held, when the pool cannot supply the fresh blocks now.
  std::optional<prefix_reservation> reserve(std::span<const uint64_t> chain, uint32_t prompt_tokens,
                                            uint32_t need);

  /// Tells the kv-store (when known) what entered and left the prefix cache and each level
  /// of the second tier since the last call.
  void publish_cache_events(caf::event_based_actor* self);

  /// Takes the kv-store's handle from a membership: it may live on another node and join
  /// after this worker, or leave.
  void learn_kv_store(const membership& m);

  /// Tells the transport which pools the supervisor announced in `m` (every up member's):
  /// with UCX on a node, it opens endpoints to those only (ucx_config::announced_only).
  /// Called on every membership, before anything connects to a pool it names.
  void announce_pools(const membership& m);

  /// Source side of a fetch (kv_fetch_request): pins the leading run of the requested
  /// blocks its prefix cache holds (second-tier blocks are onboarded first), writes them
  /// with their checksums into the requester's blocks over the transport, and replies once
  /// the write is flushed (fetch_written). A malformed request, or one for a pool the
  /// transport does not accept, is answered with an error at once; so is a fetch of which
  /// nothing is cached any more (no error: zero blocks written).
  caf::result<kv_fetch_reply> serve_fetch(caf::event_based_actor* self, kv_fetch_request& r);
  /// Answers a fetch with an error at once (logged, counted as a failed serve): nothing
  /// pinned, nothing written. E.g. while the worker drains for a role change.
  kv_fetch_reply refuse_fetch(const kv_fetch_request& r, errc code, std::string why);
  /// The write of a served fetch finished: unpin its blocks and reply.
  void fetch_written(kv_fetch_written& w);

  /// The status fields every KV-holding worker reports (id, kind, name, node, KV and prefix
  /// cache use, the fetches it served as a source); `detail` names engine and transport, then
  /// `extra` (ending in ", " when set), then the prefix cache.
  worker_status status(role kind, std::string_view extra = {}) const;

  /// The engine's check that positions [begin, end) of `tokens` hold the KV it would have
  /// written into `blocks`: ok when they do (or when it cannot know), else kv_corrupt with
  /// what is wrong. Runs on the caller's thread, between steps.
  result<void> check_kv(std::span<const token_id> tokens, std::span<const block_id> blocks,
                        uint32_t begin, uint32_t end) const;

  /// Runs one iteration on the engine thread — `chunks` prefilled, then `batch` decoded —
  /// and sends the result (or the engine's error) to `me` as engine_step_done. With
  /// check_kv, the only place where a worker calls the engine.
  /// `blend`, when set, is one segmented prompt served from the chunk cache
  /// (engine/chunk_prefill.hpp; the engine must have a blender): computed after `chunks`,
  /// its token and logprobs come last in engine_step_done's prefill results.
  void submit_step(caf::actor me, std::vector<prefill_chunk> chunks, std::vector<decode_seq> batch,
                   std::optional<blend_step> blend = std::nullopt);

  /// Whether prompts with these segment ends are served from the chunk cache: two
  /// segments or more, and an engine with a blender.
  bool blends(std::span<const uint32_t> segment_ends) const;
  /// Step 1 of chunk reuse for a prompt whose first `cached_prefix` tokens are in place:
  /// the plan, or nullptr (logged) when the segment ends do not fit the prompt (it is then
  /// prefilled in full).
  std::unique_ptr<chunk_prefill> plan_chunks(request_id id, std::span<const token_id> prompt,
                                             std::span<const uint32_t> segment_ends,
                                             uint32_t cached_prefix, float ratio,
                                             blend_policy policy);
  /// Step 3: commits and unpins the plan's chunk blocks and counts its hits.
  void finish_chunks(chunk_prefill& cp, bool computed);
};

}  // namespace tokenmill
