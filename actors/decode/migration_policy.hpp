#pragma once
/// Live migration of a decode sequence with its KV, free of CAF (STYLE.md §2): which
/// sequences may move, what an offer must look like for the target to take it, which blocks
/// travel, what the source does when a move fails, and which decode worker a draining one
/// hands its sequences to. decode_actor.cpp (section "live migration") wires these.
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "common/errors.hpp"
#include "common/ids.hpp"

namespace tokenmill {

/// Whether the sequence of attempt `id` may start moving now. `known`: the worker holds it;
/// `decoding`: its KV is complete and it is in (or waiting for) the decode batch; `moving`:
/// a move of it is already under way; `to_self`: the target is this worker. Sequences still
/// waiting for blocks, for their prompt's KV or in local prefill do not move (they hold no
/// generated state worth moving: the router re-routes them cheaply). errc::invalid_request
/// says why not.
std::optional<error_info> check_can_migrate(request_id id, bool known, bool decoding, bool moving,
                                            bool to_self);

/// What a migrate_offer says about the sequence, as the target checks it.
struct migrate_offer_shape {
  uint32_t prompt_len = 0;
  uint32_t generated = 0;
  uint32_t tokens = 0;     ///< prompt + generated
  uint32_t kv_tokens = 0;  ///< leading positions whose KV travels
  uint32_t max_tokens = 0;
  uint64_t src_block_bytes = 0;
  uint64_t dst_block_bytes = 0;
  uint32_t need_blocks = 0;  ///< the reservation: prompt + max_tokens (blocks_to_reserve)
  uint32_t pool_blocks = 0;  ///< the target's whole pool
  bool known = false;        ///< the target already holds a sequence with this id
};

/// Whether the target can ever take the offered sequence: a consistent sequence (tokens =
/// prompt + generated, at least one generated token, the KV of every position but the
/// newest, tokens left to generate), pools of the same block size, and a reservation
/// (prompt + max_tokens) that fits the target's pool. errc::invalid_request or
/// errc::out_of_blocks says what is wrong.
std::optional<error_info> check_migrate_offer(const migrate_offer_shape& s);

/// Blocks that hold the KV of the first `kv_tokens` positions (the last may be partial).
uint32_t migration_kv_blocks(uint32_t kv_tokens, uint32_t block_tokens);

/// Leading blocks the target may take from its own prefix cache instead of receiving them:
/// the full blocks of the KV (a partial block is always sent).
uint32_t migration_reusable_blocks(uint32_t kv_tokens, uint32_t block_tokens);

/// Checks the target's answer at the source: it reuses `skip_blocks` and names one
/// destination block per remaining KV block (`dst_blocks`), in a pool of the same block
/// size. errc::invalid_request says what is wrong.
std::optional<error_info> check_migrate_accept(uint32_t kv_blocks, uint32_t skip_blocks,
                                               size_t dst_blocks, uint64_t src_block_bytes,
                                               uint64_t dst_block_bytes, uint32_t dst_pool_blocks);

/// Checks the commit at the target: the transfer writes exactly the blocks reserved for it
/// (`expected`, in order) with one checksum each. errc::kv_corrupt says what is wrong.
std::optional<error_info> check_migrate_commit(std::span<const block_id> expected,
                                               std::span<const block_id> dst_blocks,
                                               size_t checksums);

/// What the source does with a sequence whose move failed.
enum class migration_fallback : uint8_t {
  continue_here,  ///< decode it on here, as if nothing had happened
  end_attempt,    ///< end the attempt (errc::unavailable): the router re-submits it elsewhere
  cancel,         ///< the router cancelled it meanwhile: end it cancelled
};

/// The source's choice after a failed move: a cancel that arrived meanwhile wins; then a
/// worker that may not keep it (`keep_on_failure` false: it is draining) or whose engine
/// failed ends the attempt; otherwise it decodes on.
migration_fallback after_failed_move(bool cancelled, bool keep_on_failure, bool engine_ok);

/// A decode worker a draining one could hand a sequence to.
struct migration_candidate {
  worker_id id = 0;
  bool up = true;
  bool draining = false;
  uint32_t load = 0;  ///< sequences it serves or has queued (as the caller knows them)
};

/// The target for a sequence leaving worker `self`: the least-loaded decode worker that is
/// up, not draining and not `self` (ties: the lowest id, so that choices are stable). Its
/// index in `candidates`, or nothing when there is none.
std::optional<size_t> pick_migration_target(std::span<const migration_candidate> candidates,
                                            worker_id self);

/// A sequence a rebalance could move (it decodes, is not moving and not ending).
struct rebalance_candidate {
  request_id id = 0;
  uint32_t remaining = 0;  ///< tokens it may still generate (max_tokens - generated)
};

/// The sequences a rebalance_request moves: at most `count`, those with the most tokens
/// still to generate first (a move pays off over the steps that follow it; ties: the
/// lowest id, so that choices are stable). A sequence with nothing left to generate never
/// moves.
std::vector<request_id> pick_rebalance(std::vector<rebalance_candidate> candidates, uint32_t count);

}  // namespace tokenmill
