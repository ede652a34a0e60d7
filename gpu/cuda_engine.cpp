// Over 600 lines: one impl holds the device state that validation, forward pass and graphs share.
// The CUDA engine: the CPU engine's forward pass (engine/cpu_engine.cpp) on one GPU, and
// the backend's public entry points (gpu/cuda_backend.hpp).
#include "gpu/cuda_engine.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>

#include "engine/cpu/kernels.hpp"
#include "engine/cpu_engine.hpp"
#include "engine/detail/layout_match.hpp"
#include "engine/sampler.hpp"
#include "gpu/activation.cuh"
#include "gpu/attention.cuh"
#include "gpu/cuda_pool_memory.hpp"
#include "gpu/cuda_util.hpp"
#include "gpu/embedding.cuh"
#include "gpu/norm.cuh"
#include "gpu/rope.cuh"
#include "gpu/sampling.cuh"

namespace tokenmill {
namespace {

using gpu::device_buffer;
using gpu::elem;
using gpu::pinned_buffer;

/// Rows one attention_decode launch takes (its grid's z extent), hence also the largest
/// decode graph bucket.
constexpr uint32_t max_decode_rows = 65535;
/// Block ids, positions and token ids travel to the device as int32.
constexpr uint64_t max_int32 = std::numeric_limits<int32_t>::max();

/// A batch the engine cannot take: the caller's request, not the engine, is at fault.
error_info bad_request(std::string what) {
  return {errc::invalid_request, std::move(what)};
}

bool parse_dtype(const std::string& s, elem& out) {
  if (s == "f32")
    out = elem::f32;
  else if (s == "f16")
    out = elem::f16;
  else if (s == "bf16")
    out = elem::bf16;
  else
    return false;
  return true;
}

/// Appends the rows of `w` converted to `t` (via f32: q8_0 is dequantized) to `out`.
void append_rows(const tensor_view& w, elem t, std::vector<std::byte>& out) {
  const size_t cols = w.cols, eb = gpu::elem_bytes(t);
  std::vector<float> row(cols);
  std::vector<uint16_t> half(t == elem::f32 ? 0 : cols);
  size_t at = out.size();
  out.resize(at + w.rows * cols * eb);
  for (uint64_t r = 0; r < w.rows; ++r, at += cols * eb) {
    cpu::dequantize_row(w.type, w.row(r), row.data(), cols);
    if (t == elem::f32) {
      std::memcpy(out.data() + at, row.data(), cols * 4);
      continue;
    }
    if (t == elem::f16)
      cpu::f32_to_f16_row(row.data(), half.data(), cols);
    else
      for (size_t k = 0; k < cols; ++k)
        half[k] = cpu::f32_to_bf16(row[k]);
    std::memcpy(out.data() + at, half.data(), cols * 2);
  }
}

/// Device copy of `n` host bytes. cudaMemcpy from pageable memory may return before the
/// DMA lands; the engine's constructor synchronizes the device once after all uploads.
device_buffer upload(const void* src, size_t n) {
  device_buffer b(n);
  if (n != 0) TM_CUDA(cudaMemcpy(b.get(), src, n, cudaMemcpyHostToDevice));
  return b;
}

/// The tensors' rows, converted to `t` and concatenated (a fused weight: wq|wk|wv), on the
/// device.
device_buffer upload_rows(std::initializer_list<const tensor_view*> parts, elem t) {
  std::vector<std::byte> host;
  for (const tensor_view* p : parts)
    append_rows(*p, t, host);
  return upload(host.data(), host.size());
}

/// Grows a pinned buffer to at least `bytes` (contents not kept).
void grow(pinned_buffer& b, size_t bytes) {
  if (b.size() < bytes) {
    b = pinned_buffer();
    b = pinned_buffer(bytes);
  }
}

/// Selects the device for the calling thread; first member of the engine's state, so that
/// every later member (stream, cuBLAS handle, buffers) is created on it.
struct device_selection {
  explicit device_selection(int d) : device(d) { TM_CUDA(cudaSetDevice(d)); }
  int device;
};

}  // namespace

kv_layout cuda_kv_layout(const llama_config& model, const cuda_engine_config& cfg) {
  cpu_engine_config c;
  c.kv_dtype_bytes = cfg.kv_dtype_bytes;
  c.block_tokens = cfg.block_tokens;
  return cpu_kv_layout(model, c);
}

struct cuda_engine::impl {
  /// One transformer block on the device. Matrices are [out][in] of the engine's dtype;
  /// vectors f32.
  struct layer {
    device_buffer attn_norm, ffn_norm;
    device_buffer bqkv;       ///< [qdim + 2 kvdim]: bq|bk|bv (Qwen2), else empty
    device_buffer wqkv;       ///< [qdim + 2 kvdim][dim]: wq|wk|wv
    device_buffer wo;         ///< [dim][qdim]
    device_buffer w_gate_up;  ///< [2 ffn][dim]: w_gate|w_up
    device_buffer w_down;     ///< [dim][ffn]
  };

  /// Activations of forward passes, each buffer grown to the largest pass seen (never
  /// shrunk), so steady-state steps allocate nothing.
  struct activations {
    device_buffer x;       ///< f32 [rows][dim]: the residual stream
    device_buffer xn;      ///< dtype [rows][dim]: normalized, the GEMM input
    device_buffer qkv;     ///< f32 [rows][qdim + 2 kvdim]
    device_buffer att;     ///< dtype [rows][qdim]
    device_buffer gu;      ///< f32 [rows][2 ffn]
    device_buffer act;     ///< dtype [rows][ffn]
    device_buffer xo;      ///< f32 [outputs][dim]: gathered output rows of x
    device_buffer logits;  ///< f32 [outputs][vocab]
    device_buffer ids;     ///< int32 [outputs]: argmax of each logits row
    device_buffer ws;      ///< attention_decode's workspace
  };

  /// One forward pass as the device sees it.
  struct step {
    uint32_t n = 0;                   ///< rows
    const int32_t* tokens = nullptr;  ///< device [n]
    gpu::batch_rows rows;
    gpu::paged_kv kv;
    bool prefill_attention = false;  ///< some sequence has several rows
    uint32_t decode_context = 0;     ///< attention_decode's max_context
    /// Rows whose logits are wanted, when not every row's (then empty); ascending.
    std::span<const uint32_t> gather;
    uint32_t outputs = 0;  ///< logits rows
  };

  /// A batch as the host sees it (validated).
  struct host_row {
    int32_t token = 0;
    int32_t pos = 0;
    int32_t seq = 0;  ///< index into tables
  };
  struct host_batch {
    std::vector<host_row> rows;
    std::vector<std::span<const block_id>> tables;
    std::vector<uint32_t> out_rows;         ///< rows sampled, one per chunk / sequence
    std::vector<sampling_params> sampling;  ///< per output
    std::vector<uint64_t> positions;        ///< per output: sample_token's position
    std::vector<sample_history> histories;  ///< per output: what its penalties look at
    std::vector<token_logprobs*> logprobs;  ///< per output: where its logprobs go (or null)
    std::vector<std::span<const uint64_t>> allowed;  ///< per output: grammar mask (or empty)
    bool multi_row = false;                          ///< a sequence contributes several rows
    uint32_t max_context = 0;                        ///< max(pos) + 1
    uint32_t max_blocks = 0;                         ///< longest block-table prefix needed
  };

  /// Decode steps over fixed buffers, bucketed by batch size, replayed from CUDA graphs.
  /// Every pointer a graph holds stays valid and unchanged for the engine's lifetime, except
  /// the KV pool's base, which is why graphs are dropped when the pool changes.
  struct decode_graphs {
    std::vector<uint32_t> buckets;  ///< ascending; the last is cfg.max_batch
    uint32_t rows = 0;              ///< the largest bucket
    uint32_t stride = 0;            ///< block-table entries per row: blocks_for(max_context)
    bool allocated = false;
    activations act;
    device_buffer inputs;   ///< int32 [tokens rows][pos rows][seq rows][tables rows*stride]
    pinned_buffer staging;  ///< the host image of `inputs`
    std::vector<gpu::graph_exec> graphs;  ///< per bucket; empty until first used
    const void* pool_base = nullptr;      ///< the KV pool the graphs were captured with
  };

  impl(const loaded_model& model, const cuda_engine_config& config, elem type, const kv_layout& kv)
      : dev(config.device),
        m(model),
        c(model.config),
        cfg(config),
        t(type),
        layout(kv),
        qdim(c.heads * c.head_dim),
        kvdim(c.kv_heads * c.head_dim),
        qkv_cols(qdim + 2 * kvdim),
        blas(stream.get(), type == elem::f32) {
    const auto& w = m.weights;
    tok_embd = upload_rows({&w.tok_embd}, t);
    if (w.output.data == w.tok_embd.data && w.output.type == w.tok_embd.type) {
      output_w = tok_embd.get();  // tied: one copy
    } else {
      output = upload_rows({&w.output}, t);
      output_w = output.get();
    }
    out_norm = upload_rows({&w.out_norm}, elem::f32);
    for (const auto& lw : w.layers) {
      layer l;
      l.attn_norm = upload_rows({&lw.attn_norm}, elem::f32);
      l.ffn_norm = upload_rows({&lw.ffn_norm}, elem::f32);
      if (c.qkv_bias) l.bqkv = upload_rows({&lw.bq, &lw.bk, &lw.bv}, elem::f32);
      l.wqkv = upload_rows({&lw.wq, &lw.wk, &lw.wv}, t);
      l.wo = upload_rows({&lw.wo}, t);
      l.w_gate_up = upload_rows({&lw.w_gate, &lw.w_up}, t);
      l.w_down = upload_rows({&lw.w_down}, t);
      layers.push_back(std::move(l));
    }
    std::vector<float> divisors;  // as the CPU engine reads them: row by row to f32
    if (w.rope_freqs.present()) {
      const tensor_view& f = w.rope_freqs;
      divisors.resize(f.rows * f.cols);
      for (uint64_t r = 0; r < f.rows; ++r)
        cpu::dequantize_row(f.type, f.row(r), divisors.data() + r * f.cols, f.cols);
    }
    const std::vector<float> inv = cpu::rope_inv_freqs(
        c.head_dim, c.rope_theta, c.scaling, divisors.empty() ? nullptr : divisors.data());
    inv_freq = upload(inv.data(), inv.size() * sizeof(float));

    for (uint32_t b = 1; b < cfg.max_batch; b *= 2)
      graphs.buckets.push_back(b);
    graphs.buckets.push_back(cfg.max_batch);
    graphs.rows = cfg.max_batch;
    graphs.stride = layout.blocks_for(c.max_context);
    graphs.graphs.resize(graphs.buckets.size());
    TM_CUDA(cudaDeviceSynchronize());  // the uploads have landed before any stream runs
  }

  ~impl() {
    // Members are freed after this body: on the engine's device.
    (void)cudaSetDevice(cfg.device);
  }

  device_selection dev;
  const loaded_model& m;
  const llama_config& c;
  cuda_engine_config cfg;
  elem t;
  kv_layout layout;
  uint32_t qdim, kvdim, qkv_cols;
  gpu::stream stream;  // declared before blas: the handle is destroyed first
  gpu::blas blas;
  device_buffer tok_embd, output, out_norm, inv_freq;
  const void* output_w = nullptr;  ///< output head (tok_embd when tied)
  std::vector<layer> layers;

  activations dyn;         ///< prefill and decode batches the graphs do not take
  device_buffer inputs;    ///< int32 inputs of `dyn` passes
  pinned_buffer staging;   ///< their host image
  pinned_buffer out_host;  ///< sampled ids, then logits rows sampled on the host
  decode_graphs graphs;
  host_batch batch;

  void activate() const { TM_CUDA(cudaSetDevice(cfg.device)); }

  // ---- validation (nothing is touched before it passes) ------------------------------

  result<void> check_pool(const block_pool& p) const {
    if (auto r = detail::check_layout_match(p.layout(), layout, "cuda engine"); !r) return r;
    const pool_memory& mem = p.storage();
    if (mem.kind() != memory_kind::cuda || mem.device() != cfg.device)
      return bad_request(fmt::format(
          "cuda engine: the block pool is in {} memory (device {}), not in memory of CUDA "
          "device {} (make it with the engine's allocate_kv_memory)",
          memory_kind_name(mem.kind()), mem.device(), cfg.device));
    if (p.total() > max_int32)
      return bad_request(
          fmt::format("cuda engine: block pool of {} blocks; at most {}", p.total(), max_int32));
    return {};
  }

  result<void> check_seq(const block_pool& p, std::span<const token_id> tokens, uint32_t begin,
                         uint32_t end, std::span<const block_id> blocks, const char* what,
                         size_t index) const {
    if (end > max_int32)
      return bad_request(fmt::format("cuda engine: {} {}: position {} is beyond {}", what, index,
                                     end - 1, max_int32 - 1));
    if (auto r = check_sequence(p, layout, c.vocab, tokens, begin, end, blocks); !r)
      return bad_request(fmt::format("cuda engine: {} {}: {}", what, index, r.error().message));
    return {};
  }

  void clear_batch() {
    batch.rows.clear();
    batch.tables.clear();
    batch.out_rows.clear();
    batch.sampling.clear();
    batch.positions.clear();
    batch.histories.clear();
    batch.logprobs.clear();
    batch.allowed.clear();
    batch.multi_row = false;
    batch.max_context = 0;
    batch.max_blocks = 0;
  }

  /// Validates and collects prefill chunks; `every_row`: all rows are outputs (logits).
  result<void> collect_prefill(const block_pool& p, std::span<const prefill_chunk> chunks,
                               bool every_row) {
    if (auto r = check_pool(p); !r) return r;
    for (size_t i = 0; i < chunks.size(); ++i) {
      const auto& ch = chunks[i];
      if (ch.begin >= ch.end || ch.end > ch.tokens.size())
        return bad_request(
            fmt::format("cuda engine: prefill chunk {}: range [{}, {}) is empty or "
                        "beyond the prompt ({} tokens)",
                        i, ch.begin, ch.end, ch.tokens.size()));
      if (auto r = check_seq(p, ch.tokens, ch.begin, ch.end, ch.blocks, "prefill chunk", i); !r)
        return r;
    }
    clear_batch();
    for (size_t i = 0; i < chunks.size(); ++i) {
      const auto& ch = chunks[i];
      batch.tables.push_back(ch.blocks);
      for (uint32_t pos = ch.begin; pos < ch.end; ++pos) {
        if (every_row || pos + 1 == ch.end) {
          batch.out_rows.push_back(static_cast<uint32_t>(batch.rows.size()));
          batch.sampling.push_back(ch.sampling);
          batch.positions.push_back(ch.end);
          batch.histories.push_back(
              make_history(ch.tokens.subspan(0, ch.end), ch.tokens.size(), ch.sampling));
          batch.logprobs.push_back(pos + 1 == ch.end ? ch.logprobs : nullptr);
          batch.allowed.push_back(ch.allowed);
        }
        batch.rows.push_back({ch.tokens[pos], static_cast<int32_t>(pos), static_cast<int32_t>(i)});
      }
      batch.multi_row = batch.multi_row || ch.end - ch.begin > 1;
      batch.max_context = std::max(batch.max_context, ch.end);
      batch.max_blocks = std::max(batch.max_blocks, layout.blocks_for(ch.end));
    }
    return {};
  }

  /// Validates and collects the newest row of each sequence.
  result<void> collect_decode(const block_pool& p, std::span<const decode_seq> seqs) {
    if (auto r = check_pool(p); !r) return r;
    for (size_t i = 0; i < seqs.size(); ++i) {
      const auto& s = seqs[i];
      if (s.tokens.empty())
        return bad_request(fmt::format("cuda engine: decode sequence {} has no tokens", i));
      if (s.tokens.size() > max_int32)
        return bad_request(fmt::format("cuda engine: decode sequence {}: {} tokens, at most {}", i,
                                       s.tokens.size(), max_int32));
      const auto pos = static_cast<uint32_t>(s.tokens.size() - 1);
      if (auto r = check_seq(p, s.tokens, pos, pos + 1, s.blocks, "decode sequence", i); !r)
        return r;
    }
    clear_batch();
    for (size_t i = 0; i < seqs.size(); ++i) {
      const auto& s = seqs[i];
      const auto pos = static_cast<uint32_t>(s.tokens.size() - 1);
      batch.tables.push_back(s.blocks);
      batch.out_rows.push_back(static_cast<uint32_t>(i));
      batch.sampling.push_back(s.sampling);
      batch.positions.push_back(s.tokens.size());
      batch.histories.push_back(make_history(s.tokens, s.prompt_len, s.sampling));
      batch.logprobs.push_back(s.logprobs);
      batch.allowed.push_back(s.allowed);
      batch.rows.push_back({s.tokens[pos], static_cast<int32_t>(pos), static_cast<int32_t>(i)});
      batch.max_context = std::max(batch.max_context, pos + 1);
      batch.max_blocks = std::max(batch.max_blocks, layout.blocks_for(pos + 1));
    }
    return {};
  }

  // ---- the forward pass -------------------------------------------------------------

  /// Grows `a` for `n` rows, `outputs` logits rows and `ws_bytes` of attention workspace.
  /// Never called during graph capture.
  void reserve(activations& a, uint32_t n, uint32_t outputs, size_t ws_bytes) const {
    const size_t eb = gpu::elem_bytes(t);
    a.x.reserve(size_t{n} * c.dim * 4);
    a.xn.reserve(size_t{n} * c.dim * eb);
    a.qkv.reserve(size_t{n} * qkv_cols * 4);
    a.att.reserve(size_t{n} * qdim * eb);
    a.gu.reserve(size_t{n} * 2 * c.ffn * 4);
    a.act.reserve(size_t{n} * c.ffn * eb);
    a.xo.reserve(size_t{outputs} * c.dim * 4);
    a.logits.reserve(size_t{outputs} * c.vocab * 4);
    a.ids.reserve(size_t{outputs} * 4);
    a.ws.reserve(ws_bytes);
  }

  gpu::paged_kv paged(const block_pool& p, const int32_t* tables, uint32_t stride) const {
    gpu::paged_kv kv;
    kv.base = const_cast<std::byte*>(p.storage().bytes().data());
    kv.block_bytes = layout.block_bytes();
    kv.layers = layout.layers;
    kv.kv_heads = layout.kv_heads;
    kv.head_dim = layout.head_dim;
    kv.block_tokens = layout.block_tokens;
    kv.kv_f16 = layout.dtype_bytes == 2;
    kv.tables = tables;
    kv.table_stride = stride;
    return kv;
  }

  /// Enqueues the whole forward pass of `s` on the stream: logits of the output rows in
  /// a.logits and their argmax in a.ids. Only kernel launches and cuBLAS calls (plus the
  /// device-to-device gather, never in a graph), so decode steps can be captured.
  void forward(activations& a, const step& s) {
    cudaStream_t st = stream.get();
    const uint32_t n = s.n, dim = c.dim, ffn = c.ffn;
    const auto pairs =
        c.rope == rope_style::adjacent ? gpu::rope_pairs::adjacent : gpu::rope_pairs::halves;
    float* x = a.x.as<float>();
    float* qkv = a.qkv.as<float>();
    float* gu = a.gu.as<float>();
    gpu::embed(tok_embd.get(), t, s.tokens, n, dim, x, st);
    for (uint32_t l = 0; l < c.layers; ++l) {
      const layer& lw = layers[l];
      gpu::rms_norm(x, lw.attn_norm.as<float>(), a.xn.get(), t, n, dim, c.rms_eps, st);
      blas.linear(lw.wqkv.get(), a.xn.get(), t, n, qkv_cols, dim, qkv, qkv_cols);
      if (c.qkv_bias) gpu::add_bias(qkv, lw.bqkv.as<float>(), n, qkv_cols, qkv_cols, st);
      gpu::rope_store_kv(qkv, s.rows, c.heads, inv_freq.as<float>(), pairs, s.kv, l, st);
      if (s.prefill_attention)
        gpu::attention_prefill(qkv, qkv_cols, s.rows, c.heads, s.kv, l, a.att.get(), t, st);
      else
        gpu::attention_decode(qkv, qkv_cols, s.rows, c.heads, s.kv, l, s.decode_context, a.ws.get(),
                              a.att.get(), t, st);
      // Output projection with the residual fused: x = 1 * x + att . wo^T.
      blas.linear(lw.wo.get(), a.att.get(), t, n, dim, qdim, x, dim, 1.0f);
      gpu::rms_norm(x, lw.ffn_norm.as<float>(), a.xn.get(), t, n, dim, c.rms_eps, st);
      blas.linear(lw.w_gate_up.get(), a.xn.get(), t, n, 2 * ffn, dim, gu, 2 * ffn);
      gpu::swiglu(gu, a.act.get(), t, n, ffn, st);
      blas.linear(lw.w_down.get(), a.act.get(), t, n, dim, ffn, x, dim, 1.0f);
    }

    // Final norm and logits for the output rows only.
    const float* final_x = x;
    if (!s.gather.empty()) {
      float* xo = a.xo.as<float>();
      for (size_t o = 0; o < s.gather.size();) {
        size_t e = o + 1;  // a run of consecutive rows: one copy
        while (e < s.gather.size() && s.gather[e] == s.gather[e - 1] + 1)
          ++e;
        TM_CUDA(cudaMemcpyAsync(xo + o * dim, x + size_t{s.gather[o]} * dim,
                                (e - o) * dim * sizeof(float), cudaMemcpyDeviceToDevice, st));
        o = e;
      }
      final_x = xo;
    }
    gpu::rms_norm(final_x, out_norm.as<float>(), a.xn.get(), t, s.outputs, dim, c.rms_eps, st);
    blas.linear(output_w, a.xn.get(), t, s.outputs, c.vocab, dim, a.logits.as<float>(), c.vocab);
    gpu::argmax_rows(a.logits.as<float>(), s.outputs, c.vocab, a.ids.as<int32_t>(), st);
  }

  /// Runs the collected batch unpadded over the growing buffers (prefill, and decode
  /// batches the graphs do not take).
  activations& run_direct(const block_pool& p) {
    const auto n = static_cast<uint32_t>(batch.rows.size());
    const auto seqs = static_cast<uint32_t>(batch.tables.size());
    const uint32_t stride = std::max<uint32_t>(batch.max_blocks, 1);
    const size_t ints = 3 * size_t{n} + size_t{seqs} * stride;

    step s;
    s.n = n;
    s.outputs = static_cast<uint32_t>(batch.out_rows.size());
    s.prefill_attention = batch.multi_row || n > max_decode_rows;
    s.decode_context = batch.max_context;
    bool every_row = s.outputs == n;  // out_rows ascend, so then they are 0..n-1
    if (!every_row) s.gather = batch.out_rows;
    const size_t ws = s.prefill_attention
                          ? 0
                          : gpu::attention_decode_workspace(n, c.heads, c.head_dim,
                                                            batch.max_context, layout.block_tokens);
    reserve(dyn, n, s.outputs, ws);
    inputs.reserve(ints * 4);
    grow(staging, ints * 4);

    int32_t* h = staging.as<int32_t>();
    for (uint32_t r = 0; r < n; ++r) {
      h[r] = batch.rows[r].token;
      h[n + r] = batch.rows[r].pos;
      h[2 * n + r] = batch.rows[r].seq;
    }
    int32_t* tables = h + 3 * size_t{n};
    std::fill(tables, tables + size_t{seqs} * stride, 0);
    for (uint32_t q = 0; q < seqs; ++q) {
      const auto& b = batch.tables[q];
      const size_t k = std::min<size_t>(b.size(), stride);
      for (size_t j = 0; j < k; ++j)
        tables[size_t{q} * stride + j] = static_cast<int32_t>(b[j]);
    }
    TM_CUDA(cudaMemcpyAsync(inputs.get(), h, ints * 4, cudaMemcpyHostToDevice, stream.get()));

    const int32_t* d = inputs.as<int32_t>();
    s.tokens = d;
    s.rows.pos = d + n;
    s.rows.seq = d + 2 * size_t{n};
    s.rows.rows = n;
    s.kv = paged(p, d + 3 * size_t{n}, stride);
    forward(dyn, s);
    return dyn;
  }

  /// The spare block of the pool's memory, as a block index, when the pool has one (made by
  /// allocate_kv_memory): where the graphs' padding rows write.
  std::optional<int32_t> spare_block(const block_pool& p) const {
    const auto* mem = dynamic_cast<const gpu::cuda_pool_memory*>(&p.storage());
    if (mem == nullptr) return std::nullopt;
    auto off = mem->spare_offset(layout.block_bytes());
    if (!off || *off / layout.block_bytes() > max_int32) return std::nullopt;
    return static_cast<int32_t>(*off / layout.block_bytes());
  }

  /// Runs the collected decode batch: padded to its bucket over the fixed buffers (from a
  /// graph when cfg.graphs, else the same kernels directly) when the bucketed path can take
  /// it, else unpadded: batches beyond max_batch, contexts beyond the model's, and pools
  /// without a spare block (memory not made by allocate_kv_memory) run unpadded.
  activations& run_decode(const block_pool& p) {
    const auto n = static_cast<uint32_t>(batch.rows.size());
    const std::optional<int32_t> spare = spare_block(p);
    if (n > graphs.rows || batch.max_context > c.max_context || !spare) return run_direct(p);

    const uint32_t rows = graphs.rows, stride = graphs.stride;
    if (!graphs.allocated) {
      // Known cost: the attention workspace is max_batch x the model's whole context (about
      // 2 GiB at 256 x 128K tokens, 32 heads of 128); cap the graphed context if it matters.
      reserve(graphs.act, rows, rows,
              gpu::attention_decode_workspace(rows, c.heads, c.head_dim, c.max_context,
                                              layout.block_tokens));
      const size_t ints = size_t{rows} * (3 + size_t{stride});
      graphs.inputs = device_buffer(ints * 4);
      graphs.staging = pinned_buffer(ints * 4);
      graphs.allocated = true;
    }
    const size_t bi = static_cast<size_t>(
        std::lower_bound(graphs.buckets.begin(), graphs.buckets.end(), n) - graphs.buckets.begin());
    const uint32_t bucket = graphs.buckets[bi];

    // Inputs: real rows, then padding rows (token 0, position 0, each its own table row
    // whose first block is the spare one).
    int32_t* h = graphs.staging.as<int32_t>();
    int32_t* tables = h + 3 * size_t{rows};
    for (uint32_t r = 0; r < bucket; ++r) {
      int32_t* table = tables + size_t{r} * stride;
      if (r < n) {
        h[r] = batch.rows[r].token;
        h[rows + r] = batch.rows[r].pos;
        const auto& b = batch.tables[static_cast<size_t>(batch.rows[r].seq)];
        const size_t k = layout.blocks_for(static_cast<uint32_t>(batch.rows[r].pos) + 1);
        for (size_t j = 0; j < k; ++j)
          table[j] = static_cast<int32_t>(b[j]);
      } else {
        h[r] = 0;
        h[rows + r] = 0;
        table[0] = *spare;
      }
      h[2 * size_t{rows} + r] = static_cast<int32_t>(r);
    }
    // Known cost: this copies whole table rows (stride = blocks of the model's context).
    TM_CUDA(cudaMemcpyAsync(graphs.inputs.get(), h,
                            (3 * size_t{rows} + size_t{bucket} * stride) * 4,
                            cudaMemcpyHostToDevice, stream.get()));

    const void* base = p.storage().bytes().data();
    if (base != graphs.pool_base) {  // captured with another pool: capture again
      for (auto& g : graphs.graphs)
        g = gpu::graph_exec();
      graphs.pool_base = base;
    }
    const int32_t* d = graphs.inputs.as<int32_t>();
    step s;
    s.n = bucket;
    s.outputs = bucket;
    s.tokens = d;
    s.rows.pos = d + rows;
    s.rows.seq = d + 2 * size_t{rows};
    s.rows.rows = bucket;
    s.kv = paged(p, d + 3 * size_t{rows}, stride);
    s.prefill_attention = false;
    s.decode_context = c.max_context;  // the workspace is sized for it

    if (!cfg.graphs) {
      forward(graphs.act, s);
      return graphs.act;
    }
    gpu::graph_exec& g = graphs.graphs[bi];
    if (!g) {
      // A plain run first: it loads modules and lets cuBLAS settle outside the capture. It
      // computes exactly what the graph will (the same KV values into the same slots).
      forward(graphs.act, s);
      gpu::graph_exec::begin_capture(stream.get());
      try {
        forward(graphs.act, s);
      } catch (...) {
        try {
          (void)gpu::graph_exec::end_capture(stream.get());  // leave the stream usable
        } catch (...) {
        }
        throw;
      }
      g = gpu::graph_exec::end_capture(stream.get());
    }
    g.launch(stream.get());
    return graphs.act;
  }

  // ---- results ----------------------------------------------------------------------

  /// Whether output row `o` is sampled on the host.
  bool host_sampled(size_t o) const {
    // Constrained rows (a grammar mask) too: the mask applies before the argmax.
    return batch.sampling[o].temperature > 0 || needs_host_row(batch.sampling[o]) ||
           !batch.allowed[o].empty();
  }

  /// The next token of each output row. Greedy rows take the device argmax; rows with
  /// temperature > 0, penalties, a bias or logprobs copy their logits row to the host and
  /// go through sample_token with the CPU engine's (params, position, history), so seeded
  /// draws and logprobs match the CPU engine's.
  std::vector<token_id> sample(const activations& a) {
    const size_t outs = batch.out_rows.size();
    size_t sampled = 0;
    for (size_t o = 0; o < outs; ++o)
      sampled += host_sampled(o) ? 1 : 0;
    const size_t ids_bytes = (outs * 4 + 15) / 16 * 16;
    grow(out_host, ids_bytes + sampled * c.vocab * sizeof(float));
    cudaStream_t st = stream.get();
    auto* ids = out_host.as<int32_t>();
    auto* rows = reinterpret_cast<float*>(out_host.as<std::byte>() + ids_bytes);
    TM_CUDA(cudaMemcpyAsync(ids, a.ids.get(), outs * 4, cudaMemcpyDeviceToHost, st));
    for (size_t o = 0, j = 0; o < outs; ++o)
      if (host_sampled(o))
        TM_CUDA(cudaMemcpyAsync(rows + j++ * c.vocab, a.logits.as<float>() + o * c.vocab,
                                c.vocab * sizeof(float), cudaMemcpyDeviceToHost, st));
    stream.synchronize();
    std::vector<token_id> out;
    out.reserve(outs);
    for (size_t o = 0, j = 0; o < outs; ++o) {
      if (host_sampled(o))
        out.push_back(sample_token({rows + j++ * c.vocab, c.vocab}, batch.sampling[o],
                                   batch.positions[o], batch.histories[o], batch.logprobs[o],
                                   batch.allowed[o]));
      else
        out.push_back(ids[o]);
    }
    return out;
  }

  /// The first `outs` logits rows of `a`.
  std::vector<float> logits(const activations& a, size_t outs) {
    std::vector<float> out(outs * c.vocab);
    TM_CUDA(cudaMemcpyAsync(out.data(), a.logits.get(), out.size() * sizeof(float),
                            cudaMemcpyDeviceToHost, stream.get()));
    stream.synchronize();
    return out;
  }
};

cuda_engine::cuda_engine(std::shared_ptr<const loaded_model> model, cuda_engine_config cfg)
    : model_(std::move(model)), cfg_(std::move(cfg)) {
  // Everything the host can check, before any CUDA call.
  if (!model_) throw std::invalid_argument("cuda engine: no model");
  const llama_config& c = model_->config;
  if (auto r = c.validate(); !r) throw std::invalid_argument("cuda engine: " + r.error().message);
  if (c.heads == 0 || c.kv_heads == 0 || c.heads % c.kv_heads != 0 || c.head_dim % 2 != 0 ||
      c.head_dim > gpu::attention_max_head_dim || c.heads > 65535)
    throw std::invalid_argument(fmt::format(
        "cuda engine: heads {} / kv_heads {} / head_dim {} unsupported (head_dim even and at "
        "most {}, heads a multiple of kv_heads and at most 65535)",
        c.heads, c.kv_heads, c.head_dim, gpu::attention_max_head_dim));
  elem type = elem::bf16;
  if (!parse_dtype(cfg_.dtype, type))
    throw std::invalid_argument(fmt::format(
        "cuda engine: dtype must be \"bf16\", \"f16\" or \"f32\", got \"{}\"", cfg_.dtype));
  if (cfg_.kv_dtype_bytes != 2 && cfg_.kv_dtype_bytes != 4)
    throw std::invalid_argument(fmt::format(
        "cuda engine: kv_dtype_bytes must be 2 (f16) or 4 (f32), got {}", cfg_.kv_dtype_bytes));
  if (cfg_.block_tokens == 0) throw std::invalid_argument("cuda engine: block_tokens must be > 0");
  if (cfg_.max_batch == 0 || cfg_.max_batch > max_decode_rows)
    throw std::invalid_argument(fmt::format("cuda engine: max_batch must be in [1, {}], got {}",
                                            max_decode_rows, cfg_.max_batch));
  if (cfg_.device < 0)
    throw std::invalid_argument(fmt::format("cuda engine: device {} is negative", cfg_.device));
  if (auto r = check_weights(*model_); !r)
    throw std::invalid_argument("cuda engine: " + r.error().message);
  const uint64_t qdim = uint64_t{c.heads} * c.head_dim, kvdim = uint64_t{c.kv_heads} * c.head_dim;
  if (qdim + 2 * kvdim > max_int32 || 2 * uint64_t{c.ffn} > max_int32)
    throw std::invalid_argument("cuda engine: projection widths beyond 2^31");

  std::string why;
  const int devices = gpu::device_count(why);
  if (devices == 0) throw std::runtime_error("cuda engine: no usable CUDA device: " + why);
  if (cfg_.device >= devices)
    throw std::invalid_argument(fmt::format("cuda engine: device {} does not exist ({} device{})",
                                            cfg_.device, devices, devices == 1 ? "" : "s"));

  info_.name = c.name;
  info_.vocab_size = c.vocab;
  info_.max_context = c.max_context;
  info_.bos = c.bos;
  info_.eos = c.eos;
  info_.layout = cuda_kv_layout(c, cfg_);
  impl_ = std::make_unique<impl>(*model_, cfg_, type, info_.layout);
}

cuda_engine::~cuda_engine() = default;

std::unique_ptr<pool_memory> cuda_engine::allocate_kv_memory(size_t bytes) const {
  return std::make_unique<gpu::cuda_pool_memory>(cfg_.device, bytes, info_.layout.block_bytes());
}

// Each entry point validates first (errc::invalid_request, nothing on the device touched),
// then computes; a cuda_error (or std::bad_alloc) from the computation becomes
// errc::internal here, with the file:line cuda_error carries.

result<std::vector<token_id>> cuda_engine::prefill(block_pool& pool,
                                                   std::span<const prefill_chunk> batch) {
  return catch_into_result(errc::internal, [&]() -> result<std::vector<token_id>> {
    if (batch.empty()) return std::vector<token_id>{};
    impl_->activate();
    if (auto r = impl_->collect_prefill(pool, batch, false); !r) return r.error();
    return impl_->sample(impl_->run_direct(pool));
  });
}

result<std::vector<token_id>> cuda_engine::decode(block_pool& pool,
                                                  std::span<const decode_seq> batch) {
  return catch_into_result(errc::internal, [&]() -> result<std::vector<token_id>> {
    if (batch.empty()) return std::vector<token_id>{};
    impl_->activate();
    if (auto r = impl_->collect_decode(pool, batch); !r) return r.error();
    return impl_->sample(impl_->run_decode(pool));
  });
}

result<std::vector<float>> cuda_engine::prefill_logits(block_pool& pool,
                                                       const prefill_chunk& chunk) {
  return catch_into_result(errc::internal, [&]() -> result<std::vector<float>> {
    impl_->activate();
    if (auto r = impl_->collect_prefill(pool, {&chunk, 1}, true); !r) return r.error();
    const auto& a = impl_->run_direct(pool);
    return impl_->logits(a, impl_->batch.out_rows.size());
  });
}

result<std::vector<float>> cuda_engine::decode_logits(block_pool& pool,
                                                      std::span<const decode_seq> batch) {
  return catch_into_result(errc::internal, [&]() -> result<std::vector<float>> {
    if (batch.empty()) return std::vector<float>{};
    impl_->activate();
    if (auto r = impl_->collect_decode(pool, batch); !r) return r.error();
    const auto& a = impl_->run_decode(pool);
    return impl_->logits(a, batch.size());
  });
}

// ---- the backend's entry points (gpu/cuda_backend.hpp) --------------------------------------

bool cuda_backend_built() {
  return true;
}

int cuda_device_count(std::string& why) {
  return gpu::device_count(why);
}

std::unique_ptr<engine> make_cuda_engine(std::shared_ptr<const loaded_model> model,
                                         const cuda_engine_config& cfg) {
  return std::make_unique<cuda_engine>(std::move(model), cfg);
}

}  // namespace tokenmill
