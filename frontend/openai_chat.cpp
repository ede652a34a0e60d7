// The chat templates of the OpenAI chat endpoint: which one a model's Jinja template is,
// and the prompt text a conversation becomes under each (openai.hpp).
#include <algorithm>
#include <string>
#include <string_view>
#include <vector>

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

/// The prompt text being rendered, and (when asked) where its turns and contents lie.
class chat_writer {
 public:
  explicit chat_writer(chat_layout* layout) : layout_(layout) {}
  /// A turn starts here (a cut point for chunking by messages).
  void turn() {
    if (layout_) layout_->turns.push_back(out_.size());
  }
  void text(std::string_view s) { out_ += s; }
  /// A message's content, whole or part by part.
  void content(const chat_message& m) {
    const size_t base = out_.size();
    out_ += m.content;
    if (!layout_) return;
    if (m.part_ends.empty()) {
      if (!m.content.empty()) layout_->contents.push_back({base, out_.size(), false});
      return;
    }
    size_t begin = 0;
    for (size_t end : m.part_ends) {
      end = std::min(end, m.content.size());
      if (end > begin) layout_->contents.push_back({base + begin, base + end, true});
      begin = std::max(begin, end);
    }
  }
  std::string take() { return std::move(out_); }

 private:
  chat_layout* layout_;
  std::string out_;
};

void render_chatml(const std::vector<chat_message>& msgs, const std::vector<tool_def>& tools,
                   chat_writer& w) {
  size_t first = 0;
  if (!tools.empty()) {
    w.turn();
    w.text("<|im_start|>system\n");
    if (!msgs.empty() && template_role(msgs[0].role) == "system") {
      w.content(msgs[0]);
      w.text("\n\n");
      first = 1;
    }
    w.text(hermes_tools_block(tools));
    w.text("<|im_end|>\n");
  }
  for (size_t i = first; i < msgs.size(); ++i) {
    const auto& m = msgs[i];
    w.turn();
    if (m.role == "tool") {
      // Consecutive results share one user turn, as Qwen's template renders them.
      if (i == 0 || msgs[i - 1].role != "tool") w.text("<|im_start|>user");
      w.text("\n<tool_response>\n");
      w.content(m);
      w.text("\n</tool_response>");
      if (i + 1 == msgs.size() || msgs[i + 1].role != "tool") w.text("<|im_end|>\n");
      continue;
    }
    if (m.role == "assistant" && !m.tool_calls.empty()) {
      w.text("<|im_start|>assistant");
      if (!m.content.empty()) {
        w.text("\n");
        w.content(m);
      }
      for (const auto& c : m.tool_calls)
        w.text(fmt::format("\n<tool_call>\n{{\"name\": {}, \"arguments\": {}}}\n</tool_call>",
                           quote(c.name), python_json(c.arguments)));
      w.text("<|im_end|>\n");
      continue;
    }
    w.text(fmt::format("<|im_start|>{}\n", template_role(m.role)));
    w.content(m);
    w.text("<|im_end|>\n");
  }
  w.turn();
  w.text("<|im_start|>assistant\n");
}

/// Llama 3.1's JSON tool calling: the tools go in front of the first user message (the
/// template's default, tools_in_user_message), a call is the whole assistant message.
void render_llama3(const std::vector<chat_message>& msgs, const std::vector<tool_def>& tools,
                   chat_writer& w) {
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
  auto header = [&](std::string_view role) {
    w.turn();
    w.text(fmt::format("<|start_header_id|>{}<|end_header_id|>\n\n", role));
  };
  for (const auto& m : msgs) {
    const auto role = template_role(m.role);
    if (role == "user" && !placed) {
      header(role);
      w.text(preamble);
      w.content(m);
      placed = true;
    } else if (role == "assistant" && !m.tool_calls.empty()) {
      std::string calls;
      for (const auto& c : m.tool_calls) {
        if (!calls.empty()) calls += "; ";
        calls += fmt::format("{{\"name\": {}, \"parameters\": {}}}", quote(c.name),
                             python_json(c.arguments));
      }
      header(role);
      w.text(calls);
    } else {
      header(role == "tool" ? std::string_view("ipython") : role);
      w.content(m);
    }
    w.text("<|eot_id|>");
  }
  if (!placed) {  // no user turn: the tools still reach the model
    header("user");
    w.text(preamble);
    w.text("<|eot_id|>");
  }
  w.turn();
  w.text("<|start_header_id|>assistant<|end_header_id|>\n\n");
}

/// Mistral v1: no system role; system text goes in front of the next user turn. Tool
/// results are rendered as user turns. The generation prompt is the [/INST]. Tools and
/// tool calls are refused by parse_request (v1 has no syntax for them).
void render_mistral(const std::vector<chat_message>& msgs, chat_writer& w) {
  std::vector<const chat_message*> pending;  // system messages not yet placed
  // Writes the pending system text, joined by blank lines (one goes before a message only
  // when the text so far is not empty); true when that text is not empty.
  auto put_pending = [&] {
    bool any = false;
    for (const auto* p : pending) {
      if (any) w.text("\n\n");
      w.content(*p);
      any = any || !p->content.empty();
    }
    pending.clear();
    return any;
  };
  auto pending_empty = [&] {
    return std::all_of(pending.begin(), pending.end(),
                       [](const chat_message* p) { return p->content.empty(); });
  };
  for (const auto& m : msgs) {
    const auto role = template_role(m.role);
    if (role == "system") {
      pending.push_back(&m);
      continue;
    }
    w.turn();
    if (role == "assistant") {
      w.content(m);
      w.text("</s>");
      continue;
    }
    w.text("[INST] ");
    if (put_pending()) w.text("\n\n");
    w.content(m);
    w.text(" [/INST]");
  }
  if (!pending_empty()) {
    w.turn();
    w.text("[INST] ");
    put_pending();
    w.text(" [/INST]");
  }
  w.turn();  // the generation prompt (empty: the [/INST] opens the answer)
}

std::string render(chat_format f, const std::vector<chat_message>& msgs,
                   const std::vector<tool_def>& tools, chat_layout* layout) {
  chat_writer w(layout);
  switch (f) {
    case chat_format::chatml:
      render_chatml(msgs, tools, w);
      break;
    case chat_format::llama3:
      render_llama3(msgs, tools, w);
      break;
    case chat_format::mistral:
      render_mistral(msgs, w);
      break;
  }
  return w.take();
}

}  // namespace

// A trailing assistant message is rendered as a finished turn and a new assistant turn is
// opened after it (no "continue the last message" mode).
std::string render_chat(chat_format f, const std::vector<chat_message>& msgs,
                        const std::vector<tool_def>& tools) {
  return render(f, msgs, tools, nullptr);
}

std::string render_chat(chat_format f, const std::vector<chat_message>& msgs,
                        const std::vector<tool_def>& tools, chat_layout& layout) {
  layout = {};
  return render(f, msgs, tools, &layout);
}

std::optional<chat_chunking> chat_chunking_from_name(std::string_view name) {
  if (name == "messages") return chat_chunking::messages;
  if (name == "parts") return chat_chunking::parts;
  return std::nullopt;
}

std::vector<std::string> cut_chat(std::string_view text, const chat_layout& layout,
                                  chat_chunking mode) {
  if (text.empty()) return {};
  if (mode == chat_chunking::none) return {std::string(text)};
  std::vector<size_t> cuts = layout.turns;
  if (mode == chat_chunking::parts)
    for (const auto& c : layout.contents)
      if (c.part) {
        cuts.push_back(c.begin);
        cuts.push_back(c.end);
      }
  cuts.push_back(0);
  cuts.push_back(text.size());
  for (auto& c : cuts)
    c = std::min(c, text.size());
  std::sort(cuts.begin(), cuts.end());
  cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
  // By parts, a piece holding no content is template text only: merged with its template
  // neighbours (an end marker and the next header, say), so that they cost one segment.
  auto template_only = [&](size_t b, size_t e) {
    return std::none_of(layout.contents.begin(), layout.contents.end(),
                        [&](const chat_layout::span& c) { return c.begin < e && b < c.end; });
  };
  struct piece {
    size_t begin, end;
    bool template_only;
  };
  std::vector<piece> pieces;
  for (size_t i = 0; i + 1 < cuts.size(); ++i) {
    const size_t b = cuts[i], e = cuts[i + 1];
    const bool t = mode == chat_chunking::parts && template_only(b, e);
    if (t && !pieces.empty() && pieces.back().template_only)
      pieces.back().end = e;
    else
      pieces.push_back({b, e, t});
  }
  std::vector<std::string> out;
  out.reserve(pieces.size());
  for (const auto& p : pieces)
    out.emplace_back(text.substr(p.begin, p.end - p.begin));
  return out;
}

void set_chat_prompt(std::string text, const chat_layout& layout, chat_chunking mode,
                     generate_params& p) {
  p.segments.clear();
  p.token_ids.clear();
  if (mode == chat_chunking::none) {
    p.has_text = true;
    p.text = std::move(text);
    return;
  }
  for (auto& piece : cut_chat(text, layout, mode))
    p.segments.push_back({true, std::move(piece), {}});
  p.segments_field = "tokenmill.chunks";
  p.has_text = false;
  p.text.clear();
}

}  // namespace tokenmill::openai
