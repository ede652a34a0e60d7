// Weights in huge-page memory: the --weights-hugepages option, the copy's bytes against the
// file, and the cpu engine's logits with the copy against the mapping (bit for bit).
#include <catch2/catch.hpp>

#include <unistd.h>

#include <cctype>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include <fmt/format.h>

#include "engine/block_pool.hpp"
#include "engine/cpu_engine.hpp"
#include "engine/make_model.hpp"
#include "engine/mapped_file.hpp"
#include "engine/model.hpp"
#include "engine/weights_memory.hpp"
#include "test_result.hpp"

namespace fs = std::filesystem;
using namespace tokenmill;

namespace {

/// A fresh directory under the system temp dir, removed with everything in it.
struct temp_dir {
  fs::path path;
  temp_dir() {
    static int counter = 0;
    path = fs::temp_directory_path() /
           fmt::format("tokenmill-weights-memory-{}-{}", ::getpid(), counter++);
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~temp_dir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

std::string write_bytes(const std::string& path, size_t n, uint32_t seed) {
  std::string bytes(n, '\0');
  std::mt19937 gen(seed);
  for (auto& c : bytes)
    c = static_cast<char>(gen() & 0xff);
  std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(n));
  return bytes;
}

/// Logits of every position of `ids` from a fresh engine with an f32 KV cache.
std::vector<float> logits_of(std::shared_ptr<const loaded_model> m,
                             const std::vector<token_id>& ids) {
  cpu_engine_config cfg;
  cfg.threads = 1;
  cfg.kv_dtype_bytes = 4;
  cpu_engine eng(m, cfg);
  kv_layout layout = cpu_kv_layout(m->config, cfg);
  block_pool pool(layout, layout.blocks_for(static_cast<uint32_t>(ids.size())));
  auto blocks = *pool.allocate(layout.blocks_for(static_cast<uint32_t>(ids.size())));
  prefill_chunk chunk;
  chunk.tokens = ids;
  chunk.begin = 0;
  chunk.end = static_cast<uint32_t>(ids.size());
  chunk.blocks = blocks;
  return test::value_or_fail(eng.prefill_logits(pool, chunk));
}

/// Bytes of `path`'s mappings in this process that are mapped in (Rss of its /proc/self/smaps
/// entries), -1 when the file is not mapped. Not mincore(): for a file mapping that reports
/// the page cache, which holds the file after any read, whether or not this process maps it.
int64_t mapped_in_bytes(const std::string& path) {
  std::ifstream in("/proc/self/smaps");
  std::string line;
  bool ours = false;
  int64_t total = -1;
  while (std::getline(in, line)) {
    if (!line.empty() && std::isxdigit(static_cast<unsigned char>(line[0])) &&
        line.find('-') < line.find(' ')) {  // "start-end perms offset dev inode path"
      ours = line.size() >= path.size() &&
             line.compare(line.size() - path.size(), path.size(), path) == 0;
      if (ours && total < 0) total = 0;
    } else if (ours && line.rfind("Rss:", 0) == 0) {
      total += std::stoll(line.substr(4)) * 1024;
    }
  }
  return total;
}

}  // namespace

TEST_CASE("weights_hugepages: parsing and bad values", "[weights-memory]") {
  CHECK(test::value_or_fail(parse_weights_hugepages("on", "x")) == weights_hugepages::on);
  CHECK(test::value_or_fail(parse_weights_hugepages("off", "x")) == weights_hugepages::off);
  CHECK(test::value_or_fail(parse_weights_hugepages("auto", "x")) == weights_hugepages::auto_);
  for (auto mode : {weights_hugepages::on, weights_hugepages::off, weights_hugepages::auto_})
    CHECK(test::value_or_fail(parse_weights_hugepages(to_string(mode), "x")) == mode);
  for (const char* bad : {"yes", "", "ON", "auto ", "1"}) {
    INFO(bad);
    auto r = parse_weights_hugepages(bad, "--weights-hugepages");
    REQUIRE_FALSE(r);
    CHECK(r.error().code == errc::invalid_request);
    CHECK(r.error().message ==
          fmt::format("--weights-hugepages: '{}' is not one of on, off, auto", bad));
  }
}

TEST_CASE("weights_hugepages: auto follows the kernel's THP mode", "[weights-memory]") {
  const char* madvise = "always [madvise] never\n";
  const char* always = "[always] madvise never\n";
  const char* never = "always madvise [never]\n";
  for (const char* thp : {madvise, always, never, ""}) {
    INFO(thp);
    CHECK(use_weights_hugepages(weights_hugepages::on, thp));
    CHECK_FALSE(use_weights_hugepages(weights_hugepages::off, thp));
  }
  CHECK(use_weights_hugepages(weights_hugepages::auto_, madvise));
  CHECK(use_weights_hugepages(weights_hugepages::auto_, always));
  CHECK_FALSE(use_weights_hugepages(weights_hugepages::auto_, never));
  CHECK_FALSE(use_weights_hugepages(weights_hugepages::auto_, ""));  // no THP in the kernel
  CHECK_FALSE(use_weights_hugepages(weights_hugepages::auto_, "always madvise never"));
}

TEST_CASE("huge_copy: holds the file's bytes once filled", "[weights-memory]") {
  temp_dir dir;
  // Sizes around the 2 MiB rounding of the copy and the 4 KiB pages of the mapping.
  for (size_t n : {size_t{1}, size_t{4095}, size_t{2} << 20, (size_t{5} << 20) + 123}) {
    INFO(n);
    const auto path = dir / fmt::format("f{}", n);
    const std::string want = write_bytes(path, n, static_cast<uint32_t>(n));
    auto mapped = test::value_or_fail(mapped_file::open(path));
    auto copy = test::value_or_fail(huge_copy::start(path, mapped));
    copy->wait();
    REQUIRE(copy->size() == n);
    CHECK(reinterpret_cast<uintptr_t>(copy->data()) % (size_t{2} << 20) == 0);
    CHECK(std::memcmp(copy->data(), want.data(), n) == 0);
  }
  // A file that cannot be read again (removed after mapping): the copy comes from the mapping.
  const auto gone = dir / "gone";
  const std::string want = write_bytes(gone, 70000, 3);
  auto mapped = test::value_or_fail(mapped_file::open(gone));
  fs::remove(gone);
  auto copy = test::value_or_fail(huge_copy::start(gone, mapped));
  mapped.reset();  // the copy keeps the mapping until it is filled
  copy->wait();
  CHECK(std::memcmp(copy->data(), want.data(), want.size()) == 0);
  // Nothing to copy: no memory, no wait.
  auto empty = test::value_or_fail(huge_copy::start(dir / "none", nullptr));
  empty->wait();
  CHECK(empty->size() == 0);
  CHECK(empty->data() == nullptr);
}

TEST_CASE("weights in huge pages give the mapped weights' logits bit for bit", "[weights-memory]") {
  temp_dir dir;
  for (dtype type : {dtype::f16, dtype::q4_k}) {
    INFO(dtype_name(type));
    make_model_options o;
    o.preset = "small";  // tiny rows are not whole q4_k super-blocks
    o.type = type;
    o.seed = 11;
    o.output = dir / (std::string(dtype_name(type)) + ".gguf");
    REQUIRE(test::error_text(make_model(o)).empty());
    auto mapped = test::value_or_fail(load_model(o.output));
    auto copied = test::value_or_fail(load_model(o.output, true));
    // 24 tokens: the quantized formats take the 8-bit integer path (decode-sized batches).
    const uint32_t vocab = mapped->config.vocab;
    std::vector<token_id> ids;
    for (uint32_t i = 0; i < 24; ++i)
      ids.push_back(static_cast<token_id>(3 + (i * 131 + 7) % (vocab - 3)));
    ids[0] = 1;
    // The matrices' views point into the copy (2 MiB aligned), the norms' into the mapping.
    const auto& a = mapped->weights.layers[0].wq;
    const auto& b = copied->weights.layers[0].wq;
    REQUIRE(a.type == type);
    CHECK(a.data != b.data);
    REQUIRE(copied->weight_copies.size() == 1);
    CHECK(mapped->weight_copies.empty());
    const std::byte* base = copied->weight_copies[0]->data();
    CHECK(b.data >= base);
    CHECK(b.data < base + copied->weight_copies[0]->size());
    const std::byte* norm = copied->weights.layers[0].attn_norm.data;
    const bool norm_in_copy = norm >= base && norm < base + copied->weight_copies[0]->size();
    CHECK_FALSE(norm_in_copy);
    copied->wait_for_weights();
    CHECK(std::memcmp(a.data, b.data, row_bytes(a.type, a.cols) * a.rows) == 0);
    const auto want = logits_of(mapped, ids);
    const auto got = logits_of(copied, ids);
    REQUIRE(want.size() == got.size());
    CHECK(std::memcmp(want.data(), got.data(), want.size() * sizeof(float)) == 0);
  }
}

TEST_CASE(
    "model files: no page of the mapping stays mapped in after loading, nor after the "
    "huge-page copy is filled and used",
    "[weights-memory]") {
  temp_dir dir;
  for (dtype type : {dtype::f16, dtype::q4_k}) {
    INFO(dtype_name(type));
    make_model_options o;
    o.preset = "small";
    o.type = type;
    o.seed = 12;
    o.output = dir / (std::string(dtype_name(type)) + ".gguf");
    REQUIRE(test::error_text(make_model(o)).empty());
    const int64_t file_bytes = static_cast<int64_t>(fs::file_size(o.output));
    std::vector<token_id> ids = {1, 5, 9, 14, 20, 27, 33, 40};
    {
      // Mapped weights: nothing mapped in until a forward pass reads the matrices (the
      // header and norms were read, then released; the norms are copies).
      auto mapped = test::value_or_fail(load_model(o.output));
      CHECK(mapped_in_bytes(o.output) == 0);
      CHECK(logits_of(mapped, ids).size() == ids.size() * mapped->config.vocab);
      CHECK(mapped_in_bytes(o.output) > file_bytes / 2);  // the pass maps the matrices in
    }
    CHECK(mapped_in_bytes(o.output) == -1);  // unmapped with the model
    {
      // The huge-page copy: the copied ranges are never mapped in, before or after the fill,
      // nor by a forward pass, which reads the copy and the norms' copies only.
      auto copied = test::value_or_fail(load_model(o.output, true));
      CHECK(mapped_in_bytes(o.output) == 0);
      copied->wait_for_weights();
      CHECK(mapped_in_bytes(o.output) == 0);
      CHECK(logits_of(copied, ids).size() == ids.size() * copied->config.vocab);
      CHECK(mapped_in_bytes(o.output) == 0);
    }
  }
  // A copy that had to come from the mapping (the file removed after mapping) releases the
  // pages it mapped in once filled.
  const auto gone = dir / "gone";
  write_bytes(gone, size_t{3} << 20, 4);
  auto map = test::value_or_fail(mapped_file::open(gone));
  fs::remove(gone);
  auto copy = test::value_or_fail(huge_copy::start(gone, map));
  copy->wait();
  CHECK(mapped_in_bytes(gone + " (deleted)") == 0);
}
