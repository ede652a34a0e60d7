#include <catch2/catch.hpp>

#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/result.hpp"

using namespace tokenmill;

TEST_CASE("result<void>: success by default, else the error it was given", "[result]") {
  result<void> ok;
  CHECK(ok.ok());
  CHECK(static_cast<bool>(ok));
  CHECK(ok.error().code == errc::ok);

  result<void> bad = error_info{errc::invalid_request, "token id 9 is outside the vocabulary"};
  CHECK_FALSE(bad.ok());
  CHECK_FALSE(static_cast<bool>(bad));
  CHECK(bad.error().code == errc::invalid_request);
  CHECK(bad.error().message == "token id 9 is outside the vocabulary");

  auto check = [](int v) -> result<void> {
    if (v < 0) return error_info{errc::invalid_model, "negative"};
    return {};
  };
  CHECK(check(1));
  CHECK_FALSE(check(-1));
  CHECK(check(-1).error().message == "negative");
}

TEST_CASE("catch_into_result passes values and errors through", "[result]") {
  auto value = catch_into_result(errc::internal, [] { return result<int>(7); });
  REQUIRE(value);
  CHECK(*value == 7);
  auto refused = catch_into_result(errc::internal, [] {
    return result<int>(error_info{errc::invalid_request, "no"});
  });
  REQUIRE_FALSE(refused);
  CHECK(refused.error().code == errc::invalid_request);  // not rewritten
  CHECK(catch_into_result(errc::internal, [] { return result<void>(); }));
}

TEST_CASE("catch_into_result turns an exception into an error with the given code", "[result]") {
  auto thrown = catch_into_result(errc::internal, []() -> result<std::vector<int>> {
    throw std::runtime_error("device lost at kernel.cu:12");
  });
  REQUIRE_FALSE(thrown);
  CHECK(thrown.error().code == errc::internal);
  CHECK(thrown.error().message == "device lost at kernel.cu:12");

  auto oom = catch_into_result(errc::internal, []() -> result<void> { throw std::bad_alloc(); });
  REQUIRE_FALSE(oom);
  CHECK(oom.error().code == errc::internal);
  CHECK_FALSE(oom.error().message.empty());

  auto odd = catch_into_result(errc::invalid_model, []() -> result<int> { throw 42; });
  REQUIRE_FALSE(odd);
  CHECK(odd.error().code == errc::invalid_model);
  CHECK(odd.error().message == "unknown exception");
}
