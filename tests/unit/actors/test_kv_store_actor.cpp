// kv-store tests: the scoped actor plays the supervisor (membership) and the workers and
// router (kv events, overlap queries).
#include "engine/block_hash.hpp"
#include "tests/unit/actors/actor_test_util.hpp"

using namespace tokenmill;
using namespace tokenmill::test;

namespace {

constexpr worker_id kv_wid = 5;

struct kv_store_harness {
  test_system ts;
  caf::scoped_actor self{ts.sys};
  actor_reaper reaper;
  caf::actor kv;
  std::vector<uint64_t> chain = block_hashes(prompt_of(16), 4);  ///< four blocks

  kv_store_harness() {
    kv = reaper.add(
        spawn_kv_store(ts.sys, make_info(kv_wid, role::kv_store, "kv"), handle_of(self)));
    auto reg = answer_registration(self);
    REQUIRE(reg.info.id == kv_wid);
    REQUIRE(reg.info.kind == role::kv_store);
    REQUIRE(reg.handle == kv);
    REQUIRE(chain.size() == 4);
  }

  std::vector<uint64_t> part(size_t begin, size_t end) const {
    return {chain.begin() + static_cast<ptrdiff_t>(begin),
            chain.begin() + static_cast<ptrdiff_t>(end)};
  }

  /// Overlap of `hashes` as (worker, blocks) pairs.
  std::vector<std::pair<worker_id, uint32_t>> overlap(std::vector<uint64_t> hashes) {
    std::optional<overlap_reply> got;
    std::string problem;
    self->request(kv, receive_timeout, overlap_query{std::move(hashes)})
        .receive([&](overlap_reply& r) { got = std::move(r); },
                 [&](caf::error& e) { problem = caf::to_string(e); });
    if (!got) FAIL("overlap query failed: " << problem);
    std::vector<std::pair<worker_id, uint32_t>> out;
    for (const auto& w : got->workers)
      out.emplace_back(w.worker, w.blocks);
    return out;
  }
};

using overlaps = std::vector<std::pair<worker_id, uint32_t>>;

}  // namespace

TEST_CASE("kv_store: stored and removed events drive prefix overlap", "[kv_store_actor]") {
  kv_store_harness h;
  CHECK(h.overlap(h.chain).empty());
  h.self->send(h.kv, kv_event{10, true, h.chain});
  h.self->send(h.kv, kv_event{11, true, h.part(0, 2)});
  h.self->send(h.kv, kv_event{12, true, h.part(1, 4)});  // no first block: no overlap
  CHECK(h.overlap(h.chain) == overlaps{{10, 4}, {11, 2}});
  CHECK(h.overlap(h.part(0, 1)) == overlaps{{10, 1}, {11, 1}});
  CHECK(h.overlap(h.part(1, 4)) == overlaps{{10, 3}, {11, 1}, {12, 3}});

  // A gap ends the leading run.
  h.self->send(h.kv, kv_event{10, false, h.part(1, 2)});
  CHECK(h.overlap(h.chain) == overlaps{{10, 1}, {11, 2}});
  h.self->send(h.kv, kv_event{11, false, h.part(0, 2)});
  CHECK(h.overlap(h.chain) == overlaps{{10, 1}});

  auto ws = query_status(h.self, h.kv);
  CHECK(ws.id == kv_wid);
  CHECK(ws.kind == role::kv_store);
  CHECK(ws.completed == 5);  // events
  CHECK_THAT(ws.detail, Catch::Contains("5 events"));
  expect_no_message(h.self, "after the queries");
}

TEST_CASE("kv_store: stored events are idempotent", "[kv_store_actor]") {
  kv_store_harness h;
  h.self->send(h.kv, kv_event{10, true, h.part(0, 2)});
  h.self->send(h.kv, kv_event{10, true, h.part(0, 2)});
  CHECK(h.overlap(h.chain) == overlaps{{10, 2}});
  h.self->send(h.kv, kv_event{10, false, h.part(0, 2)});
  CHECK(h.overlap(h.chain).empty());
}

TEST_CASE("kv_store: a worker reported down is forgotten", "[kv_store_actor]") {
  kv_store_harness h;
  h.self->send(h.kv, kv_event{10, true, h.chain});
  h.self->send(h.kv, kv_event{11, true, h.chain});
  membership m;
  m.members.push_back(member{make_info(10, role::decode, "decode-10"), caf::actor{}, true});
  m.members.push_back(member{make_info(11, role::decode, "decode-11"), caf::actor{}, false});
  h.self->send(h.kv, m);
  CHECK(h.overlap(h.chain) == overlaps{{10, 4}});
  expect_no_message(h.self, "after the query");
}

TEST_CASE("kv_store: blocks in a worker's second tier count, and say which level",
          "[kv_store_actor][kv_tier]") {
  kv_store_harness h;
  // Worker 10: blocks 0 and 2 in its pool, 1 in its host tier, 3 on disk.
  h.self->send(h.kv, kv_event{10, true, {h.chain[0], h.chain[2]}, 0});
  h.self->send(h.kv, kv_event{10, true, h.part(1, 2), 1});
  h.self->send(h.kv, kv_event{10, true, h.part(3, 4), 2});
  // An event for a level the store does not know changes nothing.
  h.self->send(h.kv, kv_event{11, true, h.chain, 7});
  std::optional<overlap_reply> got;
  h.self->request(h.kv, receive_timeout, overlap_query{h.chain})
      .receive([&](overlap_reply& r) { got = std::move(r); },
               [&](caf::error& e) { FAIL(caf::to_string(e)); });
  REQUIRE(got);
  REQUIRE(got->workers.size() == 1);
  CHECK(got->workers[0].worker == 10);
  CHECK(got->workers[0].blocks == 4);
  CHECK(got->workers[0].host_blocks == 1);
  CHECK(got->workers[0].disk_blocks == 1);
  // Onboarded: out of the host tier, into the pool.
  h.self->send(h.kv, kv_event{10, false, h.part(1, 2), 1});
  h.self->send(h.kv, kv_event{10, true, h.part(1, 2), 0});
  CHECK(h.overlap(h.chain) == overlaps{{10, 4}});
  auto ws = query_status(h.self, h.kv);
  CHECK_THAT(ws.detail, Catch::Contains("second tier: 0 host, 1 disk holder entries"));
  expect_no_message(h.self, "after the queries");
}

TEST_CASE("kv_store: one query answers prefix overlap and the chunks each worker holds",
          "[kv_store_actor][chunks]") {
  kv_store_harness h;
  // Two 6-token documents as chunks (blocks of 4: a full block and a partial one each).
  const auto doc_a = chunk_block_hashes(prompt_of(6), 4);
  auto tokens_b = prompt_of(6);
  tokens_b[0] = 999;
  const auto doc_b = chunk_block_hashes(tokens_b, 4);
  REQUIRE(doc_a.size() == 2);
  h.self->send(h.kv, kv_event{10, true, h.part(0, 2)});
  h.self->send(h.kv, kv_event{10, true, doc_b});
  h.self->send(h.kv, kv_event{11, true, doc_a});
  h.self->send(h.kv, kv_event{11, true, doc_b});
  h.self->send(h.kv, kv_event{12, true, {doc_a[0]}});  // half a chunk: no hit
  std::optional<overlap_reply> got;
  h.self->request(h.kv, receive_timeout, overlap_query{h.chain, {doc_a, doc_b}})
      .receive([&](overlap_reply& r) { got = std::move(r); }, [](caf::error&) {});
  REQUIRE(got);
  REQUIRE(got->workers.size() == 2);
  CHECK(got->workers[0].worker == 10);
  CHECK(got->workers[0].blocks == 2);
  CHECK(got->workers[0].chunks == std::vector<uint32_t>{1});
  CHECK(got->workers[1].worker == 11);
  CHECK(got->workers[1].blocks == 0);  // no leading block, yet a candidate for its chunks
  CHECK(got->workers[1].chunks == std::vector<uint32_t>{0, 1});
  expect_no_message(h.self, "after the query");
}
