#include "cluster/detail/yaml_emit.hpp"

#include <regex>

namespace tokenmill::detail {
namespace {

void emit(YAML::Emitter& out, const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Map:
      out << YAML::BeginMap;
      for (auto it = n.begin(); it != n.end(); ++it) {
        out << YAML::Key;
        emit(out, it->first);
        out << YAML::Value;
        emit(out, it->second);
      }
      out << YAML::EndMap;
      break;
    case YAML::NodeType::Sequence:
      out << YAML::BeginSeq;
      for (const auto& x : n)
        emit(out, x);
      out << YAML::EndSeq;
      break;
    case YAML::NodeType::Scalar:
      if (n.Scalar().find('\n') != std::string::npos)
        out << YAML::Literal << n.Scalar();
      else if (n.Tag() == "!")
        out << YAML::DoubleQuoted << n.Scalar();
      else
        out << n.Scalar();
      break;
    default:
      out << YAML::Null;
  }
}

}  // namespace

/// A scalar YAML would read as something other than a string when written plain (a
/// number, a boolean, null): emitted double-quoted.
bool yaml_needs_quotes(const std::string& s) {
  static const std::regex number(R"([-+]?(\.[0-9]+|[0-9][0-9_]*(\.[0-9]*)?)([eE][-+]?[0-9]+)?)");
  static const std::regex special(
      R"(~|null|Null|NULL|true|True|TRUE|false|False|FALSE|yes|Yes|YES|no|No|NO|on|On|ON|off|Off|OFF|y|Y|n|N|[-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN)|0x[0-9a-fA-F]+|0o[0-7]+)");
  return s.empty() || std::regex_match(s, number) || std::regex_match(s, special);
}

/// A string scalar; tagged "!" (YAML's non-specific tag for quoted scalars) when it must be
/// quoted to stay a string, which `emit` honours.
YAML::Node yaml_str(const std::string& s) {
  YAML::Node n(s);
  if (yaml_needs_quotes(s)) n.SetTag("!");
  return n;
}

/// Documents separated by "---", each ending in a newline.
std::string yaml_text(const std::vector<YAML::Node>& docs, const std::string& header) {
  std::string text = header;
  for (size_t i = 0; i < docs.size(); ++i) {
    YAML::Emitter out;
    out.SetIndent(2);
    emit(out, docs[i]);
    if (i > 0) text += "---\n";
    text += out.c_str();
    text += "\n";
  }
  return text;
}

}  // namespace tokenmill::detail
