#include <catch2/catch.hpp>

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "frontend/api_keys.hpp"

using namespace tokenmill;

namespace {

/// A file under /tmp removed when the test ends.
struct temp_file {
  std::string path;
  temp_file() {
    char name[] = "/tmp/tokenmill-keys-XXXXXX";
    int fd = ::mkstemp(name);
    REQUIRE(fd >= 0);
    ::close(fd);
    path = name;
  }
  ~temp_file() { std::remove(path.c_str()); }
  void write(const std::string& text) const {
    std::ofstream out(path, std::ios::trunc | std::ios::binary);
    out << text;
    REQUIRE(out.good());
  }
};

bool mentions(const error_info& e, const std::string& what) {
  INFO(e.message);
  return e.message.find(what) != std::string::npos;
}

}  // namespace

TEST_CASE("parse_api_key_file: one key per line, comments, blanks and spaces", "[api_keys]") {
  auto k = parse_api_key_file("# team keys\nalpha\n\n  beta-2  \r\n\t# old: gamma\ndelta", "k.txt");
  REQUIRE(k.ok());
  CHECK(*k == std::vector<std::string>{"alpha", "beta-2", "delta"});
  auto hash_inside = parse_api_key_file("ab#cd\n", "k.txt");
  REQUIRE(hash_inside.ok());
  CHECK(*hash_inside == std::vector<std::string>{"ab#cd"});  // only a leading '#' comments
}

TEST_CASE("parse_api_key_file: bad files are refused naming the file and line", "[api_keys]") {
  auto empty = parse_api_key_file("", "k.txt");
  REQUIRE_FALSE(empty.ok());
  CHECK(mentions(empty.error(), "k.txt: no API key"));
  auto only_comments = parse_api_key_file("# nothing\n\n   \n", "k.txt");
  REQUIRE_FALSE(only_comments.ok());
  CHECK(mentions(only_comments.error(), "no API key"));
  auto space = parse_api_key_file("good\nhas space\n", "k.txt");
  REQUIRE_FALSE(space.ok());
  CHECK(mentions(space.error(), "k.txt:2"));
  CHECK(mentions(space.error(), "a space"));
  auto control = parse_api_key_file("a\nb\n\x01x\n", "k.txt");
  REQUIRE_FALSE(control.ok());
  CHECK(mentions(control.error(), "k.txt:3"));
  CHECK(mentions(control.error(), "0x01"));
  auto utf8 = parse_api_key_file("cl\xc3\xa9\n", "k.txt");
  REQUIRE_FALSE(utf8.ok());
  CHECK(mentions(utf8.error(), "printable ASCII"));
  auto huge = parse_api_key_file(std::string(5000, 'x'), "k.txt");
  REQUIRE_FALSE(huge.ok());
  CHECK(mentions(huge.error(), "5000 bytes"));
}

TEST_CASE("check_api_key_text names where the key came from", "[api_keys]") {
  CHECK(check_api_key_text("k-1_ABC.xyz~", "--api-key").ok());
  auto e = check_api_key_text("", "--api-key");
  REQUIRE_FALSE(e.ok());
  CHECK(mentions(e.error(), "--api-key: the key is empty"));
}

TEST_CASE("digests_equal compares whole digests", "[api_keys]") {
  auto a = digest_api_key("alpha");
  CHECK(digests_equal(a, digest_api_key("alpha")));
  CHECK_FALSE(digests_equal(a, digest_api_key("alphb")));
  CHECK_FALSE(digests_equal(a, digest_api_key("alph")));
  auto b = a;
  b.back() ^= 1;  // differs only in the last byte
  CHECK_FALSE(digests_equal(a, b));
  // SHA-256("abc"), FIPS 180-2 appendix B.1: the digest is the real one.
  auto abc = digest_api_key("abc");
  CHECK(abc[0] == 0xba);
  CHECK(abc[1] == 0x78);
  CHECK(abc[31] == 0xad);
}

TEST_CASE("api_keys::from_key accepts exactly that key", "[api_keys]") {
  auto k = api_keys::from_key("s3cret");
  REQUIRE(k.ok());
  CHECK((*k)->accepts("s3cret"));
  CHECK_FALSE((*k)->accepts("s3cre"));
  CHECK_FALSE((*k)->accepts("s3cret "));
  CHECK_FALSE((*k)->accepts(""));
  CHECK((*k)->size() == 1);
  CHECK((*k)->path().empty());
  REQUIRE((*k)->reload().ok());  // a fixed key is kept
  CHECK((*k)->accepts("s3cret"));
  auto bad = api_keys::from_key("two words", "$TOKENMILL_API_KEY");
  REQUIRE_FALSE(bad.ok());
  CHECK(mentions(bad.error(), "$TOKENMILL_API_KEY"));
}

TEST_CASE("api_keys::from_file: several keys, and a missing file is an error", "[api_keys]") {
  temp_file f;
  f.write("one\ntwo\n# three\n");
  auto k = api_keys::from_file(f.path);
  REQUIRE(k.ok());
  CHECK((*k)->size() == 2);
  CHECK((*k)->accepts("one"));
  CHECK((*k)->accepts("two"));
  CHECK_FALSE((*k)->accepts("three"));
  CHECK_FALSE((*k)->accepts("# three"));
  auto missing = api_keys::from_file("/nonexistent/tokenmill-keys");
  REQUIRE_FALSE(missing.ok());
  CHECK(mentions(missing.error(), "/nonexistent/tokenmill-keys: cannot read"));
}

TEST_CASE("api_keys::reload takes new keys, drops removed ones, keeps the old on error",
          "[api_keys]") {
  temp_file f;
  f.write("old\nkept\n");
  auto made = api_keys::from_file(f.path);
  REQUIRE(made.ok());
  auto& k = **made;
  auto old_digest = digest_api_key("old");
  CHECK(k.accepts_digest(old_digest));

  f.write("kept\nnew\n");
  auto r = k.reload();
  REQUIRE(r.ok());
  CHECK(*r == 2);
  CHECK(k.accepts("new"));
  CHECK(k.accepts("kept"));
  CHECK_FALSE(k.accepts("old"));
  CHECK_FALSE(k.accepts_digest(old_digest));  // a session logged in with it loses access

  f.write("# everything commented out\n");
  auto empty = k.reload();
  REQUIRE_FALSE(empty.ok());
  CHECK(mentions(empty.error(), "no API key"));
  CHECK(k.accepts("new"));  // unchanged
  CHECK(k.accepts("kept"));

  f.write("fine\nbad key\n");
  auto bad = k.reload();
  REQUIRE_FALSE(bad.ok());
  CHECK(mentions(bad.error(), f.path + ":2"));
  CHECK(k.accepts("new"));
  CHECK_FALSE(k.accepts("fine"));  // nothing of a bad file is taken

  std::remove(f.path.c_str());
  auto gone = k.reload();
  REQUIRE_FALSE(gone.ok());
  CHECK(mentions(gone.error(), "cannot read"));
  CHECK(k.size() == 2);
}

TEST_CASE("bearer_token parses Authorization: Bearer KEY", "[api_keys]") {
  CHECK(bearer_token("Bearer abc") == std::optional<std::string_view>("abc"));
  CHECK(bearer_token("bearer abc") == std::optional<std::string_view>("abc"));
  CHECK(bearer_token("BEARER   abc ") == std::optional<std::string_view>("abc"));
  CHECK_FALSE(bearer_token("Bearer"));
  CHECK_FALSE(bearer_token("Bearer "));
  CHECK_FALSE(bearer_token("Bearerabc"));
  CHECK_FALSE(bearer_token("Basic YWxhZGRpbjpvcGVuc2VzYW1l"));
  CHECK_FALSE(bearer_token("abc"));
  CHECK_FALSE(bearer_token(""));
}
