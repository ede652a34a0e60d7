#pragma once
/// The decode worker's decisions, free of CAF (STYLE.md §2): when a sequence stops, whether
/// an assignment fits the pool, whether arriving KV is what was reserved for it, when
/// the blocks of an ended sequence must be held back, and when a remotely prefilled
/// sequence's first token goes to the router. decode_actor.cpp wires them.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>

#include "common/api_types.hpp"
#include "common/errors.hpp"
#include "common/ids.hpp"
#include "common/result.hpp"

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

/// Who streams a remotely prefilled sequence's first token to the router (`serve
/// --first-token`, decode worker option `first_token`).
enum class first_token_release : uint8_t {
  /// The prefill worker, as soon as the prompt's KV is pushed: the lowest TTFT. The second
  /// token waits for the decode batch's running step to end and then one step, so the
  /// first gap is 1-2 steps.
  prefill,
  /// The decode worker, just before the sequence's first decode step starts (as vLLM /
  /// Dynamo disaggregated deployments stream from the decode side): TTFT grows by the wait
  /// for that step (about half a step on average) and every gap, the first included, is
  /// one step.
  decode,
};

/// "prefill" or "decode".
std::string_view first_token_release_name(first_token_release r);

/// The release named `name`; errc::invalid_request naming it and the choices otherwise.
result<first_token_release> parse_first_token_release(std::string_view name);

/// Whether a sequence's prefill job asks the prefill worker to hold its first token (send
/// it to this decode worker only): release `decode` with a remote prefill. A local
/// prefill's first token comes from this worker's own step already, when it is computed.
bool hold_first_token(first_token_release r, bool remote_prefill);

/// Where a sequence whose first token is held stands when the decode worker decides.
enum class held_token_moment : uint8_t {
  joins_step,  ///< it joins the decode batch; the step it is in is about to start
  moves_out,   ///< it moves live to another decode worker before any step here
  ends,        ///< it ends before any decode step (the reason says how)
};

/// Whether a held first token goes to the router now. When the sequence joins its first
/// decode step: yes, before the step starts, so token 1 -> token 2 is that one step. When
/// it moves live to another worker first: yes (that worker does not know it is held). When
/// it ends before any step: only if it ends normally (`reason` stop, eos or length: the
/// first token was its last and the client must have it); a cancelled or failed attempt,
/// or one handed back to the router (`handed_back`, routed again, which computes the token
/// anew), drops it, as the client never saw it.
bool release_held_token(held_token_moment m, finish_reason reason, bool handed_back);

}  // namespace tokenmill
