#pragma once
/// JSON Schema (a subset) and "any JSON" compiled to regular expressions (grammar/regex.hpp)
/// whose matches are exactly the JSON texts the schema accepts, written compactly: at most
/// one space (`[ ]?`) on each side of a brace, bracket, colon or comma, so a model cannot
/// spend its budget on whitespace.
///
/// Supported: `type` (string, number, integer, boolean, null, object, array, or a list of
/// them), `properties` (emitted in the order given), `required`, `additionalProperties`
/// (false, or absent, which is taken as false when `properties` is given), `items`,
/// `minItems`, `maxItems`, `minLength`, `maxLength`, `pattern` (matched against the whole
/// string content), `enum`, `const`, `anyOf`, and the annotations `title`, `description`,
/// `$schema`, `$id`, `$comment`, `default`, `examples`, `deprecated`, `readOnly`,
/// `writeOnly`. Every other keyword (`minimum`, `maximum`, `multipleOf`, `format`,
/// `oneOf`, `allOf`, `not`, `$ref`, `patternProperties`, `uniqueItems`, …) is refused with
/// an error naming it and its path, because ignoring it would let through output the
/// schema forbids. Numbers have at most 16 integer digits, 15 fraction digits and a
/// 2-digit exponent (so every number fits a double); an object or array without a schema for its
/// members nests at most `any_depth` levels.
#include <cstdint>
#include <string>
#include <string_view>

#include "common/result.hpp"

namespace tokenmill::grammar {

struct schema_limits {
  uint32_t max_depth = 32;                   ///< schema nesting
  uint32_t any_depth = 3;                    ///< nesting of schema-less objects and arrays
  size_t max_regex_bytes = size_t{4} << 20;  ///< the compiled expression
};

/// The regex for JSON texts valid under `schema` (JSON text). errc::invalid_request with
/// a message such as "unsupported keyword 'minimum' at /properties/age".
result<std::string> json_schema_to_regex(std::string_view schema, const schema_limits& limits = {});

/// Any JSON value, objects and arrays nested at most `depth` levels.
std::string json_value_regex(uint32_t depth);

/// A JSON object (what `response_format: json_object` asks for), nested at most `depth`
/// levels (the object itself is level 1).
std::string json_object_regex(uint32_t depth);

}  // namespace tokenmill::grammar
