#pragma once
/// Fetch instead of recompute, the serving side (issue 16 item 3), shared by the decode
/// worker (a local prefill) and the prefill worker (a remote prefill's job): the router
/// planned (actors/router/fetch_policy.hpp) that the prompt's blocks [reused, end) come from
/// a peer's prefix cache. The worker asks the source to write them into the blocks it
/// reserved for them (kv_fetch_request), checks what arrived, commits it to its own prefix
/// cache and computes only the rest. Whatever goes wrong — the source no longer holds a
/// block, refuses, fails, times out, leaves the membership, or a block fails its checksum
/// or the engine's check — the worker computes those tokens itself. The source side is
/// kv_worker::serve_fetch. This file wires; the checks of a reply are fetch_policy's.
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <caf/all.hpp>

#include "actors/detail/worker_common.hpp"
#include "actors/protocol.hpp"
#include "common/result.hpp"

namespace tokenmill {

/// A serving worker's counters (status detail and worker_status::fetch): fetches started,
/// fetches whose answer was taken, blocks and bytes that arrived, blocks asked for and not
/// written (evicted at the source), fetches that fell back to computing everything they
/// asked for (error, timeout, source lost, bad checksum), and the time from asking to the
/// answer taken or the fetch given up. A fetch whose job ended meanwhile (cancelled) is
/// started and neither completed nor failed.
struct fetch_stats {
  uint64_t fetches = 0, completed = 0, blocks = 0, bytes = 0, missing = 0, failures = 0;
  uint64_t time_ns = 0;
  /// "fetched B blocks (N bytes) in F fetches, M missing, X failed"
  std::string summary() const;
  /// The requester's fields of a status (started ... time_ns); the served ones are left.
  void report(kv_fetch_status& out) const;
};

/// One prompt's fetch: the router's plan (fetch_hint), then the fetch under way.
struct prompt_fetch {
  caf::actor from;         ///< the source; invalid: no fetch planned
  std::string source;      ///< its name, for logs and errors
  uint32_t end = 0;        ///< the plan: the prompt's blocks [reused, end) from `from`
  uint32_t asked = 0;      ///< blocks asked for (from `reused` on) by the fetch under way; 0: none
  int64_t started_ns = 0;  ///< when the fetch under way was asked (fetch_started); 0: none

  prompt_fetch() = default;
  explicit prompt_fetch(fetch_hint h)
      : from(std::move(h.from)), source(std::move(h.source)), end(h.end_block) {}
  /// The plan as a hint to pass on (decode worker -> its prefill worker's job).
  fetch_hint hint() const { return {from, source, end}; }
  /// Whether a fetch is under way (asked, no answer taken yet).
  bool under_way() const { return asked > 0; }
};

/// The request for a prompt of `prompt_len` tokens whose full blocks hash to `chain` and
/// whose reserved blocks are `blocks` (the first `reused` from this worker's prefix cache):
/// blocks [reused, end) with end = the plan's end, at most the reusable prefix (never the
/// block of the prompt's last token) and the hashes known. Sets f.asked; nothing (and asked
/// 0) when there is nothing to fetch.
std::optional<kv_fetch_request> make_fetch_request(const kv_worker& w, request_id id,
                                                   std::span<const uint64_t> chain,
                                                   std::span<const block_id> blocks,
                                                   uint32_t prompt_len, uint32_t reused,
                                                   prompt_fetch& f);

/// Counts the fetch `f` describes (make_fetch_request gave its request) as started, now.
void fetch_started(fetch_stats& stats, prompt_fetch& f);

/// Takes the source's answer to the fetch f describes: the leading run of blocks
/// [reused, reused + f.asked) it wrote, delivered into the pool (two-sided transports),
/// each block's xxh3 checked against the source's and the engine's check over their tokens
/// (`tokens`: the prompt, at least). Returns how many blocks are usable, or why none is
/// (the source's error, a malformed reply, a damaged block). On success counts the fetch
/// as completed, with its time, blocks, bytes and missing blocks, in `stats`; commits
/// nothing.
result<uint32_t> take_fetch_reply(kv_worker& w, fetch_stats& stats, const kv_fetch_reply& rep,
                                  std::span<const token_id> tokens,
                                  std::span<const block_id> blocks, uint32_t reused,
                                  const prompt_fetch& f);

/// Logs a fetch given up (worker `what`, request `id`) and counts it as failed, with its
/// time.
void note_fetch_failed(const kv_worker& w, fetch_stats& stats, std::string_view what, request_id id,
                       const prompt_fetch& f, const std::string& why);

/// A fetch given up while the source may still be writing (no reply: timeout, source
/// lost): with a one-sided transport its puts could land in blocks [reused, reused +
/// f.asked) later, so fresh blocks take their place in `blocks` and the replaced ones are
/// returned, for the caller to hold until the source's late reply or its drain timeout.
/// Empty when nothing can land (two-sided transport, nothing asked). Error when the pool
/// has no free blocks to replace them (`blocks` unchanged: hold them all).
result<std::vector<block_id>> swap_fetched_blocks(kv_worker& w, std::vector<block_id>& blocks,
                                                  uint32_t reused, const prompt_fetch& f);

/// Whether the source `from` is missing from, or down in, membership `m` (it will not
/// answer: compute now rather than wait for the timeout).
bool fetch_source_lost(const membership& m, const caf::actor& from);

}  // namespace tokenmill
