#include "frontend/responses.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <string>
#include <utility>

#include <fmt/format.h>

#include "frontend/detail/json_fields.hpp"

namespace tokenmill::responses {
namespace {

using ojson = nlohmann::ordered_json;

using namespace openai::fields;

std::vector<openai::chat_message> parse_input(const ojson& body) {
  const ojson* input = field(body, "input");
  if (!input) fail("input", "'input' is required");
  if (input->is_string()) return {{"user", input->get<std::string>()}};
  if (!input->is_array())
    fail("input", fmt::format("'input' must be a string or an array of input items, got {}",
                              input->type_name()));
  if (input->empty()) fail("input", "'input' must not be empty");
  std::vector<openai::chat_message> out;
  out.reserve(input->size());
  for (size_t i = 0; i < input->size(); ++i) {
    const ojson& item = (*input)[i];
    const auto name = fmt::format("input[{}]", i);
    if (!item.is_object())
      fail(name, fmt::format("'{}' must be an object, got {}", name, item.type_name()));
    if (const ojson* type = field(item, "type")) {
      const auto& t = get_string(*type, name + ".type");
      if (t != "message")
        fail(name + ".type", fmt::format("'{}.type' is '{}'; only 'message' items are supported "
                                         "(no tool calls, reasoning or item references)",
                                         name, t));
    }
    const auto& r = get_role(item, name, {"user", "assistant", "system", "developer"},
                             "user, assistant, system, developer");
    const auto content_name = name + ".content";
    const ojson* content = field(item, "content");
    if (!content) fail(content_name, fmt::format("'{}' is required", content_name));
    openai::chat_message m{r, {}};
    // Where each part ends: chunking by parts (tokenmill.chunks) cuts the prompt there.
    m.content = text_content(*content, content_name, {"input_text", "output_text"},
                             "only 'input_text' and 'output_text' parts are supported "
                             "(text in, text out)",
                             &m.part_ends);
    out.push_back(std::move(m));
  }
  return out;
}

/// `text.format`: the structured-output grammar, echoed back as sent.
void parse_text_format(const ojson& body, request& r) {
  r.text_format = ojson{{"type", "text"}};
  const ojson* text = field(body, "text");
  if (!text) return;
  if (!text->is_object())
    fail("text", fmt::format("'text' must be an object, got {}", text->type_name()));
  const ojson* f = field(*text, "format");
  if (!f) return;
  if (!f->is_object())
    fail("text.format", fmt::format("'text.format' must be an object, got {}", f->type_name()));
  const ojson* t = field(*f, "type");
  if (!t) fail("text.format.type", "'text.format.type' is required");
  const auto& type = get_string(*t, "text.format.type");
  auto& p = r.params;
  if (type == "text") return;
  if (type == "json_object") {
    p.sampling.grammar = grammar_kind::json_object;
    p.grammar_field = "text.format";
    r.text_format = ojson{{"type", "json_object"}};
    return;
  }
  if (type != "json_schema")
    fail("text.format.type",
         fmt::format("'text.format.type' must be \"text\", \"json_object\" or \"json_schema\", "
                     "got \"{}\"",
                     type));
  const ojson* name = field(*f, "name");
  if (!name) fail("text.format.name", "'text.format.name' is required for \"json_schema\"");
  get_string(*name, "text.format.name");
  if (const ojson* d = field(*f, "description")) get_string(*d, "text.format.description");
  bool strict = false;
  if (const ojson* s = field(*f, "strict")) strict = get_bool(*s, "text.format.strict");
  const ojson* schema = field(*f, "schema");
  if (!schema) fail("text.format.schema", "'text.format.schema' is required for \"json_schema\"");
  if (!schema->is_object() && !schema->is_boolean())
    fail("text.format.schema",
         fmt::format("'text.format.schema' must be an object, got {}", schema->type_name()));
  // ordered_json keeps the schema's keys in the order written: the output follows it.
  p.sampling.grammar = grammar_kind::json_schema;
  p.sampling.grammar_source = schema->dump();
  p.grammar_field = "text.format.schema";
  r.text_format = ojson{{"type", "json_schema"}, {"name", *name}, {"schema", *schema}};
  if (const ojson* d = field(*f, "description")) r.text_format["description"] = *d;
  r.text_format["strict"] = strict;
}

void parse_metadata(const ojson& body, request& r) {
  r.metadata = ojson::object();
  const ojson* m = field(body, "metadata");
  if (!m) return;
  if (!m->is_object())
    fail("metadata",
         fmt::format("'metadata' must be an object of strings, got {}", m->type_name()));
  if (m->size() > max_metadata_pairs)
    fail("metadata", fmt::format("'metadata' has {} pairs; at most {} are allowed", m->size(),
                                 max_metadata_pairs));
  for (const auto& [key, value] : m->items()) {
    const auto name = fmt::format("metadata.{}", key);
    if (key.size() > max_metadata_key)
      fail(name, fmt::format("'metadata' keys are at most {} characters; '{}' has {}",
                             max_metadata_key, key, key.size()));
    const auto& v = get_string(value, name);
    if (v.size() > max_metadata_value)
      fail(name, fmt::format("'{}' is {} characters; at most {} are allowed", name, v.size(),
                             max_metadata_value));
  }
  r.metadata = *m;
}

/// Chunk reuse (issue 17), as on /v1/chat/completions: `tokenmill: {"chunks": "messages" |
/// "parts", "recompute_ratio": r}`. The ratio's range is validate()'s, as there.
void parse_extension(const ojson& body, request& r) {
  const ojson* ext = field(body, "tokenmill");
  if (!ext) return;
  if (!ext->is_object())
    fail("tokenmill", fmt::format("'tokenmill' must be an object, got {}", ext->type_name()));
  for (const auto& [key, _] : ext->items()) {
    if (key == "segments")
      fail("tokenmill.segments",
           "'tokenmill.segments' is only supported on /v1/completions (on /v1/responses cut the "
           "input into chunks with 'tokenmill.chunks')");
    if (key != "chunks" && key != "recompute_ratio")
      fail("tokenmill." + key,
           fmt::format("unknown field 'tokenmill.{}' (on /v1/responses the extension has: "
                       "chunks, recompute_ratio)",
                       key));
  }
  const ojson* chunks = field(*ext, "chunks");
  const ojson* ratio = field(*ext, "recompute_ratio");
  if (!chunks) {
    if (ratio)
      fail("tokenmill.recompute_ratio",
           "'tokenmill.recompute_ratio' is only allowed with 'tokenmill.chunks'");
    return;
  }
  r.chunks = get_chat_chunking(*chunks);
  if (ratio) r.params.recompute_ratio = get_number(*ratio, "tokenmill.recompute_ratio");
}

/// What the Responses API can ask for and tokenmill does not do: accepted only at the
/// neutral value, refused otherwise (ignoring them would return something not asked for).
void reject_unsupported(const ojson& body) {
  if (const ojson* v = field(body, "tools"))
    if (!v->is_array() || !v->empty())
      fail("tools", "tools ('tools') are not supported by /v1/responses here");
  if (const ojson* v = field(body, "tool_choice")) {
    const bool neutral = v->is_string() && (*v == "auto" || *v == "none");
    if (!neutral)
      fail("tool_choice", "'tool_choice' is not supported (only \"auto\" or \"none\", no tools)");
  }
  if (const ojson* v = field(body, "reasoning")) {
    bool empty = v->is_object();
    if (empty)
      for (const auto& [k, x] : v->items())
        empty = empty && x.is_null();
    if (!empty)
      fail("reasoning", "'reasoning' is not supported (the model has no reasoning settings)");
  }
  if (const ojson* v = field(body, "background"))
    if (get_bool(*v, "background"))
      fail("background", "background responses ('background': true) are not supported");
  if (const ojson* v = field(body, "include"))
    if (!v->is_array() || !v->empty())
      fail("include", "'include' is not supported (there is nothing extra to include)");
  if (const ojson* v = field(body, "truncation"))
    if (!(v->is_string() && *v == "disabled"))
      fail("truncation", "'truncation' is not supported (only \"disabled\")");
  if (field(body, "prompt")) fail("prompt", "reusable prompts ('prompt') are not supported");
  if (field(body, "conversation"))
    fail("conversation", "'conversation' is not supported; use 'previous_response_id'");
  if (const ojson* v = field(body, "top_logprobs"))
    if (!(v->is_number() && *v == 0))
      fail("top_logprobs", "'top_logprobs' is not supported by /v1/responses here");
}

request parse(std::string_view text, const openai::request_context& ctx) {
  auto body = parse_body<ojson>(text);
  request r;
  r.model = get_model(body, ctx);
  reject_unsupported(body);
  r.input = parse_input(body);
  if (const ojson* v = field(body, "instructions")) r.instructions = get_string(*v, "instructions");
  auto& p = r.params;
  p.has_text = true;
  if (const ojson* v = field(body, "max_output_tokens")) {
    const int64_t n = get_int(*v, "max_output_tokens");
    if (n < 1)
      fail("max_output_tokens", fmt::format("'max_output_tokens' must be at least 1, "
                                            "got {}",
                                            n));
    r.max_output_tokens = n;
    p.max_tokens = n;
  } else {
    p.max_tokens_to_context = true;  // as chat without max_tokens: the rest of the context
  }
  if (const ojson* v = field(body, "temperature")) {
    p.sampling.temperature = get_float(*v, "temperature");
    if (p.sampling.temperature < 0 || p.sampling.temperature > 2)
      fail("temperature",
           fmt::format("'temperature' must be in [0, 2], got {}", p.sampling.temperature));
  }
  if (const ojson* v = field(body, "top_p")) {
    p.sampling.top_p = get_float(*v, "top_p");
    if (p.sampling.top_p <= 0 || p.sampling.top_p > 1)
      fail("top_p", fmt::format("'top_p' must be in (0, 1], got {}", p.sampling.top_p));
  }
  if (const ojson* v = field(body, "stream")) r.stream = get_bool(*v, "stream");
  if (const ojson* v = field(body, "store")) r.store = get_bool(*v, "store");
  if (const ojson* v = field(body, "previous_response_id")) {
    r.previous_response_id = get_string(*v, "previous_response_id");
    if (r.previous_response_id.empty())
      fail("previous_response_id", "'previous_response_id' is empty");
  }
  parse_text_format(body, r);
  parse_metadata(body, r);
  parse_extension(body, r);
  return r;
}

const char* status_name(status s) {
  switch (s) {
    case status::in_progress:
      return "in_progress";
    case status::completed:
      return "completed";
    case status::incomplete:
      return "incomplete";
    case status::failed:
      return "failed";
  }
  return "failed";
}

/// A float parameter as the client wrote it: 0.7f is echoed as 0.7, not 0.699999988.
double echoed(float f) {
  return std::stod(fmt::format("{}", f));
}

ojson output_part(const outcome& o) {
  return ojson{{"type", "output_text"}, {"text", o.text}, {"annotations", ojson::array()}};
}

/// The one output item; `done` says whether its text is final.
ojson message_item(const outcome& o, bool done) {
  ojson item;
  item["id"] = o.message_id;
  item["type"] = "message";
  // A response cut at max_output_tokens has an incomplete message, as OpenAI marks it.
  item["status"] = !done                           ? "in_progress"
                   : o.state == status::incomplete ? "incomplete"
                                                   : "completed";
  item["role"] = "assistant";
  item["content"] = done ? ojson::array({output_part(o)}) : ojson::array();
  return item;
}

}  // namespace

std::variant<request, openai::api_error> parse_request(std::string_view body,
                                                       const openai::request_context& ctx) {
  try {
    return parse(body, ctx);
  } catch (openai::api_error& e) {
    return std::move(e);
  } catch (const std::exception& e) {
    return openai::api_error{400, "invalid_request_error",
                             fmt::format("invalid request body: {}", e.what()), "", ""};
  }
}

std::vector<openai::chat_message> model_messages(const request& r,
                                                 const std::vector<openai::chat_message>& history) {
  std::vector<openai::chat_message> msgs;
  msgs.reserve(history.size() + r.input.size() + 1);
  if (r.instructions) msgs.push_back({"system", *r.instructions});
  msgs.insert(msgs.end(), history.begin(), history.end());
  msgs.insert(msgs.end(), r.input.begin(), r.input.end());
  return msgs;
}

generate_params prompt_params(const request& r, const std::vector<openai::chat_message>& history,
                              openai::chat_format f) {
  generate_params p = r.params;
  openai::chat_layout layout;
  auto text = openai::render_chat(f, model_messages(r, history), {}, layout);
  openai::set_chat_prompt(std::move(text), layout, r.chunks, p);
  p.add_bos = f != openai::chat_format::chatml;  // ChatML models (Qwen) have no BOS
  return p;
}

openai::api_error not_found(std::string_view id, std::string_view param, std::chrono::seconds ttl) {
  const std::string what = param.empty() ? std::string("response") : std::string(param);
  return openai::api_error{
      404, "invalid_request_error",
      fmt::format("{} '{}' not found (responses are kept {} s)", what, id, ttl.count()),
      std::string(param), "response_not_found"};
}

std::string make_id(std::string_view prefix, uint64_t a, uint64_t b) {
  return fmt::format("{}{:016x}{:016x}", prefix, a, b);
}

std::string_view to_string(status s) {
  return status_name(s);
}

void finish(outcome& o, finish_reason reason, errc code, std::string_view message,
            uint32_t input_tokens, uint32_t output_tokens) {
  o.input_tokens = input_tokens;
  o.output_tokens = output_tokens;
  if (code != errc::ok) {
    o.state = status::failed;
    o.error_code = std::string(tokenmill::to_string(code));
    o.error_message = std::string(message);
    return;
  }
  o.state = reason == finish_reason::length ? status::incomplete : status::completed;
}

nlohmann::ordered_json response_object(const request& r, const outcome& o) {
  const bool done = o.state == status::completed || o.state == status::incomplete;
  ojson j;
  j["id"] = o.id;
  j["object"] = "response";
  j["created_at"] = o.created_at;
  j["status"] = status_name(o.state);
  j["background"] = false;
  j["error"] = o.state == status::failed
                   ? ojson{{"code", o.error_code}, {"message", o.error_message}}
                   : ojson(nullptr);
  j["incomplete_details"] =
      o.state == status::incomplete ? ojson{{"reason", "max_output_tokens"}} : ojson(nullptr);
  j["instructions"] = r.instructions ? ojson(*r.instructions) : ojson(nullptr);
  j["max_output_tokens"] = r.max_output_tokens ? ojson(*r.max_output_tokens) : ojson(nullptr);
  j["model"] = o.model;
  j["output"] = done ? ojson::array({message_item(o, true)}) : ojson::array();
  j["parallel_tool_calls"] = false;
  j["previous_response_id"] =
      r.previous_response_id.empty() ? ojson(nullptr) : ojson(r.previous_response_id);
  j["reasoning"] = ojson{{"effort", nullptr}, {"summary", nullptr}};
  j["store"] = r.store;
  j["temperature"] = echoed(r.params.sampling.temperature);
  j["text"] = ojson{{"format", r.text_format}};
  j["tool_choice"] = "none";
  j["tools"] = ojson::array();
  j["top_p"] = echoed(r.params.sampling.top_p);
  j["truncation"] = "disabled";
  if (o.state == status::in_progress) {
    j["usage"] = nullptr;
  } else {
    ojson u;
    u["input_tokens"] = o.input_tokens;
    u["input_tokens_details"] = ojson{{"cached_tokens", 0}};
    u["output_tokens"] = o.output_tokens;
    u["output_tokens_details"] = ojson{{"reasoning_tokens", 0}};
    u["total_tokens"] = static_cast<uint64_t>(o.input_tokens) + o.output_tokens;
    j["usage"] = std::move(u);
  }
  j["user"] = nullptr;
  j["metadata"] = r.metadata;
  return j;
}

std::string response_body(const request& r, const outcome& o) {
  return dump(response_object(r, o));
}

std::string event_stream::event(std::string_view type, nlohmann::ordered_json data) {
  ojson j;
  j["type"] = std::string(type);
  j["sequence_number"] = seq_++;
  for (auto& [k, v] : data.items())
    j[k] = std::move(v);
  return fmt::format("event: {}\ndata: {}\n\n", type, dump(j));
}

std::string event_stream::start(const request& r, const outcome& o) {
  const ojson resp = response_object(r, o);
  std::string out = event("response.created", ojson{{"response", resp}});
  out += event("response.in_progress", ojson{{"response", resp}});
  out += event("response.output_item.added",
               ojson{{"output_index", 0}, {"item", message_item(o, false)}});
  outcome empty;
  out += event("response.content_part.added", ojson{{"item_id", o.message_id},
                                                    {"output_index", 0},
                                                    {"content_index", 0},
                                                    {"part", output_part(empty)}});
  return out;
}

std::string event_stream::delta(const outcome& o, std::string_view text) {
  if (text.empty()) return {};
  return event("response.output_text.delta", ojson{{"item_id", o.message_id},
                                                   {"output_index", 0},
                                                   {"content_index", 0},
                                                   {"delta", std::string(text)},
                                                   {"logprobs", ojson::array()}});
}

std::string event_stream::end(const request& r, const outcome& o) {
  if (o.state == status::failed) {
    std::string out = event("response.failed", ojson{{"response", response_object(r, o)}});
    out += event("error",
                 ojson{{"code", o.error_code}, {"message", o.error_message}, {"param", nullptr}});
    return out;
  }
  std::string out = event("response.output_text.done", ojson{{"item_id", o.message_id},
                                                             {"output_index", 0},
                                                             {"content_index", 0},
                                                             {"text", o.text},
                                                             {"logprobs", ojson::array()}});
  out += event("response.content_part.done", ojson{{"item_id", o.message_id},
                                                   {"output_index", 0},
                                                   {"content_index", 0},
                                                   {"part", output_part(o)}});
  out += event("response.output_item.done",
               ojson{{"output_index", 0}, {"item", message_item(o, true)}});
  out += event(o.state == status::incomplete ? "response.incomplete" : "response.completed",
               ojson{{"response", response_object(r, o)}});
  return out;
}

response_store::entry stored_entry(const request& r, const outcome& o,
                                   const std::vector<openai::chat_message>& history) {
  response_store::entry e;
  e.body = response_body(r, o);
  e.conversation.reserve(history.size() + r.input.size() + 1);
  e.conversation = history;
  e.inherited = history.size();
  e.conversation.insert(e.conversation.end(), r.input.begin(), r.input.end());
  e.conversation.push_back({"assistant", o.text});
  return e;
}

namespace {

/// The value of query parameter `name` in `query` (after '?'); nullopt when absent.
std::optional<std::string_view> query_value(std::string_view query, std::string_view name) {
  while (!query.empty()) {
    const auto amp = query.find('&');
    const auto part = query.substr(0, amp);
    const auto eq = part.find('=');
    if (part.substr(0, eq) == name)
      return eq == std::string_view::npos ? std::string_view() : part.substr(eq + 1);
    if (amp == std::string_view::npos) break;
    query.remove_prefix(amp + 1);
  }
  return std::nullopt;
}

openai::api_error bad_query(std::string_view param, std::string message) {
  return openai::api_error{400, "invalid_request_error", std::move(message), std::string(param),
                           ""};
}

/// GET /v1/responses/{id}/input_items of the stored `e`.
std::variant<openai::api_error, std::string> input_items(std::string_view id,
                                                         const response_store::entry& e,
                                                         std::string_view query) {
  bool asc = false;
  if (auto o = query_value(query, "order")) {
    if (*o != "asc" && *o != "desc")
      return bad_query("order", fmt::format("'order' must be asc or desc, got '{}'", *o));
    asc = *o == "asc";
  }
  int64_t limit = 20;
  if (auto l = query_value(query, "limit")) {
    int64_t n = 0;
    auto [end, ec] = std::from_chars(l->data(), l->data() + l->size(), n);
    if (l->empty() || ec != std::errc{} || end != l->data() + l->size() || n < 1 ||
        n > max_input_items_page)
      return bad_query("limit", fmt::format("'limit' must be an integer from 1 to {}, got '{}'",
                                            max_input_items_page, *l));
    limit = n;
  }
  // This request's own input: after the inherited turns, before the output.
  const size_t first = std::min(e.inherited, e.conversation.size());
  const size_t count = e.conversation.size() > first ? e.conversation.size() - first - 1 : 0;
  const std::string_view rest = id.substr(std::min(id.size(), std::string_view("resp_").size()));
  auto item_id = [&](size_t i) { return fmt::format("msg_{}_{}", rest, i); };
  std::vector<size_t> order(count);
  for (size_t i = 0; i < count; ++i)
    order[i] = asc ? i : count - 1 - i;
  size_t start = 0;
  if (auto a = query_value(query, "after")) {
    start = count;
    for (size_t k = 0; k < count; ++k)
      if (item_id(order[k]) == *a) start = k + 1;
    if (start == count && (count == 0 || item_id(order[count - 1]) != *a))
      return bad_query("after",
                       fmt::format("'after' names no input item of response '{}': '{}'", id, *a));
  }
  ojson data = ojson::array();
  const size_t stop = std::min(count, start + static_cast<size_t>(limit));
  for (size_t k = start; k < stop; ++k) {
    const auto& m = e.conversation[first + order[k]];
    data.push_back(
        ojson{{"id", item_id(order[k])},
              {"type", "message"},
              {"role", m.role},
              {"content",
               ojson::array({ojson{{"type", m.role == "assistant" ? "output_text" : "input_text"},
                                   {"text", m.content}}})},
              {"status", "completed"}});
  }
  ojson j;
  j["object"] = "list";
  j["data"] = data;
  j["first_id"] = data.empty() ? ojson(nullptr) : data.front()["id"];
  j["last_id"] = data.empty() ? ojson(nullptr) : data.back()["id"];
  j["has_more"] = stop < count;
  return dump(j);
}

}  // namespace

std::variant<openai::api_error, std::string> stored_answer(std::string_view method,
                                                           std::string_view target,
                                                           response_store& store,
                                                           response_store::clock::time_point now) {
  constexpr std::string_view prefix = "/v1/responses/";
  constexpr std::string_view items = "/input_items";
  const auto q = target.find('?');
  const std::string_view path = target.substr(0, q);
  const std::string_view query = q == std::string_view::npos ? "" : target.substr(q + 1);
  std::string_view id = path.substr(std::min(path.size(), prefix.size()));
  const bool list = id.ends_with(items);
  if (list) id.remove_suffix(items.size());
  if (!path.starts_with(prefix) || id.empty() || id.find('/') != std::string_view::npos)
    return openai::api_error{404, "invalid_request_error",
                             fmt::format("no such endpoint: {}", path), "", "not_found"};
  if (method == "GET") {
    auto e = store.get(id, now);
    if (!e) return not_found(id, "", store.bounds().ttl);
    if (list) return input_items(id, *e, query);
    return e->body;
  }
  if (method == "DELETE" && !list) {
    if (!store.erase(id, now)) return not_found(id, "", store.bounds().ttl);
    return dump(ojson{{"id", std::string(id)}, {"object", "response.deleted"}, {"deleted", true}});
  }
  return openai::api_error{
      405, "invalid_request_error",
      fmt::format("{} {} is not allowed; use {}", method, path, list ? "GET" : "GET or DELETE"), "",
      "method_not_allowed"};
}

}  // namespace tokenmill::responses
