/// libFuzzer target: the HTTP server's request reading (frontend/http_server.cpp session):
/// Boost.Beast's request parser with the server's header and body limits, fed the bytes of
/// one connection as they might arrive, requests pipelined one after another on it; every
/// request that parses goes through the routing rules as the server routes it (the API key
/// check, then plan_http_request). The first byte picks how the stream is cut into reads
/// (1..256 bytes). A parse error ends the connection, as it does in the server.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <variant>

#include <boost/beast/http.hpp>

#include "engine/engine.hpp"
#include "engine/tokenizer.hpp"
#include "frontend/api_keys.hpp"
#include "frontend/http_routes.hpp"
#include "frontend/http_server.hpp"
#include "frontend/request_log.hpp"

namespace {

namespace beast = boost::beast;
namespace http = beast::http;
using namespace tokenmill;

std::string_view sv(beast::string_view s) {
  return {s.data(), s.size()};
}

/// What the server does with a complete request before it needs the router: the API key,
/// then the routing plan. Returns whether the connection may carry another request.
bool route(const http::request<http::string_body>& req, const http_route_context& ctx) {
  const std::string_view target = sv(req.target());
  const std::string path(target_path(target));
  static const auto keys = *api_keys::from_key("secret");
  if (check_api_key(path, sv(req[http::field::authorization]), keys.get(), true))
    return req.keep_alive();
  auto plan = plan_http_request(sv(req.method_string()), target, req.body(), ctx);
  if (plan)
    if (auto* e = std::get_if<openai::api_error>(&*plan))
      if (e->status < 400 || e->status > 599 || e->message.empty()) __builtin_trap();
  return req.keep_alive();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  static const http_server_config cfg;
  static const model_info model = [] {
    model_info m;
    m.name = "tiny";
    m.vocab_size = 1000;
    m.max_context = 64;
    return m;
  }();
  static const byte_word_tokenizer tok{1000};
  static const request_log log{8};
  const http_route_context ctx{model, tok, log};

  const size_t chunk = size_t{data[0]} + 1;
  std::string_view rest(reinterpret_cast<const char*>(data + 1), size - 1);
  std::string buf;  // received, not yet consumed by the parser (the session's flat_buffer)
  for (int requests = 0; requests < 16; ++requests) {
    http::request_parser<http::string_body> parser;
    parser.header_limit(cfg.max_header_bytes);
    parser.body_limit(cfg.max_body_bytes);
    parser.eager(true);
    beast::error_code ec;
    while (!parser.is_done()) {
      if (!buf.empty()) {
        auto used = parser.put(boost::asio::buffer(buf), ec);
        buf.erase(0, used);
        if (ec == http::error::need_more) {
          ec = {};
        } else if (ec) {
          return 0;  // the server answers 400/413/431 and closes the connection
        } else if (used > 0) {
          continue;
        }
      }
      if (parser.is_done()) break;
      if (rest.empty()) {
        parser.put_eof(ec);  // the client closed its end
        if (ec || !parser.is_done()) return 0;
        break;
      }
      const auto n = std::min(chunk, rest.size());
      buf.append(rest.substr(0, n));
      rest.remove_prefix(n);
    }
    auto req = parser.release();
    if (!route(req, ctx)) return 0;
  }
  return 0;
}
