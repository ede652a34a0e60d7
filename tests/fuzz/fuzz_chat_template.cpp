/// libFuzzer target: the chat-template renderer (frontend/openai.hpp render_chat, and the
/// recognition of a model's template by detect_chat_format) in each of its three formats.
/// The input is a conversation: fields separated by 0x1f, alternately a role and its
/// content (the role is used as sent, so unknown roles are rendered too); the first field is
/// also the model's Jinja template for detect_chat_format. Checked for every format: the
/// prompt ends with the opened assistant turn, holds every message's content, and renders
/// the same twice. The chat endpoint's request parsing in the mistral format (fuzz_openai
/// covers chatml and llama3) gets the input as a request body.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "frontend/openai.hpp"

namespace {

using namespace tokenmill::openai;

bool ends_with(std::string_view s, std::string_view tail) {
  return s.size() >= tail.size() && s.substr(s.size() - tail.size()) == tail;
}

/// The text render_chat ends with in format `f` when the last message is not a pending
/// system message (mistral closes those in their own [INST] turn).
std::string_view generation_prompt(chat_format f) {
  switch (f) {
    case chat_format::chatml:
      return "<|im_start|>assistant\n";
    case chat_format::llama3:
      return "<|start_header_id|>assistant<|end_header_id|>\n\n";
    case chat_format::mistral:
      return " [/INST]";
  }
  return {};
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  std::vector<std::string_view> fields;
  for (size_t start = 0;;) {
    auto sep = in.find('\x1f', start);
    fields.push_back(in.substr(start, sep == std::string_view::npos ? in.npos : sep - start));
    if (sep == std::string_view::npos) break;
    start = sep + 1;
  }
  (void)detect_chat_format(fields[0]);
  (void)chat_format_from_name(fields[0]);

  std::vector<chat_message> msgs;
  for (size_t i = 0; i + 1 < fields.size(); i += 2)
    msgs.push_back({std::string(fields[i]), std::string(fields[i + 1])});

  for (auto f : {chat_format::chatml, chat_format::llama3, chat_format::mistral}) {
    const std::string out = render_chat(f, msgs);
    if (render_chat(f, msgs) != out) __builtin_trap();
    bool ends_in_assistant = f != chat_format::mistral;
    if (f == chat_format::mistral) {
      // Mistral opens no assistant turn after an assistant message; otherwise the prompt
      // ends with the [/INST] of the last user (or pending system) turn.
      // Trailing system messages with no text at all leave nothing to close.
      ends_in_assistant = !msgs.empty() && msgs.back().role != "assistant";
      bool pending_text = false, trailing_system = false;
      for (auto it = msgs.rbegin(); it != msgs.rend(); ++it) {
        if (it->role != "system" && it->role != "developer") break;
        trailing_system = true;
        pending_text = pending_text || !it->content.empty();
      }
      if (trailing_system && !pending_text) ends_in_assistant = false;
    }
    if (ends_in_assistant && !ends_with(out, generation_prompt(f))) __builtin_trap();
    for (const auto& m : msgs)
      if (out.find(m.content) == std::string::npos) __builtin_trap();
    if (chat_format_from_name(to_string(f)) != f) __builtin_trap();
  }

  request_context rc{.served_model = "tiny", .format = chat_format::mistral};
  auto parsed = parse_request(endpoint::chat_completions, in, rc);
  if (auto* e = std::get_if<api_error>(&parsed)) (void)error_body(*e);
  return 0;
}
