#include "frontend/rpc_server.hpp"

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <deque>
#include <fstream>
#include <future>
#include <mutex>
#include <sstream>
#include <thread>
#include <unordered_map>
#include <variant>

#include <capnp/rpc-twoparty.h>
#include <capnp/rpc.h>
#include <kj/async-io.h>
#include <kj/async-unix.h>
#include <kj/compat/tls.h>
#include <kj/debug.h>
#include <spdlog/spdlog.h>

#include <caf/all.hpp>

#include "actors/protocol.hpp"
#include "common/clock.hpp"
#include "frontend/api_keys.hpp"
#include "frontend/auth_throttle.hpp"
#include "frontend/completion_text.hpp"
#include "frontend/router_bridge.hpp"
#include "frontend/validate.hpp"
#include "schema/codec.hpp"

namespace tokenmill {
namespace {

struct status_result {
  uint64_t call = 0;
  result<cluster_status> status;
};
struct drain_result {
  uint64_t call = 0;
  drain_summary report;
};
struct stop_event {};
using inbox_item =
    std::variant<token_chunk, request_summary, status_result, drain_result, stop_event>;

/// Hands items from CAF threads to the kj thread: a locked queue plus an eventfd the kj
/// loop waits on. Only the push that finds the queue empty signals: the kj loop reads the
/// eventfd before it drains, so every later push until that drain is taken with it. A decode
/// step's tokens arrive as one chunk per stream; signalling each woke the kj thread several
/// times per step and cost a write(2) per token.
class inbox {
 public:
  inbox() : fd_(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {
    if (fd_ < 0) throw std::system_error(errno, std::generic_category(), "eventfd");
  }
  ~inbox() { ::close(fd_); }
  void push(inbox_item item) {
    bool was_empty = false;
    {
      std::lock_guard<std::mutex> lock(mtx_);
      was_empty = q_.empty();
      q_.push_back(std::move(item));
    }
    if (!was_empty) return;
    uint64_t one = 1;
    [[maybe_unused]] auto n = ::write(fd_, &one, sizeof(one));
  }
  std::deque<inbox_item> drain() {
    std::lock_guard<std::mutex> lock(mtx_);
    return std::exchange(q_, {});
  }
  int fd() const { return fd_; }

 private:
  int fd_;
  std::mutex mtx_;
  std::deque<inbox_item> q_;
};

}  // namespace

/// One request being streamed to its client.
struct stream_state {
  rpc::TokenSink::Client sink;
  kj::Own<kj::PromiseFulfiller<void>> done;
  std::vector<token_id> pending;                 ///< tokens not yet written to the sink
  std::vector<token_logprobs> pending_logprobs;  ///< theirs, when the request asked for them
  uint32_t written = 0;                          ///< tokens written so far
  bool sending = false;
  completion_text text;
  bool flushed = false;  ///< the held-back text tail was sent after the summary arrived
  std::optional<request_summary> summary;
  int64_t first_sent_ns = 0;
  int64_t arrived_ns = 0;
  int64_t last_token_ns = 0;
  bool cancel_sent = false;
  stream_state(rpc::TokenSink::Client s, std::shared_ptr<const tokenizer> tok,
               std::vector<std::string> stop_strings)
      : sink(kj::mv(s)), text(std::move(tok), std::move(stop_strings)) {}
};

struct rpc_server::impl : public kj::TaskSet::ErrorHandler {
  caf::actor_system& sys;
  caf::actor router;
  caf::actor supervisor;
  std::shared_ptr<const tokenizer> tok;
  model_info model;
  rpc_server_config cfg;
  std::shared_ptr<frontend_metrics> metrics;
  std::shared_ptr<inbox> in = std::make_shared<inbox>();
  caf::actor bridge;
  std::thread thread;
  std::atomic<uint64_t> next_id{0};
  // kj-thread state
  std::unordered_map<request_id, std::unique_ptr<stream_state>> streams;
  std::unordered_map<uint64_t, kj::Own<kj::PromiseFulfiller<std::shared_ptr<cluster_status>>>>
      status_calls;
  std::unordered_map<uint64_t, kj::Own<kj::PromiseFulfiller<std::shared_ptr<drain_summary>>>>
      drain_calls;
  uint64_t next_call = 0;
  kj::TaskSet* tasks = nullptr;
  kj::Timer* timer = nullptr;

  impl(caf::actor_system& s, caf::actor r, caf::actor sup, std::shared_ptr<const tokenizer> t,
       model_info m, rpc_server_config c, std::shared_ptr<frontend_metrics> mx)
      : sys(s),
        router(std::move(r)),
        supervisor(std::move(sup)),
        tok(std::move(t)),
        model(std::move(m)),
        cfg(std::move(c)),
        metrics(std::move(mx)) {
    if (cfg.keys && !cfg.throttle) cfg.throttle = std::make_shared<auth_throttle>();
  }

  void taskFailed(kj::Exception&& e) override {
    spdlog::debug("rpc: connection task ended: {}", e.getDescription().cStr());
  }

  // ------------------------------------------------------------ streaming (kj thread)
  void pump(request_id id) {
    auto it = streams.find(id);
    if (it == streams.end()) return;
    auto& s = *it->second;
    if (s.sending) return;
    codec::chunk c;
    c.first_index = s.written;
    auto lps = std::exchange(s.pending_logprobs, {});
    auto ids = std::exchange(s.pending, {});
    for (size_t k = 0; k < ids.size(); ++k) {
      const token_id t = ids[k];
      c.ids.push_back(t);
      if (k < lps.size()) c.logprobs.push_back(std::move(lps[k]));
      c.text += s.text.push(t);
      if (s.text.stopped()) {
        // The text reached a stop string: this token ends the completion.
        cancel(id, s);
        break;
      }
    }
    if (s.summary && !s.text.stopped() && !s.flushed) {
      // The end: text held back (an unfinished character, a possible stop string) goes out.
      c.text += s.text.finish();
      s.flushed = true;
    }
    if (c.ids.empty() && c.text.empty()) {
      if (s.summary) s.done->fulfill();
      return;
    }
    c.sent_ns = now_ns();
    if (s.written == 0) s.first_sent_ns = c.sent_ns;
    s.written += static_cast<uint32_t>(c.ids.size());
    s.sending = true;
    auto req = s.sink.writeRequest();
    codec::encode(c, req.initChunk());
    kj::Promise<void> sent = req.send();
    if (cfg.stream_timeout_s > 0) {
      // The window is full and the client takes nothing: give up on it after the timeout.
      const auto limit = static_cast<int64_t>(cfg.stream_timeout_s * 1e3) * kj::MILLISECONDS;
      sent = sent.exclusiveJoin(
          timer->afterDelay(limit).then([id, secs = cfg.stream_timeout_s]() -> kj::Promise<void> {
            auto why = fmt::format("the client took none of its token stream for {} s", secs);
            spdlog::warn("rpc: request {:x} cancelled: {}", id, why);
            return kj::Exception(kj::Exception::Type::DISCONNECTED, __FILE__, __LINE__,
                                 kj::heapString(why.c_str()));
          }));
    }
    tasks->add(sent.then(
        [this, id]() {
          if (auto it = streams.find(id); it != streams.end()) {
            it->second->sending = false;
            pump(id);
          }
        },
        [this, id](kj::Exception&& e) {
          // The client is gone, its sink failed or it stopped taking the stream: stop the
          // request everywhere.
          if (auto it = streams.find(id); it != streams.end()) {
            cancel(id, *it->second);
            it->second->done->reject(kj::mv(e));
          }
        }));
  }

  void cancel(request_id id, stream_state& s) {
    if (s.cancel_sent || s.summary) return;
    s.cancel_sent = true;
    caf::anon_send(router, cancel_request{id});
  }

  void on_chunk(token_chunk& c) {
    auto it = streams.find(c.id);
    if (it == streams.end()) return;  // cancelled meanwhile
    auto& s = *it->second;
    if (s.text.stopped()) return;  // tokens after a stop string are dropped
    if (metrics) {
      auto t = now_ns();
      for (size_t i = 0; i < c.tokens.size(); ++i) {
        if (s.last_token_ns != 0) metrics->token_gap((t - s.last_token_ns) / 1e9);
        s.last_token_ns = t;
      }
    }
    s.pending.insert(s.pending.end(), c.tokens.begin(), c.tokens.end());
    s.pending_logprobs.insert(s.pending_logprobs.end(), std::make_move_iterator(c.logprobs.begin()),
                              std::make_move_iterator(c.logprobs.end()));
    pump(c.id);
  }

  void on_summary(request_summary& sum) {
    auto it = streams.find(sum.id);
    if (it == streams.end()) return;
    it->second->summary = std::move(sum);
    pump(it->second->summary->id);
  }

  void on_status(status_result& r) {
    auto it = status_calls.find(r.call);
    if (it == status_calls.end()) return;
    if (r.status)
      it->second->fulfill(std::make_shared<cluster_status>(std::move(*r.status)));
    else
      it->second->reject(KJ_EXCEPTION(FAILED, r.status.error().message));
    status_calls.erase(it);
  }

  void on_drain(drain_result& r) {
    auto it = drain_calls.find(r.call);
    if (it == drain_calls.end()) return;
    it->second->fulfill(std::make_shared<drain_summary>(std::move(r.report)));
    drain_calls.erase(it);
  }

  generation_summary to_summary(const stream_state& s) {
    return make_generation_summary(*s.summary, s.text.stopped(), s.written, s.first_sent_ns,
                                   cfg.node);
  }

  void run(std::promise<result<uint16_t>>& started);
};

namespace {

/// The Gateway. With API keys, the bootstrap capability (no `session_`) answers only
/// login(); login() hands out one that carries the digest of its key and checks it against
/// the current keys on every call (schema/tokenmill.capnp says why a login capability).
class gateway_impl final : public rpc::Gateway::Server {
 public:
  /// `peer`: the client's address (failed logins are counted against it).
  gateway_impl(rpc_server::impl& s, std::optional<api_key_digest> session, std::string peer)
      : s_(s), session_(session), peer_(std::move(peer)) {}

 protected:
  kj::Promise<void> login(LoginContext ctx) override {
    auto key = ctx.getParams().getKey();
    if (!s_.cfg.keys) {
      ctx.getResults().setGateway(kj::heap<gateway_impl>(s_, std::nullopt, peer_));
      return kj::READY_NOW;
    }
    // Guessing keys is slowed per address: one that failed too often is refused unchecked.
    const auto now = auth_throttle::clock::now();
    if (auto wait_s = s_.cfg.throttle->blocked_for(peer_, now)) {
      // Not a verdict on the key (it was not looked at): "overloaded: ... retry in N s", as
      // HTTP answers 429 with Retry-After; the client library maps the prefix to
      // errc::overloaded (overloaded_prefix in client.hpp).
      if (s_.metrics) s_.metrics->refused("rpc", errc::overloaded);
      spdlog::info("rpc: login from {} refused: throttled for {} s", peer_, wait_s);
      return kj::Exception(kj::Exception::Type::FAILED, __FILE__, __LINE__,
                           kj::str("overloaded: too many failed API key attempts from ",
                                   peer_.c_str(), ": retry in ", wait_s, " s"));
    }
    auto d = digest_api_key(std::string_view(key.cStr(), key.size()));
    if (!s_.cfg.keys->accepts_digest(d)) {
      s_.cfg.throttle->failed(peer_, now);
      return refuse("login", "incorrect API key");
    }
    ctx.getResults().setGateway(kj::heap<gateway_impl>(s_, d, peer_));
    return kj::READY_NOW;
  }

  kj::Promise<void> generate(GenerateContext ctx) override {
    if (!allowed()) return refuse_call("generate");
    // Cap'n Proto 0.9 keeps running a call whose caller cancelled or disconnected unless
    // the call allows cancellation; then dropping the call destroys our promise, and the
    // defer below cancels the request and frees its KV blocks.
    ctx.allowCancellation();
    auto params = ctx.getParams();
    auto gp = codec::decode(params.getRequest());
    auto v = validate(gp, *s_.tok, s_.model);
    if (!v) {
      if (s_.metrics) s_.metrics->refused("rpc", v.error().code);
      generation_summary g;
      g.reason = finish_reason::error;
      g.error_code = v.error().code;
      g.error = v.error().message;
      codec::encode(g, ctx.getResults().initSummary());
      return kj::READY_NOW;
    }
    request_id id = (uint64_t{s_.cfg.node} << 48) | ++s_.next_id;
    auto st = std::make_unique<stream_state>(params.getSink(), s_.tok, std::move(v->stop_strings));
    auto paf = kj::newPromiseAndFulfiller<void>();
    st->done = kj::mv(paf.fulfiller);
    st->arrived_ns = now_ns();
    s_.streams.emplace(id, std::move(st));
    if (s_.metrics) s_.metrics->started("rpc");
    generate_request req;
    req.id = id;
    req.prompt = std::move(v->prompt);
    req.options = std::move(v->options);
    req.tr.id = id;
    req.tr.stamp(stage::arrived, s_.cfg.node);
    req.client = s_.bridge;
    caf::anon_send(s_.router, std::move(req));
    auto& srv = s_;
    return paf.promise
        .then([&srv, id, ctx]() mutable {
          auto it = srv.streams.find(id);
          KJ_REQUIRE(it != srv.streams.end(), "request state vanished");
          auto g = srv.to_summary(*it->second);
          codec::encode(g, ctx.getResults().initSummary());
          if (srv.metrics)
            srv.metrics->finished("rpc", g, (now_ns() - it->second->arrived_ns) / 1e9);
          srv.streams.erase(it);
        })
        .attach(kj::defer([&srv, id]() {
          // Runs when the call ends; if the request is still known, the client dropped
          // the call or the connection before completion: cancel it.
          if (auto it = srv.streams.find(id); it != srv.streams.end()) {
            srv.cancel(id, *it->second);
            if (srv.metrics) {
              generation_summary g;
              g.id = id;
              g.reason = finish_reason::cancelled;
              srv.metrics->finished("rpc", g, (now_ns() - it->second->arrived_ns) / 1e9);
            }
            srv.streams.erase(it);
          }
        }));
  }

  kj::Promise<void> tokenize(TokenizeContext ctx) override {
    if (!allowed()) return refuse_call("tokenize");
    auto p = ctx.getParams();
    auto ids =
        s_.tok->encode(std::string_view(p.getText().cStr(), p.getText().size()), p.getAddBos());
    codec::encode_ids(ids, ctx.getResults().initTokenIds(static_cast<unsigned>(ids.size())));
    return kj::READY_NOW;
  }

  kj::Promise<void> status(StatusContext ctx) override {
    if (!allowed()) return refuse_call("status");
    ctx.allowCancellation();
    auto call = ++s_.next_call;
    auto paf = kj::newPromiseAndFulfiller<std::shared_ptr<cluster_status>>();
    s_.status_calls.emplace(call, kj::mv(paf.fulfiller));
    caf::anon_send(s_.bridge, status_atom::value, call);
    return paf.promise.then([ctx](std::shared_ptr<cluster_status> st) mutable {
      codec::encode(*st, ctx.getResults().initStatus());
    });
  }

  kj::Promise<void> drain(DrainContext ctx) override {
    if (!allowed()) return refuse_call("drain");
    ctx.allowCancellation();
    auto p = ctx.getParams();
    auto call = ++s_.next_call;
    auto paf = kj::newPromiseAndFulfiller<std::shared_ptr<drain_summary>>();
    s_.drain_calls.emplace(call, kj::mv(paf.fulfiller));
    caf::anon_send(
        s_.bridge,
        drain_request{std::string(p.getNode().cStr(), p.getNode().size()), p.getResume()}, call,
        std::max<uint32_t>(p.getTimeoutMs(), 1));
    return paf.promise.then([ctx](std::shared_ptr<drain_summary> r) mutable {
      codec::encode(*r, ctx.getResults().initReport());
    });
  }

  kj::Promise<void> model(ModelContext ctx) override {
    if (!allowed()) return refuse_call("model");
    model_summary m{s_.model.name, s_.model.vocab_size, s_.model.max_context,
                    s_.model.layout.block_tokens};
    codec::encode(m, ctx.getResults().initInfo());
    return kj::READY_NOW;
  }

 private:
  bool allowed() const {
    if (!s_.cfg.keys) return true;
    return session_ && s_.cfg.keys->accepts_digest(*session_);
  }
  kj::Promise<void> refuse_call(const char* method) {
    return refuse(method, session_ ? "the API key of this connection is no longer accepted "
                                     "(the server's keys changed)"
                                   : "this server requires an API key: call login(key) first "
                                     "(tokenmill clients: --api-key or $TOKENMILL_API_KEY)");
  }
  /// Nothing was started: the caller gets "unauthenticated: WHY" (the client library maps
  /// the prefix: is_unauthenticated in client.hpp).
  kj::Promise<void> refuse(const char* method, const char* why) {
    if (s_.metrics) s_.metrics->refused("rpc", errc::unauthenticated);
    spdlog::info("rpc: {} from {} refused: {}", method, peer_, why);
    return kj::Exception(kj::Exception::Type::FAILED, __FILE__, __LINE__,
                         kj::str("unauthenticated: ", why));
  }

  rpc_server::impl& s_;
  std::optional<api_key_digest> session_;
  std::string peer_;
};

/// One client connection: its own vat network (so we control the message size limit).
struct connection {
  kj::Own<kj::AsyncIoStream> stream;
  capnp::TwoPartyVatNetwork network;
  capnp::RpcSystem<capnp::rpc::twoparty::VatId> rpc;
  connection(kj::Own<kj::AsyncIoStream>&& s, capnp::Capability::Client bootstrap,
             capnp::ReaderOptions opts)
      : stream(kj::mv(s)),
        network(*stream, capnp::rpc::twoparty::Side::SERVER, opts),
        rpc(capnp::makeRpcServer(network, kj::mv(bootstrap))) {}
};

/// The numeric address (no port) of the client at the other end of `sock`; "?" when the
/// stream cannot say.
std::string peer_address(kj::AsyncIoStream& sock) {
  sockaddr_storage addr{};
  kj::uint len = sizeof(addr);
  try {
    sock.getpeername(reinterpret_cast<sockaddr*>(&addr), &len);
  } catch (const kj::Exception&) {
    return "?";
  }
  char host[NI_MAXHOST] = "?";
  if (::getnameinfo(reinterpret_cast<const sockaddr*>(&addr), len, host, sizeof(host), nullptr, 0,
                    NI_NUMERICHOST) != 0)
    return "?";
  return host;
}

/// The text of PEM file `path` (given as `option`); an error names both.
result<std::string> read_pem(const std::string& path, const char* option) {
  if (path.empty())
    return error_info{
        errc::invalid_request,
        fmt::format("TLS needs both --tls-cert and --tls-key ({} is missing)", option)};
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return error_info{errc::invalid_request, fmt::format("{} {}: cannot read the file: {}", option,
                                                         path, std::strerror(errno))};
  std::ostringstream buf;
  buf << in.rdbuf();
  return buf.str();
}

}  // namespace

void rpc_server::impl::run(std::promise<result<uint16_t>>& started) {
  // Declaration order matters: everything registered with the event port (listener,
  // connections, the inbox fd) must be destroyed before `io`.
  auto io = kj::setupAsyncIo();
  auto& ws = io.waitScope;
  kj::Own<kj::ConnectionReceiver> listener;
  try {
    auto addr = io.provider->getNetwork().parseAddress(cfg.host, cfg.port).wait(ws);
    listener = addr->listen();
  } catch (const kj::Exception& e) {
    started.set_value(error_info{
        errc::invalid_request,
        fmt::format("cannot listen on {}:{}: {}", cfg.host, cfg.port, e.getDescription().cStr())});
    return;
  }
  // TLS (optional): the keypair and context live as long as the listener.
  kj::Maybe<kj::Own<kj::TlsKeypair>> keypair;
  kj::Maybe<kj::Own<kj::TlsContext>> tls;
  if (!cfg.tls_cert.empty() || !cfg.tls_key.empty()) {
    auto cert = read_pem(cfg.tls_cert, "--tls-cert");
    auto key = read_pem(cfg.tls_key, "--tls-key");
    if (!cert || !key) {
      started.set_value(!cert ? cert.error() : key.error());
      return;
    }
    try {
      auto kp = kj::heap<kj::TlsKeypair>(
          kj::TlsKeypair{kj::TlsPrivateKey(kj::StringPtr(key->c_str())),
                         kj::TlsCertificate(kj::StringPtr(cert->c_str()))});
      kj::TlsContext::Options o;
      o.defaultKeypair = *kp;
      o.timer = io.provider->getTimer();
      o.acceptTimeout = 10 * kj::SECONDS;  // a client that never finishes its handshake
      tls = kj::heap<kj::TlsContext>(kj::mv(o));
      keypair = kj::mv(kp);
    } catch (const kj::Exception& e) {
      started.set_value(error_info{errc::invalid_request,
                                   fmt::format("rpc TLS: cannot use {} and {}: {}", cfg.tls_cert,
                                               cfg.tls_key, e.getDescription().cStr())});
      return;
    }
  }
  kj::TaskSet task_set(*this);
  tasks = &task_set;
  timer = &io.provider->getTimer();
  capnp::ReaderOptions opts;
  opts.traversalLimitInWords = cfg.max_message_bytes / 8;
  started.set_value(static_cast<uint16_t>(listener->getPort()));

  int window = cfg.stream_window_bytes;
  std::function<kj::Promise<void>()> accept_loop = [&]() -> kj::Promise<void> {
    return listener->accept().then(
        [&](kj::Own<kj::AsyncIoStream>&& sock) {
          int one = 1;
          sock->setsockopt(IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
          if (window > 0) sock->setsockopt(SOL_SOCKET, SO_SNDBUF, &window, sizeof(window));
          // One bootstrap Gateway per connection: it knows the client's address.
          capnp::Capability::Client bootstrap =
              kj::heap<gateway_impl>(*this, std::nullopt, peer_address(*sock));
          KJ_IF_MAYBE (t, tls) {
            // The handshake runs beside the accept loop; one that fails (a plaintext client,
            // a bad certificate) drops that connection only.
            task_set.add((*t)->wrapServer(kj::mv(sock))
                             .then(
                                 [&, opts, bootstrap](kj::Own<kj::AsyncIoStream>&& secure) mutable {
                                   auto conn =
                                       kj::heap<connection>(kj::mv(secure), bootstrap, opts);
                                   auto done = conn->network.onDisconnect();
                                   return done.attach(kj::mv(conn));
                                 },
                                 [](kj::Exception&& e) -> kj::Promise<void> {
                                   spdlog::info("rpc: TLS handshake failed, connection dropped: {}",
                                                e.getDescription().cStr());
                                   return kj::READY_NOW;
                                 }));
            return accept_loop();
          }
          auto conn = kj::heap<connection>(kj::mv(sock), bootstrap, opts);
          auto done = conn->network.onDisconnect();
          task_set.add(done.attach(kj::mv(conn)));
          return accept_loop();
        },
        [&](kj::Exception&& e) {
          spdlog::warn("rpc: accept failed: {}", e.getDescription().cStr());
          return io.provider->getTimer().afterDelay(10 * kj::MILLISECONDS).then([&] {
            return accept_loop();
          });
        });
  };
  auto accepting = accept_loop().eagerlyEvaluate(nullptr);

  auto wake = io.lowLevelProvider->wrapInputFd(in->fd());
  auto stop = kj::newPromiseAndFulfiller<void>();
  bool stopping = false;
  uint64_t buf = 0;
  std::function<kj::Promise<void>()> read_loop = [&]() -> kj::Promise<void> {
    return wake->read(&buf, sizeof(buf)).then([&]() -> kj::Promise<void> {
      for (auto& item : in->drain()) {
        std::visit(
            [&](auto& x) {
              using T = std::decay_t<decltype(x)>;
              if constexpr (std::is_same_v<T, token_chunk>)
                on_chunk(x);
              else if constexpr (std::is_same_v<T, request_summary>)
                on_summary(x);
              else if constexpr (std::is_same_v<T, status_result>)
                on_status(x);
              else if constexpr (std::is_same_v<T, drain_result>)
                on_drain(x);
              else
                stopping = true;
            },
            item);
      }
      if (stopping) {
        stop.fulfiller->fulfill();
        return kj::READY_NOW;
      }
      return read_loop();
    });
  };
  auto reading = read_loop().eagerlyEvaluate(nullptr);
  stop.promise.wait(ws);
  // Cancel whatever is still in flight, so no KV blocks stay reserved for a client that
  // will never be answered.
  for (auto& [id, s] : streams)
    cancel(id, *s);
  for (auto& [call, f] : status_calls)
    f->reject(KJ_EXCEPTION(DISCONNECTED, "server stopping"));
  status_calls.clear();
  for (auto& [call, f] : drain_calls)
    f->reject(KJ_EXCEPTION(DISCONNECTED, "server stopping"));
  drain_calls.clear();
  tasks = nullptr;
  timer = nullptr;
}

rpc_server::rpc_server(caf::actor_system& sys, caf::actor router, caf::actor supervisor,
                       std::shared_ptr<const tokenizer> tok, model_info model,
                       rpc_server_config cfg, std::shared_ptr<frontend_metrics> metrics)
    : impl_(std::make_unique<impl>(sys, std::move(router), std::move(supervisor), std::move(tok),
                                   std::move(model), std::move(cfg), std::move(metrics))) {}

rpc_server::~rpc_server() {
  stop();
}

result<uint16_t> rpc_server::start() {
  auto& s = *impl_;
  if (s.thread.joinable()) return error_info{errc::internal, "rpc server already started"};
  s.bridge = spawn_router_bridge(s.sys, s.supervisor,
                                 {[in = s.in](token_chunk&& c) { in->push(std::move(c)); },
                                  [in = s.in](request_summary&& sum) { in->push(std::move(sum)); },
                                  [in = s.in](uint64_t call, result<cluster_status> st) {
                                    in->push(status_result{call, std::move(st)});
                                  },
                                  [in = s.in](uint64_t call, drain_summary r) {
                                    in->push(drain_result{call, std::move(r)});
                                  }});
  std::promise<result<uint16_t>> started;
  auto fut = started.get_future();
  s.thread = std::thread([&s, &started] { s.run(started); });
  auto r = fut.get();
  if (!r) {
    s.thread.join();
    caf::anon_send_exit(s.bridge, caf::exit_reason::user_shutdown);
  }
  return r;
}

void rpc_server::stop() {
  auto& s = *impl_;
  if (!s.thread.joinable()) return;
  s.in->push(stop_event{});
  s.thread.join();
  caf::anon_send_exit(s.bridge, caf::exit_reason::user_shutdown);
}

}  // namespace tokenmill
