// The chat templates of the OpenAI chat endpoint: which one a model's Jinja template is,
// and the prompt text a conversation becomes under each (openai.hpp).
#include <string>
#include <string_view>

#include <fmt/format.h>

#include "frontend/openai.hpp"

namespace tokenmill::openai {
namespace {

std::string_view template_role(std::string_view role) {
  return role == "developer" ? std::string_view("system") : role;
}

}  // namespace

std::string_view to_string(chat_format f) {
  switch (f) {
    case chat_format::chatml:
      return "chatml";
    case chat_format::llama3:
      return "llama3";
    case chat_format::mistral:
      return "mistral";
  }
  return "unknown";
}

std::optional<chat_format> chat_format_from_name(std::string_view name) {
  if (name == "chatml") return chat_format::chatml;
  if (name == "llama3") return chat_format::llama3;
  if (name == "mistral") return chat_format::mistral;
  return std::nullopt;
}

std::optional<chat_format> detect_chat_format(std::string_view t) {
  if (t.find("<|start_header_id|>") != std::string_view::npos) return chat_format::llama3;
  if (t.find("<|im_start|>") != std::string_view::npos) return chat_format::chatml;
  if (t.find("[INST]") != std::string_view::npos) return chat_format::mistral;
  return std::nullopt;
}

// A trailing assistant message is rendered as a finished turn and a new assistant turn is
// opened after it (no "continue the last message" mode).
std::string render_chat(chat_format f, const std::vector<chat_message>& msgs) {
  std::string out;
  switch (f) {
    case chat_format::chatml:
      for (const auto& m : msgs)
        out += fmt::format("<|im_start|>{}\n{}<|im_end|>\n", template_role(m.role), m.content);
      out += "<|im_start|>assistant\n";
      break;
    case chat_format::llama3:
      for (const auto& m : msgs)
        out += fmt::format("<|start_header_id|>{}<|end_header_id|>\n\n{}<|eot_id|>",
                           template_role(m.role), m.content);
      out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
      break;
    case chat_format::mistral: {
      // Mistral v1: no system role; system text goes in front of the next user turn.
      // Tool results are rendered as user turns. The generation prompt is the [/INST].
      std::string pending_system;
      for (const auto& m : msgs) {
        const auto role = template_role(m.role);
        if (role == "system") {
          if (!pending_system.empty()) pending_system += "\n\n";
          pending_system += m.content;
        } else if (role == "assistant") {
          out += m.content;
          out += "</s>";
        } else {
          std::string user =
              pending_system.empty() ? m.content : pending_system + "\n\n" + m.content;
          pending_system.clear();
          out += fmt::format("[INST] {} [/INST]", user);
        }
      }
      if (!pending_system.empty()) out += fmt::format("[INST] {} [/INST]", pending_system);
      break;
    }
  }
  return out;
}

}  // namespace tokenmill::openai
