#pragma once
/// What the RPC and HTTP frontends share about one streamed completion: its text
/// (detokenized as tokens arrive, stop strings applied) and the summary the client gets.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "actors/protocol.hpp"
#include "common/api_types.hpp"
#include "engine/tokenizer.hpp"
#include "frontend/stop_strings.hpp"

namespace tokenmill {

class completion_text {
 public:
  completion_text(std::shared_ptr<const tokenizer> tok, std::vector<std::string> stop_strings);

  /// Appends one token and returns the text that can be shown now (possibly empty: an
  /// unfinished character or a possible stop string is held back). When the text reaches
  /// a stop string, returns the text before it and stopped() turns true; the caller then
  /// cancels the request and pushes nothing more.
  std::string push(token_id t);
  /// The end of the stream: the held-back tail (nothing after a stop string).
  std::string finish();
  /// A stop string appeared: the completion ends with the token that completed it.
  bool stopped() const { return stops_.matched(); }
  /// Tokens pushed (the completion's length as the client sees it).
  uint32_t tokens() const { return tokens_; }

 private:
  std::shared_ptr<const tokenizer> tok_;
  utf8_stream detok_;
  stop_matcher stops_;
  uint32_t tokens_ = 0;
  bool finished_ = false;
};

/// The client's summary of a finished request: usage, finish reason, ITL, and the TTFT
/// breakdown with the frontend's `first_token_sent` stamp (`first_sent_ns`, 0 = no token
/// was sent) added on `node`. A request the frontend cancelled because of a stop string
/// (`stopped`) ends normally with reason stop and `written` completion tokens.
generation_summary make_generation_summary(const request_summary& r, bool stopped, uint32_t written,
                                           int64_t first_sent_ns, uint32_t node);

}  // namespace tokenmill
