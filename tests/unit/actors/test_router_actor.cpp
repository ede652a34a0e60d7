// Router tests: the scoped actor plays supervisor, decode worker, prefill worker and
// client. It sends the membership itself, so the router's view of the cluster is exactly
// what each test says.
#include <algorithm>
#include <chrono>
#include <thread>

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
    return make_request(id, prompt_len, max_tokens, handle_of(self));
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

TEST_CASE("router: logprobs reach the client with their tokens when asked for",
          "[router_actor][logprobs]") {
  router_harness h;
  h.send_membership();
  auto req = h.request(1);
  req.options.sampling.top_logprobs = 1;
  auto a = h.submit(req);
  h.self->send(h.router, first_token{req.id, 500, a.req.tr, token_logprobs{-0.5f, {{500, -0.5f}}}});
  auto c0 = h.expect_chunk(req.id, 0, {500});
  REQUIRE(c0.logprobs.size() == 1);
  CHECK(c0.logprobs[0].logprob == -0.5f);
  token_batch b;
  b.tokens.push_back({req.id, 2, 502, token_logprobs{-2.0f, {{7, -0.1f}}}});
  b.tokens.push_back({req.id, 1, 501, token_logprobs{-1.0f, {{501, -1.0f}}}});
  h.self->send(h.router, b);
  auto c1 = h.expect_chunk(req.id, 1, {501, 502});  // 2 waited for 1
  REQUIRE(c1.logprobs.size() == 2);
  CHECK(c1.logprobs[0].logprob == -1.0f);
  CHECK(c1.logprobs[1].logprob == -2.0f);
  CHECK(c1.logprobs[1].top[0].token == 7);
  // Not asked for: chunks carry none.
  auto other = h.request(2);
  auto a2 = h.submit(other);
  h.self->send(h.router, first_token{other.id, 600, a2.req.tr, token_logprobs{-3.0f, {}}});
  CHECK(h.expect_chunk(other.id, 0, {600}).logprobs.empty());
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

TEST_CASE(
    "router: a decode worker lost with no other one left ends its requests with "
    "worker_failed",
    "[router_actor]") {
  router_harness h;
  h.send_membership();
  auto a = h.submit(h.request(1));
  h.self->send(h.router, first_token{1, 800, a.req.tr});
  h.expect_chunk(1, 0, {800});
  h.send_membership(false);
  auto s = h.expect_error(1, errc::worker_failed);
  CHECK(s.completion_tokens == 1);
  CHECK_THAT(s.error.message, Catch::Contains("decode worker decode-10 left the cluster") &&
                                  Catch::Contains("no decode worker is left"));
  CHECK(s.migrations == 0);  // it did not move anywhere
  // A late message from the dead worker changes nothing.
  h.send_done(1, finish_reason::length, 4);
  auto ws = h.status_and_quiet("after worker_failed (no cancel to a dead worker)");
  CHECK(ws.queued == 0);
  h.self->send(h.router, h.request(2));
  h.expect_error(2, errc::no_workers);
}

TEST_CASE(
    "router: a prefill worker lost before the first token: cancelled on the decode "
    "worker, prefilled there instead",
    "[router_actor]") {
  router_harness h;
  h.send_membership();
  auto req = h.request(1);
  auto a = h.submit(req);
  REQUIRE(a.prefill);
  h.send_membership(true, true, false);  // the prefill worker is down, none is left
  auto c = expect<cancel_request>(h.self, "cancel_request to the decode worker");
  CHECK(c.id == 1);  // the old attempt: its reserved blocks are freed
  auto b = expect<decode_assignment>(h.self, "the request again, prefilled locally");
  CHECK_FALSE(b.prefill);
  CHECK(is_attempt_id(b.req.id));
  CHECK(b.req.prompt == req.prompt);
  CHECK(b.req.options.max_tokens == req.options.max_tokens);
  // The decode worker's answer to the cancel arrives after the move: ignored.
  h.send_done(1, finish_reason::cancelled, 0);
  h.self->send(h.router, first_token{b.req.id, 700, b.req.tr});
  h.expect_chunk(1, 0, {700});
  h.send_done(b.req.id, finish_reason::length, 1);
  auto s = expect<request_summary>(h.self, "request_summary");
  CHECK(s.id == 1);
  CHECK(s.error.code == errc::ok);
  CHECK(s.migrations == 1);
  CHECK(s.migration_reasons == std::vector<std::string>{"prefill_lost"});
  CHECK(s.prefill_worker.empty());
  CHECK(h.status_and_quiet("after the summary").queued == 0);
  // Next requests prefill on the decode worker.
  auto d = h.submit(h.request(2));
  CHECK_FALSE(d.prefill);
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
  // Regression (the router's first_token / token_batch handlers and release_tokens, now
  // router/token_order): a token whose index was already released was put back into
  // `pending`; the release started at pending.begin() and stopped at the first index that
  // was not next_index, so the stale entry blocked every later token: the stream stalled
  // and the summary reported fewer tokens than the decode worker produced.
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

TEST_CASE("router: the cost model's scores reach the summary, and local prefills queue up",
          "[router_actor][routing_policy]") {
  router_config cfg;
  cfg.local_prefill_threshold = 8;
  cfg.default_speed.tokens_per_s = 1000;  // 1 ms per token
  cfg.cost.load_s_per_request = 0.001;    // 1 ms per active request
  router_harness h{cfg};
  send_kv_membership(h);
  // Decode worker 11 holds both full blocks of the 10-token prompt: 2 uncached tokens
  // (2 ms) locally beat 10 tokens at the prefill worker (10 ms).
  auto req = h.request(1, 10);
  h.self->send(h.router, req);
  answer_overlap(h, req.prompt, {{decode2_wid, 2}});
  auto a = expect<decode_assignment>(h.self, "decode_assignment");
  CHECK_FALSE(a.prefill);
  // The same prompt again while the first is still prefilling there: its 2 queued tokens
  // and its load now count, 2 + 2 + 1 = 5 ms, still below 10.
  auto req2 = h.request(2, 10);
  h.self->send(h.router, req2);
  answer_overlap(h, req2.prompt, {{decode2_wid, 2}});
  auto b = expect<decode_assignment>(h.self, "decode_assignment");
  CHECK_FALSE(b.prefill);
  std::vector<request_summary> sums;
  for (request_id id : {request_id{1}, request_id{2}}) {
    h.self->send(h.router, first_token{id, 500, trace{}});
    h.expect_chunk(id, 0, {500});
    h.send_done(id, finish_reason::length, 1);
    sums.push_back(expect<request_summary>(h.self, "request_summary"));
  }
  const auto& s1 = sums[0];
  const auto& s2 = sums[1];
  REQUIRE(s1.id == 1);
  REQUIRE(s2.id == 2);
  REQUIRE(s2.routing.size() == 3);  // two decode workers, then the prefill worker
  const auto& d10 = s2.routing[0];
  const auto& d11 = s2.routing[1];
  const auto& p20 = s2.routing[2];
  CHECK(d10.worker == "decode-10");
  CHECK_FALSE(d10.chosen);
  CHECK_FALSE(d10.local);
  CHECK(d10.total_ms == Approx(10));
  CHECK(d11.worker == "decode-11");
  CHECK(d11.chosen);
  CHECK(d11.local);
  CHECK(d11.cached_tokens == 8);
  CHECK(d11.prefill_ms == Approx(2));
  CHECK(d11.queue_ms == Approx(2));
  CHECK(d11.load_ms == Approx(1));
  CHECK(d11.total_ms == Approx(5));
  CHECK(p20.worker == "prefill-20");
  CHECK(p20.prefill);
  CHECK_FALSE(p20.chosen);
  CHECK(p20.prefill_ms == Approx(10));
  // The first request saw an idle cluster.
  REQUIRE(s1.routing.size() == 3);
  CHECK(s1.routing[1].chosen);
  CHECK(s1.routing[1].queue_ms == 0);
  CHECK(s1.routing[1].load_ms == 0);
  // Both first tokens arrived: nothing is queued at decode worker 11 any more, so a third
  // request sees its queue empty again.
  auto req3 = h.request(3, 10);
  h.self->send(h.router, req3);
  answer_overlap(h, req3.prompt, {{decode2_wid, 2}});
  expect<decode_assignment>(h.self, "decode_assignment");
  h.self->send(h.router, cancel_request{3});
  h.self->receive([](const cancel_request&) {}, caf::after(receive_timeout) >> [] {});
  request_done d;
  d.id = 3;
  d.reason = finish_reason::cancelled;
  h.self->send(h.router, d);
  auto s3 = expect<request_summary>(h.self, "request_summary 3");
  REQUIRE(s3.routing.size() == 3);
  CHECK(s3.routing[1].queue_ms == 0);
  h.status_and_quiet("after three requests");
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
  router_config cfg;
  cfg.fetch.enabled = false;  // with fetch, one decode and one prefill worker are a choice
  router_harness h{cfg};
  membership m;
  m.members.push_back(h.as_member(router_wid, role::router));
  m.members.push_back(h.as_member(decode_wid, role::decode));
  m.members.push_back(h.as_member(prefill_wid, role::prefill));
  m.members.push_back(h.as_member(kv_wid, role::kv_store));
  h.self->send(h.router, m);
  h.submit(h.request(1, 40));  // expect<decode_assignment> fails on any other message first
  CHECK_THAT(h.status_and_quiet("after the request").detail, Catch::Contains("0 overlap queries"));
}

// ---------------------------------------------------------------- migration
//
// The scoped actor plays every worker, so which worker an assignment went to shows in the
// summary's worker names; each attempt is told apart by its id.

namespace {
constexpr worker_id decode3_wid = 12;
constexpr worker_id prefill2_wid = 21;

/// Membership with the given decode and prefill workers up (all played by the scoped actor).
void send_workers(router_harness& h, std::vector<worker_id> decodes,
                  std::vector<worker_id> prefills = {}) {
  membership m;
  m.members.push_back(h.as_member(router_wid, role::router));
  for (auto d : decodes)
    m.members.push_back(h.as_member(d, role::decode));
  for (auto p : prefills)
    m.members.push_back(h.as_member(p, role::prefill));
  h.self->send(h.router, m);
}

/// Receives token chunks of request `id` until its summary; every index must come exactly
/// once, in order (0..n-1), and the tokens equal `want`.
request_summary expect_stream(router_harness& h, request_id id, uint32_t first_index,
                              std::vector<token_id> want) {
  std::vector<token_id> got;
  uint32_t next = first_index;
  for (;;) {
    std::optional<request_summary> s;
    std::string problem;
    h.self->receive(
        [&](token_chunk& c) {
          CHECK(c.id == id);
          CHECK(c.first_index == next);  // no index twice, none skipped
          next += static_cast<uint32_t>(c.tokens.size());
          got.insert(got.end(), c.tokens.begin(), c.tokens.end());
        },
        [&](request_summary& x) { s = std::move(x); },
        caf::others >> [&](caf::message_view& x) -> caf::result<caf::message> {
          problem = "unexpected message " + describe(x);
          return caf::sec::unexpected_message;
        },
        caf::after(receive_timeout) >> [&] { problem = "timed out"; });
    if (!problem.empty()) FAIL("waiting for the stream of request " << id << ": " << problem);
    if (s) {
      CHECK(got == want);
      CHECK(s->id == id);
      return std::move(*s);
    }
  }
}

/// The router has forgotten every request and attempt, and sent nothing more.
void expect_clean(router_harness& h, const char* context) {
  auto ws = h.status_and_quiet(context);
  CHECK(ws.queued == 0);
  CHECK_THAT(ws.detail, Catch::Contains("0 attempts tracked"));
}
}  // namespace

TEST_CASE(
    "router: a decode worker lost before its first token: the request moves and "
    "completes",
    "[router_actor][migration]") {
  router_harness h;
  send_workers(h, {decode_wid, decode2_wid});
  auto req = h.request(1);
  auto a = h.submit(req);  // to decode-10 (tie: lower id), prefilled there
  CHECK_FALSE(a.prefill);
  send_workers(h, {decode2_wid});  // decode-10 is gone
  auto b = expect<decode_assignment>(h.self, "the request on decode-11");
  CHECK(is_attempt_id(b.req.id));
  CHECK(b.req.prompt == req.prompt);  // nothing was delivered: the original request
  CHECK(b.req.options.max_tokens == 4);
  CHECK(b.req.tr.time_of(stage::router_received));
  h.self->send(h.router, first_token{b.req.id, 600, b.req.tr});
  h.send_tokens(b.req.id, {{1, 601}, {2, 602}});
  h.send_tokens(b.req.id, {{3, 603}});
  h.send_done(b.req.id, finish_reason::length, 4);
  auto s = expect_stream(h, 1, 0, {600, 601, 602, 603});
  CHECK(s.reason == finish_reason::length);
  CHECK(s.error.code == errc::ok);
  CHECK(s.completion_tokens == 4);
  CHECK(s.prompt_tokens == 10);  // the client's prompt
  CHECK(s.migrations == 1);
  CHECK(s.migration_reasons == std::vector<std::string>{"worker_lost"});
  CHECK(s.decode_worker == "decode-11");
  CHECK(s.tr.time_of(stage::migrated));
  // The lost time is in the routing interval: routed is the surviving attempt's.
  CHECK(*s.tr.time_of(stage::routed) >= *s.tr.time_of(stage::migrated));
  expect_clean(h, "after the summary");
  CHECK_THAT(h.status_and_quiet("status").detail, Catch::Contains("1 migrated, 0 lost"));
}

TEST_CASE(
    "router: a decode worker lost mid-stream: the new attempt resends prompt + "
    "delivered tokens and continues at the next index",
    "[router_actor][migration]") {
  router_harness h;
  send_workers(h, {decode_wid, decode2_wid});
  auto req = h.request(1, 10, 5);
  auto a = h.submit(req);
  h.self->send(h.router, first_token{1, 700, a.req.tr});
  h.send_tokens(1, {{1, 701}});
  h.send_tokens(1, {{3, 703}});  // ahead of its turn: not delivered, produced again later
  h.expect_chunk(1, 0, {700});
  h.expect_chunk(1, 1, {701});
  send_workers(h, {decode2_wid});
  auto b = expect<decode_assignment>(h.self, "the request on decode-11");
  auto want_prompt = req.prompt;
  want_prompt.push_back(700);
  want_prompt.push_back(701);
  CHECK(b.req.prompt == want_prompt);
  CHECK(b.req.options.max_tokens == 3);  // max_tokens counts across the move
  // The penalties count the two resent tokens as output, as the first attempt did.
  CHECK(b.req.options.sampling.resumed == 2);
  // A late token and request_done of the dead attempt: dropped.
  h.send_tokens(1, {{2, 999}});
  h.send_done(1, finish_reason::length, 5);
  // The new attempt: its index 0 is the client's index 2; one batch is delivered twice.
  h.self->send(h.router, first_token{b.req.id, 702, b.req.tr});
  h.send_tokens(b.req.id, {{1, 703}});
  h.send_tokens(b.req.id, {{1, 703}});  // delivered twice
  h.send_tokens(b.req.id, {{2, 704}});
  h.send_done(b.req.id, finish_reason::length, 3);
  auto s = expect_stream(h, 1, 2, {702, 703, 704});
  CHECK(s.reason == finish_reason::length);
  CHECK(s.completion_tokens == 5);
  CHECK(s.prompt_tokens == 10);
  CHECK(s.migrations == 1);
  expect_clean(h, "after the summary");
}

TEST_CASE(
    "router: a prefill worker that changes role in place before the first token arrives "
    "loses nothing",
    "[router_actor][migration]") {
  // The flip finished the job (its KV is on the way to the decode worker) and the worker
  // registered again as a decode worker; the membership may reach the router before the
  // first token does. The request must not be cancelled and prefilled again.
  router_harness h;
  send_workers(h, {decode_wid}, {prefill_wid});
  auto req = h.request(1);
  auto a = h.submit(req);
  REQUIRE(a.prefill);
  send_workers(h, {decode_wid, prefill_wid});  // prefill-20 is now a decode worker
  h.self->send(h.router, first_token{1, 900, a.req.tr});
  h.send_tokens(1, {{1, 901}});
  h.send_done(1, finish_reason::length, 2);
  auto s = expect_stream(h, 1, 0, {900, 901});  // no cancel_request or second assignment
  CHECK(s.error.code == errc::ok);
  CHECK(s.migrations == 0);
  CHECK(s.migration_reasons.empty());
  expect_clean(h, "after the summary");
}

TEST_CASE(
    "router: a prefill worker lost during the KV transfer: cancelled on the decode "
    "worker and prefilled on another prefill worker",
    "[router_actor][migration]") {
  router_harness h;
  send_workers(h, {decode_wid}, {prefill_wid, prefill2_wid});
  auto req = h.request(1);
  auto a = h.submit(req);  // prefill-20 (tie: lower id)
  REQUIRE(a.prefill);
  send_workers(h, {decode_wid}, {prefill2_wid});  // prefill-20 dies mid-transfer
  auto c = expect<cancel_request>(h.self, "cancel of the old attempt on the decode worker");
  CHECK(c.id == 1);
  auto b = expect<decode_assignment>(h.self, "the request again");
  CHECK(b.prefill == handle_of(h.self));  // prefill-21
  CHECK(b.req.prompt == req.prompt);
  // The decode worker's answer to the cancel, and a first token the dead prefill worker
  // sent before it died: both of the old attempt, both dropped.
  h.send_done(1, finish_reason::cancelled, 0);
  h.self->send(h.router, first_token{1, 111, a.req.tr});
  h.self->send(h.router, first_token{b.req.id, 800, b.req.tr});
  h.send_tokens(b.req.id, {{1, 801}});
  h.send_done(b.req.id, finish_reason::length, 2);
  auto s = expect_stream(h, 1, 0, {800, 801});
  CHECK(s.error.code == errc::ok);
  CHECK(s.prefill_worker == "prefill-21");
  CHECK(s.migration_reasons == std::vector<std::string>{"prefill_lost"});
  expect_clean(h, "after the summary");
}

TEST_CASE("router: a request moves twice in a row", "[router_actor][migration]") {
  router_harness h;
  send_workers(h, {decode_wid, decode2_wid, decode3_wid});
  auto req = h.request(1, 10, 4);
  auto a = h.submit(req);
  h.self->send(h.router, first_token{1, 10, a.req.tr});
  h.expect_chunk(1, 0, {10});
  send_workers(h, {decode2_wid, decode3_wid});
  auto b = expect<decode_assignment>(h.self, "second attempt");
  h.self->send(h.router, first_token{b.req.id, 11, b.req.tr});
  h.expect_chunk(1, 1, {11});
  send_workers(h, {decode3_wid});
  auto c = expect<decode_assignment>(h.self, "third attempt");
  CHECK(c.req.id != b.req.id);
  auto want_prompt = req.prompt;
  want_prompt.insert(want_prompt.end(), {10, 11});
  CHECK(c.req.prompt == want_prompt);
  CHECK(c.req.options.max_tokens == 2);
  // The delivered tokens are prompt now but output to a grammar: workers replay them.
  CHECK(b.req.options.sampling.resumed == 1);
  CHECK(c.req.options.sampling.resumed == 2);
  h.send_tokens(b.req.id, {{1, 998}});  // the second attempt's late token: dropped
  h.self->send(h.router, first_token{c.req.id, 12, c.req.tr});
  h.send_tokens(c.req.id, {{1, 13}});
  h.send_done(c.req.id, finish_reason::length, 2);
  auto s = expect_stream(h, 1, 2, {12, 13});
  CHECK(s.completion_tokens == 4);
  CHECK(s.migrations == 2);
  CHECK(s.migration_reasons == std::vector<std::string>{"worker_lost", "worker_lost"});
  CHECK(s.decode_worker == "decode-12");
  expect_clean(h, "after the summary");
}

TEST_CASE("router: beyond the migration limit a request ends with a clear error",
          "[router_actor][migration]") {
  router_config cfg;
  cfg.migration_limit = 1;
  router_harness h{cfg};
  send_workers(h, {decode_wid, decode2_wid, decode3_wid});
  h.submit(h.request(1));
  send_workers(h, {decode2_wid, decode3_wid});
  expect<decode_assignment>(h.self, "the one move allowed");
  send_workers(h, {decode3_wid});
  auto s = h.expect_error(1, errc::worker_failed);
  CHECK_THAT(s.error.message, Catch::Contains("decode-11") && Catch::Contains("worker_lost") &&
                                  Catch::Contains("migration limit is 1"));
  CHECK(s.migrations == 1);
  expect_clean(h, "after the error");
  CHECK_THAT(h.status_and_quiet("status").detail, Catch::Contains("1 migrated, 1 lost"));
}

TEST_CASE(
    "router: attempts a draining worker hands back move as drained, beyond the migration "
    "limit",
    "[router_actor][migration]") {
  // Even with migration off, a drain's hand-back is no failure: the request goes on.
  router_config cfg;
  cfg.migration_limit = 0;
  router_harness h{cfg};
  send_workers(h, {decode_wid, decode2_wid});
  auto a = h.submit(h.request(1));
  for (int i = 0; i < 2; ++i) {  // handed back twice (two drains)
    request_done d;
    d.id = a.req.id;
    d.reason = finish_reason::error;
    d.error = {errc::unavailable, "decode worker 'decode-10' is draining"};
    d.handed_back = true;
    h.self->send(h.router, d);
    a = expect<decode_assignment>(h.self, "the request routed again");
  }
  h.self->send(h.router, first_token{a.req.id, 700, a.req.tr});
  h.send_done(a.req.id, finish_reason::length, 1);
  auto s = expect_stream(h, 1, 0, {700});
  CHECK(s.error.code == errc::ok);
  CHECK(s.migrations == 2);
  CHECK(s.migration_reasons == std::vector<std::string>{"drained", "drained"});
  expect_clean(h, "after the summary");
}

TEST_CASE("router: with migration off a lost worker fails its requests",
          "[router_actor][migration]") {
  router_config cfg;
  cfg.migration_limit = 0;
  router_harness h{cfg};
  send_workers(h, {decode_wid, decode2_wid});
  h.submit(h.request(1));
  send_workers(h, {decode2_wid});
  auto s = h.expect_error(1, errc::worker_failed);
  CHECK_THAT(s.error.message, Catch::Contains("migration is off"));
  expect_clean(h, "after the error");
}

TEST_CASE(
    "router: a transfer failure reported by the decode worker moves the request to "
    "another decode worker, a request error does not move",
    "[router_actor][migration]") {
  router_harness h;
  send_workers(h, {decode_wid, decode2_wid}, {prefill_wid});
  auto req = h.request(1);
  h.submit(req);  // decode-10, prefill-20
  request_done d;
  d.id = 1;
  d.reason = finish_reason::error;
  d.error = {errc::kv_corrupt, "KV block 3 failed its checksum after transfer"};
  d.tr.id = 1;
  d.tr.stamp(stage::finished);
  h.self->send(h.router, d);
  auto b = expect<decode_assignment>(h.self, "the request again");
  CHECK(b.req.prompt == req.prompt);
  h.self->send(h.router, first_token{b.req.id, 5, b.req.tr});
  h.send_done(b.req.id, finish_reason::length, 1);
  auto s = expect_stream(h, 1, 0, {5});
  CHECK(s.error.code == errc::ok);
  CHECK(s.decode_worker == "decode-11");  // not the worker that failed
  CHECK(s.migration_reasons == std::vector<std::string>{"transfer_failed"});
  // Only the attempt that served the request to its end has a `finished` stamp.
  CHECK(std::count_if(s.tr.hops.begin(), s.tr.hops.end(),
                      [](const hop& x) { return x.where == stage::finished; }) == 1);

  // out_of_blocks would fail anywhere: the error reaches the client as it is.
  auto c = h.submit(h.request(2));
  request_done e;
  e.id = c.req.id;
  e.reason = finish_reason::error;
  e.error = {errc::out_of_blocks, "request needs 99 KV blocks"};
  h.self->send(h.router, e);
  auto s2 = h.expect_error(2, errc::out_of_blocks);
  CHECK(s2.migrations == 0);
  expect_clean(h, "after both");
}

TEST_CASE("router: a stalled attempt is cancelled and moves to another worker",
          "[router_actor][migration]") {
  router_config cfg;
  cfg.tick_interval = caf::timespan{0};  // the test sends the tick itself
  cfg.stall_timeout = caf::timespan{1};  // any attempt without progress has stalled
  cfg.request_timeout = caf::timespan{0};
  router_harness h{cfg};
  send_workers(h, {decode_wid, decode2_wid});
  auto req = h.request(1);
  h.submit(req);
  h.self->send(h.router, tick_atom::value);
  auto c = expect<cancel_request>(h.self, "cancel on the stalled worker");
  CHECK(c.id == 1);
  auto b = expect<decode_assignment>(h.self, "the request on the other worker");
  h.send_done(1, finish_reason::cancelled, 0);  // the stalled worker's answer: dropped
  h.self->send(h.router, first_token{b.req.id, 42, b.req.tr});
  h.send_done(b.req.id, finish_reason::length, 1);
  auto s = expect_stream(h, 1, 0, {42});
  CHECK(s.decode_worker == "decode-11");
  CHECK(s.migration_reasons == std::vector<std::string>{"stalled"});
  expect_clean(h, "after the summary");
}

TEST_CASE("router: the request timeout ends a request with where it was stuck",
          "[router_actor][migration]") {
  router_config cfg;
  cfg.tick_interval = caf::timespan{0};
  cfg.stall_timeout = caf::timespan{0};
  cfg.request_timeout = caf::timespan{1};
  router_harness h{cfg};
  SECTION("in prefill") {
    send_workers(h, {decode_wid}, {prefill_wid});
    h.submit(h.request(1));
    h.self->send(h.router, tick_atom::value);
    CHECK(expect<cancel_request>(h.self, "cancel on the decode worker").id == 1);
    auto s = h.expect_error(1, errc::timeout);
    CHECK_THAT(s.error.message, Catch::Contains("in prefill on worker prefill-20"));
  }
  SECTION("decoding") {
    send_workers(h, {decode_wid});
    auto a = h.submit(h.request(1));
    h.self->send(h.router, first_token{1, 7, a.req.tr});
    h.expect_chunk(1, 0, {7});
    h.self->send(h.router, tick_atom::value);
    CHECK(expect<cancel_request>(h.self, "cancel on the decode worker").id == 1);
    auto s = h.expect_error(1, errc::timeout);
    CHECK_THAT(s.error.message,
               Catch::Contains("in decode on worker decode-10") && Catch::Contains("1 tokens"));
    CHECK(s.completion_tokens == 1);
  }
  SECTION("awaiting routing") {
    membership m;
    m.members.push_back(h.as_member(router_wid, role::router));
    m.members.push_back(h.as_member(decode_wid, role::decode));
    m.members.push_back(h.as_member(decode2_wid, role::decode));
    m.members.push_back(h.as_member(kv_wid, role::kv_store));
    h.self->send(h.router, m);
    auto req = h.request(1, 10);
    h.self->send(h.router, req);
    h.self->send(h.router, tick_atom::value);  // handled before the overlap answer
    answer_overlap(h, req.prompt, {});
    auto s = h.expect_error(1, errc::timeout);
    CHECK_THAT(s.error.message, Catch::Contains("awaiting routing"));
  }
  h.send_done(1, finish_reason::cancelled, 0);  // a late answer: dropped
  expect_clean(h, "after the timeout");
}

TEST_CASE("router: a client cancel while the request moves ends it cancelled",
          "[router_actor][migration]") {
  router_harness h;
  send_workers(h, {decode_wid, decode2_wid});
  h.submit(h.request(1));
  h.self->send(h.router, cancel_request{1});
  CHECK(expect<cancel_request>(h.self, "cancel to the decode worker").id == 1);
  send_workers(h, {decode2_wid});  // the worker dies before it answers
  auto s = expect<request_summary>(h.self, "request_summary");
  CHECK(s.reason == finish_reason::cancelled);
  expect_clean(h, "after the cancel");
}

TEST_CASE("router: request ids with the top bit set are refused", "[router_actor][migration]") {
  router_harness h;
  send_workers(h, {decode_wid});
  h.self->send(h.router, h.request(mint_attempt_id(1, 1)));
  h.expect_error(mint_attempt_id(1, 1), errc::invalid_request);
  expect_clean(h, "after the refusal");
}

TEST_CASE("router: attempt_moved points cancels and the summary at the new decode worker",
          "[router_actor][live_migration]") {
  router_harness h;
  caf::scoped_actor other{h.ts.sys};  // decode worker 11, where the sequence moves
  membership m;
  m.members.push_back(h.as_member(router_wid, role::router));
  m.members.push_back(h.as_member(decode_wid, role::decode));
  auto b = h.as_member(decode_wid + 1, role::decode);
  b.handle = handle_of(other);
  m.members.push_back(b);
  h.self->send(h.router, m);
  auto req = h.request(1, 10, 8);
  auto a = h.submit(req);  // both idle: the lower id, the scoped actor
  CHECK(a.prefill == caf::actor{});
  h.self->send(h.router, first_token{req.id, 500, a.req.tr});
  h.expect_chunk(req.id, 0, {500});
  h.send_tokens(req.id, {{1, 501}});
  h.expect_chunk(req.id, 1, {501});
  // Worker 11 took the sequence over with its KV: same attempt id, the next index.
  h.self->send(h.router, attempt_moved{a.req.id, 1, decode_wid + 1, b.info.name, handle_of(other)});
  h.send_tokens(req.id, {{2, 502}});
  h.expect_chunk(req.id, 2, {502});
  // A stale move (an older epoch) changes nothing.
  h.self->send(h.router, attempt_moved{a.req.id, 1, decode_wid, "decode-10", handle_of(h.self)});
  h.self->send(h.router, cancel_request{req.id});
  auto c = expect<cancel_request>(other, "cancel_request at the new decode worker");
  CHECK(c.id == a.req.id);
  h.send_done(a.req.id, finish_reason::cancelled, 3);
  auto s = expect<request_summary>(h.self, "request_summary");
  CHECK(s.reason == finish_reason::cancelled);
  CHECK(s.completion_tokens == 3);
  CHECK(s.decode_worker == b.info.name);
  CHECK(s.migrations == 1);
  CHECK(s.migration_reasons == std::vector<std::string>{"live_migration"});
  CHECK(s.tr.time_of(stage::migrated));
  auto ws = h.status_and_quiet("after the moved request");
  CHECK_THAT(ws.detail, Catch::Contains("1 migrated"));
  expect_no_message(other, "the new decode worker got nothing else");
}

TEST_CASE("router: a cancel that went to the old worker is repeated at the new one",
          "[router_actor][live_migration]") {
  router_harness h;
  caf::scoped_actor other{h.ts.sys};
  membership m;
  m.members.push_back(h.as_member(router_wid, role::router));
  m.members.push_back(h.as_member(decode_wid, role::decode));
  auto b = h.as_member(decode_wid + 1, role::decode);
  b.handle = handle_of(other);
  m.members.push_back(b);
  h.self->send(h.router, m);
  auto req = h.request(2, 10, 8);
  auto a = h.submit(req);
  h.self->send(h.router, first_token{req.id, 500, a.req.tr});
  h.expect_chunk(req.id, 0, {500});
  h.self->send(h.router, cancel_request{req.id});
  auto first = expect<cancel_request>(h.self, "cancel_request at the old decode worker");
  CHECK(first.id == a.req.id);
  // The sequence had left already: the old worker no longer knows it.
  h.self->send(h.router, attempt_moved{a.req.id, 1, decode_wid + 1, b.info.name, handle_of(other)});
  auto again = expect<cancel_request>(other, "cancel_request repeated at the new worker");
  CHECK(again.id == a.req.id);
  h.send_done(a.req.id, finish_reason::cancelled, 1);
  auto s = expect<request_summary>(h.self, "request_summary");
  CHECK(s.reason == finish_reason::cancelled);
  CHECK(s.decode_worker == b.info.name);
}

TEST_CASE("router: live moves do not use up the recompute migration limit",
          "[router_actor][live_migration]") {
  router_config cfg;
  cfg.migration_limit = 1;
  router_harness h{cfg};
  caf::scoped_actor other{h.ts.sys};
  membership m;
  m.members.push_back(h.as_member(router_wid, role::router));
  m.members.push_back(h.as_member(decode_wid, role::decode));
  auto b = h.as_member(decode_wid + 1, role::decode);
  b.handle = handle_of(other);
  m.members.push_back(b);
  h.self->send(h.router, m);
  auto req = h.request(3, 10, 8);
  auto a = h.submit(req);
  h.self->send(h.router, first_token{req.id, 500, a.req.tr});
  h.expect_chunk(req.id, 0, {500});
  h.self->send(h.router, attempt_moved{a.req.id, 1, decode_wid + 1, b.info.name, handle_of(other)});
  h.self->send(h.router, attempt_moved{a.req.id, 2, decode_wid, "decode-10", handle_of(h.self)});
  // The engine fails on the worker it is on now: one recompute move is still allowed.
  request_done d;
  d.id = a.req.id;
  d.reason = finish_reason::error;
  d.error = {errc::internal, "engine failed"};
  h.self->send(h.router, d);
  auto next = expect<decode_assignment>(other, "the re-submitted attempt on the other worker");
  CHECK(next.req.prompt.size() == 11);  // prompt + the delivered token
  h.self->send(h.router, cancel_request{req.id});
  (void)expect<cancel_request>(other, "cancel_request");
  request_done c;
  c.id = next.req.id;
  c.reason = finish_reason::cancelled;
  h.self->send(h.router, c);
  auto s = expect<request_summary>(h.self, "request_summary");
  CHECK(s.migrations == 3);
  CHECK(s.migration_reasons ==
        std::vector<std::string>{"live_migration", "live_migration", "worker_failed"});
}

TEST_CASE("router: draining members get no new work, their requests go on", "[router_actor]") {
  router_harness h;
  h.send_membership();
  auto first = h.request(1);
  auto a = h.submit(first);
  CHECK(a.prefill == handle_of(h.self));  // remote prefill while the prefill worker takes work

  // The prefill worker drains: a new request is prefilled on its decode worker instead.
  membership m;
  m.members.push_back(h.as_member(router_wid, role::router));
  m.members.push_back(h.as_member(decode_wid, role::decode));
  m.members.push_back(h.as_member(prefill_wid, role::prefill));
  m.members.back().draining = true;
  h.self->send(h.router, m);
  auto local = h.submit(h.request(2));
  CHECK_FALSE(local.prefill);

  // Now the decode worker drains too: nothing is moved or cancelled (request 1 streams on)…
  m.members[1].draining = true;
  h.self->send(h.router, m);
  h.self->send(h.router, first_token{first.id, 500, a.req.tr});
  h.expect_chunk(first.id, 0, {500});
  h.send_tokens(first.id, {{1, 501}});
  h.expect_chunk(first.id, 1, {501});
  h.send_done(first.id, finish_reason::length, 2);
  auto s = expect<request_summary>(h.self, "request_summary");
  CHECK(s.reason == finish_reason::length);
  CHECK(s.migrations == 0);
  // …and a new request finds no decode worker that takes work.
  h.self->send(h.router, h.request(3));
  auto e = h.expect_error(3, errc::no_workers);
  CHECK(e.error.message.find("no decode worker takes new requests (1 draining") !=
        std::string::npos);
  auto ws = h.status_and_quiet("after the drain");
  CHECK(ws.detail.find("1 decode, 1 prefill workers (2 draining)") != std::string::npos);
}

TEST_CASE("router: latency samples are not kept until a planner asks for them",
          "[router_actor][planner]") {
  router_harness h;
  h.send_membership();
  auto req = h.request(1, 10, 8);
  auto a = h.submit(req);
  auto ask = [&] {
    latency_samples l;
    h.self->request(h.router, caf::infinite, latency_atom::value)
        .receive([&](latency_samples& x) { l = std::move(x); },
                 [&](caf::error& e) { FAIL("latency query: " << caf::to_string(e)); });
    return l;
  };
  h.self->send(h.router, first_token{req.id, 500, a.req.tr});
  h.expect_chunk(req.id, 0, {500});
  h.send_tokens(req.id, {{1, 501}});
  h.expect_chunk(req.id, 1, {501});
  // Nobody asked yet: nothing was kept (a cluster without a planner holds no samples).
  auto l = ask();
  CHECK(l.ttft_ms.empty());
  CHECK(l.itl_ms.empty());
  // From the first query on, they are.
  h.send_tokens(req.id, {{2, 502}});
  h.expect_chunk(req.id, 2, {502});
  l = ask();
  CHECK(l.itl_ms.size() == 1);
  h.send_done(req.id, finish_reason::length, 3);
  (void)expect<request_summary>(h.self, "request_summary");
}

TEST_CASE("router: latency samples are kept as tokens are released, for the planner",
          "[router_actor][planner]") {
  router_harness h;
  h.send_membership();
  auto req = h.request(1, 10, 8);
  auto a = h.submit(req);
  auto ask = [&] {
    latency_samples l;
    h.self->request(h.router, caf::infinite, latency_atom::value)
        .receive([&](latency_samples& x) { l = std::move(x); },
                 [&](caf::error& e) { FAIL("latency query: " << caf::to_string(e)); });
    return l;
  };
  CHECK(ask().ttft_ms.empty());  // nothing released yet
  h.self->send(h.router, first_token{req.id, 500, a.req.tr});
  h.expect_chunk(req.id, 0, {500});
  h.send_tokens(req.id, {{1, 501}});
  h.expect_chunk(req.id, 1, {501});
  h.send_tokens(req.id, {{2, 502}});
  h.expect_chunk(req.id, 2, {502});
  // The request is still running: its TTFT and both gaps are there already.
  auto l = ask();
  CHECK(l.ttft_ms.size() == 1);
  CHECK(l.itl_ms.size() == 2);
  for (double x : l.ttft_ms)
    CHECK(x >= 0);
  // Handed over once: the next query sees only what came since.
  h.send_tokens(req.id, {{3, 503}});
  h.expect_chunk(req.id, 3, {503});
  l = ask();
  CHECK(l.ttft_ms.empty());
  CHECK(l.itl_ms.size() == 1);
  // The request's end adds nothing more.
  h.send_done(req.id, finish_reason::length, 4);
  (void)expect<request_summary>(h.self, "request_summary");
  l = ask();
  CHECK(l.ttft_ms.empty());
  CHECK(l.itl_ms.empty());
}

TEST_CASE("router: adaptive admission refuses by estimated wait, with a retry hint",
          "[router_actor]") {
  router_config cfg;
  cfg.admission.max_queue_ns = 1'000'000;  // 1 ms: any queue is too long
  cfg.admission.window_ns = 10'000'000'000;
  cfg.admission.min_waiting = 1;
  router_harness h{cfg};
  h.send_membership();
  // Four requests wait at least 250 ms before they start: the rate is at most 16 per s.
  for (request_id id = 1; id <= 4; ++id)
    h.submit(h.request(id));
  std::this_thread::sleep_for(std::chrono::milliseconds(250));
  for (request_id id = 1; id <= 4; ++id) {
    h.send_tokens(id, {{0, 700}});
    h.expect_chunk(id, 0, {700});
  }
  // Nothing waits: admitted. One waits: a second would wait >= 1/16 s, refused.
  h.submit(h.request(5));
  h.self->send(h.router, h.request(6));
  auto s = h.expect_error(6, errc::overloaded);
  CHECK_THAT(s.error.message, Catch::Contains("would wait"));
  CHECK(s.retry_after_ms >= 1000);  // at least the configured minimum
  CHECK(s.retry_after_ms <= 60'000);
  // Request 5 starts: the queue is empty again, a new request gets in.
  h.send_tokens(5, {{0, 701}});
  h.expect_chunk(5, 0, {701});
  h.submit(h.request(7));
  auto ws = h.status_and_quiet("after the refusal");
  CHECK_THAT(ws.detail, Catch::Contains("1 rejected (overloaded; 1 by estimated wait"));
}

TEST_CASE("router: a TTFT objective refuses by unloaded start plus wait, and says so",
          "[router_actor]") {
  router_config cfg;
  cfg.admission.max_queue_ns = 0;           // the queue target off: only the objective
  cfg.admission.ttft_slo_ns = 100'000'000;  // 100 ms
  cfg.admission.window_ns = 10'000'000'000;
  cfg.admission.min_waiting = 1;
  router_harness h{cfg};
  h.send_membership();
  // Four requests, one at a time, each 60 ms or more from admission to start with nothing
  // in front: unloaded start >= 60 ms, rate <= 4 per 0.24 s of busy time.
  for (request_id id = 1; id <= 4; ++id) {
    h.submit(h.request(id));
    std::this_thread::sleep_for(std::chrono::milliseconds(60));
    h.send_tokens(id, {{0, 700}});
    h.expect_chunk(id, 0, {700});
  }
  // Nothing waits: admitted. One waits: a second would start after >= 60 + 60 ms, more
  // than the objective (the queue alone, 60 ms, would not be refused by max_queue).
  h.submit(h.request(5));
  h.self->send(h.router, h.request(6));
  auto s = h.expect_error(6, errc::overloaded);
  CHECK_THAT(s.error.message, Catch::Contains("TTFT objective 100 ms"));
  CHECK(s.retry_after_ms >= 1000);
  h.send_tokens(5, {{0, 701}});
  h.expect_chunk(5, 0, {701});
  auto ws = h.status_and_quiet("after the refusal");
  CHECK_THAT(ws.detail, Catch::Contains("1 rejected (overloaded; 1 by estimated wait"));
  CHECK_THAT(ws.detail, Catch::Contains("unloaded start"));
}

TEST_CASE("router: a local prefill fetches the prefix a busier worker holds",
          "[router_actor][kv_fetch]") {
  router_config cfg;
  cfg.local_prefill_threshold = 1000;     // every prompt prefills on its decode worker
  cfg.default_speed.tokens_per_s = 1000;  // 1 ms per token
  cfg.cost.load_s_per_request = 0.02;     // 20 ms per active request
  cfg.cost.kv_bytes_per_block = 1000;
  cfg.cost.kv_bytes_per_s = 1e9;  // 1 µs a block
  router_harness h{cfg};
  send_kv_membership(h);
  // Decode worker 11 holds both full blocks of the 10-token prompt and gets it.
  auto req = h.request(1, 10);
  h.self->send(h.router, req);
  answer_overlap(h, req.prompt, {{decode2_wid, 2}});
  auto a = expect<decode_assignment>(h.self, "decode_assignment 1");
  CHECK_FALSE(a.prefill);
  CHECK_FALSE(a.fetch.from);  // nobody holds more than it does
  // Now it is busy (20 ms of load, 2 queued tokens): worker 10 serves the same prompt and
  // pulls blocks 0 and 1 from worker 11 (8 ms of prefill saved for 0.5 ms + 2 µs).
  auto req2 = h.request(2, 10);
  h.self->send(h.router, req2);
  answer_overlap(h, req2.prompt, {{decode2_wid, 2}});
  auto b = expect<decode_assignment>(h.self, "decode_assignment 2");
  CHECK_FALSE(b.prefill);
  CHECK(b.fetch.from == handle_of(h.self));
  CHECK(b.fetch.source == "decode-11");
  CHECK(b.fetch.end_block == 2);
  h.self->send(h.router, first_token{2, 500, trace{}});
  h.expect_chunk(2, 0, {500});
  h.send_done(2, finish_reason::length, 1);
  auto s = expect<request_summary>(h.self, "request_summary 2");
  REQUIRE(s.routing.size() == 4);  // two decode workers, the prefill worker, the fetch
  CHECK(s.routing[0].worker == "decode-10");
  CHECK(s.routing[0].chosen);
  const auto& f = s.routing[3];
  CHECK(f.worker == "fetch:decode-11");
  CHECK(f.chosen);
  CHECK(f.cached_tokens == 8);
  CHECK(f.prefill_ms == Approx(8));
  CHECK(f.transfer_ms == Approx(0.502));
  CHECK(f.total_ms == Approx(8 - 0.502));
  auto ws = query_status(h.self, h.router);
  CHECK_THAT(ws.detail, Catch::Contains("1 told to fetch a prefix"));
}

TEST_CASE("router: a remote prefill is told to fetch the prefix its decode worker holds",
          "[router_actor][kv_fetch]") {
  router_config cfg;                      // local_prefill_threshold 0: every prompt is remote
  cfg.default_speed.tokens_per_s = 1000;  // 1 ms per token
  cfg.cost.kv_bytes_per_block = 1000;
  cfg.cost.kv_bytes_per_s = 1e9;  // 1 µs a block
  router_harness h{cfg};
  // One decode and one prefill worker: no choice of worker, but with fetch on the kv-store
  // is asked all the same (the prefill worker may pull what the decode worker holds).
  membership m;
  m.members.push_back(h.as_member(router_wid, role::router));
  m.members.push_back(h.as_member(decode_wid, role::decode));
  m.members.push_back(h.as_member(prefill_wid, role::prefill));
  m.members.push_back(h.as_member(kv_wid, role::kv_store));
  h.self->send(h.router, m);
  auto req = h.request(1, 10);
  h.self->send(h.router, req);
  answer_overlap(h, req.prompt, {{decode_wid, 2}});
  auto a = expect<decode_assignment>(h.self, "decode_assignment");
  CHECK(a.prefill == handle_of(h.self));  // the prefill worker computes...
  CHECK(a.fetch.from == handle_of(h.self));
  CHECK(a.fetch.source == "decode-10");  // ...after pulling blocks 0 and 1 from the decode worker
  CHECK(a.fetch.end_block == 2);
  h.self->send(h.router, first_token{1, 500, trace{}, {}});
  h.expect_chunk(1, 0, {500});
  h.send_done(1, finish_reason::length, 1);
  auto s = expect<request_summary>(h.self, "request_summary");
  REQUIRE(s.routing.size() == 3);  // the decode worker, the prefill worker, the fetch
  CHECK(s.routing[1].prefill);
  CHECK(s.routing[1].chosen);
  CHECK(s.routing[1].prefill_ms == Approx(2));       // 2 tokens left to compute
  CHECK(s.routing[1].transfer_ms == Approx(0.502));  // the fetch
  const auto& f = s.routing[2];
  CHECK(f.worker == "fetch:decode-10");
  CHECK_FALSE(f.prefill);
  CHECK(f.cached_tokens == 8);
  CHECK(f.prefill_ms == Approx(8));
  CHECK(f.total_ms == Approx(8 - 0.502));
  CHECK_THAT(query_status(h.self, h.router).detail, Catch::Contains("1 told to fetch a prefix"));
}

TEST_CASE("router: a segmented prompt asks for its chunks in the same query and follows them",
          "[router_actor][chunks]") {
  router_config cfg;
  cfg.local_prefill_threshold = 8;
  cfg.recompute_ratio = 0;  // a chunk hit is all reuse
  router_harness h{cfg};
  send_kv_membership(h);
  // 12 tokens as three segments of 4 (blocks of 4). Decode worker 11 holds the chunks of
  // segments 1 and 2: 4 tokens left to compute, below the threshold, so it prefills locally.
  auto req = h.request(1, 12);
  req.options.segment_ends = {4, 8, 12};
  h.self->send(h.router, req);
  bool asked = false;
  h.self->receive(
      [&](const overlap_query& q) -> overlap_reply {
        asked = true;
        CHECK(q.hashes == block_hashes(req.prompt, 4));
        const std::span<const token_id> p(req.prompt);
        REQUIRE(q.chunks.size() == 3);
        for (size_t i = 0; i < 3; ++i)
          CHECK(q.chunks[i] == chunk_block_hashes(p.subspan(4 * i, 4), 4));
        overlap_reply r;
        r.workers.push_back({decode2_wid, 0, 0, 0, {1, 2}});
        return r;
      },
      caf::after(receive_timeout) >> [] {});
  REQUIRE(asked);
  auto a = expect<decode_assignment>(h.self, "decode_assignment");
  CHECK(a.req.id == 1);
  CHECK_FALSE(a.prefill);
  // Ratio 1 (the request's): chunks save nothing, so none are asked about, and the 12
  // tokens go to the prefill worker.
  auto req2 = h.request(2, 12);
  req2.prompt[0] = 999;
  req2.options.segment_ends = {4, 8, 12};
  req2.options.recompute_ratio = 1;
  h.self->send(h.router, req2);
  asked = false;
  h.self->receive(
      [&](const overlap_query& q) -> overlap_reply {
        asked = true;
        CHECK(q.chunks.empty());
        return {};
      },
      caf::after(receive_timeout) >> [] {});
  REQUIRE(asked);
  auto b = expect<decode_assignment>(h.self, "decode_assignment");
  CHECK(b.prefill == handle_of(h.self));
  auto ws = h.status_and_quiet("after two requests");
  CHECK_THAT(ws.detail, Catch::Contains("1 to cached chunks"));
}
