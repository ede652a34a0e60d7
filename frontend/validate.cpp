#include "frontend/validate.hpp"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "engine/blend.hpp"
#include "grammar/grammar.hpp"

namespace tokenmill {
namespace {
error_info bad(std::string msg) {
  return {errc::invalid_request, std::move(msg)};
}
}  // namespace

result<void> prompt_from_segments(const generate_params& p, const tokenizer& tok,
                                  const model_info& model, validated_request& v) {
  const std::string field = p.segments_field.empty() ? "segments" : p.segments_field;
  if (p.segments.size() > max_request_segments)
    return bad(fmt::format("{} lists {} segments; at most {} are allowed", field, p.segments.size(),
                           max_request_segments));
  const bool texts = std::any_of(p.segments.begin(), p.segments.end(),
                                 [](const prompt_segment& s) { return s.has_text; });
  v.prompt.clear();
  v.options.segment_ends.clear();
  // A text prompt's BOS is a segment of its own: each document's chunk then holds the
  // document's tokens only, whatever comes first. The tokenizer says whether there is one
  // (a model without a BOS token, such as Qwen's, has none to add).
  if (texts && p.add_bos) {
    const auto with_bos = tok.encode("", true);
    if (with_bos.size() > tok.encode("", false).size()) {
      v.prompt.push_back(with_bos.front());
      v.options.segment_ends.push_back(1);
    }
  }
  const int64_t vocab = model.vocab_size;
  for (size_t i = 0; i < p.segments.size(); ++i) {
    const auto& s = p.segments[i];
    const size_t before = v.prompt.size();
    if (s.has_text) {
      if (s.text.empty()) return bad(fmt::format("{}[{}] is empty", field, i));
      auto ids = tok.encode(s.text, false);
      v.prompt.insert(v.prompt.end(), ids.begin(), ids.end());
    } else {
      if (s.token_ids.empty()) return bad(fmt::format("{}[{}] is empty (no token ids)", field, i));
      for (size_t k = 0; k < s.token_ids.size(); ++k) {
        auto id = s.token_ids[k];
        if (id < 0 || id >= vocab)
          return bad(
              fmt::format("{}[{}]: token id {} at position {} is outside the vocabulary "
                          "[0, {})",
                          field, i, id, k, vocab));
        v.prompt.push_back(static_cast<token_id>(id));
      }
    }
    if (v.prompt.size() == before)
      return bad(fmt::format("{}[{}] is empty after tokenization", field, i));
    v.options.segment_ends.push_back(static_cast<uint32_t>(v.prompt.size()));
  }
  if (p.recompute_ratio) {
    const double r = *p.recompute_ratio;
    if (!std::isfinite(r) || !check_recompute_ratio(static_cast<float>(r)))
      return bad(fmt::format("recompute_ratio must be in [0, 1], got {}", r));
    v.options.recompute_ratio = static_cast<float>(r);
  }
  return {};
}

result<validated_request> validate(const generate_params& p, const tokenizer& tok,
                                   const model_info& model) {
  validated_request v;
  const int64_t vocab = model.vocab_size;
  if (!p.max_tokens_to_context && p.max_tokens <= 0)
    return bad(fmt::format("max_tokens must be greater than 0, got {}", p.max_tokens));
  if (!p.segments.empty()) {
    if (auto r = prompt_from_segments(p, tok, model, v); !r) return r.error();
  } else if (p.recompute_ratio) {
    return bad(fmt::format("recompute_ratio is only allowed with {}",
                           p.segments_field.empty() ? "segments" : p.segments_field));
  } else if (p.has_text) {
    if (p.text.empty()) return bad("prompt is empty");
    v.prompt = tok.encode(p.text, p.add_bos);
  } else {
    if (p.token_ids.empty()) return bad("prompt is empty (no token ids)");
    v.prompt.reserve(p.token_ids.size());
    for (size_t i = 0; i < p.token_ids.size(); ++i) {
      auto id = p.token_ids[i];
      if (id < 0 || id >= vocab)
        return bad(fmt::format(
            "prompt token id {} at position {} is outside the vocabulary [0, {})", id, i, vocab));
      v.prompt.push_back(static_cast<token_id>(id));
    }
  }
  for (size_t i = 0; i < p.stop_ids.size(); ++i) {
    auto id = p.stop_ids[i];
    if (id < 0 || id >= vocab)
      return bad(fmt::format(
          "stop token id {} (stop_token_ids[{}]) is outside the vocabulary [0, {})", id, i, vocab));
    v.options.stop_ids.push_back(static_cast<token_id>(id));
  }
  const auto& s = p.sampling;
  if (!std::isfinite(s.temperature) || s.temperature < 0)
    return bad(fmt::format("temperature must be a finite number >= 0, got {}", s.temperature));
  if (!std::isfinite(s.top_p) || s.top_p <= 0 || s.top_p > 1)
    return bad(fmt::format("top_p must be in (0, 1], got {}", s.top_p));
  if (!std::isfinite(s.min_p) || s.min_p < 0 || s.min_p > 1)
    return bad(fmt::format("min_p must be in [0, 1], got {}", s.min_p));
  if (!std::isfinite(s.presence_penalty) || s.presence_penalty < -2 || s.presence_penalty > 2)
    return bad(fmt::format("presence_penalty must be in [-2, 2], got {}", s.presence_penalty));
  if (!std::isfinite(s.frequency_penalty) || s.frequency_penalty < -2 || s.frequency_penalty > 2)
    return bad(fmt::format("frequency_penalty must be in [-2, 2], got {}", s.frequency_penalty));
  if (!std::isfinite(s.repetition_penalty) || s.repetition_penalty <= 0)
    return bad(fmt::format("repetition_penalty must be a finite number > 0, got {}",
                           s.repetition_penalty));
  if (p.top_logprobs < -1 || p.top_logprobs > max_top_logprobs)
    return bad(fmt::format("top_logprobs must be -1 (none) or in [0, {}], got {}", max_top_logprobs,
                           p.top_logprobs));
  if (p.logit_bias.size() > max_logit_bias)
    return bad(fmt::format("logit_bias has {} entries; at most {} are allowed", p.logit_bias.size(),
                           max_logit_bias));
  std::vector<logit_bias_entry> bias;
  bias.reserve(p.logit_bias.size());
  for (const auto& [id, b] : p.logit_bias) {
    if (id < 0 || id >= vocab)
      return bad(
          fmt::format("logit_bias token id {} is outside the vocabulary [0, {})", id, vocab));
    if (!std::isfinite(b) || b < -100 || b > 100)
      return bad(fmt::format("logit_bias for token {} must be in [-100, 100], got {}", id, b));
    bias.push_back({static_cast<token_id>(id), static_cast<float>(b)});
  }
  if (p.stop_strings.size() > max_stop_strings)
    return bad(fmt::format("at most {} stop strings are allowed, got {}", max_stop_strings,
                           p.stop_strings.size()));
  for (size_t i = 0; i < p.stop_strings.size(); ++i) {
    const auto& t = p.stop_strings[i];
    if (t.empty()) return bad(fmt::format("stop string {} is empty", i));
    if (t.size() > max_stop_string_bytes)
      return bad(fmt::format("stop string {} has {} bytes; at most {} are allowed", i, t.size(),
                             max_stop_string_bytes));
  }
  v.stop_strings = p.stop_strings;
  const int64_t ctx = model.max_context;
  const auto n = static_cast<int64_t>(v.prompt.size());
  if (n >= ctx)
    return bad(fmt::format("prompt has {} tokens; the model's context is {} tokens", n, ctx));
  if (p.max_tokens_to_context) {
    v.options.max_tokens = static_cast<uint32_t>(ctx - n);
  } else if (p.max_tokens >
             ctx - n) {  // (not n + max_tokens > ctx: that overflows for huge max_tokens)
    return bad(
        fmt::format("prompt ({} tokens) + max_tokens ({}) exceeds the model's context of {} "
                    "tokens; lower max_tokens to at most {}",
                    n, p.max_tokens, ctx, ctx - n));
  } else {
    v.options.max_tokens = static_cast<uint32_t>(p.max_tokens);
  }
  v.options.sampling = s;
  v.options.sampling.logit_bias = std::move(bias);
  v.options.sampling.top_logprobs = static_cast<int32_t>(p.top_logprobs);
  v.options.sampling.resumed = 0;  // the router's to set, never the client's
  // Constrained decoding: a grammar that does not compile is refused here, before anything
  // is queued (the decode worker compiles it again, once, into its cache).
  const std::string field = p.grammar_field.empty() ? "grammar" : p.grammar_field;
  if (!p.unknown_grammar_kind.empty())
    return bad(
        fmt::format("{}: unknown grammar kind '{}' (expected regex, json_schema or "
                    "json_object)",
                    field, p.unknown_grammar_kind));
  if (s.grammar != grammar_kind::none) {
    if (auto g = grammar::compile_grammar(s.grammar, s.grammar_source); !g)
      return bad(fmt::format("{}: {}", field, g.error().message));
  } else if (!s.grammar_source.empty()) {
    return bad(fmt::format("{}: a grammar source was given without a grammar kind", field));
  }
  v.options.ignore_eos = p.ignore_eos;
  return v;
}

}  // namespace tokenmill
