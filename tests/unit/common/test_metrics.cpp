#include <catch2/catch.hpp>

#include "tests/skip.hpp"

#include <unistd.h>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <stdexcept>
#include <thread>

#include "common/metrics.hpp"

using namespace tokenmill::metrics;

TEST_CASE("histogram buckets: le is inclusive and counts are cumulative", "[metrics]") {
  histogram h({1, 2, 5});
  for (double v : {0.5, 1.0, 1.5, 2.0, 2.0, 4.99, 5.0, 7.0, -3.0})
    h.observe(v);
  auto s = h.snap();
  CHECK(s.bounds == std::vector<double>{1, 2, 5});
  // <=1: 0.5, 1, -3; <=2: +1.5, 2, 2; <=5: +4.99, 5; +Inf: +7
  CHECK(s.cumulative == std::vector<uint64_t>{3, 6, 8, 9});
  CHECK(s.count == 9);
  CHECK(s.cumulative.back() == s.count);
  CHECK(s.sum == Approx(0.5 + 1 + 1.5 + 2 + 2 + 4.99 + 5 + 7 - 3));
}

TEST_CASE("histogram: NaN and huge values land only in +Inf", "[metrics]") {
  histogram h({1});
  h.observe(std::numeric_limits<double>::quiet_NaN());
  h.observe(1e300);
  h.observe(std::numeric_limits<double>::infinity());
  auto s = h.snap();
  CHECK(s.cumulative == std::vector<uint64_t>{0, 3});
  CHECK(std::isnan(s.sum));
}

TEST_CASE("counters and gauges", "[metrics]") {
  registry r;
  auto& c = r.get_counter("c_total", "a counter");
  c.inc();
  c.inc(2.5);
  c.inc(-10);  // ignored
  c.inc(std::numeric_limits<double>::quiet_NaN());
  CHECK(c.value() == 3.5);
  c.advance_to(10);  // a total kept elsewhere
  CHECK(c.value() == 10);
  c.advance_to(7);  // never backwards
  CHECK(c.value() == 10);
  auto& g = r.get_gauge("g", "a gauge");
  g.set(10);
  g.add(-4);
  g.add(0.5);
  CHECK(g.value() == 6.5);
}

TEST_CASE("concurrent observe and inc give exact counts", "[metrics]") {
  registry r;
  auto& h = r.get_histogram("lat_seconds", "latency", {0.25, 0.5, 0.75});
  auto& c = r.get_counter("events_total", "events");
  constexpr int per_thread = 100000;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&] {
      for (int i = 0; i < per_thread; ++i) {
        h.observe((i % 4) * 0.25);  // 0, 0.25, 0.5, 0.75: one per bucket, +Inf none
        c.inc();
      }
    });
  for (auto& t : threads)
    t.join();
  auto s = h.snap();
  CHECK(s.count == 4u * per_thread);
  CHECK(s.cumulative ==
        std::vector<uint64_t>{2u * per_thread, 3u * per_thread, 4u * per_thread, 4u * per_thread});
  // Every addend is a multiple of 0.25, so the double sum is exact.
  CHECK(s.sum == 4.0 * per_thread / 4 * (0 + 0.25 + 0.5 + 0.75));
  CHECK(c.value() == 4.0 * per_thread);
}

TEST_CASE("the same name and labels give the same handle", "[metrics]") {
  registry r;
  auto& a = r.get_counter("req_total", "requests", {{"api", "chat"}, {"outcome", "ok"}});
  auto& b =
      r.get_counter("req_total", "other help is ignored", {{"outcome", "ok"}, {"api", "chat"}});
  auto& other = r.get_counter("req_total", "requests", {{"api", "chat"}, {"outcome", "error"}});
  CHECK(&a == &b);
  CHECK(&a != &other);
  auto& h1 = r.get_histogram("h_seconds", "h", {1, 2}, {{"node", "n0"}});
  auto& h2 = r.get_histogram("h_seconds", "h", {1, 2}, {{"node", "n0"}});
  auto& h3 = r.get_histogram("h_seconds", "h", {1, 2}, {{"node", "n1"}});
  CHECK(&h1 == &h2);
  CHECK(&h1 != &h3);
  CHECK(&r.get_gauge("g", "g") == &r.get_gauge("g", "g"));
  // Handles stay valid while many more series are added.
  for (int i = 0; i < 1000; ++i)
    r.get_counter("req_total", "requests", {{"api", std::to_string(i)}});
  a.inc();
  CHECK(b.value() == 1);
}

TEST_CASE("invalid registrations throw naming the metric", "[metrics]") {
  registry r;
  r.get_counter("taken", "a counter");
  r.get_histogram("h", "h", {1, 2});
  auto throws_naming = [](auto&& f, const std::string& what) {
    try {
      f();
      FAIL("no exception; expected one mentioning " << what);
    } catch (const std::invalid_argument& e) {
      INFO(e.what());
      CHECK(std::string(e.what()).find(what) != std::string::npos);
    }
  };
  const auto nan = std::numeric_limits<double>::quiet_NaN();
  const auto inf = std::numeric_limits<double>::infinity();
  throws_naming([&] { r.get_gauge("taken", "x"); }, "'taken' is already registered as a counter");
  throws_naming([&] { r.get_histogram("taken", "x", {1}); }, "'taken'");
  throws_naming([&] { r.get_counter("h", "x"); }, "'h' is already registered as a histogram");
  throws_naming([&] { r.get_counter("", "x"); }, "invalid metric name ''");
  throws_naming([&] { r.get_counter("1abc", "x"); }, "'1abc'");
  throws_naming([&] { r.get_counter("a-b", "x"); }, "'a-b'");
  throws_naming([&] { r.get_counter("a b", "x"); }, "'a b'");
  throws_naming([&] { r.get_gauge("ok", "x", {{"bad-label", "v"}}); }, "metric 'ok'");
  throws_naming([&] { r.get_gauge("ok", "x", {{"__reserved", "v"}}); }, "'__reserved'");
  throws_naming([&] { r.get_gauge("ok", "x", {{"", "v"}}); }, "invalid label name ''");
  throws_naming([&] { r.get_gauge("ok", "x", {{"a:b", "v"}}); }, "'a:b'");
  throws_naming([&] { r.get_gauge("ok", "x", {{"9a", "v"}}); }, "'9a'");
  throws_naming(
      [&] {
        r.get_gauge("ok", "x", {{"a", "1"}, {"a", "2"}});
      },
      "label 'a' is given twice");
  throws_naming([&] { r.get_histogram("nh", "x", {}); }, "metric 'nh'");
  throws_naming([&] { r.get_histogram("nh", "x", {2, 1}); }, "strictly increasing");
  throws_naming([&] { r.get_histogram("nh", "x", {1, 1}); }, "metric 'nh'");
  throws_naming([&] { r.get_histogram("nh", "x", {1, nan}); }, "finite");
  throws_naming([&] { r.get_histogram("nh", "x", {1, inf}); }, "finite");
  throws_naming([&] { r.get_histogram("nh", "x", {-inf, 1}); }, "metric 'nh'");
  throws_naming([&] { r.get_histogram("nh", "x", {1}, {{"le", "1"}}); }, "'le' is reserved");
  throws_naming(
      [&] {
        r.get_histogram("h", "h", {1, 3});
      },
      "'h': histogram is already registered with other bucket bounds");
  throws_naming([&] { histogram bad({3, 2}); }, "strictly increasing");
  throws_naming([] { exponential_buckets(0, 2, 3); }, "start");
  throws_naming([] { exponential_buckets(1, 1, 3); }, "factor");
  throws_naming([] { exponential_buckets(1, 2, 0); }, "count");
  // Rejected histograms registered nothing.
  CHECK(r.expose().find("nh") == std::string::npos);
  // Names with colons and digits are fine.
  CHECK_NOTHROW(r.get_counter("ns:sub_2_total", "x", {{"_l9", "v"}}));
}

TEST_CASE("bucket helpers", "[metrics]") {
  CHECK(exponential_buckets(1, 2, 4) == std::vector<double>{1, 2, 4, 8});
  CHECK(exponential_buckets(0.5, 10, 1) == std::vector<double>{0.5});
  auto lat = latency_buckets_seconds();
  REQUIRE(lat.size() >= 10);
  CHECK(lat.front() == 0.0005);
  CHECK(lat.back() == 60);
  CHECK(std::is_sorted(lat.begin(), lat.end()));
  CHECK(std::adjacent_find(lat.begin(), lat.end()) == lat.end());
  CHECK_NOTHROW(histogram(lat));
}

namespace {
registry& small(registry& r) {
  r.get_counter("tokenmill_requests_total", "Requests by API and outcome",
                {{"outcome", "ok"}, {"api", "chat"}})
      .inc(3);
  r.get_counter("tokenmill_requests_total", "Requests by API and outcome",
                {{"api", "completions"}, {"outcome", "error"}})
      .inc();
  r.get_gauge("tokenmill_requests_in_flight", "Requests accepted\nand not \\ finished").set(-2);
  r.get_gauge("tokenmill_kv_usage_ratio", "KV blocks in use", {{"node", "a\"b\\c\nd"}}).set(0.125);
  auto& h = r.get_histogram("tokenmill_ttft_seconds", "Time to first token", {0.001, 0.5, 2});
  h.observe(0.001);
  h.observe(0.25);
  h.observe(3);
  r.get_gauge("tokenmill_big", "Large and odd values", {{"v", "big"}}).set(1e20);
  r.get_gauge("tokenmill_big", "Large and odd values", {{"v", "inf"}})
      .set(std::numeric_limits<double>::infinity());
  r.get_gauge("tokenmill_big", "Large and odd values", {{"v", "ninf"}})
      .set(-std::numeric_limits<double>::infinity());
  r.get_gauge("tokenmill_big", "Large and odd values", {{"v", "nan"}})
      .set(std::numeric_limits<double>::quiet_NaN());
  return r;
}
}  // namespace

TEST_CASE("exposition text is exact and stable", "[metrics]") {
  registry r;
  const std::string expected =
      "# HELP tokenmill_big Large and odd values\n"
      "# TYPE tokenmill_big gauge\n"
      "tokenmill_big{v=\"big\"} 1e+20\n"
      "tokenmill_big{v=\"inf\"} +Inf\n"
      "tokenmill_big{v=\"nan\"} NaN\n"
      "tokenmill_big{v=\"ninf\"} -Inf\n"
      "# HELP tokenmill_kv_usage_ratio KV blocks in use\n"
      "# TYPE tokenmill_kv_usage_ratio gauge\n"
      "tokenmill_kv_usage_ratio{node=\"a\\\"b\\\\c\\nd\"} 0.125\n"
      "# HELP tokenmill_requests_in_flight Requests accepted\\nand not \\\\ finished\n"
      "# TYPE tokenmill_requests_in_flight gauge\n"
      "tokenmill_requests_in_flight -2\n"
      "# HELP tokenmill_requests_total Requests by API and outcome\n"
      "# TYPE tokenmill_requests_total counter\n"
      "tokenmill_requests_total{api=\"chat\",outcome=\"ok\"} 3\n"
      "tokenmill_requests_total{api=\"completions\",outcome=\"error\"} 1\n"
      "# HELP tokenmill_ttft_seconds Time to first token\n"
      "# TYPE tokenmill_ttft_seconds histogram\n"
      "tokenmill_ttft_seconds_bucket{le=\"0.001\"} 1\n"
      "tokenmill_ttft_seconds_bucket{le=\"0.5\"} 2\n"
      "tokenmill_ttft_seconds_bucket{le=\"2\"} 2\n"
      "tokenmill_ttft_seconds_bucket{le=\"+Inf\"} 3\n"
      "tokenmill_ttft_seconds_sum 3.251\n"
      "tokenmill_ttft_seconds_count 3\n";
  CHECK(small(r).expose() == expected);
  CHECK(r.expose() == expected);  // stable

  SECTION("histogram labels come before le") {
    registry r2;
    r2.get_histogram("x_seconds", "x", {1}, {{"stage", "queue"}, {"node", "n0"}}).observe(1);
    CHECK(r2.expose() ==
          "# HELP x_seconds x\n"
          "# TYPE x_seconds histogram\n"
          "x_seconds_bucket{node=\"n0\",stage=\"queue\",le=\"1\"} 1\n"
          "x_seconds_bucket{node=\"n0\",stage=\"queue\",le=\"+Inf\"} 1\n"
          "x_seconds_sum{node=\"n0\",stage=\"queue\"} 1\n"
          "x_seconds_count{node=\"n0\",stage=\"queue\"} 1\n");
  }
  SECTION("numbers are written as %g does") {
    registry r4;
    r4.get_histogram("y_seconds", "y", {0.0005, 2.5}).observe(1.5e-7);
    CHECK(r4.expose() ==
          "# HELP y_seconds y\n"
          "# TYPE y_seconds histogram\n"
          "y_seconds_bucket{le=\"0.0005\"} 1\n"
          "y_seconds_bucket{le=\"2.5\"} 1\n"
          "y_seconds_bucket{le=\"+Inf\"} 1\n"
          "y_seconds_sum 1.5e-07\n"
          "y_seconds_count 1\n");
  }
  SECTION("registration order does not change the output") {
    registry r3;
    r3.get_gauge("b", "b").set(1);
    r3.get_gauge("a", "a", {{"k", "2"}}).set(2);
    r3.get_gauge("a", "a", {{"k", "1"}}).set(1);
    CHECK(r3.expose() ==
          "# HELP a a\n# TYPE a gauge\na{k=\"1\"} 1\na{k=\"2\"} 2\n"
          "# HELP b b\n# TYPE b gauge\nb 1\n");
  }
}

TEST_CASE("promtool accepts the exposition", "[metrics]") {
  if (std::system("command -v promtool >/dev/null 2>&1") != 0)
    TM_SKIP("promtool is not on PATH (scripts/setup.sh installs it; scripts/test.sh adds it)");
  registry r;
  r.get_counter("tokenmill_requests_total", "Requests by API and outcome",
                {{"api", "chat"}, {"outcome", "ok"}})
      .inc(3);
  r.get_gauge("tokenmill_requests_in_flight", "Requests accepted and not finished",
              {{"node", "a\"b\\c\nd"}})
      .set(2);
  auto& h = r.get_histogram("tokenmill_time_to_first_token_seconds", "Time to first token",
                            latency_buckets_seconds(), {{"node", "n0"}});
  for (double v : {0.0001, 0.003, 0.2, 75.0})
    h.observe(v);
  char path[] = "/tmp/tokenmill_metrics_XXXXXX";
  const int fd = mkstemp(path);
  REQUIRE(fd >= 0);
  close(fd);
  {
    std::ofstream f(path);
    f << r.expose();
  }
  const int rc = std::system((std::string("promtool check metrics < ") + path).c_str());
  std::remove(path);
  CHECK(rc == 0);
}
