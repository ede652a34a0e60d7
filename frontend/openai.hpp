#pragma once
/// The OpenAI-compatible HTTP API's protocol layer, free of sockets, CAF and Cap'n Proto
/// (STYLE.md §2), so that every rule is unit-tested: request bodies to generate_params,
/// chat templates, response and stream-chunk bodies, SSE framing, and the OpenAI error
/// JSON with its HTTP status. The HTTP server (http_server.cpp) only moves bytes.
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "common/api_types.hpp"
#include "common/errors.hpp"
#include "frontend/tool_calls.hpp"

namespace tokenmill::openai {

enum class endpoint : uint8_t { completions, chat_completions };

/// An error as the OpenAI API reports it: an HTTP status and
/// `{"error": {"message", "type", "param", "code"}}`.
struct api_error {
  int status = 400;
  /// "invalid_request_error" (400, 404, 405, 413), "authentication_error" (401),
  /// "rate_limit_error" (429), "server_error" (500, 503)
  std::string type = "invalid_request_error";
  std::string message;
  std::string param;  ///< the offending field ("messages[1].content"); empty: none
  std::string code;   ///< "model_not_found", "context_length_exceeded", ...; empty: none
  /// 429: the Retry-After header, whole seconds; 0: no header.
  uint32_t retry_after_s = 0;
};

/// The error body: `{"error":{"message":...,"type":...,"param":...|null,"code":...|null}}`.
std::string error_body(const api_error& e);

/// Maps a tokenmill error to its HTTP form: invalid_request 400 (code
/// "context_length_exceeded" when the message is about the context), overloaded 429,
/// no_workers / unavailable 503, timeout 504, cancelled 499, everything else 500
/// ("server_error").
api_error from_errc(errc code, std::string message);

/// One chat message. `content` may be a string or an array of {"type":"text","text"}
/// parts (joined); other part types are rejected.
struct chat_message {
  std::string role;  ///< "system", "user", "assistant" (also "developer" = system, "tool")
  std::string content;
  std::vector<tool_call> tool_calls = {};  ///< assistant: its calls (content may be empty)
  std::string tool_call_id = {};           ///< tool: the call this is the result of
  /// Content sent as an array of parts: where each part ends in `content` (bytes), in
  /// order; empty when it was a string. Chunking by parts cuts the prompt there.
  std::vector<size_t> part_ends = {};
};

/// One function the model may call (`tools[i].function`).
struct tool_def {
  std::string name;  ///< [A-Za-z0-9_-]{1,64}, unique in the request
  std::string description;
  /// The arguments' JSON Schema as sent (keys in the order written); empty: no arguments.
  std::string parameters;
  bool strict = false;
};

/// `tool_choice`: whether the model may, must or must not call a tool.
enum class tool_choice : uint8_t {
  none,       ///< no calls: tools are not shown to the model, output is not parsed
  automatic,  ///< "auto": the model decides; its output is parsed for calls
  required,   ///< one call of any of the tools, enforced by the grammar
  named,      ///< one call of the named function, enforced by the grammar
};

/// Chat prompt formats tokenmill renders itself (no Jinja).
enum class chat_format : uint8_t {
  chatml,   ///< <|im_start|>role\ncontent<|im_end|>\n ... <|im_start|>assistant\n (Qwen, SmolLM)
  llama3,   ///< <|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|> ...
  mistral,  ///< [INST] user [/INST] assistant</s>[INST] ... (system prepended to 1st user turn)
};
std::string_view to_string(chat_format f);
/// "chatml", "llama3" or "mistral".
std::optional<chat_format> chat_format_from_name(std::string_view name);
/// The format a model's Jinja chat template implements, recognised by its markers
/// ("<|start_header_id|>" llama3, "<|im_start|>" chatml, "[INST]" mistral); nullopt for an
/// empty or unrecognised template (the server then uses chatml, as llama.cpp does).
std::optional<chat_format> detect_chat_format(std::string_view jinja_template);
/// The prompt text for `msgs`, ending with an opened assistant turn. The BOS token is not
/// written (the tokenizer adds it). `tools` are shown to the model as its family expects:
/// chatml (Hermes/Qwen 2.5) in the system turn inside <tools></tools>, calls as
/// <tool_call> blocks, tool results as <tool_response> blocks of one user turn; llama3
/// (Llama 3.1 JSON tool calling) in the first user turn, calls as {"name", "parameters"},
/// results as "ipython" turns. mistral has no tool syntax here: parse_request refuses tools
/// and tool calls for it (tool results are rendered as user turns).
std::string render_chat(chat_format f, const std::vector<chat_message>& msgs,
                        const std::vector<tool_def>& tools = {});
/// How a chat prompt is cut into segments for chunk reuse (issue 17; the request's
/// `"tokenmill": {"chunks": ...}`). The prompt text is render_chat's either way; only where
/// it is cut (and so how it is tokenized) changes.
enum class chat_chunking : uint8_t {
  none,      ///< one prompt, tokenized whole (no chunk reuse)
  messages,  ///< a segment per message's turn (its header, content and end marker), and one
             ///< for the generation prompt: a message is one chunk wherever it sits
  parts,     ///< as messages, and each text part of a content array is a segment of its own
             ///< (its text alone: the same document has the same chunk under any role,
             ///< message or offset); the template text between parts is cut off into
             ///< segments of its own, adjacent ones merged
};
/// "messages" or "parts" (nullopt for anything else, "none" included: leave the field out).
std::optional<chat_chunking> chat_chunking_from_name(std::string_view name);

/// Where render_chat's text may be cut, as byte offsets into it.
struct chat_layout {
  /// Where each turn starts (a message's, a turn the renderer adds, the generation prompt),
  /// ascending. A message rendered inside another's turn (mistral's system text, which
  /// goes into the next user turn) has none of its own.
  std::vector<size_t> turns;
  /// One rendered content, [begin, end).
  struct span {
    size_t begin = 0;
    size_t end = 0;
    bool part = false;  ///< a part of a content array (else a string content, whole)
  };
  /// Every non-empty content as placed in the text, in order.
  std::vector<span> contents;
};

/// render_chat, also reporting in `layout` where turns and contents lie in the text (the
/// text is render_chat's, byte for byte).
std::string render_chat(chat_format f, const std::vector<chat_message>& msgs,
                        const std::vector<tool_def>& tools, chat_layout& layout);

/// `text` (render_chat's, with `layout`) cut as `mode` says: non-empty pieces whose
/// concatenation is `text`. none: `text` whole.
std::vector<std::string> cut_chat(std::string_view text, const chat_layout& layout,
                                  chat_chunking mode);

/// `p`'s prompt from render_chat's `text` (with `layout`): the text whole when `mode` is
/// none, else cut_chat's pieces as text segments named "tokenmill.chunks" (validate()
/// tokenizes each alone and bounds their number). Shared by /v1/chat/completions and
/// /v1/responses, so both cut a conversation alike.
void set_chat_prompt(std::string text, const chat_layout& layout, chat_chunking mode,
                     generate_params& p);

/// The tool-call syntax of a chat format; nullopt for mistral.
std::optional<tool_syntax> tool_syntax_of(chat_format f);

/// What the server needs to parse a request.
struct request_context {
  std::string served_model;  ///< the only accepted `model` (absent `model` is fine)
  chat_format format = chat_format::chatml;
};

/// Most prompts one completions request may list.
inline constexpr size_t max_prompts = 32;
/// Most sequences one prompt may fan out to (`n`, `best_of`).
inline constexpr int64_t max_n = 16;
/// Most sequences one request may fan out to (prompts x best_of).
inline constexpr size_t max_sequences = 64;

/// A parsed request, ready for validate().
struct parsed_request {
  endpoint kind = endpoint::completions;
  generate_params params;  ///< prompt (text or ids), max_tokens, sampling, stop strings
  /// One per prompt (completions may list several; each is served as its own requests):
  /// `params` with that prompt. prompts[0] equals `params`.
  std::vector<generate_params> prompts;
  uint32_t n = 1;        ///< choices returned per prompt
  uint32_t best_of = 1;  ///< sequences generated per prompt (>= n; best_of > n ranks them)
  bool echo = false;     ///< completions: each choice's text starts with its prompt
  bool stream = false;
  bool include_usage = false;  ///< stream_options.include_usage
  std::string model;           ///< as sent (empty when absent)
  /// Chat with tools: the functions, the choice, and how the output is parsed for calls
  /// (set unless the choice is none; the server parses each choice's text with it).
  std::vector<tool_def> tools;
  tool_choice tools_choice = tool_choice::none;
  std::string tool_choice_name;     ///< named: the function
  bool parallel_tool_calls = true;  ///< false: at most one call per choice
  std::optional<tool_syntax> tool_parse;
  /// Most calls one choice may return (1 without parallel_tool_calls or when constrained).
  size_t max_tool_calls() const {
    return parallel_tool_calls && tools_choice == tool_choice::automatic
               ? std::numeric_limits<size_t>::max()
               : 1;
  }
};

/// Parses a request body. Accepted fields:
/// - both: model, max_tokens (chat: also max_completion_tokens; absent: completions 16,
///   chat the rest of the context, via params.max_tokens_to_context), temperature, top_p,
///   seed, stop (string or array of strings), n (1..16), stream,
///   stream_options.include_usage, user (ignored), presence_penalty / frequency_penalty
///   ([-2, 2]), logit_bias ({"id": bias in [-100, 100]}), and tokenmill/vLLM extensions
///   top_k, min_p, repetition_penalty (> 0), ignore_eos, stop_token_ids; structured output:
///   response_format ({"type": "text"}, {"type": "json_object"}, {"type": "json_schema",
///   "json_schema": {"name", "schema", "strict", "description"}}) and the extension
///   {"tokenmill": {"regex": "..."}};
/// - completions: prompt as a string, an array of strings, an array of token ids or an
///   array of arrays of token ids (up to 32 prompts); echo (not with logprobs); best_of
///   (n..16; not streamed when above n); logprobs (integer 0..5); or, instead of prompt,
///   the prompt as segments for chunk reuse (issue 17): {"tokenmill": {"segments": [a
///   string or an array of token ids, ...], "recompute_ratio": 0..1}} (not with echo);
/// - chat: messages (non-empty array of {role, content}; assistant messages may carry
///   tool_calls [{id, type: "function", function: {name, arguments (a JSON object as a
///   string)}}] and null content; tool messages need tool_call_id); logprobs (boolean) and
///   top_logprobs (0..20, only with logprobs); tools ([{type: "function", function: {name,
///   description, parameters (JSON Schema), strict}}], names unique), tool_choice ("none",
///   "auto" (the default with tools), "required", {type: "function", function: {name}})
///   and parallel_tool_calls; chunk reuse (issue 17): {"tokenmill": {"chunks": "messages" |
///   "parts", "recompute_ratio": 0..1}}, the rendered prompt cut by cut_chat into text
///   segments (segments_field "tokenmill.chunks"; at most max_request_segments).
///   "required" and a named function constrain the output to one call whose arguments
///   match the function's parameters (the grammar of response_format, which they cannot be
///   combined with; a schema the grammar compiler refuses is a 400 naming
///   tools[i].function.parameters). The mistral format refuses tools.
/// Unknown fields are ignored, as OpenAI does. A wrong type, a value out of range or an
/// unsupported option is a 400 naming the field; another model than the served one is 404
/// "model_not_found". Range checks that need the tokenizer (context length) are left to
/// validate().
std::variant<parsed_request, api_error> parse_request(endpoint kind, std::string_view body,
                                                      const request_context& ctx);

/// Fixed parts of every response body of one request.
struct response_meta {
  endpoint kind = endpoint::completions;
  std::string id;       ///< "cmpl-..." or "chatcmpl-..."
  int64_t created = 0;  ///< unix seconds
  std::string model;
};

/// One alternative at a generated position, as a response shows it.
struct logprob_alt {
  std::string token;  ///< the token's bytes as the tokenizer has them (may be partial UTF-8)
  float logprob = 0;  ///< natural log; -inf is reported as -9999.0, as OpenAI does
};

/// One generated token's log-probabilities, as a response shows them.
struct logprob_entry {
  std::string token;  ///< the chosen token's bytes
  float logprob = 0;
  std::vector<logprob_alt> top;  ///< the most likely tokens, best first
  uint32_t text_offset = 0;      ///< completions: where the token starts in the text (bytes)
};

/// The entry of token `t` with log-probabilities `lp`; `piece(id)` gives a token's bytes.
template <class Piece>
logprob_entry make_logprob_entry(token_id t, const token_logprobs& lp, const Piece& piece,
                                 uint32_t text_offset) {
  logprob_entry e{piece(t), lp.logprob, {}, text_offset};
  e.top.reserve(lp.top.size());
  for (const auto& a : lp.top)
    e.top.push_back({piece(a.token), a.logprob});
  return e;
}

/// A choice's "logprobs" value. Chat: {"content": [{token, logprob, bytes, top_logprobs:
/// [{token, logprob, bytes}]}], "refusal": null}. Completions (the legacy shape): {"tokens",
/// "token_logprobs", "top_logprobs": [{token: logprob}] (the alternatives and, as vLLM does,
/// the chosen token), "text_offset"}. Returned as one line of JSON.
std::string logprobs_json(endpoint kind, const std::vector<logprob_entry>& entries);

/// "stop" (stop string, stop id or EOS), "length", or null-worthy reasons: returns "" for
/// none/cancelled/error.
std::string_view finish_reason_name(finish_reason r);

/// The `tokenmill` extension object: request_id, ttft_ms, itl_{mean,p50,p99}_ms and
/// "stages": {name: ms, ...} in causal order (the same breakdown as the RPC summary).
std::string timing_json(const generation_summary& s);

/// A whole non-streaming response: `text_completion` with choices[0].text, or
/// `chat.completion` with choices[0].message {role: assistant, content}; finish_reason,
/// usage {prompt_tokens, completion_tokens, total_tokens}, and "tokenmill": timing_json.
std::string completion_body(const response_meta& m, std::string_view text,
                            const generation_summary& s,
                            const std::vector<logprob_entry>* logprobs = nullptr);

/// One choice of a response with several.
struct choice_body {
  uint32_t index = 0;
  std::string text;
  std::string_view finish;                               ///< "" = null
  const std::vector<logprob_entry>* logprobs = nullptr;  ///< null: "logprobs": null
  /// Chat: the calls parsed out of the text; when there are some, message.tool_calls
  /// lists them and message.content is null if `text` is empty.
  const std::vector<tool_call>* tool_calls = nullptr;
};
/// A whole response with several choices (a list of prompts, n > 1); usage and timing
/// from `s`.
std::string completion_body(const response_meta& m, const std::vector<choice_body>& choices,
                            const generation_summary& s);

/// One streamed chunk body (not yet SSE-framed): `text_completion` with choices[0].text, or
/// `chat.completion.chunk` with choices[0].delta ({"role":"assistant","content":""} when
/// `first`, else {"content": text}); finish_reason is null when `finish` is empty. With
/// `usage_null` the chunk carries "usage": null (OpenAI does this when include_usage is on).
/// `logprobs`, when given, are the log-probabilities of the tokens behind `text`.
std::string stream_chunk(const response_meta& m, std::string_view text, bool first,
                         std::string_view finish, bool usage_null,
                         const std::vector<logprob_entry>* logprobs = nullptr);
/// The same for choice `index` of a response with several.
std::string stream_chunk(const response_meta& m, uint32_t index, std::string_view text, bool first,
                         std::string_view finish, bool usage_null,
                         const std::vector<logprob_entry>* logprobs = nullptr);

/// A chat stream chunk whose delta carries whole tool calls: {"tool_calls": [{"index":
/// first_index + k, "id", "type": "function", "function": {"name", "arguments"}}]}. Each
/// call is sent once, complete (no argument fragments), when the parser has all of it.
std::string tool_calls_chunk(const response_meta& m, uint32_t index,
                             const std::vector<tool_call>& calls, uint32_t first_index,
                             bool usage_null);

/// The final usage chunk of a stream with include_usage: empty choices, usage, and the
/// tokenmill timing extension.
std::string usage_chunk(const response_meta& m, const generation_summary& s);

/// `data: <json>\n\n` (json must be one line, as nlohmann's dump() is).
std::string sse_event(std::string_view json);
/// The stream's end marker.
inline constexpr std::string_view sse_done = "data: [DONE]\n\n";

/// `GET /v1/models`: {"object":"list","data":[{"id","object":"model","created","owned_by":
/// "tokenmill","max_model_len"}]}.
std::string models_body(std::string_view model, int64_t created, uint32_t max_context);

}  // namespace tokenmill::openai
