/// libFuzzer target: the OpenAI request parsing (frontend/openai.hpp, and the Responses API
/// of frontend/responses.hpp with its prompt, cut into segments by tokenmill.chunks, and its
/// stored-response answers), the tool-call parsers of model output (frontend/tool_calls.hpp:
/// streamed in two pieces they must give what the whole text gives) and the HTTP routing
/// rules (frontend/http_routes.hpp). The first byte picks the endpoint and the method; the
/// rest, up to the first newline, is the request target, and after it the body. Every input
/// must give a parsed request or an api_error, and a plan, never a crash.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <variant>

#include "engine/engine.hpp"
#include "engine/tokenizer.hpp"
#include "frontend/api_keys.hpp"
#include "frontend/http_routes.hpp"
#include "frontend/openai.hpp"
#include "frontend/request_log.hpp"
#include "frontend/responses.hpp"
#include "frontend/validate.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tokenmill;
  if (size == 0) return 0;
  const uint8_t sel = data[0];
  std::string_view in(reinterpret_cast<const char*>(data + 1), size - 1);
  auto nl = in.find('\n');
  std::string_view target = nl == std::string_view::npos ? in : in.substr(0, nl);
  std::string_view body = nl == std::string_view::npos ? std::string_view{} : in.substr(nl + 1);

  // Request bodies: the whole input after the selector, as both endpoints see it.
  openai::request_context rc{
      .served_model = "tiny",
      .format = (sel & 1) ? openai::chat_format::llama3 : openai::chat_format::chatml};
  auto kind = (sel & 2) ? openai::endpoint::chat_completions : openai::endpoint::completions;
  auto parsed = openai::parse_request(kind, in, rc);
  if (auto* e = std::get_if<openai::api_error>(&parsed)) (void)openai::error_body(*e);
  static const model_info model = [] {
    model_info m;
    m.name = "tiny";
    m.vocab_size = 1000;
    m.max_context = 64;
    return m;
  }();
  static const byte_word_tokenizer tok{1000};
  // The Responses API: the same bytes as its body, its prompt (cut into segments with
  // tokenmill.chunks, each tokenized alone) and its bodies.
  auto resp = responses::parse_request(in, rc);
  if (auto* r = std::get_if<responses::request>(&resp)) {
    const auto p = responses::prompt_params(*r, {{"user", "earlier"}}, rc.format);
    // Only the segments' part of validate(): its grammar compilation is not this target's.
    validated_request v;
    if (!p.segments.empty()) (void)prompt_from_segments(p, tok, model, v);
    responses::outcome o;
    o.text = std::string(body);
    responses::event_stream ev;
    (void)ev.start(*r, o);
    (void)ev.delta(o, body);
    responses::finish(o, finish_reason::length, errc::ok, "", 1, 1);
    (void)ev.end(*r, o);
  }

  // Model output: the tool-call parsers, whole and split where the selector says.
  for (auto syntax : {openai::tool_syntax::hermes, openai::tool_syntax::llama3}) {
    const size_t max_calls = (sel & 4) ? 1 : SIZE_MAX;
    auto whole = openai::parse_tool_calls(syntax, in, max_calls);
    openai::tool_call_stream st(syntax, max_calls);
    const size_t cut = in.empty() ? 0 : (size_t{sel} * 7) % (in.size() + 1);
    auto a = st.push(in.substr(0, cut));
    auto b = st.push(in.substr(cut));
    auto c = st.finish();
    if (a.content + b.content + c.content != whole.content ||
        a.calls.size() + b.calls.size() + c.calls.size() != whole.calls.size())
      __builtin_trap();
  }

  // Routing: target parsing, query parameters, the API key and the ready-made answers.
  (void)target_path(target);
  (void)query_param(target, "n");
  (void)query_number(target, "seconds", 1.0, 3600.0);
  static const auto keys = *api_keys::from_key("secret");
  (void)check_api_key(target_path(target), body, keys.get(), true);
  static const request_log log{8};
  static constexpr std::string_view methods[] = {"GET", "POST", "PUT", "DELETE"};
  (void)plan_http_request(methods[(sel >> 2) & 3], target, body,
                          http_route_context{model, tok, log});
  static response_store store;
  (void)responses::stored_answer(methods[(sel >> 2) & 3], target, store,
                                 response_store::clock::time_point{});
  return 0;
}
