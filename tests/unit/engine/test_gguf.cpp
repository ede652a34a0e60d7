#include <catch2/catch.hpp>

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "engine/gguf.hpp"
#include "golden.hpp"
#include "test_files.hpp"
#include "test_result.hpp"
#include "tests/skip.hpp"

namespace fs = std::filesystem;
using namespace tokenmill;
using namespace tokenmill::test;

namespace {

/// Hand-assembled GGUF bytes, for values and corruptions the writer cannot produce.
struct raw_gguf {
  std::vector<std::byte> b;
  template <class T>
  raw_gguf& put(T v) {
    size_t at = b.size();
    b.resize(at + sizeof(T));
    std::memcpy(b.data() + at, &v, sizeof(T));
    return *this;
  }
  raw_gguf& str(std::string_view s) {
    put<uint64_t>(s.size());
    for (char c : s)
      b.push_back(static_cast<std::byte>(c));
    return *this;
  }
  raw_gguf& header(uint32_t version, uint64_t n_tensors, uint64_t n_kv) {
    for (char c : std::string("GGUF"))
      b.push_back(static_cast<std::byte>(c));
    return put(version).put(n_tensors).put(n_kv);
  }
  /// A tensor info.
  raw_gguf& tensor(std::string_view name, std::vector<uint64_t> ne, uint32_t type,
                   uint64_t offset) {
    str(name).put<uint32_t>(static_cast<uint32_t>(ne.size()));
    for (uint64_t n : ne)
      put(n);
    return put(type).put(offset);
  }
  raw_gguf& pad(size_t align = 32) {
    while (b.size() % align)
      b.push_back(std::byte{0});
    return *this;
  }
  raw_gguf& zeros(size_t n) {
    b.resize(b.size() + n);
    return *this;
  }
};

result<gguf_file> open_bytes(const temp_path& p, const std::vector<std::byte>& bytes) {
  write_all(p.path, bytes, bytes.size());
  return gguf_file::open(p.path);
}

std::vector<std::byte> bytes_of(const std::vector<float>& v) {
  std::vector<std::byte> out(v.size() * 4);
  std::memcpy(out.data(), v.data(), out.size());
  return out;
}

/// A small valid file with every writer value type and every tensor type.
gguf_writer sample_writer() {
  gguf_writer w;
  w.set_string("general.architecture", "llama");
  w.set_u32("a.u32", 123456);
  w.set_i32("a.i32", -42);
  w.set_u64("a.u64", uint64_t{1} << 40);
  w.set_f32("a.f32", 1.5f);
  w.set_bool("a.bool", true);
  w.set_strings("a.strings", {"a", "", "hello world", "\xe2\x96\x81the"});
  w.set_f32s("a.f32s", {0.5f, -1.0f, 3.25f});
  w.set_i32s("a.i32s", {1, -2, 3});
  std::vector<float> m(4 * 64);
  for (size_t i = 0; i < m.size(); ++i)
    m[i] = static_cast<float>(i) * 0.25f;
  w.add_tensor("m.f32", dtype::f32, {64, 4}, bytes_of(m));
  std::vector<std::byte> h(3 * 64 * 2);
  for (size_t i = 0; i < h.size(); ++i)
    h[i] = static_cast<std::byte>(i * 7);
  w.add_tensor("m.f16", dtype::f16, {64, 3}, h);
  w.add_tensor("m.bf16", dtype::bf16, {64, 3}, h);
  std::vector<std::byte> q(2 * 34 * 2);
  for (size_t i = 0; i < q.size(); ++i)
    q[i] = static_cast<std::byte>(i * 13);
  w.add_tensor("m.q8_0", dtype::q8_0, {64, 2}, q);
  w.add_tensor("v.f32", dtype::f32, {8}, bytes_of({1, 2, 3, 4, 5, 6, 7, 8}));
  return w;
}

}  // namespace

TEST_CASE("gguf writer and reader round trip", "[gguf]") {
  temp_path p("roundtrip.gguf");
  REQUIRE(sample_writer().write(p.path));
  auto r = gguf_file::open(p.path);
  REQUIRE(r.ok());
  const gguf_file& f = *r;
  CHECK(f.version() == 3);
  CHECK(f.alignment() == 32);
  CHECK(f.data_offset() % 32 == 0);
  REQUIRE(f.metadata().size() == 9);
  CHECK(f.metadata()[0].first == "general.architecture");
  CHECK(f.metadata()[8].first == "a.i32s");
  CHECK(*f.get_string("general.architecture") == "llama");
  CHECK(*f.get_u32("a.u32") == 123456u);
  CHECK(*f.get_i32("a.i32") == -42);
  CHECK(f.find("a.u64")->as_uint() == (uint64_t{1} << 40));
  CHECK(*f.get_f32("a.f32") == 1.5f);
  CHECK(*f.get_bool("a.bool"));
  CHECK(*f.get_strings("a.strings") ==
        std::vector<std::string>{"a", "", "hello world", "\xe2\x96\x81the"});
  CHECK(*f.get_f32s("a.f32s") == std::vector<float>{0.5f, -1.0f, 3.25f});
  CHECK(*f.get_i32s("a.i32s") == std::vector<int32_t>{1, -2, 3});
  CHECK(*f.get_u32("absent", 7u) == 7u);
  CHECK(f.find("absent") == nullptr);

  REQUIRE(f.tensors().size() == 5);
  const gguf_tensor_info* m = f.find_tensor("m.f32");
  REQUIRE(m);
  CHECK(m->type == dtype::f32);
  CHECK(m->ggml_type == 0);
  CHECK(m->ne == std::vector<uint64_t>{64, 4});
  tensor_view v = m->view();
  CHECK(v.rows == 4);
  CHECK(v.cols == 64);
  float x;
  std::memcpy(&x, v.row(2) + 4 * 5, 4);
  CHECK(x == (2 * 64 + 5) * 0.25f);
  CHECK(f.find_tensor("m.f16")->ggml_type == 1);
  CHECK(f.find_tensor("m.bf16")->ggml_type == 30);
  const gguf_tensor_info* q = f.find_tensor("m.q8_0");
  REQUIRE(q);
  CHECK(q->type == dtype::q8_0);
  CHECK(q->bytes == 2 * 34 * 2);
  CHECK(std::to_integer<int>(q->data[5]) == 65);
  for (const auto& t : f.tensors())
    CHECK(reinterpret_cast<uintptr_t>(t.data) % 32 == 0);
  CHECK(f.find_tensor("v.f32")->view().rows == 1);
  CHECK(f.find_tensor("nope") == nullptr);
}

TEST_CASE("gguf setting a key again replaces it in place", "[gguf]") {
  temp_path p("replace.gguf");
  gguf_writer w;
  w.set_u32("first", 1);
  w.set_u32("second", 2);
  w.set_string("first", "now a string");
  REQUIRE(w.write(p.path));
  auto r = gguf_file::open(p.path);
  REQUIRE(r.ok());
  REQUIRE(r->metadata().size() == 2);
  CHECK(r->metadata()[0].first == "first");
  CHECK(*r->get_string("first") == "now a string");
}

TEST_CASE("gguf writer rejects data of the wrong size", "[gguf]") {
  temp_path p("badsize.gguf");
  gguf_writer w;
  w.add_tensor("t", dtype::f32, {4, 2}, std::vector<std::byte>(31));
  std::string err = test::error_text(w.write(p.path));
  CHECK_THAT(err, Catch::Contains("'t'"));
  CHECK(w.write(p.path).error().code == errc::invalid_model);
  gguf_writer q;
  q.add_tensor("q", dtype::q8_0, {48}, std::vector<std::byte>(34));
  CHECK_THAT(test::error_text(q.write(p.path)), Catch::Contains("'q'"));
}

TEST_CASE("gguf reads every metadata value type", "[gguf]") {
  temp_path p("types.gguf");
  raw_gguf g;
  g.header(2, 0, 14);
  g.str("u8").put<uint32_t>(0).put<uint8_t>(200);
  g.str("i8").put<uint32_t>(1).put<int8_t>(-100);
  g.str("u16").put<uint32_t>(2).put<uint16_t>(60000);
  g.str("i16").put<uint32_t>(3).put<int16_t>(-30000);
  g.str("u32").put<uint32_t>(4).put<uint32_t>(4000000000u);
  g.str("i32").put<uint32_t>(5).put<int32_t>(-2000000000);
  g.str("f32").put<uint32_t>(6).put<float>(0.125f);
  g.str("bool").put<uint32_t>(7).put<uint8_t>(0);
  g.str("string").put<uint32_t>(8).str("text");
  g.str("u64").put<uint32_t>(10).put<uint64_t>(~uint64_t{0});
  g.str("i64").put<uint32_t>(11).put<int64_t>(-(int64_t{1} << 50));
  g.str("f64").put<uint32_t>(12).put<double>(1e-300);
  g.str("strings").put<uint32_t>(9).put<uint32_t>(8).put<uint64_t>(2).str("x").str("yz");
  // an array of two arrays of u8
  g.str("nested").put<uint32_t>(9).put<uint32_t>(9).put<uint64_t>(2);
  g.put<uint32_t>(0).put<uint64_t>(1).put<uint8_t>(5);
  g.put<uint32_t>(0).put<uint64_t>(2).put<uint8_t>(6).put<uint8_t>(7);
  auto r = open_bytes(p, g.b);
  REQUIRE(r.ok());
  const gguf_file& f = *r;
  CHECK(f.version() == 2);
  CHECK(f.find("u8")->as_uint() == 200u);
  CHECK(f.find("i8")->as_int() == -100);
  CHECK(f.find("u16")->as_uint() == 60000u);
  CHECK(f.find("i16")->as_int() == -30000);
  CHECK(*f.get_u32("u32") == 4000000000u);
  CHECK(*f.get_i32("i32") == -2000000000);
  CHECK(*f.get_f32("f32") == 0.125f);
  CHECK_FALSE(*f.get_bool("bool"));
  CHECK(*f.get_string("string") == "text");
  CHECK(f.find("u64")->as_uint() == ~uint64_t{0});
  CHECK_FALSE(f.find("u64")->as_int());
  CHECK(f.find("i64")->as_int() == -(int64_t{1} << 50));
  CHECK(f.find("f64")->as_float() == 1e-300);
  CHECK(*f.get_strings("strings") == std::vector<std::string>{"x", "yz"});
  const gguf_value* n = f.find("nested");
  REQUIRE(n);
  REQUIRE(n->items.size() == 2);
  CHECK(n->items[1].ints == std::vector<int64_t>{6, 7});
  CHECK(n->array_size() == 2);

  // typed getters name the key when the type is wrong or out of range
  auto e1 = f.get_u32("string");
  REQUIRE_FALSE(e1.ok());
  CHECK(e1.error().code == errc::invalid_model);
  CHECK_THAT(e1.error().message, Catch::Contains("'string'") && Catch::Contains(p.path));
  CHECK_THAT(f.get_u32("u64").error().message, Catch::Contains("'u64'"));
  CHECK_THAT(f.get_u32("i8").error().message, Catch::Contains("'i8'"));
  CHECK_THAT(f.get_i32("u32").error().message, Catch::Contains("'u32'"));
  CHECK_THAT(f.get_f32("u32").error().message, Catch::Contains("'u32'"));
  CHECK_THAT(f.get_bool("u8").error().message, Catch::Contains("'u8'"));
  CHECK_THAT(f.get_string("strings").error().message, Catch::Contains("'strings'"));
  CHECK_THAT(f.get_strings("nested").error().message, Catch::Contains("'nested'"));
  CHECK_THAT(f.get_f32s("strings").error().message, Catch::Contains("'strings'"));
  CHECK_THAT(f.get_i32s("strings").error().message, Catch::Contains("'strings'"));
  CHECK_THAT(f.get_u32("missing").error().message, Catch::Contains("'missing'"));
}

TEST_CASE("gguf honours general.alignment", "[gguf]") {
  temp_path p("align.gguf");
  raw_gguf g;
  g.header(3, 2, 1);
  g.str("general.alignment").put<uint32_t>(4).put<uint32_t>(64);
  g.tensor("a", {4}, 0, 0);
  g.tensor("b", {4}, 0, 64);
  g.pad(64).zeros(128);
  auto r = open_bytes(p, g.b);
  REQUIRE(r.ok());
  CHECK(r->alignment() == 64);
  CHECK(r->data_offset() % 64 == 0);
  CHECK(r->find_tensor("b")->data - r->find_tensor("a")->data == 64);

  raw_gguf bad;
  bad.header(3, 2, 1);
  bad.str("general.alignment").put<uint32_t>(4).put<uint32_t>(64);
  bad.tensor("a", {4}, 0, 0);
  bad.tensor("b", {4}, 0, 32);  // aligned to 32 but not 64
  bad.pad(64).zeros(128);
  auto e = open_bytes(p, bad.b);
  REQUIRE_FALSE(e.ok());
  CHECK_THAT(e.error().message, Catch::Contains("'b'") && Catch::Contains("aligned"));

  raw_gguf npow;
  npow.header(3, 0, 1).str("general.alignment").put<uint32_t>(4).put<uint32_t>(48);
  CHECK_THAT(open_bytes(p, npow.b).error().message, Catch::Contains("general.alignment"));
  raw_gguf wrong;
  wrong.header(3, 0, 1).str("general.alignment").put<uint32_t>(8).str("32");
  CHECK_THAT(open_bytes(p, wrong.b).error().message, Catch::Contains("general.alignment"));
}

TEST_CASE("gguf every truncation is an error, never a crash", "[gguf]") {
  temp_path src("trunc_src.gguf");
  temp_path p("trunc.gguf");
  REQUIRE(sample_writer().write(src.path));
  std::vector<std::byte> full = read_all(src.path);
  REQUIRE(full.size() > 100);
  write_all(p.path, full, full.size());
  REQUIRE(gguf_file::open(p.path).ok());    // the last tensor (32 bytes) ends the file
  for (size_t n = full.size(); n-- > 0;) {  // shrinking the same file is cheap
    fs::resize_file(p.path, n);
    auto r = gguf_file::open(p.path);
    INFO("truncated to " << n << " of " << full.size() << " bytes");
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == errc::invalid_model);
    CHECK_THAT(r.error().message, Catch::StartsWith(p.path + ": "));
  }
}

TEST_CASE("gguf corrupt headers are errors that say what is wrong", "[gguf]") {
  temp_path p("corrupt.gguf");
  auto message = [&](const raw_gguf& g) {
    auto r = open_bytes(p, g.b);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == errc::invalid_model);
    return r.error().message;
  };

  SECTION("bad magic") {
    raw_gguf g;
    g.b = {std::byte{'G'}, std::byte{'G'}, std::byte{'M'}, std::byte{'L'}};
    g.put<uint32_t>(3).put<uint64_t>(0).put<uint64_t>(0);
    CHECK_THAT(message(g), Catch::Contains("magic"));
  }
  SECTION("unsupported version") {
    raw_gguf g1, g4;
    g1.header(1, 0, 0);
    g4.header(4, 0, 0);
    CHECK_THAT(message(g1), Catch::Contains("version 1"));
    CHECK_THAT(message(g4), Catch::Contains("version 4"));
  }
  SECTION("absurd counts") {
    raw_gguf kv, tensors;
    kv.header(3, 0, uint64_t{1} << 60);
    tensors.header(3, ~uint64_t{0}, 0);
    CHECK_THAT(message(kv), Catch::Contains("metadata count"));
    CHECK_THAT(message(tensors), Catch::Contains("tensor count"));
  }
  SECTION("string length past the end") {
    raw_gguf g;
    g.header(3, 0, 1).put<uint64_t>(uint64_t{1} << 40).zeros(16);
    CHECK_THAT(message(g), Catch::Contains("string length"));
    raw_gguf v;
    v.header(3, 0, 1).str("general.name").put<uint32_t>(8).put<uint64_t>(1000).zeros(10);
    CHECK_THAT(message(v), Catch::Contains("'general.name'"));
  }
  SECTION("absurd array length") {
    raw_gguf g;
    g.header(3, 0, 1).str("tokenizer.ggml.tokens").put<uint32_t>(9).put<uint32_t>(8);
    g.put<uint64_t>(uint64_t{1} << 61).zeros(64);
    CHECK_THAT(message(g), Catch::Contains("'tokenizer.ggml.tokens'"));
  }
  SECTION("unknown value type") {
    raw_gguf g;
    g.header(3, 0, 1).str("weird").put<uint32_t>(13).zeros(8);
    CHECK_THAT(message(g), Catch::Contains("'weird'") && Catch::Contains("13"));
    raw_gguf e;
    e.header(3, 0, 1).str("weird_array").put<uint32_t>(9).put<uint32_t>(99).put<uint64_t>(0);
    CHECK_THAT(message(e), Catch::Contains("'weird_array'"));
  }
  SECTION("bad bool") {
    raw_gguf g;
    g.header(3, 0, 1).str("flag").put<uint32_t>(7).put<uint8_t>(2);
    CHECK_THAT(message(g), Catch::Contains("'flag'"));
  }
  SECTION("duplicate key") {
    raw_gguf g;
    g.header(3, 0, 2).str("k").put<uint32_t>(4).put<uint32_t>(1);
    g.str("k").put<uint32_t>(4).put<uint32_t>(2);
    CHECK_THAT(message(g), Catch::Contains("'k'") && Catch::Contains("twice"));
  }
  SECTION("unsupported tensor type") {
    raw_gguf g;
    g.header(3, 1, 0).tensor("blk.0.attn_q.weight", {256, 2}, 10, 0).pad().zeros(256);
    CHECK_THAT(message(g), Catch::Contains("'blk.0.attn_q.weight'") && Catch::Contains("type 10"));
  }
  SECTION("bad dimension count") {
    raw_gguf g0, g5;
    g0.header(3, 1, 0).tensor("t0", {}, 0, 0).pad().zeros(64);
    g5.header(3, 1, 0).tensor("t5", {1, 1, 1, 1, 1}, 0, 0).pad().zeros(64);
    CHECK_THAT(message(g0), Catch::Contains("'t0'"));
    CHECK_THAT(message(g5), Catch::Contains("'t5'"));
  }
  SECTION("huge dimensions") {
    raw_gguf g;
    g.header(3, 1, 0).tensor("big", {uint64_t{1} << 40, uint64_t{1} << 40}, 0, 0).pad();
    CHECK_THAT(message(g), Catch::Contains("'big'"));
  }
  SECTION("q8_0 rows not a multiple of 32") {
    raw_gguf g;
    g.header(3, 1, 0).tensor("q", {40, 1}, 8, 0).pad().zeros(64);
    CHECK_THAT(message(g), Catch::Contains("'q'"));
  }
  SECTION("quantized rows that are not whole blocks") {
    raw_gguf k, q;
    k.header(3, 1, 0).tensor("blk.0.ffn_down.weight", {300, 2}, 12, 0).pad().zeros(1024);
    CHECK_THAT(message(k), Catch::Contains("'blk.0.ffn_down.weight'") && Catch::Contains("Q4_K") &&
                               Catch::Contains("256"));
    q.header(3, 1, 0).tensor("q5", {40, 1}, 6, 0).pad().zeros(64);
    CHECK_THAT(message(q), Catch::Contains("'q5'") && Catch::Contains("Q5_0"));
  }
  SECTION("truncated super-blocks") {
    // Q6_K [512, 2]: 4 super-blocks of 210 bytes; the file holds 3 and a half.
    raw_gguf g;
    g.header(3, 1, 0).tensor("output.weight", {512, 2}, 14, 0).pad().zeros(735);
    CHECK_THAT(message(g), Catch::Contains("'output.weight'") && Catch::Contains("840 bytes"));
  }
  SECTION("tensor data past the end") {
    raw_gguf g;
    g.header(3, 2, 0).tensor("fits", {8}, 0, 0).tensor("output.weight", {16, 4}, 0, 32);
    g.pad().zeros(200);  // needs 32 + 256
    CHECK_THAT(message(g), Catch::Contains("'output.weight'") && Catch::Contains("past the end"));
    raw_gguf far;
    far.header(3, 1, 0).tensor("far", {8}, 0, ~uint64_t{0} - 31).pad().zeros(64);
    CHECK_THAT(message(far), Catch::Contains("'far'"));
  }
  SECTION("misaligned tensor offset") {
    raw_gguf g;
    g.header(3, 1, 0).tensor("odd", {8}, 0, 4).pad().zeros(64);
    CHECK_THAT(message(g), Catch::Contains("'odd'") && Catch::Contains("aligned"));
  }
  SECTION("duplicate tensor") {
    raw_gguf g;
    g.header(3, 2, 0).tensor("t", {8}, 0, 0).tensor("t", {8}, 0, 32).pad().zeros(64);
    CHECK_THAT(message(g), Catch::Contains("'t'") && Catch::Contains("twice"));
  }
  SECTION("deeply nested arrays") {
    raw_gguf g;
    g.header(3, 0, 1).str("deep").put<uint32_t>(9);
    for (int d = 0; d < 10; ++d)
      g.put<uint32_t>(9).put<uint64_t>(1);
    g.zeros(64);
    CHECK_THAT(message(g), Catch::Contains("'deep'"));
  }
}

TEST_CASE("gguf missing and unreadable files", "[gguf]") {
  auto r = gguf_file::open("/nonexistent/dir/model.gguf");
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code == errc::invalid_model);
  CHECK_THAT(r.error().message, Catch::Contains("/nonexistent/dir/model.gguf"));
  temp_path d("a_directory");
  fs::create_directories(d.path);
  CHECK_FALSE(gguf_file::open(d.path).ok());
}

TEST_CASE("gguf reads the golden tiny.gguf", "[gguf]") {
  std::string dir = tokenmill::test::golden_dir();
  if (dir.empty())
    TM_SKIP("golden data absent (tests/data/golden missing; set TOKENMILL_GOLDEN_DIR)");
  auto r = gguf_file::open(dir + "/tiny.gguf");
  REQUIRE(r.ok());
  CHECK(*r->get_string("general.architecture") == "llama");
  CHECK(*r->get_u32("llama.embedding_length") == 256u);
  CHECK(*r->get_u32("llama.block_count") == 4u);
  CHECK(r->get_strings("tokenizer.ggml.tokens")->size() == 8192);
  const gguf_tensor_info* t = r->find_tensor("token_embd.weight");
  REQUIRE(t);
  CHECK(t->ne == std::vector<uint64_t>{256, 8192});
  CHECK(t->type == dtype::f32);
}

TEST_CASE("gguf random corruption of the header never crashes", "[gguf]") {
  temp_path src("fuzz_src.gguf");
  temp_path p("fuzz.gguf");
  REQUIRE(sample_writer().write(src.path));
  const std::vector<std::byte> full = read_all(src.path);
  const size_t header = gguf_file::open(src.path)->data_offset();
  uint64_t state = 12345;
  auto next = [&] {  // xorshift64: deterministic across platforms
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
  };
  int ok = 0;
  for (int iter = 0; iter < 1000; ++iter) {
    std::vector<std::byte> bytes = full;
    for (uint64_t k = 0, n = 1 + next() % 4; k < n; ++k)
      bytes[next() % header] = static_cast<std::byte>(next());
    auto r = open_bytes(p, bytes);
    if (!r) continue;
    ++ok;
    for (const auto& t : r->tensors()) {  // whatever parses stays inside the file
      CHECK(t.data >= r->mapping()->data());
      CHECK(t.data + t.bytes <= r->mapping()->data() + r->mapping()->size());
    }
  }
  CHECK(ok > 0);  // some flips land in values and padding and still parse
}
