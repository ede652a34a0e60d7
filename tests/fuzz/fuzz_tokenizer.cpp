/// libFuzzer target: the text tokenizers (engine/text_tokenizer.hpp), built in-process:
/// make_model's byte-level BPE vocabulary under each pre-tokenizer, and a small
/// SentencePiece-style vocabulary with byte fallback. The first byte picks the tokenizer
/// and whether the rest is text to encode or token ids (int32, any value) to decode.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "engine/make_model.hpp"
#include "engine/text_tokenizer.hpp"
#include "engine/tokenizer.hpp"

namespace {

using namespace tokenmill;

std::shared_ptr<const tokenizer> make(const vocab_spec& spec) {
  auto t = make_text_tokenizer(spec);
  if (!t) std::abort();
  return t.value();
}

vocab_spec bpe(const char* pre) {
  auto s = make_model_vocab(600);
  s.pre = pre;
  s.tokens.push_back("<|eot_id|>");  // a control token the text may spell out
  s.kinds.resize(s.tokens.size(), token_kind::normal);
  s.kinds.back() = token_kind::control;
  return s;
}

vocab_spec spm() {
  vocab_spec s;
  s.model = vocab_spec::model_kind::spm;
  auto add = [&](std::string t, float score, token_kind k) {
    s.tokens.push_back(std::move(t));
    s.scores.push_back(score);
    s.kinds.push_back(k);
  };
  add("<unk>", 0, token_kind::unknown);
  add("<s>", 0, token_kind::control);
  add("</s>", 0, token_kind::control);
  static constexpr char hex[] = "0123456789ABCDEF";
  for (int b = 0; b < 256; ++b)
    add(std::string("<0x") + hex[b >> 4] + hex[b & 15] + ">", 0, token_kind::byte);
  const std::string sp = "\xE2\x96\x81";  // ▁
  float score = -1;
  for (const char* p : {"t", "h", "e", "a", "n", "d", "th", "he", "the", "an", "and"}) {
    add(p, score, token_kind::normal);
    add(sp + p, score - 0.5f, token_kind::normal);
    score -= 1;
  }
  add(sp, -20, token_kind::normal);
  add("<user>", 0, token_kind::user_defined);
  s.bos = 1;
  s.eos = 2;
  s.unk = 0;
  return s;
}

const std::vector<std::shared_ptr<const tokenizer>>& tokenizers() {
  static const std::vector<std::shared_ptr<const tokenizer>> all = {
      make(bpe("gpt2")), make(bpe("llama3")), make(bpe("qwen2")), make(spm())};
  return all;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t sel = data[0];
  const auto& tok = *tokenizers()[sel % tokenizers().size()];
  std::string_view rest(reinterpret_cast<const char*>(data + 1), size - 1);
  if ((sel & 0x10) == 0) {
    auto ids = tok.encode(rest, (sel & 0x20) != 0);
    utf8_stream out;
    for (auto id : ids) {
      if (id < 0 || static_cast<uint32_t>(id) >= tok.vocab_size()) __builtin_trap();
      (void)out.push(tok.piece(id));
    }
    (void)out.finish();
  } else {
    utf8_stream out;
    for (size_t i = 0; i + sizeof(int32_t) <= rest.size(); i += sizeof(int32_t)) {
      int32_t id;
      std::memcpy(&id, rest.data() + i, sizeof id);
      (void)out.push(tok.piece(id));
    }
    (void)out.finish();
  }
  return 0;
}
