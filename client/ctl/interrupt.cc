#include "client/ctl/interrupt.h"

#include <signal.h>
#include <unistd.h>

#include <condition_variable>
#include <mutex>
#include <thread>

namespace asyncd::ctl {
namespace {

struct State {
  std::mutex mu;
  std::condition_variable cv;
  std::function<void()> on_interrupt;  // set while a scope is alive
  bool interrupted = false;
  bool running = false;  // on_interrupt is executing (outside the lock)
};

State& GetState() {
  static State* state = new State();  // never destroyed: the thread outlives main
  return *state;
}

sigset_t InterruptSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  return set;
}

void SignalLoop() {
  sigset_t set = InterruptSignals();
  for (;;) {
    int sig = 0;
    if (sigwait(&set, &sig) != 0) continue;
    State& s = GetState();
    std::function<void()> callback;
    {
      std::lock_guard<std::mutex> lock(s.mu);
      if (!s.on_interrupt || s.interrupted) _exit(128 + SIGINT);
      s.interrupted = true;
      callback = s.on_interrupt;
      s.running = true;
    }
    s.cv.notify_all();
    callback();
    {
      std::lock_guard<std::mutex> lock(s.mu);
      s.running = false;
    }
    s.cv.notify_all();
  }
}

}  // namespace

void InstallInterruptHandler() {
  sigset_t set = InterruptSignals();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  std::thread(SignalLoop).detach();
}

InterruptScope::InterruptScope(std::function<void()> on_interrupt) {
  State& s = GetState();
  std::lock_guard<std::mutex> lock(s.mu);
  s.on_interrupt = std::move(on_interrupt);
}

InterruptScope::~InterruptScope() {
  State& s = GetState();
  std::unique_lock<std::mutex> lock(s.mu);
  // The callback may use what the scope's owner is about to destroy (a
  // ClientContext): wait until it has returned.
  s.cv.wait(lock, [&] { return !s.running; });
  s.on_interrupt = nullptr;
}

bool Interrupted() {
  State& s = GetState();
  std::lock_guard<std::mutex> lock(s.mu);
  return s.interrupted;
}

bool SleepUnlessInterrupted(std::chrono::microseconds d) {
  State& s = GetState();
  std::unique_lock<std::mutex> lock(s.mu);
  return !s.cv.wait_for(lock, d, [&] { return s.interrupted; });
}

}  // namespace asyncd::ctl
