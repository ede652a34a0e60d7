// API keys and TLS on the client-facing ports of `tokenmill serve`: RPC and HTTP without
// a key or with a wrong one are refused and nothing is generated; the right key works; a
// SIGHUP reload takes new keys and drops removed ones (also on connections already logged
// in); repeated wrong keys from one address are refused for a while; /metrics behind a
// key; a plaintext client against a TLS port is refused while the server keeps serving.
#include <catch2/catch.hpp>

#include <csignal>
#include <cstdlib>
#include <fstream>
#include <string>

#include <capnp/ez-rpc.h>
#include <kj/async.h>
#include <nlohmann/json.hpp>

#include "frontend/client.hpp"
#include "frontend/http_client.hpp"
#include "harness.hpp"
#include "schema/tokenmill.capnp.h"
#include "tests/skip.hpp"

using namespace tokenmill;
using namespace tokenmill::testing;
using json = nlohmann::json;

namespace {

void write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::trunc);
  out << text;
  REQUIRE(out.good());
}

generate_params text_params(std::string text, int64_t max_tokens) {
  generate_params p;
  p.text = std::move(text);
  p.max_tokens = max_tokens;
  return p;
}

/// The decode workers' finished requests and generated tokens, asked with `key` (status
/// needs one too).
std::pair<uint64_t, uint64_t> work_done(const server& s, const std::string& key) {
  auto r = run_tokenmill({"status", "--connect", s.endpoint(), "--json", "--api-key", key},
                         milliseconds(15000));
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);
  auto j = json::parse(r.out, nullptr, false);
  REQUIRE(j.is_object());
  uint64_t completed = 0, tokens = 0;
  for (const auto& w : j["workers"]) {
    if (w.value("role", "") != "decode") continue;
    completed += w.value("completed", uint64_t{0});
    tokens += w.value("tokens_out", uint64_t{0});
  }
  return {completed, tokens};
}

http_response post_completion(const server& s, const http_headers& headers) {
  auto c = http_client::connect("127.0.0.1", s.http_port(), 5);
  REQUIRE(c.ok());
  json body = {{"prompt", "hello"}, {"max_tokens", 4}};
  auto r = (*c)->request("POST", "/v1/completions", body.dump(), "application/json", headers, 30);
  INFO((r ? "" : r.error().message));
  REQUIRE(r.ok());
  return *r;
}

http_response get_path(uint16_t port, const std::string& target, const http_headers& headers) {
  auto c = http_client::connect("127.0.0.1", port, 5);
  REQUIRE(c.ok());
  auto r = (*c)->request("GET", target, {}, "", headers, 30);
  INFO((r ? "" : r.error().message));
  REQUIRE(r.ok());
  return *r;
}

bool contains(const std::string& text, const std::string& what) {
  return text.find(what) != std::string::npos;
}

class null_sink final : public rpc::TokenSink::Server {};

/// A raw Cap'n Proto generate on the bootstrap Gateway, without login: the description of
/// the exception it fails with (empty when it did not fail).
std::string raw_generate_without_login(uint16_t port) {
  capnp::EzRpcClient rpc("127.0.0.1", port);
  auto gw = rpc.getMain<rpc::Gateway>();
  auto req = gw.generateRequest();
  req.initRequest().getPrompt().setText("hello");
  req.getRequest().setMaxTokens(4);
  req.setSink(kj::heap<null_sink>());
  try {
    req.send().wait(rpc.getWaitScope());
  } catch (const kj::Exception& e) {
    return e.getDescription().cStr();
  }
  return "";
}

}  // namespace

TEST_CASE(
    "security: RPC and HTTP refuse a missing or wrong key, generate nothing, and serve the "
    "right one",
    "[integration][security]") {
  temp_dir dir;
  const auto keys = dir.file("keys");
  write_file(keys, "# clients\nalpha\n\n  beta\n");
  server s({{"--api-key-file", keys}});

  // RPC: the command-line client, without a key, with a wrong one.
  auto none = s.generate({"--max-tokens", "4", "hello"});
  INFO(none.out << none.err);
  CHECK(none.exit_code != 0);
  CHECK(contains(none.err, "tokenmill generate: unauthenticated: "));  // errc, then the words
  CHECK(contains(none.err, "requires an API key"));
  auto wrong = s.generate({"--api-key", "gamma", "--max-tokens", "4", "hello"});
  INFO(wrong.out << wrong.err);
  CHECK(wrong.exit_code != 0);
  CHECK(contains(wrong.err, "tokenmill generate: unauthenticated: "));
  CHECK(contains(wrong.err, "incorrect API key"));
  // The library reports the code; a raw call on the bootstrap capability is refused too.
  auto c = client::connect("127.0.0.1", s.port(), 10);
  REQUIRE_FALSE(c.ok());
  CHECK(c.error().code == errc::unauthenticated);
  CHECK(is_unauthenticated(c.error()));
  auto c_wrong = client::connect("127.0.0.1", s.port(), 10, {"alphaa", ""});
  REQUIRE_FALSE(c_wrong.ok());
  CHECK(is_unauthenticated(c_wrong.error()));
  CHECK(contains(raw_generate_without_login(s.port()), "unauthenticated: this server requires"));
  // Status, drain and bench are refused as well.
  auto st = run_tokenmill({"status", "--connect", s.endpoint()});
  CHECK(st.exit_code != 0);
  CHECK(contains(st.err, "unauthenticated"));
  auto dr = run_tokenmill({"drain", "--connect", s.endpoint(), "local"});
  CHECK(dr.exit_code != 0);
  CHECK(contains(dr.err, "unauthenticated"));

  // HTTP: no header, a wrong key, a wrong scheme.
  auto h_none = post_completion(s, {});
  CHECK(h_none.status == 401);
  CHECK(contains(h_none.body, "missing API key"));
  // RFC 6750: a 401 names the scheme the client must use.
  CHECK(h_none.header("WWW-Authenticate") == "Bearer realm=\"tokenmill\"");
  auto h_wrong = post_completion(s, {{"Authorization", "Bearer gamma"}});
  CHECK(h_wrong.status == 401);
  CHECK(h_wrong.header("WWW-Authenticate") == "Bearer realm=\"tokenmill\"");
  CHECK(contains(h_wrong.body, "incorrect API key"));
  auto h_basic = post_completion(s, {{"Authorization", "Basic YWxwaGE6"}});
  CHECK(h_basic.status == 401);
  CHECK(contains(h_basic.body, "authentication_error"));

  // Nothing of that reached a worker.
  auto [done0, tokens0] = work_done(s, "alpha");
  CHECK(done0 == 0);
  CHECK(tokens0 == 0);

  // Either key of the file works, on RPC (flag and environment) and HTTP.
  auto ok = s.generate({"--api-key", "alpha", "--max-tokens", "4", "--json", "hello"});
  INFO(ok.out << ok.err);
  REQUIRE(ok.exit_code == 0);
  CHECK(last_json_line(ok.out)["tokens"] == 4);
  auto env_ok = run({"/usr/bin/env", "TOKENMILL_API_KEY=beta", tokenmill_bin(), "generate",
                     "--connect", s.endpoint(), "--max-tokens", "4", "hello"},
                    milliseconds(30000));
  INFO(env_ok.out << env_ok.err);
  CHECK(env_ok.exit_code == 0);
  auto lib = client::connect("127.0.0.1", s.port(), 10, {"beta", ""});
  REQUIRE(lib.ok());
  auto g = (*lib)->generate(text_params("hello", 3), [](const client_chunk&) {});
  REQUIRE(g.ok());
  CHECK(g->tokens.size() == 3);
  auto h_ok = post_completion(s, {{"Authorization", "Bearer beta"}});
  INFO(h_ok.body);
  CHECK(h_ok.status == 200);
  auto [done1, tokens1] = work_done(s, "beta");
  CHECK(done1 == 4);
  CHECK(tokens1 >= 4 + 4 + 3 + 4 - 4);  // the first token of each may come from prefill
  // /metrics and /health stay open without --protect-metrics; the refusals above are
  // counted under their own outcome on both APIs.
  auto metrics = get_path(s.http_port(), "/metrics", {});
  CHECK(metrics.status == 200);
  CHECK(contains(
      metrics.body,
      "tokenmill_requests_total{api=\"http\",node=\"local\",outcome=\"unauthenticated\"}"));
  CHECK(
      contains(metrics.body,
               "tokenmill_requests_total{api=\"rpc\",node=\"local\",outcome=\"unauthenticated\"}"));
  CHECK(get_path(s.http_port(), "/health", {}).status == 200);
}

TEST_CASE("security: repeated wrong keys from one address are refused for a while, on both ports",
          "[integration][security]") {
  server s({{"--api-key", "the-key"}});
  // The burst (10): each wrong Bearer key is answered 401.
  for (int i = 0; i < 10; ++i)
    CHECK(post_completion(s, {{"Authorization", "Bearer guess-" + std::to_string(i)}}).status ==
          401);
  // Then the address is refused without its key being looked at, the right key included.
  auto blocked = post_completion(s, {{"Authorization", "Bearer the-key"}});
  CHECK(blocked.status == 429);
  CHECK(contains(blocked.body, "too many failed API key attempts from 127.0.0.1"));
  CHECK_FALSE(blocked.header("Retry-After").empty());  // whole seconds until a token returns
  CHECK(blocked.header("WWW-Authenticate").empty());   // not a verdict on the key
  // RPC shares the count: its login is refused the same way, as overloaded (retry later).
  auto rpc_blocked = client::connect("127.0.0.1", s.port(), 10, {"the-key", ""});
  REQUIRE_FALSE(rpc_blocked.ok());
  CHECK(rpc_blocked.error().code == errc::overloaded);
  CHECK(contains(rpc_blocked.error().message, "retry in "));
  CHECK(contains(rpc_blocked.error().message, "too many failed API key attempts"));
  // A token comes back every 2 s: then the right key works again, on both ports.
  CHECK(eventually(
      [&] {
        return post_completion(s, {{"Authorization", "Bearer the-key"}}).status == 200;
      },
      milliseconds(6000)));
  auto rpc_ok = client::connect("127.0.0.1", s.port(), 10, {"the-key", ""});
  INFO((rpc_ok ? std::string() : rpc_ok.error().message));
  CHECK(rpc_ok.ok());
  CHECK(s.proc().running());
}

TEST_CASE("security: SIGHUP reloads the key file, removed keys stop working at once",
          "[integration][security]") {
  temp_dir dir;
  const auto keys = dir.file("keys");
  write_file(keys, "old\nkept\n");
  server s({{"--api-key-file", keys}});
  auto logged_in = client::connect("127.0.0.1", s.port(), 10, {"old", ""});
  REQUIRE(logged_in.ok());
  REQUIRE((*logged_in)->generate(text_params("hi", 2), [](const client_chunk&) {}).ok());

  write_file(keys, "kept\nnew\n");
  s.proc().signal(SIGHUP);
  auto line = s.proc().wait_for_line("API keys reloaded", milliseconds(10000));
  REQUIRE(line);
  CHECK(contains(*line, "2 key(s)"));
  auto with_new = s.generate({"--api-key", "new", "--max-tokens", "2", "hi"});
  INFO(with_new.out << with_new.err);
  CHECK(with_new.exit_code == 0);
  auto with_old = s.generate({"--api-key", "old", "--max-tokens", "2", "hi"});
  CHECK(with_old.exit_code != 0);
  CHECK(contains(with_old.err, "incorrect API key"));
  // The connection that logged in with the removed key loses access too.
  auto again = (*logged_in)->generate(text_params("hi", 2), [](const client_chunk&) {});
  REQUIRE_FALSE(again.ok());
  CHECK(is_unauthenticated(again.error()));
  CHECK(contains(again.error().message, "no longer accepted"));
  CHECK(post_completion(s, {{"Authorization", "Bearer old"}}).status == 401);
  CHECK(post_completion(s, {{"Authorization", "Bearer new"}}).status == 200);

  // A broken file: the reload fails, says why, and the keys stay as they were.
  write_file(keys, "kept\nnot a key\n");
  s.proc().signal(SIGHUP);
  REQUIRE(eventually(
      [&] {
        s.proc().wait_for_line("\x01", milliseconds(100));  // reads stdout and stderr
        return contains(s.proc().err(), "NOT reloaded");
      },
      milliseconds(10000)));
  CHECK(contains(s.proc().err(), keys + ":2"));
  CHECK(s.generate({"--api-key", "new", "--max-tokens", "2", "hi"}).exit_code == 0);
  CHECK(s.generate({"--api-key", "kept", "--max-tokens", "2", "hi"}).exit_code == 0);
  CHECK(s.proc().running());
}

TEST_CASE("security: --protect-metrics puts /metrics and /debug behind the key",
          "[integration][security]") {
  server s({{"--api-key", "m-key"}, {"--protect-metrics", ""}});
  auto none = get_path(s.http_port(), "/metrics", {});
  CHECK(none.status == 401);
  auto wrong = get_path(s.http_port(), "/metrics", {{"Authorization", "Bearer nope"}});
  CHECK(wrong.status == 401);
  auto ok = get_path(s.http_port(), "/metrics", {{"Authorization", "Bearer m-key"}});
  CHECK(ok.status == 200);
  CHECK(contains(ok.body, "tokenmill_"));
  CHECK(get_path(s.http_port(), "/debug/requests", {}).status == 401);
  CHECK(get_path(s.http_port(), "/health", {}).status == 200);
  CHECK(get_path(s.http_port(), "/ready", {}).status == 200);
  // `tokenmill trace` reads /debug/requests: refused without the key, served with it.
  temp_dir dir;
  auto no_key = run_tokenmill({"trace", "--connect", "127.0.0.1:" + std::to_string(s.http_port()),
                               "--out", dir.file("t.json")});
  CHECK(no_key.exit_code != 0);
  CHECK(contains(no_key.err, "401"));
  auto with_key = run_tokenmill({"trace", "--connect", "127.0.0.1:" + std::to_string(s.http_port()),
                                 "--out", dir.file("t.json"), "--api-key", "m-key"});
  INFO(with_key.out << with_key.err);
  CHECK(with_key.exit_code == 0);
}

TEST_CASE("security: bad key and TLS options are refused at start, naming what is wrong",
          "[integration][security]") {
  temp_dir dir;
  auto serve = [](std::vector<std::string> args) {
    std::vector<std::string> argv{"serve", "--engine",    "sim", "--rpc-port",
                                  "0",     "--http-port", "0"};
    argv.insert(argv.end(), args.begin(), args.end());
    return run_tokenmill(argv, milliseconds(20000));
  };
  auto missing = serve({"--api-key-file", dir.file("nope")});
  CHECK(missing.exit_code == 2);
  CHECK(contains(missing.err, dir.file("nope") + ": cannot read"));
  write_file(dir.file("empty"), "# nothing yet\n");
  auto empty = serve({"--api-key-file", dir.file("empty")});
  CHECK(empty.exit_code == 2);
  CHECK(contains(empty.err, "no API key"));
  auto spaced = serve({"--api-key", "a b"});
  CHECK(spaced.exit_code == 2);
  CHECK(contains(spaced.err, "--api-key"));
  auto both = serve({"--api-key", "a", "--api-key-file", dir.file("empty")});
  CHECK(both.exit_code != 0);
  auto metrics = serve({"--protect-metrics"});
  CHECK(metrics.exit_code == 2);
  CHECK(contains(metrics.err, "--protect-metrics needs"));
  auto half_tls = serve({"--tls-cert", dir.file("cert.pem")});
  CHECK(half_tls.exit_code == 2);
  CHECK(contains(half_tls.err, "--tls-key"));
  write_file(dir.file("junk.pem"), "not a certificate\n");
  auto junk = serve({"--tls-cert", dir.file("junk.pem"), "--tls-key", dir.file("junk.pem")});
  CHECK(junk.exit_code != 0);
  CHECK(contains(junk.err, "junk.pem"));
}

TEST_CASE("security: TLS on the RPC and HTTP ports refuses plaintext clients and keeps serving",
          "[integration][security]") {
  if (std::system("command -v openssl >/dev/null 2>&1") != 0) TM_SKIP("no openssl tool");
  temp_dir dir;
  const auto cert = dir.file("cert.pem"), key = dir.file("key.pem");
  const std::string make =
      "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 "
      "-subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout " +
      key + " -out " + cert + " >/dev/null 2>&1";
  REQUIRE(std::system(make.c_str()) == 0);
  server s({{"--tls-cert", cert}, {"--tls-key", key}, {"--api-key", "t-key"}});
  const std::string rpc_at = "localhost:" + std::to_string(s.port());

  // Plaintext against the TLS ports: refused.
  auto plain = run_tokenmill(
      {"generate", "--connect", rpc_at, "--api-key", "t-key", "--max-tokens", "2", "hi"});
  CHECK(plain.exit_code != 0);
  CHECK(contains(plain.err, "unavailable"));
  auto plain_lib = client::connect("127.0.0.1", s.port(), 5, {"t-key", ""});
  CHECK_FALSE(plain_lib.ok());
  {
    auto c = http_client::connect("127.0.0.1", s.http_port(), 5);
    REQUIRE(c.ok());
    auto r = (*c)->request("GET", "/health", {}, "", {}, 5);
    CHECK((!r.ok() || r->status != 200));
  }
  // A client that trusts another certificate is refused as well.
  const auto other = dir.file("other.pem");
  REQUIRE(std::system(("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 "
                       "-nodes -days 1 -subj /CN=localhost -keyout " +
                       dir.file("other.key") + " -out " + other + " >/dev/null 2>&1")
                          .c_str()) == 0);
  auto untrusted = run_tokenmill({"generate", "--connect", rpc_at, "--tls-ca", other, "--api-key",
                                  "t-key", "--max-tokens", "2", "hi"});
  CHECK(untrusted.exit_code != 0);

  // The server kept serving: TLS clients with the key get completions on both ports.
  auto ok = run_tokenmill({"generate", "--connect", rpc_at, "--tls-ca", cert, "--api-key", "t-key",
                           "--max-tokens", "3", "--json", "hi"});
  INFO(ok.out << ok.err);
  REQUIRE(ok.exit_code == 0);
  CHECK(last_json_line(ok.out)["tokens"] == 3);
  auto no_key =
      run_tokenmill({"generate", "--connect", rpc_at, "--tls-ca", cert, "--max-tokens", "3", "hi"});
  CHECK(no_key.exit_code != 0);
  CHECK(contains(no_key.err, "unauthenticated"));
  if (std::system("command -v curl >/dev/null 2>&1") != 0) {
    WARN("no curl: the HTTPS completion is not checked");
    return;
  }
  const std::string url = "https://localhost:" + std::to_string(s.http_port());
  auto curl = run({"/usr/bin/env", "curl", "-sS", "--max-time", "20", "--cacert", cert, "-H",
                   "Authorization: Bearer t-key", "-H", "Content-Type: application/json", "-d",
                   R"({"prompt":"hi","max_tokens":3})", url + "/v1/completions"},
                  milliseconds(30000));
  INFO(curl.out << curl.err);
  REQUIRE(curl.exit_code == 0);
  auto j = json::parse(curl.out, nullptr, false);
  REQUIRE(j.is_object());
  CHECK(j["usage"]["completion_tokens"] == 3);
  auto curl_no_key = run({"/usr/bin/env", "curl", "-sS", "--max-time", "20", "--cacert", cert, "-o",
                          "/dev/null", "-w", "%{http_code}", url + "/v1/models"},
                         milliseconds(30000));
  CHECK(curl_no_key.out == "401");
}
