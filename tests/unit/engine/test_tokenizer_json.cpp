// read_tokenizer_json and write_tokenizer_json (engine/tokenizer_json.cpp).
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <string>
#include <vector>

#include "engine/text_tokenizer.hpp"
#include "test_result.hpp"
#include "tokenizer_specs.hpp"

using namespace tokenmill;
using namespace tokenmill::test;

// ---------------------------------------------------------------------------------------
// tokenizer.json

TEST_CASE("write_tokenizer_json and read_tokenizer_json round-trip", "[tokenizer]") {
  const std::string G = gpt2_char(' ');
  for (std::string pre : {"gpt2", "llama3", "qwen2"}) {
    INFO(pre);
    temp_dir dir;
    auto spec = bpe_spec({"h e", G + " t", G + "t he", "1 2"}, pre);
    spec.bos = id_of(spec, "<|endoftext|>");
    spec.eos = id_of(spec, "<|user|>");
    spec.add_bos = true;
    std::string path = (dir.path / "tokenizer.json").string();
    REQUIRE(write_tokenizer_json(spec, path));
    REQUIRE(fs::exists(dir.path / "tokenizer_config.json"));
    auto back = read_tokenizer_json(path);
    INFO((back ? std::string() : back.error().message));
    REQUIRE(back.ok());
    CHECK(back->model == vocab_spec::model_kind::bpe);
    CHECK(back->tokens == spec.tokens);
    CHECK(back->merges == spec.merges);
    CHECK(back->kinds == spec.kinds);
    CHECK(back->bos == spec.bos);
    CHECK(back->eos == spec.eos);
    CHECK(back->add_bos);
    CHECK(back->pre == pre);
    const std::string text = "the 123 <|user|>the";
    CHECK(make(*back)->encode(text, true) == make(spec)->encode(text, true));

    // Without tokenizer_config.json the TemplateProcessing hint still gives BOS.
    fs::remove(dir.path / "tokenizer_config.json");
    auto hinted = read_tokenizer_json(path);
    REQUIRE(hinted.ok());
    CHECK(hinted->bos == spec.bos);
    CHECK(hinted->eos == -1);
    CHECK(hinted->add_bos);
  }
}

TEST_CASE("read_tokenizer_json reads merges as pairs and tokenizer_config objects", "[tokenizer]") {
  temp_dir dir;
  nlohmann::json vocab = nlohmann::json::object();
  for (unsigned b = 0; b < 256; ++b)
    vocab[gpt2_char(b)] = b;
  vocab["ab"] = 256;
  nlohmann::json j = {
      {"version", "1.0"},
      {"added_tokens",
       {{{"id", 257}, {"content", "<s>"}, {"special", true}},
        {{"id", 258}, {"content", "</s>"}, {"special", true}}}},
      {"normalizer", {{"type", "NFC"}}},  // as Qwen2 ships it: accepted, not applied
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}}},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model",
       {{"type", "BPE"},
        {"vocab", vocab},
        {"merges", nlohmann::json::array({nlohmann::json::array({"a", "b"})})}}}};
  std::string path = dir.write("tokenizer.json", j.dump());
  dir.write("tokenizer_config.json",
            R"({"bos_token": {"content": "<s>", "lstrip": false}, "eos_token": "</s>",
                "add_bos_token": true})");
  auto spec = read_tokenizer_json(path);
  INFO((spec ? std::string() : spec.error().message));
  REQUIRE(spec.ok());
  CHECK(spec->tokens.size() == 259);
  CHECK(spec->merges == std::vector<std::string>{"a b"});
  CHECK(spec->bos == 257);
  CHECK(spec->eos == 258);
  CHECK(spec->add_bos);
  CHECK(spec->kinds[257] == token_kind::control);
  CHECK(spec->pre == "gpt2");
  CHECK(spec->chat_template.empty());

  // chat_template: a string, or a list of named templates where "default" is the chat one.
  dir.write("tokenizer_config.json", R"({"chat_template": "{{ '<|im_start|>' }}"})");
  auto with = read_tokenizer_json(path);
  REQUIRE(with.ok());
  CHECK(with->chat_template == "{{ '<|im_start|>' }}");
  dir.write("tokenizer_config.json",
            R"({"chat_template": [{"name": "tool_use", "template": "T"},
                                  {"name": "default", "template": "D"}]})");
  auto listed = read_tokenizer_json(path);
  REQUIRE(listed.ok());
  CHECK(listed->chat_template == "D");
  dir.write("tokenizer_config.json", R"({"chat_template": 5})");
  auto bad = read_tokenizer_json(path);
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.error().message.find("chat_template") != std::string::npos);
  CHECK(make(*spec)->encode("ab</s>", true) == ids{257, 256, 258});
}

TEST_CASE("read_tokenizer_json reads SentencePiece-style BPE with byte fallback", "[tokenizer]") {
  temp_dir dir;
  nlohmann::json vocab = {{"<unk>", 0}, {"<s>", 1}, {"</s>", 2}};
  static constexpr char hex[] = "0123456789ABCDEF";
  for (int b = 0; b < 256; ++b)
    vocab[std::string("<0x") + hex[b >> 4] + hex[b & 15] + ">"] = 3 + b;
  int next = 259;
  for (const std::string& t : std::vector<std::string>{sp, "a", "b", sp + "a", "ab", sp + "ab"})
    vocab[t] = next++;
  nlohmann::json j = {
      {"added_tokens",
       {{{"id", 0}, {"content", "<unk>"}, {"special", true}},
        {{"id", 1}, {"content", "<s>"}, {"special", true}},
        {{"id", 2}, {"content", "</s>"}, {"special", true}}}},
      {"normalizer",
       {{"type", "Sequence"},
        {"normalizers",
         {{{"type", "Prepend"}, {"prepend", sp}},
          {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", sp}}}}}},
      {"pre_tokenizer", nullptr},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single",
         {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
          {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}}}},
      {"decoder",
       {{"type", "Sequence"},
        {"decoders",
         {{{"type", "Replace"}, {"pattern", {{"String", sp}}}, {"content", " "}},
          {{"type", "ByteFallback"}}}}}},
      {"model",
       {{"type", "BPE"},
        {"unk_token", "<unk>"},
        {"byte_fallback", true},
        {"vocab", vocab},
        {"merges", {sp + " a", "a b", sp + "a b"}}}}};
  std::string path = dir.write("tokenizer.json", j.dump());
  auto spec = read_tokenizer_json(path);
  INFO((spec ? std::string() : spec.error().message));
  REQUIRE(spec.ok());
  CHECK(spec->model == vocab_spec::model_kind::spm);
  CHECK(spec->add_space_prefix);
  CHECK(spec->bos == 1);
  CHECK(spec->add_bos);
  CHECK(spec->unk == 0);
  CHECK(spec->kinds[3 + 'a'] == token_kind::byte);
  auto tok = make(*spec);
  CHECK(tok->encode("ab a", true) == ids{1, 264, 262});
  CHECK(tok->encode("\xC3\xA9", false) == ids{259, 3 + 0xC3, 3 + 0xA9});
}

TEST_CASE("bad tokenizer.json files are rejected naming the file and key", "[tokenizer]") {
  temp_dir dir;
  auto err = [&](const std::string& text) {
    std::string path = dir.write("tokenizer.json", text);
    auto r = read_tokenizer_json(path);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == errc::invalid_model);
    CHECK_THAT(r.error().message, Catch::Contains(path));
    return r.error().message;
  };
  CHECK_THAT(read_tokenizer_json((dir.path / "absent.json").string()).error().message,
             Catch::Contains("cannot open"));
  CHECK_THAT(err("{not json"), Catch::Contains("not valid JSON"));
  CHECK_THAT(err("[1, 2]"), Catch::Contains("not a JSON object"));
  CHECK_THAT(err("{}"), Catch::Contains("key 'model': missing"));
  CHECK_THAT(err(R"({"model": 3})"), Catch::Contains("key 'model': expected an object"));
  CHECK_THAT(err(R"({"model": {"vocab": {}}})"), Catch::Contains("'model.type'"));
  CHECK_THAT(err(R"({"model": {"type": "Unigram", "vocab": []}})"),
             Catch::Contains("model.type 'Unigram'"));
  CHECK_THAT(err(R"({"model": {"type": "BPE", "vocab": [1]}})"), Catch::Contains("'model.vocab'"));
  CHECK_THAT(err(R"({"model": {"type": "BPE", "vocab": {"a": "x"}}})"),
             Catch::Contains("entry 'a'"));
  CHECK_THAT(err(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": 5}})"),
             Catch::Contains("'model.merges'"));
  CHECK_THAT(err(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [7]}})"),
             Catch::Contains("'model.merges[0]'"));
  CHECK_THAT(err(R"({"added_tokens": {}, "model": {"type": "BPE", "vocab": {"a": 0}}})"),
             Catch::Contains("'added_tokens'"));
  CHECK_THAT(err(R"({"added_tokens": [{"id": "x", "content": "b"}],
                     "model": {"type": "BPE", "vocab": {"a": 0}}})"),
             Catch::Contains("'added_tokens[0].id'"));
  // Sparse ids (a fuzzing finding): refused before a table of millions of holes is made.
  CHECK_THAT(err(R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 8888845}}})"),
             Catch::Contains("'model.vocab'") && Catch::Contains("id 8888845") &&
                 Catch::Contains("dense"));
  CHECK_THAT(err(R"({"added_tokens": [{"id": 2147483646, "content": "b"}],
                     "model": {"type": "BPE", "vocab": {"a": 0}}})"),
             Catch::Contains("'added_tokens[0].id'") && Catch::Contains("dense"));
  CHECK_THAT(err(R"({"model": {"type": "BPE", "vocab": {"a": 0}}})"),
             Catch::Contains("'pre_tokenizer'"));
  CHECK_THAT(err(R"({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                       {"type": "Split", "pattern": {"Regex": "\\d+|\\w+"}, "behavior": "Isolated"},
                       {"type": "ByteLevel", "use_regex": false}]},
                     "model": {"type": "BPE", "vocab": {"a": 0}}})"),
             Catch::Contains("unknown pre-tokenizer pattern '\\d+|\\w+'"));
  CHECK_THAT(err(R"({"normalizer": {"type": "Lowercase"}, "pre_tokenizer": {"type": "ByteLevel"},
                     "model": {"type": "BPE", "vocab": {"a": 0}}})"),
             Catch::Contains("'normalizer'"));
  CHECK_THAT(err(R"({"pre_tokenizer": {"type": "Whitespace"},
                     "model": {"type": "BPE", "vocab": {"a": 0}}})"),
             Catch::Contains("type 'Whitespace'"));
  CHECK_THAT(err(R"({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                       {"type": "Digits", "individual_digits": true},
                       {"type": "ByteLevel", "use_regex": true}]},
                     "model": {"type": "BPE", "vocab": {"a": 0}}})"),
             Catch::Contains("'Digits'"));

  // A valid file whose tokenizer_config.json names a token that does not exist.
  temp_dir dir2;
  nlohmann::json vocab = nlohmann::json::object();
  for (unsigned b = 0; b < 256; ++b)
    vocab[gpt2_char(b)] = b;
  nlohmann::json j = {
      {"pre_tokenizer", {{"type", "ByteLevel"}}},
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", nlohmann::json::array()}}}};
  std::string path = dir2.write("tokenizer.json", j.dump());
  REQUIRE(read_tokenizer_json(path).ok());
  std::string cfg = dir2.write("tokenizer_config.json", R"({"bos_token": "<nope>"})");
  auto r = read_tokenizer_json(path);
  REQUIRE_FALSE(r.ok());
  CHECK_THAT(r.error().message,
             Catch::Contains(cfg) && Catch::Contains("'bos_token'") && Catch::Contains("<nope>"));
}

TEST_CASE("write_tokenizer_json refuses what it cannot write", "[tokenizer]") {
  temp_dir dir;
  std::string path = (dir.path / "tokenizer.json").string();
  CHECK_THAT(test::error_text(write_tokenizer_json(spm_spec({{"a", -1}}), path)),
             Catch::Contains("byte-level"));
  auto bad = bpe_spec({"a b"});
  bad.merges.push_back("b a");
  CHECK_THAT(test::error_text(write_tokenizer_json(bad, path)), Catch::Contains("merge 1"));
  CHECK(write_tokenizer_json(bad, path).error().code == errc::invalid_model);
  auto nowhere = (dir.path / "no" / "such" / "t.json").string();
  CHECK_THAT(test::error_text(write_tokenizer_json(bpe_spec({}), nowhere)),
             Catch::Contains("cannot open"));
  CHECK(write_tokenizer_json(bpe_spec({}), nowhere).error().code == errc::invalid_request);
}
