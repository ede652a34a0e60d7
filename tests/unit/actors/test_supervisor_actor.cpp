// Supervisor tests: the scoped actor `self` registers members and asks questions; a
// second scoped actor plays a registered router (it receives membership broadcasts);
// small spawned stubs play workers that answer status queries.
#include "tests/unit/actors/actor_test_util.hpp"

#include <thread>

#include "actors/supervisor/join_policy.hpp"
#include "common/clock.hpp"

using namespace tokenmill;
using namespace tokenmill::test;

namespace {

supervisor_config test_supervisor_config() {
  supervisor_config c;
  c.cluster = "test-cluster";
  return c;
}

/// A worker that answers status queries with `ws` and ignores membership.
caf::behavior status_stub(caf::event_based_actor*, worker_status ws) {
  return {
      [ws](status_atom) { return ws; },
      [](const membership&) {},
  };
}

worker_status status_of(const worker_info& info, uint32_t queued) {
  worker_status ws;
  ws.id = info.id;
  ws.kind = info.kind;
  ws.name = info.name;
  ws.node = info.node;
  ws.queued = queued;
  ws.detail = "stub";
  return ws;
}

struct supervisor_harness {
  explicit supervisor_harness(supervisor_config c = test_supervisor_config()) : cfg(std::move(c)) {}
  supervisor_config cfg;
  test_system ts;
  caf::scoped_actor self{ts.sys};
  caf::scoped_actor router{ts.sys};  ///< a registered router: hears membership changes
  actor_reaper reaper;
  caf::actor sup = reaper.add(spawn_supervisor(ts.sys, cfg));
  worker_info router_info = make_info(1, role::router, "router-0");

  bool register_member(const worker_info& info, const caf::actor& handle) {
    std::optional<bool> got;
    std::string problem;
    self->request(sup, receive_timeout, register_worker{info, handle})
        .receive([&](bool ok) { got = ok; }, [&](caf::error& e) { problem = caf::to_string(e); });
    if (!got) FAIL("register_worker failed: " << problem);
    return *got;
  }

  bool ready() {
    std::optional<bool> got;
    std::string problem;
    self->request(sup, receive_timeout, ready_atom::value)
        .receive([&](bool ok) { got = ok; }, [&](caf::error& e) { problem = caf::to_string(e); });
    if (!got) FAIL("ready query failed: " << problem);
    return *got;
  }

  caf::actor spawn_stub(const worker_info& info, uint32_t queued = 0) {
    return reaper.add(ts.sys.spawn(status_stub, status_of(info, queued)));
  }

  /// Registers the router scoped actor and consumes the membership it is sent.
  void register_router() {
    REQUIRE(register_member(router_info, handle_of(router)));
    auto m = expect<membership>(router, "membership after the router joined");
    REQUIRE(m.members.size() == 1);
    CHECK(m.members[0].info.id == router_info.id);
    CHECK(m.members[0].up);
    // A router also gets the current clock offsets when it registers (none yet).
    CHECK(expect<clock_update>(router, "clock offsets after the router joined").offsets.empty());
  }

  /// The router scoped actor answers one status query from the supervisor.
  void router_answers_status() {
    bool answered = false;
    std::string problem;
    router->receive(
        [&](status_atom) {
          answered = true;
          return status_of(router_info, 7);
        },
        caf::others >> [&](caf::message_view& x) -> caf::result<caf::message> {
          problem = "unexpected message " + describe(x);
          return caf::sec::unexpected_message;
        },
        caf::after(receive_timeout) >> [&] { problem = "timed out"; });
    if (!answered) FAIL("router waiting for the supervisor's status query: " << problem);
  }

  /// Cluster status; the router scoped actor, when registered and up, answers its part.
  cluster_status status(bool router_member) {
    auto pending = self->request(sup, receive_timeout, status_atom::value);
    if (router_member) router_answers_status();
    std::optional<cluster_status> got;
    std::string problem;
    pending.receive([&](cluster_status& cs) { got = std::move(cs); },
                    [&](caf::error& e) { problem = caf::to_string(e); });
    if (!got) FAIL("status query failed: " << problem);
    return std::move(*got);
  }
};

const member* find_member(const membership& m, worker_id id) {
  for (const auto& x : m.members)
    if (x.info.id == id) return &x;
  return nullptr;
}

}  // namespace

TEST_CASE("supervisor: ready once a router and a decode worker are up", "[supervisor_actor]") {
  supervisor_harness h;
  CHECK_FALSE(h.ready());
  h.register_router();
  CHECK_FALSE(h.ready());
  auto decode_info = make_info(11, role::decode, "decode-0");
  auto decode = h.spawn_stub(decode_info);
  CHECK(h.register_member(decode_info, decode));
  auto m = expect<membership>(h.router, "membership after the decode worker joined");
  CHECK(m.members.size() == 2);
  REQUIRE(find_member(m, 11));
  CHECK(find_member(m, 11)->handle == decode);
  CHECK(h.ready());

  // A second worker with a live member's id is refused, and nobody hears of it.
  CHECK_FALSE(
      h.register_member(make_info(11, role::decode, "impostor"), h.spawn_stub(decode_info)));
  auto cs = h.status(true);
  CHECK(cs.cluster == "test-cluster");
  CHECK(cs.ready);
  REQUIRE(cs.workers.size() == 2);
  CHECK(cs.workers[0].id == 1);  // sorted by id
  CHECK(cs.workers[0].queued == 7);
  CHECK(cs.workers[1].id == 11);
  CHECK(cs.workers[1].name == "decode-0");
  CHECK(cs.workers[1].detail == "stub");
  expect_no_message(h.router, "after the status query");
}

TEST_CASE("supervisor: a member that exits is reported down and the router hears it",
          "[supervisor_actor]") {
  supervisor_harness h;
  h.register_router();
  auto decode_info = make_info(11, role::decode, "decode-0");
  auto decode = h.spawn_stub(decode_info);
  REQUIRE(h.register_member(decode_info, decode));
  expect<membership>(h.router, "membership after the decode worker joined");
  REQUIRE(h.ready());

  caf::anon_send_exit(decode, caf::exit_reason::kill);
  auto m = expect<membership>(h.router, "membership after the decode worker exited");
  REQUIRE(find_member(m, 11));
  CHECK_FALSE(find_member(m, 11)->up);
  REQUIRE(find_member(m, 1));
  CHECK(find_member(m, 1)->up);
  CHECK_FALSE(h.ready());
  auto cs = h.status(true);
  CHECK_FALSE(cs.ready);
  REQUIRE(cs.workers.size() == 2);
  CHECK(cs.workers[1].id == 11);
  CHECK_FALSE(cs.workers[1].up);
  CHECK(cs.workers[1].detail == "down");

  // The worker restarts under the same id.
  auto again = h.spawn_stub(decode_info);
  CHECK(h.register_member(decode_info, again));
  m = expect<membership>(h.router, "membership after the restart");
  REQUIRE(find_member(m, 11));
  CHECK(find_member(m, 11)->up);
  CHECK(find_member(m, 11)->handle == again);
  CHECK(h.ready());
}

TEST_CASE("supervisor: ready means can serve: a spare decode or a prefill worker may be down",
          "[supervisor_actor]") {
  // Regression: readiness counted every expected actor as up, so losing the spare decode
  // worker made /ready answer 503 while the cluster still served.
  auto cfg = test_supervisor_config();
  cfg.expected_workers = 4;
  supervisor_harness h(cfg);
  h.register_router();
  auto d0_info = make_info(11, role::decode, "decode-0");
  auto d1_info = make_info(12, role::decode, "decode-1");
  auto p0_info = make_info(21, role::prefill, "prefill-0");
  auto d0 = h.spawn_stub(d0_info);
  auto d1 = h.spawn_stub(d1_info);
  auto p0 = h.spawn_stub(p0_info);
  REQUIRE(h.register_member(d0_info, d0));
  REQUIRE(h.register_member(d1_info, d1));
  CHECK_FALSE(h.ready());  // the manifest's prefill worker has not come up yet
  REQUIRE(h.register_member(p0_info, p0));
  CHECK(h.ready());

  caf::anon_send_exit(p0, caf::exit_reason::kill);
  expect<membership>(h.router, "membership after d0 joined");
  expect<membership>(h.router, "membership after d1 joined");
  expect<membership>(h.router, "membership after p0 joined");
  expect<membership>(h.router, "membership after p0 exited");
  CHECK(h.ready());  // decode workers prefill locally
  caf::anon_send_exit(d0, caf::exit_reason::kill);
  expect<membership>(h.router, "membership after d0 exited");
  CHECK(h.ready());
  caf::anon_send_exit(d1, caf::exit_reason::kill);
  auto m = expect<membership>(h.router, "membership after d1 exited");
  REQUIRE(find_member(m, 12));
  CHECK_FALSE(find_member(m, 12)->up);
  CHECK_FALSE(h.ready());  // no decode worker: nothing can be served
}

TEST_CASE("supervisor: membership goes to every member", "[supervisor_actor]") {
  supervisor_harness h;
  caf::scoped_actor kv{h.ts.sys};
  caf::scoped_actor prefill{h.ts.sys};
  REQUIRE(h.register_member(make_info(5, role::kv_store, "kv"), handle_of(kv)));
  CHECK(expect<membership>(kv, "membership at the kv-store").members.size() == 1);
  REQUIRE(h.register_member(make_info(20, role::prefill, "prefill-0"), handle_of(prefill)));
  CHECK(expect<membership>(kv, "membership at the kv-store").members.size() == 2);
  // Workers learn where the kv-store is from membership (it may join after them).
  auto m = expect<membership>(prefill, "membership at the prefill worker");
  REQUIRE(find_member(m, 5));
  CHECK(find_member(m, 5)->handle == handle_of(kv));
}

TEST_CASE("supervisor: nodes join with the cluster's manifest and model, clocks are estimated",
          "[supervisor_actor]") {
  test_system ts;
  actor_reaper reaper;
  supervisor_config cfg;
  cfg.cluster = "c";
  cfg.manifest_hash = 0xabc;
  cfg.model = "sim";
  cfg.sync_pings = 4;
  caf::actor sup = reaper.add(spawn_supervisor(ts.sys, cfg));
  caf::scoped_actor self{ts.sys};
  caf::scoped_actor agent{ts.sys};
  caf::scoped_actor router{ts.sys};
  auto join = [&](join_node j) {
    std::string answer = "no reply";
    self->request(sup, std::chrono::seconds(5), j)
        .receive([&](const std::string& r) { answer = r; },
                 [&](caf::error& e) { answer = caf::to_string(e); });
    return answer;
  };
  auto r = join(join_node{"n1", 1, 0xdef, "sim", handle_of(agent), "other-host", {}, {}});
  CHECK_THAT(r, Catch::Contains("manifest"));
  r = join(join_node{"n1", 1, 0xabc, "other-model", handle_of(agent), "other-host", {}, {}});
  CHECK_THAT(r, Catch::Contains("model"));
  worker_info ri;
  ri.id = 1;
  ri.kind = role::router;
  ri.name = "router";
  bool ok = false;
  self->request(sup, std::chrono::seconds(5), register_worker{ri, handle_of(router)})
      .receive([&](bool b) { ok = b; }, [&](caf::error&) {});
  REQUIRE(ok);
  expect<membership>(router, "membership");
  expect<clock_update>(router, "initial offsets");
  CHECK(join(join_node{"n1", 1, 0xabc, "sim", handle_of(agent), "other-host", {}, {}}).empty());
  // The agent's clock runs 5 ms ahead: the estimate must say "subtract about 5 ms".
  constexpr int64_t ahead = 5'000'000;
  for (int i = 0; i < 4; ++i) {
    bool pinged = false;
    agent->receive(
        [&](ping_atom, int64_t t0) {
          pinged = true;
          return std::make_tuple(t0, now_ns() + ahead);
        },
        caf::after(std::chrono::seconds(5)) >> [] {});
    REQUIRE(pinged);
  }
  auto u = expect<clock_update>(router, "offsets after the probe");
  REQUIRE(u.offsets.size() == 2);
  CHECK(u.offsets[0] == 0);
  // Error bound: half the best round trip, which on one host is far below 1 ms.
  CHECK(u.offsets[1] < -ahead + 1'000'000);
  CHECK(u.offsets[1] > -ahead - 1'000'000);
  // The same node cannot join twice while it is up.
  CHECK_THAT(join(join_node{"n1", 1, 0xabc, "sim", handle_of(agent), "other-host", {}, {}}),
             Catch::Contains("already"));
}

TEST_CASE(
    "supervisor: with a secret, a node joins only with a fresh proof, and workers only from "
    "joined nodes",
    "[supervisor_actor]") {
  test_system ts;
  actor_reaper reaper;
  supervisor_config cfg;
  cfg.cluster = "c";
  cfg.secret = {'s', 'e', 'c', 'r', 'e', 't', '-', 'o', 'f',
                '-', 's', 'i', 'x', 't', 'e', 'e', 'n'};
  cfg.members_from_joined_nodes = true;
  caf::actor sup = reaper.add(spawn_supervisor(ts.sys, cfg));
  caf::scoped_actor self{ts.sys};
  caf::scoped_actor agent{ts.sys};
  caf::scoped_actor worker{ts.sys};
  auto ask = [&](const auto& msg) {
    std::string answer = "no reply";
    self->request(sup, std::chrono::seconds(5), msg)
        .receive([&](const std::string& r) { answer = r; },
                 [&](caf::error& e) { answer = caf::to_string(e); });
    return answer;
  };
  auto reg = [&](uint32_t node_index, caf::scoped_actor& as, worker_id id = 7) {
    worker_info wi = make_info(id, role::decode, "d0.decode" + std::to_string(id));
    wi.node_index = node_index;
    wi.pool.owner = id;
    wi.pool.remote_key = {1, 2, 3, 4, 5, 6, 7, 8, 9};
    wi.pool.worker_address = {static_cast<uint8_t>(id)};
    bool ok = true;
    self->request(sup, std::chrono::seconds(5), register_worker{wi, handle_of(as)})
        .receive([&](bool b) { ok = b; }, [&](caf::error&) {});
    return ok;
  };
  // Before its node joined, a worker is refused: no pool descriptor reaches it (the
  // supervisor answered, so a membership sent before the answer would be waiting now).
  CHECK_FALSE(reg(1, worker));
  expect_no_message(worker, "after a refused registration");
  join_node j{"n1", 1, 0, "", handle_of(agent), "this-host", {}, {}};
  CHECK_THAT(ask(j), Catch::Contains("no proof"));
  auto proof_for = [&](const std::vector<uint8_t>& key, const std::string& c) {
    return join_proof(key, c, join_statement{"c", j.name, j.index, 0, "", j.host_id});
  };
  j.challenge = ask(join_challenge_atom::value);
  REQUIRE(j.challenge.size() == 2 * join_nonce_bytes);
  j.proof = proof_for(secret_bytes("another secret, sixteen+"), j.challenge);
  CHECK_THAT(ask(j), Catch::Contains("wrong proof"));
  CHECK_FALSE(reg(1, worker));
  expect_no_message(worker, "after a refused registration (wrong proof)");
  j.challenge = ask(join_challenge_atom::value);
  j.proof = proof_for(cfg.secret, j.challenge);
  CHECK(ask(j).empty());
  CHECK_THAT(ask(j), Catch::Contains("replayed join"));
  // Joined: its workers register, and the membership with their pools goes to them.
  CHECK(reg(1, worker));
  auto m = expect<membership>(worker, "membership after the worker registered");
  REQUIRE(m.members.size() == 1);
  CHECK(m.members[0].info.pool.remote_key.size() == 9);
  // A worker claiming node 2, which never joined, is refused and learns no remote key, while
  // the members hear nothing of it.
  caf::scoped_actor outsider{ts.sys};
  CHECK_FALSE(reg(2, outsider, 8));
  expect_no_message(outsider, "after the outsider was refused");
  expect_no_message(worker, "after the outsider was refused");
}

TEST_CASE("supervisor: a node that joins again after its process died counts a restart",
          "[supervisor_actor]") {
  test_system ts;
  actor_reaper reaper;
  supervisor_config cfg;
  cfg.cluster = "c";
  cfg.host_id = "this-host";  // the nodes share the supervisor's clock: no probing
  caf::actor sup = reaper.add(spawn_supervisor(ts.sys, cfg));
  caf::scoped_actor self{ts.sys};
  auto spawn_agent = [&] {
    return reaper.add(ts.sys.spawn([]() -> caf::behavior {
      return {
          [](ping_atom, int64_t t0) { return caf::make_message(t0, now_ns()); },
          [](const node_peers&) {},  // which nodes are up (node agents connect to them)
      };
    }));
  };
  auto join = [&](const caf::actor& agent) {
    std::string answer = "no reply";
    self->request(sup, receive_timeout, join_node{"d0", 2, 0, "", agent, "this-host", {}, {}})
        .receive([&](const std::string& r) { answer = r; },
                 [&](caf::error& e) { answer = caf::to_string(e); });
    return answer;
  };
  auto node = [&]() -> node_status {
    std::optional<cluster_status> got;
    self->request(sup, receive_timeout, status_atom::value)
        .receive([&](cluster_status& cs) { got = std::move(cs); }, [&](caf::error&) {});
    REQUIRE(got);
    REQUIRE(got->nodes.size() == 1);
    return got->nodes[0];
  };
  auto first = spawn_agent();
  REQUIRE(join(first).empty());
  CHECK(node().up);
  CHECK(node().restarts == 0);
  // A second process of the node while the first is up is refused, and counts nothing.
  CHECK_THAT(join(spawn_agent()), Catch::Contains("already"));
  CHECK(node().restarts == 0);

  for (uint32_t k = 1; k <= 2; ++k) {
    caf::anon_send_exit(first, caf::exit_reason::kill);
    // A bounded poll, not message order: the supervisor learns of the death from CAF's
    // down message, which no message of this test can be ordered after.
    bool down = false;
    for (int i = 0; i < 200 && !down; ++i) {
      down = !node().up;
      if (!down) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    REQUIRE(down);
    CHECK(node().restarts == k - 1);  // a death alone is no restart
    first = spawn_agent();
    REQUIRE(join(first).empty());
    auto n = node();
    CHECK(n.up);
    CHECK(n.name == "d0");
    CHECK(n.index == 2);
    CHECK(n.restarts == k);
  }
}

TEST_CASE("supervisor: a member that does not answer is reported, not waited for",
          "[supervisor_actor]") {
  // Takes the supervisor's status timeout (500 ms) once.
  supervisor_harness h;
  caf::scoped_actor mute{h.ts.sys};  // never reads its mailbox
  auto decode_info = make_info(11, role::decode, "decode-0");
  REQUIRE(h.register_member(decode_info, h.spawn_stub(decode_info, 3)));
  REQUIRE(h.register_member(make_info(12, role::prefill, "prefill-mute"), handle_of(mute)));
  auto cs = h.status(false);
  REQUIRE(cs.workers.size() == 2);
  CHECK(cs.workers[0].id == 11);
  CHECK(cs.workers[0].queued == 3);
  CHECK(cs.workers[1].id == 12);
  CHECK(cs.workers[1].name == "prefill-mute");
  CHECK(cs.workers[1].up);
  CHECK_THAT(cs.workers[1].detail, Catch::StartsWith("not answering"));
}

TEST_CASE("supervisor: node agents hear which nodes are up, on every join and loss",
          "[supervisor_actor]") {
  test_system ts;
  actor_reaper reaper;
  supervisor_config cfg;
  cfg.cluster = "c";
  cfg.host_id = "this-host";  // no clock probing
  caf::actor sup = reaper.add(spawn_supervisor(ts.sys, cfg));
  caf::scoped_actor self{ts.sys};
  caf::scoped_actor a0{ts.sys};
  auto a1 = reaper.add(ts.sys.spawn([]() -> caf::behavior {
    return {[](const node_peers&) {},
            [](ping_atom, int64_t t0) { return caf::make_message(t0, now_ns()); }};
  }));
  auto join = [&](uint32_t index, const caf::actor& agent) {
    std::string answer = "no reply";
    self->request(sup, receive_timeout,
                  join_node{"n" + std::to_string(index), index, 0, "", agent, "this-host", {}, {}})
        .receive([&](const std::string& r) { answer = r; },
                 [&](caf::error& e) { answer = caf::to_string(e); });
    return answer;
  };
  REQUIRE(join(0, handle_of(a0)).empty());
  CHECK(expect<node_peers>(a0, "peers after its own join").up == std::vector<uint32_t>{0});
  REQUIRE(join(1, a1).empty());
  CHECK(expect<node_peers>(a0, "peers after n1 joined").up == std::vector<uint32_t>{0, 1});
  caf::anon_send_exit(a1, caf::exit_reason::kill);
  // A node that went down is announced gone, so a restarted one is connected to again.
  CHECK(expect<node_peers>(a0, "peers after n1 died").up == std::vector<uint32_t>{0});
}

// ---------------------------------------------------------------- role changes, drains, planner

namespace {

/// A member that forwards the membership broadcasts it receives to `sink` (a scoped actor
/// the test reads) and answers status queries itself, so the test reads broadcasts in
/// order without answering queries.
caf::behavior observer_stub(caf::event_based_actor* self, worker_status ws, caf::actor sink) {
  return {
      [ws](status_atom) { return ws; },
      [self, sink](const membership& m) { self->send(sink, m); },
  };
}

/// A worker that answers status queries with `ws` and forwards the change_role messages
/// it receives to `sink`; it never answers them itself (the test does, or nobody). A
/// rebalance_request goes to `sink` too and is answered as if every move started.
caf::behavior worker_stub(caf::event_based_actor* self, worker_status ws, caf::actor sink) {
  return {
      [ws](status_atom) { return ws; },
      [](const membership&) {},
      [self, sink](const change_role& c) { self->send(sink, c); },
      [self, sink](const rebalance_request& r) {
        self->send(sink, r);
        return r.count;
      },
  };
}

worker_info on_node(worker_info info, std::string node) {
  info.node = std::move(node);
  return info;
}

struct role_change_harness {
  explicit role_change_harness(supervisor_config c) : cfg(std::move(c)) {}
  supervisor_config cfg;
  test_system ts;
  caf::scoped_actor self{ts.sys};
  caf::scoped_actor seen{ts.sys};     ///< memberships the observer hears
  caf::scoped_actor changes{ts.sys};  ///< change_role messages the workers get
  actor_reaper reaper;
  caf::actor sup = reaper.add(spawn_supervisor(ts.sys, cfg));

  bool register_member(const worker_info& info, const caf::actor& handle) {
    std::optional<bool> got;
    std::string problem;
    self->request(sup, receive_timeout, register_worker{info, handle})
        .receive([&](bool ok) { got = ok; }, [&](caf::error& e) { problem = caf::to_string(e); });
    if (!got) FAIL("register_worker failed: " << problem);
    return *got;
  }

  /// A kv-store member that forwards membership to `seen` (the broadcasts' observer).
  void add_observer() {
    auto kv = make_info(5, role::kv_store, "kv");
    REQUIRE(register_member(
        kv, reaper.add(ts.sys.spawn(observer_stub, status_of(kv, 0), handle_of(seen)))));
    expect<membership>(seen, "membership after the observer joined");
  }

  /// A worker whose change_role messages go to `changes`; registered, and its broadcast
  /// consumed.
  caf::actor add_worker(const worker_info& info, uint32_t queued = 0, uint32_t running = 0) {
    auto ws = status_of(info, queued);
    ws.running = running;
    auto h = reaper.add(ts.sys.spawn(worker_stub, ws, handle_of(changes)));
    REQUIRE(register_member(info, h));
    expect<membership>(seen, "membership after a worker joined");
    return h;
  }

  cluster_status status() {
    std::optional<cluster_status> got;
    std::string problem;
    self->request(sup, receive_timeout, status_atom::value)
        .receive([&](cluster_status& cs) { got = std::move(cs); },
                 [&](caf::error& e) { problem = caf::to_string(e); });
    if (!got) FAIL("status query failed: " << problem);
    return std::move(*got);
  }
};

const worker_status* find_worker(const cluster_status& cs, worker_id id) {
  for (const auto& w : cs.workers)
    if (w.id == id) return &w;
  return nullptr;
}

supervisor_config planner_supervisor_config() {
  supervisor_config c;
  c.cluster = "planned";
  planner_config p;
  p.ttft_ms = 300;
  p.itl_ms = 30;
  p.intervals = 1;
  p.interval_ms = 3'600'000;  // no tick of its own: the test sends plan_atom
  p.cooldown_ms = 3'600'000;
  p.decode_max_batch = 8;
  c.planner = p;
  c.change_timeout = std::chrono::seconds(30);
  return c;
}

}  // namespace

TEST_CASE("supervisor: a planner flip drains, re-registers under the new role and is counted",
          "[supervisor_actor][planner]") {
  role_change_harness h(planner_supervisor_config());
  h.add_observer();
  auto p1 = make_info(21, role::prefill, "prefill-1");
  auto p2 = make_info(22, role::prefill, "prefill-2");
  auto p3 = make_info(23, role::prefill, "prefill-3");
  auto d1 = make_info(31, role::decode, "decode-1");
  auto old = h.add_worker(p1);  // idle: the one to flip
  h.add_worker(p2, 1);          // one prompt waiting
  h.add_worker(p3, 1);
  h.add_worker(d1, 24, 8);  // a full batch of 8 and 24 waiting: decode is the bottleneck

  h.self->send(h.sup, plan_atom::value);
  // Routers hear first that the worker is draining, then it is told to change role.
  auto m = expect<membership>(h.seen, "membership with the flipping worker draining");
  REQUIRE(find_member(m, 21));
  CHECK(find_member(m, 21)->draining);
  CHECK(find_member(m, 21)->info.kind == role::prefill);
  CHECK_FALSE(find_member(m, 22)->draining);
  CHECK_THAT(find_worker(h.status(), 21)->detail, Catch::StartsWith("draining (to decode); "));
  auto c = expect<change_role>(h.changes, "change_role at the idle prefill worker");
  CHECK(c.to == role::decode);
  CHECK_FALSE(c.drain_only);
  CHECK_THAT(c.reason, Catch::Contains("prefill -> decode"));

  // The worker replaces its actor with one serving decode: same id, new role and handle.
  auto p1_as_decode = p1;
  p1_as_decode.kind = role::decode;
  auto ws = status_of(p1_as_decode, 0);
  auto fresh = h.reaper.add(h.ts.sys.spawn(worker_stub, ws, handle_of(h.changes)));
  CHECK(h.register_member(p1_as_decode, fresh));
  m = expect<membership>(h.seen, "membership after the re-registration");
  REQUIRE(find_member(m, 21));
  CHECK(find_member(m, 21)->info.kind == role::decode);
  CHECK(find_member(m, 21)->handle == fresh);
  CHECK(find_member(m, 21)->up);
  CHECK_FALSE(find_member(m, 21)->draining);
  // A second registration of the id now is a duplicate again.
  CHECK_FALSE(h.register_member(p1_as_decode, fresh));

  // The old actor exits: that is not the loss of worker 21.
  caf::anon_send_exit(old, caf::exit_reason::user_shutdown);
  role_changed rc;
  rc.worker = 21;
  rc.from = role::prefill;
  rc.to = role::decode;
  rc.drain_ns = 1'000'000;
  rc.total_ns = 2'000'000;
  rc.finished = 3;
  h.self->send(h.sup, rc);
  m = expect<membership>(h.seen, "membership after role_changed");
  REQUIRE(find_member(m, 21));
  CHECK(find_member(m, 21)->up);
  CHECK(find_member(m, 21)->info.kind == role::decode);
  CHECK_FALSE(find_member(m, 21)->draining);

  // The new decode worker takes the excess of the busy one: 32 sequences over 2 workers,
  // 16 each, asked of decode-1 (the sequences move live, worker to worker).
  auto rb = expect<rebalance_request>(h.changes, "rebalance_request at the busy decode worker");
  CHECK(rb.target == fresh);
  CHECK(rb.count == 16);
  auto cs = h.status();
  for (int i = 0; i < 100 && cs.planner.events.size() < 3; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    cs = h.status();
  }
  REQUIRE(find_worker(cs, 21));
  CHECK(find_worker(cs, 21)->up);
  CHECK(find_worker(cs, 21)->kind == role::decode);
  CHECK(cs.planner.enabled);
  CHECK(cs.planner.decisions == 1);
  CHECK(cs.planner.flips_to_decode == 1);
  CHECK(cs.planner.flips_to_prefill == 0);
  CHECK(cs.planner.changes_failed == 0);
  REQUIRE(cs.planner.events.size() == 3);
  CHECK(cs.planner.events[0].kind == "flip");
  CHECK(cs.planner.events[0].worker == "prefill-1");
  CHECK(cs.planner.events[1].kind == "changed");
  CHECK(cs.planner.events[1].from == role::prefill);
  CHECK(cs.planner.events[1].to == role::decode);
  CHECK(cs.planner.events[1].took_ns == 2'000'000);
  CHECK(cs.planner.events[2].kind == "rebalance");
  CHECK(cs.planner.events[2].worker == "decode-1");
  CHECK_THAT(cs.planner.events[2].why,
             Catch::Contains("16 of 16 sequences move live from 'decode-1' to 'prefill-1'"));

  // Decode is still the bottleneck (32 sequences for 2 x 8), but the cooldown holds.
  h.self->send(h.sup, plan_atom::value);
  cs = h.status();  // answered after the tick's queries: the tick has decided
  CHECK(cs.planner.decisions == 2);
  CHECK_THAT(cs.planner.last_decision, Catch::Contains("cooldown"));
  CHECK(cs.planner.flips_to_decode == 1);
  expect_no_message(h.changes, "no change_role during the cooldown");
  expect_no_message(h.seen, "no membership change during the cooldown");
}

TEST_CASE("supervisor: the planner keeps the split under a steady load",
          "[supervisor_actor][planner]") {
  role_change_harness h(planner_supervisor_config());
  h.add_observer();
  h.add_worker(make_info(21, role::prefill, "prefill-1"), 1);
  h.add_worker(make_info(22, role::prefill, "prefill-2"), 1);
  h.add_worker(make_info(31, role::decode, "decode-1"), 0, 4);
  for (int i = 0; i < 3; ++i) {
    h.self->send(h.sup, plan_atom::value);
    auto cs = h.status();
    CHECK(cs.planner.decisions == static_cast<uint64_t>(i + 1));
    CHECK_THAT(cs.planner.last_decision, Catch::StartsWith("keep: no role is at its limit"));
  }
  expect_no_message(h.changes, "no change_role");
  expect_no_message(h.seen, "no membership change");
}

TEST_CASE("supervisor: a worker that never answers change_role is taken back after the bound",
          "[supervisor_actor][planner]") {
  auto cfg = test_supervisor_config();
  cfg.change_timeout = std::chrono::milliseconds(200);
  role_change_harness h(cfg);
  h.add_observer();
  h.add_worker(on_node(make_info(31, role::decode, "d-mute"), "n1"));  // never answers
  std::optional<drain_report> report;
  auto pending = h.self->request(h.sup, receive_timeout, drain_request{"n1"});
  auto m = expect<membership>(h.seen, "membership with the worker draining");
  CHECK(find_member(m, 31)->draining);
  auto c = expect<change_role>(h.changes, "change_role at the mute worker");
  CHECK(c.drain_only);
  CHECK(c.reason == "drain");
  pending.receive([&](drain_report& r) { report = std::move(r); }, [](caf::error&) {});
  REQUIRE(report);
  CHECK(report->error.code == errc::timeout);
  CHECK_THAT(report->error.message, Catch::Contains("'d-mute'"));
  REQUIRE(report->workers.size() == 1);
  CHECK(report->workers[0].worker == 31);
  CHECK(report->workers[0].error.code == errc::timeout);
  m = expect<membership>(h.seen, "membership after the bound");
  REQUIRE(find_member(m, 31));
  CHECK_FALSE(find_member(m, 31)->draining);  // back in routing under its old role
  CHECK(find_member(m, 31)->up);
  CHECK(find_member(m, 31)->info.kind == role::decode);
  auto cs = h.status();
  CHECK_FALSE(cs.planner.enabled);
  CHECK(cs.planner.changes_failed == 1);
  // A role_changed that comes after the bound changes nothing.
  role_changed late;
  late.worker = 31;
  late.drain_only = true;
  h.self->send(h.sup, late);
  CHECK(h.status().planner.drains == 0);
  expect_no_message(h.seen, "no membership after the late answer");
}

TEST_CASE("supervisor: drain_request drains every prefill and decode worker of the node",
          "[supervisor_actor]") {
  role_change_harness h(test_supervisor_config());
  h.add_observer();
  h.add_worker(on_node(make_info(21, role::prefill, "n1.prefill0"), "n1"));
  auto d31 = h.add_worker(on_node(make_info(31, role::decode, "n1.decode0"), "n1"));
  h.add_worker(on_node(make_info(32, role::decode, "n2.decode0"), "n2"));

  // Unknown node: an error, nothing changes.
  std::optional<drain_report> report;
  h.self->request(h.sup, receive_timeout, drain_request{"nowhere"})
      .receive([&](drain_report& r) { report = std::move(r); }, [](caf::error&) {});
  REQUIRE(report);
  CHECK(report->error.code == errc::invalid_request);
  CHECK_THAT(report->error.message, Catch::Contains("unknown node 'nowhere'"));
  CHECK(report->workers.empty());
  expect_no_message(h.seen, "no membership after an unknown node");

  report.reset();
  auto pending = h.self->request(h.sup, receive_timeout, drain_request{"n1"});
  auto m = expect<membership>(h.seen, "membership with n1's workers draining");
  CHECK(find_member(m, 21)->draining);
  CHECK(find_member(m, 31)->draining);
  CHECK_FALSE(find_member(m, 32)->draining);
  for (int i = 0; i < 2; ++i) {
    auto c = expect<change_role>(h.changes, "drain at one of n1's workers");
    CHECK(c.drain_only);
  }
  // A second drain of the node while the first runs is refused.
  std::optional<drain_report> second;
  h.self->request(h.sup, receive_timeout, drain_request{"n1"})
      .receive([&](drain_report& r) { second = std::move(r); }, [](caf::error&) {});
  REQUIRE(second);
  CHECK_THAT(second->error.message, Catch::Contains("changing role already"));

  for (worker_id id : {21u, 31u}) {
    role_changed rc;
    rc.worker = id;
    rc.from = rc.to = id == 21 ? role::prefill : role::decode;
    rc.drain_only = true;
    rc.finished = 2;
    h.self->send(h.sup, rc);
    m = expect<membership>(h.seen, "membership after one worker drained");
    CHECK(find_member(m, id)->draining);  // drained: stays out of routing
  }
  pending.receive([&](drain_report& r) { report = std::move(r); }, [](caf::error&) {});
  REQUIRE(report);
  CHECK_FALSE(report->error);
  {
    auto st = h.status();  // drained workers say so in their detail
    REQUIRE(find_worker(st, 31));
    CHECK_THAT(find_worker(st, 31)->detail, Catch::StartsWith("draining (drained); "));
    CHECK_THAT(find_worker(st, 32)->detail, !Catch::Contains("draining"));
  }
  REQUIRE(report->workers.size() == 2);
  CHECK(report->workers[0].worker == 21);
  CHECK(report->workers[1].worker == 31);
  CHECK(report->workers[0].finished == 2);
  auto cs = h.status();
  CHECK(cs.planner.drains == 2);
  CHECK(cs.planner.flips_to_decode + cs.planner.flips_to_prefill == 0);

  // Resume: n2 has nothing drained (refused); n1's drained workers are asked back under
  // their own role and leave `draining` when they answer.
  std::optional<drain_report> resumed;
  h.self->request(h.sup, receive_timeout, drain_request{"n2", true})
      .receive([&](drain_report& r) { resumed = std::move(r); }, [](caf::error&) {});
  REQUIRE(resumed);
  CHECK(resumed->error.code == errc::no_workers);
  CHECK_THAT(resumed->error.message, Catch::Contains("no drained worker to resume"));
  resumed.reset();
  auto resuming = h.self->request(h.sup, receive_timeout, drain_request{"n1", true});
  expect<membership>(h.seen, "membership as the resume starts");
  for (int i = 0; i < 2; ++i) {
    auto c = expect<change_role>(h.changes, "resume at one of n1's workers");
    CHECK_FALSE(c.drain_only);
    CHECK(c.reason == "resume");
  }
  for (worker_id id : {21u, 31u}) {
    role_changed rc;
    rc.worker = id;
    rc.from = rc.to = id == 21 ? role::prefill : role::decode;
    h.self->send(h.sup, rc);
    m = expect<membership>(h.seen, "membership after one worker resumed");
    CHECK_FALSE(find_member(m, id)->draining);
    CHECK(find_member(m, id)->info.kind == rc.to);
  }
  resuming.receive([&](drain_report& r) { resumed = std::move(r); }, [](caf::error&) {});
  REQUIRE(resumed);
  CHECK_FALSE(resumed->error);
  CHECK(resumed->workers.size() == 2);
  cs = h.status();
  CHECK(cs.planner.drains == 2);  // a resume is not a drain
  CHECK(cs.planner.flips_to_decode + cs.planner.flips_to_prefill == 0);
  CHECK_THAT(find_worker(cs, 31)->detail, !Catch::Contains("draining"));

  // Drained again, so that the restart below finds it drained.
  pending = h.self->request(h.sup, receive_timeout, drain_request{"n1"});
  expect<membership>(h.seen, "membership as the second drain starts");
  for (int i = 0; i < 2; ++i)
    expect<change_role>(h.changes, "second drain");
  for (worker_id id : {21u, 31u}) {
    role_changed rc;
    rc.worker = id;
    rc.from = rc.to = id == 21 ? role::prefill : role::decode;
    rc.drain_only = true;
    h.self->send(h.sup, rc);
    expect<membership>(h.seen, "membership after the second drain of one worker");
  }
  report.reset();
  pending.receive([&](drain_report& r) { report = std::move(r); }, [](caf::error&) {});
  REQUIRE(report);
  CHECK_FALSE(report->error);

  // A drained worker comes back when its node restarts: its new process registers the id
  // after the old one went down.
  caf::anon_send_exit(d31, caf::exit_reason::kill);
  m = expect<membership>(h.seen, "membership after the drained worker's process died");
  CHECK_FALSE(find_member(m, 31)->up);
  auto d = on_node(make_info(31, role::decode, "n1.decode0"), "n1");
  CHECK(h.register_member(d, h.reaper.add(h.ts.sys.spawn(status_stub, status_of(d, 0)))));
  m = expect<membership>(h.seen, "membership after the restart");
  CHECK(find_member(m, 31)->up);
  CHECK_FALSE(find_member(m, 31)->draining);
}

TEST_CASE("supervisor: a worker that cannot take change_role ends its change at once",
          "[supervisor_actor]") {
  // Regression: the worker's "unexpected message" error came back to the supervisor as a
  // message, and the supervisor's default error handler took it (and the cluster) down.
  auto cfg = test_supervisor_config();
  cfg.change_timeout = std::chrono::seconds(60);  // far beyond the test: no waiting for it
  role_change_harness h(cfg);
  h.add_observer();
  auto info = on_node(make_info(31, role::decode, "d-old"), "n1");
  REQUIRE(h.register_member(info, h.reaper.add(h.ts.sys.spawn(status_stub, status_of(info, 0)))));
  expect<membership>(h.seen, "membership after the worker joined");
  std::optional<drain_report> report;
  auto pending = h.self->request(h.sup, receive_timeout, drain_request{"n1"});
  CHECK(find_member(expect<membership>(h.seen, "draining"), 31)->draining);
  pending.receive([&](drain_report& r) { report = std::move(r); }, [](caf::error&) {});
  REQUIRE(report);
  REQUIRE(report->workers.size() == 1);
  CHECK(report->workers[0].error.code == errc::worker_failed);
  CHECK_THAT(report->workers[0].error.message, Catch::Contains("answered change_role"));
  auto m = expect<membership>(h.seen, "membership after the failed change");
  CHECK_FALSE(find_member(m, 31)->draining);
  // The supervisor is still there.
  CHECK(h.status().planner.changes_failed == 1);
}
