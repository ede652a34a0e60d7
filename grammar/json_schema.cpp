#include "grammar/json_schema.hpp"

#include <set>
#include <stdexcept>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "grammar/regex.hpp"

namespace tokenmill::grammar {
namespace {

using json = nlohmann::ordered_json;

constexpr std::string_view k_ws = "[ ]?";
constexpr std::string_view k_string = R"("(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*")";
constexpr std::string_view k_char = R"((?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4}))";
constexpr std::string_view k_integer = "-?(?:0|[1-9][0-9]{0,15})";
constexpr std::string_view k_number =
    "-?(?:0|[1-9][0-9]{0,15})(?:\\.[0-9]{1,15})?(?:[eE][+-]?[0-9]{1,2})?";

struct schema_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

std::string path_or_root(const std::string& path) {
  return path.empty() ? "/" : path;
}

std::string alternation(const std::vector<std::string>& alts) {
  if (alts.size() == 1) return alts[0];
  std::string out = "(?:";
  for (size_t i = 0; i < alts.size(); ++i) {
    if (i) out += '|';
    out += alts[i];
  }
  return out + ")";
}

std::string literal_json(const json& v) {
  return regex_escape(v.dump());
}

/// `item` repeated between `lo` and `hi` times (hi < 0: unbounded), separated by commas.
std::string comma_list(const std::string& item, uint64_t lo, int64_t hi) {
  std::string sep = std::string(k_ws) + "," + std::string(k_ws);
  if (hi == 0) return "";
  std::string more = "(?:" + sep + item + ")";
  const uint64_t rest_lo = lo > 0 ? lo - 1 : 0;
  if (hi < 0)
    more += rest_lo == 0 ? "*" : fmt::format("{{{},}}", rest_lo);
  else
    more += fmt::format("{{{},{}}}", rest_lo, uint64_t(hi) - 1);
  std::string body = item + more;
  return lo == 0 ? "(?:" + body + ")?" : body;
}

class compiler {
 public:
  explicit compiler(const schema_limits& l) : limits_(l) {}

  std::string compile(const json& s, const std::string& path, uint32_t depth) {
    if (depth > limits_.max_depth)
      throw schema_error(fmt::format("schema nested deeper than {} levels at {}", limits_.max_depth,
                                     path_or_root(path)));
    if (s.is_boolean()) {
      if (s.get<bool>()) return json_value_regex(limits_.any_depth);
      throw schema_error(fmt::format("schema 'false' at {} matches nothing", path_or_root(path)));
    }
    if (!s.is_object())
      throw schema_error(
          fmt::format("schema at {} must be an object or a boolean", path_or_root(path)));
    static const std::set<std::string, std::less<>> supported{
        "type",       "properties", "required",    "additionalProperties",
        "items",      "minItems",   "maxItems",    "minLength",
        "maxLength",  "pattern",    "enum",        "const",
        "anyOf",      "title",      "description", "$schema",
        "$id",        "$comment",   "default",     "examples",
        "deprecated", "readOnly",   "writeOnly"};
    for (const auto& [key, _] : s.items())
      if (!supported.contains(key))
        throw schema_error(fmt::format("unsupported keyword '{}' at {}", key, path_or_root(path)));

    if (s.contains("const")) return literal_json(s["const"]);
    if (s.contains("enum")) {
      const json& e = s["enum"];
      if (!e.is_array() || e.empty())
        throw schema_error(
            fmt::format("'enum' at {} must be a non-empty array", path_or_root(path)));
      std::vector<std::string> alts;
      for (const auto& v : e)
        alts.push_back(literal_json(v));
      return alternation(alts);
    }
    if (s.contains("anyOf")) {
      const json& a = s["anyOf"];
      if (!a.is_array() || a.empty())
        throw schema_error(
            fmt::format("'anyOf' at {} must be a non-empty array", path_or_root(path)));
      std::vector<std::string> alts;
      for (size_t i = 0; i < a.size(); ++i)
        alts.push_back(compile(a[i], fmt::format("{}/anyOf/{}", path, i), depth + 1));
      return alternation(alts);
    }

    std::vector<std::string> types;
    if (s.contains("type")) {
      const json& t = s["type"];
      if (t.is_string()) {
        types.push_back(t.get<std::string>());
      } else if (t.is_array() && !t.empty()) {
        for (const auto& x : t) {
          if (!x.is_string())
            throw schema_error(fmt::format("'type' at {} must hold strings", path_or_root(path)));
          types.push_back(x.get<std::string>());
        }
      } else {
        throw schema_error(
            fmt::format("'type' at {} must be a string or a non-empty array", path_or_root(path)));
      }
    } else if (s.contains("properties")) {
      types.push_back("object");
    } else if (s.contains("items")) {
      types.push_back("array");
    } else {
      return json_value_regex(limits_.any_depth);
    }
    std::vector<std::string> alts;
    for (const auto& t : types)
      alts.push_back(of_type(s, t, path, depth));
    return alternation(alts);
  }

 private:
  uint64_t count(const json& s, const char* key, const std::string& path, uint64_t dflt) {
    if (!s.contains(key)) return dflt;
    const json& v = s[key];
    if (!v.is_number_unsigned() && !(v.is_number_integer() && v.get<int64_t>() >= 0))
      throw schema_error(
          fmt::format("'{}' at {} must be a non-negative integer", key, path_or_root(path)));
    uint64_t n = v.get<uint64_t>();
    if (n > 1000)
      throw schema_error(fmt::format("'{}' at {} is {}, above the supported maximum of 1000", key,
                                     path_or_root(path), n));
    return n;
  }

  std::string of_type(const json& s, const std::string& t, const std::string& path,
                      uint32_t depth) {
    if (t == "string") return string_of(s, path);
    if (t == "integer") return std::string(k_integer);
    if (t == "number") return std::string(k_number);
    if (t == "boolean") return "(?:true|false)";
    if (t == "null") return "null";
    if (t == "object") return object_of(s, path, depth);
    if (t == "array") return array_of(s, path, depth);
    throw schema_error(fmt::format("unknown type '{}' at {}", t, path_or_root(path)));
  }

  std::string string_of(const json& s, const std::string& path) {
    if (s.contains("pattern")) {
      if (s.contains("minLength") || s.contains("maxLength"))
        throw schema_error(
            fmt::format("'pattern' together with 'minLength'/'maxLength' at {} is not supported",
                        path_or_root(path)));
      if (!s["pattern"].is_string())
        throw schema_error(fmt::format("'pattern' at {} must be a string", path_or_root(path)));
      std::string p = s["pattern"].get<std::string>();
      if (auto r = compile_regex(p); !r)
        throw schema_error(
            fmt::format("'pattern' at {}: {}", path_or_root(path), r.error().message));
      return "\"(?:" + p + ")\"";
    }
    const uint64_t lo = count(s, "minLength", path, 0);
    const bool bounded = s.contains("maxLength");
    const uint64_t hi = count(s, "maxLength", path, 0);
    if (bounded && hi < lo)
      throw schema_error(fmt::format("'maxLength' < 'minLength' at {}", path_or_root(path)));
    if (!bounded && lo == 0) return std::string(k_string);
    std::string rep = bounded ? fmt::format("{{{},{}}}", lo, hi) : fmt::format("{{{},}}", lo);
    return "\"" + std::string(k_char) + rep + "\"";
  }

  std::string object_of(const json& s, const std::string& path, uint32_t depth) {
    if (s.contains("additionalProperties")) {
      const json& ap = s["additionalProperties"];
      if (!(ap.is_boolean() && !ap.get<bool>()))
        throw schema_error(fmt::format(
            "'additionalProperties' at {} must be false (other values are not supported)",
            path_or_root(path)));
    }
    if (!s.contains("properties")) {
      if (s.contains("required") && !s["required"].empty())
        throw schema_error(fmt::format("'required' at {} names properties not in 'properties'",
                                       path_or_root(path)));
      if (s.contains("additionalProperties")) return "\\{" + std::string(k_ws) + "\\}";
      return json_object_regex(limits_.any_depth);
    }
    const json& props = s["properties"];
    if (!props.is_object())
      throw schema_error(fmt::format("'properties' at {} must be an object", path_or_root(path)));
    std::set<std::string> required;
    if (s.contains("required")) {
      const json& r = s["required"];
      if (!r.is_array())
        throw schema_error(fmt::format("'required' at {} must be an array", path_or_root(path)));
      for (const auto& x : r) {
        if (!x.is_string())
          throw schema_error(fmt::format("'required' at {} must hold strings", path_or_root(path)));
        if (!props.contains(x.get<std::string>()))
          throw schema_error(
              fmt::format("'required' at {} names '{}', which is not in "
                          "'properties'",
                          path_or_root(path), x.get<std::string>()));
        required.insert(x.get<std::string>());
      }
    }
    struct prop {
      std::string regex;  ///< "name": value
      bool required;
    };
    std::vector<prop> ps;
    for (const auto& [name, sub] : props.items()) {
      std::string value = compile(sub, path + "/properties/" + name, depth + 1);
      ps.push_back({literal_json(json(name)) + std::string(k_ws) + ":" + std::string(k_ws) + value,
                    required.contains(name)});
    }
    const std::string comma = std::string(k_ws) + "," + std::string(k_ws);
    // after[i]: properties i.. when one has been written already (each needs a comma).
    std::vector<std::string> after(ps.size() + 1);
    for (size_t i = ps.size(); i-- > 0;)
      after[i] = (ps[i].required ? comma + ps[i].regex : "(?:" + comma + ps[i].regex + ")?") +
                 after[i + 1];
    // first[i]: properties i.. when none has been written yet.
    std::string first;
    for (size_t i = ps.size(); i-- > 0;) {
      std::string with = ps[i].regex + after[i + 1];
      if (ps[i].required)
        first = with;
      else
        first = i + 1 == ps.size() ? "(?:" + with + ")?" : "(?:" + with + "|" + first + ")";
      if (first.size() > limits_.max_regex_bytes) too_big(path);
    }
    return "\\{" + std::string(k_ws) + first + std::string(k_ws) + "\\}";
  }

  std::string array_of(const json& s, const std::string& path, uint32_t depth) {
    std::string item = s.contains("items")
                           ? compile(s["items"], path + "/items", depth + 1)
                           : json_value_regex(limits_.any_depth > 0 ? limits_.any_depth - 1 : 0);
    const uint64_t lo = count(s, "minItems", path, 0);
    const bool bounded = s.contains("maxItems");
    const uint64_t hi = count(s, "maxItems", path, 0);
    if (bounded && hi < lo)
      throw schema_error(fmt::format("'maxItems' < 'minItems' at {}", path_or_root(path)));
    std::string list = comma_list(item, lo, bounded ? int64_t(hi) : -1);
    if (list.size() > limits_.max_regex_bytes) too_big(path);
    return "\\[" + std::string(k_ws) + list + std::string(k_ws) + "\\]";
  }

  [[noreturn]] void too_big(const std::string& path) {
    throw schema_error(fmt::format("schema too large at {} (its expression passes {} bytes)",
                                   path_or_root(path), limits_.max_regex_bytes));
  }

  schema_limits limits_;
};

std::string any_value(uint32_t depth);

std::string any_object(uint32_t depth) {
  if (depth == 0) return "";
  const std::string member =
      std::string(k_string) + std::string(k_ws) + ":" + std::string(k_ws) + any_value(depth - 1);
  return "\\{" + std::string(k_ws) + comma_list(member, 0, -1) + std::string(k_ws) + "\\}";
}

std::string any_array(uint32_t depth) {
  if (depth == 0) return "";
  return "\\[" + std::string(k_ws) + comma_list(any_value(depth - 1), 0, -1) + std::string(k_ws) +
         "\\]";
}

std::string any_value(uint32_t depth) {
  std::vector<std::string> alts{std::string(k_string), std::string(k_number), "true", "false",
                                "null"};
  if (depth > 0) {
    alts.push_back(any_object(depth));
    alts.push_back(any_array(depth));
  }
  return alternation(alts);
}

}  // namespace

std::string json_value_regex(uint32_t depth) {
  return any_value(depth);
}

std::string json_object_regex(uint32_t depth) {
  return any_object(depth == 0 ? 1 : depth);
}

result<std::string> json_schema_to_regex(std::string_view schema, const schema_limits& limits) {
  json s;
  try {
    s = json::parse(schema);
  } catch (const std::exception& e) {
    return error_info{errc::invalid_request, fmt::format("schema is not valid JSON: {}", e.what())};
  }
  try {
    compiler c(limits);
    std::string out = c.compile(s, "", 0);
    if (out.size() > limits.max_regex_bytes)
      return error_info{
          errc::invalid_request,
          fmt::format("schema too large (its expression passes {} bytes)", limits.max_regex_bytes)};
    return out;
  } catch (const schema_error& e) {
    return error_info{errc::invalid_request, e.what()};
  }
}

}  // namespace tokenmill::grammar
