#pragma once
/// Causal attention over the paged, block-major KV cache (GQA: query head h reads KV head
/// h / (heads / kv_heads)). Scores are scaled by 1/sqrt(head_dim); softmax in FP32.
///
/// Limits, checked on the host (std::invalid_argument): 1 <= head_dim <= 256
/// (attention_max_head_dim), heads a positive multiple of kv_heads and at most 65535,
/// layer < kv.layers, q_stride >= heads * head_dim, kv.block_bytes at least the layout's
/// size. Every call is graph-capturable: no allocation, no synchronisation, no read of
/// device data on the host; with rows.rows == 0 it launches nothing (and reads no pointer).
#include "gpu/types.cuh"

namespace tokenmill::gpu {

/// Prefill (and any batch with several rows per sequence): row r attends to positions
/// [0, rows.pos[r]] of sequence rows.seq[r] — the cached prefix and the rows of the same
/// chunk, whose K/V rope_store_kv has already written. Tiled over 16 query rows and chunks
/// of KV positions with an online softmax, so no [rows x context] score matrix is
/// materialised. The sequences in a tile are processed one after another (correct for any
/// mix, but one-row sequences are cheaper through attention_decode).
/// q: the Q part of the fused qkv rows (row stride `q_stride` floats); out: [rows][heads *
/// head_dim] of `out_t` (the input type of the output projection).
void attention_prefill(const float* q, uint32_t q_stride, const batch_rows& rows, uint32_t heads,
                       const paged_kv& kv, uint32_t layer, void* out, elem out_t,
                       cudaStream_t stream);

/// Largest head_dim the attention kernels support.
inline constexpr uint32_t attention_max_head_dim = 256;

/// Positions per decode partition: one CTA per (partition, head, row).
inline constexpr uint32_t attention_decode_partition = 256;

/// Scratch bytes attention_decode needs for `rows` sequences, `heads` query heads and at
/// most `max_context` positions: rows * heads * ceil(max_context / 256) * (head_dim + 2)
/// floats (per partition: max, sum, unnormalised weighted V). Partitions are counted in
/// positions, so `block_tokens` does not change the size.
size_t attention_decode_workspace(uint32_t rows, uint32_t heads, uint32_t head_dim,
                                  uint32_t max_context, uint32_t block_tokens);

/// Decode: one query row per sequence, row r attends to [0, rows.pos[r]]. Long contexts
/// are split into partitions of 256 positions processed in parallel, each giving a partial
/// (max, sum, weighted V), then reduced. `workspace` holds attention_decode_workspace(...)
/// bytes for a `max_context` at least max(pos) + 1 (a precondition the host cannot check:
/// positions beyond it are silently left out). With max_context <= 256 there is a single
/// partition, the output is written directly and `workspace` may be null. At most 65535
/// rows. Same q/out conventions as prefill.
void attention_decode(const float* q, uint32_t q_stride, const batch_rows& rows, uint32_t heads,
                      const paged_kv& kv, uint32_t layer, uint32_t max_context, void* workspace,
                      void* out, elem out_t, cudaStream_t stream);

}  // namespace tokenmill::gpu
