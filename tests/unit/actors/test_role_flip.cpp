// Role change in place (change_role) and drain, from the worker's side: the scoped actor
// plays supervisor, router and the peer worker of the other role. A worker told to change
// role finishes what it holds, re-registers under the same id with the same KV pool (the
// transport registers it once; the prefix cache it filled serves the new role), reports
// role_changed, and serves the new role at the same address.
#include <optional>
#include <string>
#include <variant>

#include "engine/block_hash.hpp"
#include "tests/unit/actors/actor_test_util.hpp"
#include "transport/kv_transport.hpp"

using namespace tokenmill;
using namespace tokenmill::test;

namespace {

constexpr worker_id wid = 5;
constexpr worker_id peer_wid = 9;

/// The inline transport, counting the pools registered with it: a role change must not
/// register (or allocate) a second one.
class counting_transport final : public kv_transport {
 public:
  std::string_view name() const override { return inner_.name(); }
  pool_descriptor register_pool(worker_id owner, pool_memory& memory, size_t block_bytes) override {
    ++registered;
    last_memory = &memory;
    return inner_.register_pool(owner, memory, block_bytes);
  }
  void write(const pool_memory& local, size_t block_bytes, std::span<const block_id> src,
             const pool_descriptor& dst, std::span<const block_id> dst_blocks,
             completion done) override {
    inner_.write(local, block_bytes, src, dst, dst_blocks, std::move(done));
  }
  error_info deliver(const kv_payload& payload, pool_memory& local, size_t block_bytes) override {
    return inner_.deliver(payload, local, block_bytes);
  }
  kv_transport_stats stats() const override { return inner_.stats(); }
  int registered = 0;
  const pool_memory* last_memory = nullptr;

 private:
  inline_transport inner_;
};

change_role to_role(role r) {
  change_role c;
  c.to = r;
  c.reason = "test";
  return c;
}

change_role drain_only() {
  change_role c;
  c.drain_only = true;
  c.reason = "maintenance";
  return c;
}

/// What the worker sent for one request while it served as decode, in order.
struct decode_output {
  std::optional<first_token> first;
  std::vector<token_id> tokens;  ///< decode tokens, index 1 on
  std::optional<request_done> done;
};

struct flip_harness {
  test_system ts;
  caf::scoped_actor self{ts.sys};
  actor_reaper reaper;
  sim_config scfg = fast_sim();
  sim_engine eng{scfg};              ///< the test's own engine, to know the right tokens
  block_pool peer{scfg.layout, 32};  ///< the pool of the "other" worker the test plays
  inline_transport peer_tp;
  pool_descriptor peer_desc = peer_tp.register_pool(peer_wid, peer.memory(), peer.block_bytes());
  std::shared_ptr<counting_transport> tp = std::make_shared<counting_transport>();
  std::shared_ptr<engine_gate> gate;
  caf::actor worker;  ///< the worker's address (its face): it stays across flips
  pool_descriptor pool;

  /// Spawns a worker of role `r` (gated engine when `gated`: the first call of that kind
  /// waits for open_gate) and answers its registration.
  flip_harness(role r, std::optional<gated_engine::gated_call> gated = std::nullopt) {
    std::unique_ptr<engine> e;
    if (gated) {
      gate = std::make_shared<engine_gate>();
      e = std::make_unique<gated_engine>(scfg, gate, *gated);
    } else {
      e = std::make_unique<sim_engine>(scfg);
    }
    prefill_config pc;
    pc.num_blocks = 48;
    decode_config dc;
    dc.num_blocks = 48;
    dc.max_batch = 8;
    if (r == role::prefill)
      worker = reaper.add(spawn_prefill(ts.sys, make_info(wid, role::prefill, "w"), pc,
                                        std::move(e), tp, handle_of(self), dc));
    else
      worker = reaper.add(spawn_decode(ts.sys, make_info(wid, role::decode, "w"), dc, std::move(e),
                                       tp, handle_of(self), caf::actor{}, pc));
    auto reg = answer_registration(self);
    REQUIRE(reg.info.kind == r);
    REQUIRE(reg.handle == worker);
    pool = reg.info.pool;
    REQUIRE(tp->registered == 1);
  }
  ~flip_harness() {
    if (gate) gate->open();
  }

  /// The registration under the new role: same id, same address, same pool.
  void expect_reregistration(role r) {
    auto reg = answer_registration(self);
    CHECK(reg.info.id == wid);
    CHECK(reg.info.kind == r);
    CHECK(reg.info.name == "w");
    CHECK(reg.handle == worker);
    CHECK(reg.info.pool.owner == pool.owner);
    CHECK(reg.info.pool.num_blocks == pool.num_blocks);
    CHECK(reg.info.pool.block_bytes == pool.block_bytes);
    CHECK(reg.info.pool.remote_key == pool.remote_key);
    CHECK(tp->registered == 1);  // the pool was neither reallocated nor registered again
  }

  role_changed expect_report(role from, role to, bool only) {
    auto r = expect<role_changed>(self, "role_changed");
    CHECK(r.worker == wid);
    CHECK(r.from == from);
    CHECK(r.to == to);
    CHECK(r.drain_only == only);
    CHECK_FALSE(r.error);
    CHECK(r.drain_ns >= 0);
    CHECK(r.total_ns >= r.drain_ns);
    CHECK(r.migrated == 0);
    return r;
  }

  generate_request request(request_id id, size_t prompt_len, uint32_t max_tokens,
                           token_id start = 300) {
    return make_request(id, prompt_len, max_tokens, handle_of(self), start);
  }

  /// Assigns `req` to the worker (as decode), prefilled locally.
  void assign(generate_request req) {
    self->send(worker, decode_assignment{std::move(req), caf::actor{}, handle_of(self), {}});
  }

  /// A prefill job for `prompt` whose KV goes into the test's peer pool.
  prefill_job job(request_id id, std::vector<token_id> prompt) {
    prefill_job j;
    j.id = id;
    auto blocks = peer.allocate(scfg.layout.blocks_for(static_cast<uint32_t>(prompt.size())));
    REQUIRE(blocks);
    j.dst_blocks = *blocks;
    j.prompt = std::move(prompt);
    j.dst = peer_desc;
    j.decode = handle_of(self);
    j.router = handle_of(self);
    j.tr.id = id;
    return j;
  }

  /// The tokens the sim produces after `prompt`.
  std::vector<token_id> expected(const std::vector<token_id>& prompt, size_t n) {
    return sim_continuation(eng, prompt, n);
  }

  /// Receives what the worker sends as a prefill worker for job `id` (transfers, which
  /// it delivers into the peer pool, first_token, kv_ready); returns the first token.
  token_id collect_prefill(request_id id) {
    std::optional<token_id> first;
    for (;;) {
      std::variant<std::monostate, kv_transfer, first_token, kv_ready> got;
      std::string problem;
      self->receive([&](kv_transfer& t) { got = std::move(t); },
                    [&](first_token& f) { got = std::move(f); },
                    [&](kv_ready& r) { got = std::move(r); },
                    caf::others >> [&](caf::message_view& x) -> caf::result<caf::message> {
                      problem = "unexpected message " + describe(x);
                      return caf::sec::unexpected_message;
                    },
                    caf::after(receive_timeout) >> [&] { problem = "timed out"; });
      if (auto* t = std::get_if<kv_transfer>(&got)) {
        CHECK(t->id == id);
        CHECK_FALSE(peer_tp.deliver(t->payload, peer.memory(), peer.block_bytes()));
      } else if (auto* f = std::get_if<first_token>(&got)) {
        CHECK(f->id == id);
        first = f->token;
      } else if (auto* r = std::get_if<kv_ready>(&got)) {
        CHECK(r->id == id);
        REQUIRE(first);
        return *first;
      } else {
        FAIL("waiting for the prefill of request " << id << ": " << problem);
      }
    }
  }

  /// Receives what the worker sends as a decode worker until request `id` is done;
  /// request_done of other requests (hand-backs) go to `others`.
  decode_output collect_decode(request_id id, std::vector<request_done>* others = nullptr) {
    decode_output out;
    while (!out.done) {
      std::variant<std::monostate, first_token, token_batch, request_done> got;
      std::string problem;
      self->receive([&](first_token& f) { got = std::move(f); },
                    [&](token_batch& b) { got = std::move(b); },
                    [&](request_done& d) { got = std::move(d); },
                    caf::others >> [&](caf::message_view& x) -> caf::result<caf::message> {
                      problem = "unexpected message " + describe(x);
                      return caf::sec::unexpected_message;
                    },
                    caf::after(receive_timeout) >> [&] { problem = "timed out"; });
      if (auto* f = std::get_if<first_token>(&got)) {
        CHECK(f->id == id);
        out.first = *f;
      } else if (auto* b = std::get_if<token_batch>(&got)) {
        for (const auto& t : b->tokens) {
          REQUIRE(t.id == id);
          CHECK(t.index == out.tokens.size() + 1);
          out.tokens.push_back(t.token);
        }
      } else if (auto* d = std::get_if<request_done>(&got)) {
        if (d->id == id) {
          out.done = std::move(*d);
        } else {
          REQUIRE(others);
          others->push_back(std::move(*d));
        }
      } else {
        FAIL("waiting for the decode of request " << id << ": " << problem);
      }
    }
    return out;
  }

  /// Serves `req` (local prefill) and checks its tokens against the sim.
  void serve_and_check(generate_request req) {
    auto want = expected(req.prompt, req.options.max_tokens);
    auto id = req.id;
    assign(std::move(req));
    auto out = collect_decode(id);
    REQUIRE(out.first);
    std::vector<token_id> got{out.first->token};
    got.insert(got.end(), out.tokens.begin(), out.tokens.end());
    CHECK(got == want);
    CHECK(out.done->reason == finish_reason::length);
  }
};

}  // namespace

TEST_CASE("a prefill worker finishes its job, then serves as decode with the same pool",
          "[role_flip]") {
  flip_harness h(role::prefill, gated_engine::gated_call::prefill);
  auto prompt1 = prompt_of(10, 301);
  auto prompt2 = prompt_of(7, 350);
  h.self->send(h.worker, h.job(1, prompt1));
  h.gate->wait_until_entered();  // job 1 is on the engine
  h.self->send(h.worker, to_role(role::decode));
  // A job sent before its sender learnt of the change still arrives: it is served.
  h.self->send(h.worker, h.job(2, prompt2));
  h.gate->open();
  CHECK(h.collect_prefill(1) == h.expected(prompt1, 1)[0]);
  CHECK(h.collect_prefill(2) == h.expected(prompt2, 1)[0]);
  h.expect_reregistration(role::decode);
  auto r = h.expect_report(role::prefill, role::decode, false);
  CHECK(r.finished == 2);

  // Now a decode worker at the same address. Prompt 1's full blocks are in the prefix
  // cache the prefill filled: the same pool serves them (reused, not recomputed).
  auto before = query_status(h.self, h.worker);
  CHECK(before.kind == role::decode);
  CHECK(before.kv_used == 0);
  CHECK(before.kv_total == 48);
  h.serve_and_check(h.request(3, prompt1.size(), 6, 301));
  auto after = query_status(h.self, h.worker);
  CHECK(after.prefix_hit_blocks - before.prefix_hit_blocks == 2);  // 10 tokens: 2 full blocks
  CHECK(after.completed == 1);
  CHECK(after.kv_used == 0);  // no block leaked
  expect_no_message(h.self, "after the decode");
}

TEST_CASE(
    "a prefill worker hands queued jobs back at a role change and finishes the one "
    "on the engine",
    "[role_flip]") {
  flip_harness h(role::prefill, gated_engine::gated_call::prefill);
  auto prompt1 = prompt_of(10, 301);
  h.self->send(h.worker, h.job(1, prompt1));
  h.gate->wait_until_entered();  // job 1 is on the engine
  h.self->send(h.worker, h.job(2, prompt_of(9, 320)));
  h.self->send(h.worker, h.job(3, prompt_of(11, 340)));
  h.self->send(h.worker, to_role(role::decode));
  // Jobs 2 and 3 had nothing computed: they go back (their decode worker ends the attempt
  // and the router routes them again); nothing was written, so their blocks are free.
  for (request_id id : {2, 3}) {
    INFO("job " << id);
    auto f = expect<prefill_failed>(h.self, "prefill_failed of a queued job");
    CHECK(f.id == id);
    CHECK(f.error.code == errc::unavailable);
    CHECK_THAT(f.error.message, Catch::Contains("is draining (to decode"));
    CHECK(f.handed_back);  // the router labels the move `drained`, not a failure
    CHECK(expect<kv_drained>(h.self, "kv_drained of a job handed back").id == id);
  }
  h.gate->open();
  CHECK(h.collect_prefill(1) == h.expected(prompt1, 1)[0]);
  h.expect_reregistration(role::decode);
  auto r = h.expect_report(role::prefill, role::decode, false);
  CHECK(r.finished == 1);
  auto ws = query_status(h.self, h.worker);
  CHECK(ws.kind == role::decode);
  CHECK(ws.kv_used == 0);
  expect_no_message(h.self, "after the flip");
}

TEST_CASE("a decode worker finishes its sequences in place, then serves as prefill",
          "[role_flip]") {
  flip_harness h(role::decode, gated_engine::gated_call::decode);
  auto req = h.request(1, 9, 12);
  auto want = h.expected(req.prompt, 12);
  h.assign(req);
  // The local prefill runs, then the first decode step holds at the gate.
  auto ft = expect<first_token>(h.self, "first_token");
  CHECK(ft.token == want[0]);
  h.gate->wait_until_entered();
  h.self->send(h.worker, to_role(role::prefill));
  // An assignment sent before the router learnt of the drain goes back to the router.
  h.assign(h.request(2, 5, 4));
  h.gate->open();
  std::vector<request_done> handed_back;
  auto out = h.collect_decode(1, &handed_back);
  // The running sequence finished in place, undisturbed: the tokens of a run without flip.
  std::vector<token_id> got{ft.token};
  got.insert(got.end(), out.tokens.begin(), out.tokens.end());
  CHECK(got == want);
  CHECK(out.done->reason == finish_reason::length);
  REQUIRE(handed_back.size() == 1);
  CHECK(handed_back[0].id == 2);
  CHECK(handed_back[0].reason == finish_reason::error);
  CHECK(handed_back[0].error.code == errc::unavailable);  // the router routes it again
  CHECK(handed_back[0].handed_back);
  h.expect_reregistration(role::prefill);
  auto r = h.expect_report(role::decode, role::prefill, false);
  CHECK(r.finished == 1);

  // Now a prefill worker at the same address, writing into the peer pool.
  auto prompt = prompt_of(11, 320);
  h.self->send(h.worker, h.job(7, prompt));
  CHECK(h.collect_prefill(7) == h.expected(prompt, 1)[0]);
  auto ws = query_status(h.self, h.worker);
  CHECK(ws.kind == role::prefill);
  CHECK(ws.kv_used == 0);
  CHECK(ws.completed == 1);
  expect_no_message(h.self, "after the prefill");
}

TEST_CASE("a decode worker hands back a sequence awaiting a remote prefill's KV at a role change",
          "[role_flip]") {
  // Waiting for that KV could hold the flip for the whole prefill backlog; the job is
  // cancelled on the prefill worker and the router routes the request again.
  flip_harness h(role::decode, gated_engine::gated_call::decode);
  auto req = h.request(1, 9, 12);
  h.self->send(h.worker, decode_assignment{req, handle_of(h.self), handle_of(h.self), {}});
  auto job = expect<prefill_job>(h.self, "the prefill job, from the decode worker");
  CHECK(job.id == 1);
  h.self->send(h.worker, to_role(role::prefill));
  auto c = expect<cancel_request>(h.self, "the job cancelled on the prefill worker");
  CHECK(c.id == 1);
  auto d = expect<request_done>(h.self, "the attempt ended for the router to route again");
  CHECK(d.id == 1);
  CHECK(d.reason == finish_reason::error);
  CHECK(d.error.code == errc::unavailable);
  CHECK_THAT(d.error.message, Catch::Contains("is draining"));
  CHECK(d.handed_back);
  h.expect_reregistration(role::prefill);
  auto r = h.expect_report(role::decode, role::prefill, false);
  CHECK(r.finished == 0);
  CHECK(query_status(h.self, h.worker).kv_used == 0);
  expect_no_message(h.self, "after the flip");
}

TEST_CASE("a worker that flipped hands late work of its old role back", "[role_flip]") {
  SECTION("prefill job at a former prefill worker") {
    flip_harness h(role::prefill);
    h.self->send(h.worker, to_role(role::decode));
    h.expect_reregistration(role::decode);
    auto r = h.expect_report(role::prefill, role::decode, false);
    CHECK(r.finished == 0);
    h.self->send(h.worker, h.job(4, prompt_of(6)));
    auto f = expect<prefill_failed>(h.self, "prefill_failed");
    CHECK(f.id == 4);
    CHECK(f.error.code == errc::unavailable);
    CHECK(expect<kv_drained>(h.self, "kv_drained").id == 4);  // nothing was written
  }
  SECTION("decode assignment at a former decode worker") {
    flip_harness h(role::decode);
    h.self->send(h.worker, to_role(role::prefill));
    h.expect_reregistration(role::prefill);
    h.expect_report(role::decode, role::prefill, false);
    h.assign(h.request(4, 6, 3));
    auto d = expect<request_done>(h.self, "request_done");
    CHECK(d.id == 4);
    CHECK(d.error.code == errc::unavailable);
  }
}

TEST_CASE("a worker flips twice and keeps its address, pool and cache", "[role_flip]") {
  flip_harness h(role::prefill);
  h.self->send(h.worker, to_role(role::decode));
  h.expect_reregistration(role::decode);
  h.expect_report(role::prefill, role::decode, false);
  h.serve_and_check(h.request(1, 8, 5));
  h.self->send(h.worker, to_role(role::prefill));
  h.expect_reregistration(role::prefill);
  auto r = h.expect_report(role::decode, role::prefill, false);
  CHECK(r.finished == 0);  // request 1 had ended before the change
  auto prompt = prompt_of(9, 333);
  h.self->send(h.worker, h.job(2, prompt));
  CHECK(h.collect_prefill(2) == h.expected(prompt, 1)[0]);
  auto ws = query_status(h.self, h.worker);
  CHECK(ws.kind == role::prefill);
  CHECK(ws.kv_used == 0);
  expect_no_message(h.self, "after two flips");
}

TEST_CASE("drain_only: the worker empties, keeps its role and reports once", "[role_flip]") {
  SECTION("decode worker with a sequence running") {
    flip_harness h(role::decode, gated_engine::gated_call::decode);
    auto req = h.request(1, 6, 8);
    auto want = h.expected(req.prompt, 8);
    h.assign(req);
    auto ft = expect<first_token>(h.self, "first_token");
    h.gate->wait_until_entered();
    h.self->send(h.worker, drain_only());
    h.gate->open();
    auto out = h.collect_decode(1);
    std::vector<token_id> got{ft.token};
    got.insert(got.end(), out.tokens.begin(), out.tokens.end());
    CHECK(got == want);
    auto r = h.expect_report(role::decode, role::decode, true);
    CHECK(r.finished == 1);
    auto ws = query_status(h.self, h.worker);
    CHECK(ws.kind == role::decode);
    CHECK(ws.kv_used == 0);
    CHECK(ws.detail.find("draining (drain only: maintenance, drained)") != std::string::npos);
    expect_no_message(h.self, "drained: no registration, no second report");
    // Still drained: new work goes back to the router.
    h.assign(h.request(2, 5, 3));
    CHECK(expect<request_done>(h.self, "request_done").error.code == errc::unavailable);
    // Back into service under the same role: it registers again (clearing `draining`).
    h.self->send(h.worker, to_role(role::decode));
    h.expect_reregistration(role::decode);
    h.expect_report(role::decode, role::decode, false);
    h.serve_and_check(h.request(3, 6, 4));
  }
  SECTION("idle prefill worker") {
    flip_harness h(role::prefill);
    h.self->send(h.worker, drain_only());
    auto r = h.expect_report(role::prefill, role::prefill, true);
    CHECK(r.finished == 0);
    // A late job is still served: it is a prefill worker, only out of routing.
    auto prompt = prompt_of(5, 400);
    h.self->send(h.worker, h.job(3, prompt));
    CHECK(h.collect_prefill(3) == h.expected(prompt, 1)[0]);
    auto ws = query_status(h.self, h.worker);
    CHECK(ws.kind == role::prefill);
    CHECK(ws.kv_used == 0);
    expect_no_message(h.self, "after the late job");
  }
}
