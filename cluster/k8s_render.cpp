#include "cluster/k8s_render.hpp"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <map>
#include <regex>

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include "cluster/detail/yaml_emit.hpp"

namespace tokenmill {
namespace {

using detail::yaml_str;
using detail::yaml_text;

/// Longest StatefulSet name: its pods carry the label controller-revision-hash =
/// "<name>-<10 characters>", and a label value has at most 63.
constexpr size_t max_statefulset_name = 52;

error_info bad(std::string what) {
  return {errc::invalid_request, std::move(what)};
}

/// What makes two nodes interchangeable: their actors, roles and options, in order.
std::string signature(const manifest& m, const manifest_node& n) {
  std::string s = m.frontend.node == n.name ? "frontend;" : "";
  for (const auto& a : n.actors) {
    s += std::string(to_string(a.kind));
    if (const auto* w = a.worker())
      s += fmt::format("({},{},{},{}", w->engine.empty() ? m.defaults.engine : w->engine,
                       w->threads, w->device, w->slowdown);
    if (const auto* p = a.prefill())
      s += fmt::format(",{},{},{})", p->kv_blocks, p->chunk, p->max_seqs);
    if (const auto* d = a.decode())
      s += fmt::format(",{},{},{})", d->kv_blocks, d->max_batch, d->local_prefill_budget);
    s += ";";
  }
  return s;
}

std::string role_of(const manifest_node& n) {
  if (n.count(role::router) || n.count(role::supervisor) || n.count(role::kv_store)) return "head";
  size_t p = n.count(role::prefill), d = n.count(role::decode);
  if (p && !d) return "prefill";
  if (d && !p) return "decode";
  return "worker";
}

YAML::Node labels(const std::string& prefix, const std::string& component) {
  YAML::Node l;
  l["app.kubernetes.io/name"] = yaml_str("tokenmill");
  l["app.kubernetes.io/instance"] = yaml_str(prefix);
  if (!component.empty()) l["app.kubernetes.io/component"] = yaml_str(component);
  return l;
}

YAML::Node metadata(const std::string& name, const k8s_options& o, const YAML::Node& lbls) {
  YAML::Node md;
  md["name"] = yaml_str(name);
  if (!o.namespace_name.empty()) md["namespace"] = yaml_str(o.namespace_name);
  md["labels"] = lbls;
  return md;
}

YAML::Node port(const std::string& name, uint16_t number, bool container) {
  YAML::Node p;
  p["name"] = yaml_str(name);
  p[container ? "containerPort" : "port"] = number;
  if (!container) p["targetPort"] = yaml_str(name);
  p["protocol"] = yaml_str("TCP");
  return p;
}

YAML::Node http_probe(const std::string& path, const std::string& port_name, int period,
                      int failures) {
  YAML::Node p;
  p["httpGet"]["path"] = yaml_str(path);
  p["httpGet"]["port"] = yaml_str(port_name);
  p["periodSeconds"] = period;
  p["timeoutSeconds"] = 2;
  p["failureThreshold"] = failures;
  return p;
}

/// The manifest the pods read: the file's YAML with nodes renamed to their pods, addressed
/// by their DNS names, on their group's ports; the frontend on every interface of its pod;
/// the model file in the model claim.
result<std::string> in_cluster_manifest(const manifest& m, const std::string& text,
                                        const k8s_rendering& r, const k8s_options& o) {
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    return bad(fmt::format("{}: {}", m.path, e.what()));
  }
  auto nodes = root["nodes"];
  if (!root.IsMap() || !nodes || !nodes.IsSequence() || nodes.size() != m.nodes.size())
    return bad(fmt::format("{}: the text does not hold the parsed manifest's {} nodes", m.path,
                           m.nodes.size()));
  std::vector<const k8s_group*> group_of(m.nodes.size());
  for (const auto& g : r.groups)
    for (size_t i : g.nodes)
      group_of[i] = &g;
  for (size_t i = 0; i < m.nodes.size(); ++i) {
    auto n = nodes[i];
    const auto& g = *group_of[i];
    n["name"] = yaml_str(r.pod_names[i]);
    n["address"] = yaml_str(r.pod_names[i] + "." + g.name);
    n.remove("ssh");
    n["port"] = g.port;
    n["http_port"] = g.http_port;
  }
  const auto& fe = r.pod_names[static_cast<size_t>(
      std::find_if(m.nodes.begin(), m.nodes.end(),
                   [&](const manifest_node& n) { return n.name == m.frontend.node; }) -
      m.nodes.begin())];
  root["frontend"]["node"] = yaml_str(fe);
  if (o.insecure && !m.security.tls) root["security"]["insecure"] = true;
  // Certificates, keys and the cluster secret come from the Secret mounted in every pod.
  if (m.security.tls) {
    auto at = [](const std::string& p) {
      return yaml_str(std::string(k8s_security_dir) + "/" +
                      std::filesystem::path(p).filename().string());
    };
    YAML::Node tls;
    tls["ca"] = at(m.security.tls->ca);
    tls["cert"] = at(m.security.tls->cert);
    tls["key"] = at(m.security.tls->key);
    root["security"]["tls"] = tls;
  }
  if (!m.security.secret_file.empty())
    root["security"]["secret_file"] =
        yaml_str(std::string(k8s_security_dir) + "/" +
                 std::filesystem::path(m.security.secret_file).filename().string());
  root["frontend"]["host"] = yaml_str("0.0.0.0");
  if (!m.model.sim) {
    auto file = std::filesystem::path(m.model.declared_path).lexically_normal();
    std::string base = file.filename().string();
    if (base.empty()) base = file.parent_path().filename().string();  // "dir/"
    root["model"]["path"] = yaml_str(o.model_dir + "/" + base);
  }
  std::vector<YAML::Node> docs{root};
  return yaml_text(docs, fmt::format("# {} rendered for Kubernetes by `tokenmill k8s render`: node "
                                     "names are pod names.\n",
                                     m.path.empty() ? m.cluster : m.path));
}

/// The Secret's keys and their local files (k8s_rendering::security_files), or why the
/// manifest's security files cannot be one Secret.
result<std::vector<std::pair<std::string, std::string>>> security_files(
    const manifest& m, const std::vector<std::string>& pod_names) {
  std::vector<std::pair<std::string, std::string>> files;
  auto add = [&](const std::string& what, const std::string& local) -> result<void> {
    auto key = std::filesystem::path(local).filename().string();
    // Kubernetes: a Secret's keys are [-._a-zA-Z0-9]+.
    static const std::regex valid(R"([-._a-zA-Z0-9]+)");
    if (key.empty() || !std::regex_match(key, valid))
      return bad(
          fmt::format("{}: {}: the file name '{}' cannot be a key of a Kubernetes Secret "
                      "(letters, digits, '-', '_' and '.' only)",
                      m.path, what, key));
    for (const auto& [k, l] : files)
      if (k == key && l != local)
        return bad(
            fmt::format("{}: {}: '{}' has the file name of '{}': the pods find every "
                        "security file in one folder ({}), so their names must differ",
                        m.path, what, local, l, k8s_security_dir));
    if (std::find(files.begin(), files.end(), std::pair{key, local}) == files.end())
      files.emplace_back(key, local);
    return {};
  };
  if (m.security.tls) {
    const auto& t = *m.security.tls;
    if (auto e = add("security.tls.ca", t.ca); !e) return e.error();
    for (const auto& pod : pod_names) {
      if (auto e = add("security.tls.cert", t.cert_for(pod)); !e) return e.error();
      if (auto e = add("security.tls.key", t.key_for(pod)); !e) return e.error();
    }
  }
  if (!m.security.secret_file.empty())
    if (auto e = add("security.secret_file", m.security.secret_file); !e) return e.error();
  return files;
}

YAML::Node statefulset(const manifest& m, const k8s_rendering& r, const k8s_group& g,
                       const k8s_options& o, const std::string& configmap) {
  auto lbls = labels(r.prefix, g.role);
  YAML::Node sts;
  sts["apiVersion"] = yaml_str("apps/v1");
  sts["kind"] = yaml_str("StatefulSet");
  sts["metadata"] = metadata(g.name, o, lbls);
  auto spec = sts["spec"];
  spec["serviceName"] = yaml_str(g.name);
  spec["replicas"] = g.nodes.size();
  // Every pod at once: a worker's pod is only ready once it joined the head's, so ordered
  // start would gain nothing, and the head group's /ready needs the decode pods up.
  spec["podManagementPolicy"] = yaml_str("Parallel");
  spec["selector"]["matchLabels"] = labels(r.prefix, g.role);
  auto tmpl = spec["template"];
  tmpl["metadata"]["labels"] = labels(r.prefix, g.role);
  // A changed manifest changes the pod template, so `kubectl apply` rolls the pods.
  tmpl["metadata"]["annotations"]["tokenmill.io/manifest-hash"] =
      yaml_str(fmt::format("xxh3-{:016x}", manifest_hash(m)));
  auto pod = tmpl["spec"];
  pod["terminationGracePeriodSeconds"] = 15;
  YAML::Node c;
  c["name"] = yaml_str("node");
  c["image"] = yaml_str(o.image);
  c["imagePullPolicy"] = yaml_str("IfNotPresent");
  c["command"].push_back(yaml_str("tokenmill"));
  for (const char* a : {"node", "--manifest"})
    c["args"].push_back(yaml_str(a));
  c["args"].push_back(yaml_str(k8s_manifest_path));
  c["args"].push_back(yaml_str("--name"));
  c["args"].push_back(yaml_str("$(POD_NAME)"));
  c["args"].push_back(yaml_str("--join-timeout"));
  c["args"].push_back(yaml_str(std::to_string(o.join_timeout_s)));
  YAML::Node pod_name;
  pod_name["name"] = yaml_str("POD_NAME");
  pod_name["valueFrom"]["fieldRef"]["fieldPath"] = yaml_str("metadata.name");
  c["env"].push_back(pod_name);
  if (!o.ucx_tls.empty()) {
    YAML::Node tls;
    tls["name"] = yaml_str("UCX_TLS");
    tls["value"] = yaml_str(o.ucx_tls);
    c["env"].push_back(tls);
  }
  c["ports"].push_back(port("control", g.port, true));
  std::string http_name = "http";
  if (g.frontend) {
    c["ports"].push_back(port("rpc", m.frontend.rpc_port, true));
    c["ports"].push_back(port("http", m.frontend.http_port, true));
  } else {
    c["ports"].push_back(port("http", g.http_port, true));
  }
  // Loading a large model takes a while: the startup probe allows 10 minutes before the
  // liveness probe takes over.
  c["startupProbe"] = http_probe("/health", http_name, 5, 120);
  c["livenessProbe"] = http_probe("/health", http_name, 10, 3);
  c["readinessProbe"] = http_probe(g.frontend ? "/ready" : "/health", http_name, 5, 2);
  auto res = c["resources"];
  res["requests"]["cpu"] = yaml_str(std::to_string(g.cpus));
  if (!o.memory.empty()) {
    res["requests"]["memory"] = yaml_str(o.memory);
    res["limits"]["memory"] = yaml_str(o.memory);
  }
  if (g.gpus > 0) {
    res["requests"]["nvidia.com/gpu"] = yaml_str(std::to_string(g.gpus));
    res["limits"]["nvidia.com/gpu"] = yaml_str(std::to_string(g.gpus));
  }
  YAML::Node mount;
  mount["name"] = yaml_str("manifest");
  mount["mountPath"] = yaml_str(std::filesystem::path(k8s_manifest_path).parent_path().string());
  mount["readOnly"] = true;
  c["volumeMounts"].push_back(mount);
  YAML::Node vol;
  vol["name"] = yaml_str("manifest");
  vol["configMap"]["name"] = yaml_str(configmap);
  pod["volumes"].push_back(vol);
  if (!r.security_secret.empty()) {
    YAML::Node sm;
    sm["name"] = yaml_str("security");
    sm["mountPath"] = yaml_str(k8s_security_dir);
    sm["readOnly"] = true;
    c["volumeMounts"].push_back(sm);
    YAML::Node sv;
    sv["name"] = yaml_str("security");
    sv["secret"]["secretName"] = yaml_str(r.security_secret);
    // Owner-only: a node refuses a key or secret file that others can read.
    sv["secret"]["defaultMode"] = 0400;
    pod["volumes"].push_back(sv);
  }
  if (!m.model.sim) {
    YAML::Node mm;
    mm["name"] = yaml_str("models");
    mm["mountPath"] = yaml_str(o.model_dir);
    mm["readOnly"] = true;
    c["volumeMounts"].push_back(mm);
    YAML::Node mv;
    mv["name"] = yaml_str("models");
    mv["persistentVolumeClaim"]["claimName"] = yaml_str(o.model_claim);
    mv["persistentVolumeClaim"]["readOnly"] = true;
    pod["volumes"].push_back(mv);
  }
  pod["containers"].push_back(c);
  return sts;
}

result<void> check_options(const k8s_options& o) {
  if (o.image.empty()) return bad("--image: empty; expected a container image reference");
  if (o.image.find_first_of(" \t\r\n") != std::string::npos)
    return bad(fmt::format("--image: '{}' contains white space", o.image));
  static const std::string_view types[] = {"ClusterIP", "NodePort", "LoadBalancer"};
  if (std::find(std::begin(types), std::end(types), o.service_type) == std::end(types))
    return bad(fmt::format("--service-type: '{}'; expected ClusterIP, NodePort or LoadBalancer",
                           o.service_type));
  static const std::regex quantity(R"([0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?)");
  if (!o.memory.empty() && !std::regex_match(o.memory, quantity))
    return bad(
        fmt::format("--memory: '{}' is not a quantity; expected e.g. 512Mi or 8Gi", o.memory));
  if (!o.namespace_name.empty() && k8s_label(o.namespace_name) != o.namespace_name)
    return bad(
        fmt::format("--namespace: '{}' is not a DNS-1123 label (lower-case letters, "
                    "digits and inner '-', at most 63)",
                    o.namespace_name));
  if (o.model_dir.empty() || o.model_dir[0] != '/' || o.model_dir == "/")
    return bad(
        fmt::format("--model-dir: '{}'; expected an absolute folder other than /", o.model_dir));
  if (o.ucx_tls.find_first_of(" \t\r\n") != std::string::npos)
    return bad(fmt::format("--ucx-tls: '{}' contains white space", o.ucx_tls));
  return {};
}

}  // namespace

std::string k8s_label(const std::string& s) {
  std::string out;
  for (char ch : s) {
    auto c = static_cast<unsigned char>(ch);
    if (std::isalnum(c))
      out += static_cast<char>(std::tolower(c));
    else if (ch == '-' || ch == '_' || ch == '.')
      out += '-';
    else
      return {};
  }
  auto first = out.find_first_not_of('-');
  if (first == std::string::npos) return {};
  out = out.substr(first, out.find_last_not_of('-') - first + 1);
  return out.size() <= 63 ? out : std::string{};
}

result<k8s_rendering> render_k8s(const manifest& m, const std::string& manifest_text,
                                 const k8s_options& opts) {
  if (auto ok = check_options(opts); !ok) return ok.error();
  k8s_options o = opts;
  k8s_rendering r;
  if (!o.prefix.empty()) {
    r.prefix = k8s_label(o.prefix);
    if (r.prefix != o.prefix)
      return bad(
          fmt::format("--prefix: '{}' is not a DNS-1123 label (lower-case letters, digits "
                      "and inner '-')",
                      o.prefix));
  } else {
    r.prefix = k8s_label(m.cluster);
    if (r.prefix.empty())
      return bad(
          fmt::format("{}: cluster: '{}' cannot be made a Kubernetes name (letters, "
                      "digits, '-', '_' and '.' only); give one with --prefix",
                      m.path, m.cluster));
  }
  if (o.model_claim.empty()) o.model_claim = r.prefix + "-models";
  if (m.nodes.empty()) return bad(fmt::format("{}: nodes: none", m.path));
  if (!m.security.tls && !m.security.insecure && !o.insecure)
    return bad(fmt::format(
        "{}: in Kubernetes every node is a pod on its own address, so nodes would join and talk "
        "in plaintext: give the manifest security: {{tls: {{ca, cert, key}}, secret_file}} "
        "(the files mounted at those paths in every pod, e.g. from a Secret), or render with "
        "--insecure to run it in plaintext on purpose",
        m.path));

  // Role groups, in order of first appearance.
  std::map<std::string, size_t> by_signature;
  std::map<std::string, int> role_uses;
  for (size_t i = 0; i < m.nodes.size(); ++i) {
    const auto& n = m.nodes[i];
    auto sig = signature(m, n);
    auto [it, fresh] = by_signature.emplace(sig, r.groups.size());
    if (fresh) {
      k8s_group g;
      g.role = role_of(n);
      int k = ++role_uses[g.role];
      if (k > 1) g.role += fmt::format("-{}", k);
      g.name = r.prefix + "-" + g.role;
      g.frontend = m.frontend.node == n.name;
      g.supervisor = n.count(role::supervisor) > 0;
      g.port = n.port;
      g.http_port = n.http_port;
      uint32_t threads = 0, gpus = 0;
      for (const auto& a : n.actors)
        if (const auto* w = a.worker()) {
          threads += w->threads;
          if ((w->engine.empty() ? m.defaults.engine : w->engine) == "cuda")
            gpus = std::max(gpus, w->device + 1);
        }
      g.cpus = std::max<uint32_t>(threads, 1);
      g.gpus = gpus;
      if (g.name.size() > max_statefulset_name)
        return bad(
            fmt::format("{}: the StatefulSet name '{}' is longer than {} characters "
                        "(Kubernetes' limit for its pods' labels); give a shorter --prefix",
                        m.path, g.name, max_statefulset_name));
      r.groups.push_back(std::move(g));
    }
    r.groups[it->second].nodes.push_back(i);
  }
  r.pod_names.resize(m.nodes.size());
  for (const auto& g : r.groups)
    for (size_t k = 0; k < g.nodes.size(); ++k)
      r.pod_names[g.nodes[k]] = fmt::format("{}-{}", g.name, k);
  // Pods of different groups share one address space per pod, not per port; the frontend
  // binds every interface of its pod, so its ports must differ from its own node's.
  for (const auto& g : r.groups)
    if (g.frontend && (g.port == m.frontend.rpc_port || g.port == m.frontend.http_port))
      return bad(fmt::format("{}: node '{}': port {} is also a frontend port", m.path,
                             m.frontend.node, g.port));

  if (m.security.tls || !m.security.secret_file.empty()) {
    auto files = security_files(m, r.pod_names);
    if (!files) return files.error();
    r.security_files = std::move(*files);
    r.security_secret = r.prefix + "-security";
  }

  auto text = in_cluster_manifest(m, manifest_text, r, o);
  if (!text) return text.error();
  r.manifest_text = *text;

  std::string header = fmt::format(
      "# Rendered by `tokenmill k8s render` from {} (cluster {}). Apply with\n"
      "#   kubectl apply -f DIR\n",
      m.path.empty() ? "a manifest" : m.path, m.cluster);
  std::string configmap = r.prefix + "-manifest";
  {
    YAML::Node cm;
    cm["apiVersion"] = yaml_str("v1");
    cm["kind"] = yaml_str("ConfigMap");
    cm["metadata"] = metadata(configmap, o, labels(r.prefix, ""));
    cm["data"]["cluster.yaml"] = yaml_str(r.manifest_text);
    r.files.push_back({"configmap.yaml", yaml_text({cm}, header)});
  }
  for (const auto& g : r.groups) {
    YAML::Node svc;
    svc["apiVersion"] = yaml_str("v1");
    svc["kind"] = yaml_str("Service");
    svc["metadata"] = metadata(g.name, o, labels(r.prefix, g.role));
    // Headless, and the DNS names exist before the pods are ready: nodes find the head's
    // pod by name while the cluster is still coming up.
    svc["spec"]["clusterIP"] = yaml_str("None");
    svc["spec"]["publishNotReadyAddresses"] = true;
    svc["spec"]["selector"] = labels(r.prefix, g.role);
    svc["spec"]["ports"].push_back(port("control", g.port, false));
    auto sts = statefulset(m, r, g, o, configmap);
    YAML::Node pdb;
    pdb["apiVersion"] = yaml_str("policy/v1");
    pdb["kind"] = yaml_str("PodDisruptionBudget");
    pdb["metadata"] = metadata(g.name, o, labels(r.prefix, g.role));
    pdb["spec"]["maxUnavailable"] = g.supervisor ? 0 : 1;
    pdb["spec"]["selector"]["matchLabels"] = labels(r.prefix, g.role);
    r.files.push_back({g.role + ".yaml", yaml_text({svc, sts, pdb}, header)});
  }
  {
    const auto& fg = *std::find_if(r.groups.begin(), r.groups.end(),
                                   [](const k8s_group& g) { return g.frontend; });
    YAML::Node svc;
    svc["apiVersion"] = yaml_str("v1");
    svc["kind"] = yaml_str("Service");
    svc["metadata"] = metadata(r.prefix + "-frontend", o, labels(r.prefix, "frontend"));
    svc["spec"]["type"] = yaml_str(o.service_type);
    svc["spec"]["selector"] = labels(r.prefix, fg.role);
    svc["spec"]["selector"]["statefulset.kubernetes.io/pod-name"] = yaml_str(fg.name + "-0");
    svc["spec"]["ports"].push_back(port("rpc", m.frontend.rpc_port, false));
    svc["spec"]["ports"].push_back(port("http", m.frontend.http_port, false));
    r.files.push_back({"frontend-service.yaml", yaml_text({svc}, header)});
  }
  return r;
}

std::string k8s_secret_command(const k8s_rendering& r, const std::string& namespace_name) {
  if (r.security_secret.empty()) return {};
  std::string cmd = "kubectl create secret generic " + r.security_secret;
  if (!namespace_name.empty()) cmd += " --namespace " + namespace_name;
  for (const auto& [key, local] : r.security_files)
    cmd += fmt::format(" \\\n    --from-file={}={}", key, local);
  return cmd;
}

}  // namespace tokenmill
