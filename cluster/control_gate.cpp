#include "cluster/control_gate.hpp"

#include <atomic>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>

#include "cluster/detail/x509_names.hpp"

namespace tokenmill {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

namespace {

/// Why a TLS handshake failed, in words an operator can act on.
std::string tls_refusal(const boost::system::error_code& e, const std::string& verify_error) {
  if (!verify_error.empty()) return verify_error;
  auto what = e.message();
  auto has = [&](const char* s) { return what.find(s) != std::string::npos; };
  if (has("peer did not return a certificate"))
    return "the peer presented no certificate (a node without security.tls?)";
  if (has("alert unknown ca") || has("alert bad certificate") || has("alert certificate unknown"))
    return "the peer does not accept this node's certificate: it trusts another CA (a node of "
           "another cluster?) (" +
           what + ")";
  if (has("no shared cipher"))
    return "no shared cipher: the peer offered no certificate-based TLS (a node without "
           "security.tls, in CAF's anonymous TLS mode?)";
  if (has("wrong version number") || has("http request") || has("unknown protocol") ||
      has("packet length too long") || has("record layer failure"))
    return "not a TLS handshake (a node without TLS, or not a tokenmill node): " + what;
  if (e == asio::error::eof || e == asio::error::connection_reset)
    return "the peer closed the connection during the TLS handshake (it may have refused "
           "this node's certificate)";
  return "TLS handshake failed: " + what;
}

}  // namespace

struct control_gate::impl : std::enable_shared_from_this<control_gate::impl> {
  control_gate_config cfg;
  asio::io_context io{1};
  /// The server side of mutual TLS (cfg.tls), or an unused context when the gate is plain.
  asio::ssl::context tls_ctx{asio::ssl::context::tls_server};
  std::optional<tcp::acceptor> acceptor;
  std::thread thread;
  mutable std::mutex stats_mu;
  control_gate_stats counters;
  uint32_t unauthenticated = 0;  ///< io thread only
  struct session;
  std::vector<std::weak_ptr<session>> sessions;  ///< io thread only; closed at stop

  void count(uint64_t control_gate_stats::*field) {
    std::lock_guard lk(stats_mu);
    ++(counters.*field);
  }

  /// One relayed connection: peer <-> middleman.
  struct session : std::enable_shared_from_this<session> {
    std::shared_ptr<impl> gate;
    /// The peer's connection; the TLS layer is used only when the gate runs TLS.
    asio::ssl::stream<tcp::socket> peer;
    tcp::socket upstream;
    asio::steady_timer deadline;
    basp_inbound_check check;
    std::string who;
    std::string verify_error;             ///< why the peer's certificate was not accepted
    std::vector<std::string> cert_names;  ///< what the peer's certificate is issued for
    /// How many of check.handshake_payloads() are in gate->cfg.certificates (the first
    /// ones), each with cert_names, until the link closes.
    size_t recorded = 0;
    std::array<uint8_t, 64 << 10> from_peer{}, from_upstream{};
    std::vector<uint8_t> to_upstream;
    bool tls = false;
    bool counted_unauthenticated = true;
    bool closed = false;

    session(std::shared_ptr<impl> g, tcp::socket s)
        : gate(std::move(g)),
          peer(std::move(s), gate->tls_ctx),
          upstream(gate->io),
          deadline(gate->io),
          check(gate->cfg.limits),
          tls(gate->cfg.tls.has_value()) {
      boost::system::error_code ec;
      auto ep = peer.next_layer().remote_endpoint(ec);
      who = ec ? "?" : fmt::format("{}:{}", ep.address().to_string(), ep.port());
    }

    void close(const std::string& why, uint64_t control_gate_stats::*counter = nullptr) {
      if (closed) return;
      closed = true;
      if (counter) {
        gate->count(counter);
        spdlog::warn("control port: closed the connection from {}: {}", who, why);
      }
      if (counted_unauthenticated) {
        counted_unauthenticated = false;
        --gate->unauthenticated;
      }
      for (size_t i = 0; i < recorded; ++i)
        gate->cfg.certificates->link_closed(check.handshake_payloads()[i], cert_names);
      recorded = 0;
      boost::system::error_code ec;
      deadline.cancel();
      peer.next_layer().close(ec);
      upstream.close(ec);
    }

    template <class Buffer, class Handler>
    void read_some_from_peer(const Buffer& b, Handler&& h) {
      if (tls)
        peer.async_read_some(b, std::forward<Handler>(h));
      else
        peer.next_layer().async_read_some(b, std::forward<Handler>(h));
    }
    template <class Buffer, class Handler>
    void write_to_peer(const Buffer& b, Handler&& h) {
      if (tls)
        asio::async_write(peer, b, std::forward<Handler>(h));
      else
        asio::async_write(peer.next_layer(), b, std::forward<Handler>(h));
    }

    void start() {
      auto self = shared_from_this();
      boost::system::error_code ec;
      peer.next_layer().set_option(tcp::no_delay(true), ec);
      deadline.expires_after(gate->cfg.handshake_timeout);
      deadline.async_wait([self](boost::system::error_code e) {
        if (!e && !self->check.handshaken())
          self->close(self->tls ? "no TLS and BASP handshake in time" : "no BASP handshake in time",
                      &control_gate_stats::timed_out);
      });
      if (!tls) return connect_upstream();
      // Record why OpenSSL rejects the peer's certificate, for the log line.
      auto* raw = this;
      peer.set_verify_callback([raw](bool ok, asio::ssl::verify_context& vc) {
        if (!ok && raw->verify_error.empty()) {
          auto* c = vc.native_handle();
          char subject[256] = "?";
          if (X509* cert = X509_STORE_CTX_get_current_cert(c))
            X509_NAME_oneline(X509_get_subject_name(cert), subject, sizeof(subject));
          raw->verify_error = fmt::format(
              "the peer's certificate ({}) is not accepted: {} (not signed by this "
              "cluster's CA?)",
              subject, X509_verify_cert_error_string(X509_STORE_CTX_get_error(c)));
        }
        return ok;
      });
      peer.async_handshake(asio::ssl::stream_base::server, [self](boost::system::error_code e) {
        if (self->closed) return;
        if (e)
          return self->close("refused: " + tls_refusal(e, self->verify_error),
                             &control_gate_stats::tls_refused);
        if (X509* cert = SSL_get_peer_certificate(self->peer.native_handle())) {
          char subject[256] = "?";
          X509_NAME_oneline(X509_get_subject_name(cert), subject, sizeof(subject));
          self->cert_names = detail::x509_names(cert);
          X509_free(cert);
          spdlog::debug("control port: TLS peer {} is {}", self->who, subject);
        }
        self->connect_upstream();
      });
    }

    void connect_upstream() {
      auto self = shared_from_this();
      upstream.async_connect(
          tcp::endpoint(asio::ip::make_address("127.0.0.1"), gate->cfg.upstream_port),
          [self](boost::system::error_code e) {
            if (e) return self->close("the middleman is not reachable: " + e.message());
            boost::system::error_code ignore;
            self->upstream.set_option(tcp::no_delay(true), ignore);
            self->read_peer();
            self->read_upstream();
          });
    }

    /// Peer -> middleman: checked, whole frames only; the next read waits for the write.
    void read_peer() {
      auto self = shared_from_this();
      read_some_from_peer(asio::buffer(from_peer), [self](boost::system::error_code e, size_t n) {
        if (e || self->closed) return self->close("");
        self->to_upstream.clear();
        auto why = self->check.feed(std::span<const uint8_t>(self->from_peer.data(), n),
                                    self->to_upstream);
        if (!why.empty()) return self->close(why, &control_gate_stats::rejected);
        if (self->check.handshaken() && self->counted_unauthenticated) {
          self->counted_unauthenticated = false;
          --self->gate->unauthenticated;
          self->deadline.cancel();
        }
        // Before CAF sees a handshake: the supervisor looks the node up at its join. Every
        // node id this connection names is bound to the certificate it presented.
        if (self->tls && self->gate->cfg.certificates) {
          const auto& ids = self->check.handshake_payloads();
          for (; self->recorded < ids.size(); ++self->recorded)
            if (!self->gate->cfg.certificates->link_opened(ids[self->recorded], self->cert_names))
              return self->close("too many TLS links open to record this one's certificate",
                                 &control_gate_stats::refused);
        }
        if (self->to_upstream.empty()) return self->read_peer();
        asio::async_write(self->upstream, asio::buffer(self->to_upstream),
                          [self](boost::system::error_code we, size_t) {
                            if (we || self->closed) return self->close("");
                            self->read_peer();
                          });
      });
    }

    /// Middleman -> peer: passed through.
    void read_upstream() {
      auto self = shared_from_this();
      upstream.async_read_some(asio::buffer(from_upstream),
                               [self](boost::system::error_code e, size_t n) {
                                 if (e || self->closed) return self->close("");
                                 self->write_to_peer(asio::buffer(self->from_upstream.data(), n),
                                                     [self](boost::system::error_code we, size_t) {
                                                       if (we || self->closed)
                                                         return self->close("");
                                                       self->read_upstream();
                                                     });
                               });
    }
  };

  void accept() {
    auto self = shared_from_this();
    acceptor->async_accept([self](boost::system::error_code e, tcp::socket s) {
      if (e == asio::error::operation_aborted || !self->acceptor->is_open()) return;
      if (!e) {
        self->count(&control_gate_stats::accepted);
        if (self->unauthenticated >= self->cfg.max_unauthenticated) {
          self->count(&control_gate_stats::refused);
          boost::system::error_code ignore;
          s.close(ignore);
        } else {
          ++self->unauthenticated;
          std::erase_if(self->sessions, [](const auto& w) { return w.expired(); });
          auto sess = std::make_shared<session>(self, std::move(s));
          self->sessions.push_back(sess);
          sess->start();
        }
      }
      self->accept();
    });
  }
};

control_gate::control_gate(control_gate_config cfg) : impl_(std::make_shared<impl>()) {
  impl_->cfg = std::move(cfg);
}

control_gate::~control_gate() {
  stop();
}

result<uint16_t> control_gate::start() {
  auto& im = *impl_;
  boost::system::error_code ec;
  if (im.cfg.tls) {
    // Checked first (cluster/security.hpp) so that a bad file is named; then loaded.
    if (auto ok = check_tls_files(*im.cfg.tls); !ok) return ok.error();
    auto& c = im.tls_ctx;
    c.set_options(asio::ssl::context::default_workarounds | asio::ssl::context::no_sslv2 |
                  asio::ssl::context::no_sslv3 | asio::ssl::context::no_tlsv1 |
                  asio::ssl::context::no_tlsv1_1);
    c.use_certificate_chain_file(im.cfg.tls->cert, ec);
    if (!ec) c.use_private_key_file(im.cfg.tls->key, asio::ssl::context::pem, ec);
    if (!ec) c.load_verify_file(im.cfg.tls->ca, ec);
    if (!ec) c.set_verify_mode(asio::ssl::verify_peer | asio::ssl::verify_fail_if_no_peer_cert, ec);
    if (ec)
      return error_info{
          errc::invalid_request,
          fmt::format("control port: cannot load the TLS files (cert {}, key {}, "
                      "ca {}): {}",
                      im.cfg.tls->cert, im.cfg.tls->key, im.cfg.tls->ca, ec.message())};
  }
  tcp::resolver resolver(im.io);
  auto found = resolver.resolve(im.cfg.host, std::to_string(im.cfg.port),
                                tcp::resolver::passive | tcp::resolver::numeric_service, ec);
  if (ec || found.empty())
    return error_info{errc::invalid_request,
                      fmt::format("control port: cannot resolve '{}': {}", im.cfg.host,
                                  ec ? ec.message() : "no address")};
  tcp::endpoint ep = found.begin()->endpoint();
  im.acceptor.emplace(im.io);
  im.acceptor->open(ep.protocol(), ec);
  if (!ec) im.acceptor->set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) im.acceptor->bind(ep, ec);
  if (!ec) im.acceptor->listen(asio::socket_base::max_listen_connections, ec);
  if (ec)
    return error_info{errc::unavailable, fmt::format("control port: cannot listen on {}:{}: {}",
                                                     im.cfg.host, im.cfg.port, ec.message())};
  uint16_t port = im.acceptor->local_endpoint().port();
  im.accept();
  im.thread = std::thread([i = impl_] { i->io.run(); });
  return port;
}

void control_gate::stop() {
  auto& im = *impl_;
  if (!im.thread.joinable()) return;
  // Closing every socket ends every pending operation; run() then returns by itself and
  // the sessions (which hold the gate) are freed.
  asio::post(im.io, [i = impl_] {
    boost::system::error_code ec;
    if (i->acceptor) i->acceptor->close(ec);
    for (auto& w : i->sessions)
      if (auto s = w.lock()) s->close("");
    i->sessions.clear();
  });
  im.thread.join();
}

control_gate_stats control_gate::stats() const {
  std::lock_guard lk(impl_->stats_mu);
  return impl_->counters;
}

}  // namespace tokenmill
