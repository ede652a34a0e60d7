#include <catch2/catch.hpp>

#include <algorithm>
#include <vector>

#include "common/stats.hpp"

using namespace tokenmill;

TEST_CASE("percentile_sorted of an empty vector is 0", "[stats]") {
  std::vector<double> empty;
  CHECK(percentile_sorted(empty, 0.0) == 0);
  CHECK(percentile_sorted(empty, 0.5) == 0);
  CHECK(percentile_sorted(empty, 1.0) == 0);
}

TEST_CASE("percentile_sorted of one sample is that sample for every q", "[stats]") {
  std::vector<double> one{42.5};
  for (double q : {0.0, 0.01, 0.5, 0.99, 1.0})
    CHECK(percentile_sorted(one, q) == 42.5);
}

TEST_CASE("percentile_sorted interpolates linearly between closest ranks", "[stats]") {
  std::vector<double> v{10, 20, 30, 40, 50};  // ranks 0..4
  CHECK(percentile_sorted(v, 0.0) == Approx(10));
  CHECK(percentile_sorted(v, 1.0) == Approx(50));
  CHECK(percentile_sorted(v, 0.5) == Approx(30));     // pos 2 exactly
  CHECK(percentile_sorted(v, 0.25) == Approx(20));    // pos 1 exactly
  CHECK(percentile_sorted(v, 0.125) == Approx(15));   // pos 0.5
  CHECK(percentile_sorted(v, 0.9) == Approx(46));     // pos 3.6 -> 40 + 0.6 * 10
  CHECK(percentile_sorted(v, 0.99) == Approx(49.6));  // pos 3.96

  std::vector<double> two{1, 3};
  CHECK(percentile_sorted(two, 0.5) == Approx(2));
  CHECK(percentile_sorted(two, 0.75) == Approx(2.5));
}

TEST_CASE("percentile_sorted handles repeated and negative values", "[stats]") {
  std::vector<double> v{-4, -4, 0, 0, 8};
  CHECK(percentile_sorted(v, 0.0) == Approx(-4));
  CHECK(percentile_sorted(v, 0.25) == Approx(-4));
  CHECK(percentile_sorted(v, 0.375) == Approx(-2));  // pos 1.5 between -4 and 0
  CHECK(percentile_sorted(v, 0.5) == Approx(0));
  CHECK(percentile_sorted(v, 0.875) == Approx(4));  // pos 3.5 between 0 and 8
}

TEST_CASE("percentile_sorted clamps q outside [0, 1]", "[stats]") {
  std::vector<double> v{1, 2, 3};
  CHECK(percentile_sorted(v, -0.5) == 1);
  CHECK(percentile_sorted(v, -1e300) == 1);
  CHECK(percentile_sorted(v, 1.5) == 3);
  CHECK(percentile_sorted(v, 1e300) == 3);
}

TEST_CASE("percentile_sorted is monotonic in q", "[stats]") {
  std::vector<double> v{0.5, 1, 1, 2, 7, 7.5, 100};
  double prev = percentile_sorted(v, 0);
  for (int i = 1; i <= 100; ++i) {
    double cur = percentile_sorted(v, i / 100.0);
    CHECK(cur >= prev);
    CHECK(cur >= v.front());
    CHECK(cur <= v.back());
    prev = cur;
  }
}

TEST_CASE("summarize of no samples is all zero", "[stats]") {
  auto s = summarize({});
  CHECK(s.count == 0);
  CHECK(s.mean == 0);
  CHECK(s.p50 == 0);
  CHECK(s.p90 == 0);
  CHECK(s.p99 == 0);
  CHECK(s.min == 0);
  CHECK(s.max == 0);
}

TEST_CASE("summarize sorts its (unsorted) input", "[stats]") {
  std::vector<double> samples{9, 1, 5, 3, 7, 2, 8, 4, 6, 10};  // 1..10 shuffled
  auto s = summarize(samples);
  CHECK(s.count == 10);
  CHECK(s.mean == Approx(5.5));
  CHECK(s.min == 1);
  CHECK(s.max == 10);
  CHECK(s.p50 == Approx(5.5));   // pos 4.5
  CHECK(s.p90 == Approx(9.1));   // pos 8.1
  CHECK(s.p99 == Approx(9.91));  // pos 8.91
  // The caller's vector was passed by value: summarize must not need it sorted.
  std::vector<double> sorted = samples;
  std::sort(sorted.begin(), sorted.end());
  CHECK(s.p90 == Approx(percentile_sorted(sorted, 0.9)));
}

TEST_CASE("summarize of one sample", "[stats]") {
  auto s = summarize({3.25});
  CHECK(s.count == 1);
  CHECK(s.mean == 3.25);
  CHECK(s.p50 == 3.25);
  CHECK(s.p90 == 3.25);
  CHECK(s.p99 == 3.25);
  CHECK(s.min == 3.25);
  CHECK(s.max == 3.25);
}

TEST_CASE("summarize keeps min <= p50 <= p90 <= p99 <= max", "[stats]") {
  std::vector<double> samples;
  for (int i = 0; i < 1000; ++i)
    samples.push_back(static_cast<double>((i * 7919) % 1000));
  auto s = summarize(samples);
  CHECK(s.count == 1000);
  CHECK(s.min == 0);
  CHECK(s.max == 999);
  CHECK(s.mean == Approx(499.5));
  CHECK(s.min <= s.p50);
  CHECK(s.p50 <= s.p90);
  CHECK(s.p90 <= s.p99);
  CHECK(s.p99 <= s.max);
  CHECK(s.p50 == Approx(499.5));
  CHECK(s.p90 == Approx(899.1));
  CHECK(s.p99 == Approx(989.01));
}

TEST_CASE("percentile of unsorted samples equals percentile_sorted of them sorted", "[stats]") {
  std::vector<double> samples{50, 10, 40, 20, 30};
  CHECK(percentile(samples, 0.0) == Approx(10));
  CHECK(percentile(samples, 0.125) == Approx(15));
  CHECK(percentile(samples, 0.9) == Approx(46));
  CHECK(percentile(samples, 1.0) == Approx(50));
  CHECK(percentile(samples, 2.0) == Approx(50));  // clamped, as percentile_sorted
  CHECK(percentile({}, 0.5) == 0);
  // The caller's vector is copied, not sorted in place.
  CHECK(samples == std::vector<double>{50, 10, 40, 20, 30});
}

TEST_CASE("median is the middle sample, or the mean of the two middle ones", "[stats]") {
  CHECK(median({}) == 0);
  CHECK(median({7}) == 7);
  CHECK(median({3, 1, 2}) == 2);
  CHECK(median({4, 1, 3, 2}) == 2.5);
  CHECK(median({-1, 100, -1}) == -1);
  CHECK(median({0.1, 0.2}) == (0.1 + 0.2) / 2);  // exactly the mean of the two
  std::vector<double> samples{9, 1, 5, 3, 7, 2, 8, 4, 6, 10};
  CHECK(median(samples) == Approx(percentile(samples, 0.5)));
  CHECK(median(samples) == Approx(summarize(samples).p50));
}
