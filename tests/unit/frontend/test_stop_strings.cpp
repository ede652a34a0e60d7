#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "frontend/stop_strings.hpp"

using namespace tokenmill;

namespace {
/// Pushes `pieces` one by one; returns everything shown and whether it matched.
std::pair<std::string, bool> run(std::vector<std::string> stops,
                                 const std::vector<std::string>& pieces) {
  stop_matcher m(std::move(stops));
  std::string out;
  for (const auto& p : pieces)
    out += m.push(p);
  out += m.finish();
  return {out, m.matched()};
}
}  // namespace

TEST_CASE("text without stop strings passes through at once", "[stop]") {
  stop_matcher m({});
  CHECK(m.push("hello") == "hello");
  CHECK(m.finish().empty());
  CHECK_FALSE(m.matched());
}

TEST_CASE("the stop string and everything after it are cut", "[stop]") {
  auto [out, hit] = run({"END"}, {"one two E", "N", "D three"});
  CHECK(out == "one two ");
  CHECK(hit);
}

TEST_CASE("a possible start of a stop string waits, then flows on a mismatch", "[stop]") {
  stop_matcher m({"\n\nUser:"});
  CHECK(m.push("Hi\n") == "Hi");
  CHECK(m.push("\nUs") == "");
  CHECK(m.push("ually") == "\n\nUsually");
  CHECK_FALSE(m.matched());
  CHECK(m.push("\n") == "");
  CHECK(m.finish() == "\n");  // the end of the stream releases the held tail
}

TEST_CASE("the earliest of several stop strings wins", "[stop]") {
  auto [out, hit] = run({"cd", "b"}, {"abcd"});
  CHECK(out == "a");
  CHECK(hit);
  auto [out2, hit2] = run({"xyz", "yz!"}, {"wxy", "z!"});
  CHECK(out2 == "w");
  CHECK(hit2);
}

TEST_CASE("nothing is shown after a match", "[stop]") {
  stop_matcher m({"."});
  CHECK(m.push("a.b") == "a");
  CHECK(m.push("more") == "");
  CHECK(m.finish() == "");
}

TEST_CASE("multi-byte stop strings match across pieces", "[stop]") {
  auto [out, hit] = run({"—end"}, {"text \xe2\x80", "\x94", "end more"});
  CHECK(out == "text ");
  CHECK(hit);
}
