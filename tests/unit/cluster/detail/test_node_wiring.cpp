// The one wiring path of a node's actors: both nodes of a two-node manifest wired into one
// actor system (sim engines, inline transport) register with one supervisor under the ids,
// names and node the manifest gives them, and make the cluster ready together.
#include <catch2/catch.hpp>

#include <thread>
#include <tuple>

#include <caf/all.hpp>

#include "actors/type_ids.hpp"
#include "cluster/detail/node_wiring.hpp"

using namespace tokenmill;

namespace {

constexpr const char* two_nodes = R"(
cluster: wiring
model: {sim: {}}
defaults: {kv_transport: inline}
frontend: {node: a}
nodes:
  - name: a
    address: 127.0.0.1
    actors: [router, supervisor, {decode: {kv_blocks: 64}}, kv_store, {prefill: {kv_blocks: 32}}]
  - name: b
    address: 127.0.0.1
    actors: [{decode: {kv_blocks: 64}}]
)";

class wiring_config : public caf::actor_system_config {
 public:
  wiring_config() {
    register_types(*this);
    set("logger.console", caf::atom("none"));
  }
};

cluster_status status_of(caf::actor_system& sys, const caf::actor& sup) {
  caf::scoped_actor self{sys};
  cluster_status got;
  std::string problem;
  self->request(sup, std::chrono::seconds(5), status_atom::value)
      .receive([&](cluster_status& cs) { got = std::move(cs); },
               [&](caf::error& e) { problem = caf::to_string(e); });
  INFO(problem);
  REQUIRE(problem.empty());
  return got;
}

}  // namespace

TEST_CASE("node wiring: every node's actors register under the manifest's ids and names",
          "[node_wiring]") {
  manifest_options no_probe;
  no_probe.check_ports = false;
  auto m = parse_manifest(two_nodes, "two_nodes.yaml", ".", no_probe);
  INFO((m ? std::string() : m.error().message));
  REQUIRE(m);
  wiring_config cfg;
  caf::actor_system sys{cfg};
  std::vector<caf::actor> spawned;
  auto sup = detail::spawn_node_supervisor(sys, *m, 0, "sim");
  REQUIRE(sup);
  spawned.push_back(sup);
  CHECK_FALSE(detail::spawn_node_supervisor(sys, *m, 1, "sim"));  // b runs no supervisor

  std::vector<std::string> engines_for;
  detail::node_services services;
  services.transport = std::make_shared<inline_transport>();
  services.engine_for = [&](const manifest_actor& a) -> result<std::unique_ptr<engine>> {
    engines_for.push_back(a.name);
    auto e = make_engine(to_engine_spec(*m, *a.worker()));
    if (!e) return error_info{errc::invalid_request, e.error().message};
    return std::move(*e);
  };
  services.router = to_router_config(*m);

  auto a = detail::spawn_node_actors(sys, *m, 0, sup, services, spawned);
  REQUIRE(a);
  CHECK(a->router);
  CHECK(a->kv_store);
  CHECK(a->workers.size() == 4);
  CHECK(a->names == std::vector<std::string>{"a.router0", "a.supervisor0", "a.decode0",
                                             "a.kv_store0", "a.prefill0"});
  CHECK(engines_for == std::vector<std::string>{"a.decode0", "a.prefill0"});
  // Node b's decode worker has not registered yet: not every expected actor is there.
  auto st = status_of(sys, sup);
  CHECK_FALSE(st.ready);

  auto b = detail::spawn_node_actors(sys, *m, 1, sup, services, spawned);
  REQUIRE(b);
  CHECK_FALSE(b->router);
  CHECK_FALSE(b->kv_store);
  CHECK(b->workers.size() == 1);
  CHECK(spawned.size() == 6);

  // Registration is asynchronous: wait (bounded) until all five are in.
  for (int i = 0; i < 500 && !(st = status_of(sys, sup)).ready; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  CHECK(st.ready);
  REQUIRE(st.workers.size() == 5);
  // The kv-store is spawned first (a decode worker needs it), then manifest order; ids
  // count from 256 * the node's index.
  std::vector<std::tuple<worker_id, std::string, std::string>> got;
  for (const auto& w : st.workers)
    got.emplace_back(w.id, w.name, w.node);
  CHECK(got ==
        std::vector<std::tuple<worker_id, std::string, std::string>>{{0, "a.kv_store0", "a"},
                                                                     {1, "a.router0", "a"},
                                                                     {2, "a.decode0", "a"},
                                                                     {3, "a.prefill0", "a"},
                                                                     {256, "b.decode0", "b"}});
  shutdown_actors(spawned);
}

TEST_CASE("node wiring: a manifest's planner section turns the supervisor's planner on",
          "[node_wiring]") {
  manifest_options no_probe;
  no_probe.check_ports = false;
  wiring_config cfg;
  caf::actor_system sys{cfg};
  for (bool planned : {false, true}) {
    std::string text = two_nodes;
    if (planned) text += "planner: {itl_ms: 30, interval_ms: 3600000}\n";
    auto m = parse_manifest(text, "two_nodes.yaml", ".", no_probe);
    REQUIRE(m);
    std::vector<caf::actor> spawned{detail::spawn_node_supervisor(sys, *m, 0, "sim")};
    CHECK(status_of(sys, spawned[0]).planner.enabled == planned);
    shutdown_actors(spawned);
  }
}

TEST_CASE("node wiring: an engine that cannot be made fails the node, naming it", "[node_wiring]") {
  manifest_options no_probe;
  no_probe.check_ports = false;
  auto m = parse_manifest(two_nodes, "two_nodes.yaml", ".", no_probe);
  REQUIRE(m);
  wiring_config cfg;
  caf::actor_system sys{cfg};
  std::vector<caf::actor> spawned;
  auto sup = detail::spawn_node_supervisor(sys, *m, 0, "sim");
  spawned.push_back(sup);
  detail::node_services services;
  services.transport = std::make_shared<inline_transport>();
  services.engine_for = [](const manifest_actor& a) -> result<std::unique_ptr<engine>> {
    return error_info{errc::invalid_request, a.name + ": no engine"};
  };
  auto a = detail::spawn_node_actors(sys, *m, 0, sup, services, spawned);
  REQUIRE_FALSE(a);
  CHECK(a.error().message == "a.decode0: no engine");
  // What was spawned before the failure (kv-store, router) is handed back for shutdown.
  CHECK(spawned.size() == 3);
  shutdown_actors(spawned);
}
