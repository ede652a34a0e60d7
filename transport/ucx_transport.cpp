#include "transport/ucx_transport.hpp"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <mutex>
#include <source_location>
#include <thread>
#include <unordered_map>
#include <vector>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <ucp/api/ucp.h>

namespace tokenmill {

namespace {

using clock_type = std::chrono::steady_clock;

/// The one place a ucs_status_t becomes an error_info (STYLE.md §7).
error_info ucs_error(ucs_status_t st, std::string_view what,
                     std::source_location loc = std::source_location::current()) {
  errc code = errc::unavailable;
  switch (st) {
    case UCS_ERR_TIMED_OUT:
    case UCS_ERR_ENDPOINT_TIMEOUT:
      code = errc::timeout;
      break;
    case UCS_ERR_INVALID_PARAM:
    case UCS_ERR_NO_MEMORY:
    case UCS_ERR_INVALID_ADDR:
      code = errc::internal;
      break;
    default:
      break;
  }
  const char* file = loc.file_name();
  if (const char* slash = std::strrchr(file, '/')) file = slash + 1;
  return {code, fmt::format("ucx: {}: {} ({}:{})", what, ucs_status_string(st), file, loc.line())};
}

/// RAII deleters for every UCX handle.
struct context_deleter {
  void operator()(ucp_context_h c) const { ucp_cleanup(c); }
};
struct worker_deleter {
  void operator()(ucp_worker_h w) const { ucp_worker_destroy(w); }
};
struct config_deleter {
  void operator()(ucp_config_t* c) const { ucp_config_release(c); }
};
struct mem_deleter {
  ucp_context_h context = nullptr;
  void operator()(ucp_mem_h m) const { ucp_mem_unmap(context, m); }
};
struct rkey_deleter {
  void operator()(ucp_rkey_h k) const { ucp_rkey_destroy(k); }
};
struct rkey_buffer_deleter {
  void operator()(void* b) const { ucp_rkey_buffer_release(b); }
};
struct address_deleter {
  ucp_worker_h worker = nullptr;
  void operator()(ucp_address_t* a) const { ucp_worker_release_address(worker, a); }
};

using context_ptr = std::unique_ptr<ucp_context, context_deleter>;
using worker_ptr = std::unique_ptr<ucp_worker, worker_deleter>;
using config_ptr = std::unique_ptr<ucp_config_t, config_deleter>;
using mem_ptr = std::unique_ptr<ucp_mem, mem_deleter>;
using rkey_ptr = std::unique_ptr<ucp_rkey, rkey_deleter>;
using rkey_buffer_ptr = std::unique_ptr<void, rkey_buffer_deleter>;
using address_ptr = std::unique_ptr<ucp_address_t, address_deleter>;

/// Closes a file descriptor on destruction.
struct fd_guard {
  int fd = -1;
  fd_guard() = default;
  explicit fd_guard(int f) : fd(f) {}
  fd_guard(const fd_guard&) = delete;
  fd_guard& operator=(const fd_guard&) = delete;
  ~fd_guard() {
    if (fd >= 0) ::close(fd);
  }
};

/// A registered pool's local address range.
struct pool_range {
  const std::byte* begin = nullptr;
  const std::byte* end = nullptr;
};

}  // namespace

struct ucx_transport::impl {
  /// Closes an endpoint without progressing (no re-entrancy): the close request is
  /// finished later by the loop.
  struct ep_closer {
    impl* owner;  // no initializer: keeps it default-constructible inside incomplete impl
    bool force;   ///< a failed endpoint cannot flush: close it without telling the peer
    void operator()(ucp_ep_h ep) const { owner->close_endpoint(ep, force); }
  };
  using ep_ptr = std::unique_ptr<ucp_ep, ep_closer>;

  /// One peer worker: its endpoint and the rkeys unpacked for it.
  struct endpoint_state {
    impl* owner = nullptr;
    std::vector<uint8_t> address;
    std::map<std::vector<uint8_t>, rkey_ptr> rkeys;  ///< by descriptor remote_key bytes
    ep_ptr ep;
    bool failed = false;
  };

  /// A write between submission and completion.
  struct pending_op {
    endpoint_state* ep = nullptr;
    completion done;
    std::vector<block_id> dst;
    clock_type::time_point deadline;
  };

  /// A unit of work for the progress thread; `cancelled` is true when the transport
  /// stops before it ran.
  using task = std::function<void(bool cancelled)>;

  ucx_config cfg_;
  context_ptr context_;
  worker_ptr worker_;
  std::vector<uint8_t> worker_address_;
  int worker_efd_ = -1;
  fd_guard wake_fd_;

  std::mutex mutex_;  ///< guards queue_, stop_, pools_
  std::deque<task> queue_;
  bool stop_ = false;
  std::vector<pool_range> pools_;

  // Progress thread only.
  std::vector<mem_ptr> mems_;
  std::map<std::vector<uint8_t>, std::unique_ptr<endpoint_state>> eps_;
  std::vector<std::unique_ptr<endpoint_state>> dead_eps_;  ///< kept until shutdown
  std::unordered_map<uint64_t, pending_op> ops_;
  std::unordered_map<void*, uint64_t> flush_reqs_;  ///< in-flight flush -> op id
  std::vector<void*> close_reqs_;
  uint64_t next_op_ = 1;

  std::thread thread_;

  ~impl() {
    {
      std::lock_guard lock{mutex_};
      stop_ = true;
    }
    wake();
    if (thread_.joinable()) thread_.join();
  }

  void wake() {
    uint64_t one = 1;
    [[maybe_unused]] auto n = ::write(wake_fd_.fd, &one, sizeof(one));
  }

  void submit(task t) {
    bool run = true;
    {
      std::lock_guard lock{mutex_};
      if (stop_)
        run = false;
      else
        queue_.push_back(std::move(t));
    }
    if (run)
      wake();
    else
      t(true);
  }

  // ---------------------------------------------------------------- progress thread
  void run() {
    for (;;) {
      std::deque<task> tasks;
      bool stop = false;
      {
        std::lock_guard lock{mutex_};
        tasks.swap(queue_);
        stop = stop_;
      }
      for (auto& t : tasks)
        t(false);
      if (stop) break;
      check_timeouts();
      reap_dead_endpoints();
      if (cfg_.busy_poll) {
        ucp_worker_progress(worker_.get());
        continue;
      }
      while (ucp_worker_progress(worker_.get()) != 0) {
      }
      ucs_status_t st = ucp_worker_arm(worker_.get());
      if (st == UCS_ERR_BUSY) continue;
      // Wake on the queue's eventfd or worker events; at most 10 ms so deadlines are checked.
      pollfd fds[2] = {{wake_fd_.fd, POLLIN, 0}, {worker_efd_, POLLIN, 0}};
      int n = ::poll(fds, st == UCS_OK ? 2 : 1, 10);
      if (n > 0 && (fds[0].revents & POLLIN) != 0) {
        uint64_t v = 0;
        [[maybe_unused]] auto r = ::read(wake_fd_.fd, &v, sizeof(v));
      }
    }
    shutdown();
  }

  void shutdown() {
    std::deque<task> tasks;
    {
      std::lock_guard lock{mutex_};
      tasks.swap(queue_);
    }
    for (auto& t : tasks)
      t(true);
    std::vector<uint64_t> ids;
    for (auto& [id, op] : ops_)
      ids.push_back(id);
    for (auto id : ids)
      finish(id,
             error_info{errc::unavailable, "ucx: transport stopped before the write completed"});
    flush_reqs_.clear();
    // rkeys before their endpoints, endpoints before the worker.
    for (auto& [addr, ep] : eps_)
      ep->rkeys.clear();
    for (auto& ep : dead_eps_)
      ep->rkeys.clear();
    for (auto& [addr, ep] : eps_)
      ep->ep.reset();
    for (auto& ep : dead_eps_)
      ep->ep.reset();
    auto deadline = clock_type::now() + std::chrono::seconds(1);
    while (!close_reqs_.empty() && clock_type::now() < deadline) {
      ucp_worker_progress(worker_.get());
      reap_close_requests();
    }
    eps_.clear();
    dead_eps_.clear();
    mems_.clear();
  }

  /// A live endpoint closes gracefully (flush, then tell the peer) so the peer's wire-up
  /// state is not torn mid-handshake: UCX 1.13 asserts on a wire-up reply to a vanished
  /// peer. The close request is finished by the loop (or shutdown, bounded).
  void close_endpoint(ucp_ep_h ep, bool force) {
    ucp_request_param_t p{};
    p.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    p.flags = force ? UCP_EP_CLOSE_FLAG_FORCE : 0;
    ucs_status_ptr_t req = ucp_ep_close_nbx(ep, &p);
    if (req != nullptr && !UCS_PTR_IS_ERR(req)) close_reqs_.push_back(req);
  }

  void reap_close_requests() {
    std::erase_if(close_reqs_, [](void* req) {
      if (ucp_request_check_status(req) == UCS_INPROGRESS) return false;
      ucp_request_free(req);
      return true;
    });
  }

  void reap_dead_endpoints() {
    for (auto& ep : dead_eps_) {
      if (ep->ep) {
        ep->rkeys.clear();
        ep->ep.reset();
      }
    }
    reap_close_requests();
  }

  void check_timeouts() {
    if (ops_.empty()) return;
    auto now = clock_type::now();
    std::vector<uint64_t> expired;
    for (auto& [id, op] : ops_)
      if (op.deadline <= now) expired.push_back(id);
    for (auto id : expired)
      finish(id, error_info{errc::timeout, fmt::format("ucx: write not completed within {} ms",
                                                       cfg_.op_timeout.count())});
  }

  /// Runs an op's completion exactly once and forgets it; a late flush is ignored.
  void finish(uint64_t id, error_info err) {
    auto it = ops_.find(id);
    if (it == ops_.end()) return;
    pending_op op = std::move(it->second);
    ops_.erase(it);
    std::erase_if(flush_reqs_, [id](const auto& kv) { return kv.second == id; });
    kv_payload p;
    if (!err) p.dst_blocks = std::move(op.dst);
    op.done(std::move(err), std::move(p));
  }

  static void on_flush(void* request, ucs_status_t status, void* user_data) {
    auto* self = static_cast<impl*>(user_data);
    auto it = self->flush_reqs_.find(request);
    if (it != self->flush_reqs_.end()) {
      uint64_t id = it->second;
      self->flush_reqs_.erase(it);
      self->finish(id, status == UCS_OK ? error_info{} : ucs_error(status, "flush"));
    }
    ucp_request_free(request);
  }

  static void on_ep_error(void* arg, ucp_ep_h, ucs_status_t status) {
    auto* state = static_cast<endpoint_state*>(arg);
    state->owner->fail_endpoint(state, ucs_error(status, "endpoint failed"));
  }

  void fail_endpoint(endpoint_state* state, error_info err) {
    if (state->failed) return;
    state->failed = true;
    state->ep.get_deleter().force = true;
    err.code = errc::unavailable;
    std::vector<uint64_t> ids;
    for (auto& [id, op] : ops_)
      if (op.ep == state) ids.push_back(id);
    // An idle endpoint to a peer that left is routine; failing writes is worth a warning.
    if (ids.empty())
      spdlog::debug("{}", err.message);
    else
      spdlog::warn("{} ({} writes failed)", err.message, ids.size());
    for (auto id : ids)
      finish(id, err);
    auto it = eps_.find(state->address);
    if (it != eps_.end() && it->second.get() == state) {
      dead_eps_.push_back(std::move(it->second));
      eps_.erase(it);
    }
  }

  result<endpoint_state*> endpoint_for(const std::vector<uint8_t>& address) {
    auto it = eps_.find(address);
    if (it != eps_.end()) return it->second.get();
    auto state = std::make_unique<endpoint_state>();
    state->owner = this;
    state->address = address;
    state->ep = ep_ptr{nullptr, ep_closer{this, false}};
    ucp_ep_params_t p{};
    p.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
    p.address = reinterpret_cast<const ucp_address_t*>(state->address.data());
    p.err_mode = cfg_.peer_error_handling ? UCP_ERR_HANDLING_MODE_PEER : UCP_ERR_HANDLING_MODE_NONE;
    if (cfg_.peer_error_handling) {
      p.field_mask |= UCP_EP_PARAM_FIELD_ERR_HANDLER;
      p.err_handler.cb = &on_ep_error;
      p.err_handler.arg = state.get();
    }
    ucp_ep_h ep = nullptr;
    ucs_status_t st = ucp_ep_create(worker_.get(), &p, &ep);
    if (st != UCS_OK) {
      auto err = ucs_error(st, "ucp_ep_create");
      err.code = errc::unavailable;
      spdlog::warn("{}", err.message);
      return err;
    }
    state->ep.reset(ep);
    auto* raw = state.get();
    eps_.emplace(address, std::move(state));
    return raw;
  }

  result<ucp_rkey_h> rkey_for(endpoint_state& ep, const std::vector<uint8_t>& remote_key) {
    auto it = ep.rkeys.find(remote_key);
    if (it != ep.rkeys.end()) return it->second.get();
    ucp_rkey_h rkey = nullptr;
    ucs_status_t st = ucp_ep_rkey_unpack(ep.ep.get(), remote_key.data() + 8, &rkey);
    if (st != UCS_OK) {
      auto err = ucs_error(st, "ucp_ep_rkey_unpack");
      spdlog::warn("{}", err.message);
      return err;
    }
    ep.rkeys.emplace(remote_key, rkey_ptr{rkey});
    return rkey;
  }

  /// Everything a validated write needs on the progress thread.
  struct write_request {
    const std::byte* local = nullptr;
    size_t block_bytes = 0;
    std::vector<block_id> src;
    std::vector<block_id> dst;
    std::vector<uint8_t> remote_key;
    std::vector<uint8_t> address;
    completion done;
  };

  void start_write(write_request& w) {
    auto fail = [&](error_info err) { w.done(std::move(err), {}); };
    auto ep = endpoint_for(w.address);
    if (!ep) return fail(ep.error());
    endpoint_state& state = **ep;
    auto rkey = rkey_for(state, w.remote_key);
    if (!rkey) return fail(rkey.error());
    uint64_t base = 0;
    for (int i = 7; i >= 0; --i)
      base = (base << 8) | w.remote_key[static_cast<size_t>(i)];

    for (size_t i = 0; i < w.src.size();) {
      size_t run = 1;
      while (i + run < w.src.size() && w.src[i + run] == w.src[i] + run &&
             w.dst[i + run] == w.dst[i] + run)
        ++run;
      ucp_request_param_t p{};
      const std::byte* from = w.local + size_t{w.src[i]} * w.block_bytes;
      uint64_t to = base + uint64_t{w.dst[i]} * w.block_bytes;
      ucs_status_ptr_t req = ucp_put_nbx(state.ep.get(), from, run * w.block_bytes, to, *rkey, &p);
      if (UCS_PTR_IS_ERR(req)) return fail(ucs_error(UCS_PTR_STATUS(req), "ucp_put_nbx"));
      // The flush below covers completion; the request is released when it is done.
      if (req != nullptr) ucp_request_free(req);
      i += run;
    }

    uint64_t id = next_op_++;
    ops_.emplace(id, pending_op{&state, std::move(w.done), std::move(w.dst),
                                clock_type::now() + cfg_.op_timeout});
    ucp_request_param_t p{};
    p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    p.cb.send = &on_flush;
    p.user_data = this;
    ucs_status_ptr_t req = ucp_ep_flush_nbx(state.ep.get(), &p);
    if (req == nullptr) return finish(id, {});
    if (UCS_PTR_IS_ERR(req)) return finish(id, ucs_error(UCS_PTR_STATUS(req), "ucp_ep_flush_nbx"));
    flush_reqs_.emplace(req, id);
  }

  /// Creates the endpoint to `address` and flushes it (wire-up complete before the first
  /// write); the flush is tracked like a write whose completion nobody waits for.
  void start_connect(const std::vector<uint8_t>& address) {
    auto ep = endpoint_for(address);
    if (!ep) return;  // endpoint_for logged why; the first write will report it
    endpoint_state& state = **ep;
    uint64_t id = next_op_++;
    ops_.emplace(
        id,
        pending_op{&state, [](error_info, kv_payload) {}, {}, clock_type::now() + cfg_.op_timeout});
    ucp_request_param_t p{};
    p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    p.cb.send = &on_flush;
    p.user_data = this;
    ucs_status_ptr_t req = ucp_ep_flush_nbx(state.ep.get(), &p);
    if (req == nullptr) return finish(id, {});
    if (UCS_PTR_IS_ERR(req)) return finish(id, ucs_error(UCS_PTR_STATUS(req), "ucp_ep_flush_nbx"));
    flush_reqs_.emplace(req, id);
  }

  pool_descriptor do_register(worker_id owner, std::span<std::byte> memory, size_t block_bytes) {
    pool_descriptor d;
    d.owner = owner;
    d.block_bytes = block_bytes;
    ucp_mem_map_params_t mp{};
    mp.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH;
    mp.address = memory.data();
    mp.length = memory.size();
    ucp_mem_h memh = nullptr;
    ucs_status_t st = ucp_mem_map(context_.get(), &mp, &memh);
    if (st != UCS_OK) {
      spdlog::error("{}", ucs_error(st, "ucp_mem_map").message);
      return d;
    }
    mem_ptr mem{memh, mem_deleter{context_.get()}};
    void* buf = nullptr;
    size_t len = 0;
    st = ucp_rkey_pack(context_.get(), memh, &buf, &len);
    if (st != UCS_OK) {
      spdlog::error("{}", ucs_error(st, "ucp_rkey_pack").message);
      return d;
    }
    rkey_buffer_ptr packed{buf};
    auto base = reinterpret_cast<uint64_t>(memory.data());
    d.remote_key.resize(8 + len);
    for (size_t i = 0; i < 8; ++i)
      d.remote_key[i] = static_cast<uint8_t>(base >> (8 * i));
    std::memcpy(d.remote_key.data() + 8, buf, len);
    d.worker_address = worker_address_;
    d.num_blocks = static_cast<uint32_t>(memory.size() / block_bytes);
    mems_.push_back(std::move(mem));
    {
      std::lock_guard lock{mutex_};
      pools_.push_back({memory.data(), memory.data() + memory.size()});
    }
    return d;
  }

  bool inside_pool(std::span<const std::byte> local) {
    std::lock_guard lock{mutex_};
    for (auto& r : pools_)
      if (local.data() >= r.begin && local.data() + local.size() <= r.end) return true;
    return false;
  }
};

ucx_transport::ucx_transport(std::unique_ptr<impl> impl) : impl_(std::move(impl)) {}

ucx_transport::~ucx_transport() = default;

result<std::shared_ptr<ucx_transport>> ucx_transport::create(ucx_config cfg) {
  auto im = std::make_unique<impl>();
  im->cfg_ = cfg;
  ucp_config_t* raw_config = nullptr;
  ucs_status_t st = ucp_config_read(nullptr, nullptr, &raw_config);  // honours UCX_* env
  if (st != UCS_OK) return ucs_error(st, "ucp_config_read");
  config_ptr config{raw_config};
  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES;
  params.features = UCP_FEATURE_RMA | UCP_FEATURE_WAKEUP;
  ucp_context_h context = nullptr;
  st = ucp_init(&params, config.get(), &context);
  if (st != UCS_OK) return ucs_error(st, "ucp_init");
  im->context_.reset(context);

  ucp_worker_params_t wp{};
  wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  wp.thread_mode = UCS_THREAD_MODE_SINGLE;  // only the progress thread touches it
  ucp_worker_h worker = nullptr;
  st = ucp_worker_create(context, &wp, &worker);
  if (st != UCS_OK) return ucs_error(st, "ucp_worker_create");
  im->worker_.reset(worker);

  ucp_address_t* addr = nullptr;
  size_t addr_len = 0;
  st = ucp_worker_get_address(worker, &addr, &addr_len);
  if (st != UCS_OK) return ucs_error(st, "ucp_worker_get_address");
  {
    address_ptr address{addr, address_deleter{worker}};
    auto* bytes = reinterpret_cast<const uint8_t*>(addr);
    im->worker_address_.assign(bytes, bytes + addr_len);
  }

  if (!cfg.busy_poll) {
    st = ucp_worker_get_efd(worker, &im->worker_efd_);
    if (st != UCS_OK) return ucs_error(st, "ucp_worker_get_efd");
  }
  im->wake_fd_.fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (im->wake_fd_.fd < 0)
    return error_info{errc::unavailable, fmt::format("ucx: eventfd: {}", std::strerror(errno))};
  auto* raw = im.get();
  im->thread_ = std::thread([raw] { raw->run(); });
  return std::shared_ptr<ucx_transport>(new ucx_transport(std::move(im)));
}

pool_descriptor ucx_transport::register_pool(worker_id owner, std::span<std::byte> memory,
                                             size_t block_bytes) {
  if (memory.empty() || block_bytes == 0 || memory.size() % block_bytes != 0) {
    spdlog::error("ucx: pool of {} B for worker {} is not a whole number of {} B blocks",
                  memory.size(), owner, block_bytes);
    pool_descriptor d;
    d.owner = owner;
    d.block_bytes = block_bytes;
    return d;
  }
  auto promise = std::make_shared<std::promise<pool_descriptor>>();
  auto future = promise->get_future();
  impl* im = impl_.get();
  impl_->submit([im, promise, owner, memory, block_bytes](bool cancelled) {
    if (cancelled) {
      pool_descriptor d;
      d.owner = owner;
      d.block_bytes = block_bytes;
      promise->set_value(std::move(d));
      return;
    }
    promise->set_value(im->do_register(owner, memory, block_bytes));
  });
  return future.get();
}

void ucx_transport::connect(const pool_descriptor& peer) {
  if (peer.worker_address.empty()) return;
  impl* im = impl_.get();
  impl_->submit([im, address = peer.worker_address](bool cancelled) {
    if (!cancelled) im->start_connect(address);
  });
}

void ucx_transport::write(std::span<const std::byte> local, size_t block_bytes,
                          std::span<const block_id> src, const pool_descriptor& peer,
                          std::span<const block_id> dst, completion done) {
  auto invalid = [&](std::string msg) {
    done(error_info{errc::invalid_request, "ucx write: " + std::move(msg)}, {});
  };
  if (src.size() != dst.size())
    return invalid(fmt::format("{} source blocks for {} destinations", src.size(), dst.size()));
  if (block_bytes == 0 || peer.block_bytes != block_bytes)
    return invalid(fmt::format("block size {} B does not match the peer's {} B", block_bytes,
                               peer.block_bytes));
  if (peer.remote_key.size() <= 8 || peer.worker_address.empty())
    return invalid(
        fmt::format("peer descriptor of worker {} has no remote key or address", peer.owner));
  size_t local_blocks = local.size() / block_bytes;
  for (size_t i = 0; i < src.size(); ++i)
    if (src[i] >= local_blocks || dst[i] >= peer.num_blocks)
      return invalid(fmt::format("block {}->{} out of range ({} local, {} peer)", src[i], dst[i],
                                 local_blocks, peer.num_blocks));
  if (!impl_->inside_pool(local)) return invalid("local memory is not inside a registered pool");
  if (src.empty()) return done(error_info{}, kv_payload{});

  auto req = std::make_shared<impl::write_request>();
  req->local = local.data();
  req->block_bytes = block_bytes;
  req->src.assign(src.begin(), src.end());
  req->dst.assign(dst.begin(), dst.end());
  req->remote_key = peer.remote_key;
  req->address = peer.worker_address;
  req->done = std::move(done);
  impl* im = impl_.get();
  impl_->submit([im, req](bool cancelled) {
    if (cancelled)
      return req->done(error_info{errc::unavailable, "ucx: transport stopped before the write"},
                       {});
    im->start_write(*req);
  });
}

error_info ucx_transport::deliver(const kv_payload& payload, std::span<std::byte> local,
                                  size_t block_bytes) {
  if (block_bytes == 0) return {errc::invalid_request, "ucx deliver: block size 0"};
  if (!payload.bytes.empty())
    return {errc::kv_corrupt,
            fmt::format("ucx deliver: a one-sided payload carries {} B", payload.bytes.size())};
  size_t local_blocks = local.size() / block_bytes;
  for (auto b : payload.dst_blocks)
    if (b >= local_blocks)
      return {
          errc::kv_corrupt,
          fmt::format("ucx deliver: payload names block {} of a {}-block pool", b, local_blocks)};
  return {};
}

}  // namespace tokenmill
