#pragma once
/// A child process for integration tests: argv in, stdout and stderr captured through
/// pipes, every wait bounded. The child never outlives its `process` object: the
/// destructor kills and reaps it.
#include <sys/types.h>

#include <chrono>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace tokenmill::testing {

using std::chrono::milliseconds;

/// The end of a process run to completion.
struct run_result {
  int exit_code = -1;      ///< exit status, or 128 + signal number when killed by a signal
  bool timed_out = false;  ///< it ran past its timeout and was killed (exit_code is then -1)
  std::string out;         ///< everything it wrote to stdout
  std::string err;         ///< everything it wrote to stderr
};

class process {
 public:
  /// Spawns argv[0] (a path) with stdin from /dev/null and stdout/stderr on pipes. The
  /// child gets default signal dispositions and an empty signal mask. Throws
  /// std::system_error when it cannot be spawned.
  explicit process(const std::vector<std::string>& argv);
  ~process();
  process(const process&) = delete;
  process& operator=(const process&) = delete;

  pid_t pid() const { return pid_; }
  /// True until the child has been reaped.
  bool running();

  /// Reads output until a complete stdout line contains `needle`; returns that line
  /// (without its newline), or nothing when the timeout passes or stdout closes first.
  std::optional<std::string> wait_for_line(std::string_view needle, milliseconds timeout);
  /// Reads output until stdout holds at least `bytes` bytes; false on timeout or EOF.
  bool wait_for_output(size_t bytes, milliseconds timeout);

  /// Sends `sig` to the child (no-op once it has been reaped).
  void signal(int sig);
  /// Waits for the child to exit, reading its output meanwhile; returns its exit code
  /// (128 + signal when a signal ended it). On timeout the child is SIGKILLed and
  /// reaped, and the result is empty.
  std::optional<int> wait(milliseconds timeout);
  /// SIGKILLs and reaps the child; returns its exit code as `wait` does.
  int kill();

  /// Output read so far.
  const std::string& out() const { return out_; }
  const std::string& err() const { return err_; }

 private:
  /// Polls both pipes once for up to `timeout_ms`, appending what arrives. False when
  /// both pipes are closed.
  bool pump(int timeout_ms);
  /// Reaps the child if it exited (blocking when `block`); true once reaped.
  bool reap(bool block);
  /// Reads the rest of both pipes, for at most `timeout`.
  void drain(milliseconds timeout);

  pid_t pid_ = -1;
  int out_fd_ = -1;
  int err_fd_ = -1;
  std::string out_;
  std::string err_;
  std::optional<int> exit_code_;
};

/// Runs argv to completion (killing it after `timeout`) and returns its exit code and output.
run_result run(const std::vector<std::string>& argv, milliseconds timeout);

}  // namespace tokenmill::testing
