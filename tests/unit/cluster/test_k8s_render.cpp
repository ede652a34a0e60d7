// `tokenmill k8s render` as plain functions (cluster/k8s_render.hpp): role groups, pod
// names and DNS addresses, the in-cluster manifest (it parses, and agrees with the given
// one in roles, options and ports), every object against our schema check, resources, and
// bad options and names.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <yaml-cpp/yaml.h>
#include <catch2/catch.hpp>

#include "cluster/k8s_render.hpp"
#include "cluster/manifest.hpp"
#include "k8s_schema.hpp"

using namespace tokenmill;
namespace fs = std::filesystem;

namespace {

const std::string three_nodes = R"(cluster: demo_1
model: {sim: {decode_step_ms: 10}}
defaults: {engine: sim, kv_transport: ucx}
frontend: {node: head, rpc_port: 7700, http_port: 8000}
router: {migration_limit: 2}
nodes:
  - {name: head, address: 127.0.0.1, actors: [router, supervisor, kv_store]}
  - {name: p0, address: 10.0.0.2, ssh: me@host2, actors: [{prefill: {threads: 2}}]}
  - {name: d0, address: 10.0.0.3, actors: [{decode: {threads: 3, max_batch: 32}}]}
)";

/// The test manifests span hosts in plaintext on purpose (TLS is not what they test).
manifest parse(std::string text) {
  if (text.find("security:") == std::string::npos) text += "security: {insecure: true}\n";
  auto m = parse_manifest(text, "test.yaml", "", manifest_options{false});
  INFO((m ? std::string() : m.error().message));
  REQUIRE(m);
  return *m;
}

k8s_options opts() {
  k8s_options o;
  o.image = "registry.local/tokenmill:0.1.0";
  o.insecure = true;
  return o;
}

k8s_rendering render(const std::string& text, const k8s_options& o = opts()) {
  auto r = render_k8s(parse(text), text, o);
  INFO((r ? std::string() : r.error().message));
  REQUIRE(r);
  return *r;
}

/// Every document of every file, by "Kind/name".
std::map<std::string, YAML::Node> objects(const k8s_rendering& r) {
  std::map<std::string, YAML::Node> out;
  for (const auto& f : r.files)
    for (const auto& doc : YAML::LoadAll(f.text))
      out[doc["kind"].as<std::string>() + "/" + doc["metadata"]["name"].as<std::string>()] = doc;
  return out;
}

void require_schema(const k8s_rendering& r) {
  testing::k8s_schema schema;
  size_t docs = 0;
  for (const auto& f : r.files)
    for (const auto& doc : YAML::LoadAll(f.text)) {
      ++docs;
      auto problems = schema.check(doc);
      for (const auto& p : problems)
        UNSCOPED_INFO(f.name << ": " << p);
      CHECK(problems.empty());
    }
  CHECK(docs == 2 + 3 * r.groups.size());
}

std::string env(const YAML::Node& container, const std::string& name) {
  for (const auto& e : container["env"])
    if (e["name"].as<std::string>() == name)
      return e["value"]
                 ? e["value"].as<std::string>()
                 : "<from " + e["valueFrom"]["fieldRef"]["fieldPath"].as<std::string>() + ">";
  return "";
}

}  // namespace

TEST_CASE("k8s_label makes DNS-1123 labels or refuses", "[k8s]") {
  CHECK(k8s_label("demo") == "demo");
  CHECK(k8s_label("Demo_Cluster.1") == "demo-cluster-1");
  CHECK(k8s_label("-x-") == "x");
  CHECK(k8s_label("___").empty());
  CHECK(k8s_label("").empty());
  CHECK(k8s_label("a b").empty());
  CHECK(k8s_label("ü").empty());
  CHECK(k8s_label(std::string(63, 'a')) == std::string(63, 'a'));
  CHECK(k8s_label(std::string(64, 'a')).empty());
}

TEST_CASE("k8s render: one group per role, pods named and addressed by StatefulSet", "[k8s]") {
  auto r = render(three_nodes);
  CHECK(r.prefix == "demo-1");
  REQUIRE(r.groups.size() == 3);
  CHECK(r.groups[0].name == "demo-1-head");
  CHECK(r.groups[0].frontend);
  CHECK(r.groups[0].supervisor);
  CHECK(r.groups[1].name == "demo-1-prefill");
  CHECK(r.groups[2].name == "demo-1-decode");
  CHECK(r.pod_names ==
        std::vector<std::string>{"demo-1-head-0", "demo-1-prefill-0", "demo-1-decode-0"});
  std::vector<std::string> files;
  for (const auto& f : r.files)
    files.push_back(f.name);
  CHECK(files == std::vector<std::string>{"configmap.yaml", "head.yaml", "prefill.yaml",
                                          "decode.yaml", "frontend-service.yaml"});
  require_schema(r);

  // The manifest the pods read: it parses, names nodes after pods, keeps roles and options.
  auto original = parse(three_nodes);
  auto inside = parse(r.manifest_text);
  CHECK(inside.cluster == original.cluster);
  CHECK(inside.router.migration_limit == 2);
  REQUIRE(inside.nodes.size() == 3);
  for (size_t i = 0; i < 3; ++i) {
    const auto& a = original.nodes[i];
    const auto& b = inside.nodes[i];
    CHECK(b.name == r.pod_names[i]);
    CHECK(b.address == r.pod_names[i] + "." + r.groups[i].name);
    CHECK(b.ssh.empty());
    CHECK(b.port == a.port);
    CHECK(b.http_port == a.http_port);
    REQUIRE(b.actors.size() == a.actors.size());
    for (size_t k = 0; k < a.actors.size(); ++k) {
      CHECK(b.actors[k].kind == a.actors[k].kind);
      if (a.actors[k].worker()) {
        CHECK(b.actors[k].worker()->threads == a.actors[k].worker()->threads);
        CHECK(b.actors[k].worker()->engine == a.actors[k].worker()->engine);
      }
    }
  }
  CHECK(inside.frontend.node == "demo-1-head-0");
  CHECK(inside.frontend.host == "0.0.0.0");
  CHECK(inside.frontend.rpc_port == 7700);
  CHECK(inside.frontend.http_port == 8000);

  auto objs = objects(r);
  auto cm = objs.at("ConfigMap/demo-1-manifest");
  CHECK(cm["data"]["cluster.yaml"].as<std::string>() == r.manifest_text);

  auto head = objs.at("StatefulSet/demo-1-head");
  CHECK(head["spec"]["replicas"].as<int>() == 1);
  CHECK(head["spec"]["serviceName"].as<std::string>() == "demo-1-head");
  auto c = head["spec"]["template"]["spec"]["containers"][0];
  CHECK(c["image"].as<std::string>() == "registry.local/tokenmill:0.1.0");
  std::vector<std::string> args;
  for (const auto& a : c["args"])
    args.push_back(a.as<std::string>());
  CHECK(args == std::vector<std::string>{"node", "--manifest", k8s_manifest_path, "--name",
                                         "$(POD_NAME)", "--join-timeout", "120"});
  CHECK(env(c, "POD_NAME") == "<from metadata.name>");
  CHECK(env(c, "UCX_TLS") == "tcp");
  CHECK(c["readinessProbe"]["httpGet"]["path"].as<std::string>() == "/ready");
  CHECK(c["livenessProbe"]["httpGet"]["path"].as<std::string>() == "/health");
  std::map<std::string, int> ports;
  for (const auto& p : c["ports"])
    ports[p["name"].as<std::string>()] = p["containerPort"].as<int>();
  CHECK(ports == std::map<std::string, int>{
                     {"control", original.nodes[0].port}, {"rpc", 7700}, {"http", 8000}});
  auto volume = head["spec"]["template"]["spec"]["volumes"][0];
  CHECK(volume["configMap"]["name"].as<std::string>() == "demo-1-manifest");

  auto decode = objs.at("StatefulSet/demo-1-decode");
  auto dc = decode["spec"]["template"]["spec"]["containers"][0];
  CHECK(dc["readinessProbe"]["httpGet"]["path"].as<std::string>() == "/health");
  CHECK(dc["resources"]["requests"]["cpu"].as<std::string>() == "3");
  CHECK(!dc["resources"]["requests"]["nvidia.com/gpu"]);
  CHECK(!dc["resources"]["limits"]);

  auto svc = objs.at("Service/demo-1-decode");
  CHECK(svc["spec"]["clusterIP"].as<std::string>() == "None");
  CHECK(svc["spec"]["publishNotReadyAddresses"].as<bool>());
  auto fe = objs.at("Service/demo-1-frontend");
  CHECK(fe["spec"]["type"].as<std::string>() == "ClusterIP");
  CHECK(fe["spec"]["selector"]["statefulset.kubernetes.io/pod-name"].as<std::string>() ==
        "demo-1-head-0");
  CHECK(fe["spec"]["ports"][0]["port"].as<int>() == 7700);
  CHECK(fe["spec"]["ports"][1]["port"].as<int>() == 8000);

  // Evicting the supervisor's pod takes the cluster down; a worker's pod may go.
  CHECK(objs.at("PodDisruptionBudget/demo-1-head")["spec"]["maxUnavailable"].as<int>() == 0);
  CHECK(objs.at("PodDisruptionBudget/demo-1-decode")["spec"]["maxUnavailable"].as<int>() == 1);
}

TEST_CASE("k8s render: identical nodes share a StatefulSet and its first node's ports", "[k8s]") {
  const std::string text = R"(cluster: big
model: {sim: {}}
frontend: {node: head}
nodes:
  - {name: head, address: h, actors: [router, supervisor, kv_store]}
  - {name: p0, address: a, actors: [{prefill: {threads: 1}}]}
  - {name: d0, address: b, actors: [{decode: {max_batch: 8}}]}
  - {name: p1, address: c, actors: [{prefill: {threads: 1}}]}
  - {name: d1, address: d, actors: [{decode: {max_batch: 8}}]}
  - {name: d2, address: e, actors: [{decode: {max_batch: 16}}]}
  - {name: x0, address: f, actors: [{prefill: {}}, {decode: {max_batch: 8}}]}
)";
  auto r = render(text);
  REQUIRE(r.groups.size() == 5);
  CHECK(r.groups[1].name == "big-prefill");
  CHECK(r.groups[1].nodes == std::vector<size_t>{1, 3});
  CHECK(r.groups[2].name == "big-decode");
  CHECK(r.groups[2].nodes == std::vector<size_t>{2, 4});
  CHECK(r.groups[3].name == "big-decode-2");  // another max_batch: another group
  CHECK(r.groups[4].name == "big-worker");
  CHECK(r.pod_names[3] == "big-prefill-1");
  CHECK(r.pod_names[4] == "big-decode-1");
  require_schema(r);
  auto original = parse(text);
  auto inside = parse(r.manifest_text);
  CHECK(inside.nodes[3].port == original.nodes[1].port);  // the group's first node's
  CHECK(inside.nodes[3].http_port == original.nodes[1].http_port);
  CHECK(inside.nodes[4].port == original.nodes[2].port);
  CHECK(objects(r).at("StatefulSet/big-decode")["spec"]["replicas"].as<int>() == 2);
  // The manifest's hash is in the pod template: a changed manifest rolls the pods.
  auto ann = objects(r).at("StatefulSet/big-prefill")["spec"]["template"]["metadata"]["annotations"]
                                                     ["tokenmill.io/manifest-hash"];
  CHECK(ann.as<std::string>().rfind("xxh3-", 0) == 0);
}

TEST_CASE("k8s render: cuda workers request GPUs, a model file comes from a claim", "[k8s]") {
  auto dir = fs::temp_directory_path() / ("tokenmill-k8s-" + std::to_string(getpid()));
  fs::create_directories(dir);
  { std::ofstream(dir / "tiny.gguf") << "GGUF"; }
  const std::string text = R"(cluster: gpu
model: {path: tiny.gguf}
defaults: {engine: cuda}
frontend: {node: head}
security: {insecure: true}
nodes:
  - {name: head, address: h, actors: [router, supervisor, kv_store]}
  - {name: w0, address: a, actors: [{prefill: {device: 0, threads: 2}}, {decode: {device: 1, threads: 2}}]}
  - {name: c0, address: b, actors: [{decode: {engine: cpu, threads: 4}}]}
)";
  auto m = parse_manifest(text, (dir / "m.yaml").string(), dir.string(), manifest_options{false});
  REQUIRE(m);
  auto o = opts();
  o.memory = "16Gi";
  auto r = render_k8s(*m, text, o);
  fs::remove_all(dir);
  REQUIRE(r);
  require_schema(*r);
  auto objs = objects(*r);
  auto w = objs.at("StatefulSet/gpu-worker")["spec"]["template"]["spec"];
  auto res = w["containers"][0]["resources"];
  CHECK(res["requests"]["nvidia.com/gpu"].as<std::string>() == "2");  // device 1 needs two
  CHECK(res["limits"]["nvidia.com/gpu"].as<std::string>() == "2");
  CHECK(res["requests"]["cpu"].as<std::string>() == "4");
  CHECK(res["limits"]["memory"].as<std::string>() == "16Gi");
  auto c = objs.at("StatefulSet/gpu-decode")["spec"]["template"]["spec"];
  CHECK(!c["containers"][0]["resources"]["requests"]["nvidia.com/gpu"]);
  CHECK(objs.at("StatefulSet/gpu-head")["spec"]["template"]["spec"]["containers"][0]["resources"]
                                       ["requests"]["cpu"]
                                           .as<std::string>() == "1");
  // The model: the claim mounted read-only at /models, the manifest pointing into it.
  bool claim = false;
  for (const auto& v : w["volumes"])
    if (v["persistentVolumeClaim"]) {
      claim = true;
      CHECK(v["persistentVolumeClaim"]["claimName"].as<std::string>() == "gpu-models");
    }
  CHECK(claim);
  auto inside = YAML::Load(r->manifest_text);
  CHECK(inside["model"]["path"].as<std::string>() == "/models/tiny.gguf");
  CHECK(inside["defaults"]["engine"].as<std::string>() == "cuda");
}

TEST_CASE("k8s render: options and names Kubernetes would refuse are errors", "[k8s]") {
  auto m = parse(three_nodes);
  auto refused = [&](k8s_options o, const std::string& phrase) {
    auto r = render_k8s(m, three_nodes, o);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == errc::invalid_request);
    CHECK_THAT(r.error().message, Catch::Contains(phrase));
  };
  auto o = opts();
  o.image = "";
  refused(o, "--image");
  o = opts();
  o.service_type = "Ingress";
  refused(o, "--service-type: 'Ingress'");
  o = opts();
  o.memory = "lots";
  refused(o, "--memory: 'lots'");
  o = opts();
  o.namespace_name = "My_NS";
  refused(o, "--namespace: 'My_NS'");
  o = opts();
  o.prefix = "Bad_Prefix";
  refused(o, "--prefix: 'Bad_Prefix'");
  o = opts();
  o.prefix = std::string(50, 'a');
  refused(o, "longer than 52 characters");
  o = opts();
  o.model_dir = "models";
  refused(o, "--model-dir");

  // A cluster name with nothing usable for Kubernetes: asks for --prefix.
  std::string text = three_nodes;
  text.replace(text.find("demo_1"), 6, "___");
  auto r = render_k8s(parse(text), text, opts());
  REQUIRE_FALSE(r);
  CHECK_THAT(r.error().message, Catch::Contains("--prefix"));
  auto named = opts();
  named.prefix = "ok";
  CHECK(render_k8s(parse(text), text, named));
}

TEST_CASE("k8s render: values that look like numbers stay strings", "[k8s]") {
  std::string text = three_nodes;
  text.replace(text.find("demo_1"), 6, "2024");
  auto r = render(text);
  require_schema(r);  // flags an unquoted numeric label value
  auto objs = objects(r);
  auto lbl = objs.at("Service/2024-frontend")["metadata"]["labels"]["app.kubernetes.io/instance"];
  CHECK(lbl.Tag() == "!");  // quoted
  CHECK(lbl.as<std::string>() == "2024");
  CHECK(parse(r.manifest_text).cluster == "2024");
}

TEST_CASE("k8s render: certificates, keys and the cluster secret come from a Secret", "[k8s]") {
  const std::string text =
      three_nodes +
      "security: {tls: {ca: certs/ca.crt, cert: 'certs/{node}.crt', key: 'certs/{node}.key'}, "
      "secret_file: certs/secret}\n";
  auto o = opts();
  o.insecure = false;
  auto r = render(text, o);
  require_schema(r);
  CHECK(r.security_secret == "demo-1-security");
  // The Secret holds the CA, each pod's certificate and key (pods are the in-cluster
  // nodes, and a node joins only under its certificate's name) and the cluster secret.
  std::vector<std::string> keys;
  for (const auto& [key, local] : r.security_files) {
    keys.push_back(key);
    CHECK(fs::path(local).filename() == key);
  }
  CHECK(keys == std::vector<std::string>{"ca.crt", "demo-1-head-0.crt", "demo-1-head-0.key",
                                         "demo-1-prefill-0.crt", "demo-1-prefill-0.key",
                                         "demo-1-decode-0.crt", "demo-1-decode-0.key", "secret"});
  auto cmd = k8s_secret_command(r, "serving");
  CHECK_THAT(cmd, Catch::StartsWith("kubectl create secret generic demo-1-security --namespace "
                                    "serving") &&
                      Catch::Contains("--from-file=demo-1-decode-0.key=") &&
                      Catch::Contains("--from-file=secret="));
  // Every pod mounts it read-only, owner-only, where the in-cluster manifest points.
  auto objs = objects(r);
  for (const auto& g : r.groups) {
    auto pod = objs.at("StatefulSet/" + g.name)["spec"]["template"]["spec"];
    bool has_volume = false, has_mount = false;
    for (const auto& v : pod["volumes"])
      if (v["secret"]) {
        has_volume = v["secret"]["secretName"].as<std::string>() == "demo-1-security" &&
                     v["secret"]["defaultMode"].as<int>() == 0400;
      }
    for (const auto& m : pod["containers"][0]["volumeMounts"])
      if (m["name"].as<std::string>() == "security")
        has_mount =
            m["mountPath"].as<std::string>() == k8s_security_dir && m["readOnly"].as<bool>();
    CHECK(has_volume);
    CHECK(has_mount);
  }
  auto inside = parse(r.manifest_text);
  REQUIRE(inside.security.tls);
  CHECK_FALSE(inside.security.insecure);
  CHECK(inside.security.tls->ca == "/etc/tokenmill/security/ca.crt");
  CHECK(inside.security.tls->cert_for("demo-1-head-0") ==
        "/etc/tokenmill/security/demo-1-head-0.crt");
  CHECK(inside.security.tls->key_for("demo-1-decode-0") ==
        "/etc/tokenmill/security/demo-1-decode-0.key");
  CHECK(inside.security.secret_file == "/etc/tokenmill/security/secret");

  // Without TLS or a secret there is no Secret.
  auto plain = render(three_nodes);
  CHECK(plain.security_secret.empty());
  CHECK(k8s_secret_command(plain, "").empty());

  // Files whose names collide cannot share the Secret's one folder.
  const std::string clash =
      three_nodes +
      "security: {tls: {ca: a/node.pem, cert: 'b/{node}.pem', key: 'c/{node}.pem'}}\n";
  auto bad = render_k8s(parse(clash), clash, o);
  REQUIRE_FALSE(bad);
  CHECK_THAT(bad.error().message,
             Catch::Contains("security.tls.key") && Catch::Contains("has the file name of"));
}
