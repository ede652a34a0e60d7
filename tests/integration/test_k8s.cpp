// `tokenmill k8s render` from the command line: the example manifest becomes files of
// YAML that parse and pass our schema check (kubectl's client-side dry run needs an API
// server, so it cannot be the check here); a bad manifest or option writes nothing.
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>

#include <yaml-cpp/yaml.h>
#include <catch2/catch.hpp>

#include "../unit/cluster/k8s_schema.hpp"
#include "harness.hpp"

using namespace tokenmill::testing;
namespace fs = std::filesystem;

TEST_CASE("k8s render writes the example cluster as valid objects", "[k8s]") {
  temp_dir tmp("tokenmill-k8s");
  auto out = tmp.file("k8s");
  // Pods are hosts apart: a manifest without TLS is refused unless plaintext is asked for.
  auto plain = run_tokenmill({"k8s", "render", TOKENMILL_SOURCE_DIR "/examples/local-3node.yaml",
                              "-o", out, "--image", "tokenmill:test"});
  CHECK(plain.exit_code != 0);
  CHECK_THAT(plain.err, Catch::Contains("--insecure"));
  CHECK(!fs::exists(out));
  auto r =
      run_tokenmill({"k8s", "render", TOKENMILL_SOURCE_DIR "/examples/local-3node.yaml", "-o", out,
                     "--namespace", "serving", "--image", "tokenmill:test", "--insecure"});
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.out, Catch::Contains("StatefulSet local-3node-decode"));
  CHECK_THAT(r.out, Catch::Contains("kubectl apply -f " + out));
  std::set<std::string> names;
  std::set<std::string> kinds;
  k8s_schema schema;
  for (const auto& e : fs::directory_iterator(out)) {
    names.insert(e.path().filename().string());
    std::ifstream in(e.path());
    std::stringstream text;
    text << in.rdbuf();
    for (const auto& doc : YAML::LoadAll(text.str())) {
      kinds.insert(doc["kind"].as<std::string>());
      CHECK(doc["metadata"]["namespace"].as<std::string>() == "serving");
      auto problems = schema.check(doc);
      for (const auto& p : problems)
        UNSCOPED_INFO(e.path().filename().string() << ": " << p);
      CHECK(problems.empty());
    }
  }
  CHECK(names == std::set<std::string>{"configmap.yaml", "head.yaml", "prefill.yaml", "decode.yaml",
                                       "frontend-service.yaml"});
  CHECK(kinds ==
        std::set<std::string>{"ConfigMap", "Service", "StatefulSet", "PodDisruptionBudget"});
  // The manifest inside the ConfigMap passes `manifest check` as it stands.
  auto cm = YAML::LoadFile(out + "/configmap.yaml");
  std::ofstream(tmp.file("inside.yaml")) << cm["data"]["cluster.yaml"].as<std::string>();
  auto check = run_tokenmill({"manifest", "check", "--no-port-check", tmp.file("inside.yaml")});
  INFO(check.out << check.err);
  CHECK(check.exit_code == 0);
  CHECK_THAT(check.out, Catch::Contains("local-3node-decode-0"));
}

TEST_CASE("k8s render refuses a bad manifest or option and writes nothing", "[k8s]") {
  temp_dir tmp("tokenmill-k8s-bad");
  std::ofstream(tmp.file("bad.yaml")) << "cluster: x\nnodes: 3\n";
  auto r = run_tokenmill({"k8s", "render", tmp.file("bad.yaml"), "-o", tmp.file("out")});
  CHECK(r.exit_code == 2);
  CHECK_THAT(r.err, Catch::Contains("invalid manifest"));
  CHECK_THAT(r.err, Catch::Contains(tmp.file("bad.yaml") + ":"));
  CHECK(!fs::exists(tmp.file("out")));

  auto o = run_tokenmill({"k8s", "render", TOKENMILL_SOURCE_DIR "/examples/local-3node.yaml", "-o",
                          tmp.file("out"), "--service-type", "Ingress"});
  CHECK(o.exit_code == 2);
  CHECK_THAT(o.err, Catch::Contains("--service-type: 'Ingress'"));
  CHECK(!fs::exists(tmp.file("out")));

  auto missing = run_tokenmill({"k8s", "render", tmp.file("none.yaml"), "-o", tmp.file("out")});
  CHECK(missing.exit_code == 2);
  CHECK_THAT(missing.err, Catch::Contains(tmp.file("none.yaml")));
}
