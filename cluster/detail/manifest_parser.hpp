#pragma once
/// The manifest parser proper: reads one YAML document section by section into a manifest
/// with every default applied, then checks what spans sections (role counts, engines
/// against the model, distinct listeners, free local ports).
#include <string>

#include <yaml-cpp/yaml.h>

#include "cluster/detail/yaml_reader.hpp"
#include "cluster/manifest.hpp"

namespace tokenmill::detail {

/// Reads the top-level map `root`; every problem goes to `p`, and the manifest means
/// something only while `p` stays empty. Relative model paths resolve against `base_dir`.
/// Never throws (a YAML exception is a bug, reported as a problem).
manifest read_manifest_document(problems& p, const YAML::Node& root, const std::string& base_dir,
                                const manifest_options& opts);

}  // namespace tokenmill::detail
