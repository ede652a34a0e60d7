#pragma once
/// The stop signals (SIGINT, SIGTERM) of the long-running subcommands (serve, node, launch),
/// which wait for them with sigwait/sigtimedwait.
#include <signal.h>

namespace tokenmill::app {

/// Installs a handler that does nothing for SIGINT and SIGTERM, then blocks both in this
/// thread (threads started later inherit the mask), and returns the set to wait on. The
/// handler matters as PID 1 of a container (Kubernetes, the OCI image): the kernel drops a
/// signal whose action is the default there, so a blocked-and-waited SIGTERM from the
/// runtime would never arrive and the pod would be killed after its grace period instead
/// of stopping cleanly.
inline sigset_t block_stop_signals() {
  struct sigaction sa {};
  sa.sa_handler = [](int) {};
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  sigset_t s;
  sigemptyset(&s);
  sigaddset(&s, SIGINT);
  sigaddset(&s, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &s, nullptr);
  return s;
}

}  // namespace tokenmill::app
