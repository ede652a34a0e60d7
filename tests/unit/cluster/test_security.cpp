// Node authentication material: the manifest's security section, the cluster CA and node
// certificates `tokenmill certs init` writes, the checks a node runs on its TLS files and
// its secret before it starts.
#include <catch2/catch.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "cluster/manifest.hpp"
#include "cluster/security.hpp"

using namespace tokenmill;
namespace fs = std::filesystem;

namespace {

/// A fresh folder under /tmp, removed at the end of the test.
struct scratch {
  std::string path;
  scratch() {
    char tmpl[] = "/tmp/tokenmill-security-XXXXXX";
    path = ::mkdtemp(tmpl);
  }
  ~scratch() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return path + "/" + name; }
};

unsigned mode_of(const std::string& path) {
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  return st.st_mode & 0777;
}

void write(const std::string& path, const std::string& text, mode_t mode) {
  std::ofstream(path, std::ios::trunc) << text;
  REQUIRE(::chmod(path.c_str(), mode) == 0);
}

const std::string cluster_text = R"(
cluster: demo
model: {sim: {}}
frontend: {node: head}
nodes:
  - name: head
    address: 127.0.0.1
    actors: [router, supervisor, kv_store]
  - name: d0
    address: ADDRESS
    actors: [decode]
router: {local_prefill_threshold: 64}
)";

result<manifest> parse_with(const std::string& security, const std::string& address) {
  std::string text = cluster_text;
  text.replace(text.find("ADDRESS"), 7, address);
  if (!security.empty()) text += "security: " + security + "\n";
  return parse_manifest(text, "s.yaml", "/etc/tm", {false});
}

}  // namespace

TEST_CASE("security: the manifest section resolves paths and per-node files", "[security]") {
  SECTION("tls: auto is certs/ beside the manifest") {
    auto m = parse_with("{tls: auto, secret_file: certs/secret}", "10.0.0.2");
    INFO((m ? std::string() : m.error().message));
    REQUIRE(m);
    REQUIRE(m->security.tls);
    CHECK(m->security.tls->generated);
    CHECK(m->security.certs_dir == "/etc/tm/certs");
    CHECK(m->security.tls->ca == "/etc/tm/certs/ca.crt");
    CHECK(m->security.tls->cert_for("d0") == "/etc/tm/certs/d0.crt");
    CHECK(m->security.tls->key_for("head") == "/etc/tm/certs/head.key");
    CHECK(m->security.secret_file == "/etc/tm/certs/secret");
  }
  SECTION("explicit files, {node} replaced, absolute paths kept") {
    auto m =
        parse_with("{tls: {ca: /pki/ca.pem, cert: 'n/{node}/{node}.pem', key: k.pem}}", "10.0.0.2");
    REQUIRE(m);
    CHECK_FALSE(m->security.tls->generated);
    CHECK(m->security.tls->ca == "/pki/ca.pem");
    CHECK(m->security.tls->cert_for("d0") == "/etc/tm/n/d0/d0.pem");
    CHECK(m->security.tls->key_for("d0") == "/etc/tm/k.pem");
    CHECK(m->security.secret_file.empty());
  }
  SECTION("hosts other than this one need TLS or insecure: true") {
    CHECK(parse_with("", "127.0.0.1"));  // one host: no certificates needed
    CHECK(parse_with("", "localhost"));
    auto plain = parse_with("", "10.0.0.2");
    REQUIRE_FALSE(plain);
    CHECK_THAT(plain.error().message, Catch::Contains("s.yaml:10:") &&
                                          Catch::Contains("nodes[1].address") &&
                                          Catch::Contains("security: {insecure: true}"));
    CHECK(parse_with("{insecure: true}", "10.0.0.2"));
    CHECK(parse_with("{tls: auto}", "10.0.0.2"));
    // insecure: false is no permission.
    CHECK_FALSE(parse_with("{insecure: false}", "10.0.0.2"));
  }
  SECTION("a node launched over ssh is on another host whatever its address") {
    std::string text = cluster_text;
    text.replace(text.find("ADDRESS"), 7, "127.0.0.1\n    ssh: bob@gpu-2");
    auto m = parse_manifest(text, "s.yaml", ".", {false});
    REQUIRE_FALSE(m);
    CHECK_THAT(m.error().message, Catch::Contains("launched over ssh on another host"));
  }
}

TEST_CASE("security: the hash covers what is on, not where the files are", "[security]") {
  auto plain = parse_with("", "127.0.0.1");
  auto tls_a = parse_with("{tls: auto}", "127.0.0.1");
  auto tls_b = parse_with("{tls: {ca: a, cert: b, key: c}}", "127.0.0.1");
  auto secret_a = parse_with("{secret_file: x}", "127.0.0.1");
  auto secret_b = parse_with("{secret_file: /elsewhere/y}", "127.0.0.1");
  auto insecure = parse_with("{insecure: true}", "127.0.0.1");
  REQUIRE((plain && tls_a && tls_b && secret_a && secret_b && insecure));
  CHECK(manifest_hash(*tls_a) == manifest_hash(*tls_b));
  CHECK(manifest_hash(*secret_a) == manifest_hash(*secret_b));
  CHECK(manifest_hash(*plain) != manifest_hash(*tls_a));
  CHECK(manifest_hash(*plain) != manifest_hash(*secret_a));
  CHECK(manifest_hash(*tls_a) != manifest_hash(*secret_a));
  CHECK(manifest_hash(*plain) != manifest_hash(*insecure));
  CHECK_THAT(describe(*tls_a), Catch::Contains("security: tls auto"));
  CHECK_THAT(describe(*plain), Catch::Contains("security: tls off, cluster secret none"));
}

TEST_CASE("security: certs init makes a CA, node certificates and a secret", "[security]") {
  scratch d;
  auto dir = d.file("certs");
  auto r = create_cluster_certs(dir, {"head", "d0"});
  INFO((r ? std::string() : r.error().message));
  REQUIRE(r);
  CHECK(r->created.size() == 7);  // ca.key, ca.crt, 2 x (key, crt), secret
  for (auto f : {"ca.key", "head.key", "d0.key", "secret"})
    CHECK(mode_of(dir + "/" + f) == 0600);
  CHECK(mode_of(dir) == 0700);
  auto cn = check_tls_files({dir + "/ca.crt", dir + "/d0.crt", dir + "/d0.key"});
  INFO((cn ? std::string() : cn.error().message));
  REQUIRE(cn);
  CHECK(*cn == "d0");
  // Each node's certificate is issued for its name (CN and DNS subjectAltName), which the
  // supervisor checks at join (actors/supervisor/node_certificates.hpp).
  auto names = certificate_names(dir + "/d0.crt");
  REQUIRE(names);
  CHECK(*names == std::vector<std::string>{"d0"});
  auto head_names = certificate_names(dir + "/head.crt");
  REQUIRE(head_names);
  CHECK(*head_names == std::vector<std::string>{"head"});
  auto ca_names = certificate_names(dir + "/ca.crt");
  REQUIRE(ca_names);
  CHECK(std::find(ca_names->begin(), ca_names->end(), "d0") == ca_names->end());
  auto missing_names = certificate_names(dir + "/nope.crt");
  REQUIRE_FALSE(missing_names);
  CHECK_THAT(missing_names.error().message, Catch::Contains(dir + "/nope.crt"));
  auto secret = read_secret_file(dir + "/secret");
  REQUIRE(secret);
  CHECK(secret->size() == 64);

  SECTION("a second run keeps everything and adds new nodes, signed by the same CA") {
    auto again = create_cluster_certs(dir, {"head", "d0", "d1"});
    REQUIRE(again);
    CHECK(again->created == std::vector<std::string>{dir + "/d1.key", dir + "/d1.crt"});
    CHECK(check_tls_files({dir + "/ca.crt", dir + "/d1.crt", dir + "/d1.key"}));
    CHECK(check_tls_files({dir + "/ca.crt", dir + "/head.crt", dir + "/head.key"}));
  }
  SECTION("a certificate of another CA does not chain") {
    auto other = d.file("other");
    REQUIRE(create_cluster_certs(other, {"d0"}));
    auto bad = check_tls_files({dir + "/ca.crt", other + "/d0.crt", other + "/d0.key"});
    REQUIRE_FALSE(bad);
    CHECK_THAT(bad.error().message,
               Catch::Contains("does not chain to the CA") && Catch::Contains(other + "/d0.crt"));
  }
  SECTION("a key that is not the certificate's") {
    auto bad = check_tls_files({dir + "/ca.crt", dir + "/d0.crt", dir + "/head.key"});
    REQUIRE_FALSE(bad);
    CHECK_THAT(bad.error().message, Catch::Contains("does not belong to the certificate"));
  }
  SECTION("a key others can read is refused") {
    REQUIRE(::chmod((dir + "/d0.key").c_str(), 0644) == 0);
    auto bad = check_tls_files({dir + "/ca.crt", dir + "/d0.crt", dir + "/d0.key"});
    REQUIRE_FALSE(bad);
    CHECK_THAT(bad.error().message, Catch::Contains("mode 0644") && Catch::Contains("chmod 600"));
  }
  SECTION("missing and malformed files are named") {
    auto missing = check_tls_files({dir + "/nope.crt", dir + "/d0.crt", dir + "/d0.key"});
    REQUIRE_FALSE(missing);
    CHECK_THAT(missing.error().message,
               Catch::Contains("security.tls.ca") && Catch::Contains(dir + "/nope.crt"));
    write(d.file("junk.crt"), "not a certificate\n", 0644);
    auto junk = check_tls_files({dir + "/ca.crt", d.file("junk.crt"), dir + "/d0.key"});
    REQUIRE_FALSE(junk);
    CHECK_THAT(junk.error().message, Catch::Contains("is not a PEM certificate"));
  }
  SECTION("bad node names write nothing") {
    auto bad = create_cluster_certs(d.file("x"), {"ok", "../evil"});
    REQUIRE_FALSE(bad);
    CHECK_THAT(bad.error().message, Catch::Contains("'../evil' is not a node name"));
    CHECK_FALSE(fs::exists(d.file("x")));
  }
}

TEST_CASE("security: the secret file is private and long enough", "[security]") {
  scratch d;
  write(d.file("s"), "0123456789abcdef0123\n", 0600);
  auto ok = read_secret_file(d.file("s"));
  REQUIRE(ok);
  CHECK(ok->size() == 20);
  write(d.file("open"), "0123456789abcdef0123\n", 0644);
  auto open = read_secret_file(d.file("open"));
  REQUIRE_FALSE(open);
  CHECK_THAT(open.error().message,
             Catch::Contains("security.secret_file") && Catch::Contains("mode 0644"));
  write(d.file("short"), "abc\n", 0600);
  auto shorty = read_secret_file(d.file("short"));
  REQUIRE_FALSE(shorty);
  CHECK_THAT(shorty.error().message, Catch::Contains("at least 16"));
  // Errors never show the secret.
  CHECK(open.error().message.find("0123456789") == std::string::npos);
  auto missing = read_secret_file(d.file("none"));
  REQUIRE_FALSE(missing);
  CHECK_THAT(missing.error().message, Catch::Contains("cannot be read"));
}
