#include "daemon/drain.h"

#include <google/protobuf/util/json_util.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "daemon/convert.h"
#include "src/core/clock.h"

namespace asyncd::daemon {

Drainer::~Drainer() { Join(); }

void Drainer::Start(uint32_t grace_ms, Done done) {
  std::unique_lock lock(mu_);
  if (state_ == State::kDone) {
    const v1::DrainResponse result = *result_;
    lock.unlock();
    done(result);
    return;
  }
  waiting_.push_back(std::move(done));
  if (state_ == State::kIdle && !thread_.joinable()) {
    thread_ = std::thread([this, grace_ms] { DrainAndWait(grace_ms); });
  }
}

v1::DrainResponse Drainer::DrainAndWait(uint32_t grace_ms) {
  std::unique_lock lock(mu_);
  if (state_ != State::kIdle) {
    cv_.wait(lock, [this] { return state_ == State::kDone; });
    return *result_;
  }
  state_ = State::kRunning;
  lock.unlock();
  const v1::DrainResponse result = Run(grace_ms);
  lock.lock();
  result_ = result;
  state_ = State::kDone;
  std::vector<Done> waiting = std::move(waiting_);
  waiting_.clear();
  lock.unlock();
  cv_.notify_all();
  for (Done& done : waiting) done(result);
  return result;
}

void Drainer::Join() {
  std::thread thread;
  {
    std::lock_guard lock(mu_);
    thread = std::move(thread_);
  }
  if (thread.joinable()) thread.join();
}

v1::DrainResponse Drainer::Run(uint32_t grace_ms) {
  draining_.store(true, std::memory_order_release);
  if (auto* health = health_.load()) health->SetServingStatus(false);  // every service name
  if (on_start_) on_start_();
  const uint64_t at_start = registry_.live_ops();
  spdlog::info("draining: {} operations in flight, grace {} ms", at_start, grace_ms);
  v1::ListHistoryResponse manifest;  // what we cancelled, for the record
  uint32_t cancelled = 0;
  auto cancel_where = [&](auto&& pred) {
    std::vector<std::pair<core::OpSnapshot, std::shared_ptr<core::Session>>> targets;
    registry_.ForEach([&](const core::OpSnapshot& s, const std::shared_ptr<core::Session>& owner) {
      if (!core::IsTerminal(s.state) && pred(s)) targets.emplace_back(s, owner);
      return true;
    });
    const int64_t now = core::MonoNanos();
    for (const auto& [s, session] : targets) {
      if (dispatcher_.Cancel(s.id, core::EndReason::kDrain) != core::CancelResult::kCancelled) {
        continue;
      }
      ++cancelled;
      const core::ClientInfo& client = session->client();
      ToOperationInfo(s, client.uid, client.pid, client.name, false, now, *manifest.add_ops());
    }
  };
  // Ops that may wait forever are cancelled at once; the rest get the grace.
  cancel_where([](const core::OpSnapshot& s) { return s.may_block; });
  const int64_t grace_end = core::MonoNanos() + int64_t{grace_ms} * 1'000'000;
  while (registry_.live_ops() > 0 && core::MonoNanos() < grace_end) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  const uint64_t left = registry_.live_ops();
  cancel_where([](const core::OpSnapshot&) { return true; });
  // Non-cancellable ops run to completion; every accepted op ends.
  while (registry_.live_ops() > 0) std::this_thread::sleep_for(std::chrono::milliseconds(5));

  v1::DrainResponse result;
  result.set_inflight_at_start(static_cast<uint32_t>(at_start));
  result.set_cancelled(cancelled);
  result.set_completed_during_grace(
      static_cast<uint32_t>(at_start > left + cancelled ? at_start - left - cancelled : 0));
  std::error_code ec;
  std::filesystem::create_directories(state_dir_, ec);
  const std::string path =
      absl::StrCat(state_dir_, "/drain-manifest-", core::UnixNanos() / 1'000'000'000, ".json");
  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  (void)google::protobuf::util::MessageToJsonString(manifest, &json, options);
  std::ofstream out(path);
  out << json;
  if (out.good()) {
    result.set_manifest_path(path);
  } else {
    spdlog::error("drain: could not write the manifest {}", path);
  }
  spdlog::info("drained: {} in flight at start, {} cancelled, manifest {}", at_start, cancelled,
               result.manifest_path());
  return result;
}

}  // namespace asyncd::daemon
