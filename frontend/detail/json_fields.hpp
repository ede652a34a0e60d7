#pragma once
/// Field checks shared by the request parsers of /v1/completions and /v1/chat/completions
/// (openai.cpp, nlohmann::json) and /v1/responses (responses.cpp, nlohmann::ordered_json):
/// each reads one field or fails with an OpenAI error naming it. Templated over the json
/// type, since the two parsers keep different ones. Internal to those two files.
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "frontend/openai.hpp"

namespace tokenmill::openai::fields {

/// Thrown inside the parsers only: their parse_request catches it and returns it as a
/// value (STYLE.md §7), which keeps the many field checks one line each.
[[noreturn]] inline void fail(std::string param, std::string message, int status = 400,
                              std::string code = {}) {
  throw api_error{status, "invalid_request_error", std::move(message), std::move(param),
                  std::move(code)};
}

/// Bodies carry detokenized text, which may end in the middle of a UTF-8 sequence:
/// replace invalid bytes with U+FFFD rather than throw.
template <class J>
std::string dump(const J& j) {
  return j.dump(-1, ' ', false, J::error_handler_t::replace);
}

/// `obj[key]`, or nullptr when the key is absent or null (OpenAI treats null as "default").
template <class J>
const J* field(const J& obj, const char* key) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

/// What a refused value was, for the message: a float's value, any other value's type.
template <class J>
std::string got(const J& v) {
  if (v.is_number_float()) return fmt::format("{}", v.template get<double>());
  return v.type_name();
}

template <class J>
double get_number(const J& v, const std::string& name) {
  if (!v.is_number()) fail(name, fmt::format("'{}' must be a number, got {}", name, v.type_name()));
  return v.template get<double>();
}

/// A finite number that also fits a float (sampling parameters are floats).
template <class J>
float get_float(const J& v, const std::string& name) {
  const double d = get_number(v, name);
  const auto f = static_cast<float>(d);
  if (!std::isfinite(d) || !std::isfinite(f))
    fail(name, fmt::format("'{}' must be a finite number, got {}", name, d));
  return f;
}

template <class J>
int64_t get_int(const J& v, const std::string& name) {
  if (v.is_number_unsigned()) {
    const auto u = v.template get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      fail(name, fmt::format("'{}' is too large: {}", name, u));
    return static_cast<int64_t>(u);
  }
  if (v.is_number_integer()) return v.template get<int64_t>();
  if (v.is_number_float()) {
    // 16.0 is an integer (some clients serialise every number as a double).
    const double d = v.template get<double>();
    if (std::isfinite(d) && std::trunc(d) == d && std::fabs(d) < 9.2e18)
      return static_cast<int64_t>(d);
  }
  fail(name, fmt::format("'{}' must be an integer, got {}", name, got(v)));
}

template <class J>
bool get_bool(const J& v, const std::string& name) {
  if (!v.is_boolean())
    fail(name, fmt::format("'{}' must be a boolean, got {}", name, v.type_name()));
  return v.template get<bool>();
}

template <class J>
const std::string& get_string(const J& v, const std::string& name) {
  if (!v.is_string()) fail(name, fmt::format("'{}' must be a string, got {}", name, v.type_name()));
  return v.template get_ref<const std::string&>();
}

/// A request body: a JSON object, or an error saying what it is instead.
template <class J>
J parse_body(std::string_view text) {
  J body;
  try {
    body = J::parse(text);
  } catch (const typename J::parse_error& e) {
    fail("", fmt::format("request body is not valid JSON: {}", e.what()));
  }
  if (!body.is_object())
    fail("", fmt::format("request body must be a JSON object, got {}", body.type_name()));
  return body;
}

/// The body's `model` (empty when absent), which must be the model `ctx` serves: another
/// is a 404 "model_not_found", as OpenAI answers it.
template <class J>
std::string get_model(const J& body, const request_context& ctx) {
  const J* v = field(body, "model");
  if (!v) return {};
  const auto& model = get_string(*v, "model");
  if (!ctx.served_model.empty() && model != ctx.served_model)
    fail("model",
         fmt::format("The model '{}' does not exist; this server serves '{}'", model,
                     ctx.served_model),
         404, "model_not_found");
  return model;
}

/// `tokenmill.chunks` (chat and responses, issue 17): "messages" or "parts".
template <class J>
chat_chunking get_chat_chunking(const J& v) {
  if (!v.is_string())
    fail(
        "tokenmill.chunks",
        fmt::format("'tokenmill.chunks' must be \"messages\" or \"parts\", got {}", v.type_name()));
  const auto& name = v.template get_ref<const std::string&>();
  const auto mode = chat_chunking_from_name(name);
  if (!mode)
    fail("tokenmill.chunks",
         fmt::format("'tokenmill.chunks' must be \"messages\" (a segment per message) or "
                     "\"parts\" (also one per text content part), got \"{}\"",
                     name));
  return *mode;
}

/// A message's content named `name`: a string, or an array of text parts
/// ({"type": T, "text": "..."} with T one of `types`), joined. A part of another type is
/// refused with "'NAME[j].type' is 'T'; " and `refusal`. `part_ends`, when given, receives
/// where each part ends in the joined text (bytes), or nothing for a string.
template <class J>
std::string text_content(const J& content, const std::string& name,
                         std::initializer_list<std::string_view> types, std::string_view refusal,
                         std::vector<size_t>* part_ends = nullptr) {
  if (part_ends) part_ends->clear();
  if (content.is_string()) return content.template get<std::string>();
  if (!content.is_array())
    fail(name, fmt::format("'{}' must be a string or an array of content parts, got {}", name,
                           content.type_name()));
  std::string text;
  for (size_t j = 0; j < content.size(); ++j) {
    const J& part = content[j];
    const auto part_name = fmt::format("{}[{}]", name, j);
    if (!part.is_object())
      fail(part_name, fmt::format("'{}' must be an object, got {}", part_name, part.type_name()));
    const auto type_name = part_name + ".type";
    const J* type = field(part, "type");
    if (!type) fail(type_name, fmt::format("'{}' is required", type_name));
    const auto& t = get_string(*type, type_name);
    bool known = false;
    for (auto allowed : types)
      known = known || t == allowed;
    if (!known) fail(type_name, fmt::format("'{}' is '{}'; {}", type_name, t, refusal));
    const auto text_name = part_name + ".text";
    const J* v = field(part, "text");
    if (!v) fail(text_name, fmt::format("'{}' is required", text_name));
    text += get_string(*v, text_name);
    if (part_ends) part_ends->push_back(text.size());
  }
  return text;
}

/// The role of a message named `name` (`name + ".role"`), one of `roles` (listed in the
/// message as `listed`).
template <class J>
const std::string& get_role(const J& msg, const std::string& name,
                            std::initializer_list<std::string_view> roles,
                            std::string_view listed) {
  const auto role_name = name + ".role";
  const J* role = field(msg, "role");
  if (!role) fail(role_name, fmt::format("'{}' is required", role_name));
  const auto& r = get_string(*role, role_name);
  for (auto allowed : roles)
    if (r == allowed) return r;
  fail(role_name, fmt::format("'{}' must be one of {}; got '{}'", role_name, listed, r));
}

}  // namespace tokenmill::openai::fields
