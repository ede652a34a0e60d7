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
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>

namespace tokenmill {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

struct control_gate::impl : std::enable_shared_from_this<control_gate::impl> {
  control_gate_config cfg;
  asio::io_context io{1};
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
    tcp::socket peer, upstream;
    asio::steady_timer deadline;
    basp_inbound_check check;
    std::string who;
    std::array<uint8_t, 64 << 10> from_peer{}, from_upstream{};
    std::vector<uint8_t> to_upstream;
    bool counted_unauthenticated = true;
    bool closed = false;

    session(std::shared_ptr<impl> g, tcp::socket s)
        : gate(std::move(g)),
          peer(std::move(s)),
          upstream(gate->io),
          deadline(gate->io),
          check(gate->cfg.limits) {
      boost::system::error_code ec;
      auto ep = peer.remote_endpoint(ec);
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
      boost::system::error_code ec;
      deadline.cancel();
      peer.close(ec);
      upstream.close(ec);
    }

    void start() {
      auto self = shared_from_this();
      boost::system::error_code ec;
      peer.set_option(tcp::no_delay(true), ec);
      deadline.expires_after(gate->cfg.handshake_timeout);
      deadline.async_wait([self](boost::system::error_code e) {
        if (!e && !self->check.handshaken())
          self->close("no BASP handshake in time", &control_gate_stats::timed_out);
      });
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
      peer.async_read_some(asio::buffer(from_peer), [self](boost::system::error_code e, size_t n) {
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
      upstream.async_read_some(
          asio::buffer(from_upstream), [self](boost::system::error_code e, size_t n) {
            if (e || self->closed) return self->close("");
            asio::async_write(self->peer, asio::buffer(self->from_upstream.data(), n),
                              [self](boost::system::error_code we, size_t) {
                                if (we || self->closed) return self->close("");
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
