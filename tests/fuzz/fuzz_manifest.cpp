/// libFuzzer target: the host manifest parser (cluster/manifest.hpp) on arbitrary text.
/// Every input must come back as a manifest or an error value; an accepted manifest must
/// also survive canonical_form, manifest_hash and describe. Ports are not probed (no
/// sockets in a fuzz run); model paths resolve against a directory that does not exist.
#include <cstddef>
#include <cstdint>
#include <string>

#include "cluster/manifest.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tokenmill;
  std::string text(reinterpret_cast<const char*>(data), size);
  manifest_options opts;
  opts.check_ports = false;
  auto m = parse_manifest(text, "fuzz.yaml", "/nonexistent-tokenmill-fuzz", opts);
  if (m) {
    (void)canonical_form(m.value());
    (void)manifest_hash(m.value());
    (void)describe(m.value());
  }
  return 0;
}
