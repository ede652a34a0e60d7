#include "process.hpp"

#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <system_error>

extern char** environ;

namespace tokenmill::testing {
namespace {

using clock_type = std::chrono::steady_clock;

[[noreturn]] void throw_errno(const char* what, int err = errno) {
  throw std::system_error(err, std::generic_category(), what);
}

void close_fd(int& fd) {
  if (fd >= 0) ::close(fd);
  fd = -1;
}

int remaining_ms(clock_type::time_point deadline) {
  auto left = std::chrono::duration_cast<milliseconds>(deadline - clock_type::now()).count();
  return static_cast<int>(std::clamp<long long>(left, 0, 1000 * 1000));
}

int decode_status(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

}  // namespace

process::process(const std::vector<std::string>& argv) {
  if (argv.empty()) throw std::invalid_argument("process: empty argv");
  int out_pipe[2], err_pipe[2];
  // O_CLOEXEC: children spawned concurrently must not inherit our pipe ends, or EOF
  // would never come.
  if (::pipe2(out_pipe, O_CLOEXEC) != 0) throw_errno("pipe2");
  if (::pipe2(err_pipe, O_CLOEXEC) != 0) {
    int e = errno;
    ::close(out_pipe[0]);
    ::close(out_pipe[1]);
    throw_errno("pipe2", e);
  }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, out_pipe[1], 1);
  posix_spawn_file_actions_adddup2(&fa, err_pipe[1], 2);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t all, none;
  sigfillset(&all);
  sigemptyset(&none);
  posix_spawnattr_setsigdefault(&attr, &all);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);

  std::vector<char*> args;
  for (const auto& a : argv)
    args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  int rc = ::posix_spawn(&pid_, args[0], &fa, &attr, args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  ::close(out_pipe[1]);
  ::close(err_pipe[1]);
  out_fd_ = out_pipe[0];
  err_fd_ = err_pipe[0];
  if (rc != 0) {
    close_fd(out_fd_);
    close_fd(err_fd_);
    pid_ = -1;
    throw_errno("posix_spawn", rc);
  }
}

process::~process() {
  if (pid_ > 0 && !exit_code_) {
    ::kill(pid_, SIGKILL);
    reap(true);
  }
  close_fd(out_fd_);
  close_fd(err_fd_);
}

bool process::running() {
  return pid_ > 0 && !reap(false);
}

bool process::pump(int timeout_ms) {
  pollfd fds[2];
  int* owners[2];
  nfds_t n = 0;
  for (int* fd : {&out_fd_, &err_fd_}) {
    if (*fd < 0) continue;
    fds[n] = {*fd, POLLIN, 0};
    owners[n++] = fd;
  }
  if (n == 0) return false;
  int rc = ::poll(fds, n, timeout_ms);
  if (rc < 0 && errno != EINTR) throw_errno("poll");
  if (rc <= 0) return true;
  char buf[65536];
  for (nfds_t k = 0; k < n; ++k) {
    if ((fds[k].revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
    ssize_t got = ::read(fds[k].fd, buf, sizeof buf);
    if (got > 0) {
      (owners[k] == &out_fd_ ? out_ : err_).append(buf, static_cast<size_t>(got));
    } else if (got == 0 || (errno != EINTR && errno != EAGAIN)) {
      close_fd(*owners[k]);
    }
  }
  return out_fd_ >= 0 || err_fd_ >= 0;
}

bool process::reap(bool block) {
  if (exit_code_) return true;
  if (pid_ <= 0) return true;
  int status = 0;
  pid_t r;
  do {
    r = ::waitpid(pid_, &status, block ? 0 : WNOHANG);
  } while (r < 0 && errno == EINTR);
  if (r == pid_) {
    exit_code_ = decode_status(status);
    return true;
  }
  if (r < 0) {  // not our child any more (should not happen): treat as gone
    exit_code_ = -1;
    return true;
  }
  return false;
}

void process::drain(milliseconds timeout) {
  auto deadline = clock_type::now() + timeout;
  while (pump(std::min(remaining_ms(deadline), 50)) && clock_type::now() < deadline) {
  }
}

std::optional<std::string> process::wait_for_line(std::string_view needle, milliseconds timeout) {
  auto deadline = clock_type::now() + timeout;
  size_t scanned = 0;  // out_[0, scanned) holds complete lines already checked
  for (;;) {
    for (size_t nl; (nl = out_.find('\n', scanned)) != std::string::npos; scanned = nl + 1) {
      std::string_view line(out_.data() + scanned, nl - scanned);
      if (line.find(needle) != std::string_view::npos) return std::string(line);
    }
    if (clock_type::now() >= deadline) return std::nullopt;
    if (!pump(std::min(remaining_ms(deadline), 50))) return std::nullopt;
  }
}

bool process::wait_for_output(size_t bytes, milliseconds timeout) {
  auto deadline = clock_type::now() + timeout;
  while (out_.size() < bytes) {
    if (clock_type::now() >= deadline) return false;
    if (!pump(std::min(remaining_ms(deadline), 50))) return out_.size() >= bytes;
  }
  return true;
}

void process::signal(int sig) {
  if (pid_ > 0 && !reap(false)) ::kill(pid_, sig);
}

std::optional<int> process::wait(milliseconds timeout) {
  auto deadline = clock_type::now() + timeout;
  while (!reap(false)) {
    if (clock_type::now() >= deadline) {
      kill();
      return std::nullopt;
    }
    // Keep reading so that a child blocked on a full pipe can finish; sleep briefly
    // once both pipes are closed.
    if (!pump(std::min(remaining_ms(deadline), 20))) ::usleep(5000);
  }
  // The pipes close when the child exits (no one else holds them): read what is left.
  drain(std::max(milliseconds(200), milliseconds(remaining_ms(deadline))));
  return exit_code_;
}

int process::kill() {
  if (pid_ > 0 && !reap(false)) {
    ::kill(pid_, SIGKILL);
    reap(true);
  }
  drain(milliseconds(200));
  return exit_code_.value_or(-1);
}

run_result run(const std::vector<std::string>& argv, milliseconds timeout) {
  process p(argv);
  run_result r;
  auto code = p.wait(timeout);
  r.timed_out = !code.has_value();
  r.exit_code = code.value_or(-1);
  r.out = p.out();
  r.err = p.err();
  return r;
}

}  // namespace tokenmill::testing
