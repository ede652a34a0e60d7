/// libFuzzer target: Hugging Face tokenizer.json reading (engine/text_tokenizer.hpp
/// read_tokenizer_json) on arbitrary bytes, through a memfd (memfd_input.hpp). A file it
/// accepts must also make a tokenizer (or be refused as a value) that encodes a fixed text
/// to ids inside its vocabulary and decodes every id.
#include <cstddef>
#include <cstdint>
#include <string>

#include "engine/text_tokenizer.hpp"
#include "engine/tokenizer.hpp"
#include "tests/fuzz/memfd_input.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tokenmill;
  auto spec = read_tokenizer_json(fuzz::as_file(data, size));
  if (!spec) return 0;
  auto tok = make_text_tokenizer(*spec);
  if (!tok) return 0;
  const auto& t = *tok.value();
  for (bool bos : {false, true})
    for (auto id : t.encode("Hello, world! <s> \xE2\x96\x81x 123 \xF0\x9F\x98\x80", bos))
      if (id < 0 || static_cast<uint32_t>(id) >= t.vocab_size()) __builtin_trap();
  for (uint32_t id = 0; id < t.vocab_size() && id < 4096; ++id)
    (void)t.piece(static_cast<token_id>(id));
  return 0;
}
