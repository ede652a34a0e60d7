#include "frontend/client.hpp"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>

#include <capnp/rpc-twoparty.h>
#include <fmt/format.h>
#include <kj/async-io.h>
#include <kj/async.h>
#include <kj/compat/tls.h>
#include <kj/timer.h>

#include "common/clock.hpp"
#include "schema/codec.hpp"

namespace tokenmill {
namespace {

class sink_impl final : public rpc::TokenSink::Server {
 public:
  explicit sink_impl(std::function<void(const client_chunk&)> cb) : cb_(std::move(cb)) {}
  std::vector<client_chunk> chunks;
  /// After the call ends the server may still hold this sink: ignore late writes, so the
  /// caller's callback never runs after generate() returned.
  void close() {
    closed_ = true;
    cb_ = nullptr;
  }

 protected:
  kj::Promise<void> write(WriteContext ctx) override {
    if (closed_)
      return KJ_EXCEPTION(DISCONNECTED, "the generate call this sink belongs to has ended");
    auto c = codec::decode(ctx.getParams().getChunk());
    client_chunk cc{c.first_index, std::move(c.ids), std::move(c.text), now_ns(),
                    std::move(c.logprobs)};
    if (cb_) cb_(cc);
    chunks.push_back(std::move(cc));
    return kj::READY_NOW;
  }

 private:
  std::function<void(const client_chunk&)> cb_;
  bool closed_ = false;
};

kj::Duration to_duration(double s) {
  return static_cast<int64_t>(s * 1e3) * kj::MILLISECONDS;
}

}  // namespace

result<std::pair<std::string, uint16_t>> parse_endpoint(const std::string& s) {
  auto colon = s.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == s.size())
    return error_info{errc::invalid_request,
                      fmt::format("'{}' is not HOST:PORT (for example 127.0.0.1:7700)", s)};
  unsigned port = 0;
  auto ps = std::string_view(s).substr(colon + 1);
  auto [p, ec] = std::from_chars(ps.data(), ps.data() + ps.size(), port);
  if (ec != std::errc() || p != ps.data() + ps.size() || port == 0 || port > 65535)
    return error_info{errc::invalid_request,
                      fmt::format("'{}' in '{}' is not a port number (1-65535)", ps, s)};
  return std::make_pair(s.substr(0, colon), static_cast<uint16_t>(port));
}

bool is_unauthenticated(const error_info& e) {
  return e.code == errc::unauthenticated;
}

std::string api_key_or_env(const std::string& flag) {
  if (!flag.empty()) return flag;
  const char* env = std::getenv("TOKENMILL_API_KEY");
  return env ? std::string(env) : std::string();
}

/// kj allows one event loop per thread: every client of a thread shares it (as
/// EzRpcClient's per-thread context did), and the last one to go destroys it.
struct thread_loop {
  kj::AsyncIoContext io = kj::setupAsyncIo();
};
std::shared_ptr<thread_loop> this_thread_loop() {
  thread_local std::weak_ptr<thread_loop> current;
  auto loop = current.lock();
  if (!loop) {
    loop = std::make_shared<thread_loop>();
    current = loop;
  }
  return loop;
}

struct client::impl {
  std::string where;
  // Declaration order matters: everything below uses the event loop of `loop`.
  std::shared_ptr<thread_loop> loop = this_thread_loop();
  kj::AsyncIoContext& io = loop->io;
  kj::Maybe<kj::Own<kj::TlsCertificate>> ca;
  kj::Maybe<kj::Own<kj::TlsContext>> tls;
  kj::Own<kj::AsyncIoStream> stream;
  kj::Own<capnp::TwoPartyClient> rpc;
  rpc::Gateway::Client gw = nullptr;

  explicit impl(std::string w) : where(std::move(w)) {}
  kj::WaitScope& ws() { return io.waitScope; }

  template <class T>
  kj::Promise<T> bounded(kj::Promise<T> p, double timeout_s) {
    return io.provider->getTimer().timeoutAfter(to_duration(timeout_s), kj::mv(p));
  }
  error_info translate(const kj::Exception& e, const char* what) {
    auto type = e.getType();
    std::string text = e.getDescription().cStr();
    // A refused API key: the server's words, without kj's "remote exception: " prefix.
    if (auto at = text.find(unauthenticated_prefix); at != std::string::npos)
      return {errc::unauthenticated, fmt::format("{} {}: {}", what, where, text.substr(at))};
    // A throttled login: the server's words, which end in "retry in N s".
    for (std::string_view lead : {"", "remote exception: "})
      if (text.starts_with(std::string(lead) + std::string(overloaded_prefix)))
        return {errc::overloaded, fmt::format("{} {}: {}", what, where, text.substr(lead.size()))};
    errc code = type == kj::Exception::Type::DISCONNECTED ? errc::unavailable
                : type == kj::Exception::Type::OVERLOADED ? errc::timeout
                                                          : errc::internal;
    return {code, fmt::format("{} {}: {}", what, where, text)};
  }
};

client::client(std::unique_ptr<impl> i) : impl_(std::move(i)) {}
client::~client() = default;

result<std::unique_ptr<client>> client::connect(const std::string& host, uint16_t port,
                                                double timeout_s, const client_options& opts) {
  auto i = std::make_unique<impl>(fmt::format("{}:{}", host, port));
  if (!opts.tls_ca.empty()) {
    std::ifstream in(opts.tls_ca, std::ios::binary);
    if (!in)
      return error_info{errc::invalid_request, fmt::format("--tls-ca {}: cannot read the file: {}",
                                                           opts.tls_ca, std::strerror(errno))};
    std::ostringstream pem;
    pem << in.rdbuf();
    try {
      auto ca = kj::heap<kj::TlsCertificate>(kj::StringPtr(pem.str().c_str()));
      kj::TlsContext::Options o;
      o.useSystemTrustStore = false;
      o.trustedCertificates = kj::arrayPtr(ca.get(), 1);
      i->tls = kj::heap<kj::TlsContext>(kj::mv(o));
      i->ca = kj::mv(ca);
    } catch (const kj::Exception& e) {
      return error_info{errc::invalid_request, fmt::format("--tls-ca {}: not a PEM certificate: {}",
                                                           opts.tls_ca, e.getDescription().cStr())};
    }
  }
  try {
    auto& ws = i->ws();
    auto addr =
        i->bounded(i->io.provider->getNetwork().parseAddress(host, port), timeout_s).wait(ws);
    i->stream = i->bounded(addr->connect(), timeout_s).wait(ws);
    KJ_IF_MAYBE (t, i->tls) {
      auto plain = kj::mv(i->stream);
      i->stream = i->bounded((*t)->wrapClient(kj::mv(plain), host), timeout_s).wait(ws);
    }
    i->rpc = kj::heap<capnp::TwoPartyClient>(*i->stream);
    i->gw = i->rpc->bootstrap().castAs<rpc::Gateway>();
  } catch (const kj::Exception& e) {
    return error_info{errc::unavailable, fmt::format("cannot reach tokenmill at {}:{}: {}", host,
                                                     port, e.getDescription().cStr())};
  }
  try {
    if (!opts.api_key.empty()) {
      // Pipelined: the model call below goes to the capability login returns.
      auto login = i->gw.loginRequest();
      login.setKey(opts.api_key);
      i->gw = login.send().getGateway();
    }
    auto req = i->gw.modelRequest();
    auto resp = i->bounded(req.send(), timeout_s).wait(i->ws());
    auto m = codec::decode(resp.getInfo());
    std::unique_ptr<client> c(new client(std::move(i)));
    c->model_ = std::move(m);
    return c;
  } catch (const kj::Exception& e) {
    auto err = i->translate(e, "connecting to tokenmill at");
    // The server's own verdicts (a refused key, a throttled login) keep their code;
    // anything else on the way in means the server is not usable.
    if (err.code != errc::unauthenticated && err.code != errc::overloaded)
      err.code = errc::unavailable;
    return err;
  }
}

namespace {

/// The rest of a generate call once its response came: the server's summary, the tokens in
/// arrival order with their gaps, and the full TTFT breakdown on the client's clock.
result<client_result> finish_generate(client_result out, const sink_impl& sink) {
  int64_t prev = 0;
  for (const auto& c : sink.chunks) {
    for (size_t k = 0; k < c.ids.size(); ++k) {
      if (!out.tokens.empty() || k > 0)
        out.itl_ms.push_back(k == 0 ? (c.recv_ns - prev) / 1e6 : 0.0);
      out.tokens.push_back(c.ids[k]);
    }
    out.logprobs.insert(out.logprobs.end(), c.logprobs.begin(), c.logprobs.end());
    if (!c.ids.empty()) prev = c.recv_ns;
    out.text += c.text;
  }
  if (!sink.chunks.empty()) out.first_token_ns = sink.chunks.front().recv_ns;
  if (out.server.error_code != errc::ok) return error_info{out.server.error_code, out.server.error};
  // The full TTFT breakdown: the server's stamps plus the client's own, on one clock
  // (same host; across hosts the supervisor's clock offsets apply).
  trace tr;
  for (const auto& h : out.server.hops)
    tr.hops.push_back(h);
  tr.stamp_at(stage::client_sent, out.sent_ns);
  if (out.first_token_ns != 0) {
    tr.stamp_at(stage::first_token_client, out.first_token_ns);
    out.ttft_ms = (out.first_token_ns - out.sent_ns) / 1e6;
  }
  for (const auto& iv : ttft_breakdown(tr))
    out.stages.push_back({std::string(iv.name()), iv.duration_ns / 1e6});
  return out;
}

/// Closes the sink when the call it belongs to ends, however it ends (holding a reference,
/// so the sink outlives the close whatever the server still holds).
struct sink_closer {
  sink_closer(rpc::TokenSink::Client c, sink_impl* s) : cap(kj::mv(c)), sink(s) {}
  sink_closer(const sink_closer&) = delete;
  sink_closer& operator=(const sink_closer&) = delete;
  ~sink_closer() { sink->close(); }
  rpc::TokenSink::Client cap;
  sink_impl* sink;
};

}  // namespace

kj::Promise<result<client_result>> client::start_generate(
    generate_params p, std::function<void(const client_chunk&)> on_chunk, double timeout_s) {
  auto& i = *impl_;
  auto sink_own = kj::heap<sink_impl>(std::move(on_chunk));
  auto* sink = sink_own.get();
  auto closer = kj::heap<sink_closer>(kj::mv(sink_own), sink);
  auto* cap = &closer->cap;
  auto out = kj::heap<client_result>();
  auto* o = out.get();
  return kj::evalNow([&]() {
           auto req = i.gw.generateRequest();
           o->sent_ns = now_ns();
           p.client_sent_ns = o->sent_ns;
           codec::encode(p, req.initRequest());
           req.setSink(*cap);
           return i.bounded(req.send(), timeout_s)
               .then([o, sink](capnp::Response<rpc::Gateway::GenerateResults>&& resp) {
                 o->done_ns = now_ns();
                 o->server = codec::decode(resp.getSummary());
                 return finish_generate(std::move(*o), *sink);
               });
         })
      .catch_([this](kj::Exception&& e) -> result<client_result> {
        return impl_->translate(e, "generate at");
      })
      .attach(kj::mv(out), kj::mv(closer));
}

result<client_result> client::generate(generate_params p,
                                       const std::function<void(const client_chunk&)>& on_chunk,
                                       double timeout_s) {
  auto& i = *impl_;
  auto r = start_generate(std::move(p), on_chunk, timeout_s).wait(i.ws());
  if (!r) {
    // The abandoned call's cancellation (a Finish message) is only queued; turn the event
    // loop once so the server hears it now, not at this client's next call.
    try {
      i.ws().poll();
    } catch (const kj::Exception&) {
    }
  }
  return r;
}

void client::generate_concurrently(const std::vector<client*>& clients,
                                   const std::function<std::optional<call>(size_t)>& next,
                                   double timeout_s) {
  if (clients.empty()) return;
  // Each client's chain: its next call, then (whatever came of it) the one after.
  std::function<kj::Promise<void>(size_t)> run = [&](size_t k) -> kj::Promise<void> {
    auto c = next(k);
    if (!c) return kj::READY_NOW;
    auto done = std::move(c->done);
    return clients[k]
        ->start_generate(std::move(c->params), std::move(c->on_chunk), timeout_s)
        .then([&run, k, done = std::move(done)](result<client_result>&& r) mutable {
          done(std::move(r));
          return run(k);
        });
  };
  kj::Vector<kj::Promise<void>> chains;
  for (size_t k = 0; k < clients.size(); ++k)
    chains.add(run(k));
  kj::joinPromises(chains.releaseAsArray()).wait(clients.front()->impl_->ws());
}

result<std::vector<token_id>> client::tokenize(const std::string& text, bool add_bos) {
  auto& i = *impl_;
  try {
    auto req = i.gw.tokenizeRequest();
    req.setText(text);
    req.setAddBos(add_bos);
    auto resp = i.bounded(req.send(), 30).wait(i.ws());
    return codec::decode_ids(resp.getTokenIds());
  } catch (const kj::Exception& e) {
    return i.translate(e, "tokenize at");
  }
}

result<cluster_status> client::status(double timeout_s) {
  auto& i = *impl_;
  try {
    auto req = i.gw.statusRequest();
    auto resp = i.bounded(req.send(), timeout_s).wait(i.ws());
    return codec::decode(resp.getStatus());
  } catch (const kj::Exception& e) {
    return i.translate(e, "status at");
  }
}

result<drain_summary> client::drain(const std::string& node, double timeout_s, bool resume) {
  auto& i = *impl_;
  try {
    auto req = i.gw.drainRequest();
    req.setNode(node);
    req.setResume(resume);
    req.setTimeoutMs(static_cast<uint32_t>(std::min(timeout_s * 1000, 4e9)));
    // The server answers when its own bound (timeout_s) expires: allow for the round trip.
    auto resp = i.bounded(req.send(), timeout_s + 10).wait(i.ws());
    return codec::decode(resp.getReport());
  } catch (const kj::Exception& e) {
    return i.translate(e, "drain at");
  }
}

}  // namespace tokenmill
