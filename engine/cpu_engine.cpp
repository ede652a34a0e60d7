#include "engine/cpu_engine.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <numeric>
#include <stdexcept>
#include <string>
#include <utility>

#include "common/clock.hpp"
#include "engine/cpu/attention.hpp"
#include "engine/cpu/kernels.hpp"
#include "engine/cpu/thread_pool.hpp"
#include "engine/detail/layout_match.hpp"
#include "engine/sampler.hpp"

namespace tokenmill {
namespace {

/// One token of the batch: what to embed, where it sits, which block table holds its KV.
struct batch_row {
  token_id token = 0;
  uint32_t pos = 0;       ///< position in its sequence; attention covers [0, pos]
  uint32_t seq = 0;       ///< index into the batch's block tables
  uint32_t rope_pos = 0;  ///< the position RoPE rotates by: pos, unless prefill_at() shifts it
};

error_info bad_request(std::string what) {
  return {errc::invalid_request, std::move(what)};
}

/// Whole tensor -> f32 (norms, biases, rope divisors: small, converted once).
std::vector<float> to_f32(const tensor_view& t) {
  std::vector<float> out(t.rows * t.cols);
  for (uint64_t r = 0; r < t.rows; ++r)
    cpu::dequantize_row(t.type, t.row(r), out.data() + r * t.cols, t.cols);
  return out;
}

}  // namespace

kv_layout cpu_kv_layout(const llama_config& model, const cpu_engine_config& cfg) {
  return kv_layout{model.layers, model.kv_heads, model.head_dim, cfg.block_tokens,
                   cfg.kv_dtype_bytes};
}

struct cpu_engine::impl {
  /// f32 copies of one layer's vectors.
  struct layer_vectors {
    std::vector<float> attn_norm, ffn_norm, bq, bk, bv;
  };

  impl(const loaded_model& model, const cpu_engine_config& cfg)
      : m(model),
        c(model.config),
        layout(cpu_kv_layout(model.config, cfg)),
        pool(cfg.pool ? cfg.pool : std::make_shared<cpu::thread_pool>(cfg.threads)) {
    const auto& w = m.weights;
    for (const auto& lw : w.layers) {
      layer_vectors v;
      v.attn_norm = to_f32(lw.attn_norm);
      v.ffn_norm = to_f32(lw.ffn_norm);
      if (c.qkv_bias) {
        v.bq = to_f32(lw.bq);
        v.bk = to_f32(lw.bk);
        v.bv = to_f32(lw.bv);
      }
      layers.push_back(std::move(v));
    }
    out_norm = to_f32(w.out_norm);
    std::vector<float> divisors;
    if (w.rope_freqs.present()) divisors = to_f32(w.rope_freqs);
    inv_freq = cpu::rope_inv_freqs(c.head_dim, c.rope_theta, c.scaling,
                                   divisors.empty() ? nullptr : divisors.data());
    tile_scratch.resize(pool.size());
    attn.resize(pool.size());
  }

  const loaded_model& m;
  const llama_config& c;
  kv_layout layout;
  /// The compute pool, the engine's own or shared (cpu_engine_config::pool); decode steps
  /// run at high priority, prefill and KV moves at normal (add_decode, add_prefill).
  cpu::pool_lane pool;
  std::vector<layer_vectors> layers;
  std::vector<float> out_norm;
  std::vector<float> inv_freq;  ///< [head_dim / 2]

  // Scratch, grown to the largest batch seen and reused (no allocation per token).
  std::vector<float> x, xn, q, k, v, att, gate, up, rope_cs, out_x, logits;
  std::vector<std::vector<float>> tile_scratch;  ///< per thread: converted weight tiles
  cpu::linear_input lin_in;                      ///< the current linears() call's input
  /// Per thread: one attention task's block pointers, query list and working memory.
  struct attn_thread {
    std::vector<const std::byte*> k, v;
    std::vector<cpu::attn_query> queries;
    cpu::attn_scratch scratch;
  };
  std::vector<attn_thread> attn;
  /// Rows [begin, end) of the batch: consecutive positions of one sequence.
  struct row_tile {
    uint32_t begin, end;
  };
  std::vector<row_tile> tiles;
  std::vector<batch_row> rows;
  std::vector<std::span<const block_id>> tables;
  std::vector<uint32_t> out_rows;

  static void grow(std::vector<float>& v, size_t n) {
    if (v.size() < n) v.resize(n);
  }

  result<void> check_pool(const block_pool& p) const {
    return detail::check_layout_match(p.layout(), layout, "cpu engine");
  }

  /// Success when `tokens[begin, end)` are valid ids and `blocks` covers positions [0, end)
  /// with ids inside the pool; else the error names the sequence.
  result<void> check_seq(const block_pool& p, std::span<const token_id> tokens, uint32_t begin,
                         uint32_t end, std::span<const block_id> blocks, const char* what,
                         size_t index) const {
    if (auto r = check_sequence(p, layout, c.vocab, tokens, begin, end, blocks); !r)
      return bad_request(fmt::format("cpu engine: {} {}: {}", what, index, r.error().message));
    return {};
  }

  /// y[n][w.rows] = x[n][w.cols] . w^T for several weights sharing x, split by output rows
  /// over the pool in one parallel_for. x is prepared (quantized for the int-dot formats)
  /// once here, and every row range reads that copy.
  struct linear_job {
    const tensor_view* w;
    float* y;          ///< [n][w->rows]
    size_t row0 = 0;   ///< the first of w's rows this job computes
    size_t count = 0;  ///< rows from row0 (0: to the end)
    size_t rows() const { return count ? count : w->rows - row0; }
  };
  std::vector<linear_job> qkv_by_head;  ///< forward_impl's fused decode Q/K/V job
  void linears(std::initializer_list<linear_job> jobs, const float* xin, size_t n) {
    linears(std::span<const linear_job>(jobs.begin(), jobs.size()), xin, n, 16,
            [](size_t, size_t, uint32_t) {});
  }

  /// linears() with chunk bounds at multiples of `unit` (besides the range's end) and
  /// `after(b, e, thread)` called by the thread that computed a chunk's rows [b, e) of the
  /// jobs' concatenated outputs, right after them (while they are in its cache).
  template <class After>
  void linears(std::span<const linear_job> jobs, const float* xin, size_t n, size_t unit,
               After&& after) {
    size_t total = 0;
    std::array<const tensor_view*, 4> ws{};
    size_t nw = 0;
    for (const auto& j : jobs) {
      total += j.rows();
      if (std::find(ws.begin(), ws.begin() + nw, j.w) == ws.begin() + nw) ws.at(nw++) = j.w;
    }
    cpu::prepare_linear_input({ws.data(), nw}, xin, n, lin_in);
    auto run = [&](size_t b, size_t e, uint32_t t) {
      size_t base = 0;
      for (const auto& j : jobs) {
        const size_t rows = j.rows();
        const size_t lo = std::max(b, base), hi = std::min(e, base + rows);
        if (lo < hi)
          cpu::linear(*j.w, lin_in, j.y, j.w->rows, j.row0 + lo - base, j.row0 + hi - base,
                      tile_scratch[t]);
        base += rows;
      }
      after(b, e, t);
    };
    // Multiples of 16 rows keep the 4-row GEMV and the sgemm tiles whole. Prefill-sized
    // batches take shrinking chunks, so that no thread waits long on another's last
    // (2 threads, 125m, prefill 128: 3-14% more tokens/s in 5 of 5 interleaved A/B rows
    // with a run queue of 12-13 on 2 cores, 0.98-1.03 with one of 5);
    // decode batches take one chunk per thread of a job (parallel_for_split, sized from
    // the threads' measured pace): every chunk starts its weight stream cold (the
    // kernels' prefetch only reaches ahead inside a chunk), and fewer chunks ran faster
    // (125m, 2 threads, quiet, 4 alternating runs, b1 ms per step: q4_k 12 chunks
    // 1.60-1.67, 8 1.29-1.54, 4 1.28-1.40, 2 1.23-1.28; f16 8 -> 2 3.55-4.04 ->
    // 3.20-3.58). A worker that joins late finds the chunks taken, and the caller does
    // them all.
    split_rows(total, n, run, unit);
  }

  /// Runs `run` over output rows [0, total) of a linear layer with an n-row input, split over
  /// the pool as linears() does, with chunk bounds at multiples of 16 and of `unit`.
  template <class Fn>
  void split_rows(size_t total, size_t n, Fn&& run, size_t unit = 16) {
    if (n >= cpu::gemm_packed_min_rows)
      return pool.parallel_for_guided(total, std::lcm(cpu::prefill_row_unit, unit), run);
    pool.parallel_for_split(total, std::lcm(size_t{16}, unit), run);
  }

  /// The FFN's input half in one parallel_for: gate = silu(x . w_gate^T) * (x . w_up^T), split
  /// by FFN feature; a chunk computes its features' gate and up rows, then their SiLU
  /// product (while they are in cache), so a layer needs no separate SiLU pass, nor its
  /// parallel_for for a batch. The chunk bounds are multiples of 16 features, so for an FFN
  /// width that is a multiple of 8 every product takes the vector path, as one silu_mul call
  /// over the rows would: the same values bit for bit.
  void gate_up_silu(const tensor_view& w_gate, const tensor_view& w_up, const float* xin,
                    size_t n) {
    const std::array<const tensor_view*, 2> ws{&w_gate, &w_up};
    cpu::prepare_linear_input(ws, xin, n, lin_in);
    const size_t ffn = c.ffn;
    split_rows(ffn, n, [&](size_t b, size_t e, uint32_t t) {
      cpu::linear(w_gate, lin_in, gate.data(), ffn, b, e, tile_scratch[t]);
      cpu::linear(w_up, lin_in, up.data(), ffn, b, e, tile_scratch[t]);
      for (size_t r = 0; r < n; ++r)
        cpu::silu_mul(gate.data() + r * ffn + b, up.data() + r * ffn + b, e - b);
    });
  }

  std::byte* kv_ptr(block_pool& p, const batch_row& r, uint32_t layer, uint32_t kv,
                    uint32_t head) const {
    const auto& blocks = tables[r.seq];
    return p.block(blocks[r.pos / layout.block_tokens]) +
           layout.offset(layer, kv, head, r.pos % layout.block_tokens);
  }

  /// Splits the batch into attention tiles: runs of consecutive positions of one sequence,
  /// cut so that a tile holds at most ~32 query vectors (its scores stay in L2). With
  /// `gaps`, for a blended prefill's kept rows, which skip positions: runs in ascending
  /// position with gaps allowed. cpu::attend() gives each query its own context, so a tile
  /// of scattered rows reads each K/V block once for all of them instead of once per row.
  void make_tiles(bool gaps = false) {
    const uint32_t group = c.heads / c.kv_heads;
    const uint32_t per_tile = std::max<uint32_t>(1, 32 / group);
    tiles.clear();
    for (uint32_t r = 0; r < rows.size();) {
      uint32_t e = r + 1;
      while (e < rows.size() && e - r < per_tile && rows[e].seq == rows[r].seq &&
             (gaps ? rows[e].pos > rows[e - 1].pos : rows[e].pos == rows[e - 1].pos + 1))
        ++e;
      tiles.push_back({r, e});
      r = e;
    }
  }

  /// A blended prefill's selection (prefill_blend): on `layer`, every row's K/V is compared
  /// with the reused K/V in the cache, and only the rows select_recompute keeps go on.
  struct blend_step {
    const blend_prefill* req = nullptr;
    uint32_t layer = 0;
    std::vector<uint8_t> reused_at;  ///< per prompt position
    std::vector<float> deviation;    ///< per prompt position
    blend_selection selection;       ///< the outcome
  };

  /// CacheBlend's deviation of each reused row on layer `l` (Yao et al., EuroSys 2025, §4.3:
  /// the squared L2 distance between the freshly computed and the reused K and V of the
  /// token, summed over KV heads), then the selection, then the rows compacted to the kept
  /// ones (x, q, k, v and the RoPE angles move with them). Returns the new row count.
  size_t blend_select(block_pool& p, uint32_t l, blend_step& b) {
    const size_t n = rows.size(), dim = c.dim, hd = c.head_dim, qdim = size_t{c.heads} * hd,
                 kvdim = size_t{c.kv_heads} * hd;
    const bool f16_kv = layout.dtype_bytes == 2;
    b.deviation.assign(b.reused_at.size(), 0.0f);
    pool.parallel_for(n, 0, [&](size_t lo, size_t hi, uint32_t) {
      std::vector<float> cached(hd);
      for (size_t r = lo; r < hi; ++r) {
        if (!b.reused_at[rows[r].pos]) continue;
        double d = 0;
        for (uint32_t h = 0; h < c.kv_heads; ++h)
          for (uint32_t kv = 0; kv < 2; ++kv) {
            const std::byte* src = kv_ptr(p, rows[r], l, kv, h);
            if (f16_kv)
              cpu::f16_to_f32_row(reinterpret_cast<const uint16_t*>(src), cached.data(), hd);
            else
              std::memcpy(cached.data(), src, hd * 4);
            const float* fresh = (kv == 0 ? k.data() : v.data()) + r * kvdim + h * hd;
            for (size_t i = 0; i < hd; ++i) {
              double e = double{fresh[i]} - cached[i];
              d += e * e;
            }
          }
        b.deviation[rows[r].pos] = static_cast<float>(d);
      }
    });
    const auto& req = *b.req;
    b.selection = select_recompute(req.segments, req.cached_prefix, b.deviation,
                                   req.recompute_ratio, req.first_tokens);
    size_t kept = 0;
    size_t next = 0;  // index into selection.positions
    for (size_t r = 0; r < n; ++r) {
      if (next >= b.selection.positions.size() || b.selection.positions[next] != rows[r].pos)
        continue;
      ++next;
      if (kept != r) {
        std::memcpy(x.data() + kept * dim, x.data() + r * dim, dim * 4);
        std::memcpy(q.data() + kept * qdim, q.data() + r * qdim, qdim * 4);
        std::memcpy(k.data() + kept * kvdim, k.data() + r * kvdim, kvdim * 4);
        std::memcpy(v.data() + kept * kvdim, v.data() + r * kvdim, kvdim * 4);
        std::memcpy(rope_cs.data() + kept * hd, rope_cs.data() + r * hd, hd * 4);
        rows[kept] = rows[r];
      }
      ++kept;
    }
    rows.resize(kept);
    out_rows.assign(1, static_cast<uint32_t>(kept - 1));
    make_tiles(true);
    return kept;
  }

  /// Attention of tile `ti`'s rows on layer `l` for KV head `kvh`'s query heads, as
  /// thread `t`: the heads share each K/V block read (cpu::attend).
  void attend_task(block_pool& p, uint32_t l, size_t ti, uint32_t kvh, uint32_t t) {
    const uint32_t group = c.heads / c.kv_heads, bt = layout.block_tokens;
    const size_t hd = c.head_dim, qdim = size_t{c.heads} * hd;
    auto& ts = attn[t];
    const row_tile& tile = tiles[ti];
    const auto& blocks = tables[rows[tile.begin].seq];
    const uint32_t ctx = rows[tile.end - 1].pos + 1;
    const uint32_t nb = (ctx + bt - 1) / bt;
    ts.k.resize(nb);
    ts.v.resize(nb);
    for (uint32_t i = 0; i < nb; ++i) {
      std::byte* blk = p.block(blocks[i]);
      ts.k[i] = blk + layout.offset(l, 0, kvh, 0);
      ts.v[i] = blk + layout.offset(l, 1, kvh, 0);
    }
    ts.queries.clear();
    for (uint32_t r = tile.begin; r < tile.end; ++r)
      for (uint32_t h = kvh * group; h < (kvh + 1) * group; ++h)
        ts.queries.push_back({q.data() + size_t{r} * qdim + h * hd,
                              att.data() + size_t{r} * qdim + h * hd, rows[r].pos + 1});
    cpu::attend({ts.k, ts.v, bt, c.head_dim, layout.dtype_bytes}, ts.queries,
                1.0f / std::sqrt(static_cast<float>(hd)), ts.scratch);
  }

  /// Heads [h0, h1) of a layer's Q/K/V output for the first n rows, counted over the query
  /// heads, then the KV heads' K, then their V: the biases and RoPE (unless `cache_only`),
  /// and with `cache` the K and V heads into the cache at the rows' positions.
  void qkv_heads(block_pool& p, uint32_t l, size_t n, size_t h0, size_t h1, bool cache,
                 bool cache_only = false) {
    const size_t hd = c.head_dim, pairs = hd / 2, qdim = size_t{c.heads} * hd,
                 kvdim = size_t{c.kv_heads} * hd;
    const auto& lv = layers[l];
    const bool f16_kv = layout.dtype_bytes == 2;
    for (size_t h = h0; h < h1; ++h) {
      const bool is_q = h < c.heads;
      const uint32_t kv = is_q ? 0 : static_cast<uint32_t>((h - c.heads) / c.kv_heads);
      const uint32_t head = static_cast<uint32_t>(is_q ? h : (h - c.heads) % c.kv_heads);
      float* base = is_q ? q.data() : kv == 0 ? k.data() : v.data();
      const size_t stride = is_q ? qdim : kvdim;
      const float* bias = is_q ? lv.bq.data() : kv == 0 ? lv.bk.data() : lv.bv.data();
      for (size_t r = 0; r < n; ++r) {
        float* x = base + r * stride + head * hd;
        if (!cache_only) {
          if (c.qkv_bias)
            for (size_t i = 0; i < hd; ++i)
              x[i] += bias[head * hd + i];
          if (is_q || kv == 0) {
            const float* cs = rope_cs.data() + r * hd;
            cpu::rope_apply(x, c.head_dim, cs, cs + pairs, c.rope);
          }
        }
        if (!cache || is_q) continue;
        std::byte* dst = kv_ptr(p, rows[r], l, kv, head);
        if (f16_kv)
          cpu::f32_to_f16_row(x, reinterpret_cast<uint16_t*>(dst), hd);
        else
          std::memcpy(dst, x, hd * 4);
      }
    }
  }

  /// Runs `rows` through the model (their KV written into `pool`) and leaves the logits of
  /// `out_rows` in `logits` [out_rows][vocab]. For a blended prefill (prefill_blend), which
  /// computes some positions only: with `select`, the rows shrink to the selected ones on
  /// select->layer after its Q/K/V (out_rows becomes the last row); `sparse_tiles` lets the
  /// attention tiles skip positions (make_tiles with gaps); and `ph`, when given, receives the
  /// phases' times.
  void forward_impl(block_pool& p, blend_step* select, blend_phases* ph, bool sparse_tiles) {
    m.wait_for_weights();  // a huge-page copy may still be filling (load_model)
    // Phase timing (blends only): `lap` closes the running phase and opens `next`.
    int64_t t_phase = ph ? now_ns() : 0;
    double* phase = !ph ? nullptr : select ? &ph->full_width_ms : &ph->selected_ms;
    auto lap = [&](double* next) {
      if (!ph) return;
      const int64_t t = now_ns();
      *phase += (t - t_phase) / 1e6;
      t_phase = t;
      phase = next;
    };
    size_t n = rows.size();
    const size_t dim = c.dim, hd = c.head_dim, qdim = size_t{c.heads} * hd,
                 kvdim = size_t{c.kv_heads} * hd, pairs = hd / 2;
    grow(x, n * dim);
    grow(xn, n * dim);
    grow(q, n * qdim);
    grow(k, n * kvdim);
    grow(v, n * kvdim);
    grow(att, n * qdim);
    grow(gate, n * c.ffn);
    grow(up, n * c.ffn);
    grow(rope_cs, n * hd);
    grow(out_x, out_rows.size() * dim);
    grow(logits, out_rows.size() * c.vocab);
    make_tiles(sparse_tiles);

    const auto& w = m.weights;
    pool.parallel_for(n, 0, [&](size_t b, size_t e, uint32_t) {
      for (size_t r = b; r < e; ++r) {
        cpu::dequantize_row(w.tok_embd.type, w.tok_embd.row(static_cast<uint64_t>(rows[r].token)),
                            x.data() + r * dim, dim);
        cpu::rope_angles(rows[r].rope_pos, inv_freq.data(), pairs, rope_cs.data() + r * hd,
                         rope_cs.data() + r * hd + pairs);
      }
    });

    const uint32_t group = c.heads / c.kv_heads;
    // Decode-sized batches fuse each KV head's attention into the Q/K/V job when the heads
    // split evenly over the threads (else one thread would do most of the attention).
    const bool fused_attention =
        !ph && !select && n < cpu::gemm_packed_min_rows && c.kv_heads % pool.threads() == 0;
    qkv_by_head.resize(3 * size_t{c.kv_heads});
    for (uint32_t l = 0; l < c.layers; ++l) {
      const auto& lw = w.layers[l];
      const auto& lv = layers[l];
      for (size_t r = 0; r < n; ++r)
        cpu::rms_norm(x.data() + r * dim, lv.attn_norm.data(), xn.data() + r * dim, dim, c.rms_eps);
      const std::array<linear_job, 3> qkv{
          {{&lw.wq, q.data()}, {&lw.wk, k.data()}, {&lw.wv, v.data()}}};
      if (fused_attention) {
        // Decode: a chunk is whole KV heads, each its group's query rows, then its K and V
        // rows; the thread that computed them applies the biases and RoPE, writes the K/V
        // into the cache and runs the head's attention for every tile, with no barrier
        // before the attention and no Q/K/V crossing cores.
        const size_t per_head = (group + 2) * hd;
        for (uint32_t g = 0; g < c.kv_heads; ++g) {
          qkv_by_head[3 * g] = {&lw.wq, q.data(), g * group * hd, group * hd};
          qkv_by_head[3 * g + 1] = {&lw.wk, k.data(), g * hd, hd};
          qkv_by_head[3 * g + 2] = {&lw.wv, v.data(), g * hd, hd};
        }
        linears(qkv_by_head, xn.data(), n, per_head, [&](size_t b, size_t e, uint32_t t) {
          for (size_t g = b / per_head; g < e / per_head; ++g) {
            qkv_heads(p, l, n, g * group, (g + 1) * group, false);
            qkv_heads(p, l, n, c.heads + g, c.heads + g + 1, true);
            qkv_heads(p, l, n, c.heads + c.kv_heads + g, c.heads + c.kv_heads + g + 1, true);
            for (size_t tile = 0; tile < tiles.size(); ++tile)
              attend_task(p, l, tile, static_cast<uint32_t>(g), t);
          }
        });
      } else {
        if (!select || l != select->layer) {
          // Bias, RoPE and the cache write of each head right after its rows, by the thread
          // that computed them: chunks end at head bounds.
          linears(qkv, xn.data(), n, hd,
                  [&](size_t b, size_t e, uint32_t) { qkv_heads(p, l, n, b / hd, e / hd, true); });
        } else {
          // A blend's selection layer: the cache takes the selected rows only.
          linears(qkv, xn.data(), n, 16, [](size_t, size_t, uint32_t) {});
          pool.parallel_for(c.heads + 2 * c.kv_heads, 0,
                            [&](size_t b, size_t e, uint32_t) { qkv_heads(p, l, n, b, e, false); });
          lap(ph ? &ph->select_ms : nullptr);
          n = blend_select(p, l, *select);
          lap(ph ? &ph->selected_ms : nullptr);
          pool.parallel_for(2 * c.kv_heads, 0, [&](size_t b, size_t e, uint32_t) {
            qkv_heads(p, l, n, c.heads + b, c.heads + e, true, true);
          });
        }

        // Causal attention over the paged cache, one task per (tile of rows of one sequence,
        // KV head): the tile's query heads of the KV head's group share each K/V block read
        // (cpu::attend).
        const int64_t t_attn = ph ? now_ns() : 0;
        pool.parallel_for(tiles.size() * c.kv_heads, 1, [&](size_t b, size_t e, uint32_t t) {
          for (size_t task = b; task < e; ++task)
            attend_task(p, l, task / c.kv_heads, static_cast<uint32_t>(task % c.kv_heads), t);
        });
        if (ph) ph->attention_ms += (now_ns() - t_attn) / 1e6;
      }

      // Output projection into xn (free now), then the residual.
      linears({{&lw.wo, xn.data()}}, att.data(), n);
      for (size_t i = 0; i < n * dim; ++i)
        x[i] += xn[i];
      for (size_t r = 0; r < n; ++r)
        cpu::rms_norm(x.data() + r * dim, lv.ffn_norm.data(), xn.data() + r * dim, dim, c.rms_eps);
      gate_up_silu(lw.w_gate, lw.w_up, xn.data(), n);
      linears({{&lw.w_down, xn.data()}}, gate.data(), n);
      for (size_t i = 0; i < n * dim; ++i)
        x[i] += xn[i];
    }
    lap(ph ? &ph->logits_ms : nullptr);

    for (size_t o = 0; o < out_rows.size(); ++o)
      cpu::rms_norm(x.data() + out_rows[o] * dim, out_norm.data(), out_x.data() + o * dim, dim,
                    c.rms_eps);
    linears({{&w.output, logits.data()}}, out_x.data(), out_rows.size());
    lap(nullptr);
  }

  /// The ordinary forward pass (forward_impl without a selection).
  void forward(block_pool& p) { forward_impl(p, nullptr, nullptr, false); }

  /// forward() with the pool counting this engine as computing for the whole pass: the
  /// serial work between its parallel_for calls takes a core too (thread_pool::busy_scope).
  void run_forward(block_pool& p) {
    auto busy = pool.busy();
    forward(p);
  }

  /// A blended prefill's pass (forward_impl with tiles that skip positions), timed into `ph`.
  void forward_blend(block_pool& p, blend_step* select, blend_phases& ph) {
    auto busy = pool.busy();  // as run_forward()
    forward_impl(p, select, &ph, true);
  }

  /// Validates the chunks and collects their rows; an invalid batch is refused whole.
  result<void> add_prefill(const block_pool& p, std::span<const prefill_chunk> batch,
                           uint32_t base_position = 0) {
    if (auto r = check_pool(p); !r) return r;
    pool.set_priority(cpu::job_priority::normal);
    rows.clear();
    tables.clear();
    out_rows.clear();
    for (size_t i = 0; i < batch.size(); ++i) {
      const auto& ch = batch[i];
      if (ch.begin >= ch.end || ch.end > ch.tokens.size())
        return bad_request(
            fmt::format("cpu engine: prefill chunk {}: range [{}, {}) is empty or "
                        "beyond the prompt ({} tokens)",
                        i, ch.begin, ch.end, ch.tokens.size()));
      if (auto r = check_seq(p, ch.tokens, ch.begin, ch.end, ch.blocks, "prefill chunk", i); !r)
        return r;
      tables.push_back(ch.blocks);
      for (uint32_t pos = ch.begin; pos < ch.end; ++pos)
        rows.push_back({ch.tokens[pos], pos, static_cast<uint32_t>(i), base_position + pos});
      out_rows.push_back(static_cast<uint32_t>(rows.size() - 1));
    }
    return {};
  }

  /// Validates the sequences and collects their newest rows; an invalid batch is refused.
  result<void> add_decode(const block_pool& p, std::span<const decode_seq> batch) {
    if (auto r = check_pool(p); !r) return r;
    pool.set_priority(cpu::job_priority::high);
    rows.clear();
    tables.clear();
    out_rows.clear();
    for (size_t i = 0; i < batch.size(); ++i) {
      const auto& s = batch[i];
      if (s.tokens.empty())
        return bad_request(fmt::format("cpu engine: decode sequence {} has no tokens", i));
      const auto pos = static_cast<uint32_t>(s.tokens.size() - 1);
      if (auto r = check_seq(p, s.tokens, pos, pos + 1, s.blocks, "decode sequence", i); !r)
        return r;
      tables.push_back(s.blocks);
      rows.push_back({s.tokens[pos], pos, static_cast<uint32_t>(i), pos});
      out_rows.push_back(static_cast<uint32_t>(i));
    }
    return {};
  }

  std::span<const float> logits_row(size_t o) const {
    return {logits.data() + o * c.vocab, c.vocab};
  }
};

cpu_engine::cpu_engine(std::shared_ptr<const loaded_model> model, cpu_engine_config cfg)
    : model_(std::move(model)), cfg_(cfg) {
  if (!model_) throw std::invalid_argument("cpu engine: no model");
  const llama_config& c = model_->config;
  if (auto r = c.validate(); !r) throw std::invalid_argument("cpu engine: " + r.error().message);
  if (c.heads == 0 || c.kv_heads == 0 || c.heads % c.kv_heads != 0 || c.head_dim % 2 != 0)
    throw std::invalid_argument(
        fmt::format("cpu engine: heads {} / kv_heads {} / head_dim {} unsupported", c.heads,
                    c.kv_heads, c.head_dim));
  if (cfg_.kv_dtype_bytes != 2 && cfg_.kv_dtype_bytes != 4)
    throw std::invalid_argument(fmt::format(
        "cpu engine: kv_dtype_bytes must be 2 (f16) or 4 (f32), got {}", cfg_.kv_dtype_bytes));
  if (cfg_.block_tokens == 0) throw std::invalid_argument("cpu engine: block_tokens must be > 0");
  if (auto r = check_weights(*model_); !r)
    throw std::invalid_argument("cpu engine: " + r.error().message);
  info_.name = c.name;
  info_.vocab_size = c.vocab;
  info_.max_context = c.max_context;
  info_.bos = c.bos;
  info_.eos = c.eos;
  info_.layout = cpu_kv_layout(c, cfg_);
  impl_ = std::make_unique<impl>(*model_, cfg_);
}

cpu_engine::~cpu_engine() = default;

// Each entry point validates first (errc::invalid_request, the pool untouched), then
// computes; what the computation throws (std::bad_alloc) becomes errc::internal here.

result<std::vector<token_id>> cpu_engine::prefill(block_pool& pool,
                                                  std::span<const prefill_chunk> batch) {
  return catch_into_result(errc::internal, [&]() -> result<std::vector<token_id>> {
    if (batch.empty()) return std::vector<token_id>{};
    if (auto r = impl_->add_prefill(pool, batch); !r) return r.error();
    impl_->run_forward(pool);
    std::vector<token_id> out;
    out.reserve(batch.size());
    for (size_t i = 0; i < batch.size(); ++i)
      out.push_back(sample_token(impl_->logits_row(i), batch[i].sampling, batch[i].end,
                                 make_history(batch[i].tokens.subspan(0, batch[i].end),
                                              batch[i].tokens.size(), batch[i].sampling),
                                 batch[i].logprobs, batch[i].allowed));
    return out;
  });
}

result<std::vector<token_id>> cpu_engine::decode(block_pool& pool,
                                                 std::span<const decode_seq> batch) {
  return catch_into_result(errc::internal, [&]() -> result<std::vector<token_id>> {
    if (batch.empty()) return std::vector<token_id>{};
    if (auto r = impl_->add_decode(pool, batch); !r) return r.error();
    impl_->run_forward(pool);
    std::vector<token_id> out;
    out.reserve(batch.size());
    for (size_t i = 0; i < batch.size(); ++i)
      out.push_back(
          sample_token(impl_->logits_row(i), batch[i].sampling, batch[i].tokens.size(),
                       make_history(batch[i].tokens, batch[i].prompt_len, batch[i].sampling),
                       batch[i].logprobs, batch[i].allowed));
    return out;
  });
}

result<std::vector<float>> cpu_engine::prefill_logits(block_pool& pool,
                                                      const prefill_chunk& chunk) {
  return catch_into_result(errc::internal, [&]() -> result<std::vector<float>> {
    if (auto r = impl_->add_prefill(pool, {&chunk, 1}); !r) return r.error();
    impl_->out_rows.clear();
    for (uint32_t r = 0; r < impl_->rows.size(); ++r)
      impl_->out_rows.push_back(r);
    impl_->run_forward(pool);
    return std::vector<float>(
        impl_->logits.begin(),
        impl_->logits.begin() + size_t{chunk.end - chunk.begin} * info_.vocab_size);
  });
}

result<std::vector<float>> cpu_engine::decode_logits(block_pool& pool,
                                                     std::span<const decode_seq> batch) {
  return catch_into_result(errc::internal, [&]() -> result<std::vector<float>> {
    if (batch.empty()) return std::vector<float>{};
    if (auto r = impl_->add_decode(pool, batch); !r) return r.error();
    impl_->run_forward(pool);
    return std::vector<float>(impl_->logits.begin(),
                              impl_->logits.begin() + batch.size() * info_.vocab_size);
  });
}

result<std::vector<float>> cpu_engine::prefill_last_logits(block_pool& pool,
                                                           const prefill_chunk& chunk) {
  return catch_into_result(errc::internal, [&]() -> result<std::vector<float>> {
    if (auto r = impl_->add_prefill(pool, {&chunk, 1}); !r) return r.error();
    impl_->run_forward(pool);
    auto row = impl_->logits_row(0);
    return std::vector<float>(row.begin(), row.end());
  });
}

result<std::vector<token_id>> cpu_engine::prefill_at(block_pool& pool, const prefill_chunk& chunk,
                                                     uint32_t base_position) {
  return catch_into_result(errc::internal, [&]() -> result<std::vector<token_id>> {
    if (uint64_t{base_position} + chunk.end > info_.max_context)
      return bad_request(fmt::format(
          "cpu engine: prefill_at: base position {} + {} tokens exceeds the context ({})",
          base_position, chunk.end, info_.max_context));
    if (auto r = impl_->add_prefill(pool, {&chunk, 1}, base_position); !r) return r.error();
    impl_->run_forward(pool);
    return std::vector<token_id>{sample_token(
        impl_->logits_row(0), chunk.sampling, base_position + chunk.end,
        make_history(chunk.tokens.subspan(0, chunk.end), chunk.tokens.size(), chunk.sampling),
        chunk.logprobs, chunk.allowed)};
  });
}

result<void> cpu_engine::move_chunk_kv(block_pool& pool, const chunk_move& mv) {
  return catch_into_result(errc::internal, [&]() -> result<void> {
    auto& im = *impl_;
    if (auto r = im.check_pool(pool); !r) return r;
    im.pool.set_priority(cpu::job_priority::normal);
    const kv_layout& lay = im.layout;
    if (mv.tokens == 0) return bad_request("cpu engine: move_chunk_kv: no tokens to move");
    auto check_table = [&](std::span<const block_id> t, uint64_t end,
                           const char* which) -> result<void> {
      const uint64_t need = (end + lay.block_tokens - 1) / lay.block_tokens;
      if (t.size() < need)
        return bad_request(fmt::format(
            "cpu engine: move_chunk_kv: the {} block table has {} blocks, {} needed for {} "
            "tokens",
            which, t.size(), need, end));
      for (uint64_t i = 0; i < need; ++i)
        if (t[i] >= pool.total())
          return bad_request(
              fmt::format("cpu engine: move_chunk_kv: {} block {} (entry {}) is outside the pool "
                          "({} blocks)",
                          which, t[i], i, pool.total()));
      return {};
    };
    if (uint64_t{mv.dst_begin} + mv.tokens > info_.max_context ||
        uint64_t{mv.src_position} + mv.tokens > info_.max_context)
      return bad_request(fmt::format(
          "cpu engine: move_chunk_kv: {} tokens from position {} to {} exceed the context ({})",
          mv.tokens, mv.src_position, mv.dst_begin, info_.max_context));
    if (auto r = check_table(mv.src, mv.tokens, "source"); !r) return r;
    if (auto r = check_table(mv.dst, uint64_t{mv.dst_begin} + mv.tokens, "destination"); !r)
      return r;
    const llama_config& c = model_->config;
    const size_t hd = c.head_dim, pairs = hd / 2;
    // One set of angles for the whole move: every key moves by the same distance.
    std::vector<float> cs(hd);
    cpu::rope_angles_delta(int64_t{mv.dst_begin} - int64_t{mv.src_position}, im.inv_freq.data(),
                           pairs, cs.data(), cs.data() + pairs);
    const bool f16_kv = lay.dtype_bytes == 2;
    const size_t bt = lay.block_tokens;
    im.pool.parallel_for(size_t{mv.tokens}, 0, [&](size_t b, size_t e, uint32_t) {
      std::vector<float> buf(hd);
      for (size_t i = b; i < e; ++i) {
        const std::byte* sblk = pool.block(mv.src[i / bt]);
        const uint32_t ss = static_cast<uint32_t>(i % bt);
        const size_t d = mv.dst_begin + i;
        std::byte* dblk = pool.block(mv.dst[d / bt]);
        const uint32_t ds = static_cast<uint32_t>(d % bt);
        for (uint32_t l = 0; l < c.layers; ++l)
          for (uint32_t h = 0; h < c.kv_heads; ++h) {
            std::memcpy(dblk + lay.offset(l, 1, h, ds), sblk + lay.offset(l, 1, h, ss),
                        hd * lay.dtype_bytes);
            const std::byte* sk = sblk + lay.offset(l, 0, h, ss);
            std::byte* dk = dblk + lay.offset(l, 0, h, ds);
            if (f16_kv)
              cpu::f16_to_f32_row(reinterpret_cast<const uint16_t*>(sk), buf.data(), hd);
            else
              std::memcpy(buf.data(), sk, hd * 4);
            cpu::rope_apply(buf.data(), c.head_dim, cs.data(), cs.data() + pairs, c.rope);
            if (f16_kv)
              cpu::f32_to_f16_row(buf.data(), reinterpret_cast<uint16_t*>(dk), hd);
            else
              std::memcpy(dk, buf.data(), hd * 4);
          }
      }
    });
    return {};
  });
}

result<blend_outcome> cpu_engine::prefill_blend(block_pool& pool, const blend_prefill& req) {
  return catch_into_result(errc::internal, [&]() -> result<blend_outcome> {
    auto& im = *impl_;
    const auto n = static_cast<uint32_t>(req.tokens.size());
    if (n == 0) return bad_request("cpu engine: prefill_blend: empty prompt");
    if (auto r = check_blend_segments(req.segments, n); !r)
      return bad_request("cpu engine: prefill_blend: " + r.error().message);
    if (auto r = check_recompute_ratio(req.recompute_ratio); !r)
      return bad_request("cpu engine: prefill_blend: " + r.error().message);
    if (req.cached_prefix >= n)
      return bad_request(fmt::format(
          "cpu engine: prefill_blend: cached prefix of {} tokens leaves nothing to compute in a "
          "{}-token prompt (the last position is always computed)",
          req.cached_prefix, n));
    if (auto r = im.check_pool(pool); !r) return r.error();
    if (auto r = check_sequence(pool, im.layout, info_.vocab_size, req.tokens, 0, n, req.blocks);
        !r)
      return bad_request("cpu engine: prefill_blend: " + r.error().message);
    // The rows of an ordinary prefill of [cached_prefix, n).
    prefill_chunk whole{req.tokens, req.cached_prefix, n, req.blocks, {}, {}, {}};
    if (auto r = im.add_prefill(pool, {&whole, 1}); !r) return r.error();

    impl::blend_step step;
    step.req = &req;
    step.layer = std::min(req.select_layer, model_->config.layers - 1);
    const bool select =
        req.policy == blend_policy::deviation &&
        selection_needs_deviation(req.segments, req.cached_prefix, req.recompute_ratio);
    blend_outcome out;
    if (select) {
      step.reused_at.assign(n, 0);
      for (const auto& sg : req.segments)
        if (sg.reused)
          std::fill(step.reused_at.begin() + sg.begin, step.reused_at.begin() + sg.end, 1);
      out.select_layer_tokens = static_cast<uint32_t>(im.rows.size());
      im.forward_blend(pool, &step, out.phases);
    } else {
      // The selection is known without deviations: keep only its rows from layer 0 on.
      step.selection = req.policy == blend_policy::leading
                           ? select_leading(req.segments, req.cached_prefix, req.recompute_ratio)
                           : select_recompute(req.segments, req.cached_prefix, {},
                                              req.recompute_ratio, req.first_tokens);
      if (step.selection.positions.size() == im.rows.size()) {
        // Every position: the ordinary forward pass (ratio 1 is a full prefill bit for bit).
        const int64_t t0 = now_ns();
        im.run_forward(pool);
        out.phases.selected_ms = (now_ns() - t0) / 1e6;
      } else {
        size_t kept = 0, next = 0;
        for (size_t r = 0; r < im.rows.size(); ++r)
          if (next < step.selection.positions.size() &&
              step.selection.positions[next] == im.rows[r].pos) {
            im.rows[kept++] = im.rows[r];
            ++next;
          }
        im.rows.resize(kept);
        im.out_rows.assign(1, static_cast<uint32_t>(kept - 1));
        im.forward_blend(pool, nullptr, out.phases);
      }
      out.select_layer_tokens = static_cast<uint32_t>(step.selection.positions.size());
    }
    auto row = im.logits_row(0);
    out.logits.assign(row.begin(), row.end());
    out.reused_tokens = step.selection.reused_tokens;
    out.recomputed_reused = step.selection.recomputed_reused;
    out.computed_tokens = static_cast<uint32_t>(step.selection.positions.size());
    if (select) {
      double all = 0, kept = 0;
      for (float d : step.deviation)
        all += d;
      for (uint32_t p : step.selection.positions)
        if (step.reused_at[p]) kept += step.deviation[p];
      out.selected_deviation_share = all > 0 ? kept / all : 1;
    } else {
      out.selected_deviation_share = out.recomputed_reused > 0 ? 1 : 0;
    }
    return out;
  });
}

}  // namespace tokenmill
