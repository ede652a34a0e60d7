// The chat templates of the OpenAI chat endpoint: which one a model's Jinja template is,
// and the prompt text a conversation becomes under each (openai.hpp).
#include <string>
#include <string_view>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "frontend/openai.hpp"

namespace tokenmill::openai {
namespace {

using ojson = nlohmann::ordered_json;

/// A JSON string literal (invalid UTF-8 replaced, never thrown).
std::string quote(const std::string& s) {
  return ojson(s).dump(-1, ' ', false, ojson::error_handler_t::replace);
}

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

std::optional<tool_syntax> tool_syntax_of(chat_format f) {
  switch (f) {
    case chat_format::chatml:
      return tool_syntax::hermes;
    case chat_format::llama3:
      return tool_syntax::llama3;
    case chat_format::mistral:
      return std::nullopt;
  }
  return std::nullopt;
}

namespace {

/// {"type": "function", "function": {"name", "description", "parameters"}}, the shape the
/// templates print (`tool | tojson`).
ojson tool_object(const tool_def& t) {
  ojson fn;
  fn["name"] = t.name;
  if (!t.description.empty()) fn["description"] = t.description;
  fn["parameters"] = ojson::parse(t.parameters.empty()
                                      ? std::string_view(R"({"type": "object", "properties": {}})")
                                      : std::string_view(t.parameters),
                                  nullptr, false);
  ojson j;
  j["type"] = "function";
  j["function"] = std::move(fn);
  return j;
}

/// Qwen 2.5's system-prompt block (its template, word for word, without the default
/// identity line).
std::string hermes_tools_block(const std::vector<tool_def>& tools) {
  std::string out =
      "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
      "You are provided with function signatures within <tools></tools> XML tags:\n<tools>";
  for (const auto& t : tools) {
    out += '\n';
    out += python_json(tool_object(t).dump(-1, ' ', false, ojson::error_handler_t::replace));
  }
  out +=
      "\n</tools>\n\nFor each function call, return a json object with function name and "
      "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": "
      "<function-name>, \"arguments\": <args-json-object>}\n</tool_call>";
  return out;
}

std::string render_chatml(const std::vector<chat_message>& msgs,
                          const std::vector<tool_def>& tools) {
  std::string out;
  size_t first = 0;
  if (!tools.empty()) {
    std::string system;
    if (!msgs.empty() && template_role(msgs[0].role) == "system") {
      system = msgs[0].content + "\n\n";
      first = 1;
    }
    out += fmt::format("<|im_start|>system\n{}{}<|im_end|>\n", system, hermes_tools_block(tools));
  }
  for (size_t i = first; i < msgs.size(); ++i) {
    const auto& m = msgs[i];
    if (m.role == "tool") {
      // Consecutive results share one user turn, as Qwen's template renders them.
      if (i == 0 || msgs[i - 1].role != "tool") out += "<|im_start|>user";
      out += fmt::format("\n<tool_response>\n{}\n</tool_response>", m.content);
      if (i + 1 == msgs.size() || msgs[i + 1].role != "tool") out += "<|im_end|>\n";
      continue;
    }
    if (m.role == "assistant" && !m.tool_calls.empty()) {
      out += "<|im_start|>assistant";
      if (!m.content.empty()) out += "\n" + m.content;
      for (const auto& c : m.tool_calls)
        out += fmt::format("\n<tool_call>\n{{\"name\": {}, \"arguments\": {}}}\n</tool_call>",
                           quote(c.name), python_json(c.arguments));
      out += "<|im_end|>\n";
      continue;
    }
    out += fmt::format("<|im_start|>{}\n{}<|im_end|>\n", template_role(m.role), m.content);
  }
  out += "<|im_start|>assistant\n";
  return out;
}

/// Llama 3.1's JSON tool calling: the tools go in front of the first user message (the
/// template's default, tools_in_user_message), a call is the whole assistant message.
std::string render_llama3(const std::vector<chat_message>& msgs,
                          const std::vector<tool_def>& tools) {
  std::string preamble;
  if (!tools.empty()) {
    preamble =
        "Given the following functions, please respond with a JSON for a function call with "
        "its proper arguments that best answers the given prompt.\n\nRespond in the format "
        "{\"name\": function name, \"parameters\": dictionary of argument name and its "
        "value}.Do not use variables.\n\n";
    for (const auto& t : tools)
      preamble += tool_object(t).dump(4, ' ', false, ojson::error_handler_t::replace) + "\n\n";
  }
  bool placed = tools.empty();
  std::string out;
  auto turn = [&](std::string_view role, std::string_view content) {
    out += fmt::format("<|start_header_id|>{}<|end_header_id|>\n\n{}<|eot_id|>", role, content);
  };
  for (const auto& m : msgs) {
    const auto role = template_role(m.role);
    if (role == "user" && !placed) {
      turn(role, preamble + m.content);
      placed = true;
    } else if (role == "assistant" && !m.tool_calls.empty()) {
      std::string calls;
      for (const auto& c : m.tool_calls) {
        if (!calls.empty()) calls += "; ";
        calls += fmt::format("{{\"name\": {}, \"parameters\": {}}}", quote(c.name),
                             python_json(c.arguments));
      }
      turn(role, calls);
    } else if (role == "tool") {
      turn("ipython", m.content);
    } else {
      turn(role, m.content);
    }
  }
  if (!placed) turn("user", preamble);  // no user turn: the tools still reach the model
  out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
  return out;
}

}  // namespace

// A trailing assistant message is rendered as a finished turn and a new assistant turn is
// opened after it (no "continue the last message" mode).
std::string render_chat(chat_format f, const std::vector<chat_message>& msgs,
                        const std::vector<tool_def>& tools) {
  std::string out;
  switch (f) {
    case chat_format::chatml:
      return render_chatml(msgs, tools);
    case chat_format::llama3:
      return render_llama3(msgs, tools);
    case chat_format::mistral: {
      // Mistral v1: no system role; system text goes in front of the next user turn.
      // Tool results are rendered as user turns. The generation prompt is the [/INST].
      // Tools and tool calls are refused by parse_request (v1 has no syntax for them).
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
