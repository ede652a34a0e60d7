#pragma once
/// Tokenizers turn text into token ids and ids back into bytes. The real vocabularies
/// (SentencePiece, byte-level BPE) arrive with the model loaders; the sim engine uses the
/// byte-word tokenizer below.
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/ids.hpp"

namespace tokenmill {

class tokenizer {
 public:
  virtual ~tokenizer() = default;
  /// Token ids of `text`, with the BOS token first when `add_bos`.
  virtual std::vector<token_id> encode(std::string_view text, bool add_bos) const = 0;
  /// Raw bytes of one token (may be part of a UTF-8 character; specials give "").
  virtual std::string piece(token_id id) const = 0;
  virtual uint32_t vocab_size() const = 0;
};

/// ids 0..2 are <unk>, <s>, </s>; 3..258 are the bytes 0x00..0xFF; every id from 259 up
/// is a pseudo-word (" " followed by syllables derived from the id). Encoding uses bytes
/// only, so any text round-trips; the sim engine generates words, so output reads as text.
class byte_word_tokenizer final : public tokenizer {
 public:
  explicit byte_word_tokenizer(uint32_t vocab_size) : vocab_(vocab_size) {}
  std::vector<token_id> encode(std::string_view text, bool add_bos) const override;
  std::string piece(token_id id) const override;
  uint32_t vocab_size() const override { return vocab_; }

 private:
  uint32_t vocab_;
};

/// Incremental detokenization for streaming: appends token pieces and hands out only the
/// text that ends on a UTF-8 character boundary, holding back an incomplete tail.
class utf8_stream {
 public:
  /// Appends `bytes` and returns the longest complete-UTF-8 text available.
  std::string push(std::string_view bytes);
  /// What is held back at the end of a stream (an incomplete character), replaced by U+FFFD.
  std::string finish();

 private:
  std::string pending_;
};

}  // namespace tokenmill
