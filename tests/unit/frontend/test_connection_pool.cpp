#include <catch2/catch.hpp>

#include <atomic>
#include <memory>
#include <mutex>
#include <vector>

#include "common/clock.hpp"
#include "frontend/connection_pool.hpp"

using namespace tokenmill;
namespace wl = tokenmill::workload;

namespace {

/// A connection that answers at once: ttft_ms is the prompt length, output_tokens the
/// max_tokens; it breaks after `break_after` requests (0: never).
class echo_connection final : public wl::connection {
 public:
  echo_connection(int serial, uint32_t break_after) : serial_(serial), break_after_(break_after) {}
  wl::request_result run(const wl::bench_request& r, const sampling_params& s,
                         wl::client_record* rec) override {
    ++runs_;
    wl::request_result out;
    out.ok = true;
    out.ttft_ms = r.prompt_len;
    out.output_tokens = r.max_tokens;
    out.e2e_ms = serial_;  // which connection answered
    if (rec) {
      rec->outcome = "length";
      rec->completion_tokens = static_cast<uint32_t>(s.seed);
    }
    return out;
  }
  bool broken() const override { return break_after_ != 0 && runs_ >= break_after_; }

 private:
  int serial_;
  uint32_t break_after_;
  uint32_t runs_ = 0;
};

/// Counts connects; connect number k (from 1) fails when k is in `fail`.
struct factory_state {
  std::atomic<int> connects{0};
  std::vector<int> fail;
  uint32_t break_after = 0;
};

wl::connection_factory factory(std::shared_ptr<factory_state> st) {
  return [st]() -> result<std::unique_ptr<wl::connection>> {
    int k = ++st->connects;
    for (int f : st->fail)
      if (f == k) return error_info{errc::unavailable, "refused"};
    return std::unique_ptr<wl::connection>(std::make_unique<echo_connection>(k, st->break_after));
  };
}

std::vector<wl::bench_request> requests(size_t n) {
  std::vector<wl::bench_request> v(n);
  for (size_t i = 0; i < n; ++i) {
    v[i].prompt_len = static_cast<uint32_t>(10 + i);
    v[i].max_tokens = static_cast<uint32_t>(i + 1);
  }
  return v;
}

}  // namespace

TEST_CASE("connection_pool connects its workers before spawn_and_connect returns",
          "[connection_pool]") {
  auto st = std::make_shared<factory_state>();
  wl::connection_pool pool(factory(st), 3);
  pool.spawn_and_connect(2);
  CHECK(pool.size() == 2);
  CHECK(st->connects == 2);
  pool.spawn_and_connect(5);  // capped
  CHECK(pool.size() == 3);
  CHECK(st->connects == 3);
}

TEST_CASE("connection_pool runs every job on a kept connection", "[connection_pool]") {
  auto st = std::make_shared<factory_state>();
  auto reqs = requests(20);
  std::vector<wl::request_result> out(reqs.size());
  std::vector<wl::client_record> recs(reqs.size());
  wl::connection_pool pool(factory(st), 2);
  pool.spawn_and_connect(2);
  for (size_t i = 0; i < reqs.size(); ++i) {
    sampling_params s;
    s.seed = 100 + i;
    pool.submit({&reqs[i], &out[i], 0, s, &recs[i]}, false);
  }
  pool.drain();
  CHECK(pool.finished() == reqs.size());
  for (size_t i = 0; i < reqs.size(); ++i) {
    CHECK(out[i].ok);
    CHECK(out[i].ttft_ms == reqs[i].prompt_len);
    CHECK(out[i].output_tokens == reqs[i].max_tokens);
    CHECK(out[i].dispatch_delay_ms == 0);  // not scheduled
    CHECK(recs[i].completion_tokens == 100 + i);
  }
  CHECK(st->connects == 2);  // reused, never reconnected
  pool.stop();
}

TEST_CASE("connection_pool replaces a broken connection before the next job", "[connection_pool]") {
  auto st = std::make_shared<factory_state>();
  st->break_after = 1;  // every connection breaks after one request
  auto reqs = requests(4);
  std::vector<wl::request_result> out(reqs.size());
  wl::connection_pool pool(factory(st), 1);
  pool.spawn_and_connect(1);
  for (size_t i = 0; i < reqs.size(); ++i)
    pool.submit({&reqs[i], &out[i], 0, {}, nullptr}, false);
  pool.drain();
  for (size_t i = 0; i < reqs.size(); ++i) {
    CHECK(out[i].ok);
    CHECK(out[i].e2e_ms == static_cast<double>(i + 1));  // connection i + 1 answered
  }
  CHECK(st->connects == 4);
}

TEST_CASE("connection_pool fails a job whose connection cannot be made, then retries",
          "[connection_pool]") {
  auto st = std::make_shared<factory_state>();
  st->fail = {1, 2};  // the worker's connect fails, and so does the retry before its job
  auto reqs = requests(2);
  std::vector<wl::request_result> out(reqs.size());
  std::vector<wl::client_record> recs(reqs.size());
  wl::connection_pool pool(factory(st), 1);
  pool.spawn_and_connect(1);
  CHECK(st->connects == 1);
  pool.submit({&reqs[0], &out[0], 0, {}, &recs[0]}, false);
  pool.drain();
  CHECK_FALSE(out[0].ok);
  CHECK(out[0].error == "unavailable: refused");
  CHECK(recs[0].outcome == "unavailable");
  CHECK(recs[0].sent_ns > 0);
  CHECK(recs[0].end_ns == recs[0].sent_ns);
  pool.submit({&reqs[1], &out[1], 0, {}, &recs[1]}, false);
  pool.drain();
  CHECK(out[1].ok);  // connect 3 worked
  CHECK(st->connects == 3);
}

TEST_CASE("connection_pool says when a job waited and grows on demand", "[connection_pool]") {
  auto st = std::make_shared<factory_state>();
  auto reqs = requests(2);
  std::vector<wl::request_result> out(reqs.size());
  wl::connection_pool pool(factory(st), 2);
  SECTION("no worker yet: the job is late; with grow it starts one") {
    CHECK(pool.submit({&reqs[0], &out[0], 0, {}, nullptr}, true));
    CHECK(pool.size() == 1);
    pool.drain();
    CHECK(out[0].ok);
  }
  SECTION("without grow nothing starts until asked") {
    CHECK(pool.submit({&reqs[0], &out[0], 0, {}, nullptr}, false));
    CHECK(pool.size() == 0);
    pool.spawn_and_connect(1);
    pool.drain();
    CHECK(out[0].ok);
  }
  SECTION("an idle connected worker takes the job: not late") {
    pool.spawn_and_connect(1);
    CHECK_FALSE(pool.submit({&reqs[0], &out[0], 0, {}, nullptr}, false));
    pool.drain();
  }
}

TEST_CASE("connection_pool measures the dispatch delay of scheduled jobs", "[connection_pool]") {
  auto st = std::make_shared<factory_state>();
  auto reqs = requests(1);
  std::vector<wl::request_result> out(1);
  wl::connection_pool pool(factory(st), 1);
  pool.spawn_and_connect(1);
  const int64_t due = now_ns() - 5'000'000;  // due 5 ms ago
  pool.submit({&reqs[0], &out[0], due, {}, nullptr}, false);
  pool.drain();
  CHECK(out[0].dispatch_delay_ms >= 5.0);
}
