// `tokenmill k8s render MANIFEST -o DIR`: the Kubernetes objects for a host manifest
// (cluster/k8s_render.hpp decides what they are; this writes them).
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

#include "apps/commands.hpp"
#include "apps/version.hpp"
#include "cluster/k8s_render.hpp"

namespace tokenmill::app {

command add_k8s(CLI::App& app) {
  app.require_subcommand(1);
  auto* render = app.add_subcommand(
      "render",
      "Write a ConfigMap with the manifest, a StatefulSet and headless Service per role group, "
      "PodDisruptionBudgets and the frontend Service as YAML files");
  struct opts {
    std::string manifest;
    std::string out;
    k8s_options k;
  };
  auto o = std::make_shared<opts>();
  o->k.image = fmt::format("tokenmill:{}", version());
  render->add_option("MANIFEST", o->manifest, "Host manifest (YAML)")->required();
  render->add_option("-o,--output", o->out, "Folder to write the YAML files into")->required();
  render->add_option("--image", o->k.image, "Container image with tokenmill on its PATH")
      ->capture_default_str();
  render->add_option("--namespace", o->k.namespace_name,
                     "Namespace of every object (default: none set, kubectl's current)");
  render->add_option("--prefix", o->k.prefix,
                     "Prefix of every object's name (default: the cluster's name)");
  render->add_option("--model-claim", o->k.model_claim,
                     "PersistentVolumeClaim holding the model file (default: PREFIX-models; "
                     "not used for a sim model)");
  render->add_option("--model-dir", o->k.model_dir, "Where the model claim is mounted")
      ->capture_default_str();
  render
      ->add_option("--service-type", o->k.service_type,
                   "The frontend Service's type: ClusterIP, NodePort or LoadBalancer")
      ->capture_default_str();
  render->add_option("--memory", o->k.memory,
                     "Memory request and limit of every pod, e.g. 8Gi (default: none)");
  render
      ->add_option("--ucx-tls", o->k.ucx_tls,
                   "UCX_TLS in every pod; '' leaves UCX to choose (RDMA clusters)")
      ->capture_default_str();
  render
      ->add_option("--join-timeout", o->k.join_timeout_s,
                   "Seconds a node keeps trying to reach the supervisor's pod")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  render->add_flag("--insecure", o->k.insecure,
                   "Plaintext between pods on purpose (the manifest has no security.tls); the "
                   "in-cluster manifest says security: {insecure: true}");
  return [o]() -> int {
    // Ports are those of pods, not of this machine: no port check.
    auto m = load_manifest(o->manifest, manifest_options{false});
    if (!m) {
      std::fprintf(stderr, "tokenmill k8s render: invalid manifest:\n%s\n",
                   m.error().message.c_str());
      return 2;
    }
    std::ifstream in(o->manifest);
    std::stringstream text;
    text << in.rdbuf();
    auto r = render_k8s(*m, text.str(), o->k);
    if (!r) {
      std::fprintf(stderr, "tokenmill k8s render: %s\n", r.error().message.c_str());
      return 2;
    }
    namespace fs = std::filesystem;
    std::error_code ec;
    fs::create_directories(o->out, ec);
    if (ec || !fs::is_directory(o->out)) {
      std::fprintf(stderr, "tokenmill k8s render: -o %s: cannot create the folder: %s\n",
                   o->out.c_str(), ec ? ec.message().c_str() : "not a folder");
      return 1;
    }
    for (const auto& f : r->files) {
      auto path = fs::path(o->out) / f.name;
      std::ofstream out(path, std::ios::trunc);
      out << f.text;
      out.close();
      if (!out) {
        std::fprintf(stderr, "tokenmill k8s render: cannot write %s\n", path.c_str());
        return 1;
      }
    }
    std::printf("k8s render: %zu files in %s for cluster %s:\n", r->files.size(), o->out.c_str(),
                m->cluster.c_str());
    for (const auto& g : r->groups) {
      std::string nodes;
      for (size_t k = 0; k < g.nodes.size(); ++k)
        nodes += fmt::format("{}{}={}", k ? " " : "", m->nodes[g.nodes[k]].name,
                             r->pod_names[g.nodes[k]]);
      std::printf("  StatefulSet %-24s replicas=%zu cpu=%u gpu=%u  %s\n", g.name.c_str(),
                  g.nodes.size(), g.cpus, g.gpus, nodes.c_str());
    }
    std::printf("  Service %s-frontend: rpc %u, http %u\n", r->prefix.c_str(), m->frontend.rpc_port,
                m->frontend.http_port);
    if (!r->security_secret.empty())
      std::printf(
          "  Secret %s (not written: it holds private keys), mounted at %s in every pod; "
          "create it first:\n%s\n",
          r->security_secret.c_str(), k8s_security_dir,
          k8s_secret_command(*r, o->k.namespace_name).c_str());
    std::printf("apply with: kubectl apply -f %s\n", o->out.c_str());
    return 0;
  };
}

}  // namespace tokenmill::app
