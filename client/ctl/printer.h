#pragma once

// The printer interface chosen by -o (as etcdctl's printer): every command
// hands its responses to a Printer and never formats output itself.
//
//   table  aligned columns (default); single objects as "KEY:  value" lines.
//   wide   table plus more columns (uid/pid, handle, bytes, cancel
//          requested, deadline, ...) and untruncated targets/data.
//   json   protobuf's JSON mapping of the response (proto field names, enum
//          names, 64-bit integers as strings, zero values included), one
//          document on stdout. Several targets: a JSON array, one element
//          per target in command-line order:
//            [{"target": "/run/a.sock", "response": {...}},
//             {"target": "/run/b.sock", "error": {"code": 3, "message": "..."}}]
//          ops watch prints one compact document per event and line (JSON
//          Lines); ops list --watch prints one document per refresh.

#include <cstdint>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "asyncd/unary_client.h"
#include "asyncd/v1/asyncd.pb.h"
#include "client/ctl/exit_code.h"

namespace asyncd::ctl {

enum class OutputFormat { kTable, kWide, kJson };

/// Parses "table", "wide" or "json".
[[nodiscard]] absl::StatusOr<OutputFormat> ParseOutputFormat(std::string_view text);

/// One daemon's answer in a fleet command: the response, or the error that
/// was already reported on stderr.
template <typename T>
struct TargetResult {
  std::string target;  // as the user named it
  std::optional<CliError> error;
  T response;
};

class Printer {
 public:
  virtual ~Printer() = default;

  /// ops list. Table: oldest first, a DAEMON column when several targets.
  virtual void Operations(const std::vector<TargetResult<v1::ListOperationsResponse>>& r) = 0;
  /// ops history, in the daemon's order (most recent or slowest first).
  virtual void History(const std::vector<TargetResult<v1::ListHistoryResponse>>& r) = 0;
  /// ops get; the timeline table only when `timeline` (JSON always has it).
  virtual void Operation(const v1::OperationInfo& op, bool timeline) = 0;
  /// ops cancel: per-op outcomes and the counts.
  virtual void Cancel(const v1::CancelResponse& response) = 0;
  /// ops watch: one event, printed and flushed at once.
  virtual void Event(const v1::WatchEvent& event) = 0;
  /// sessions list / open / close / keepalive.
  virtual void Sessions(const std::vector<TargetResult<v1::ListSessionsResponse>>& r) = 0;
  virtual void SessionOpened(const v1::OpenSessionResponse& response) = 0;
  virtual void SessionClosed(uint64_t session_id, const v1::CloseSessionResponse& response) = 0;
  virtual void SessionKeptAlive(uint64_t session_id, const v1::KeepAliveResponse& response) = 0;
  /// stats.
  virtual void Stats(const std::vector<TargetResult<v1::Stats>>& r) = 0;
  /// drain.
  virtual void Drain(const v1::DrainResponse& response) = 0;
  /// checkpoint: a summary, then every session, handle and outstanding op.
  /// JSON: the whole checkpoint.
  virtual void Checkpoint(const ::asyncd::state::v1::Checkpoint& checkpoint) = 0;
  /// health.
  virtual void Health(const std::vector<TargetResult<client::HealthStatus>>& r) = 0;
  /// submit: the completion of the submitted operation.
  virtual void Completion(const v1::Completion& completion) = 0;
};

/// A printer writing to `out`. `multi_target` selects the fleet layouts
/// (DAEMON column / JSON array) for the commands that take several targets.
std::unique_ptr<Printer> NewPrinter(OutputFormat format, std::ostream& out, bool multi_target);

/// JSON text of a message per the options above; `pretty` adds newlines and
/// indentation. Exposed for tests.
std::string ToJson(const google::protobuf::Message& message, bool pretty);

/// A JSON string literal (quoted, escaped) of UTF-8 text. Exposed for tests.
std::string JsonQuote(std::string_view s);

}  // namespace asyncd::ctl
