#pragma once
/// The decode worker's decisions, free of CAF (STYLE.md §2): when a sequence stops, whether
/// an assignment fits the pool, whether arriving KV is what was reserved for it, and when
/// the blocks of an ended sequence must be held back. decode_actor.cpp wires them.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>

#include "common/api_types.hpp"
#include "common/errors.hpp"
#include "common/ids.hpp"

namespace tokenmill {

/// Why a sequence stops right after producing `tok`, its `generated`-th token (counting
/// `tok`), or finish_reason::none: the model's `eos` (unless the request ignores it), one
/// of the request's stop ids, or max_tokens reached, in that order.
finish_reason stop_reason(const request_options& opts, uint32_t generated, token_id tok,
                          token_id eos);

/// Whether an assignment can ever be served: it needs `need_blocks` (prompt + max_tokens,
/// in blocks) and the pool has `pool_blocks` in all. errc::out_of_blocks when it cannot,
/// naming the prompt and max_tokens (tokens).
std::optional<error_info> check_capacity(uint32_t need_blocks, uint32_t prompt_tokens,
                                         uint32_t max_tokens, uint32_t pool_blocks);

/// Checks an arriving kv_transfer before it is delivered: every block it writes must be
/// one of `transfer_blocks` (those reserved for the transfer: the prompt's blocks after the
/// reused prefix, never a cached one), with one checksum per block (`checksums`).
/// errc::kv_corrupt says what is wrong.
std::optional<error_info> check_kv_transfer(std::span<const block_id> transfer_blocks,
                                            std::span<const block_id> dst_blocks, size_t checksums);

/// Checks one delivered block: its checksum `actual` must equal the sender's `expected`.
std::optional<error_info> check_block_checksum(block_id block, uint64_t actual, uint64_t expected);

/// Checks kv_ready: the prefill worker reports `reported` blocks written and `received`
/// distinct blocks arrived; both must be `expected` (the prompt's blocks after the reused
/// prefix). errc::kv_corrupt otherwise.
std::optional<error_info> check_kv_ready(size_t received, uint32_t reported, uint32_t expected);

/// Whether the blocks of a sequence that ends now must be held rather than freed: it was
/// still waiting for its prompt's KV (`waiting_for_kv`) and the transport writes one-sided,
/// so a put may still land in them until the prefill worker reports its writes drained.
bool hold_until_drained(bool waiting_for_kv, bool one_sided_transport);

/// Where a sequence a decode worker holds stands, as a drain sees it.
enum class held_sequence : uint8_t {
  unreserved,   ///< assigned, waiting for KV blocks: nothing computed or reserved yet
  awaiting_kv,  ///< blocks reserved, its prompt's KV to come from a remote prefill worker
  prefilling,   ///< its prompt's KV is being computed here (local prefill, fetch, move in)
  decoding,     ///< its KV is complete: waiting for a batch slot or in the running batch
};

/// What a draining decode worker (change_role) does with one sequence it holds.
enum class drain_action : uint8_t {
  finish_in_place,  ///< keep serving it here until it ends
  migrate,          ///< move it live, with its KV, to another decode worker
  hand_back,        ///< give it back to the router, which routes it again
};

/// The drain decision for one held sequence. A sequence with nothing computed goes back
/// to the router (re-routing it costs nothing). So does one awaiting a remote prefill's
/// KV: its job is cancelled on the prefill worker (at most the chunk under way there is
/// lost; its blocks are held until that worker's writes drain) and the router routes it
/// again, where waiting would keep the drain for as long as the prefill backlog, which is
/// exactly what a flip to prefill is meant to relieve (bench-planner: 2-5 s flips). One
/// being prefilled here completes its prefill; one decoding moves live when
/// `live_migration` is available (no recompute, the stream goes on) and finishes in place
/// otherwise. Asked again when a sequence moves on (a prefill completes).
drain_action on_drain(held_sequence s, bool live_migration);

}  // namespace tokenmill
