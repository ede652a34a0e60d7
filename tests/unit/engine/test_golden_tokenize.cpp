#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <cstring>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "engine/model.hpp"
#include "engine/text_tokenizer.hpp"
#include "tests/skip.hpp"
#include "tests/unit/engine/golden.hpp"

using namespace tokenmill;

namespace {

/// Test-only reader of the tokenizer metadata of a GGUF v2/v3 file, written from the
/// format description so this test does not depend on the model loader. Only the key/value
/// section is read; tensors are skipped.
class gguf_metadata {
 public:
  explicit gguf_metadata(const std::string& path) : in_(path, std::ios::binary) {
    REQUIRE(in_.good());
    char magic[4];
    in_.read(magic, 4);
    REQUIRE(std::memcmp(magic, "GGUF", 4) == 0);
    auto version = pod<uint32_t>();
    REQUIRE(version >= 2);
    pod<uint64_t>();  // tensor count
    auto n_kv = pod<uint64_t>();
    for (uint64_t i = 0; i < n_kv; ++i) {
      std::string key = str();
      auto type = pod<uint32_t>();
      read_value(key, type);
    }
  }

  std::map<std::string, std::vector<std::string>> strings;
  std::map<std::string, std::vector<double>> numbers;

 private:
  template <class T>
  T pod() {
    T v{};
    in_.read(reinterpret_cast<char*>(&v), sizeof v);
    REQUIRE(in_.good());
    return v;
  }
  std::string str() {
    auto n = pod<uint64_t>();
    std::string s(n, '\0');
    in_.read(s.data(), static_cast<std::streamsize>(n));
    REQUIRE(in_.good());
    return s;
  }
  double number(uint32_t type) {
    switch (type) {
      case 0:
        return pod<uint8_t>();
      case 1:
        return pod<int8_t>();
      case 2:
        return pod<uint16_t>();
      case 3:
        return pod<int16_t>();
      case 4:
        return pod<uint32_t>();
      case 5:
        return pod<int32_t>();
      case 6:
        return pod<float>();
      case 7:
        return pod<uint8_t>();  // bool
      case 10:
        return static_cast<double>(pod<uint64_t>());
      case 11:
        return static_cast<double>(pod<int64_t>());
      case 12:
        return pod<double>();
    }
    FAIL("unknown GGUF value type " << type);
    return 0;
  }
  void read_value(const std::string& key, uint32_t type) {
    if (type == 8) {
      strings[key].push_back(str());
    } else if (type == 9) {
      auto elem = pod<uint32_t>();
      auto n = pod<uint64_t>();
      for (uint64_t i = 0; i < n; ++i) {
        if (elem == 8)
          strings[key].push_back(str());
        else
          numbers[key].push_back(number(elem));
      }
    } else {
      numbers[key].push_back(number(type));
    }
  }
  std::ifstream in_;
};

vocab_spec spec_from_gguf(const std::string& path) {
  gguf_metadata md(path);
  REQUIRE(md.strings["tokenizer.ggml.model"] == std::vector<std::string>{"llama"});
  vocab_spec spec;
  spec.model = vocab_spec::model_kind::spm;
  spec.tokens = md.strings["tokenizer.ggml.tokens"];
  for (double s : md.numbers["tokenizer.ggml.scores"])
    spec.scores.push_back(static_cast<float>(s));
  for (double k : md.numbers["tokenizer.ggml.token_type"])
    spec.kinds.push_back(static_cast<token_kind>(static_cast<int32_t>(k)));
  auto one = [&](const char* key, double fallback) {
    auto it = md.numbers.find(key);
    return it == md.numbers.end() || it->second.empty() ? fallback : it->second[0];
  };
  spec.bos = static_cast<token_id>(one("tokenizer.ggml.bos_token_id", -1));
  spec.eos = static_cast<token_id>(one("tokenizer.ggml.eos_token_id", -1));
  spec.unk = static_cast<token_id>(one("tokenizer.ggml.unknown_token_id", -1));
  spec.add_bos = one("tokenizer.ggml.add_bos_token", 1) != 0;
  spec.add_space_prefix = one("tokenizer.ggml.add_space_prefix", 1) != 0;
  return spec;
}

struct golden_case {
  std::string text;
  std::vector<token_id> with_bos;
  std::vector<token_id> no_bos;
};

std::vector<golden_case> load_cases(const std::string& dir) {
  std::ifstream in(dir + "/tiny-tokenize.json");
  REQUIRE(in.good());
  auto j = nlohmann::json::parse(in);
  std::vector<golden_case> cases;
  for (const auto& c : j.at("cases"))
    cases.push_back({c.at("text").get<std::string>(),
                     c.at("ids_with_bos").get<std::vector<token_id>>(),
                     c.at("ids_no_bos").get<std::vector<token_id>>()});
  return cases;
}

/// Checks `tok` against every golden case: ids with and without BOS, and decoding (the
/// pieces give the text back, less the space prefix added at encode time).
void check_cases(const tokenizer& tok, const std::vector<golden_case>& cases) {
  CHECK(tok.vocab_size() == 8192);
  for (const auto& c : cases) {
    INFO("text: '" << c.text << "'");
    CHECK(tok.encode(c.text, true) == c.with_bos);
    CHECK(tok.encode(c.text, false) == c.no_bos);
    // Control tokens decode to "", so cases that contain them are not decoding checks.
    bool has_control = false;
    for (auto id : c.no_bos)
      has_control |= id < 3;  // <unk>, <s>, </s>
    if (has_control) continue;
    std::string decoded;
    utf8_stream stream;
    std::string streamed;
    for (auto id : c.no_bos) {
      decoded += tok.piece(id);
      streamed += stream.push(tok.piece(id));
      CHECK(decoded.compare(0, streamed.size(), streamed) == 0);  // whole characters only
    }
    streamed += stream.finish();
    CHECK(streamed == decoded);
    if (!decoded.empty() && decoded[0] == ' ') decoded.erase(0, 1);  // add_space_prefix
    CHECK(decoded == c.text);
  }
}

}  // namespace

TEST_CASE("the tiny.gguf tokenizer matches llama.cpp on every golden case", "[golden]") {
  const std::string dir = test::golden_dir();
  if (dir.empty())
    TM_SKIP("golden data absent (tests/data/golden missing; set TOKENMILL_GOLDEN_DIR)");
  const auto cases = load_cases(dir);
  REQUIRE(cases.size() >= 10);

  SECTION("through load_model") {
    auto m = load_model(dir + "/tiny.gguf");
    INFO((m ? std::string() : m.error().message));
    REQUIRE(m.ok());
    REQUIRE((*m)->tok != nullptr);
    check_cases(*(*m)->tok, cases);
  }
  SECTION("from the GGUF metadata read independently of the loader") {
    const vocab_spec spec = spec_from_gguf(dir + "/tiny.gguf");
    REQUIRE(spec.tokens.size() == 8192);
    CHECK(spec.bos == 1);
    CHECK(spec.eos == 2);
    CHECK(spec.add_space_prefix);
    auto made = make_text_tokenizer(spec);
    INFO((made ? std::string() : made.error().message));
    REQUIRE(made.ok());
    check_cases(**made, cases);
  }
}
