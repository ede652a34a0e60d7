#include <catch2/catch.hpp>

#include "actors/router/prefill_backlog.hpp"

using namespace tokenmill;

TEST_CASE("prefill backlog: per worker and in all", "[prefill_backlog]") {
  prefill_backlog b;
  CHECK(b.total() == 0);
  CHECK(b.queued(1) == 0);
  b.add(100, 1, 50);
  b.add(101, 1, 30);
  b.add(102, 2, 7);
  CHECK(b.queued(1) == 80);
  CHECK(b.queued(2) == 7);
  CHECK(b.total() == 87);
  CHECK(b.worker_of(101) == worker_id{1});
  CHECK_FALSE(b.worker_of(999));

  b.release(100);
  CHECK(b.queued(1) == 30);
  CHECK(b.total() == 37);
  CHECK_FALSE(b.worker_of(100));
  b.release(100);  // once only
  CHECK(b.queued(1) == 30);
  CHECK(b.total() == 37);
  b.release(999);  // never added
  CHECK(b.total() == 37);
}

TEST_CASE("prefill backlog: adding again replaces a request's entry", "[prefill_backlog]") {
  prefill_backlog b;
  b.add(100, 1, 50);
  b.add(100, 2, 20);
  CHECK(b.queued(1) == 0);
  CHECK(b.queued(2) == 20);
  CHECK(b.total() == 20);
  CHECK(b.worker_of(100) == worker_id{2});
}

TEST_CASE("prefill backlog: a worker that left", "[prefill_backlog]") {
  prefill_backlog b;
  b.add(100, 1, 50);
  b.add(101, 2, 10);
  b.forget_worker(1);
  CHECK(b.queued(1) == 0);
  // Its requests still count in the total and still name it, until released.
  CHECK(b.total() == 60);
  CHECK(b.worker_of(100) == worker_id{1});
  // It comes back (same id) and gets new work before the old request is released: the
  // release never takes the count below zero.
  b.add(102, 1, 20);
  CHECK(b.queued(1) == 20);
  b.release(100);
  CHECK(b.queued(1) == 0);
  CHECK(b.total() == 30);
  b.release(102);
  CHECK(b.queued(1) == 0);
  CHECK(b.total() == 10);
  b.release(101);
  CHECK(b.total() == 0);
}
