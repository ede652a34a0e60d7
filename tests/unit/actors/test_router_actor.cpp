// Router tests: the scoped actor plays supervisor, decode worker, prefill worker and
// client. It sends the membership itself, so the router's view of the cluster is exactly
// what each test says.
#include "engine/block_hash.hpp"
#include "tests/unit/actors/actor_test_util.hpp"

using namespace tokenmill;
using namespace tokenmill::test;

namespace {

constexpr worker_id router_wid = 1;
constexpr worker_id decode_wid = 10;
constexpr worker_id prefill_wid = 20;

struct router_harness {
  test_system ts;
  caf::scoped_actor self{ts.sys};
  actor_reaper reaper;
  caf::actor router;

  explicit router_harness(router_config cfg = {}) {
    cfg.block_tokens = 4;
    router = reaper.add(spawn_router(ts.sys, make_info(router_wid, role::router, "router-0"), cfg,
                                     handle_of(self)));
    auto reg = answer_registration(self);
    REQUIRE(reg.info.id == router_wid);
    REQUIRE(reg.info.kind == role::router);
    REQUIRE(reg.handle == router);
  }

  member as_member(worker_id id, role kind, bool up = true) {
    return member{make_info(id, kind, std::string(to_string(kind)) + "-" + std::to_string(id)),
                  handle_of(self), up};
  }

  /// The scoped actor is the cluster's decode worker and, if asked, its prefill worker.
  void send_membership(bool decode_up = true, bool with_prefill = true, bool prefill_up = true) {
    membership m;
    m.members.push_back(as_member(router_wid, role::router));
    m.members.push_back(as_member(decode_wid, role::decode, decode_up));
    if (with_prefill) m.members.push_back(as_member(prefill_wid, role::prefill, prefill_up));
    self->send(router, m);
  }

  generate_request request(request_id id, size_t prompt_len = 10, uint32_t max_tokens = 4) {
    generate_request r;
    r.id = id;
    r.prompt = prompt_of(prompt_len);
    r.options.max_tokens = max_tokens;
    r.tr.id = id;
    r.client = handle_of(self);
    return r;
  }

  /// Sends `req` and receives the decode assignment it turns into.
  decode_assignment submit(const generate_request& req) {
    self->send(router, req);
    auto a = expect<decode_assignment>(self, "decode_assignment");
    CHECK(a.req.id == req.id);
    CHECK(a.req.prompt == req.prompt);
    CHECK(a.req.client == handle_of(self));
    CHECK(a.router == router);
    CHECK(a.req.tr.time_of(stage::router_received));
    CHECK(a.req.tr.time_of(stage::routed));
    return a;
  }

  void send_tokens(request_id id, std::initializer_list<std::pair<uint32_t, token_id>> toks) {
    token_batch b;
    for (auto [index, tok] : toks)
      b.tokens.push_back({id, index, tok});
    b.batch_size = 1;
    self->send(router, b);
  }

  void send_done(request_id id, finish_reason reason, uint32_t completion, uint32_t prompt = 10) {
    request_done d;
    d.id = id;
    d.reason = reason;
    d.prompt_tokens = prompt;
    d.completion_tokens = completion;
    d.tr.id = id;
    d.tr.stamp(stage::finished);
    self->send(router, d);
  }

  token_chunk expect_chunk(request_id id, uint32_t first_index, std::vector<token_id> tokens) {
    auto c = expect<token_chunk>(self, "token_chunk");
    CHECK(c.id == id);
    CHECK(c.first_index == first_index);
    CHECK(c.tokens == tokens);
    return c;
  }

  request_summary expect_error(request_id id, errc code) {
    auto s = expect<request_summary>(self, "request_summary");
    CHECK(s.id == id);
    CHECK(s.reason == finish_reason::error);
    CHECK(s.error.code == code);
    CHECK_FALSE(s.error.message.empty());
    return s;
  }

  worker_status status_and_quiet(const char* context) {
    auto ws = query_status(self, router);
    expect_no_message(self, context);
    return ws;
  }
};

}  // namespace

TEST_CASE("router: tokens reach the client in index order, then the summary", "[router_actor]") {
  router_harness h;
  h.send_membership();
  auto req = h.request(1);
  auto a = h.submit(req);
  CHECK(a.prefill == handle_of(h.self));  // remote prefill: a prefill worker is up

  // The prefill worker's first token, then decode steps with index 2 ahead of 1.
  h.self->send(h.router, first_token{req.id, 500, a.req.tr});
  h.expect_chunk(req.id, 0, {500});
  h.send_tokens(req.id, {{2, 502}});
  h.send_tokens(req.id, {{1, 501}});
  h.expect_chunk(req.id, 1, {501, 502});
  h.send_tokens(req.id, {{3, 503}});
  h.expect_chunk(req.id, 3, {503});
  h.send_done(req.id, finish_reason::length, 4);
  auto s = expect<request_summary>(h.self, "request_summary");
  CHECK(s.id == req.id);
  CHECK(s.reason == finish_reason::length);
  CHECK(s.error.code == errc::ok);
  CHECK(s.prompt_tokens == 10);
  CHECK(s.completion_tokens == 4);
  CHECK(s.itl_mean_ms >= 0);
  CHECK(s.itl_p50_ms >= 0);
  CHECK(s.itl_p50_ms <= s.itl_p99_ms);
  CHECK(s.tr.time_of(stage::routed));
  CHECK(s.tr.time_of(stage::first_token_router));
  CHECK(s.tr.time_of(stage::finished));

  auto ws = h.status_and_quiet("after the summary");
  CHECK(ws.queued == 0);
  CHECK(ws.completed == 1);
  CHECK(ws.tokens_out == 4);
}

TEST_CASE("router: decode tokens that overtake the first token wait for it", "[router_actor]") {
  // first_token comes from the prefill worker and token_batch from the decode worker:
  // different senders, so no order between them.
  router_harness h;
  h.send_membership();
  auto req = h.request(2);
  auto a = h.submit(req);
  h.send_tokens(req.id, {{2, 602}});
  h.send_tokens(req.id, {{1, 601}});
  h.self->send(h.router, first_token{req.id, 600, a.req.tr});
  h.expect_chunk(req.id, 0, {600, 601, 602});
  h.send_done(req.id, finish_reason::length, 3);
  auto s = expect<request_summary>(h.self, "request_summary");
  CHECK(s.completion_tokens == 3);
  CHECK(s.reason == finish_reason::length);
  h.status_and_quiet("after the summary");
}

TEST_CASE("router: short prompts prefill locally when below the threshold", "[router_actor]") {
  router_config cfg;
  cfg.local_prefill_threshold = 16;
  router_harness h{cfg};
  h.send_membership();
  auto a = h.submit(h.request(3, 10));
  CHECK_FALSE(a.prefill);
  auto b = h.submit(h.request(4, 40));
  CHECK(b.prefill == handle_of(h.self));
  h.status_and_quiet("after the assignments");
}

TEST_CASE("router: without prefill workers the decode worker prefills", "[router_actor]") {
  router_harness h;
  h.send_membership(true, false);
  auto a = h.submit(h.request(5));
  CHECK_FALSE(a.prefill);
  h.status_and_quiet("after the assignment");
}

TEST_CASE("router: admission refuses requests beyond max_inflight", "[router_actor]") {
  router_config cfg;
  cfg.limits.max_inflight = 1;
  router_harness h{cfg};
  h.send_membership();
  auto a = h.submit(h.request(1));
  h.self->send(h.router, h.request(2));
  h.expect_error(2, errc::overloaded);
  // The first request ends; capacity is back.
  h.self->send(h.router, first_token{1, 700, a.req.tr});
  h.expect_chunk(1, 0, {700});
  h.send_done(1, finish_reason::length, 1);
  CHECK(expect<request_summary>(h.self, "request_summary").error.code == errc::ok);
  h.submit(h.request(3));
  auto ws = h.status_and_quiet("after the third request");
  CHECK(ws.queued == 1);
  CHECK_THAT(ws.detail, Catch::Contains("1 rejected"));
}

TEST_CASE("router: a request id already in flight is refused", "[router_actor]") {
  router_harness h;
  h.send_membership();
  h.submit(h.request(1));
  h.self->send(h.router, h.request(1));
  h.expect_error(1, errc::invalid_request);
  CHECK(h.status_and_quiet("after the duplicate").queued == 1);
}

TEST_CASE("router: no decode worker means no_workers", "[router_actor]") {
  router_harness h;
  SECTION("no membership yet") {}
  SECTION("the only decode worker is down") {
    h.send_membership(false);
  }
  h.self->send(h.router, h.request(9));
  h.expect_error(9, errc::no_workers);
  CHECK(h.status_and_quiet("after no_workers").queued == 0);
}

TEST_CASE("router: a decode worker that fails ends its requests with worker_failed",
          "[router_actor]") {
  router_harness h;
  h.send_membership();
  auto a = h.submit(h.request(1));
  h.self->send(h.router, first_token{1, 800, a.req.tr});
  h.expect_chunk(1, 0, {800});
  h.send_membership(false);
  auto s = h.expect_error(1, errc::worker_failed);
  CHECK(s.completion_tokens == 1);
  // A late message from the dead worker changes nothing.
  h.send_done(1, finish_reason::length, 4);
  auto ws = h.status_and_quiet("after worker_failed (no cancel to a dead worker)");
  CHECK(ws.queued == 0);
  h.self->send(h.router, h.request(2));
  h.expect_error(2, errc::no_workers);
}

TEST_CASE("router: a prefill worker that fails cancels the request on the decode worker",
          "[router_actor]") {
  router_harness h;
  h.send_membership();
  auto a = h.submit(h.request(1));
  REQUIRE(a.prefill);
  h.send_membership(true, true, false);  // the prefill worker is down
  auto c = expect<cancel_request>(h.self, "cancel_request to the decode worker");
  CHECK(c.id == 1);
  h.expect_error(1, errc::worker_failed);
  // The decode worker's answer to the cancel arrives after the request ended: ignored.
  h.send_done(1, finish_reason::cancelled, 0);
  CHECK(h.status_and_quiet("after the late request_done").queued == 0);
  // Next requests prefill on the decode worker.
  auto b = h.submit(h.request(2));
  CHECK_FALSE(b.prefill);
}

TEST_CASE("router: a client cancel goes to the decode worker, whose answer ends it",
          "[router_actor]") {
  router_harness h;
  h.send_membership();
  h.submit(h.request(1));
  h.self->send(h.router, cancel_request{1});
  auto c = expect<cancel_request>(h.self, "cancel_request to the decode worker");
  CHECK(c.id == 1);
  h.send_done(1, finish_reason::cancelled, 0);
  auto s = expect<request_summary>(h.self, "request_summary");
  CHECK(s.reason == finish_reason::cancelled);
  CHECK(s.completion_tokens == 0);
  CHECK(h.status_and_quiet("after the cancel").queued == 0);
}

TEST_CASE("router: request_done delivered twice yields one summary", "[router_actor]") {
  router_harness h;
  h.send_membership();
  auto a = h.submit(h.request(1));
  h.self->send(h.router, first_token{1, 900, a.req.tr});
  h.expect_chunk(1, 0, {900});
  h.send_done(1, finish_reason::length, 1);
  h.send_done(1, finish_reason::length, 1);
  expect<request_summary>(h.self, "request_summary");
  auto ws = h.status_and_quiet("after the duplicate request_done");
  CHECK(ws.completed == 1);
}

TEST_CASE("router: tokens delivered twice are released once and do not stall the stream",
          "[router_actor]") {
  // BUG (actors/router/router_actor.cpp, first_token / token_batch handlers and
  // release_tokens): a token whose index was already released is put back into
  // `pending`; release_tokens() starts at pending.begin() and stops at the first index
  // that is not next_index, so the stale entry blocks every later token: the stream
  // stalls and the summary reports fewer tokens than the decode worker produced.
  router_harness h;
  h.send_membership();
  auto a = h.submit(h.request(1));
  h.self->send(h.router, first_token{1, 950, a.req.tr});
  h.self->send(h.router, first_token{1, 950, a.req.tr});  // delivered twice
  h.send_tokens(1, {{1, 951}});
  h.send_tokens(1, {{1, 951}});  // delivered twice
  h.send_tokens(1, {{2, 952}});
  query_status(h.self, h.router);  // round trip: every chunk is in the mailbox now
  using namespace std::chrono_literals;
  auto c0 = expect<token_chunk>(h.self, "chunk 0", 0ms);
  CHECK(c0.tokens == std::vector<token_id>{950});
  auto c1 = expect<token_chunk>(h.self, "chunk 1", 0ms);
  CHECK(c1.first_index == 1);
  CHECK(c1.tokens == std::vector<token_id>{951});
  auto c2 = expect<token_chunk>(h.self, "chunk 2", 0ms);
  CHECK(c2.first_index == 2);
  CHECK(c2.tokens == std::vector<token_id>{952});
  h.send_done(1, finish_reason::length, 3);
  auto s = expect<request_summary>(h.self, "request_summary");
  CHECK(s.completion_tokens == 3);
}

namespace {
constexpr worker_id decode2_wid = 11;
constexpr worker_id kv_wid = 30;

/// Membership with two decode workers, a prefill worker and a kv-store, all played by the
/// scoped actor.
void send_kv_membership(router_harness& h) {
  membership m;
  m.members.push_back(h.as_member(router_wid, role::router));
  m.members.push_back(h.as_member(decode_wid, role::decode));
  m.members.push_back(h.as_member(decode2_wid, role::decode));
  m.members.push_back(h.as_member(prefill_wid, role::prefill));
  m.members.push_back(h.as_member(kv_wid, role::kv_store));
  h.self->send(h.router, m);
}

/// Receives the router's overlap query for `prompt` and answers `reply`.
void answer_overlap(router_harness& h, const std::vector<token_id>& prompt,
                    std::vector<worker_overlap> reply) {
  bool asked = false;
  h.self->receive(
      [&](const overlap_query& q) -> overlap_reply {
        asked = true;
        CHECK(q.hashes == block_hashes(prompt, 4));
        return overlap_reply{std::move(reply)};
      },
      caf::after(receive_timeout) >> [] {});
  REQUIRE(asked);
}
}  // namespace

TEST_CASE("router: with a choice to make it asks the kv-store and follows the cached prefix",
          "[router_actor]") {
  router_config cfg;
  cfg.local_prefill_threshold = 8;
  router_harness h{cfg};
  send_kv_membership(h);
  // 10 tokens = 2 full blocks of 4. Decode worker 11 holds both: 2 uncached tokens are
  // below the threshold, so it prefills locally on the worker that has the prefix.
  auto req = h.request(1, 10);
  h.self->send(h.router, req);
  answer_overlap(h, req.prompt, {{decode2_wid, 2}});
  auto a = expect<decode_assignment>(h.self, "decode_assignment");
  CHECK(a.req.id == 1);
  CHECK_FALSE(a.prefill);
  // Without overlap the 10 uncached tokens go to the prefill worker.
  auto req2 = h.request(2, 10);
  req2.prompt[0] = 999;
  h.self->send(h.router, req2);
  answer_overlap(h, req2.prompt, {});
  auto b = expect<decode_assignment>(h.self, "decode_assignment");
  CHECK(b.prefill == handle_of(h.self));
  auto ws = h.status_and_quiet("after two requests");
  CHECK_THAT(ws.detail,
             Catch::Contains("1 routed to a cached prefix (2 overlap queries, 0 failed)"));
}

TEST_CASE("router: a failed overlap query still routes the request", "[router_actor]") {
  router_harness h;
  send_kv_membership(h);
  auto req = h.request(1, 10);
  h.self->send(h.router, req);
  // The kv-store answers with an error: the request is routed without overlap.
  h.self->receive([&](const overlap_query&) -> caf::result<overlap_reply> {
    return caf::make_error(caf::sec::runtime_error);
  });
  auto a = expect<decode_assignment>(h.self, "decode_assignment");
  CHECK(a.req.id == 1);
  CHECK(a.prefill == handle_of(h.self));
  CHECK_THAT(h.status_and_quiet("after the request").detail, Catch::Contains("1 failed"));
}

TEST_CASE("router: a request cancelled while its overlap query is out ends cancelled",
          "[router_actor]") {
  router_harness h;
  send_kv_membership(h);
  auto req = h.request(1, 10);
  h.self->send(h.router, req);
  h.self->send(h.router, cancel_request{1});
  answer_overlap(h, req.prompt, {{decode_wid, 2}});
  auto s = expect<request_summary>(h.self, "request_summary");
  CHECK(s.id == 1);
  CHECK(s.reason == finish_reason::cancelled);
  CHECK(h.status_and_quiet("after the cancel").queued == 0);
}

TEST_CASE("router: with nothing to choose it does not ask the kv-store", "[router_actor]") {
  router_harness h;
  membership m;
  m.members.push_back(h.as_member(router_wid, role::router));
  m.members.push_back(h.as_member(decode_wid, role::decode));
  m.members.push_back(h.as_member(prefill_wid, role::prefill));
  m.members.push_back(h.as_member(kv_wid, role::kv_store));
  h.self->send(h.router, m);
  h.submit(h.request(1, 40));  // expect<decode_assignment> fails on any other message first
  CHECK_THAT(h.status_and_quiet("after the request").detail, Catch::Contains("0 overlap queries"));
}
