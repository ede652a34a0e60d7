// The CUDA engine against the CPU engine (STYLE.md §9): whole-model logits by normalised MSE
// sum((gpu - cpu)^2) / sum(cpu^2), greedy and seeded continuations token for token, ragged
// batches over non-contiguous block tables, decode graphs on and off, bucket padding, and
// input validation. [gpu] cases skip without a device; [gpu-host] cases run everywhere.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <unistd.h>

#include "engine/cpu/kernels.hpp"
#include "engine/cpu_engine.hpp"
#include "engine/make_model.hpp"
#include "gpu/cuda_backend.hpp"
#include "gpu/cuda_engine.hpp"
#include "tests/gpu/gpu_test.hpp"
#include "tests/unit/engine/golden.hpp"
#include "tests/unit/engine/test_result.hpp"

using namespace tokenmill;
namespace fs = std::filesystem;

namespace {

// ---- tolerances (normalised MSE over logits) ------------------------------------------------

/// dtype f32 (cuBLAS pedantic FP32) with an f32 KV cache against the CPU engine: the same
/// arithmetic up to summation order, about 1e-12 expected.
constexpr double nmse_f32 = 1e-8;
/// Largest |gpu - cpu| logit in f32 mode (logits of these models are O(1..10)).
constexpr float max_abs_f32 = 1e-3f;
/// dtype f32 with f16 KV on both sides: a K/V value near an f16 rounding boundary may round
/// the other way on one side (one f16 ulp, 2^-11 relative).
constexpr double nmse_f32_f16kv = 1e-6;
/// dtype f16 (weights and GEMM inputs rounded to 11 significant bits, FP32 accumulation,
/// f16 KV) against the f32 CPU engine: ~1e-7 expected over two layers and the head.
constexpr double nmse_f16 = 1e-4;
/// dtype bf16 (8 significant bits): ~1e-5 expected.
constexpr double nmse_bf16 = 1e-3;

double nmse(const std::vector<float>& got, const std::vector<float>& want) {
  REQUIRE(got.size() == want.size());
  double num = 0, den = 0;
  for (size_t k = 0; k < got.size(); ++k) {
    const double d = double{got[k]} - want[k];
    num += d * d;
    den += double{want[k]} * want[k];
  }
  return den > 0 ? num / den : num;
}

float max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  float m = 0;
  for (size_t k = 0; k < a.size(); ++k)
    m = std::max(m, std::fabs(a[k] - b[k]));
  return m;
}

token_id argmax(std::span<const float> row) {
  return static_cast<token_id>(std::max_element(row.begin(), row.end()) - row.begin());
}

/// A folder for the test models, removed at exit (loaded models keep their files mapped).
const fs::path& model_dir() {
  struct dir {
    fs::path path;
    dir() {
      path = fs::temp_directory_path() / fmt::format("tokenmill-gpu-engine-{}", ::getpid());
      fs::remove_all(path);
      fs::create_directories(path);
    }
    ~dir() {
      std::error_code ec;
      fs::remove_all(path, ec);
    }
  };
  static dir d;
  return d.path;
}

/// A make_model preset written as GGUF (weights `type`) and loaded.
std::shared_ptr<const loaded_model> preset_model(const std::string& preset, dtype type = dtype::f32,
                                                 uint64_t seed = 1) {
  make_model_options o;
  o.preset = preset;
  o.type = type;
  o.format = "gguf";
  o.seed = seed;
  o.output = (model_dir() / fmt::format("{}-{}-{}.gguf", preset, dtype_name(type), seed)).string();
  if (!fs::exists(o.output)) {
    if (auto made = make_model(o); !made)
      FAIL("make_model " << preset << ": " << made.error().message);
  }
  auto m = load_model(o.output);
  if (!m) FAIL("load_model " << o.output << ": " << m.error().message);
  return *m;
}

/// `src` with every matrix requantized to q8_0 (norms stay f32): exercises the engine's
/// dequantizing upload. Both engines then see the same dequantized values.
std::shared_ptr<const loaded_model> to_q8_0(std::shared_ptr<const loaded_model> src) {
  auto m = std::make_shared<loaded_model>(*src);
  m->storage.push_back(src);  // norms still point into its mapping
  auto requantize = [&](tensor_view& t) {
    const size_t rb = row_bytes(dtype::q8_0, t.cols);
    auto bytes = std::make_shared<std::vector<std::byte>>(t.rows * rb);
    std::vector<float> row(t.cols);
    for (uint64_t r = 0; r < t.rows; ++r) {
      cpu::dequantize_row(t.type, t.row(r), row.data(), t.cols);
      cpu::quantize_row_q8_0(row.data(), bytes->data() + r * rb, t.cols);
    }
    m->storage.push_back(bytes);
    t = tensor_view{t.name, dtype::q8_0, t.rows, t.cols, bytes->data()};
  };
  auto& w = m->weights;
  requantize(w.tok_embd);
  requantize(w.output);
  for (auto& l : w.layers)
    for (tensor_view* t : {&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down})
      requantize(*t);
  return m;
}

/// The golden tiny.gguf (llama.cpp reference model), or nullptr when the folder is absent.
std::shared_ptr<const loaded_model> golden_model() {
  const std::string dir = test::golden_dir();
  if (dir.empty()) return nullptr;
  auto m = load_model(dir + "/tiny.gguf");
  if (!m) FAIL("load_model tiny.gguf: " << m.error().message);
  return *m;
}

std::vector<token_id> random_tokens(size_t n, uint32_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<token_id> d(3, static_cast<token_id>(vocab) - 1);
  std::vector<token_id> t(n);
  for (auto& x : t)
    x = d(rng);
  t[0] = 1;  // BOS
  return t;
}

cpu_engine make_cpu(std::shared_ptr<const loaded_model> m, uint32_t kv_bytes = 4,
                    uint32_t block_tokens = 16) {
  cpu_engine_config c;
  c.threads = 2;
  c.kv_dtype_bytes = kv_bytes;
  c.block_tokens = block_tokens;
  return cpu_engine(std::move(m), c);
}

cuda_engine_config gpu_config(const std::string& type = "f32", uint32_t kv_bytes = 4,
                              bool graphs = true, uint32_t max_batch = 256) {
  cuda_engine_config c;
  c.dtype = type;
  c.kv_dtype_bytes = kv_bytes;
  c.block_tokens = 16;
  c.graphs = graphs;
  c.max_batch = max_batch;
  return c;
}

/// Prefill of `prompt` in the given chunk ends, then `steps` decode steps whose tokens the
/// CPU engine picks (its argmax), each step's logits compared by `check(gpu, cpu)`.
template <class Check>
void compare_logits(cpu_engine& ce, cuda_engine& ge, const std::vector<token_id>& prompt,
                    std::vector<uint32_t> chunk_ends, uint32_t steps, Check check) {
  auto cpool = make_pool(ce, 16);
  auto gpool = make_pool(ge, 16);
  const std::vector<block_id> blocks{9, 2, 14, 5, 0, 11};  // non-contiguous
  std::vector<token_id> tokens = prompt;
  std::vector<float> last;  // the CPU's logits of the newest position
  uint32_t begin = 0;
  for (uint32_t end : chunk_ends) {
    INFO("prefill chunk [" << begin << ", " << end << ")");
    prefill_chunk ch{tokens, begin, end, blocks, {}, {}};
    auto c = test::value_or_fail(ce.prefill_logits(*cpool, ch));
    check(test::value_or_fail(ge.prefill_logits(*gpool, ch)), c);
    last.assign(c.end() - ce.info().vocab_size, c.end());
    begin = end;
  }
  REQUIRE(begin == tokens.size());
  for (uint32_t s = 0; s < steps; ++s) {
    INFO("decode step " << s);
    tokens.push_back(argmax(last));
    decode_seq seq{tokens, blocks, {}, {}};
    auto c = test::value_or_fail(ce.decode_logits(*cpool, {&seq, 1}));
    check(test::value_or_fail(ge.decode_logits(*gpool, {&seq, 1})), c);
    last = std::move(c);
  }
}

/// Generated tokens: prefill of the whole prompt, then decode steps, `n` tokens in all.
std::vector<token_id> generate(engine& e, block_pool& pool, std::vector<token_id> tokens,
                               std::span<const block_id> blocks, uint32_t n,
                               sampling_params sp = {}) {
  std::vector<token_id> out;
  prefill_chunk ch{tokens, 0, static_cast<uint32_t>(tokens.size()), blocks, sp, {}};
  out.push_back(test::value_or_fail(e.prefill(pool, {&ch, 1})).at(0));
  while (out.size() < n) {
    tokens.push_back(out.back());
    decode_seq s{tokens, blocks, sp};
    out.push_back(test::value_or_fail(e.decode(pool, {&s, 1})).at(0));
  }
  return out;
}

/// The bytes of block `b` of a pool, whichever memory it is in.
std::vector<float> block_floats(const block_pool& pool, block_id b) {
  std::vector<float> v(pool.block_bytes() / sizeof(float));
  pool.storage().copy_out(size_t{b} * pool.block_bytes(), reinterpret_cast<std::byte*>(v.data()),
                          pool.block_bytes());
  return v;
}

}  // namespace

// ---- without a device ---------------------------------------------------------------------

TEST_CASE("cuda engine: the backend is built into this executable", "[gpu-host]") {
  CHECK(cuda_backend_built());
}

TEST_CASE("cuda engine: without a device, make_cuda_engine says why", "[gpu-host]") {
  std::string why;
  if (cuda_device_count(why) != 0) {
    WARN("a CUDA device is present: nothing to check");
    return;
  }
  CHECK_FALSE(why.empty());
  auto m = preset_model("tiny");
  try {
    (void)make_cuda_engine(m, gpu_config());
    FAIL("make_cuda_engine succeeded without a device");
  } catch (const std::invalid_argument& e) {
    FAIL("invalid_argument instead of runtime_error: " << e.what());
  } catch (const std::runtime_error& e) {
    CHECK(std::string(e.what()).size() > 0);
    CHECK(std::string(e.what()).find("cuda engine") != std::string::npos);
  }
}

TEST_CASE("cuda engine: a bad config or model is rejected before any device is needed",
          "[gpu-host]") {
  auto m = preset_model("tiny");
  auto rejects = [&](const cuda_engine_config& c, const char* what) {
    INFO(what);
    CHECK_THROWS_AS(make_cuda_engine(m, c), std::invalid_argument);
  };
  auto c = gpu_config();
  c.dtype = "f8";
  rejects(c, "dtype");
  c = gpu_config();
  c.kv_dtype_bytes = 3;
  rejects(c, "kv_dtype_bytes");
  c = gpu_config();
  c.block_tokens = 0;
  rejects(c, "block_tokens");
  c = gpu_config();
  c.max_batch = 0;
  rejects(c, "max_batch");
  c = gpu_config();
  c.device = -1;
  rejects(c, "device");
  CHECK_THROWS_AS(make_cuda_engine(nullptr, gpu_config()), std::invalid_argument);
  auto bad = std::make_shared<loaded_model>(*m);
  bad->weights.layers[1].wk.rows = 7;
  CHECK_THROWS_WITH(make_cuda_engine(bad, gpu_config()), Catch::Contains("cuda engine: tensor wk"));
  CHECK(cuda_kv_layout(m->config, gpu_config("f32", 2)).block_bytes() ==
        cpu_kv_layout(m->config, {.threads = 0, .kv_dtype_bytes = 2, .block_tokens = 16})
            .block_bytes());
}

// ---- with a device --------------------------------------------------------------------------

TEST_CASE("cuda engine: KV memory on the device, pinned staging, the CPU engine's layout",
          "[gpu]") {
  TM_REQUIRE_GPU_OR_SKIP();
  auto m = preset_model("tiny");
  for (uint32_t kv : {2u, 4u}) {
    INFO("kv_dtype_bytes " << kv);
    cuda_engine e(m, gpu_config("f32", kv));
    const kv_layout want = cpu_kv_layout(m->config, {.threads = 0, .kv_dtype_bytes = kv});
    const kv_layout& got = e.info().layout;
    CHECK(got.layers == want.layers);
    CHECK(got.kv_heads == want.kv_heads);
    CHECK(got.head_dim == want.head_dim);
    CHECK(got.block_tokens == want.block_tokens);
    CHECK(got.dtype_bytes == want.dtype_bytes);
    CHECK(e.info().vocab_size == m->config.vocab);
    CHECK(e.info().max_context == m->config.max_context);

    auto pool = make_pool(e, 4);
    CHECK_FALSE(pool->host_memory());
    CHECK(pool->storage().kind() == memory_kind::cuda);
    CHECK(pool->storage().device() == 0);
    CHECK(pool->storage().bytes().size() == 4 * pool->block_bytes());
    std::vector<std::byte> bytes(pool->storage().bytes().size(), std::byte{1});
    pool->storage().copy_out(0, bytes.data(), bytes.size());
    CHECK(std::all_of(bytes.begin(), bytes.end(), [](std::byte b) { return b == std::byte{0}; }));
    std::vector<std::byte> in(1000);
    for (size_t i = 0; i < in.size(); ++i)
      in[i] = std::byte(i * 7 + 3);
    pool->storage().copy_in(123, in.data(), in.size());
    std::vector<std::byte> back(in.size());
    pool->storage().copy_out(123, back.data(), back.size());
    CHECK(back == in);

    auto staging = pool->storage().make_host_staging(5000);
    CHECK(staging->kind() == memory_kind::host);
    CHECK(staging->device() == -1);
    REQUIRE(staging->bytes().size() == 5000);
    CHECK(std::all_of(staging->bytes().begin(), staging->bytes().end(),
                      [](std::byte b) { return b == std::byte{0}; }));
    staging->copy_in(10, in.data(), in.size());
    CHECK(std::memcmp(staging->bytes().data() + 10, in.data(), in.size()) == 0);
  }
}

TEST_CASE("cuda engine: f32 logits match the CPU engine on the tiny presets", "[gpu]") {
  TM_REQUIRE_GPU_OR_SKIP();
  struct variant {
    std::string name;
    std::shared_ptr<const loaded_model> model;
  };
  std::vector<variant> variants{{"tiny", preset_model("tiny")},
                                {"llama3-tiny", preset_model("llama3-tiny")},
                                {"qwen2-tiny", preset_model("qwen2-tiny")},
                                {"tiny f16 weights", preset_model("tiny", dtype::f16)},
                                {"tiny q8_0", to_q8_0(preset_model("tiny"))}};
  if (auto g = golden_model()) variants.push_back({"golden tiny.gguf", g});
  for (const auto& v : variants) {
    INFO(v.name);
    auto ce = make_cpu(v.model);
    cuda_engine ge(v.model, gpu_config("f32", 4));
    const auto prompt = random_tokens(40, v.model->config.vocab, 11);
    // One single-row chunk (decode attention inside prefill), then two multi-row chunks.
    compare_logits(ce, ge, prompt, {1, 24, 40}, 8, [](const auto& g, const auto& c) {
      CHECK(nmse(g, c) < nmse_f32);
      CHECK(max_abs_diff(g, c) < max_abs_f32);
    });
  }
}

TEST_CASE("cuda engine: f16 KV, f16 and bf16 dtypes stay close to the CPU engine", "[gpu]") {
  TM_REQUIRE_GPU_OR_SKIP();
  auto m = preset_model("tiny");
  const auto prompt = random_tokens(40, m->config.vocab, 12);
  SECTION("f32 dtype, f16 KV on both sides") {
    auto ce = make_cpu(m, 2);
    cuda_engine ge(m, gpu_config("f32", 2));
    compare_logits(ce, ge, prompt, {20, 40}, 6,
                   [](const auto& g, const auto& c) { CHECK(nmse(g, c) < nmse_f32_f16kv); });
  }
  SECTION("f16") {
    auto ce = make_cpu(m, 4);
    cuda_engine ge(m, gpu_config("f16", 2));
    compare_logits(ce, ge, prompt, {20, 40}, 6,
                   [](const auto& g, const auto& c) { CHECK(nmse(g, c) < nmse_f16); });
  }
  SECTION("bf16") {
    auto ce = make_cpu(m, 4);
    cuda_engine ge(m, gpu_config("bf16", 2));
    compare_logits(ce, ge, prompt, {20, 40}, 6, [](const auto& g, const auto& c) {
      CHECK(nmse(g, c) < nmse_bf16);
      CHECK(nmse(g, c) > 0);  // the conversion did happen
    });
  }
}

TEST_CASE("cuda engine: greedy 32-token continuation equals the CPU engine's (f32)", "[gpu]") {
  TM_REQUIRE_GPU_OR_SKIP();
  std::vector<std::pair<std::string, std::shared_ptr<const loaded_model>>> models{
      {"tiny", preset_model("tiny")}, {"qwen2-tiny", preset_model("qwen2-tiny")}};
  if (auto g = golden_model()) models.emplace_back("golden tiny.gguf", g);
  for (const auto& [name, m] : models) {
    INFO(name);
    auto ce = make_cpu(m);
    const auto prompt = random_tokens(20, m->config.vocab, 5);
    const std::vector<block_id> blocks{3, 1, 6, 0};
    auto cpool = make_pool(ce, 8);
    const auto want = generate(ce, *cpool, prompt, blocks, 32);
    for (bool graphs : {true, false}) {
      INFO("graphs " << graphs);
      cuda_engine ge(m, gpu_config("f32", 4, graphs));
      auto gpool = make_pool(ge, 8);
      CHECK(generate(ge, *gpool, prompt, blocks, 32) == want);
    }
  }
}

TEST_CASE("cuda engine: seeded sampling draws the CPU engine's tokens", "[gpu]") {
  TM_REQUIRE_GPU_OR_SKIP();
  auto m = preset_model("tiny");
  auto ce = make_cpu(m);
  cuda_engine ge(m, gpu_config("f32", 4));
  const auto prompt = random_tokens(12, m->config.vocab, 6);
  const std::vector<block_id> blocks{2, 0, 1};
  sampling_params sp;
  sp.temperature = 0.8f;
  sp.top_p = 0.95f;
  sp.seed = 1234;
  auto cpool = make_pool(ce, 4);
  auto gpool = make_pool(ge, 4);
  CHECK(generate(ge, *gpool, prompt, blocks, 24, sp) ==
        generate(ce, *cpool, prompt, blocks, 24, sp));
}

TEST_CASE("cuda engine: ragged chunked prefill and batched decode, graphs on and off", "[gpu]") {
  TM_REQUIRE_GPU_OR_SKIP();
  auto m = preset_model("tiny");
  const auto a = random_tokens(37, m->config.vocab, 21);
  const auto b = random_tokens(20, m->config.vocab, 22);
  const std::vector<block_id> a_blocks{7, 3, 11};
  const std::vector<block_id> b_blocks{12, 2};
  // A's first chunk and all of B in one batch, then the rest of A; then 8 decode steps of
  // both. Returns every produced token, in order.
  auto run = [&](engine& e) {
    auto pool = make_pool(e, 16);
    std::vector<token_id> out;
    std::vector<prefill_chunk> first{{a, 0, 16, a_blocks, {}, {}}, {b, 0, 20, b_blocks, {}, {}}};
    auto r1 = test::value_or_fail(e.prefill(*pool, first));
    REQUIRE(r1.size() == 2);
    prefill_chunk second{a, 16, 37, a_blocks, {}, {}};
    auto r2 = test::value_or_fail(e.prefill(*pool, {&second, 1}));
    REQUIRE(r2.size() == 1);
    std::vector<token_id> ta = a, tb = b;
    ta.push_back(r2[0]);
    tb.push_back(r1[1]);
    out = {r2[0], r1[1]};
    for (int step = 0; step < 8; ++step) {
      std::vector<decode_seq> batch{{ta, a_blocks, {}, {}}, {tb, b_blocks, {}, {}}};
      auto next = test::value_or_fail(e.decode(*pool, batch));
      REQUIRE(next.size() == 2);
      ta.push_back(next[0]);
      tb.push_back(next[1]);
      out.insert(out.end(), next.begin(), next.end());
    }
    return out;
  };
  auto ce = make_cpu(m);
  const auto want = run(ce);
  cuda_engine on(m, gpu_config("f32", 4, true));
  cuda_engine off(m, gpu_config("f32", 4, false));
  const auto with_graphs = run(on);
  CHECK(with_graphs == run(off));
  CHECK(with_graphs == want);
}

TEST_CASE("cuda engine: a decode batch of 3 pads to bucket 4 without touching other blocks",
          "[gpu]") {
  TM_REQUIRE_GPU_OR_SKIP();
  auto m = preset_model("llama3-tiny");
  const uint32_t vocab = m->config.vocab;
  std::vector<std::vector<token_id>> seqs{random_tokens(5, vocab, 31), random_tokens(17, vocab, 32),
                                          random_tokens(30, vocab, 33)};
  // Up to 10, 22 and 35 tokens: 1, 2 and 3 blocks.
  const std::vector<std::vector<block_id>> tables{{4}, {9, 1}, {6, 13, 10}};
  const std::vector<block_id> used{4, 9, 1, 6, 13, 10};
  auto ce = make_cpu(m);
  auto cpool = make_pool(ce, 16);
  for (size_t i = 0; i < seqs.size(); ++i) {
    prefill_chunk ch{seqs[i], 0, static_cast<uint32_t>(seqs[i].size() - 1), tables[i], {}, {}};
    REQUIRE(ce.prefill(*cpool, {&ch, 1}));
  }
  // The CPU's steps: logits and KV after each, the next tokens its argmax.
  std::vector<std::vector<float>> want;
  std::vector<std::vector<std::vector<token_id>>> contexts;
  {
    auto ctx = seqs;
    for (int step = 0; step < 5; ++step) {
      contexts.push_back(ctx);
      std::vector<decode_seq> batch;
      for (size_t i = 0; i < ctx.size(); ++i)
        batch.push_back({ctx[i], tables[i], {}, {}});
      want.push_back(test::value_or_fail(ce.decode_logits(*cpool, batch)));
      for (size_t i = 0; i < ctx.size(); ++i)
        ctx[i].push_back(argmax({want.back().data() + i * vocab, vocab}));
    }
  }
  struct variant {
    const char* name;
    bool graphs;
    uint32_t max_batch;  // 2: the batch of 3 runs unpadded, outside the buckets
  };
  for (const variant& v : {variant{"graphs", true, 256}, variant{"no graphs", false, 256},
                           variant{"beyond max_batch", true, 2}}) {
    INFO(v.name);
    cuda_engine ge(m, gpu_config("f32", 4, v.graphs, v.max_batch));
    auto gpool = make_pool(ge, 16);
    for (size_t i = 0; i < seqs.size(); ++i) {
      prefill_chunk ch{seqs[i], 0, static_cast<uint32_t>(seqs[i].size() - 1), tables[i], {}, {}};
      REQUIRE(ge.prefill(*gpool, {&ch, 1}));
    }
    for (size_t step = 0; step < contexts.size(); ++step) {
      INFO("step " << step);
      std::vector<decode_seq> batch;
      for (size_t i = 0; i < seqs.size(); ++i)
        batch.push_back({contexts[step][i], tables[i], {}, {}});
      auto got = test::value_or_fail(ge.decode_logits(*gpool, batch));
      CHECK(nmse(got, want[step]) < nmse_f32);
    }
    // Padding rows wrote into the engine's spare block only; the KV the rows wrote is the
    // CPU's, in the CPU's layout.
    for (block_id blk = 0; blk < 16; ++blk) {
      INFO("block " << blk);
      auto g = block_floats(*gpool, blk);
      if (std::find(used.begin(), used.end(), blk) == used.end())
        CHECK(std::all_of(g.begin(), g.end(), [](float x) { return x == 0.0f; }));
      else
        CHECK(max_abs_diff(g, block_floats(*cpool, blk)) < 1e-4f);
    }
  }
}

TEST_CASE("cuda engine: decode graphs are captured again for another pool", "[gpu]") {
  TM_REQUIRE_GPU_OR_SKIP();
  auto m = preset_model("tiny");
  cuda_engine ge(m, gpu_config("f32", 4, true));
  const auto prompt = random_tokens(10, m->config.vocab, 41);
  const std::vector<block_id> blocks{1, 0};
  auto first = make_pool(ge, 4);
  const auto want = generate(ge, *first, prompt, blocks, 12);
  auto second = make_pool(ge, 6);  // another base address while the first is alive
  CHECK(generate(ge, *second, prompt, blocks, 12) == want);
  first.reset();
  auto third = make_pool(ge, 4);
  CHECK(generate(ge, *third, prompt, blocks, 12) == want);
}

TEST_CASE("cuda engine: bad input is refused before anything is written", "[gpu]") {
  TM_REQUIRE_GPU_OR_SKIP();
  auto m = preset_model("tiny");
  cuda_engine ge(m, gpu_config("f32", 4));
  auto pool = make_pool(ge, 4);
  const auto tokens = random_tokens(20, m->config.vocab, 51);
  const std::vector<block_id> blocks{0, 1};

  block_pool host(ge.info().layout, 4);  // host memory: not the engine's
  prefill_chunk ok{tokens, 0, 20, blocks, {}, {}};
  // A refused call: errc::invalid_request, its message saying what is wrong.
  auto refused = [](const auto& r, const char* what) {
    test::check_refused(r, errc::invalid_request, "cuda engine: ", what);
  };
  refused(ge.prefill(host, {&ok, 1}), "not in memory of CUDA device");

  auto bad_tokens = tokens;
  bad_tokens[7] = static_cast<token_id>(m->config.vocab);
  // The first chunk is fine: nothing of it may be computed either.
  std::vector<prefill_chunk> batch{ok, {bad_tokens, 0, 20, blocks, {}, {}}};
  refused(ge.prefill(*pool, batch), "prefill chunk 1: token id");
  const std::vector<block_id> short_table{0};
  prefill_chunk too_short{tokens, 0, 20, short_table, {}, {}};
  refused(ge.prefill(*pool, {&too_short, 1}), "the block table has 1");
  const std::vector<block_id> outside{0, 4};
  decode_seq out_of_pool{tokens, outside, {}, {}};
  refused(ge.decode(*pool, {&out_of_pool, 1}), "block id 4 is outside the pool");
  decode_seq empty{{}, blocks, {}};
  refused(ge.decode(*pool, {&empty, 1}), "has no tokens");
  prefill_chunk backwards{tokens, 5, 5, blocks, {}, {}};
  refused(ge.prefill_logits(*pool, backwards), "is empty");

  for (block_id b = 0; b < 4; ++b) {
    auto v = block_floats(*pool, b);
    CHECK(std::all_of(v.begin(), v.end(), [](float x) { return x == 0.0f; }));
  }
  // And the engine still works.
  CHECK(test::value_or_fail(ge.prefill(*pool, {&ok, 1})).size() == 1);
}
