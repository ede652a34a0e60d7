// The ucx transport's progress thread (STYLE.md §6): the only thread that calls UCX. It
// runs the queued tasks, starts writes as the window allows, issues puts and one flush per
// endpoint, fails writes past their deadline, and reaps failed endpoints.
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "transport/detail/ucx_impl.hpp"

namespace tokenmill {

using ucx::clock_type;
using ucx::max_wait;
using ucx::piece_bytes;
using ucx::registered_pool;
using ucx::ucs_error;

namespace {

/// Block ids as runs for log lines: "0-3,7" (the first 16 runs).
std::string block_list(const std::vector<block_id>& ids) {
  std::string out;
  size_t runs = 0;
  for (size_t i = 0; i < ids.size();) {
    size_t n = 1;
    while (i + n < ids.size() && ids[i + n] == ids[i] + n)
      ++n;
    if (++runs > 16) {
      out += ",...";
      break;
    }
    if (!out.empty()) out += ',';
    out += n == 1 ? fmt::format("{}", ids[i]) : fmt::format("{}-{}", ids[i], ids[i] + n - 1);
    i += n;
  }
  return out;
}

int64_t ms_since(clock_type::time_point t, clock_type::time_point now) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(now - t).count();
}

}  // namespace

ucx_transport::impl::~impl() {
  if (staging_) staging_->stop();
  {
    std::lock_guard lock{mutex_};
    stop_ = true;
  }
  wake();
  if (thread_.joinable()) thread_.join();
}

void ucx_transport::impl::wake() {
  uint64_t one = 1;
  [[maybe_unused]] auto n = ::write(wake_fd_.fd, &one, sizeof(one));
}

void ucx_transport::impl::submit(task t) {
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

kv_transport_stats ucx_transport::impl::stats() const {
  kv_transport_stats s;
  s.bytes_written = bytes_written_.load(std::memory_order_relaxed);
  s.writes_completed = writes_completed_.load(std::memory_order_relaxed);
  s.writes_failed = writes_failed_.load(std::memory_order_relaxed);
  s.timeouts = timeouts_.load(std::memory_order_relaxed);
  s.stalls = stalls_.load(std::memory_order_relaxed);
  s.peers_refused = peers_refused_.load(std::memory_order_relaxed);
  s.writes_in_flight = writes_in_flight_.load(std::memory_order_relaxed);
  s.writes_queued = writes_queued_.load(std::memory_order_relaxed);
  s.bytes_in_flight = bytes_in_flight_.load(std::memory_order_relaxed);
  return s;
}

void ucx_transport::impl::count(const error_info& err, uint64_t bytes) {
  if (err) {
    writes_failed_.fetch_add(1, std::memory_order_relaxed);
    if (err.code == errc::timeout) timeouts_.fetch_add(1, std::memory_order_relaxed);
  } else {
    writes_completed_.fetch_add(1, std::memory_order_relaxed);
    bytes_written_.fetch_add(bytes, std::memory_order_relaxed);
  }
}

const registered_pool* ucx_transport::impl::find_pool(std::span<const std::byte> range) {
  std::lock_guard lock{mutex_};
  for (auto& r : pools_)
    if (range.data() >= r->begin && range.data() + range.size() <= r->end) return r.get();
  return nullptr;
}

void ucx_transport::impl::start_staging() {
  staging_ = std::make_unique<staging_thread>(
      piece_bytes,
      [this](uint64_t id, std::vector<transfer_segment> segs, bool last) {
        submit([this, id, segs = std::move(segs), last](bool cancelled) {
          if (!cancelled) on_piece(id, segs, last);
        });
      },
      [this](uint64_t id, error_info err) {
        submit([this, id, err](bool cancelled) {
          if (!cancelled) finish(id, err);
        });
      });
}

void ucx_transport::impl::run() {
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
    admit();
    issue_flushes();
    auto next = check_deadlines();
    reap_dead_endpoints();
    if (cfg_.busy_poll) {
      ucp_worker_progress(worker_.get());
      continue;
    }
    while (ucp_worker_progress(worker_.get()) != 0) {
    }
    if (can_admit()) continue;  // completions made room in the window
    ucs_status_t st = ucp_worker_arm(worker_.get());
    if (st == UCS_ERR_BUSY) continue;
    // Wake on the queue's eventfd, worker events, or the nearest deadline or stall check.
    int timeout_ms = wait_timeout_ms(clock_type::now(), next, max_wait);
    if (st != UCS_OK || !close_reqs_.empty() || !dead_eps_.empty())
      timeout_ms = std::min(timeout_ms, 10);
    pollfd fds[2] = {{wake_fd_.fd, POLLIN, 0}, {worker_efd_, POLLIN, 0}};
    int n = ::poll(fds, st == UCS_OK ? 2 : 1, timeout_ms);
    if (n > 0 && (fds[0].revents & POLLIN) != 0) {
      uint64_t v = 0;
      [[maybe_unused]] auto r = ::read(wake_fd_.fd, &v, sizeof(v));
    }
  }
  shutdown();
}

void ucx_transport::impl::shutdown() {
  std::deque<task> tasks;
  {
    std::lock_guard lock{mutex_};
    tasks.swap(queue_);
  }
  for (auto& t : tasks)
    t(true);
  std::vector<uint64_t> ids;
  for (auto& op : waiting_)
    ids.push_back(op->id);
  for (auto& [id, op] : active_)
    ids.push_back(id);
  std::sort(ids.begin(), ids.end());
  for (auto id : ids)
    finish(id, error_info{errc::unavailable, "ucx: transport stopped before the write completed"});
  put_reqs_.clear();
  flush_reqs_.clear();
  flush_eps_.clear();
  // rkeys before their endpoints, endpoints before the worker.
  for (auto& [addr, ep] : eps_)
    ep->rkeys.clear();
  for (auto& d : dead_eps_)
    d.state->rkeys.clear();
  for (auto& [addr, ep] : eps_)
    ep->ep.reset();
  for (auto& d : dead_eps_) {
    d.state->ep.reset();
    if (d.close_req != nullptr) close_reqs_.push_back(std::exchange(d.close_req, nullptr));
  }
  auto deadline = clock_type::now() + std::chrono::seconds(1);
  while (!close_reqs_.empty() && clock_type::now() < deadline) {
    ucp_worker_progress(worker_.get());
    reap_close_requests();
  }
  eps_.clear();
  dead_eps_.clear();
  mems_.clear();
}

void* ucx_transport::impl::close_endpoint(ucp_ep_h ep, bool force) {
  ucp_request_param_t p{};
  p.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
  p.flags = force ? UCP_EP_CLOSE_FLAG_FORCE : 0;
  ucs_status_ptr_t req = ucp_ep_close_nbx(ep, &p);
  return req != nullptr && !UCS_PTR_IS_ERR(req) ? req : nullptr;
}

void ucx_transport::impl::reap_close_requests() {
  std::erase_if(close_reqs_, [](void* req) {
    if (ucp_request_check_status(req) == UCS_INPROGRESS) return false;
    ucp_request_free(req);
    return true;
  });
}

void ucx_transport::impl::reap_dead_endpoints() {
  for (auto& d : dead_eps_) {
    if (d.state->ep) {
      d.state->rkeys.clear();
      d.close_req = close_endpoint(d.state->ep.release(), true);
    }
  }
  std::erase_if(dead_eps_, [](dead_endpoint& d) {
    if (d.close_req != nullptr) {
      if (ucp_request_check_status(d.close_req) == UCS_INPROGRESS) return false;
      ucp_request_free(d.close_req);
    }
    return true;
  });
  reap_close_requests();
}

error_info ucx_transport::impl::timeout_error(const write_op& op) const {
  return {errc::timeout, fmt::format("ucx: write of {} B to worker {} not completed within {} ms",
                                     op.bytes, op.peer, cfg_.op_timeout.count())};
}

clock_type::time_point ucx_transport::impl::check_deadlines() {
  auto now = clock_type::now();
  auto next = now + max_wait;
  while (!waiting_.empty() && waiting_.front()->deadline <= now)
    finish(waiting_.front()->id, timeout_error(*waiting_.front()));
  if (!waiting_.empty()) next = std::min(next, waiting_.front()->deadline);
  std::vector<uint64_t> expired;
  for (auto& [id, op] : active_) {
    const bool watch_stall =
        !(op->internal || op->stall_reported || op->ep == nullptr || op->ep->failed);
    const auto c =
        check_transfer(now, op->deadline, op->last_progress, cfg_.stall_timeout, watch_stall);
    if (c.state == transfer_state::timed_out) {
      expired.push_back(id);
      continue;
    }
    next = std::min(next, c.next);
    if (c.state != transfer_state::stalled) continue;
    op->stall_reported = true;
    stalls_.fetch_add(1, std::memory_order_relaxed);
    spdlog::warn(
        "ucx: write of {} B to worker {} (blocks {}) stalled: no progress for {} ms, started "
        "{} ms ago; its endpoint is still connected",
        op->bytes, op->peer, block_list(op->dst), ms_since(op->last_progress, now),
        ms_since(op->started, now));
  }
  for (auto id : expired) {
    auto it = active_.find(id);
    if (it != active_.end()) finish(id, timeout_error(*it->second));
  }
  return next;
}

void ucx_transport::impl::finish(uint64_t id, error_info err) {
  std::unique_ptr<write_op> op;
  if (auto it = active_.find(id); it != active_.end()) {
    op = std::move(it->second);
    active_.erase(it);
    if (!op->internal) {
      writes_in_flight_.fetch_sub(1, std::memory_order_relaxed);
      bytes_in_flight_.fetch_sub(op->bytes, std::memory_order_relaxed);
    }
  } else {
    auto q =
        std::find_if(waiting_.begin(), waiting_.end(), [id](const auto& w) { return w->id == id; });
    if (q == waiting_.end()) return;
    op = std::move(*q);
    waiting_.erase(q);
    writes_queued_.fetch_sub(1, std::memory_order_relaxed);
  }
  if (op->job) op->job->cancelled.store(true, std::memory_order_relaxed);
  if (op->internal) return;  // connect(): nobody waits; a failure shows in later writes
  count(err, op->bytes);
  kv_payload p;
  if (!err) p.dst_blocks = std::move(op->dst);
  op->done(std::move(err), std::move(p));
}

void ucx_transport::impl::progressed(uint64_t id) {
  if (auto it = active_.find(id); it != active_.end())
    it->second->last_progress = clock_type::now();
}

void ucx_transport::impl::on_put(void* request, ucs_status_t status, void* user_data) {
  auto* self = static_cast<impl*>(user_data);
  auto it = self->put_reqs_.find(request);
  if (it != self->put_reqs_.end()) {
    uint64_t id = it->second;
    self->put_reqs_.erase(it);
    if (status == UCS_OK)
      self->progressed(id);
    else
      self->finish(id, ucs_error(status, "put"));
  }
  ucp_request_free(request);
}

void ucx_transport::impl::on_flush(void* request, ucs_status_t status, void* user_data) {
  auto* self = static_cast<impl*>(user_data);
  auto it = self->flush_reqs_.find(request);
  if (it != self->flush_reqs_.end()) {
    std::vector<uint64_t> ids = std::move(it->second);
    self->flush_reqs_.erase(it);
    error_info err = status == UCS_OK ? error_info{} : ucs_error(status, "flush");
    for (auto id : ids)
      self->finish(id, err);
  }
  ucp_request_free(request);
}

void ucx_transport::impl::on_ep_error(void* arg, ucp_ep_h, ucs_status_t status) {
  auto* state = static_cast<endpoint_state*>(arg);
  state->owner->fail_endpoint(state, ucs_error(status, "endpoint failed"));
}

void ucx_transport::impl::fail_endpoint(endpoint_state* state, error_info err) {
  if (state->failed) return;
  state->failed = true;
  state->ep.get_deleter().force = true;
  state->flush_ready.clear();
  err.code = errc::unavailable;
  std::vector<uint64_t> ids;
  for (auto& [id, op] : active_)
    if (op->ep == state) ids.push_back(id);
  std::sort(ids.begin(), ids.end());
  // An idle endpoint to a peer that left is routine; failing writes is worth a warning.
  if (ids.empty())
    spdlog::debug("{}", err.message);
  else
    spdlog::warn("{} ({} writes failed)", err.message, ids.size());
  for (auto id : ids)
    finish(id, err);
  auto it = eps_.find(state->address);
  if (it != eps_.end() && it->second.get() == state) {
    dead_eps_.push_back(dead_endpoint{std::move(it->second)});
    eps_.erase(it);
  }
}

result<ucx_transport::impl::endpoint_state*> ucx_transport::impl::endpoint_for(
    const std::vector<uint8_t>& address, bool same_host) {
  auto it = eps_.find(address);
  if (it != eps_.end()) return it->second.get();
  auto state = std::make_unique<endpoint_state>();
  state->owner = this;
  state->address = address;
  const bool peer_errors = cfg_.peer_error_handling && !(same_host && cfg_.same_host_shared_memory);
  state->peer_errors = peer_errors;
  // Without peer error handling a dead peer never fails what is outstanding: only a forced
  // close cancels it (and a graceful close to a dead peer would never finish).
  state->ep = ep_ptr{nullptr, ep_closer{this, !peer_errors}};
  ucp_ep_params_t p{};
  p.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
  p.address = reinterpret_cast<const ucp_address_t*>(state->address.data());
  p.err_mode = peer_errors ? UCP_ERR_HANDLING_MODE_PEER : UCP_ERR_HANDLING_MODE_NONE;
  if (peer_errors) {
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

result<ucp_rkey_h> ucx_transport::impl::rkey_for(endpoint_state& ep,
                                                 const std::vector<uint8_t>& remote_key) {
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

void ucx_transport::impl::enqueue(std::unique_ptr<write_op> op) {
  waiting_.push_back(std::move(op));
  writes_queued_.fetch_add(1, std::memory_order_relaxed);
}

bool ucx_transport::impl::can_admit() const {
  if (waiting_.empty()) return false;
  return window_admits(bytes_in_flight_.load(std::memory_order_relaxed), waiting_.front()->bytes,
                       cfg_.max_inflight_bytes);
}

void ucx_transport::impl::admit() {
  while (can_admit()) {
    auto op = std::move(waiting_.front());
    waiting_.pop_front();
    writes_queued_.fetch_sub(1, std::memory_order_relaxed);
    start(std::move(op));
  }
}

void ucx_transport::impl::start(std::unique_ptr<write_op> owned) {
  write_op& op = *owned;
  const uint64_t id = op.id;
  op.started = op.last_progress = clock_type::now();
  active_.emplace(id, std::move(owned));
  if (!op.internal) {
    writes_in_flight_.fetch_add(1, std::memory_order_relaxed);
    bytes_in_flight_.fetch_add(op.bytes, std::memory_order_relaxed);
  }
  auto ep = endpoint_for(op.address, op.same_host);
  if (!ep) return finish(id, ep.error());
  if (!op.internal) {
    auto rkey = rkey_for(**ep, op.remote_key);
    if (!rkey) return finish(id, rkey.error());
    op.rkey = *rkey;
  }
  op.ep = *ep;
  if (op.internal) return ready_to_flush(op);
  if (op.staged != nullptr) {
    auto job = std::make_shared<staging_job>();
    job->op = id;
    job->source = op.staged;
    job->mirror = const_cast<std::byte*>(op.put_base);
    job->block_bytes = op.block_bytes;
    job->segments = op.segments;
    op.job = job;
    staging_->push(std::move(job));
    return;
  }
  if (issue_puts(op, op.segments)) ready_to_flush(op);
}

void ucx_transport::impl::on_piece(uint64_t id, const std::vector<transfer_segment>& segs,
                                   bool last) {
  auto it = active_.find(id);
  if (it == active_.end()) return;  // failed or timed out meanwhile
  write_op& op = *it->second;
  if (issue_puts(op, segs) && last) ready_to_flush(op);
}

bool ucx_transport::impl::issue_puts(write_op& op, std::span<const transfer_segment> segs) {
  endpoint_state& ep = *op.ep;
  const uint64_t id = op.id;
  op.last_progress = clock_type::now();
  for (const transfer_segment& s : segs) {
    ucp_request_param_t p{};
    p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    p.cb.send = &on_put;
    p.user_data = this;
    if (op.memory_type != UCS_MEMORY_TYPE_HOST) {
      p.op_attr_mask |= UCP_OP_ATTR_FIELD_MEMORY_TYPE;
      p.memory_type = op.memory_type;
    }
    ucs_status_ptr_t req =
        ucp_put_nbx(ep.ep.get(), op.put_base + s.offset, s.bytes, s.remote, op.rkey, &p);
    if (UCS_PTR_IS_ERR(req)) {
      finish(id, ucs_error(UCS_PTR_STATUS(req), "ucp_put_nbx"));
      return false;
    }
    if (req != nullptr) put_reqs_.emplace(req, id);
    if (ep.failed) return false;  // its error handler ran inside the call: `op` is gone
  }
  return true;
}

void ucx_transport::impl::ready_to_flush(write_op& op) {
  op.ep->flush_ready.push_back(op.id);
  if (std::find(flush_eps_.begin(), flush_eps_.end(), op.ep) == flush_eps_.end())
    flush_eps_.push_back(op.ep);
}

void ucx_transport::impl::issue_flushes() {
  std::vector<endpoint_state*> eps;
  eps.swap(flush_eps_);
  for (endpoint_state* ep : eps) {
    std::vector<uint64_t> ids;
    ids.swap(ep->flush_ready);
    if (ep->failed) continue;  // its writes failed with it
    std::erase_if(ids, [this](uint64_t id) { return !active_.contains(id); });
    if (ids.empty()) continue;
    ucp_request_param_t p{};
    p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    p.cb.send = &on_flush;
    p.user_data = this;
    ucs_status_ptr_t req = ucp_ep_flush_nbx(ep->ep.get(), &p);
    if (req == nullptr || UCS_PTR_IS_ERR(req)) {
      error_info err =
          req == nullptr ? error_info{} : ucs_error(UCS_PTR_STATUS(req), "ucp_ep_flush_nbx");
      for (auto id : ids)
        finish(id, err);
      continue;
    }
    flush_reqs_.emplace(req, std::move(ids));
  }
}

void ucx_transport::impl::start_connect(const std::vector<uint8_t>& address, bool same_host) {
  auto op = std::make_unique<write_op>();
  op->id = next_op_++;
  op->internal = true;
  op->address = address;
  op->same_host = same_host;
  op->done = [](error_info, kv_payload) {};
  op->deadline = clock_type::now() + cfg_.op_timeout;
  start(std::move(op));
}

pool_descriptor ucx_transport::impl::do_register(worker_id owner, std::span<std::byte> memory,
                                                 size_t block_bytes,
                                                 std::unique_ptr<registered_pool> pool) {
  pool_descriptor d;
  d.owner = owner;
  d.block_bytes = block_bytes;
  ucp_mem_map_params_t mp{};
  mp.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH;
  mp.address = memory.data();
  mp.length = memory.size();
  if (pool->staging == nullptr && pool->memory_type != UCS_MEMORY_TYPE_HOST) {
    mp.field_mask |= UCP_MEM_MAP_PARAM_FIELD_MEMORY_TYPE;
    mp.memory_type = pool->memory_type;
  }
  ucp_mem_h memh = nullptr;
  ucs_status_t st = ucp_mem_map(context_.get(), &mp, &memh);
  if (st != UCS_OK) {
    spdlog::error("{}", ucs_error(st, "ucp_mem_map").message);
    return d;
  }
  mem_ptr mem{memh, ucx::mem_deleter{context_.get()}};
  void* buf = nullptr;
  size_t len = 0;
  st = ucp_rkey_pack(context_.get(), memh, &buf, &len);
  if (st != UCS_OK) {
    spdlog::error("{}", ucs_error(st, "ucp_rkey_pack").message);
    return d;
  }
  ucx::rkey_buffer_ptr packed{buf};
  auto base = reinterpret_cast<uint64_t>(memory.data());
  d.remote_key.resize(8 + len);
  for (size_t i = 0; i < 8; ++i)
    d.remote_key[i] = static_cast<uint8_t>(base >> (8 * i));
  std::memcpy(d.remote_key.data() + 8, buf, len);
  d.worker_address = worker_address_;
  d.host = host_;
  d.num_blocks = static_cast<uint32_t>(memory.size() / block_bytes);
  mems_.push_back(std::move(mem));
  {
    std::lock_guard lock{mutex_};
    pools_.push_back(std::move(pool));
  }
  return d;
}

}  // namespace tokenmill
