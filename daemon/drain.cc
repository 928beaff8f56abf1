#include "daemon/drain.h"

#include <google/protobuf/util/json_util.h>
#include <spdlog/spdlog.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
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
    thread_ = std::thread([this, grace_ms] { DrainAndWait(grace_ms, false); });
  }
}

v1::DrainResponse Drainer::DrainAndWait(uint32_t grace_ms, bool restart) {
  std::unique_lock lock(mu_);
  if (state_ != State::kIdle) {
    cv_.wait(lock, [this] { return state_ == State::kDone; });
    return *result_;
  }
  state_ = State::kRunning;
  lock.unlock();
  const v1::DrainResponse result = Run(grace_ms, restart);
  lock.lock();
  result_ = result;
  state_ = State::kDone;
  std::vector<Done> waiting = std::move(waiting_);
  waiting_.clear();
  lock.unlock();
  cv_.notify_all();
  for (Done& done : waiting) done(result);
  if (options_.on_end) options_.on_end();
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

v1::DrainResponse Drainer::Run(uint32_t grace_ms, bool restart) {
  restart_.store(restart, std::memory_order_release);
  draining_.store(true, std::memory_order_release);
  if (auto* health = health_.load()) health->SetServingStatus(false);  // every service name
  if (options_.on_start) options_.on_start(restart);
  v1::DrainManifest manifest;
  manifest.set_started_unix_nanos(core::UnixNanos());
  manifest.set_grace_ms(grace_ms);
  // Every op in flight now, for the manifest: as it is now, and who owns it
  // (its session may be gone by the time the manifest is written). The
  // count in the answer is the same snapshot's, so the two always agree.
  struct InFlightAtStart {
    core::OpSnapshot snap;
    core::ClientInfo client;
  };
  std::vector<InFlightAtStart> listed;
  registry_.ForEach([&](const core::OpSnapshot& s, const std::shared_ptr<core::Session>& owner) {
    if (!core::IsTerminal(s.state)) listed.push_back({s, owner->client()});
    return true;
  });
  const uint64_t at_start = listed.size();
  spdlog::info("{}: {} operations in flight, grace {} ms", restart ? "handing over" : "draining",
               at_start, grace_ms);
  const int64_t listed_ns = core::MonoNanos();
  uint32_t cancelled = 0;
  const core::EndReason reason = restart ? core::EndReason::kRestart : core::EndReason::kDrain;
  auto cancel_where = [&](auto&& pred) {
    std::vector<core::OpId> targets;
    registry_.ForEach([&](const core::OpSnapshot& s, const std::shared_ptr<core::Session>&) {
      if (!core::IsTerminal(s.state) && pred(s)) targets.push_back(s.id);
      return true;
    });
    for (const core::OpId id : targets) {
      if (dispatcher_.Cancel(id, reason) == core::CancelResult::kCancelled) {
        ++cancelled;
      }
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
  if (!listed.empty() && options_.manifests_keep > 0) {
    manifest.set_finished_unix_nanos(core::UnixNanos());
    manifest.set_inflight_at_start(result.inflight_at_start());
    manifest.set_completed_during_grace(result.completed_during_grace());
    manifest.set_cancelled(result.cancelled());
    for (const InFlightAtStart& op : listed) {
      std::optional<FinishedOp> finished;
      if (options_.history != nullptr) finished = options_.history->FindFinished(op.snap.id.value);
      if (finished) {
        ToOperationInfo(finished->snap, finished->uid, finished->pid, finished->client, false,
                        core::MonoNanos(), *manifest.add_ops());
      } else {
        ToOperationInfo(op.snap, op.client.uid, op.client.pid, op.client.name, false, listed_ns,
                        *manifest.add_ops());
      }
    }
    result.set_manifest_path(WriteManifest(manifest));
  }
  spdlog::info("drained: {} in flight at start, {} cancelled, manifest {}", at_start, cancelled,
               result.manifest_path().empty() ? "none" : result.manifest_path());
  return result;
}

std::string Drainer::WriteManifest(const v1::DrainManifest& manifest) {
  const int64_t started = manifest.started_unix_nanos();
  const time_t secs = static_cast<time_t>(started / 1'000'000'000);
  tm utc{};
  gmtime_r(&secs, &utc);
  char stamp[32];
  std::snprintf(stamp, sizeof(stamp), "%04d%02d%02dT%02d%02d%02d.%06dZ", utc.tm_year + 1900,
                utc.tm_mon + 1, utc.tm_mday, utc.tm_hour, utc.tm_min, utc.tm_sec,
                static_cast<int>(started % 1'000'000'000 / 1000));
  const std::string name = std::string(kManifestPrefix) + stamp + std::string(kManifestSuffix);
  const std::string path = absl::StrCat(options_.state_dir, "/", name);
  // The same JSON as `asyncctl -o json`: proto field names, every field.
  google::protobuf::util::JsonPrintOptions json_options;
  json_options.add_whitespace = true;
  json_options.always_print_primitive_fields = true;
  json_options.preserve_proto_field_names = true;
  std::string json;
  if (auto s = google::protobuf::util::MessageToJsonString(manifest, &json, json_options);
      !s.ok()) {
    spdlog::error("drain: no manifest: {}", s.ToString());
    return "";
  }
  std::error_code ec;
  std::filesystem::create_directories(options_.state_dir, ec);
  // Written whole under a hidden name, then renamed: a reader never sees half.
  const std::string tmp = absl::StrCat(options_.state_dir, "/.", name, ".tmp");
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << json;
    out.close();
    if (!out) {
      spdlog::error("drain: could not write the manifest {}: {}", tmp, std::strerror(errno));
      std::filesystem::remove(tmp, ec);
      return "";
    }
  }
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    spdlog::error("drain: could not write the manifest {}: {}", path, ec.message());
    std::filesystem::remove(tmp, ec);
    return "";
  }
  // Keep the newest manifests_keep: names sort by age.
  std::vector<std::string> manifests;
  for (const auto& entry : std::filesystem::directory_iterator(options_.state_dir, ec)) {
    const std::string file = entry.path().filename().string();
    if (file.size() > kManifestPrefix.size() + kManifestSuffix.size() &&
        file.starts_with(kManifestPrefix) && file.ends_with(kManifestSuffix)) {
      manifests.push_back(file);
    }
  }
  std::sort(manifests.begin(), manifests.end());
  for (size_t i = 0; i + options_.manifests_keep < manifests.size(); ++i) {
    const std::string old = absl::StrCat(options_.state_dir, "/", manifests[i]);
    if (!std::filesystem::remove(old, ec) && ec) {
      spdlog::warn("drain: could not remove the old manifest {}: {}", old, ec.message());
    }
  }
  return path;
}

}  // namespace asyncd::daemon
