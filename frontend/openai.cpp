#include "frontend/openai.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <utility>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "frontend/detail/json_fields.hpp"
#include "frontend/validate.hpp"
#include "grammar/json_schema.hpp"

namespace tokenmill::openai {
namespace {

using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

using namespace fields;

const char* kind_name(endpoint kind) {
  return kind == endpoint::completions ? "text_completion" : "chat.completion";
}

/// One prompt as token ids: `ids` is an array of integers named `name`.
void parse_ids(const json& ids, const std::string& name, generate_params& p) {
  if (ids.empty()) fail(name, fmt::format("'{}' is empty", name));
  p.has_text = false;
  p.token_ids.reserve(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    const json& id = ids[i];
    const auto n = fmt::format("{}[{}]", name, i);
    if (!id.is_number())
      fail(n, fmt::format("'{}' must be an integer token id, got {}", n, id.type_name()));
    p.token_ids.push_back(get_int(id, n));
  }
}

/// The completion prompts: a string, an array of strings, an array of token ids, or an
/// array of arrays of token ids. Each comes back as the prompt fields of one
/// generate_params (has_text, text, token_ids).
std::vector<generate_params> parse_prompts(const json& body) {
  const json* prompt = field(body, "prompt");
  if (!prompt) fail("prompt", "'prompt' is required");
  std::vector<generate_params> out(1);
  if (prompt->is_string()) {
    out[0].text = prompt->get<std::string>();
    if (out[0].text.empty()) fail("prompt", "'prompt' is empty");
    return out;
  }
  if (!prompt->is_array())
    fail("prompt", fmt::format("'prompt' must be a string, an array of strings or an array of "
                               "token ids, got {}",
                               prompt->type_name()));
  if (prompt->empty()) fail("prompt", "'prompt' is empty");
  const json& first = prompt->front();
  if (!first.is_string() && !first.is_array()) {
    parse_ids(*prompt, "prompt", out[0]);
    return out;
  }
  // A list of prompts, all strings or all arrays of ids.
  if (prompt->size() > max_prompts)
    fail("prompt", fmt::format("'prompt' lists {} prompts; at most {} are allowed", prompt->size(),
                               max_prompts));
  out.assign(prompt->size(), generate_params{});
  for (size_t i = 0; i < prompt->size(); ++i) {
    const json& one = (*prompt)[i];
    const auto name = fmt::format("prompt[{}]", i);
    if (first.is_string()) {
      out[i].text = get_string(one, name);
      if (out[i].text.empty()) fail(name, fmt::format("'{}' is empty", name));
    } else {
      if (!one.is_array())
        fail(name,
             fmt::format("'{}' must be an array of token ids, got {}", name, one.type_name()));
      parse_ids(one, name, out[i]);
    }
  }
  return out;
}

/// A message's content: a string or an array of {"type":"text","text"} parts, joined
/// (`part_ends`: where each part ends, for chunking by parts).
std::string parse_content(const json& msg, const std::string& name, const std::string& role,
                          std::vector<size_t>& part_ends) {
  const json* content = field(msg, "content");
  if (!content) {
    // An assistant turn that only called tools has null content.
    if (role == "assistant") return {};
    fail(name, fmt::format("'{}' is required", name));
  }
  return text_content(*content, name, {"text"}, "only 'text' content parts are supported",
                      &part_ends);
}

/// One call of an assistant message: {id, type: "function", function: {name, arguments}},
/// arguments a string holding a JSON object (as OpenAI sends them back).
tool_call parse_message_call(const json& c, const std::string& name) {
  if (!c.is_object())
    fail(name, fmt::format("'{}' must be an object, got {}", name, c.type_name()));
  tool_call out;
  if (const json* id = field(c, "id")) out.id = get_string(*id, name + ".id");
  if (const json* t = field(c, "type"); t && get_string(*t, name + ".type") != "function")
    fail(name + ".type", fmt::format("'{}.type' must be \"function\"", name));
  const json* fn = field(c, "function");
  if (!fn) fail(name + ".function", fmt::format("'{}.function' is required", name));
  if (!fn->is_object())
    fail(name + ".function",
         fmt::format("'{}.function' must be an object, got {}", name, fn->type_name()));
  const json* n = field(*fn, "name");
  if (!n) fail(name + ".function.name", fmt::format("'{}.function.name' is required", name));
  out.name = get_string(*n, name + ".function.name");
  const auto args_name = name + ".function.arguments";
  const json* a = field(*fn, "arguments");
  if (!a) {
    out.arguments = "{}";
  } else {
    const std::string& text = get_string(*a, args_name);
    // Parsed keeping key order: the prompt shows them as the model wrote them.
    const ojson parsed = ojson::parse(text, nullptr, false);
    if (!parsed.is_object())
      fail(args_name, fmt::format("'{}' must be a JSON object in a string, got {}", args_name,
                                  parsed.is_discarded() ? std::string("text that is not JSON")
                                                        : std::string(parsed.type_name())));
    out.arguments = dump(parsed);
  }
  return out;
}

std::vector<chat_message> parse_messages(const json& body, chat_format format) {
  const json* messages = field(body, "messages");
  if (!messages) fail("messages", "'messages' is required");
  if (!messages->is_array())
    fail("messages", fmt::format("'messages' must be an array, got {}", messages->type_name()));
  if (messages->empty()) fail("messages", "'messages' must not be empty");
  std::vector<chat_message> out;
  out.reserve(messages->size());
  for (size_t i = 0; i < messages->size(); ++i) {
    const json& m = (*messages)[i];
    const auto name = fmt::format("messages[{}]", i);
    if (!m.is_object())
      fail(name, fmt::format("'{}' must be an object, got {}", name, m.type_name()));
    const auto& r = get_role(m, name, {"system", "developer", "user", "assistant", "tool"},
                             "system, developer, user, assistant, tool");
    chat_message msg{r, {}, {}, {}};
    msg.content = parse_content(m, name + ".content", r, msg.part_ends);
    if (const json* calls = field(m, "tool_calls")) {
      const auto calls_name = name + ".tool_calls";
      if (r != "assistant")
        fail(calls_name, fmt::format("'{}' is only allowed on assistant messages", calls_name));
      if (!calls->is_array())
        fail(calls_name,
             fmt::format("'{}' must be an array, got {}", calls_name, calls->type_name()));
      if (!calls->empty() && !tool_syntax_of(format))
        fail(calls_name, fmt::format("'{}': the {} chat format has no tool-call syntax; serve "
                                     "the model with the chatml or llama3 format for tools",
                                     calls_name, to_string(format)));
      for (size_t j = 0; j < calls->size(); ++j)
        msg.tool_calls.push_back(
            parse_message_call((*calls)[j], fmt::format("{}[{}]", calls_name, j)));
    }
    if (r == "tool") {
      const auto id_name = name + ".tool_call_id";
      const json* id = field(m, "tool_call_id");
      if (!id) fail(id_name, fmt::format("'{}' is required on tool messages", id_name));
      msg.tool_call_id = get_string(*id, id_name);
    }
    out.push_back(std::move(msg));
  }
  return out;
}

/// max_tokens (chat: max_completion_tokens wins); nullopt when neither is given.
std::optional<int64_t> parse_max_tokens(const json& body, endpoint kind) {
  std::optional<int64_t> n;
  const char* keys[] = {"max_tokens", "max_completion_tokens"};
  const size_t nkeys = kind == endpoint::chat_completions ? 2 : 1;
  for (size_t k = 0; k < nkeys; ++k) {
    const json* v = field(body, keys[k]);
    if (!v) continue;
    const int64_t value = get_int(*v, keys[k]);
    if (value < 1) fail(keys[k], fmt::format("'{}' must be at least 1, got {}", keys[k], value));
    n = value;  // later keys win
  }
  return n;
}

void parse_sampling(const json& body, sampling_params& s) {
  if (const json* v = field(body, "temperature")) {
    s.temperature = get_float(*v, "temperature");
    if (s.temperature < 0)
      fail("temperature", fmt::format("'temperature' must be >= 0, got {}", s.temperature));
  }
  if (const json* v = field(body, "top_p")) {
    s.top_p = get_float(*v, "top_p");
    if (s.top_p <= 0 || s.top_p > 1)
      fail("top_p", fmt::format("'top_p' must be in (0, 1], got {}", s.top_p));
  }
  if (const json* v = field(body, "top_k")) {
    const int64_t k = get_int(*v, "top_k");
    if (k < -1) fail("top_k", fmt::format("'top_k' must be -1 (off) or >= 0, got {}", k));
    // -1 is vLLM's "off", as is 0 here; values above the vocabulary keep every token.
    s.top_k = k <= 0 ? 0 : static_cast<uint32_t>(std::min<int64_t>(k, UINT32_MAX));
  }
  if (const json* v = field(body, "min_p")) {
    s.min_p = get_float(*v, "min_p");
    if (s.min_p < 0 || s.min_p > 1)
      fail("min_p", fmt::format("'min_p' must be in [0, 1], got {}", s.min_p));
  }
  if (const json* v = field(body, "seed")) {
    if (v->is_number_unsigned())
      s.seed = v->get<uint64_t>();
    else
      s.seed = static_cast<uint64_t>(get_int(*v, "seed"));  // negative seeds wrap
  }
  if (const json* v = field(body, "presence_penalty")) {
    s.presence_penalty = get_float(*v, "presence_penalty");
    if (s.presence_penalty < -2 || s.presence_penalty > 2)
      fail("presence_penalty",
           fmt::format("'presence_penalty' must be in [-2, 2], got {}", s.presence_penalty));
  }
  if (const json* v = field(body, "frequency_penalty")) {
    s.frequency_penalty = get_float(*v, "frequency_penalty");
    if (s.frequency_penalty < -2 || s.frequency_penalty > 2)
      fail("frequency_penalty",
           fmt::format("'frequency_penalty' must be in [-2, 2], got {}", s.frequency_penalty));
  }
  if (const json* v = field(body, "repetition_penalty")) {
    s.repetition_penalty = get_float(*v, "repetition_penalty");
    if (s.repetition_penalty <= 0)
      fail("repetition_penalty",
           fmt::format("'repetition_penalty' must be > 0, got {}", s.repetition_penalty));
  }
}

/// logit_bias: {"<token id>": bias in [-100, 100], ...}. Ids are checked against the
/// vocabulary by validate().
void parse_logit_bias(const json& body, generate_params& p) {
  const json* v = field(body, "logit_bias");
  if (!v) return;
  if (!v->is_object())
    fail("logit_bias", fmt::format("'logit_bias' must be an object mapping token ids to biases, "
                                   "got {}",
                                   v->type_name()));
  for (const auto& [key, value] : v->items()) {
    const auto name = fmt::format("logit_bias.{}", key);
    int64_t id = 0;
    const char* b = key.data();
    const char* e = b + key.size();
    auto [end, ec] = std::from_chars(b, e, id);
    if (key.empty() || ec != std::errc{} || end != e)
      fail(name,
           fmt::format("'logit_bias' keys must be token ids (integers as strings), got '{}'", key));
    const double bias = get_number(value, name);
    if (!std::isfinite(bias) || bias < -100 || bias > 100)
      fail(name, fmt::format("'{}' must be in [-100, 100], got {}", name, bias));
    p.logit_bias.emplace_back(id, bias);
  }
}

/// chat: logprobs (bool) and top_logprobs (0..20, only with logprobs); completions:
/// logprobs (0..5, the number of alternatives; the chosen token's is always reported).
void parse_logprobs(const json& body, endpoint kind, generate_params& p) {
  const json* lp = field(body, "logprobs");
  const json* top = field(body, "top_logprobs");
  if (kind == endpoint::completions) {
    if (top)
      fail("top_logprobs",
           "'top_logprobs' is a chat option; completions take 'logprobs': N (0 to 5)");
    if (!lp) return;
    if (lp->is_boolean())
      fail("logprobs", "'logprobs' must be an integer from 0 to 5 on /v1/completions, got boolean");
    const int64_t n = get_int(*lp, "logprobs");
    if (n < 0 || n > 5) fail("logprobs", fmt::format("'logprobs' must be in [0, 5], got {}", n));
    p.top_logprobs = n;
    return;
  }
  const bool on = lp && get_bool(*lp, "logprobs");
  int64_t n = 0;
  if (top) {
    n = get_int(*top, "top_logprobs");
    if (n < 0 || n > 20)
      fail("top_logprobs", fmt::format("'top_logprobs' must be in [0, 20], got {}", n));
    if (!on) fail("top_logprobs", "'top_logprobs' requires 'logprobs': true");
  }
  if (on) p.top_logprobs = n;
}

/// Structured output: `response_format` ({"type": "text" | "json_object" | "json_schema",
/// "json_schema": {"name", "schema", "strict", "description"}}) and the extension
/// `tokenmill: {"regex": "..."}`. Only the shape is checked here; validate() compiles the
/// grammar and names `p.grammar_field` when it is refused. `text` is the body as sent: the
/// schema is taken from it with its keys in the order written, which is the order the
/// output's properties follow.
void parse_response_format(const json& body, std::string_view text, generate_params& p) {
  if (const json* rf = field(body, "response_format")) {
    if (!rf->is_object())
      fail("response_format",
           fmt::format("'response_format' must be an object, got {}", rf->type_name()));
    const json* t = field(*rf, "type");
    if (!t) fail("response_format.type", "'response_format.type' is required");
    const std::string& type = get_string(*t, "response_format.type");
    if (type == "json_object") {
      p.sampling.grammar = grammar_kind::json_object;
      p.grammar_field = "response_format";
    } else if (type == "json_schema") {
      const json* js = field(*rf, "json_schema");
      if (!js)
        fail("response_format.json_schema",
             "'response_format.json_schema' is required when type is \"json_schema\"");
      if (!js->is_object())
        fail("response_format.json_schema",
             fmt::format("'response_format.json_schema' must be an object, got {}",
                         js->type_name()));
      if (const json* n = field(*js, "name")) get_string(*n, "response_format.json_schema.name");
      if (const json* d = field(*js, "description"))
        get_string(*d, "response_format.json_schema.description");
      if (const json* s = field(*js, "strict")) get_bool(*s, "response_format.json_schema.strict");
      const json* schema = field(*js, "schema");
      if (!schema)
        fail("response_format.json_schema.schema",
             "'response_format.json_schema.schema' is required");
      if (!schema->is_object() && !schema->is_boolean())
        fail("response_format.json_schema.schema",
             fmt::format("'response_format.json_schema.schema' must be an object, got {}",
                         schema->type_name()));
      // The same body again, keeping key order (nlohmann::json sorts keys).
      const ojson ordered = ojson::parse(text);
      p.sampling.grammar = grammar_kind::json_schema;
      p.sampling.grammar_source = ordered["response_format"]["json_schema"]["schema"].dump();
      p.grammar_field = "response_format.json_schema.schema";
    } else if (type != "text") {
      fail("response_format.type",
           fmt::format("'response_format.type' must be \"text\", \"json_object\" or "
                       "\"json_schema\", got \"{}\"",
                       type));
    }
  }
  if (const json* ext = field(body, "tokenmill")) {
    if (!ext->is_object())
      fail("tokenmill", fmt::format("'tokenmill' must be an object, got {}", ext->type_name()));
    for (const auto& [key, _] : ext->items())
      if (key != "regex" && key != "segments" && key != "chunks" && key != "recompute_ratio")
        fail("tokenmill." + key,
             fmt::format("unknown field 'tokenmill.{}' (the extension has: regex, segments, "
                         "chunks, recompute_ratio)",
                         key));
    if (const json* re = field(*ext, "regex")) {
      const std::string& r = get_string(*re, "tokenmill.regex");
      if (p.sampling.grammar != grammar_kind::none)
        fail("tokenmill.regex",
             "'tokenmill.regex' cannot be combined with a JSON 'response_format'");
      if (r.empty()) fail("tokenmill.regex", "'tokenmill.regex' is empty");
      p.sampling.grammar = grammar_kind::regex;
      p.sampling.grammar_source = r;
      p.grammar_field = "tokenmill.regex";
    }
  }
}

/// Chunk reuse (issue 17): `tokenmill: {"segments": [...], "recompute_ratio": r}` on
/// completions, the prompt given as segments instead of `prompt`: each a string (text) or
/// an array of token ids. True when the body has segments. Shapes are checked here; counts,
/// ids and the ratio's range by validate().
bool parse_segments(const json& body, endpoint kind, generate_params& p) {
  const json* ext = field(body, "tokenmill");
  if (!ext || !ext->is_object()) return false;  // (a non-object is refused with the regex)
  const json* segs = field(*ext, "segments");
  const json* ratio = field(*ext, "recompute_ratio");
  if (!segs) {
    if (ratio && !field(*ext, "chunks"))
      fail("tokenmill.recompute_ratio",
           "'tokenmill.recompute_ratio' is only allowed with 'tokenmill.segments' (completions) "
           "or 'tokenmill.chunks' (chat)");
    return false;
  }
  if (kind != endpoint::completions)
    fail("tokenmill.segments",
         "'tokenmill.segments' is only supported on /v1/completions (give the prompt as segments "
         "there)");
  if (field(body, "prompt"))
    fail("tokenmill.segments",
         "'tokenmill.segments' replaces 'prompt': send one or the other, not both");
  if (!segs->is_array())
    fail("tokenmill.segments", fmt::format("'tokenmill.segments' must be an array of strings or of "
                                           "arrays of token ids, got {}",
                                           segs->type_name()));
  if (segs->empty()) fail("tokenmill.segments", "'tokenmill.segments' is empty");
  p.segments.clear();
  for (size_t i = 0; i < segs->size(); ++i) {
    const json& one = (*segs)[i];
    const auto name = fmt::format("tokenmill.segments[{}]", i);
    prompt_segment ps;
    if (one.is_string()) {
      ps.text = one.get<std::string>();
    } else if (one.is_array()) {
      ps.has_text = false;
      for (size_t k = 0; k < one.size(); ++k) {
        const auto n = fmt::format("{}[{}]", name, k);
        if (!one[k].is_number())
          fail(n, fmt::format("'{}' must be an integer token id, got {}", n, one[k].type_name()));
        ps.token_ids.push_back(get_int(one[k], n));
      }
    } else {
      fail(name, fmt::format("'{}' must be a string or an array of token ids, got {}", name,
                             one.type_name()));
    }
    p.segments.push_back(std::move(ps));
  }
  p.segments_field = "tokenmill.segments";
  p.has_text = false;
  p.text.clear();
  p.token_ids.clear();
  if (ratio) p.recompute_ratio = get_number(*ratio, "tokenmill.recompute_ratio");
  return true;
}

/// Chunk reuse on chat (issue 17): `tokenmill: {"chunks": "messages" | "parts",
/// "recompute_ratio": r}`: the rendered conversation is cut into segments (cut_chat). none
/// when the body does not ask; the ratio goes to `p` (its range is validate()'s).
chat_chunking parse_chunks(const json& body, endpoint kind, generate_params& p) {
  const json* ext = field(body, "tokenmill");
  if (!ext || !ext->is_object()) return chat_chunking::none;
  const json* chunks = field(*ext, "chunks");
  if (!chunks) return chat_chunking::none;
  if (kind != endpoint::chat_completions)
    fail("tokenmill.chunks",
         "'tokenmill.chunks' is only supported on /v1/chat/completions and /v1/responses (on "
         "/v1/completions give the prompt as 'tokenmill.segments')");
  const chat_chunking mode = get_chat_chunking(*chunks);
  if (const json* ratio = field(*ext, "recompute_ratio"))
    p.recompute_ratio = get_number(*ratio, "tokenmill.recompute_ratio");
  return mode;
}

void parse_stops(const json& body, generate_params& p) {
  if (const json* v = field(body, "stop")) {
    if (v->is_string()) {
      p.stop_strings.push_back(v->get<std::string>());
    } else if (v->is_array()) {
      for (size_t i = 0; i < v->size(); ++i)
        p.stop_strings.push_back(get_string((*v)[i], fmt::format("stop[{}]", i)));
    } else {
      fail("stop",
           fmt::format("'stop' must be a string or an array of strings, got {}", v->type_name()));
    }
  }
  if (const json* v = field(body, "stop_token_ids")) {
    if (!v->is_array())
      fail("stop_token_ids",
           fmt::format("'stop_token_ids' must be an array of integers, got {}", v->type_name()));
    for (size_t i = 0; i < v->size(); ++i)
      p.stop_ids.push_back(get_int((*v)[i], fmt::format("stop_token_ids[{}]", i)));
  }
}

/// n, best_of and echo, and what they may not be combined with.
void parse_fanout(const json& body, endpoint kind, parsed_request& r) {
  int64_t n = 1;
  if (const json* v = field(body, "n")) {
    n = get_int(*v, "n");
    if (n < 1 || n > max_n) fail("n", fmt::format("'n' must be in [1, {}], got {}", max_n, n));
  }
  r.n = static_cast<uint32_t>(n);
  r.best_of = r.n;
  if (kind != endpoint::completions) return;
  if (const json* v = field(body, "best_of")) {
    const int64_t b = get_int(*v, "best_of");
    if (b < n || b > max_n)
      fail("best_of", fmt::format("'best_of' must be in [n, {}] (n is {}), got {}", max_n, n, b));
    r.best_of = static_cast<uint32_t>(b);
  }
  if (const json* v = field(body, "echo")) r.echo = get_bool(*v, "echo");
}
/// Most tools one request may declare (OpenAI's limit).
constexpr size_t k_max_tools = 128;

/// OpenAI's rule for function names: [a-zA-Z0-9_-], 1 to 64 characters.
bool valid_tool_name(const std::string& n) {
  if (n.empty() || n.size() > 64) return false;
  return std::all_of(n.begin(), n.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-';
  });
}

/// One entry of `tools`: {type: "function", function: {name, description, parameters,
/// strict}}; `schema` is the same entry's parameters with their key order.
tool_def parse_tool(const json& t, const ojson& ordered, const std::string& name) {
  if (!t.is_object())
    fail(name, fmt::format("'{}' must be an object, got {}", name, t.type_name()));
  if (const json* type = field(t, "type")) {
    const auto& ts = get_string(*type, name + ".type");
    if (ts != "function")
      fail(name + ".type",
           fmt::format("'{}.type' must be \"function\" (the only kind of tool), got \"{}\"", name,
                       ts));
  }
  const auto fn_name = name + ".function";
  const json* fn = field(t, "function");
  if (!fn) fail(fn_name, fmt::format("'{}' is required", fn_name));
  if (!fn->is_object())
    fail(fn_name, fmt::format("'{}' must be an object, got {}", fn_name, fn->type_name()));
  tool_def d;
  const json* n = field(*fn, "name");
  if (!n) fail(fn_name + ".name", fmt::format("'{}.name' is required", fn_name));
  d.name = get_string(*n, fn_name + ".name");
  if (!valid_tool_name(d.name))
    fail(fn_name + ".name",
         fmt::format("'{}.name' must be 1 to 64 of a-z, A-Z, 0-9, '_' and '-', got \"{}\"", fn_name,
                     d.name));
  if (const json* v = field(*fn, "description"))
    d.description = get_string(*v, fn_name + ".description");
  if (const json* v = field(*fn, "strict")) d.strict = get_bool(*v, fn_name + ".strict");
  if (const json* v = field(*fn, "parameters")) {
    if (!v->is_object())
      fail(fn_name + ".parameters",
           fmt::format("'{}.parameters' must be a JSON Schema object, got {}", fn_name,
                       v->type_name()));
    d.parameters = ordered["function"]["parameters"].dump();
  }
  return d;
}

/// tools, tool_choice and parallel_tool_calls. The tools are shown to the model (by
/// render_chat) unless the choice is none; required and named are enforced later by
/// constrain_tools, once response_format is known.
void parse_tools(const json& body, std::string_view text, endpoint kind, chat_format format,
                 parsed_request& r) {
  if (const json* v = field(body, "parallel_tool_calls"))
    r.parallel_tool_calls = get_bool(*v, "parallel_tool_calls");
  if (const json* tools = field(body, "tools")) {
    if (!tools->is_array())
      fail("tools", fmt::format("'tools' must be an array, got {}", tools->type_name()));
    if (!tools->empty() && kind != endpoint::chat_completions)
      fail("tools", "'tools' is only supported on /v1/chat/completions");
    if (tools->size() > k_max_tools)
      fail("tools", fmt::format("'tools' lists {} tools; at most {} are allowed", tools->size(),
                                k_max_tools));
    if (!tools->empty()) {
      // The same body again, keeping key order (nlohmann::json sorts keys): parameters
      // are shown to the model and compiled in the order written.
      const ojson ordered = ojson::parse(text);
      const ojson& list = ordered["tools"];
      for (size_t i = 0; i < tools->size(); ++i) {
        const auto name = fmt::format("tools[{}]", i);
        auto d = parse_tool((*tools)[i], list[i], name);
        for (size_t j = 0; j < r.tools.size(); ++j)
          if (r.tools[j].name == d.name)
            fail(name + ".function.name",
                 fmt::format("'{}.function.name' \"{}\" is also the name of tools[{}]; names "
                             "must be unique",
                             name, d.name, j));
        r.tools.push_back(std::move(d));
      }
    }
  }
  r.tools_choice = r.tools.empty() ? tool_choice::none : tool_choice::automatic;
  if (const json* c = field(body, "tool_choice")) {
    if (c->is_string()) {
      const auto& cs = c->get_ref<const std::string&>();
      if (cs == "none") {
        r.tools_choice = tool_choice::none;
      } else if (cs == "auto") {
        // auto without tools: nothing to call, plain text (OpenAI says the same thing).
      } else if (cs == "required") {
        if (r.tools.empty()) fail("tool_choice", "'tool_choice' \"required\" needs 'tools'");
        r.tools_choice = tool_choice::required;
      } else {
        fail("tool_choice",
             fmt::format("'tool_choice' must be \"none\", \"auto\", \"required\" or "
                         "{{\"type\": \"function\", \"function\": {{\"name\": ...}}}}, got \"{}\"",
                         cs));
      }
    } else if (c->is_object()) {
      if (const json* t = field(*c, "type"); !t || get_string(*t, "tool_choice.type") != "function")
        fail("tool_choice.type", "'tool_choice.type' must be \"function\"");
      const json* fn = field(*c, "function");
      if (!fn || !fn->is_object())
        fail("tool_choice.function", "'tool_choice.function' must be an object with a name");
      const json* n = field(*fn, "name");
      if (!n) fail("tool_choice.function.name", "'tool_choice.function.name' is required");
      r.tool_choice_name = get_string(*n, "tool_choice.function.name");
      if (r.tools.empty())
        fail("tool_choice", "'tool_choice' names a function but 'tools' lists none");
      std::string names;
      bool found = false;
      for (const auto& t : r.tools) {
        found = found || t.name == r.tool_choice_name;
        names += (names.empty() ? "" : ", ") + t.name;
      }
      if (!found)
        fail("tool_choice.function.name",
             fmt::format("'tool_choice.function.name' \"{}\" is not in 'tools' (it has: {})",
                         r.tool_choice_name, names));
      r.tools_choice = tool_choice::named;
    } else {
      fail("tool_choice",
           fmt::format("'tool_choice' must be a string or an object, got {}", c->type_name()));
    }
  }
  if (r.tools_choice == tool_choice::none) return;
  r.tool_parse = tool_syntax_of(format);
  if (!r.tool_parse)
    fail("tools", fmt::format("tools are not supported with the {} chat format (its template has "
                              "no tool-call syntax); serve the model with the chatml or llama3 "
                              "format, or send tool_choice \"none\"",
                              to_string(format)));
}

/// tool_choice required or named: the output is one call, its arguments valid under the
/// function's parameters (an alternation over the tools for required), through the same
/// grammar path as response_format.
void constrain_tools(parsed_request& r) {
  if (r.tools_choice != tool_choice::required && r.tools_choice != tool_choice::named) return;
  auto& p = r.params;
  const char* what = r.tools_choice == tool_choice::required ? "\"required\"" : "a function";
  if (p.sampling.grammar != grammar_kind::none)
    fail("tool_choice",
         fmt::format("'tool_choice' {} constrains the output to a tool call; it cannot be "
                     "combined with '{}'",
                     what, p.grammar_field));
  std::string alternatives;
  for (size_t i = 0; i < r.tools.size(); ++i) {
    const auto& t = r.tools[i];
    if (r.tools_choice == tool_choice::named && t.name != r.tool_choice_name) continue;
    std::string args = "\\{[ ]?\\}";  // no parameters: an empty object
    if (!t.parameters.empty()) {
      auto re = grammar::json_schema_to_regex(t.parameters);
      if (!re) {
        const auto name = fmt::format("tools[{}].function.parameters", i);
        fail(name, fmt::format("'{}' cannot constrain the call (tool_choice is {}): {}", name, what,
                               re.error().message));
      }
      args = std::move(*re);
    }
    if (!alternatives.empty()) alternatives += '|';
    alternatives += "(?:" + tool_call_regex(*r.tool_parse, t.name, args) + ")";
  }
  p.sampling.grammar = grammar_kind::regex;
  p.sampling.grammar_source = std::move(alternatives);
  p.grammar_field = "tool_choice";
}

/// The chat prompt set by set_chat_prompt, refused here when it has more segments than a
/// request may (validate() would too; this message says how to send fewer).
void chat_prompt(std::string text, const chat_layout& layout, chat_chunking mode,
                 generate_params& p) {
  set_chat_prompt(std::move(text), layout, mode, p);
  if (p.segments.size() > max_request_segments)
    fail("tokenmill.chunks",
         fmt::format("'tokenmill.chunks' \"{}\" cuts this conversation into {} segments; at most "
                     "{} are allowed (send fewer messages or content parts{})",
                     mode == chat_chunking::parts ? "parts" : "messages", p.segments.size(),
                     max_request_segments,
                     mode == chat_chunking::parts ? ", or chunk by \"messages\"" : ""));
}

parsed_request parse(endpoint kind, std::string_view text, const request_context& ctx) {
  auto body = parse_body<json>(text);
  parsed_request r;
  r.kind = kind;
  r.model = get_model(body, ctx);
  parse_tools(body, text, kind, ctx.format, r);

  auto& p = r.params;
  parse_fanout(body, kind, r);
  std::vector<generate_params> prompts;
  const chat_chunking chunking = parse_chunks(body, kind, p);
  if (parse_segments(body, kind, p)) {
    p.add_bos = true;
  } else if (kind == endpoint::completions) {
    prompts = parse_prompts(body);
    p.has_text = prompts[0].has_text;
    p.text = prompts[0].text;
    p.token_ids = prompts[0].token_ids;
    p.add_bos = true;
  } else {
    chat_layout layout;
    auto text = render_chat(ctx.format, parse_messages(body, ctx.format),
                            r.tools_choice == tool_choice::none ? std::vector<tool_def>{} : r.tools,
                            layout);
    p.add_bos = ctx.format != chat_format::chatml;  // ChatML models (Qwen) have no BOS
    chat_prompt(std::move(text), layout, chunking, p);
  }
  if (auto n = parse_max_tokens(body, kind)) {
    p.max_tokens = *n;
  } else if (kind == endpoint::chat_completions) {
    p.max_tokens_to_context = true;
  }
  parse_sampling(body, p.sampling);
  parse_logit_bias(body, p);
  parse_logprobs(body, kind, p);
  parse_response_format(body, text, p);
  constrain_tools(r);
  parse_stops(body, p);
  if (const json* v = field(body, "ignore_eos")) p.ignore_eos = get_bool(*v, "ignore_eos");
  if (r.echo && !p.segments.empty())
    fail("echo", "'echo' is not supported with 'tokenmill.segments'");
  if (r.echo && p.top_logprobs >= 0)
    fail("echo", "'echo' with 'logprobs' is not supported (it needs the prompt's logprobs)");
  if (prompts.empty()) {
    r.prompts = {p};
  } else {
    if (prompts.size() * r.best_of > max_sequences)
      fail("prompt", fmt::format("{} prompts x {} sequences each is more than the {} sequences "
                                 "one request may ask for",
                                 prompts.size(), r.best_of, max_sequences));
    for (auto& one : prompts) {
      auto full = p;
      full.has_text = one.has_text;
      full.text = std::move(one.text);
      full.token_ids = std::move(one.token_ids);
      r.prompts.push_back(std::move(full));
    }
  }

  if (const json* v = field(body, "stream")) r.stream = get_bool(*v, "stream");
  if (const json* v = field(body, "stream_options")) {
    if (!v->is_object())
      fail("stream_options",
           fmt::format("'stream_options' must be an object, got {}", v->type_name()));
    if (!r.stream) fail("stream_options", "'stream_options' is only allowed when 'stream' is true");
    if (const json* u = field(*v, "include_usage"))
      r.include_usage = get_bool(*u, "stream_options.include_usage");
  }
  if (r.stream && r.best_of > r.n)
    fail("best_of", "'best_of' above 'n' cannot be streamed (the best are known at the end)");
  return r;
}

ojson usage_object(const generation_summary& s) {
  ojson u;
  u["prompt_tokens"] = s.prompt_tokens;
  u["completion_tokens"] = s.completion_tokens;
  u["total_tokens"] = static_cast<uint64_t>(s.prompt_tokens) + s.completion_tokens;
  return u;
}

ojson timing_object(const generation_summary& s) {
  ojson t;
  t["request_id"] = s.id;
  t["ttft_ms"] = s.ttft_ms;
  t["itl_mean_ms"] = s.itl_mean_ms;
  t["itl_p50_ms"] = s.itl_p50_ms;
  t["itl_p99_ms"] = s.itl_p99_ms;
  ojson stages = ojson::object();
  for (const auto& st : s.stages)
    stages[st.name] = st.ms;
  t["stages"] = std::move(stages);
  if (!s.decode_worker.empty()) {
    t["prefill_worker"] = s.prefill_worker;
    t["decode_worker"] = s.decode_worker;
  }
  ojson spikes = ojson::object();
  for (size_t c = 1; c < s.itl_spikes.size(); ++c)
    if (s.itl_spikes[c] > 0)
      spikes[std::string(to_string(static_cast<itl_cause>(c)))] = s.itl_spikes[c];
  t["itl_spikes"] = std::move(spikes);
  t["migrations"] = s.migrations;
  ojson reasons = ojson::array();
  for (const auto& r : s.migration_reasons)
    reasons.push_back(r);
  t["migration_reasons"] = std::move(reasons);
  return t;
}

/// id, object, created, model: the head of every body.
ojson head(const response_meta& m, const char* object) {
  ojson j;
  j["id"] = m.id;
  j["object"] = object;
  j["created"] = m.created;
  j["model"] = m.model;
  return j;
}

/// message.tool_calls (or, with `indexed`, a stream delta's, which numbers them).
ojson tool_calls_array(const std::vector<tool_call>& calls, uint32_t first_index, bool indexed) {
  ojson list = ojson::array();
  for (size_t k = 0; k < calls.size(); ++k) {
    ojson c;
    if (indexed) c["index"] = first_index + k;
    c["id"] = calls[k].id;
    c["type"] = "function";
    ojson fn;
    fn["name"] = calls[k].name;
    fn["arguments"] = calls[k].arguments;
    c["function"] = std::move(fn);
    list.push_back(std::move(c));
  }
  return list;
}

ojson finish_value(std::string_view finish) {
  return finish.empty() ? ojson(nullptr) : ojson(std::string(finish));
}

const char* chunk_object(endpoint kind) {
  return kind == endpoint::completions ? "text_completion" : "chat.completion.chunk";
}

}  // namespace

std::string error_body(const api_error& e) {
  ojson err;
  err["message"] = e.message;
  err["type"] = e.type;
  err["param"] = e.param.empty() ? ojson(nullptr) : ojson(e.param);
  err["code"] = e.code.empty() ? ojson(nullptr) : ojson(e.code);
  ojson j;
  j["error"] = std::move(err);
  return dump(j);
}

api_error from_errc(errc code, std::string message) {
  api_error e;
  e.message = std::move(message);
  switch (code) {
    case errc::invalid_request:
      e.status = 400;
      e.type = "invalid_request_error";
      if (e.message.find("context") != std::string::npos) e.code = "context_length_exceeded";
      return e;
    case errc::overloaded:
      e.status = 429;
      e.type = "rate_limit_error";
      break;
    case errc::no_workers:
    case errc::unavailable:
      e.status = 503;
      e.type = "server_error";
      break;
    case errc::timeout:
      e.status = 504;
      e.type = "server_error";
      break;
    case errc::unauthenticated:
      e.status = 401;
      e.type = "authentication_error";
      break;
    case errc::cancelled:
      e.status = 499;  // nginx's "client closed request"
      e.type = "invalid_request_error";
      break;
    default:
      e.status = 500;
      e.type = "server_error";
      break;
  }
  e.code = std::string(to_string(code));  // tells clients which tokenmill error it was
  return e;
}

std::variant<parsed_request, api_error> parse_request(endpoint kind, std::string_view body,
                                                      const request_context& ctx) {
  try {
    return parse(kind, body, ctx);
  } catch (api_error& e) {
    return std::move(e);
  } catch (const std::exception& e) {
    // nlohmann type errors that slipped past the checks above: still the client's fault.
    return api_error{400, "invalid_request_error",
                     fmt::format("invalid request body: {}", e.what()), "", ""};
  }
}

std::string_view finish_reason_name(finish_reason r) {
  switch (r) {
    case finish_reason::length:
      return "length";
    case finish_reason::stop:
    case finish_reason::eos:
      return "stop";
    default:
      return "";
  }
}

std::string timing_json(const generation_summary& s) {
  return dump(timing_object(s));
}

namespace {

ojson bytes_of(const std::string& t) {
  ojson b = ojson::array();
  for (unsigned char c : t)
    b.push_back(static_cast<int>(c));
  return b;
}

/// OpenAI reports impossible tokens as -9999.0 (JSON has no -inf).
double reported(float lp) {
  return std::isfinite(lp) ? static_cast<double>(lp) : -9999.0;
}

ojson logprobs_object(endpoint kind, const std::vector<logprob_entry>& entries) {
  ojson j;
  if (kind == endpoint::chat_completions) {
    ojson content = ojson::array();
    for (const auto& e : entries) {
      ojson c;
      c["token"] = e.token;
      c["logprob"] = reported(e.logprob);
      c["bytes"] = bytes_of(e.token);
      ojson top = ojson::array();
      for (const auto& a : e.top) {
        ojson t;
        t["token"] = a.token;
        t["logprob"] = reported(a.logprob);
        t["bytes"] = bytes_of(a.token);
        top.push_back(std::move(t));
      }
      c["top_logprobs"] = std::move(top);
      content.push_back(std::move(c));
    }
    j["content"] = std::move(content);
    j["refusal"] = nullptr;
    return j;
  }
  ojson tokens = ojson::array(), values = ojson::array(), tops = ojson::array(),
        offsets = ojson::array();
  for (const auto& e : entries) {
    tokens.push_back(e.token);
    values.push_back(reported(e.logprob));
    ojson top = ojson::object();
    for (const auto& a : e.top)
      if (!top.contains(a.token)) top[a.token] = reported(a.logprob);
    if (!top.contains(e.token)) top[e.token] = reported(e.logprob);
    tops.push_back(std::move(top));
    offsets.push_back(e.text_offset);
  }
  j["tokens"] = std::move(tokens);
  j["token_logprobs"] = std::move(values);
  j["top_logprobs"] = std::move(tops);
  j["text_offset"] = std::move(offsets);
  return j;
}

}  // namespace

std::string logprobs_json(endpoint kind, const std::vector<logprob_entry>& entries) {
  return dump(logprobs_object(kind, entries));
}

std::string completion_body(const response_meta& m, std::string_view text,
                            const generation_summary& s,
                            const std::vector<logprob_entry>* logprobs) {
  return completion_body(
      m,
      std::vector<choice_body>{
          {0, std::string(text), finish_reason_name(s.reason), logprobs, nullptr}},
      s);
}

std::string completion_body(const response_meta& m, const std::vector<choice_body>& choices,
                            const generation_summary& s) {
  ojson j = head(m, kind_name(m.kind));
  ojson list = ojson::array();
  for (const auto& c : choices) {
    ojson choice;
    choice["index"] = c.index;
    if (m.kind == endpoint::completions) {
      choice["text"] = c.text;
    } else {
      ojson msg;
      msg["role"] = "assistant";
      const bool calls = c.tool_calls && !c.tool_calls->empty();
      msg["content"] = calls && c.text.empty() ? ojson(nullptr) : ojson(c.text);
      if (calls) msg["tool_calls"] = tool_calls_array(*c.tool_calls, 0, false);
      choice["message"] = std::move(msg);
    }
    choice["logprobs"] = c.logprobs ? logprobs_object(m.kind, *c.logprobs) : ojson(nullptr);
    choice["finish_reason"] = finish_value(c.finish);
    list.push_back(std::move(choice));
  }
  j["choices"] = std::move(list);
  j["usage"] = usage_object(s);
  j["tokenmill"] = timing_object(s);
  return dump(j);
}

std::string stream_chunk(const response_meta& m, std::string_view text, bool first,
                         std::string_view finish, bool usage_null,
                         const std::vector<logprob_entry>* logprobs) {
  return stream_chunk(m, 0, text, first, finish, usage_null, logprobs);
}

std::string stream_chunk(const response_meta& m, uint32_t index, std::string_view text, bool first,
                         std::string_view finish, bool usage_null,
                         const std::vector<logprob_entry>* logprobs) {
  ojson j = head(m, chunk_object(m.kind));
  ojson choice;
  choice["index"] = index;
  if (m.kind == endpoint::completions) {
    choice["text"] = std::string(text);
  } else {
    ojson delta;
    if (first) delta["role"] = "assistant";
    delta["content"] = std::string(text);
    choice["delta"] = std::move(delta);
  }
  choice["logprobs"] = logprobs ? logprobs_object(m.kind, *logprobs) : ojson(nullptr);
  choice["finish_reason"] = finish_value(finish);
  j["choices"] = ojson::array({std::move(choice)});
  if (usage_null) j["usage"] = nullptr;
  return dump(j);
}

std::string tool_calls_chunk(const response_meta& m, uint32_t index,
                             const std::vector<tool_call>& calls, uint32_t first_index,
                             bool usage_null) {
  ojson j = head(m, chunk_object(m.kind));
  ojson choice;
  choice["index"] = index;
  ojson delta;
  delta["tool_calls"] = tool_calls_array(calls, first_index, true);
  choice["delta"] = std::move(delta);
  choice["logprobs"] = nullptr;
  choice["finish_reason"] = nullptr;
  j["choices"] = ojson::array({std::move(choice)});
  if (usage_null) j["usage"] = nullptr;
  return dump(j);
}

std::string usage_chunk(const response_meta& m, const generation_summary& s) {
  ojson j = head(m, chunk_object(m.kind));
  j["choices"] = ojson::array();
  j["usage"] = usage_object(s);
  j["tokenmill"] = timing_object(s);
  return dump(j);
}

std::string sse_event(std::string_view json_text) {
  std::string out;
  out.reserve(json_text.size() + 8);
  size_t pos = 0;
  while (true) {
    const size_t nl = json_text.find('\n', pos);
    out += "data: ";
    out += json_text.substr(pos, nl == std::string_view::npos ? nl : nl - pos);
    out += '\n';
    if (nl == std::string_view::npos) break;
    pos = nl + 1;
  }
  out += '\n';
  return out;
}

std::string models_body(std::string_view model, int64_t created, uint32_t max_context) {
  ojson entry;
  entry["id"] = std::string(model);
  entry["object"] = "model";
  entry["created"] = created;
  entry["owned_by"] = "tokenmill";
  entry["max_model_len"] = max_context;
  ojson j;
  j["object"] = "list";
  j["data"] = ojson::array({std::move(entry)});
  return dump(j);
}

}  // namespace tokenmill::openai
