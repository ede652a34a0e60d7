// `tokenmill certs init`: the cluster CA, a certificate per node and the cluster secret for
// a manifest's `security:` section (cluster/security.hpp).
#include <cstdio>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "apps/commands.hpp"
#include "cluster/manifest.hpp"
#include "cluster/security.hpp"

namespace tokenmill::app {

command add_certs(CLI::App& app) {
  struct opts {
    std::string dir;
    std::string nodes;
    std::string manifest;
    uint32_t days = 825;
  };
  auto o = std::make_shared<opts>();
  app.require_subcommand(1);
  auto* init = app.add_subcommand(
      "init",
      "Create a cluster CA, a certificate and key per node, and a cluster secret in DIR "
      "(existing files are kept; keys and the secret are mode 0600)");
  init->add_option("DIR", o->dir, "Where the files go (created when missing)")->required();
  auto* nodes = init->add_option("--nodes", o->nodes, "Node names, comma-separated (a,b,c)");
  init->add_option("--manifest", o->manifest, "Take the node names from this host manifest")
      ->excludes(nodes);
  init->add_option("--days", o->days, "Validity of the certificates, days")
      ->check(CLI::Range(1u, 36500u))
      ->capture_default_str();
  return [o]() -> int {
    std::vector<std::string> names;
    if (!o->manifest.empty()) {
      auto m = load_manifest(o->manifest, manifest_options{false});
      if (!m) {
        std::fprintf(stderr, "tokenmill certs init: invalid manifest:\n%s\n",
                     m.error().message.c_str());
        return 2;
      }
      for (const auto& n : m->nodes)
        names.push_back(n.name);
    } else {
      std::stringstream ss(o->nodes);
      for (std::string n; std::getline(ss, n, ',');)
        if (!n.empty()) names.push_back(n);
    }
    if (names.empty()) {
      std::fprintf(stderr,
                   "tokenmill certs init: no nodes; expected --nodes a,b,c or --manifest FILE\n");
      return 2;
    }
    cert_options co;
    co.days = o->days;
    auto r = create_cluster_certs(o->dir, names, co);
    if (!r) {
      std::fprintf(stderr, "tokenmill certs init: %s\n", r.error().message.c_str());
      return 1;
    }
    for (const auto& f : r->created)
      std::printf("created %s\n", f.c_str());
    for (const auto& f : r->kept)
      std::printf("kept    %s\n", f.c_str());
    std::printf(
        "manifest: security: {tls: {ca: %s/ca.crt, cert: %s/{node}.crt, key: %s/{node}.key}, "
        "secret_file: %s/secret}\n",
        o->dir.c_str(), o->dir.c_str(), o->dir.c_str(), o->dir.c_str());
    return 0;
  };
}

}  // namespace tokenmill::app
