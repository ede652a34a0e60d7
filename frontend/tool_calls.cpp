#include "frontend/tool_calls.hpp"

#include <optional>

#include <nlohmann/json.hpp>

#include "grammar/regex.hpp"

namespace tokenmill::openai {
namespace {

using ojson = nlohmann::ordered_json;

constexpr std::string_view k_open = "<tool_call>";
constexpr std::string_view k_close = "</tool_call>";
constexpr std::string_view k_python_tag = "<|python_tag|>";

bool is_space(char c) {
  return c == ' ' || c == '\n' || c == '\t' || c == '\r';
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && is_space(s.front()))
    s.remove_prefix(1);
  while (!s.empty() && is_space(s.back()))
    s.remove_suffix(1);
  return s;
}

std::string dump(const ojson& j) {
  return j.dump(-1, ' ', false, ojson::error_handler_t::replace);
}

/// A call from one JSON object: {"name": string, <args_key>: object or a string holding
/// one} (`alt_key` when there is no `args_key`); absent arguments are `{}`. nullopt when it
/// is not one.
std::optional<tool_call> call_from(std::string_view text, const char* args_key,
                                   const char* alt_key = nullptr) {
  ojson j = ojson::parse(text, nullptr, false);
  if (!j.is_object()) return std::nullopt;
  auto name = j.find("name");
  if (name == j.end() || !name->is_string() || name->get_ref<const std::string&>().empty())
    return std::nullopt;
  tool_call c;
  c.name = name->get<std::string>();
  auto args = j.find(args_key);
  if (args == j.end() && alt_key) args = j.find(alt_key);
  if (args == j.end() || args->is_null()) {
    c.arguments = "{}";
  } else if (args->is_object()) {
    c.arguments = dump(*args);
  } else if (args->is_string()) {
    ojson inner = ojson::parse(args->get_ref<const std::string&>(), nullptr, false);
    if (!inner.is_object()) return std::nullopt;
    c.arguments = dump(inner);
  } else {
    return std::nullopt;
  }
  return c;
}

/// The length of the JSON object at the start of `s` (which starts with '{'), found by
/// brace depth outside strings; 0 when it does not close.
size_t object_length(std::string_view s) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (in_string) {
      if (c == '\\')
        ++i;
      else if (c == '"')
        in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      ++depth;
    } else if (c == '}' || c == ']') {
      if (--depth == 0) return i + 1;
    }
  }
  return 0;
}

/// Llama 3 calls: `{...}` objects joined by ';' (whitespace around them allowed), after an
/// optional <|python_tag|>. nullopt unless the whole text is calls.
std::optional<std::vector<tool_call>> llama3_calls(std::string_view s, size_t max_calls) {
  s = trim(s);
  if (s.substr(0, k_python_tag.size()) == k_python_tag) s = trim(s.substr(k_python_tag.size()));
  std::vector<tool_call> calls;
  while (true) {
    if (s.empty() || s.front() != '{') return std::nullopt;
    const size_t n = object_length(s);
    if (n == 0) return std::nullopt;
    // Llama 3.1 is trained on "parameters"; some fine-tunes write "arguments".
    auto c = call_from(s.substr(0, n), "parameters", "arguments");
    if (!c) return std::nullopt;
    calls.push_back(std::move(*c));
    if (calls.size() > max_calls) return std::nullopt;
    s = trim(s.substr(n));
    if (s.empty()) return calls;
    if (s.front() != ';') return std::nullopt;
    s = trim(s.substr(1));
    if (s.empty()) return calls;  // a trailing ';'
  }
}

/// The length of the longest suffix of `s` that is a proper prefix of `tag`.
size_t partial_tag(std::string_view s, std::string_view tag) {
  for (size_t n = std::min(s.size(), tag.size() - 1); n > 0; --n)
    if (s.substr(s.size() - n) == tag.substr(0, n)) return n;
  return 0;
}

void write_python(const ojson& j, std::string& out) {
  if (j.is_object()) {
    out += '{';
    bool first = true;
    for (const auto& [k, v] : j.items()) {
      if (!first) out += ", ";
      first = false;
      out += dump(ojson(k));
      out += ": ";
      write_python(v, out);
    }
    out += '}';
  } else if (j.is_array()) {
    out += '[';
    for (size_t i = 0; i < j.size(); ++i) {
      if (i) out += ", ";
      write_python(j[i], out);
    }
    out += ']';
  } else {
    out += dump(j);
  }
}

}  // namespace

tool_call_stream::tool_call_stream(tool_syntax syntax, size_t max_calls)
    : syntax_(syntax), max_calls_(max_calls) {}

void tool_call_stream::content(std::string_view text, tool_output& out) {
  size_t b = 0;
  while (b < text.size() && is_space(text[b]))
    ++b;
  if (b == text.size()) {
    if (started_) held_space_ += text;
    return;
  }
  size_t e = text.size();
  while (is_space(text[e - 1]))
    --e;
  if (started_) {
    out.content += held_space_;
    out.content += text.substr(0, b);
  }
  out.content += text.substr(b, e - b);
  held_space_ = std::string(text.substr(e));
  started_ = true;
}

void tool_call_stream::hermes_block(std::string_view body, bool closed, tool_output& out) {
  if (calls_ < max_calls_) {
    if (auto c = call_from(trim(body), "arguments")) {
      ++calls_;
      out.calls.push_back(std::move(*c));
      return;
    }
  }
  std::string raw = std::string(k_open) + std::string(body);
  if (closed) raw += k_close;
  content(raw, out);
}

tool_output tool_call_stream::push(std::string_view text) {
  tool_output out;
  if (syntax_ == tool_syntax::llama3) {
    if (llama_mode_ == 1) {
      content(text, out);
      return out;
    }
    llama_all_ += text;
    if (llama_mode_ == 2) return out;
    std::string_view s = trim(llama_all_);
    if (s.empty()) return out;
    if (s.front() == '{' || s.substr(0, k_python_tag.size()) == k_python_tag) {
      llama_mode_ = 2;
    } else if (k_python_tag.substr(0, s.size()) != s) {
      llama_mode_ = 1;
      content(llama_all_, out);
      llama_all_.clear();
    }
    return out;
  }
  pending_ += text;
  while (true) {
    if (!in_call_) {
      const size_t at = pending_.find(k_open);
      if (at == std::string::npos) {
        const size_t keep = partial_tag(pending_, k_open);
        content(std::string_view(pending_).substr(0, pending_.size() - keep), out);
        pending_.erase(0, pending_.size() - keep);
        return out;
      }
      content(std::string_view(pending_).substr(0, at), out);
      pending_.erase(0, at + k_open.size());
      in_call_ = true;
    }
    const size_t end = pending_.find(k_close);
    if (end == std::string::npos) return out;
    hermes_block(std::string_view(pending_).substr(0, end), true, out);
    pending_.erase(0, end + k_close.size());
    in_call_ = false;
  }
}

tool_output tool_call_stream::finish() {
  tool_output out;
  if (syntax_ == tool_syntax::llama3) {
    if (llama_mode_ != 1 && !llama_all_.empty()) {
      auto calls = llama_mode_ == 2 ? llama3_calls(llama_all_, max_calls_ - calls_) : std::nullopt;
      if (calls) {
        calls_ += calls->size();
        out.calls = std::move(*calls);
      } else {
        content(llama_all_, out);
      }
    }
    llama_all_.clear();
    llama_mode_ = 1;
    return out;
  }
  if (in_call_) {
    // Cut off inside a call (max_tokens): the call counts if what came is whole JSON.
    hermes_block(pending_, false, out);
  } else {
    content(pending_, out);
  }
  pending_.clear();
  in_call_ = false;
  return out;
}

tool_output parse_tool_calls(tool_syntax syntax, std::string_view text, size_t max_calls) {
  tool_call_stream s(syntax, max_calls);
  tool_output out = s.push(text);
  tool_output tail = s.finish();
  out.content += tail.content;
  for (auto& c : tail.calls)
    out.calls.push_back(std::move(c));
  return out;
}

std::string tool_call_regex(tool_syntax syntax, std::string_view name,
                            std::string_view args_regex) {
  using grammar::regex_escape;
  const std::string quoted = regex_escape(dump(ojson(std::string(name))));
  if (syntax == tool_syntax::hermes)
    return regex_escape("<tool_call>\n{\"name\": ") + quoted + regex_escape(", \"arguments\": ") +
           std::string(args_regex) + regex_escape("}\n</tool_call>");
  return regex_escape("{\"name\": ") + quoted + regex_escape(", \"parameters\": ") +
         std::string(args_regex) + regex_escape("}");
}

std::string python_json(std::string_view json_text) {
  ojson j = ojson::parse(json_text, nullptr, false);
  if (j.is_discarded()) return std::string(json_text);
  std::string out;
  write_python(j, out);
  return out;
}

}  // namespace tokenmill::openai
