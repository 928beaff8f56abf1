// asyncctl printers: -o json prints exactly the response in protobuf's JSON
// mapping (it parses back into the same message); several targets give a
// JSON array of {target, response|error}; tables list oldest operations
// first, add a DAEMON column for several targets and more columns in wide.

#include "client/ctl/printer.h"

#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/message_differencer.h>
#include <gtest/gtest.h>

#include <sstream>

namespace asyncd::ctl {
namespace {

v1::OperationInfo Op(uint64_t id, uint64_t age_us, const std::string& target = "") {
  v1::OperationInfo op;
  op.set_op_id(id);
  op.set_session_id(65536);
  op.set_client("bench");
  op.set_uid(1000);
  op.set_pid(42);
  op.set_kind(v1::OP_KIND_READ);
  op.set_target(target);
  op.set_handle(3);
  op.set_backend(v1::BACKEND_IO_URING);
  op.set_state(v1::OP_STATE_DISPATCHED);
  op.set_cancellable(true);
  op.set_age_us(age_us);
  op.set_bytes_done(4096);
  op.set_deadline_ms(30000);
  return op;
}

std::vector<TargetResult<v1::ListOperationsResponse>> OneTarget() {
  TargetResult<v1::ListOperationsResponse> r;
  r.target = "/run/asyncd/asyncd.sock";
  *r.response.add_ops() = Op(0x10, 1500000, "h:3");
  *r.response.add_ops() = Op(0x1000050000003, 250000000, "h:3");
  r.response.set_total_matched(2);
  return {r};
}

std::string Print(OutputFormat format, bool multi, const std::function<void(Printer&)>& print) {
  std::ostringstream out;
  std::unique_ptr<Printer> p = NewPrinter(format, out, multi);
  print(*p);
  return out.str();
}

TEST(JsonPrinterTest, SingleTargetIsTheResponseItself) {
  auto results = OneTarget();
  std::string json = Print(OutputFormat::kJson, false, [&](Printer& p) { p.Operations(results); });
  v1::ListOperationsResponse parsed;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(json, &parsed).ok()) << json;
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(parsed, results[0].response));
  // Proto field names, enum names, zero values present.
  EXPECT_NE(json.find("\"op_id\""), std::string::npos);
  EXPECT_NE(json.find("\"OP_STATE_DISPATCHED\""), std::string::npos);
  EXPECT_NE(json.find("\"cancel_requested\": false"), std::string::npos);
}

TEST(JsonPrinterTest, MultiTargetIsAnArrayWithErrors) {
  auto results = OneTarget();
  TargetResult<v1::ListOperationsResponse> down;
  down.target = "/tmp/b.sock";
  down.error = CliError{ExitCode::kUnreachable, "cannot reach asyncd at /tmp/b.sock: \"gone\""};
  results.push_back(down);
  std::string json = Print(OutputFormat::kJson, true, [&](Printer& p) { p.Operations(results); });
  // Parse the array with protobuf's JSON parser via google.protobuf.ListValue.
  google::protobuf::ListValue list;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(json, &list).ok()) << json;
  ASSERT_EQ(list.values_size(), 2);
  const auto& first = list.values(0).struct_value().fields();
  EXPECT_EQ(first.at("target").string_value(), "/run/asyncd/asyncd.sock");
  EXPECT_EQ(first.at("response").struct_value().fields().at("ops").list_value().values_size(), 2);
  const auto& second = list.values(1).struct_value().fields();
  EXPECT_EQ(second.at("error").struct_value().fields().at("exit_code").number_value(), 3);
  EXPECT_EQ(second.at("error").struct_value().fields().at("message").string_value(),
            "cannot reach asyncd at /tmp/b.sock: \"gone\"");
}

TEST(JsonPrinterTest, WatchEventsAreOneLineEach) {
  v1::WatchEvent e;
  e.set_op_id(7);
  e.set_type(v1::EVENT_TYPE_COMPLETED);
  std::string out = Print(OutputFormat::kJson, false, [&](Printer& p) {
    p.Event(e);
    p.Event(e);
  });
  ASSERT_EQ(std::count(out.begin(), out.end(), '\n'), 2);
  std::string first_line = out.substr(0, out.find('\n'));
  v1::WatchEvent parsed;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(first_line, &parsed).ok());
  EXPECT_EQ(parsed.op_id(), 7u);
}

TEST(JsonPrinterTest, QuoteEscapes) {
  EXPECT_EQ(JsonQuote("a\"b\\c\n\x01"), "\"a\\\"b\\\\c\\n\\u0001\"");
}

TEST(TablePrinterTest, OldestFirstWithDefaultColumns) {
  auto results = OneTarget();
  std::string out = Print(OutputFormat::kTable, false, [&](Printer& p) { p.Operations(results); });
  std::istringstream lines(out);
  std::string header, row1, row2;
  std::getline(lines, header);
  std::getline(lines, row1);
  std::getline(lines, row2);
  EXPECT_EQ(header.find("OP_ID"), 0u);
  EXPECT_EQ(row1.find("0x1000050000003"), 0u);  // oldest first
  EXPECT_EQ(row2.find("0x10 "), 0u);
  // Columns line up: each header starts where its cells start (left-aligned
  // ones) or ends where they end (right-aligned AGE).
  EXPECT_EQ(row1.find("bench"), header.find("CLIENT"));
  EXPECT_EQ(row2.find("bench"), header.find("CLIENT"));
  EXPECT_EQ(row1.find("dispatched"), header.find("STATE"));
  EXPECT_EQ(row1.find("4m10s") + 5, header.find("AGE") + 3);
  EXPECT_EQ(row2.find("1.5s") + 4, header.find("AGE") + 3);
  EXPECT_EQ(header.find("UID"), std::string::npos);
  EXPECT_EQ(header.find("DAEMON"), std::string::npos);
}

TEST(TablePrinterTest, WideAddsColumnsAndMultiAddsDaemon) {
  auto results = OneTarget();
  std::string out = Print(OutputFormat::kWide, true, [&](Printer& p) { p.Operations(results); });
  std::string header = out.substr(0, out.find('\n'));
  EXPECT_EQ(header.find("DAEMON"), 0u);
  for (const char* col : {"UID", "PID", "HANDLE", "BYTES", "CANCEL_REQUESTED", "DEADLINE"}) {
    EXPECT_NE(header.find(col), std::string::npos) << col;
  }
  EXPECT_NE(out.find("/run/asyncd/asyncd.sock  0x1000050000003"), std::string::npos) << out;
  EXPECT_NE(out.find("30s"), std::string::npos);  // deadline
}

TEST(TablePrinterTest, LongTargetsTruncatedKeepingTheEnd) {
  std::vector<TargetResult<v1::ListOperationsResponse>> results(1);
  std::string path = "/srv/data/" + std::string(60, 'x') + "/file.bin";
  *results[0].response.add_ops() = Op(1, 1, path);
  std::string table =
      Print(OutputFormat::kTable, false, [&](Printer& p) { p.Operations(results); });
  EXPECT_EQ(table.find(path), std::string::npos);
  EXPECT_NE(table.find("...xxxx"), std::string::npos);
  EXPECT_NE(table.find("/file.bin"), std::string::npos);
  std::string wide = Print(OutputFormat::kWide, false, [&](Printer& p) { p.Operations(results); });
  EXPECT_NE(wide.find(path), std::string::npos);
}

TEST(TablePrinterTest, CancelPrintsOutcomesAndCounts) {
  v1::CancelResponse r;
  auto* o = r.add_outcomes();
  o->set_op_id(0x10);
  o->set_result(v1::CANCEL_RESULT_NOT_CANCELLABLE);
  r.mutable_counts()->set_not_cancellable(1);
  r.mutable_counts()->set_cancelled(4);
  r.set_outcomes_truncated(true);
  std::string out = Print(OutputFormat::kTable, false, [&](Printer& p) { p.Cancel(r); });
  EXPECT_NE(out.find("0x10   not_cancellable"), std::string::npos) << out;
  EXPECT_NE(out.find("cancelled: 4  not_cancellable: 1  already_done: 0  not_found: 0"),
            std::string::npos)
      << out;
  EXPECT_NE(out.find("truncated"), std::string::npos);
}

TEST(TablePrinterTest, FailedTargetsPrintNothingOnStdout) {
  std::vector<TargetResult<v1::ListSessionsResponse>> results(1);
  results[0].error = CliError{ExitCode::kUnreachable, "x"};
  testing::internal::CaptureStderr();
  std::string out = Print(OutputFormat::kTable, false, [&](Printer& p) { p.Sessions(results); });
  std::string err = testing::internal::GetCapturedStderr();
  EXPECT_EQ(out, "");
  EXPECT_EQ(err, "");  // no "No sessions." when nobody answered
}

// The value of the "manifest:" line of `asyncctl drain`'s table output.
std::string ManifestLine(const std::string& out) {
  const size_t at = out.find("  manifest:");
  if (at == std::string::npos) return "<no manifest line>";
  const size_t value = out.find_first_not_of(' ', at + 11);
  return out.substr(value, out.find('\n', value) - value);
}

TEST(TablePrinterTest, DrainSaysWhereTheManifestIsOrWhyThereIsNone) {
  v1::DrainResponse r;
  r.set_inflight_at_start(2);
  r.set_cancelled(2);
  r.set_manifest_path("/var/lib/asyncd/drain-manifest-20261205T023512.123456Z.json");
  std::string out = Print(OutputFormat::kTable, false, [&](Printer& p) { p.Drain(r); });
  EXPECT_EQ(out.rfind("drained\n", 0), 0u) << out;
  EXPECT_EQ(ManifestLine(out), "/var/lib/asyncd/drain-manifest-20261205T023512.123456Z.json");
  r.clear_manifest_path();
  out = Print(OutputFormat::kTable, false, [&](Printer& p) { p.Drain(r); });
  EXPECT_EQ(ManifestLine(out),
            "none written (server.drain_manifests_keep = 0, or see the daemon's log)");
  r.set_inflight_at_start(0);
  r.set_cancelled(0);
  out = Print(OutputFormat::kTable, false, [&](Printer& p) { p.Drain(r); });
  EXPECT_EQ(ManifestLine(out), "none (nothing was in flight)");
  // JSON: the response itself, manifest_path present even when empty.
  out = Print(OutputFormat::kJson, false, [&](Printer& p) { p.Drain(r); });
  EXPECT_NE(out.find("\"manifest_path\": \"\""), std::string::npos) << out;
}

TEST(OutputFormatTest, Parses) {
  EXPECT_EQ(*ParseOutputFormat("table"), OutputFormat::kTable);
  EXPECT_EQ(*ParseOutputFormat("wide"), OutputFormat::kWide);
  EXPECT_EQ(*ParseOutputFormat("json"), OutputFormat::kJson);
  EXPECT_FALSE(ParseOutputFormat("yaml").ok());
}

}  // namespace
}  // namespace asyncd::ctl
