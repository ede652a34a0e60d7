#pragma once
/// Our own check of the Kubernetes objects `tokenmill k8s render` writes: the fields the
/// API server requires (or rejects) for the kinds we emit, with the formats of names,
/// labels, ports, quantities and probe handlers. kubectl's client-side dry run still needs
/// an API server for discovery, and Debian 12's kubernetes-client (1.20) cannot be
/// installed beside other kubectl builds, so the tests use this. One string per problem,
/// naming the object and the field.
#include <regex>
#include <set>
#include <string>
#include <vector>

#include <yaml-cpp/yaml.h>

namespace tokenmill::testing {

class k8s_schema {
 public:
  /// Problems of one document (an object).
  std::vector<std::string> check(const YAML::Node& doc) {
    problems_.clear();
    if (!doc.IsMap()) return {"document: not a mapping"};
    std::string api = scalar(doc["apiVersion"]), kind = scalar(doc["kind"]);
    where_ = kind + "/" + scalar(doc["metadata"]["name"]);
    static const std::set<std::pair<std::string, std::string>> known = {
        {"v1", "ConfigMap"},
        {"v1", "Service"},
        {"apps/v1", "StatefulSet"},
        {"policy/v1", "PodDisruptionBudget"}};
    if (!known.count({api, kind})) add("apiVersion/kind", api + " " + kind + " is not one we emit");
    metadata(doc["metadata"]);
    auto spec = doc["spec"];
    if (kind == "ConfigMap") {
      auto data = doc["data"];
      if (!data.IsMap() || data.size() == 0) add("data", "missing or empty");
      for (auto it = data.begin(); data.IsMap() && it != data.end(); ++it)
        if (!it->second.IsScalar()) add("data." + scalar(it->first), "not a string");
    } else if (kind == "Service") {
      service(spec);
    } else if (kind == "StatefulSet") {
      statefulset(spec);
    } else if (kind == "PodDisruptionBudget") {
      if (!spec.IsMap()) return add("spec", "missing"), problems_;
      bool min = spec["minAvailable"].IsDefined(), max = spec["maxUnavailable"].IsDefined();
      if (min == max) add("spec", "exactly one of minAvailable and maxUnavailable");
      selector(spec["selector"], "spec.selector");
    }
    return problems_;
  }

 private:
  std::vector<std::string> problems_;
  std::string where_;

  void add(const std::string& field, const std::string& what) {
    problems_.push_back(where_ + ": " + field + ": " + what);
  }
  static std::string scalar(const YAML::Node& n) { return n && n.IsScalar() ? n.Scalar() : ""; }
  static bool is_label(const std::string& s, size_t max = 63) {
    static const std::regex re("[a-z0-9]([-a-z0-9]*[a-z0-9])?");
    return s.size() <= max && std::regex_match(s, re);
  }
  static bool is_int(const YAML::Node& n, long lo, long hi) {
    if (!n || !n.IsScalar() || n.Tag() == "!") return false;  // a quoted scalar is a string
    try {
      long v = n.as<long>();
      return v >= lo && v <= hi;
    } catch (...) {
      return false;
    }
  }
  void label_map(const YAML::Node& m, const std::string& field) {
    if (!m) return;
    if (!m.IsMap()) return add(field, "not a mapping");
    static const std::regex key("([a-z0-9.-]+/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?");
    static const std::regex value("([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?");
    for (auto it = m.begin(); it != m.end(); ++it) {
      std::string k = scalar(it->first), v = scalar(it->second);
      if (!std::regex_match(k, key)) add(field, "label key '" + k + "' is malformed");
      if (!it->second.IsScalar() || v.size() > 63 || !std::regex_match(v, value))
        add(field + "." + k, "label value '" + v + "' is malformed");
      if (it->second.IsScalar() && it->second.Tag() != "!" && !v.empty() &&
          std::regex_match(v, std::regex("[0-9.]+|true|false")))
        add(field + "." + k, "'" + v + "' is not quoted, so YAML reads it as a non-string");
    }
  }
  void metadata(const YAML::Node& md) {
    if (!md.IsMap()) return add("metadata", "missing");
    if (!is_label(scalar(md["name"]))) add("metadata.name", "not a DNS-1123 label");
    if (md["namespace"] && !is_label(scalar(md["namespace"])))
      add("metadata.namespace", "not a DNS-1123 label");
    label_map(md["labels"], "metadata.labels");
    if (auto a = md["annotations"]; a) {
      for (auto it = a.begin(); it != a.end(); ++it)
        if (!it->second.IsScalar() || std::regex_match(scalar(it->second), std::regex("[0-9]+")))
          add("metadata.annotations", "values must be strings");
    }
  }
  void selector(const YAML::Node& s, const std::string& field) {
    if (!s.IsMap() || !s["matchLabels"].IsMap() || s["matchLabels"].size() == 0)
      return add(field, "matchLabels missing or empty");
    label_map(s["matchLabels"], field + ".matchLabels");
  }
  void service(const YAML::Node& spec) {
    if (!spec.IsMap()) return add("spec", "missing");
    auto type = scalar(spec["type"]);
    if (spec["type"] && type != "ClusterIP" && type != "NodePort" && type != "LoadBalancer")
      add("spec.type", "'" + type + "' is not a Service type");
    if (spec["clusterIP"] && scalar(spec["clusterIP"]) != "None")
      add("spec.clusterIP", "only None (headless) is emitted");
    if (!spec["selector"].IsMap() || spec["selector"].size() == 0) add("spec.selector", "missing");
    label_map(spec["selector"], "spec.selector");
    auto ports = spec["ports"];
    if (!ports.IsSequence() || ports.size() == 0) return add("spec.ports", "missing or empty");
    std::set<std::string> names;
    for (const auto& p : ports) {
      if (!is_int(p["port"], 1, 65535)) add("spec.ports[].port", "not a port number");
      auto name = scalar(p["name"]);
      if (ports.size() > 1 && !is_label(name)) add("spec.ports[].name", "required, a DNS label");
      if (!names.insert(name).second) add("spec.ports[].name", "'" + name + "' twice");
      auto proto = scalar(p["protocol"]);
      if (p["protocol"] && proto != "TCP" && proto != "UDP" && proto != "SCTP")
        add("spec.ports[].protocol", proto);
    }
  }
  void quantity(const YAML::Node& q, const std::string& field) {
    static const std::regex re(R"([0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?)");
    if (!q.IsScalar() || !std::regex_match(q.Scalar(), re)) add(field, "not a quantity");
  }
  void probe(const YAML::Node& p, const std::string& field, const std::set<std::string>& ports) {
    if (!p) return;
    int handlers = (p["httpGet"] ? 1 : 0) + (p["tcpSocket"] ? 1 : 0) + (p["exec"] ? 1 : 0);
    if (handlers != 1) return add(field, "exactly one handler");
    if (auto h = p["httpGet"]) {
      auto path = scalar(h["path"]);
      if (path.empty() || path[0] != '/') add(field + ".httpGet.path", "must start with /");
      auto port = h["port"];
      if (!is_int(port, 1, 65535) && !ports.count(scalar(port)))
        add(field + ".httpGet.port", "'" + scalar(port) + "' is no container port");
    }
  }
  void statefulset(const YAML::Node& spec) {
    if (!spec.IsMap()) return add("spec", "missing");
    if (scalar(spec["serviceName"]).empty()) add("spec.serviceName", "missing");
    if (!is_int(spec["replicas"], 0, 1 << 20)) add("spec.replicas", "not a count");
    auto pmp = scalar(spec["podManagementPolicy"]);
    if (spec["podManagementPolicy"] && pmp != "Parallel" && pmp != "OrderedReady")
      add("spec.podManagementPolicy", pmp);
    selector(spec["selector"], "spec.selector");
    auto labels = spec["template"]["metadata"]["labels"];
    label_map(labels, "spec.template.metadata.labels");
    if (spec["selector"]["matchLabels"].IsMap())
      for (auto it = spec["selector"]["matchLabels"].begin();
           it != spec["selector"]["matchLabels"].end(); ++it)
        if (!labels.IsMap() || scalar(labels[scalar(it->first)]) != scalar(it->second))
          add("spec.selector", "does not match the template's labels");
    auto pod = spec["template"]["spec"];
    if (!pod.IsMap()) return add("spec.template.spec", "missing");
    std::set<std::string> volumes;
    for (const auto& v : pod["volumes"]) {
      auto name = scalar(v["name"]);
      if (!is_label(name)) add("volumes[].name", "not a DNS label");
      volumes.insert(name);
      int sources = (v["configMap"] ? 1 : 0) + (v["persistentVolumeClaim"] ? 1 : 0) +
                    (v["emptyDir"] ? 1 : 0) + (v["hostPath"] ? 1 : 0) + (v["secret"] ? 1 : 0);
      if (sources != 1) add("volumes[" + name + "]", "exactly one source");
      if (v["configMap"] && scalar(v["configMap"]["name"]).empty())
        add("volumes[" + name + "].configMap.name", "missing");
      if (v["secret"] && scalar(v["secret"]["secretName"]).empty())
        add("volumes[" + name + "].secret.secretName", "missing");
      if (v["secret"] && v["secret"]["defaultMode"]) {
        auto mode = v["secret"]["defaultMode"];
        if (!mode.IsScalar() || mode.as<int>(-1) < 0 || mode.as<int>(-1) > 0777)
          add("volumes[" + name + "].secret.defaultMode", "not a file mode in 0..0777");
      }
      if (v["persistentVolumeClaim"] && scalar(v["persistentVolumeClaim"]["claimName"]).empty())
        add("volumes[" + name + "].persistentVolumeClaim.claimName", "missing");
    }
    auto containers = pod["containers"];
    if (!containers.IsSequence() || containers.size() == 0)
      return add("spec.template.spec.containers", "missing or empty");
    for (const auto& c : containers) {
      std::string cf = "containers[" + scalar(c["name"]) + "]";
      if (!is_label(scalar(c["name"]))) add(cf + ".name", "not a DNS label");
      if (scalar(c["image"]).empty()) add(cf + ".image", "missing");
      for (const auto& a : c["args"])
        if (!a.IsScalar()) add(cf + ".args", "not a string");
      std::set<std::string> ports;
      static const std::regex svc_name("[a-z0-9]([-a-z0-9]*[a-z0-9])?");
      for (const auto& p : c["ports"]) {
        if (!is_int(p["containerPort"], 1, 65535)) add(cf + ".ports[].containerPort", "not a port");
        auto name = scalar(p["name"]);
        if (p["name"] &&
            (name.size() > 15 || !std::regex_match(name, svc_name) || !ports.insert(name).second))
          add(cf + ".ports[].name", "'" + name + "' is no unique IANA service name");
      }
      for (const auto& e : c["env"]) {
        if (scalar(e["name"]).empty()) add(cf + ".env[].name", "missing");
        if (e["value"].IsDefined() == e["valueFrom"].IsDefined())
          add(cf + ".env[" + scalar(e["name"]) + "]", "exactly one of value and valueFrom");
      }
      for (const auto& m : c["volumeMounts"]) {
        if (!volumes.count(scalar(m["name"])))
          add(cf + ".volumeMounts", "'" + scalar(m["name"]) + "' is no volume of the pod");
        if (scalar(m["mountPath"]).rfind('/', 0) != 0)
          add(cf + ".volumeMounts[].mountPath", "not absolute");
      }
      probe(c["readinessProbe"], cf + ".readinessProbe", ports);
      probe(c["livenessProbe"], cf + ".livenessProbe", ports);
      probe(c["startupProbe"], cf + ".startupProbe", ports);
      auto res = c["resources"];
      for (const char* part : {"requests", "limits"})
        for (auto it = res[part].begin(); res[part].IsMap() && it != res[part].end(); ++it)
          quantity(it->second, cf + ".resources." + part + "." + scalar(it->first));
      // An extended resource (a GPU) must be in limits, equal to any request.
      for (auto it = res["requests"].begin();
           res["requests"].IsMap() && it != res["requests"].end(); ++it) {
        auto k = scalar(it->first);
        if (k.find('/') != std::string::npos && scalar(res["limits"][k]) != scalar(it->second))
          add(cf + ".resources", k + ": an extended resource's limit must equal its request");
      }
    }
  }
};

}  // namespace tokenmill::testing
