#pragma once
/// The OpenAI Responses API (`POST /v1/responses`, `GET` and `DELETE /v1/responses/{id}`)
/// as a protocol layer free of sockets and CAF, like openai.hpp for the chat API: request
/// bodies to generate_params (rendered through the same chat templates), the response
/// object, the numbered SSE events of a streamed response, and the answers about stored
/// responses. http_responses.cpp moves the bytes; response_store.hpp keeps conversations.
///
/// Text in, text out: tools, reasoning, images and files, background mode, truncation
/// "auto", reusable prompts and conversations are refused with a 400 naming the field.
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/api_types.hpp"
#include "common/errors.hpp"
#include "frontend/openai.hpp"
#include "frontend/response_store.hpp"

namespace tokenmill::responses {

/// Most `metadata` pairs, and the longest key and value (OpenAI's limits).
inline constexpr size_t max_metadata_pairs = 16;
inline constexpr size_t max_metadata_key = 64;
inline constexpr size_t max_metadata_value = 512;

/// A parsed `POST /v1/responses` body.
struct request {
  std::string model;  ///< as sent (empty when absent)
  /// This request's input items as chat messages (`input` as a string is one user message).
  std::vector<openai::chat_message> input;
  std::optional<std::string> instructions;  ///< a system message before everything else
  std::optional<int64_t> max_output_tokens;
  bool stream = false;
  bool store = true;
  std::string previous_response_id;  ///< empty: none
  /// `text.format` as the response object echoes it: {"type": "text"} by default.
  nlohmann::ordered_json text_format;
  nlohmann::ordered_json metadata;  ///< an object of strings, {} by default
  /// Sampling, max_tokens, the grammar of `text.format` and tokenmill.recompute_ratio; the
  /// prompt is filled in by prompt_params() once the previous response's conversation is
  /// known.
  generate_params params;
  /// `tokenmill.chunks`: how prompt_params() cuts the conversation into segments for chunk
  /// reuse (issue 17); none: one prompt.
  openai::chat_chunking chunks = openai::chat_chunking::none;
};

/// Parses a request body. Accepted: model, input (a string, or a non-empty array of
/// messages {type?: "message", role: user|assistant|system|developer, content: a string or
/// [{type: "input_text"|"output_text", text}]}), instructions, max_output_tokens (>= 1;
/// absent: up to the end of the context), temperature ([0, 2]), top_p ((0, 1]), stream,
/// store, previous_response_id, text.format ({type: "text"}, {type: "json_object"},
/// {type: "json_schema", name, schema, strict, description}: the grammar of structured
/// output), metadata (at most 16 string pairs), and, at their neutral values only, tools
/// ([]), tool_choice ("auto", "none"), reasoning (null or empty), background (false),
/// include ([]), truncation ("disabled"); chunk reuse (issue 17), as on chat completions:
/// {"tokenmill": {"chunks": "messages" | "parts", "recompute_ratio": 0..1}} (a segment per
/// message's turn, and by parts one per input_text/output_text part). Other unknown fields
/// are ignored, as OpenAI does (unknown `tokenmill` fields are refused).
/// A wrong type, a value out of range or an unsupported option is a 400 naming the field
/// (`input[1].content[0].type`); another model than the served one is 404.
std::variant<request, openai::api_error> parse_request(std::string_view body,
                                                       const openai::request_context& ctx);

/// The messages the model sees: `instructions` as a system message, then `history` (the
/// previous response's conversation; empty without one), then the request's input.
std::vector<openai::chat_message> model_messages(const request& r,
                                                 const std::vector<openai::chat_message>& history);

/// `r.params` with the prompt: model_messages() rendered in chat format `f`, ending with
/// an opened assistant turn (BOS left to the tokenizer, except for ChatML); with
/// `r.chunks`, that text cut into segments as chat completions cut it
/// (openai::set_chat_prompt; validate() refuses more than max_request_segments, naming
/// tokenmill.chunks).
generate_params prompt_params(const request& r, const std::vector<openai::chat_message>& history,
                              openai::chat_format f);

/// 404 for an id the store does not hold (never stored, deleted, evicted or expired):
/// "previous_response_id 'resp_x' not found (responses are kept 3600 s)". `param` names
/// where the id came from ("previous_response_id", or "" for a path).
openai::api_error not_found(std::string_view id, std::string_view param, std::chrono::seconds ttl);

/// `prefix` and 32 hex digits of `a` and `b` ("resp_…", "msg_…").
std::string make_id(std::string_view prefix, uint64_t a, uint64_t b);

/// A response's status, as the object and its events name it.
enum class status : uint8_t { in_progress, completed, incomplete, failed };
std::string_view to_string(status s);

/// What a response object says beyond the echoed request.
struct outcome {
  std::string id;          ///< "resp_…"
  std::string message_id;  ///< "msg_…", the one output item
  int64_t created_at = 0;  ///< unix seconds
  std::string model;
  status state = status::in_progress;
  std::string text;  ///< the output text so far
  uint32_t input_tokens = 0;
  uint32_t output_tokens = 0;
  std::string error_code;  ///< failed: tokenmill's errc name ("overloaded", …)
  std::string error_message;
};

/// Ends `o`: failed when `code` is an error, incomplete when generation stopped at the
/// token limit (`reason` length: OpenAI's "max_output_tokens"), completed otherwise.
void finish(outcome& o, finish_reason reason, errc code, std::string_view message,
            uint32_t input_tokens, uint32_t output_tokens);

/// The response object: {id, object: "response", created_at, status, error,
/// incomplete_details, instructions, max_output_tokens, model, output: [{type: "message",
/// id, status, role: "assistant", content: [{type: "output_text", text, annotations: []}]}]
/// (empty while in progress), previous_response_id, temperature, top_p, text, usage
/// {input_tokens, output_tokens, total_tokens, …} (null while in progress), metadata, …}.
nlohmann::ordered_json response_object(const request& r, const outcome& o);
/// The same as one line of JSON.
std::string response_body(const request& r, const outcome& o);

/// The SSE events of one streamed response, as OpenAI sends them: `event: TYPE` and one
/// `data:` line whose JSON has the same `type` and a `sequence_number` counting from 0.
class event_stream {
 public:
  /// response.created and response.in_progress (the object in progress),
  /// response.output_item.added and response.content_part.added.
  std::string start(const request& r, const outcome& o);
  /// response.output_text.delta with `text` (nothing for empty text).
  std::string delta(const outcome& o, std::string_view text);
  /// After finish(): completed or incomplete → response.output_text.done,
  /// response.content_part.done, response.output_item.done, then response.completed or
  /// response.incomplete with the whole object and usage; failed → response.failed (the
  /// object with its error) and an `error` event.
  std::string end(const request& r, const outcome& o);
  /// Events written so far.
  uint64_t count() const { return seq_; }

 private:
  std::string event(std::string_view type, nlohmann::ordered_json data);
  uint64_t seq_ = 0;
};

/// What the store keeps of a finished response: its body and the conversation so far
/// (`history`, the input, the output text as an assistant message).
response_store::entry stored_entry(const request& r, const outcome& o,
                                   const std::vector<openai::chat_message>& history);

/// Most input items one page of GET /v1/responses/{id}/input_items lists (`limit`).
inline constexpr int64_t max_input_items_page = 100;

/// The answer about a stored response for `method` on `target` (path and query): GET
/// /v1/responses/{id} → the response object; DELETE → {id, object: "response.deleted",
/// deleted: true}; GET /v1/responses/{id}/input_items → {object: "list", data: [{id, type:
/// "message", role, content: [{type: "input_text"|"output_text", text}]}], first_id,
/// last_id, has_more}: this request's own input (not the earlier turns, not the
/// instructions), newest first unless `order=asc`, `limit` (1..100, default 20) per page,
/// after the item `after`. Unknown ids → not_found, a bad query → 400, other methods → 405.
std::variant<openai::api_error, std::string> stored_answer(std::string_view method,
                                                           std::string_view target,
                                                           response_store& store,
                                                           response_store::clock::time_point now);

}  // namespace tokenmill::responses
