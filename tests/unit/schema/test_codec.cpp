#include <catch2/catch.hpp>

#include <capnp/message.h>

#include "frontend/client.hpp"
#include "schema/codec.hpp"

using namespace tokenmill;

TEST_CASE("generate request round-trips through the codec", "[codec]") {
  for (bool text : {true, false}) {
    generate_params p;
    p.has_text = text;
    p.text = "héllo";
    p.token_ids = {-3, 0, 1LL << 40};
    p.max_tokens = -7;  // the codec carries bad values so validation can report them exactly
    p.stop_ids = {2, 99};
    p.sampling.temperature = 0.5f;
    p.sampling.top_p = 0.25f;
    p.sampling.top_k = 40;
    p.sampling.min_p = 0.05f;
    p.sampling.seed = 1234567890123ULL;
    p.sampling.presence_penalty = -1.5f;
    p.sampling.frequency_penalty = 0.75f;
    p.sampling.repetition_penalty = 1.25f;
    p.logit_bias = {{-4, 100.0}, {1LL << 40, -2.5}};  // bad ids travel for validation
    p.top_logprobs = 7;
    p.sampling.grammar = grammar_kind::json_schema;
    p.sampling.grammar_source = R"({"type":"integer"})";
    p.stop_strings = {"\n\n", "END"};
    p.ignore_eos = true;
    p.add_bos = false;
    p.client_sent_ns = 42;
    capnp::MallocMessageBuilder msg;
    auto b = msg.initRoot<rpc::GenerateRequest>();
    codec::encode(p, b);
    auto q = codec::decode(b.asReader());
    CHECK(q.has_text == text);
    if (text)
      CHECK(q.text == p.text);
    else
      CHECK(q.token_ids == p.token_ids);
    CHECK(q.max_tokens == -7);
    CHECK(q.stop_ids == p.stop_ids);
    CHECK(q.sampling.temperature == 0.5f);
    CHECK(q.sampling.top_p == 0.25f);
    CHECK(q.sampling.seed == p.sampling.seed);
    CHECK(q.sampling.top_k == 40);
    CHECK(q.sampling.min_p == 0.05f);
    CHECK(q.sampling.presence_penalty == -1.5f);
    CHECK(q.sampling.frequency_penalty == 0.75f);
    CHECK(q.sampling.repetition_penalty == 1.25f);
    CHECK(q.logit_bias == p.logit_bias);
    CHECK(q.top_logprobs == 7);
    CHECK(q.sampling.grammar == grammar_kind::json_schema);
    CHECK(q.sampling.grammar_source == p.sampling.grammar_source);
    CHECK(q.unknown_grammar_kind.empty());
    CHECK(q.stop_strings == p.stop_strings);
    CHECK(q.ignore_eos);
    CHECK_FALSE(q.add_bos);
    CHECK(q.client_sent_ns == 42);
  }
}

TEST_CASE("a prompt given as segments round-trips, bad values included", "[codec]") {
  generate_params p;
  p.segments = {prompt_segment{true, "doc", {}}, prompt_segment{false, {}, {5, -1, 1LL << 40}}};
  p.recompute_ratio = 1.5;  // carried as sent: validation refuses it, naming it
  capnp::MallocMessageBuilder msg;
  auto b = msg.initRoot<rpc::GenerateRequest>();
  codec::encode(p, b);
  auto q = codec::decode(b.asReader());
  REQUIRE(q.segments.size() == 2);
  CHECK(q.segments[0].has_text);
  CHECK(q.segments[0].text == "doc");
  CHECK_FALSE(q.segments[1].has_text);
  CHECK(q.segments[1].token_ids == p.segments[1].token_ids);
  REQUIRE(q.recompute_ratio);
  CHECK(*q.recompute_ratio == 1.5);
  CHECK(q.segments_field == "segments");
  // Without segments or a ratio: none, the server's default.
  capnp::MallocMessageBuilder plain;
  auto r = codec::decode(plain.initRoot<rpc::GenerateRequest>().asReader());
  CHECK(r.segments.empty());
  CHECK_FALSE(r.recompute_ratio);
}

TEST_CASE("schema defaults are the documented ones", "[codec]") {
  capnp::MallocMessageBuilder msg;
  auto b = msg.initRoot<rpc::GenerateRequest>();
  auto p = codec::decode(b.asReader());
  CHECK(p.max_tokens == 16);
  CHECK(p.add_bos);
  CHECK(p.sampling.top_p == 1.0f);
  CHECK(p.sampling.temperature == 0.0f);
  CHECK(p.sampling.top_k == 0);
  CHECK(p.sampling.min_p == 0.0f);
  CHECK(p.stop_strings.empty());
  // An older client's request: no penalties, no bias, no logprobs.
  CHECK(p.sampling.presence_penalty == 0.0f);
  CHECK(p.sampling.frequency_penalty == 0.0f);
  CHECK(p.sampling.repetition_penalty == 1.0f);
  CHECK(p.logit_bias.empty());
  CHECK(p.top_logprobs == -1);
  CHECK(p.sampling.grammar == grammar_kind::none);
  CHECK(p.sampling.grammar_source.empty());
}

TEST_CASE("summary round-trips, unknown stage names are skipped", "[codec]") {
  generation_summary s;
  s.id = 77;
  s.reason = finish_reason::stop;
  s.error_code = errc::overloaded;
  s.error = "busy";
  s.prompt_tokens = 5;
  s.completion_tokens = 9;
  s.ttft_ms = 1.5;
  s.itl_mean_ms = 2;
  s.itl_p50_ms = 3;
  s.itl_p99_ms = 4;
  s.stages = {{"routing", 0.25}, {"prefill_compute", 1.25}};
  s.hops = {hop{stage::arrived, 0, 100}, hop{stage::prefill_done, 2, 300}};
  capnp::MallocMessageBuilder msg;
  auto b = msg.initRoot<rpc::Summary>();
  codec::encode(s, b);
  auto hops = b.getHops();
  auto r = codec::decode(b.asReader());
  CHECK(r.id == 77);
  CHECK(r.reason == finish_reason::stop);
  CHECK(r.error_code == errc::overloaded);
  CHECK(r.error == "busy");
  CHECK(r.completion_tokens == 9);
  CHECK(r.itl_p99_ms == 4);
  REQUIRE(r.stages.size() == 2);
  CHECK(r.stages[1].name == "prefill_compute");
  REQUIRE(r.hops.size() == 2);
  CHECK(r.hops[1].where == stage::prefill_done);
  CHECK(r.hops[1].node == 2);
  // A newer server's stage this client does not know is dropped, not misread.
  hops[0].setStage("some_future_stage");
  auto r2 = codec::decode(b.asReader());
  REQUIRE(r2.hops.size() == 1);
  CHECK(r2.hops[0].where == stage::prefill_done);
  // A successful summary has an empty error code.
  s.error_code = errc::ok;
  codec::encode(s, b);
  CHECK(codec::decode(b.asReader()).error_code == errc::ok);
}

TEST_CASE("summary workers, ITL spikes and decode steps round-trip", "[codec]") {
  generation_summary s;
  s.prefill_worker = "p0.prefill0";
  s.decode_worker = "d0.decode0";
  s.itl_spikes.assign(static_cast<size_t>(itl_cause::count_), 0);
  s.itl_spikes[static_cast<size_t>(itl_cause::prefill)] = 3;
  s.itl_spikes[static_cast<size_t>(itl_cause::network)] = 1;
  s.steps = {step_record{0, 100, 0, 0, 0, 0, itl_cause::none},
             step_record{1, 200, 150, 190, 8, 512, itl_cause::prefill}};
  capnp::MallocMessageBuilder msg;
  auto b = msg.initRoot<rpc::Summary>();
  codec::encode(s, b);
  CHECK(b.getItlSpikes().size() == 2);  // only causes that happened travel
  auto r = codec::decode(b.asReader());
  CHECK(r.prefill_worker == "p0.prefill0");
  CHECK(r.decode_worker == "d0.decode0");
  CHECK(r.itl_spikes == s.itl_spikes);
  REQUIRE(r.steps.size() == 2);
  CHECK(r.steps[1].index == 1);
  CHECK(r.steps[1].released_ns == 200);
  CHECK(r.steps[1].step_start_ns == 150);
  CHECK(r.steps[1].step_end_ns == 190);
  CHECK(r.steps[1].batch == 8);
  CHECK(r.steps[1].prefill_tokens == 512);
  CHECK(r.steps[1].cause == itl_cause::prefill);
  CHECK(r.steps[0].cause == itl_cause::none);
  // An older server sends none of it: empty, not zero-filled.
  capnp::MallocMessageBuilder old;
  auto ob = old.initRoot<rpc::Summary>();
  auto o = codec::decode(ob.asReader());
  CHECK(o.itl_spikes.empty());
  CHECK(o.steps.empty());
}

TEST_CASE("summary migrations round-trip, an older server's read as none", "[codec]") {
  generation_summary s;
  s.migrations = 2;
  s.migration_reasons = {"worker_lost", "stalled"};
  capnp::MallocMessageBuilder msg;
  auto b = msg.initRoot<rpc::Summary>();
  codec::encode(s, b);
  auto r = codec::decode(b.asReader());
  CHECK(r.migrations == 2);
  CHECK(r.migration_reasons == s.migration_reasons);
  capnp::MallocMessageBuilder old;
  auto o = codec::decode(old.initRoot<rpc::Summary>().asReader());
  CHECK(o.migrations == 0);
  CHECK(o.migration_reasons.empty());
}

TEST_CASE("summary retry hint round-trips, an older server's read as none", "[codec]") {
  generation_summary s;
  s.error_code = errc::overloaded;
  s.retry_after_ms = 2500;
  capnp::MallocMessageBuilder msg;
  auto b = msg.initRoot<rpc::Summary>();
  codec::encode(s, b);
  CHECK(codec::decode(b.asReader()).retry_after_ms == 2500);
  capnp::MallocMessageBuilder old;
  CHECK(codec::decode(old.initRoot<rpc::Summary>().asReader()).retry_after_ms == 0);
}

TEST_CASE("cluster status and chunks round-trip", "[codec]") {
  cluster_status cs;
  cs.cluster = "c";
  cs.ready = true;
  worker_status w;
  w.id = 3;
  w.kind = role::prefill;
  w.name = "p0";
  w.node = "n";
  w.up = false;
  w.queued = 1;
  w.running = 2;
  w.kv_used = 3;
  w.kv_total = 4;
  w.completed = 5;
  w.tokens_out = 6;
  w.detail = "d";
  w.chunk_lookup_tokens = 100;
  w.chunk_hit_tokens = 60;
  w.chunk_recomputed_tokens = 9;
  w.tiers = {kv_tier_status{"host", 1, 2, 3, 4, 5, 6}, kv_tier_status{"disk", 7, 8, 9, 10, 11, 12}};
  w.fetch = kv_fetch_status{21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31};
  cs.workers = {w};
  cs.nodes = {node_status{"head", 0, true, 0, 0}, node_status{"far", 2, false, -1234567, 89000, 3}};
  cs.planner.enabled = true;
  cs.planner.decisions = 7;
  cs.planner.flips_to_prefill = 1;
  cs.planner.flips_to_decode = 2;
  cs.planner.changes_failed = 3;
  cs.planner.drains = 4;
  cs.planner.last_decision = "keep: x";
  cs.planner.events = {planner_event{11, "changed", "p0", role::prefill, role::decode, 99, "y"}};
  capnp::MallocMessageBuilder msg;
  auto b = msg.initRoot<rpc::ClusterStatus>();
  codec::encode(cs, b);
  auto r = codec::decode(b.asReader());
  REQUIRE(r.workers.size() == 1);
  CHECK(r.ready);
  CHECK(r.workers[0].kind == role::prefill);
  CHECK_FALSE(r.workers[0].up);
  CHECK(r.workers[0].kv_total == 4);
  CHECK(r.workers[0].detail == "d");
  CHECK(r.workers[0].chunk_lookup_tokens == 100);
  CHECK(r.workers[0].chunk_hit_tokens == 60);
  CHECK(r.workers[0].chunk_recomputed_tokens == 9);
  REQUIRE(r.workers[0].tiers.size() == 2);
  const auto& t = r.workers[0].tiers[1];
  CHECK(t.tier == "disk");
  CHECK(t.hits == 7);
  CHECK(t.bytes_in == 8);
  CHECK(t.bytes_out == 9);
  CHECK(t.evictions == 10);
  CHECK(t.used == 11);
  CHECK(t.capacity == 12);
  CHECK(r.workers[0].tiers[0].tier == "host");
  const auto& f = r.workers[0].fetch;
  CHECK(f.started == 21);
  CHECK(f.completed == 22);
  CHECK(f.failed == 23);
  CHECK(f.blocks == 24);
  CHECK(f.bytes == 25);
  CHECK(f.missing == 26);
  CHECK(f.time_ns == 27);
  CHECK(f.served == 28);
  CHECK(f.served_blocks == 29);
  CHECK(f.served_bytes == 30);
  CHECK(f.serve_failures == 31);
  REQUIRE(r.nodes.size() == 2);
  CHECK(r.nodes[1].name == "far");
  CHECK(r.nodes[1].index == 2);
  CHECK_FALSE(r.nodes[1].up);
  CHECK(r.nodes[1].clock_offset_ns == -1234567);
  CHECK(r.nodes[1].clock_rtt_ns == 89000);
  CHECK(r.nodes[0].restarts == 0);
  CHECK(r.nodes[1].restarts == 3);
  CHECK(r.planner.enabled);
  CHECK(r.planner.decisions == 7);
  CHECK(r.planner.flips_to_prefill == 1);
  CHECK(r.planner.flips_to_decode == 2);
  CHECK(r.planner.changes_failed == 3);
  CHECK(r.planner.drains == 4);
  CHECK(r.planner.last_decision == "keep: x");
  REQUIRE(r.planner.events.size() == 1);
  CHECK(r.planner.events[0].t_ns == 11);
  CHECK(r.planner.events[0].kind == "changed");
  CHECK(r.planner.events[0].worker == "p0");
  CHECK(r.planner.events[0].from == role::prefill);
  CHECK(r.planner.events[0].to == role::decode);
  CHECK(r.planner.events[0].took_ns == 99);
  CHECK(r.planner.events[0].why == "y");

  codec::chunk c{4, {10, 11}, "ab", 99};
  capnp::MallocMessageBuilder m2;
  auto cb = m2.initRoot<rpc::TokenChunk>();
  codec::encode(c, cb);
  auto rc = codec::decode(cb.asReader());
  CHECK(rc.first_index == 4);
  CHECK(rc.ids == std::vector<token_id>{10, 11});
  CHECK(rc.text == "ab");
  CHECK(rc.sent_ns == 99);
}

TEST_CASE("a drain report round-trips", "[codec]") {
  drain_summary s;
  s.node = "n1";
  worker_drain a;
  a.id = 7;
  a.from = role::decode;
  a.to = role::decode;
  a.drain_only = true;
  a.drain_ns = 1234;
  a.total_ns = 5678;
  a.migrated = 2;
  a.finished = 3;
  worker_drain b;
  b.id = 8;
  b.from = role::prefill;
  b.to = role::decode;
  b.error = {errc::timeout, "still held 1 job"};
  s.workers = {a, b};
  capnp::MallocMessageBuilder msg;
  auto builder = msg.initRoot<rpc::DrainReport>();
  codec::encode(s, builder);
  auto r = codec::decode(builder.asReader());
  CHECK(r.node == "n1");
  CHECK_FALSE(r.error);
  REQUIRE(r.workers.size() == 2);
  CHECK(r.workers[0].id == 7);
  CHECK(r.workers[0].from == role::decode);
  CHECK(r.workers[0].drain_only);
  CHECK(r.workers[0].drain_ns == 1234);
  CHECK(r.workers[0].total_ns == 5678);
  CHECK(r.workers[0].migrated == 2);
  CHECK(r.workers[0].finished == 3);
  CHECK_FALSE(r.workers[0].error);
  CHECK(r.workers[1].from == role::prefill);
  CHECK(r.workers[1].to == role::decode);
  CHECK(r.workers[1].error.code == errc::timeout);
  CHECK(r.workers[1].error.message == "still held 1 job");

  drain_summary bad;
  bad.node = "nope";
  bad.error = {errc::invalid_request, "no node named 'nope'"};
  capnp::MallocMessageBuilder m2;
  auto b2 = m2.initRoot<rpc::DrainReport>();
  codec::encode(bad, b2);
  auto rb = codec::decode(b2.asReader());
  CHECK(rb.error.code == errc::invalid_request);
  CHECK(rb.error.message == "no node named 'nope'");
  CHECK(rb.workers.empty());
}

TEST_CASE("endpoints parse or say what is wrong", "[client]") {
  auto ok = parse_endpoint("127.0.0.1:7700");
  REQUIRE(ok.ok());
  CHECK(ok->first == "127.0.0.1");
  CHECK(ok->second == 7700);
  CHECK(parse_endpoint("localhost:1")->second == 1);
  for (const char* bad :
       {"", "7700", "host:", ":7700", "host:0", "host:65536", "host:77x", "host:-1"}) {
    auto r = parse_endpoint(bad);
    INFO(bad);
    CHECK_FALSE(r.ok());
  }
}

TEST_CASE("token chunk logprobs round-trip, an older server's chunk has none", "[codec]") {
  codec::chunk c{0, {10, 11}, "ab", 5};
  c.logprobs = {{-0.5f, {{10, -0.5f}, {12, -1.0f}}}, {-2.0f, {}}};
  capnp::MallocMessageBuilder msg;
  auto b = msg.initRoot<rpc::TokenChunk>();
  codec::encode(c, b);
  auto d = codec::decode(b.asReader());
  REQUIRE(d.logprobs.size() == 2);
  CHECK(d.logprobs[0].logprob == -0.5f);
  REQUIRE(d.logprobs[0].top.size() == 2);
  CHECK(d.logprobs[0].top[1].token == 12);
  CHECK(d.logprobs[0].top[1].logprob == -1.0f);
  CHECK(d.logprobs[1].logprob == -2.0f);
  CHECK(d.logprobs[1].top.empty());
  capnp::MallocMessageBuilder plain;
  auto pb = plain.initRoot<rpc::TokenChunk>();
  codec::encode(codec::chunk{0, {1}, "x", 0}, pb);
  CHECK(codec::decode(pb.asReader()).logprobs.empty());
}

TEST_CASE("an unknown grammar kind is carried for validation to refuse", "[codec]") {
  capnp::MallocMessageBuilder msg;
  auto b = msg.initRoot<rpc::GenerateRequest>();
  b.initSampling().setGrammarKind("ebnf");
  auto p = codec::decode(b.asReader());
  CHECK(p.sampling.grammar == grammar_kind::none);
  CHECK(p.unknown_grammar_kind == "ebnf");
}
