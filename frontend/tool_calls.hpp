#pragma once
/// Tool calls as models write them: the parsers that turn a model's output text into
/// content and OpenAI `tool_calls`, whole or while it streams, and the regular expression
/// that makes a model write one call (tool_choice "required" or a named function). Free
/// of CAF and sockets (STYLE.md §2); http_generate.cpp only feeds it text.
///
/// Two syntaxes, the ones the chat formats of openai.hpp render:
/// - hermes (Hermes, Qwen 2/2.5/3; the chatml format): each call is
///   `<tool_call>\n{"name": "f", "arguments": {...}}\n</tool_call>`, anywhere in the text,
///   one or more; the text around them is content.
/// - llama3 (Llama 3.1+ JSON tool calling; the llama3 format): the whole message is
///   `{"name": "f", "parameters": {...}}`, optionally after `<|python_tag|>`, several calls
///   joined by `;`. A message that does not start with `{` is content.
/// A call whose JSON does not parse, has no string "name", or whose arguments are not an
/// object (an object, or a string holding one) is left in the content as written, as is
/// any call beyond `max_calls`.
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

namespace tokenmill::openai {

/// One function call of an assistant message.
struct tool_call {
  std::string id;         ///< "call_..."; empty in parser output (the server assigns it)
  std::string name;       ///< the function's name
  std::string arguments;  ///< a JSON object, as text (compact, keys in the order written)
};

/// How a model family writes its calls (see above).
enum class tool_syntax : uint8_t { hermes, llama3 };

/// Content and calls parsed out of an output (or out of the part of it pushed so far).
struct tool_output {
  std::string content;  ///< the text that is not part of a call
  std::vector<tool_call> calls;
};

/// Parses output as it streams: push() each piece of text, then finish() once. The
/// content of all events together equals what parse_tool_calls returns for the whole
/// text: leading and trailing whitespace is dropped (whitespace is held back until more
/// content follows it), so the newline between text and a call does not end the content.
/// Text that may still become a call (a partial `<tool_call>` tag, an open call, a llama3
/// message that started with `{`) is held back until it is decided.
class tool_call_stream {
 public:
  explicit tool_call_stream(tool_syntax syntax,
                            size_t max_calls = std::numeric_limits<size_t>::max());
  /// What `text` decides: content to send and calls completed by it.
  tool_output push(std::string_view text);
  /// The end of the output: whatever was held back, decided.
  tool_output finish();
  size_t calls() const { return calls_; }  ///< calls returned so far

 private:
  void content(std::string_view text, tool_output& out);
  void hermes_block(std::string_view body, bool closed, tool_output& out);

  tool_syntax syntax_;
  size_t max_calls_;
  size_t calls_ = 0;
  std::string pending_;     ///< text not yet decided
  bool in_call_ = false;    ///< hermes: inside <tool_call>
  int llama_mode_ = 0;      ///< llama3: 0 undecided, 1 content, 2 calls
  bool started_ = false;    ///< some content was sent
  std::string held_space_;  ///< whitespace after the last content sent
  std::string llama_all_;   ///< llama3: the whole output while it may be calls
};

/// The whole output at once: `tool_call_stream` pushed `text` and finished.
tool_output parse_tool_calls(tool_syntax syntax, std::string_view text,
                             size_t max_calls = std::numeric_limits<size_t>::max());

/// A regular expression (grammar/regex.hpp) for one call of function `name` in `syntax`,
/// its arguments matching `args_regex` (a JSON-schema regex, grammar/json_schema.hpp), in
/// the layout the chat formats render calls: hermes
/// `<tool_call>\n{"name": "NAME", "arguments": ARGS}\n</tool_call>`, llama3
/// `{"name": "NAME", "parameters": ARGS}`. `name` is matched literally.
std::string tool_call_regex(tool_syntax syntax, std::string_view name, std::string_view args_regex);

/// A JSON value written as Python's json.dumps writes it (", " and ": " separators), which
/// is how the models' Jinja templates (`tojson`) show tools and calls in their prompts.
/// Keys keep their order; text that is not JSON comes back unchanged.
std::string python_json(std::string_view json_text);

}  // namespace tokenmill::openai
