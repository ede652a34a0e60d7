// Slurm allocations as host manifests (cluster/slurm.hpp): the hostlist and tasks-per-node
// syntaxes, and templates placed onto allocations (counts, shares, several tasks per host,
// and every way a template and an allocation can disagree).
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "cluster/manifest.hpp"
#include "cluster/slurm.hpp"

using namespace tokenmill;
using strings = std::vector<std::string>;

namespace {

strings hosts(const std::string& list) {
  auto r = expand_hostlist(list);
  INFO(list << ": " << (r ? std::string() : r.error().message));
  REQUIRE(r);
  return *r;
}

std::string refused_hostlist(const std::string& list) {
  auto r = expand_hostlist(list, 1000);
  REQUIRE_FALSE(r);
  CHECK(r.error().code == errc::invalid_request);
  return r.error().message;
}

const std::string tmpl = R"(cluster: slurm-test
model: {sim: {decode_step_ms: 5}}
defaults: {kv_transport: ucx}
frontend: {rpc_port: 7700, http_port: 8000}
slurm:
  head: [router, supervisor, kv_store]
  roles:
    - {count: 1, actors: [{prefill: {threads: 2}}]}
    - {name: dec, share: 1, actors: [{decode: {max_batch: 16}}]}
)";

slurm_allocation alloc(const std::string& list, const std::string& tasks = "") {
  auto a = slurm_allocation_from(list, tasks);
  INFO((a ? std::string() : a.error().message));
  REQUIRE(a);
  return *a;
}

/// The templates span hosts in plaintext on purpose (TLS is not what these tests test).
std::string insecure(std::string text) {
  if (text.find("security:") == std::string::npos) text += "security: {insecure: true}\n";
  return text;
}

slurm_manifest place(const std::string& text, const slurm_allocation& a) {
  auto m = manifest_from_slurm(insecure(text), "/jobs/t.yaml", a);
  INFO((m ? std::string() : m.error().message));
  REQUIRE(m);
  return *m;
}

std::string refused(const std::string& text, const slurm_allocation& a) {
  auto m = manifest_from_slurm(insecure(text), "/jobs/t.yaml", a);
  REQUIRE_FALSE(m);
  CHECK(m.error().code == errc::invalid_request);
  return m.error().message;
}

}  // namespace

TEST_CASE("hostlist: names, ranges with padding, lists and products", "[slurm]") {
  CHECK(hosts("gpu5") == strings{"gpu5"});
  CHECK(hosts("node[01-03,07],gpu5") == strings{"node01", "node02", "node03", "node07", "gpu5"});
  CHECK(hosts("n[8-10]") == strings{"n8", "n9", "n10"});
  CHECK(hosts("n[098-101]") == strings{"n098", "n099", "n100", "n101"});
  CHECK(hosts("rack[1-2]-n[01-02].lan") ==
        strings{"rack1-n01.lan", "rack1-n02.lan", "rack2-n01.lan", "rack2-n02.lan"});
  CHECK(hosts("a,b[3],c") == strings{"a", "b3", "c"});
  CHECK(hosts("localhost") == strings{"localhost"});
  CHECK(hosts("n[0-4095]").size() == 4096);
}

TEST_CASE("hostlist: malformed lists are refused with the place", "[slurm]") {
  CHECK_THAT(refused_hostlist(""), Catch::Contains("empty"));
  CHECK_THAT(refused_hostlist("a,,b"), Catch::Contains("character 3: an empty host name"));
  CHECK_THAT(refused_hostlist("a,"), Catch::Contains("an empty host name"));
  CHECK_THAT(refused_hostlist("n[1-3"), Catch::Contains("character 2: '[' is not closed"));
  CHECK_THAT(refused_hostlist("n1-3]"), Catch::Contains("']' without '['"));
  CHECK_THAT(refused_hostlist("n[[1]]"), Catch::Contains("brackets inside brackets"));
  CHECK_THAT(refused_hostlist("n[]"), Catch::Contains("'' is not a number"));
  CHECK_THAT(refused_hostlist("n[a-b]"), Catch::Contains("'a-b' is not a number"));
  CHECK_THAT(refused_hostlist("n[5-3]"), Catch::Contains("'5-3' runs backwards"));
  CHECK_THAT(refused_hostlist("n[1-,2]"), Catch::Contains("'1-' is not a number"));
  CHECK_THAT(refused_hostlist("n[0-5000]"), Catch::Contains("more than 1000 hosts"));
  CHECK_THAT(refused_hostlist("n[0-99][0-99]"), Catch::Contains("more than 1000 hosts"));
  CHECK_THAT(refused_hostlist("bad host"), Catch::Contains("'bad host' is not a host name"));
  CHECK_THAT(refused_hostlist("n[1-2]$"), Catch::Contains("is not a host name"));
}

TEST_CASE("tasks per node: counts and repeats", "[slurm]") {
  auto t = expand_tasks_per_node("2(x3),1");
  REQUIRE(t);
  CHECK(*t == std::vector<uint32_t>{2, 2, 2, 1});
  CHECK(*expand_tasks_per_node("3") == std::vector<uint32_t>{3});
  for (const char* bad : {"", "0", "2(x0)", "x", "2(x3", "2(3)", "1,,1", "-1"}) {
    INFO(bad);
    CHECK_FALSE(expand_tasks_per_node(bad));
  }
  auto mismatch = slurm_allocation_from("n[1-3]", "2(x2)");
  REQUIRE_FALSE(mismatch);
  CHECK_THAT(mismatch.error().message, Catch::Contains("describes 2 hosts"));
  CHECK_THAT(slurm_allocation_from("n[1-", "").error().message,
             Catch::StartsWith("SLURM_JOB_NODELIST: "));
}

TEST_CASE("from-slurm: the head first, counts, then shares of the rest", "[slurm]") {
  auto m = place(tmpl, alloc("node[01-05]"));
  REQUIRE(m.nodes.size() == 5);
  CHECK(m.nodes[0].name == "head");
  CHECK(m.nodes[0].host == "node01");
  CHECK(m.nodes[1].name == "p0");  // default name of a prefill role
  CHECK(m.nodes[1].host == "node02");
  CHECK(m.nodes[2].name == "dec0");
  CHECK(m.nodes[4].name == "dec2");
  CHECK(m.nodes[4].host == "node05");
  auto parsed = parse_manifest(m.text, "made.yaml", "", manifest_options{false});
  REQUIRE(parsed);
  CHECK(parsed->frontend.node == "head");
  CHECK(parsed->frontend.rpc_port == 7700);
  REQUIRE(parsed->nodes.size() == 5);
  CHECK(parsed->nodes[1].actors[0].prefill()->threads == 2);
  CHECK(parsed->nodes[3].actors[0].decode()->max_batch == 16);
  CHECK(parsed->nodes[2].address == "node03");
}

TEST_CASE("from-slurm: several tasks on one host are nodes on distinct ports", "[slurm]") {
  auto m = place(tmpl, alloc("localhost", "3"));
  REQUIRE(m.nodes.size() == 3);
  auto parsed = parse_manifest(m.text, "made.yaml", "", manifest_options{false});
  REQUIRE(parsed);
  CHECK(parsed->nodes[0].address == "localhost");
  CHECK(parsed->nodes[2].address == "localhost");
  CHECK(parsed->nodes[0].port != parsed->nodes[1].port);
  CHECK(parsed->nodes[1].port != parsed->nodes[2].port);
  // Two hosts with two tasks each, then one: slots go host by host.
  auto m2 = place(tmpl, alloc("a,b[1-2]", "2,1(x2)"));
  CHECK(m2.nodes[0].host == "a");
  CHECK(m2.nodes[1].host == "a");
  CHECK(m2.nodes[2].host == "b1");
  CHECK(m2.nodes[3].host == "b2");
  // Explicit first ports: one per slot from there.
  std::string ported = tmpl;
  ported.replace(ported.find("slurm:\n"), 7,
                 "slurm:\n  first_port: 9100\n  first_http_port: 9200\n");
  auto p = parse_manifest(place(ported, alloc("localhost", "3")).text, "made.yaml", "",
                          manifest_options{false});
  REQUIRE(p);
  CHECK(p->nodes[0].port == 9100);
  CHECK(p->nodes[2].port == 9102);
  CHECK(p->nodes[1].http_port == 9201);
  ported.replace(ported.find("9100"), 4, "70000");
  CHECK_THAT(refused(ported, alloc("localhost", "3")),
             Catch::Contains("slurm.first_port: above 65535"));
}

TEST_CASE("from-slurm: shares split the rest in proportion, one each at least", "[slurm]") {
  const std::string t = R"(cluster: s
model: {sim: {}}
slurm:
  head: [router, supervisor, kv_store]
  roles:
    - {share: 1, actors: [{prefill: {}}]}
    - {share: 3, actors: [{decode: {}}]}
)";
  auto count = [&](const slurm_manifest& m, char c) {
    return std::count_if(m.nodes.begin(), m.nodes.end(),
                         [&](const slurm_node& n) { return n.name[0] == c; });
  };
  auto m = place(t, alloc("n[1-9]"));  // 8 to split: 1 + 1 each, then 6 as 1:3 -> 1.5/4.5
  CHECK(count(m, 'p') + count(m, 'd') == 8);
  CHECK(count(m, 'd') >= 5);
  CHECK(count(m, 'p') >= 2);
  auto small = place(t, alloc("n[1-3]"));
  CHECK(count(small, 'p') == 1);
  CHECK(count(small, 'd') == 1);
}

TEST_CASE("from-slurm: templates that do not fit the allocation are refused", "[slurm]") {
  // Too few slots: head + 1 counted + 1 share role.
  CHECK_THAT(refused(tmpl, alloc("n[1-2]")),
             Catch::Contains("needs 3 nodes") && Catch::Contains("2 task slots on 2 hosts"));
  // Slots left over and no share role to take them.
  std::string counts_only = tmpl;
  counts_only.replace(counts_only.find("share: 1"), 8, "count: 1");
  CHECK_THAT(refused(counts_only, alloc("n[1-4]")), Catch::Contains("places 3 nodes"));
  CHECK(place(counts_only, alloc("n[1-3]")).nodes.size() == 3);
}

TEST_CASE("from-slurm: malformed templates name the field and position", "[slurm]") {
  auto a = alloc("n[1-3]");
  auto with = [&](const std::string& from, const std::string& to) {
    std::string t = tmpl;
    auto at = t.find(from);
    REQUIRE(at != std::string::npos);
    return t.replace(at, from.size(), to);
  };
  CHECK_THAT(refused("a: [", a), Catch::StartsWith("/jobs/t.yaml:"));
  CHECK_THAT(refused("- 1\n", a), Catch::Contains("not a mapping"));
  CHECK_THAT(refused(tmpl + "nodes: []\n", a), Catch::Contains("nodes: given"));
  CHECK_THAT(refused(with("{rpc_port: 7700", "{node: x, rpc_port: 7700"), a),
             Catch::Contains("frontend.node: given"));
  CHECK_THAT(refused(with("slurm:\n  head", "slurmx:\n  head"), a),
             Catch::Contains("slurm: missing"));
  CHECK_THAT(refused(with("  head: [router, supervisor, kv_store]\n", "  hed: []\n"), a),
             Catch::Contains("/jobs/t.yaml:6:3: slurm.hed: unknown key"));
  CHECK_THAT(refused(with("{count: 1, ", "{count: 0, "), a),
             Catch::Contains("slurm.roles[0].count: '0'; expected a whole number >= 1"));
  CHECK_THAT(refused(with("{count: 1, ", "{count: 1, share: 1, "), a),
             Catch::Contains("slurm.roles[0]: count and share both given"));
  CHECK_THAT(refused(with("{count: 1, ", "{"), a),
             Catch::Contains("slurm.roles[0]: count and share both given or both missing"));
  CHECK_THAT(refused(with("name: dec", "name: p"), a), Catch::Contains("'p' is used by another"));
  CHECK_THAT(refused(with("name: dec", "name: 'a b'"), a), Catch::Contains("slurm.roles[1].name"));
  CHECK_THAT(refused(with("actors: [{prefill: {threads: 2}}]", "actors: []"), a),
             Catch::Contains("slurm.roles[0].actors: not a non-empty list"));
  CHECK_THAT(refused(with("{count: 1, ", "{cuont: 1, count: 1, "), a),
             Catch::Contains("slurm.roles[0].cuont: unknown key"));
  // What only the manifest parser knows (an unknown actor option) comes back from it.
  CHECK_THAT(
      refused(with("threads: 2", "thread: 2"), a),
      Catch::Contains("/jobs/t.yaml (as made for this allocation)") && Catch::Contains("thread"));
}
