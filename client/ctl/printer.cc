#include "client/ctl/printer.h"

#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <iostream>

#include "absl/status/status.h"
#include "client/ctl/duration.h"
#include "client/ctl/format.h"
#include "client/ctl/table.h"

namespace asyncd::ctl {
namespace {

constexpr size_t kTargetWidth = 40;   // TARGET column in table mode
constexpr size_t kDataPreview = 256;  // read data shown in table mode
constexpr const char* kNone = "-";

std::string OrDash(const std::string& s) { return s.empty() ? kNone : s; }
// " of N" for a limit the daemon reported; nothing for 0 (an older daemon).
std::string OfLimit(uint64_t limit) { return limit == 0 ? "" : " of " + std::to_string(limit); }

std::string Backend(v1::Backend b) { return b == v1::BACKEND_UNSPECIFIED ? kNone : ShortName(b); }

std::string Reason(v1::EndReason r) {
  return r == v1::END_REASON_UNSPECIFIED ? kNone : ShortName(r);
}

std::string Deadline(uint32_t deadline_ms) {
  return deadline_ms == 0 ? kNone : FormatDuration(std::chrono::milliseconds(deadline_ms));
}

int64_t NowUnixNanos() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string Ago(int64_t unix_nanos) {
  if (unix_nanos == 0) return kNone;
  int64_t us = (NowUnixNanos() - unix_nanos) / 1000;
  return FormatDuration(std::chrono::microseconds(std::max<int64_t>(us, 0))) + " ago";
}

std::string StrError(int error_number) {
  return ErrnoName(error_number) + " (" + std::strerror(error_number) + ")";
}

std::string CancelCountsLine(const v1::CancelCounts& c) {
  return "cancelled: " + std::to_string(c.cancelled()) +
         "  not_cancellable: " + std::to_string(c.not_cancellable()) +
         "  already_done: " + std::to_string(c.already_done()) +
         "  not_found: " + std::to_string(c.not_found());
}

std::string KindList(const google::protobuf::RepeatedField<int>& kinds) {
  std::string out;
  for (int k : kinds) {
    if (!out.empty()) out += ",";
    out += ShortName(static_cast<v1::OpKind>(k));
  }
  return out.empty() ? "none" : out;
}

void AddLimits(KeyValues& kv, const v1::Limits& l) {
  kv.Add("limits", "batch " + std::to_string(l.max_batch_ops()) + " ops, op " +
                       std::to_string(l.max_op_bytes()) + " bytes, inflight/session " +
                       std::to_string(l.max_inflight_per_session()) + ", handles/session " +
                       std::to_string(l.max_handles_per_session()) + ", sessions " +
                       std::to_string(l.max_sessions()));
  kv.Add("", "thread pool: queue " + std::to_string(l.pool_queue_depth()) + ", queued/session " +
                 std::to_string(l.max_pool_queued_per_session()) + ", running/session " +
                 std::to_string(l.max_pool_running_per_session()));
  kv.Add("", "message " + std::to_string(l.max_message_bytes()) + " bytes, lease " +
                 FormatDuration(std::chrono::milliseconds(l.default_lease_ms())) + " (max " +
                 FormatDuration(std::chrono::milliseconds(l.max_lease_ms())) + "), history " +
                 std::to_string(l.history_capacity()) + " (slow " +
                 std::to_string(l.slow_history_capacity()) + "), watchers " +
                 std::to_string(l.max_watchers()) + " x " +
                 std::to_string(l.watch_buffer_events()) + " events");
}

template <typename T>
bool AnyAnswered(const std::vector<TargetResult<T>>& results) {
  for (const auto& r : results) {
    if (!r.error) return true;
  }
  return false;
}

// ---------------------------------------------------------------------------
// Table and wide.

class TablePrinter final : public Printer {
 public:
  TablePrinter(std::ostream& out, bool wide, bool multi) : out_(out), wide_(wide), multi_(multi) {}

  void Operations(const std::vector<TargetResult<v1::ListOperationsResponse>>& results) override {
    struct Row {
      const std::string* target;
      const v1::OperationInfo* op;
    };
    std::vector<Row> rows;
    uint64_t total = 0;
    for (const auto& r : results) {
      if (r.error) continue;
      total += r.response.total_matched();
      for (const auto& op : r.response.ops()) rows.push_back({&r.target, &op});
    }
    // Operators hunt stuck operations: oldest first.
    std::stable_sort(rows.begin(), rows.end(),
                     [](const Row& a, const Row& b) { return a.op->age_us() > b.op->age_us(); });
    std::vector<Column> cols = {
        {"OP_ID"}, {"SESSION", Align::kRight}, {"CLIENT"},     {"KIND"}, {"TARGET"}, {"BACKEND"},
        {"STATE"}, {"AGE", Align::kRight},     {"CANCELLABLE"}};
    if (wide_) {
      for (const char* c : {"UID", "PID", "HANDLE", "BYTES"}) cols.push_back({c, Align::kRight});
      cols.push_back({"CANCEL_REQUESTED"});
      cols.push_back({"DEADLINE", Align::kRight});
    }
    if (multi_) cols.insert(cols.begin(), Column{"DAEMON"});
    Table table(cols);
    for (const Row& row : rows) {
      const v1::OperationInfo& op = *row.op;
      std::vector<std::string> cells = {
          FormatOpId(op.op_id()),
          std::to_string(op.session_id()),
          OrDash(op.client()),
          ShortName(op.kind()),
          OrDash(wide_ ? op.target() : TruncateFront(op.target(), kTargetWidth)),
          Backend(op.backend()),
          ShortName(op.state()),
          FormatMicros(op.age_us()),
          YesNo(op.cancellable())};
      if (wide_) {
        cells.push_back(std::to_string(op.uid()));
        cells.push_back(std::to_string(op.pid()));
        cells.push_back(op.handle() == 0 ? kNone : std::to_string(op.handle()));
        cells.push_back(std::to_string(op.bytes_done()));
        cells.push_back(YesNo(op.cancel_requested()));
        cells.push_back(Deadline(op.deadline_ms()));
      }
      if (multi_) cells.insert(cells.begin(), *row.target);
      table.AddRow(std::move(cells));
    }
    if (rows.empty()) {
      if (AnyAnswered(results)) std::cerr << "No operations in flight match." << std::endl;
      return;
    }
    table.Render(out_);
    if (total > rows.size()) {
      std::cerr << "(showing " << rows.size() << " of ~" << total << " matching operations)"
                << std::endl;
    }
  }

  void History(const std::vector<TargetResult<v1::ListHistoryResponse>>& results) override {
    std::vector<Column> cols = {{"OP_ID"},
                                {"SESSION", Align::kRight},
                                {"CLIENT"},
                                {"KIND"},
                                {"TARGET"},
                                {"BACKEND"},
                                {"OUTCOME"},
                                {"RESULT", Align::kRight},
                                {"DURATION", Align::kRight},
                                {"FINISHED", Align::kRight}};
    if (wide_) {
      for (const char* c : {"UID", "PID", "HANDLE", "BYTES"}) cols.push_back({c, Align::kRight});
      cols.push_back({"END_REASON"});
      cols.push_back({"CANCEL_REQUESTED"});
      cols.push_back({"DEADLINE", Align::kRight});
    }
    if (multi_) cols.insert(cols.begin(), Column{"DAEMON"});
    Table table(cols);
    for (const auto& r : results) {
      if (r.error) continue;
      for (const auto& op : r.response.ops()) {
        std::vector<std::string> cells = {
            FormatOpId(op.op_id()),
            std::to_string(op.session_id()),
            OrDash(op.client()),
            ShortName(op.kind()),
            OrDash(wide_ ? op.target() : TruncateFront(op.target(), kTargetWidth)),
            Backend(op.backend()),
            ShortName(op.outcome()),
            FormatResult(op.result(), op.error_number()),
            FormatMicros(op.age_us()),
            Ago(op.finished_unix_nanos())};
        if (wide_) {
          cells.push_back(std::to_string(op.uid()));
          cells.push_back(std::to_string(op.pid()));
          cells.push_back(op.handle() == 0 ? kNone : std::to_string(op.handle()));
          cells.push_back(std::to_string(op.bytes_done()));
          cells.push_back(Reason(op.end_reason()));
          cells.push_back(YesNo(op.cancel_requested()));
          cells.push_back(Deadline(op.deadline_ms()));
        }
        if (multi_) cells.insert(cells.begin(), r.target);
        table.AddRow(std::move(cells));
      }
    }
    if (table.rows() == 0) {
      if (AnyAnswered(results)) std::cerr << "No finished operations match." << std::endl;
      return;
    }
    table.Render(out_);
  }

  void Operation(const v1::OperationInfo& op, bool timeline) override {
    KeyValues kv;
    kv.Add("op_id", FormatOpId(op.op_id()) + " (" + std::to_string(op.op_id()) + ")");
    kv.Add("session", std::to_string(op.session_id()) + " (client \"" + op.client() + "\", uid " +
                          std::to_string(op.uid()) + ", pid " + std::to_string(op.pid()) + ")");
    kv.Add("kind", ShortName(op.kind()));
    kv.Add("target", OrDash(op.target()));
    if (op.handle() != 0) kv.Add("handle", std::to_string(op.handle()));
    kv.Add("backend", Backend(op.backend()));
    kv.Add("state", ShortName(op.state()));
    bool finished = op.finished_unix_nanos() != 0;
    kv.Add(finished ? "duration" : "age", FormatMicros(op.age_us()));
    kv.Add("cancellable", std::string(YesNo(op.cancellable())) +
                              " (safety: " + ShortName(op.cancel_safety()) + ")");
    kv.Add("cancel_requested", YesNo(op.cancel_requested()));
    kv.Add("deadline", Deadline(op.deadline_ms()));
    kv.Add("bytes_done", std::to_string(op.bytes_done()));
    kv.Add("submitted", FormatTimestamp(op.submitted_unix_nanos()));
    if (finished) {
      kv.Add("finished", FormatTimestamp(op.finished_unix_nanos()));
      kv.Add("outcome", ShortName(op.outcome()));
      kv.Add("result", FormatResult(op.result(), op.error_number()));
      if (op.end_reason() != v1::END_REASON_UNSPECIFIED)
        kv.Add("end_reason", Reason(op.end_reason()));
    }
    if (op.tag() != 0) kv.Add("tag", std::to_string(op.tag()));
    kv.Render(out_);
    if (!timeline) return;
    out_ << "timeline:\n";
    std::vector<Column> cols = {{"  OFFSET", Align::kRight}, {"EVENT"}, {"DETAIL"}};
    if (wide_) cols.insert(cols.begin() + 1, Column{"TIME"});
    Table table(cols);
    for (const auto& e : op.timeline()) {
      int64_t offset_us = (e.unix_nanos() - op.submitted_unix_nanos()) / 1000;
      std::vector<std::string> cells = {"+" + FormatDuration(std::chrono::microseconds(offset_us)),
                                        ShortName(e.type()), e.detail()};
      if (wide_) cells.insert(cells.begin() + 1, FormatTimestamp(e.unix_nanos()));
      table.AddRow(std::move(cells));
    }
    table.Render(out_);
  }

  void Cancel(const v1::CancelResponse& response) override {
    if (response.outcomes_size() > 0) {
      Table table({{"OP_ID"}, {"RESULT"}});
      for (const auto& o : response.outcomes()) {
        table.AddRow({FormatOpId(o.op_id()), ShortName(o.result())});
      }
      table.Render(out_);
    }
    out_ << CancelCountsLine(response.counts());
    if (response.outcomes_truncated()) {
      out_ << "  (outcomes truncated: " << response.outcomes_size() << " listed)";
    }
    out_ << '\n';
  }

  void Event(const v1::WatchEvent& e) override {
    // Streamed, so widths are fixed rather than measured.
    auto line = [](const std::string& time, const std::string& id, const std::string& session,
                   const std::string& kind, const std::string& type, const std::string& detail,
                   const std::string& target) {
      char buf[512];
      std::snprintf(buf, sizeof(buf), "%-12s  %-18s  %8s  %-9s  %-16s  %-26s  %s", time.c_str(),
                    id.c_str(), session.c_str(), kind.c_str(), type.c_str(), detail.c_str(),
                    target.c_str());
      std::string text = buf;
      text.erase(text.find_last_not_of(' ') + 1);
      return text;
    };
    if (!event_header_printed_) {
      out_ << line("TIME", "OP_ID", "SESSION", "KIND", "EVENT", "OUTCOME", "TARGET") << '\n';
      event_header_printed_ = true;
    }
    if (e.dropped() > 0) out_ << "# " << e.dropped() << " events dropped (watcher too slow)\n";
    std::string detail = e.outcome() != v1::OUTCOME_UNSPECIFIED ? ShortName(e.outcome()) : "";
    if (e.end_reason() != v1::END_REASON_UNSPECIFIED) {
      detail += (detail.empty() ? "" : " ") + std::string("(") + Reason(e.end_reason()) + ")";
    }
    std::string target = wide_ ? e.target() : TruncateFront(e.target(), kTargetWidth);
    out_ << line(FormatClock(e.unix_nanos()), FormatOpId(e.op_id()), std::to_string(e.session_id()),
                 ShortName(e.kind()), ShortName(e.type()), OrDash(detail), OrDash(target))
         << std::endl;  // flush: a watcher wants events as they happen
  }

  void Sessions(const std::vector<TargetResult<v1::ListSessionsResponse>>& results) override {
    std::vector<Column> cols = {{"SESSION", Align::kRight},  {"CLIENT"},
                                {"UID", Align::kRight},      {"PID", Align::kRight},
                                {"INFLIGHT", Align::kRight}, {"HANDLES", Align::kRight},
                                {"AGE", Align::kRight},      {"LEASE_LEFT", Align::kRight}};
    if (wide_) cols.insert(cols.begin() + 3, Column{"GID", Align::kRight});
    if (multi_) cols.insert(cols.begin(), Column{"DAEMON"});
    Table table(cols);
    for (const auto& r : results) {
      if (r.error) continue;
      for (const auto& s : r.response.sessions()) {
        std::vector<std::string> cells = {
            std::to_string(s.session_id()),
            OrDash(s.client_name()),
            std::to_string(s.uid()),
            std::to_string(s.pid()),
            std::to_string(s.inflight()),
            std::to_string(s.handles()),
            FormatMicros(s.age_us()),
            s.bound_to_stream()
                ? "stream"
                : FormatDuration(std::chrono::milliseconds(s.lease_remaining_ms()))};
        if (wide_) cells.insert(cells.begin() + 3, std::to_string(s.gid()));
        if (multi_) cells.insert(cells.begin(), r.target);
        table.AddRow(std::move(cells));
      }
    }
    if (table.rows() == 0) {
      if (AnyAnswered(results)) std::cerr << "No sessions." << std::endl;
      return;
    }
    table.Render(out_);
  }

  void SessionOpened(const v1::OpenSessionResponse& r) override {
    // Just the id, so `S=$(asyncctl sessions open)` works; wide adds the lease.
    out_ << r.session_id();
    if (wide_) out_ << "  lease " << FormatDuration(std::chrono::milliseconds(r.lease_ms()));
    out_ << '\n';
  }

  void SessionClosed(uint64_t id, const v1::CloseSessionResponse& r) override {
    out_ << "session " << id << " closed; in-flight operations: " << CancelCountsLine(r.counts())
         << '\n';
  }

  void SessionKeptAlive(uint64_t id, const v1::KeepAliveResponse& r) override {
    if (r.lease_ms() == 0) {
      out_ << "session " << id << " is held by a stream (no lease runs)\n";
    } else {
      out_ << "session " << id
           << " lease renewed: " << FormatDuration(std::chrono::milliseconds(r.lease_ms())) << '\n';
    }
  }

  void Stats(const std::vector<TargetResult<v1::Stats>>& results) override {
    if (!multi_) {
      for (const auto& r : results) {
        if (!r.error) SingleStats(r.response);
      }
      return;
    }
    std::vector<Column> cols = {{"DAEMON"},
                                {"UPTIME", Align::kRight},
                                {"SESSIONS", Align::kRight},
                                {"INFLIGHT", Align::kRight},
                                {"QUEUED", Align::kRight},
                                {"IO_URING"},
                                {"POOL", Align::kRight},
                                {"REJECTED", Align::kRight},
                                {"DRAINING"}};
    if (wide_) {
      for (const char* c : {"CANCELLED", "NOT_CANCELLABLE", "ALREADY_DONE", "NOT_FOUND"}) {
        cols.push_back({c, Align::kRight});
      }
    }
    Table summary(cols);
    std::vector<std::pair<const std::string*, const v1::KindStats*>> kinds;
    for (const auto& r : results) {
      if (r.error) continue;
      const v1::Stats& s = r.response;
      std::vector<std::string> cells = {r.target,
                                        FormatDuration(std::chrono::seconds(s.uptime_s())),
                                        std::to_string(s.sessions()),
                                        std::to_string(s.inflight()),
                                        std::to_string(s.queued()),
                                        s.io_uring_enabled() ? "enabled" : "disabled",
                                        std::to_string(s.thread_pool_size()),
                                        std::to_string(s.rejected()),
                                        YesNo(s.draining())};
      if (wide_) {
        cells.push_back(std::to_string(s.cancels_cancelled()));
        cells.push_back(std::to_string(s.cancels_not_cancellable()));
        cells.push_back(std::to_string(s.cancels_already_done()));
        cells.push_back(std::to_string(s.cancels_not_found()));
      }
      summary.AddRow(std::move(cells));
      for (const auto& k : s.kinds()) kinds.emplace_back(&r.target, &k);
    }
    if (summary.rows() == 0) return;
    summary.Render(out_);
    if (kinds.empty()) return;
    out_ << '\n';
    Table table(KindColumns(/*with_daemon=*/true));
    for (const auto& [target, k] : kinds) {
      std::vector<std::string> cells = KindCells(*k);
      cells.insert(cells.begin(), *target);
      table.AddRow(std::move(cells));
    }
    table.Render(out_);
  }

  void Drain(const v1::DrainResponse& r) override {
    KeyValues kv;
    kv.Add("inflight_at_start", std::to_string(r.inflight_at_start()));
    kv.Add("completed_during_grace", std::to_string(r.completed_during_grace()));
    kv.Add("cancelled", std::to_string(r.cancelled()));
    if (!r.manifest_path().empty()) {
      kv.Add("manifest", r.manifest_path());
    } else if (r.inflight_at_start() == 0) {
      kv.Add("manifest", "none (nothing was in flight)");
    } else {
      kv.Add("manifest", "none written (server.drain_manifests_keep = 0, or see the daemon's log)");
    }
    out_ << "drained\n";
    kv.Render(out_, "  ");
  }

  void Checkpoint(const ::asyncd::state::v1::Checkpoint& cp) override {
    // The listing commands' tables, filled from the checkpoint.
    TargetResult<v1::ListSessionsResponse> sessions;
    TargetResult<v1::ListOperationsResponse> ops;
    Table handles({{"SESSION", Align::kRight}, {"HANDLE", Align::kRight}, {"FD", Align::kRight},
                   {"FLAGS", Align::kRight}, {"STREAM"}, {"PATH"}});
    for (const auto& s : cp.sessions()) {
      v1::SessionInfo* info = sessions.response.add_sessions();
      info->set_session_id(s.session_id());
      info->set_client_name(s.client_name());
      info->set_uid(s.uid());
      info->set_gid(s.gid());
      info->set_pid(s.pid());
      info->set_inflight(static_cast<uint32_t>(s.ops_size()));
      info->set_handles(static_cast<uint32_t>(s.handles_size()));
      info->set_age_us(s.age_us());
      info->set_lease_remaining_ms(s.lease_remaining_ms());
      info->set_bound_to_stream(s.bound_to_stream());
      for (const auto& h : s.handles()) {
        char flags[16];
        std::snprintf(flags, sizeof flags, "0%o", static_cast<unsigned>(h.open_flags()));
        handles.AddRow({std::to_string(s.session_id()), std::to_string(h.handle()),
                        std::to_string(h.fd()), flags, YesNo(h.stream()), OrDash(h.path())});
      }
      for (const auto& op : s.ops()) *ops.response.add_ops() = op;
    }
    ops.response.set_total_matched(static_cast<uint64_t>(ops.response.ops_size()));
    KeyValues kv;
    kv.Add("daemon", "asyncd " + cp.daemon_version());
    kv.Add("taken", FormatTimestamp(cp.taken_unix_nanos()) + " in " + FormatMicros(cp.took_us()));
    kv.Add("sessions", std::to_string(cp.sessions_size()));
    kv.Add("handles", std::to_string(handles.rows()));
    kv.Add("outstanding", std::to_string(ops.response.ops_size()));
    kv.Add("history", std::to_string(cp.history_size()));
    out_ << "checkpoint\n";
    kv.Render(out_, "  ");
    if (cp.sessions_size() == 0) return;
    out_ << '\n';
    Sessions({sessions});
    if (handles.rows() > 0) {
      out_ << '\n';
      handles.Render(out_);
    }
    if (ops.response.ops_size() > 0) {
      out_ << '\n';
      Operations({ops});
    }
  }

  void Health(const std::vector<TargetResult<client::HealthStatus>>& results) override {
    if (!multi_) {
      for (const auto& r : results) {
        if (!r.error) out_ << client::HealthStatusName(r.response) << '\n';
      }
      return;
    }
    Table table({{"DAEMON"}, {"STATUS"}});
    for (const auto& r : results) {
      table.AddRow(
          {r.target, r.error ? "UNREACHABLE" : std::string(client::HealthStatusName(r.response))});
    }
    table.Render(out_);
  }

  void Completion(const v1::Completion& c) override {
    KeyValues kv;
    kv.Add("op_id", FormatOpId(c.op_id()));
    kv.Add("outcome", ShortName(c.outcome()));
    kv.Add("result", FormatResult(c.result(), c.error_number()));
    if (c.error_number() != 0) kv.Add("error", StrError(c.error_number()));
    if (c.end_reason() != v1::END_REASON_UNSPECIFIED) kv.Add("end_reason", Reason(c.end_reason()));
    if (!c.message().empty()) kv.Add("message", c.message());
    kv.Add("backend", Backend(c.backend()));
    kv.Add("duration", FormatMicros(c.duration_us()));
    switch (c.kind()) {
      case v1::OP_KIND_OPEN:
        if (c.handle() != 0) kv.Add("handle", std::to_string(c.handle()));
        break;
      case v1::OP_KIND_READ:
        kv.Add("bytes", std::to_string(c.bytes_done()));
        kv.Add("data", "\"" + EscapeBytes(c.data(), wide_ ? c.data().size() : kDataPreview) + "\"");
        break;
      case v1::OP_KIND_WRITE:
        kv.Add("bytes", std::to_string(c.bytes_done()));
        break;
      case v1::OP_KIND_POLL:
        kv.Add("revents", FormatPollEvents(c.revents()));
        break;
      case v1::OP_KIND_STATX:
        if (c.has_stat()) AddStat(kv, c.stat());
        break;
      default:
        break;
    }
    kv.Render(out_);
  }

 private:
  static std::vector<Column> KindColumns(bool with_daemon) {
    std::vector<Column> cols = {{"KIND"},
                                {"BACKEND"},
                                {"COMPLETED", Align::kRight},
                                {"CANCELLED", Align::kRight},
                                {"TIMED_OUT", Align::kRight},
                                {"FAILED", Align::kRight},
                                {"P50", Align::kRight},
                                {"P99", Align::kRight}};
    if (with_daemon) cols.insert(cols.begin(), Column{"DAEMON"});
    return cols;
  }

  static std::vector<std::string> KindCells(const v1::KindStats& k) {
    return {ShortName(k.kind()),           Backend(k.backend()),
            std::to_string(k.completed()), std::to_string(k.cancelled()),
            std::to_string(k.timed_out()), std::to_string(k.failed()),
            FormatMicros(k.p50_us()),      FormatMicros(k.p99_us())};
  }

  void SingleStats(const v1::Stats& s) {
    KeyValues kv;
    kv.Add("uptime", FormatDuration(std::chrono::seconds(s.uptime_s())));
    kv.Add("sessions", std::to_string(s.sessions()));
    const v1::Limits& l = s.limits();
    kv.Add("inflight", std::to_string(s.inflight()) + OfLimit(l.max_inflight_total()) +
                           " (queued for the thread pool: " + std::to_string(s.queued()) + ")");
    kv.Add("buffered", std::to_string(s.buffered_bytes()) + OfLimit(l.max_buffered_bytes()) +
                           " payload bytes");
    if (s.io_uring_enabled()) {
      kv.Add("io_uring", "enabled for " + KindList(s.supported_uring_ops()));
    } else {
      kv.Add("io_uring", "disabled: " + OrDash(s.io_uring_unavailable_reason()));
    }
    kv.Add("thread_pool", std::to_string(s.thread_pool_size()) + " threads");
    kv.Add("paths", "resolved by " + OrDash(s.path_resolver()));
    kv.Add("cancels", "cancelled " + std::to_string(s.cancels_cancelled()) + ", not_cancellable " +
                          std::to_string(s.cancels_not_cancellable()) + ", already_done " +
                          std::to_string(s.cancels_already_done()) + ", not_found " +
                          std::to_string(s.cancels_not_found()));
    kv.Add("rejected", std::to_string(s.rejected()));
    kv.Add("draining", YesNo(s.draining()));
    if (s.has_last_restart()) {
      const v1::Restart& r = s.last_restart();
      kv.Add("last_restart",
             r.error().empty()
                 ? std::to_string(r.sessions()) + " sessions, " + std::to_string(r.handles()) +
                       " handles restored from " + std::to_string(r.checkpoint_bytes()) +
                       " bytes; handover " + FormatMicros(r.handover_us())
                 : "state lost: " + r.error());
    }
    if (wide_ && s.has_limits()) AddLimits(kv, s.limits());
    kv.Render(out_);
    if (s.kinds_size() == 0) return;
    out_ << '\n';
    Table table(KindColumns(/*with_daemon=*/false));
    for (const auto& k : s.kinds()) table.AddRow(KindCells(k));
    table.Render(out_);
  }

  static void AddStat(KeyValues& kv, const v1::Stat& st) {
    char mode[16];
    std::snprintf(mode, sizeof(mode), "0%o", st.mode());
    kv.Add("type", ShortName(st.file_type()));
    kv.Add("mode", mode);
    kv.Add("size", std::to_string(st.size_bytes()));
    kv.Add("uid/gid", std::to_string(st.uid()) + "/" + std::to_string(st.gid()));
    kv.Add("nlink", std::to_string(st.nlink()));
    kv.Add("inode", std::to_string(st.ino()) + " on " + std::to_string(st.dev_major()) + ":" +
                        std::to_string(st.dev_minor()));
    kv.Add("blocks",
           std::to_string(st.blocks()) + " x 512 (blksize " + std::to_string(st.blksize()) + ")");
    kv.Add("mtime", FormatTimestamp(st.mtime_unix_nanos()));
    kv.Add("atime", FormatTimestamp(st.atime_unix_nanos()));
    kv.Add("ctime", FormatTimestamp(st.ctime_unix_nanos()));
    if (st.btime_unix_nanos() != 0) kv.Add("btime", FormatTimestamp(st.btime_unix_nanos()));
  }

  std::ostream& out_;
  bool wide_;
  bool multi_;
  bool event_header_printed_ = false;
};

// ---------------------------------------------------------------------------
// JSON.

class JsonPrinter final : public Printer {
 public:
  JsonPrinter(std::ostream& out, bool multi) : out_(out), multi_(multi) {}

  void Operations(const std::vector<TargetResult<v1::ListOperationsResponse>>& r) override {
    Fleet(r);
  }
  void History(const std::vector<TargetResult<v1::ListHistoryResponse>>& r) override { Fleet(r); }
  void Operation(const v1::OperationInfo& op, bool) override { One(op); }
  void Cancel(const v1::CancelResponse& r) override { One(r); }
  void Event(const v1::WatchEvent& e) override { out_ << ToJson(e, false) << std::endl; }
  void Sessions(const std::vector<TargetResult<v1::ListSessionsResponse>>& r) override { Fleet(r); }
  void SessionOpened(const v1::OpenSessionResponse& r) override { One(r); }
  void SessionClosed(uint64_t, const v1::CloseSessionResponse& r) override { One(r); }
  void SessionKeptAlive(uint64_t, const v1::KeepAliveResponse& r) override { One(r); }
  void Stats(const std::vector<TargetResult<v1::Stats>>& r) override { Fleet(r); }
  void Drain(const v1::DrainResponse& r) override { One(r); }
  void Checkpoint(const ::asyncd::state::v1::Checkpoint& cp) override { One(cp); }
  void Completion(const v1::Completion& c) override { One(c); }

  void Health(const std::vector<TargetResult<client::HealthStatus>>& results) override {
    // grpc.health.v1.HealthCheckResponse in the JSON mapping.
    auto doc = [](client::HealthStatus s) {
      return "{\"status\":" + JsonQuote(client::HealthStatusName(s)) + "}";
    };
    if (!multi_) {
      for (const auto& r : results) {
        if (!r.error) out_ << doc(r.response) << '\n';
      }
      return;
    }
    out_ << "[\n";
    for (size_t i = 0; i < results.size(); ++i) {
      const auto& r = results[i];
      out_ << Element(r.target, r.error, r.error ? "" : doc(r.response))
           << (i + 1 < results.size() ? ",\n" : "\n");
    }
    out_ << "]\n";
  }

 private:
  void One(const google::protobuf::Message& m) { out_ << ToJson(m, true) << '\n'; }

  template <typename T>
  void Fleet(const std::vector<TargetResult<T>>& results) {
    if (!multi_) {
      // One target: the response itself (nothing on stdout if it failed).
      for (const auto& r : results) {
        if (!r.error) One(r.response);
      }
      return;
    }
    out_ << "[\n";
    for (size_t i = 0; i < results.size(); ++i) {
      const auto& r = results[i];
      out_ << Element(r.target, r.error, r.error ? "" : ToJson(r.response, false))
           << (i + 1 < results.size() ? ",\n" : "\n");
    }
    out_ << "]\n";
  }

  static std::string Element(const std::string& target, const std::optional<CliError>& error,
                             const std::string& response_json) {
    std::string out = "{\"target\":" + JsonQuote(target) + ",";
    if (error) {
      out += "\"error\":{\"exit_code\":" + std::to_string(ToInt(error->code)) +
             ",\"message\":" + JsonQuote(error->message) + "}}";
    } else {
      out += "\"response\":" + response_json + "}";
    }
    return out;
  }

  std::ostream& out_;
  bool multi_;
};

}  // namespace

absl::StatusOr<OutputFormat> ParseOutputFormat(std::string_view text) {
  if (text == "table") return OutputFormat::kTable;
  if (text == "wide") return OutputFormat::kWide;
  if (text == "json") return OutputFormat::kJson;
  return absl::InvalidArgumentError("invalid output format \"" + std::string(text) +
                                    "\": expected table, wide or json");
}

std::unique_ptr<Printer> NewPrinter(OutputFormat format, std::ostream& out, bool multi_target) {
  switch (format) {
    case OutputFormat::kJson:
      return std::make_unique<JsonPrinter>(out, multi_target);
    case OutputFormat::kWide:
      return std::make_unique<TablePrinter>(out, /*wide=*/true, multi_target);
    case OutputFormat::kTable:
    default:
      return std::make_unique<TablePrinter>(out, /*wide=*/false, multi_target);
  }
}

std::string ToJson(const google::protobuf::Message& message, bool pretty) {
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = pretty;
  options.always_print_primitive_fields = true;
  options.preserve_proto_field_names = true;
  std::string out;
  if (!google::protobuf::util::MessageToJsonString(message, &out, options).ok()) {
    // Only possible for invalid UTF-8 in a string field; keep the output JSON.
    return "{\"error\":\"response not representable as JSON\"}";
  }
  while (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

std::string JsonQuote(std::string_view s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}

}  // namespace asyncd::ctl
