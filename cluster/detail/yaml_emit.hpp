#pragma once
/// Writing YAML for the deployment renderers (k8s_render, slurm): scalars that YAML would
/// read as numbers, booleans or null are double-quoted when they are meant as strings;
/// multi-line strings are literal blocks.
#include <string>
#include <vector>

#include <yaml-cpp/yaml.h>

namespace tokenmill::detail {

/// True when `s` written plain would not read back as the string `s` (a number, a boolean,
/// null, empty).
bool yaml_needs_quotes(const std::string& s);

/// A string scalar that stays a string when emitted by yaml_text (tagged "!", YAML's
/// non-specific tag of quoted scalars, when it needs quotes).
YAML::Node yaml_str(const std::string& s);

/// The documents as YAML text, separated by "---", after `header` (comment lines).
std::string yaml_text(const std::vector<YAML::Node>& docs, const std::string& header = "");

}  // namespace tokenmill::detail
