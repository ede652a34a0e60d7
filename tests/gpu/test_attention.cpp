// Paged attention kernels (gpu/attention.cuh) against a double-precision causal attention
// over the host copy of the same paged pool: random K/V, shuffled (non-contiguous) block
// tables, ragged prefill chunks, GQA, decode contexts across partition boundaries.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <stdexcept>
#include <vector>

#include "engine/cpu/kernels.hpp"
#include "gpu/attention.cuh"
#include "gpu/cuda_util.hpp"
#include "tests/gpu/gpu_test.hpp"

namespace {

namespace gpu = tokenmill::gpu;
namespace cpu = tokenmill::cpu;
using gpu::elem;

/// Error bounds per output type: normalised MSE (sum (a-b)^2 / sum b^2) and max |a-b|.
/// f32: only FP32 summation order differs from the double reference (expected ~1e-13).
/// f16/bf16: dominated by the final rounding (half an ulp: 2^-11 and 2^-8 relative; outputs
/// are weighted means of values in [-1, 1]).
struct tolerance {
  double nmse;
  double max_abs;
};
constexpr tolerance tol_f32{1e-10, 1e-5};
constexpr tolerance tol_f16{1e-6, 2e-3};
constexpr tolerance tol_bf16{1e-4, 1e-2};

tolerance tolerance_for(elem t) {
  return t == elem::f32 ? tol_f32 : t == elem::f16 ? tol_f16 : tol_bf16;
}

const char* name(elem t) {
  return t == elem::f32 ? "f32" : t == elem::f16 ? "f16" : "bf16";
}

struct shape {
  uint32_t heads = 8;
  uint32_t kv_heads = 2;
  uint32_t head_dim = 64;
  uint32_t block_tokens = 16;
  bool kv_f16 = true;
  uint32_t layers = 2;
  uint32_t layer = 1;  ///< the layer attended (not 0, so the layer offset is exercised)
};

template <class T>
gpu::device_buffer upload(const std::vector<T>& v) {
  gpu::device_buffer b(std::max<size_t>(v.size() * sizeof(T), 16));
  if (!v.empty())
    TM_CUDA(cudaMemcpy(b.get(), v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
  return b;
}

/// A KV pool with random contents in [-1, 1] (host copy and device copy) and block tables
/// whose block ids are shuffled over the pool, plus spare blocks no table names. Blocks are
/// padded past what the layout needs, so the kernels must step by block_bytes.
class pool_fixture {
 public:
  /// `lens[s]`: positions sequence s holds.
  pool_fixture(const shape& s, const std::vector<uint32_t>& lens, uint32_t seed) : s_(s) {
    const size_t eb = s.kv_f16 ? 2 : 4;
    block_bytes_ = size_t{s.layers} * 2 * s.kv_heads * s.block_tokens * s.head_dim * eb + 64;
    std::vector<uint32_t> nblocks;
    uint32_t total = 3;  // spares
    for (uint32_t len : lens) {
      nblocks.push_back((len + s.block_tokens - 1) / s.block_tokens);
      total += nblocks.back();
      stride_ = std::max(stride_, nblocks.back() + 1);
    }
    std::mt19937 gen(seed);
    std::vector<int32_t> ids(total);
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), gen);
    tables_.assign(lens.size() * size_t{stride_}, -1);  // unused entries: never read
    size_t next = 0;
    for (size_t q = 0; q < lens.size(); ++q)
      for (uint32_t i = 0; i < nblocks[q]; ++i)
        tables_[q * stride_ + i] = ids[next++];

    pool_.resize(total * block_bytes_);
    std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
    const size_t elems = pool_.size() / eb;
    for (size_t i = 0; i < elems; ++i) {
      const float v = dist(gen);
      if (s.kv_f16) {
        const uint16_t h = cpu::f32_to_f16(v);
        std::memcpy(pool_.data() + i * 2, &h, 2);
      } else {
        std::memcpy(pool_.data() + i * 4, &v, 4);
      }
    }
    pool_dev_ = upload(pool_);
    tables_dev_ = upload(tables_);
  }

  /// Element d of the K (kv = 0) or V (kv = 1) row of position p of sequence `seq`.
  double at(int32_t seq, uint32_t kv, uint32_t head, uint32_t p, uint32_t d) const {
    const int32_t block = tables_[size_t(seq) * stride_ + p / s_.block_tokens];
    const size_t off = (((size_t{s_.layer} * 2 + kv) * s_.kv_heads + head) * s_.block_tokens +
                        p % s_.block_tokens) *
                           s_.head_dim +
                       d;
    const std::byte* b = pool_.data() + size_t(block) * block_bytes_;
    if (s_.kv_f16) {
      uint16_t h;
      std::memcpy(&h, b + off * 2, 2);
      return cpu::f16_to_f32(h);
    }
    float f;
    std::memcpy(&f, b + off * 4, 4);
    return f;
  }

  gpu::paged_kv device_kv() const {
    gpu::paged_kv kv;
    kv.base = pool_dev_.get();
    kv.block_bytes = block_bytes_;
    kv.layers = s_.layers;
    kv.kv_heads = s_.kv_heads;
    kv.head_dim = s_.head_dim;
    kv.block_tokens = s_.block_tokens;
    kv.kv_f16 = s_.kv_f16;
    kv.tables = tables_dev_.as<const int32_t>();
    kv.table_stride = stride_;
    return kv;
  }

  const shape& dims() const { return s_; }

 private:
  shape s_;
  size_t block_bytes_ = 0;
  uint32_t stride_ = 1;
  std::vector<int32_t> tables_;
  std::vector<std::byte> pool_;
  gpu::device_buffer pool_dev_, tables_dev_;
};

/// A batch: q rows laid out like the fused QKV projection (row stride q_stride floats, Q
/// first), and the rows' (seq, pos).
struct batch {
  std::vector<float> q;
  uint32_t q_stride = 0;
  std::vector<int32_t> pos, seq;
  uint32_t rows() const { return static_cast<uint32_t>(pos.size()); }
};

/// Appends `count` rows of sequence `s` at positions first..first+count-1.
void add_rows(batch& b, int32_t s, int32_t first, int32_t count) {
  for (int32_t i = 0; i < count; ++i) {
    b.seq.push_back(s);
    b.pos.push_back(first + i);
  }
}

/// Fills q with random values in [-2, 2] (peaky enough softmaxes to matter).
void fill_q(batch& b, const shape& s, uint32_t seed) {
  b.q_stride = (s.heads + 2 * s.kv_heads) * s.head_dim;
  b.q.assign(size_t{b.rows()} * b.q_stride, 0.0f);
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(-2.0f, 2.0f);
  for (float& v : b.q)
    v = dist(gen);
}

/// Plain causal attention in double: out[r][h][d].
std::vector<double> reference(const pool_fixture& f, const batch& b) {
  const shape& s = f.dims();
  const uint32_t hd = s.head_dim, group = s.heads / s.kv_heads;
  const double scale = 1.0 / std::sqrt(double(hd));
  std::vector<double> out(size_t{b.rows()} * s.heads * hd, 0.0);
  std::vector<double> sc;
  for (uint32_t r = 0; r < b.rows(); ++r)
    for (uint32_t h = 0; h < s.heads; ++h) {
      const uint32_t kvh = h / group;
      const float* q = b.q.data() + size_t{r} * b.q_stride + h * hd;
      const uint32_t ctx = uint32_t(b.pos[r]) + 1;
      sc.assign(ctx, 0.0);
      double mx = -INFINITY;
      for (uint32_t p = 0; p < ctx; ++p) {
        double dot = 0.0;
        for (uint32_t d = 0; d < hd; ++d)
          dot += double(q[d]) * f.at(b.seq[r], 0, kvh, p, d);
        sc[p] = dot * scale;
        mx = std::max(mx, sc[p]);
      }
      double sum = 0.0;
      for (double& v : sc) {
        v = std::exp(v - mx);
        sum += v;
      }
      double* o = out.data() + (size_t{r} * s.heads + h) * hd;
      for (uint32_t p = 0; p < ctx; ++p)
        for (uint32_t d = 0; d < hd; ++d)
          o[d] += sc[p] / sum * f.at(b.seq[r], 1, kvh, p, d);
    }
  return out;
}

/// The device batch: q, pos and seq uploaded, an output buffer of `out_t`.
struct device_batch {
  device_batch(const batch& b, const shape& s, elem t)
      : q(upload(b.q)),
        pos(upload(b.pos)),
        seq(upload(b.seq)),
        out(std::max<size_t>(size_t{b.rows()} * s.heads * s.head_dim * gpu::elem_bytes(t), 16)),
        n(size_t{b.rows()} * s.heads * s.head_dim),
        out_t(t) {
    rows.pos = pos.as<const int32_t>();
    rows.seq = seq.as<const int32_t>();
    rows.rows = b.rows();
  }

  /// The output, after the device is done, as doubles.
  std::vector<double> result() const {
    TM_CUDA(cudaDeviceSynchronize());
    std::vector<double> r(n);
    if (out_t == elem::f32) {
      std::vector<float> h(n);
      TM_CUDA(cudaMemcpy(h.data(), out.get(), n * 4, cudaMemcpyDeviceToHost));
      std::copy(h.begin(), h.end(), r.begin());
    } else {
      std::vector<uint16_t> h(n);
      TM_CUDA(cudaMemcpy(h.data(), out.get(), n * 2, cudaMemcpyDeviceToHost));
      for (size_t i = 0; i < n; ++i)
        r[i] = out_t == elem::f16 ? cpu::f16_to_f32(h[i]) : cpu::bf16_to_f32(h[i]);
    }
    return r;
  }

  gpu::device_buffer q, pos, seq, out;
  gpu::batch_rows rows;
  size_t n;
  elem out_t;
};

std::vector<double> run_prefill(const pool_fixture& f, const batch& b, elem out_t) {
  const shape& s = f.dims();
  device_batch d(b, s, out_t);
  TM_CUDA(cudaDeviceSynchronize());  // uploads done before the kernel runs on any stream
  gpu::attention_prefill(d.q.as<const float>(), b.q_stride, d.rows, s.heads, f.device_kv(), s.layer,
                         d.out.get(), out_t, nullptr);
  return d.result();
}

std::vector<double> run_decode(const pool_fixture& f, const batch& b, uint32_t max_context,
                               elem out_t) {
  const shape& s = f.dims();
  device_batch d(b, s, out_t);
  gpu::device_buffer ws(std::max<size_t>(
      gpu::attention_decode_workspace(b.rows(), s.heads, s.head_dim, max_context, s.block_tokens),
      16));
  TM_CUDA(cudaDeviceSynchronize());
  gpu::attention_decode(d.q.as<const float>(), b.q_stride, d.rows, s.heads, f.device_kv(), s.layer,
                        max_context, ws.get(), d.out.get(), out_t, nullptr);
  return d.result();
}

void check_close(const std::vector<double>& got, const std::vector<double>& want, elem out_t) {
  REQUIRE(got.size() == want.size());
  double num = 0.0, den = 0.0, max_abs = 0.0;
  bool finite = true;
  for (size_t i = 0; i < got.size(); ++i) {
    finite = finite && std::isfinite(got[i]);
    const double e = got[i] - want[i];
    num += e * e;
    den += want[i] * want[i];
    max_abs = std::max(max_abs, std::abs(e));
  }
  const double nmse = den > 0.0 ? num / den : num;
  const tolerance tol = tolerance_for(out_t);
  INFO("out " << name(out_t) << ": nmse " << nmse << " (tol " << tol.nmse << "), max abs "
              << max_abs << " (tol " << tol.max_abs << ")");
  CHECK(finite);
  CHECK(nmse <= tol.nmse);
  CHECK(max_abs <= tol.max_abs);
}

}  // namespace

TEST_CASE("attention_prefill: ragged chunks of two sequences, GQA", "[gpu]") {
  TM_REQUIRE_GPU_OR_SKIP();
  shape s;
  s.head_dim = GENERATE(64u, 128u);
  s.kv_f16 = GENERATE(true, false);
  const elem out_t = GENERATE(elem::f32, elem::f16, elem::bf16);
  INFO("head_dim " << s.head_dim << ", kv " << (s.kv_f16 ? "f16" : "f32"));
  // Sequence 1: no prefix, 37 new rows; sequence 0: 45 cached positions, 20 new rows. The
  // 16-row tile of rows 32..47 holds the end of one and the start of the other.
  const pool_fixture f(s, {65, 37}, 11);
  batch b;
  add_rows(b, 1, 0, 37);
  add_rows(b, 0, 45, 20);
  fill_q(b, s, 12);
  check_close(run_prefill(f, b, out_t), reference(f, b), out_t);
}

TEST_CASE("attention_prefill: many sequences per tile, other head dims and block sizes", "[gpu]") {
  TM_REQUIRE_GPU_OR_SKIP();
  shape s;
  s.heads = 6;
  s.kv_heads = 3;
  s.head_dim = GENERATE(32u, 80u, 256u);  // 80: the generic path (head_dim < the instance)
  s.block_tokens = GENERATE(8u, 7u);
  s.kv_f16 = s.head_dim != 80;
  INFO("head_dim " << s.head_dim << ", block_tokens " << s.block_tokens);
  // (prefix, new rows) per sequence, single rows (decode-like) among the chunks.
  const std::vector<std::pair<int32_t, int32_t>> chunks = {{0, 1},  {3, 2},   {100, 1}, {0, 5},
                                                           {17, 3}, {31, 40}, {250, 1}};
  std::vector<uint32_t> lens;
  for (const auto& [prefix, n] : chunks)
    lens.push_back(uint32_t(prefix + n));
  const pool_fixture f(s, lens, 21);
  batch b;
  // Sequence ids in an order unrelated to the rows.
  for (size_t i = 0; i < chunks.size(); ++i) {
    const int32_t q = int32_t((i * 3) % chunks.size());
    add_rows(b, q, chunks[q].first, chunks[q].second);
  }
  fill_q(b, s, 22);
  for (elem out_t : {elem::f32, elem::bf16})
    check_close(run_prefill(f, b, out_t), reference(f, b), out_t);
}

TEST_CASE("attention_decode: contexts 1, 17, 300 and 5000", "[gpu]") {
  TM_REQUIRE_GPU_OR_SKIP();
  shape s;
  const uint32_t ctx = GENERATE(1u, 17u, 300u, 5000u);
  s.head_dim = GENERATE(64u, 128u);
  s.kv_f16 = GENERATE(true, false);
  INFO("context " << ctx << ", head_dim " << s.head_dim << ", kv " << (s.kv_f16 ? "f16" : "f32"));
  const pool_fixture f(s, {ctx}, 31);
  batch b;
  add_rows(b, 0, int32_t(ctx) - 1, 1);
  fill_q(b, s, 32);
  // max_context = the context: one partition (direct write) for 1 and 17, several beyond.
  check_close(run_decode(f, b, ctx, elem::f32), reference(f, b), elem::f32);
}

TEST_CASE("attention_decode: a batch of very different lengths, all output types", "[gpu]") {
  TM_REQUIRE_GPU_OR_SKIP();
  shape s;
  s.head_dim = 128;
  s.kv_f16 = GENERATE(true, false);
  const elem out_t = GENERATE(elem::f32, elem::f16, elem::bf16);
  INFO("kv " << (s.kv_f16 ? "f16" : "f32"));
  // Partition edges (256, 257), single positions, and a long context.
  const std::vector<uint32_t> lens = {5000, 1, 300, 17, 256, 257, 2048, 2};
  const pool_fixture f(s, lens, 41);
  batch b;
  for (size_t r = 0; r < lens.size(); ++r) {
    const int32_t q = int32_t((r * 3) % lens.size());
    add_rows(b, q, int32_t(lens[q]) - 1, 1);
  }
  fill_q(b, s, 42);
  // A generous max_context: rows whose context is shorter leave partitions unused.
  check_close(run_decode(f, b, 6000, out_t), reference(f, b), out_t);
}

TEST_CASE("attention_decode: one partition is exact with and without the reduce", "[gpu]") {
  TM_REQUIRE_GPU_OR_SKIP();
  shape s;
  s.head_dim = 64;
  s.kv_f16 = true;
  const std::vector<uint32_t> lens = {17, 256, 1};
  const pool_fixture f(s, lens, 51);
  batch b;
  for (int32_t q = 0; q < 3; ++q)
    add_rows(b, q, int32_t(lens[q]) - 1, 1);
  fill_q(b, s, 52);
  const auto direct = run_decode(f, b, 256, elem::f32);    // one partition: no reduce
  const auto reduced = run_decode(f, b, 4096, elem::f32);  // 16 partitions, 1 used per row
  check_close(direct, reference(f, b), elem::f32);
  CHECK(direct == reduced);  // exp(0) = 1: the reduce must not change a single bit
}

TEST_CASE("attention_decode: captured in a CUDA graph, replays with new inputs", "[gpu]") {
  TM_REQUIRE_GPU_OR_SKIP();
  shape s;
  s.head_dim = 128;
  const std::vector<uint32_t> lens = {700, 40};
  const pool_fixture f(s, lens, 61);
  batch b;
  add_rows(b, 0, 699, 1);
  add_rows(b, 1, 39, 1);
  fill_q(b, s, 62);
  device_batch d(b, s, elem::f32);
  gpu::device_buffer ws(gpu::attention_decode_workspace(2, s.heads, s.head_dim, 1024, 16));
  TM_CUDA(cudaDeviceSynchronize());
  gpu::stream st;
  gpu::graph_exec::begin_capture(st.get());
  gpu::attention_decode(d.q.as<const float>(), b.q_stride, d.rows, s.heads, f.device_kv(), s.layer,
                        1024, ws.get(), d.out.get(), elem::f32, st.get());
  gpu::graph_exec g = gpu::graph_exec::end_capture(st.get());
  REQUIRE(g);
  g.launch(st.get());
  st.synchronize();
  check_close(d.result(), reference(f, b), elem::f32);

  // New q and shorter contexts, same device pointers: the graph reads them at replay.
  fill_q(b, s, 63);
  b.pos = {500, 3};
  TM_CUDA(cudaMemcpy(d.q.get(), b.q.data(), b.q.size() * 4, cudaMemcpyHostToDevice));
  TM_CUDA(cudaMemcpy(d.pos.get(), b.pos.data(), b.pos.size() * 4, cudaMemcpyHostToDevice));
  TM_CUDA(cudaDeviceSynchronize());
  g.launch(st.get());
  st.synchronize();
  check_close(d.result(), reference(f, b), elem::f32);
}

TEST_CASE("attention: bad shapes throw, empty batches launch nothing", "[gpu]") {
  TM_REQUIRE_GPU_OR_SKIP();
  shape s;
  const pool_fixture f(s, {16}, 71);
  batch b;
  add_rows(b, 0, 3, 1);
  fill_q(b, s, 72);
  device_batch d(b, s, elem::f32);
  gpu::device_buffer ws(1 << 16);

  gpu::paged_kv kv = f.device_kv();
  kv.head_dim = 512;  // beyond the supported 256
  CHECK_THROWS_AS(gpu::attention_prefill(d.q.as<const float>(), 8 * 512, d.rows, s.heads, kv,
                                         s.layer, d.out.get(), elem::f32, nullptr),
                  std::invalid_argument);
  kv = f.device_kv();
  CHECK_THROWS_AS(gpu::attention_decode(d.q.as<const float>(), b.q_stride, d.rows, 7, kv, s.layer,
                                        64, ws.get(), d.out.get(), elem::f32, nullptr),
                  std::invalid_argument);  // 7 heads over 2 KV heads
  CHECK_THROWS_AS(gpu::attention_decode(d.q.as<const float>(), b.q_stride, d.rows, s.heads, kv,
                                        s.layers, 64, ws.get(), d.out.get(), elem::f32, nullptr),
                  std::invalid_argument);  // layer out of range

  // rows == 0: nothing launched, nothing read (null pointers would fault otherwise).
  gpu::batch_rows none;
  CHECK_NOTHROW(gpu::attention_prefill(nullptr, b.q_stride, none, s.heads, kv, s.layer, nullptr,
                                       elem::f32, nullptr));
  CHECK_NOTHROW(gpu::attention_decode(nullptr, b.q_stride, none, s.heads, kv, s.layer, 64, nullptr,
                                      nullptr, elem::f32, nullptr));
  TM_CUDA(cudaDeviceSynchronize());
}
