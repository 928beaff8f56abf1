// asyncctl tables: columns are as wide as their widest cell, separated by
// two spaces, right-aligned where asked, with no trailing spaces.

#include "client/ctl/table.h"

#include <gtest/gtest.h>

#include <sstream>

namespace asyncd::ctl {
namespace {

TEST(TableTest, AlignsColumnsToWidestCell) {
  Table t({{"OP_ID"}, {"KIND"}, {"AGE", Align::kRight}});
  t.AddRow({"0x1", "read", "12.3s"});
  t.AddRow({"0x1000050000003", "timeout", "4m10s"});
  t.AddRow({"0x22", "nop", "7us"});
  std::ostringstream out;
  t.Render(out);
  EXPECT_EQ(out.str(),
            "OP_ID            KIND       AGE\n"
            "0x1              read     12.3s\n"
            "0x1000050000003  timeout  4m10s\n"
            "0x22             nop        7us\n");
}

TEST(TableTest, NoTrailingSpacesAndShortRowsPadded) {
  Table t({{"A"}, {"LONGHEADER"}});
  t.AddRow({"x"});                // missing cell: empty
  t.AddRow({"y", "z", "extra"});  // extra cell: dropped
  std::ostringstream out;
  t.Render(out);
  EXPECT_EQ(out.str(),
            "A  LONGHEADER\n"
            "x\n"
            "y  z\n");
  EXPECT_EQ(t.rows(), 2u);
}

TEST(TableTest, HeaderOnlyWhenEmpty) {
  Table t({{"SESSION", Align::kRight}, {"CLIENT"}});
  std::ostringstream out;
  t.Render(out);
  EXPECT_EQ(out.str(), "SESSION  CLIENT\n");
}

TEST(KeyValuesTest, AlignsValues) {
  KeyValues kv;
  kv.Add("op_id", "0x1");
  kv.Add("cancel_requested", "no");
  kv.Add("target", "");
  std::ostringstream out;
  kv.Render(out, "  ");
  EXPECT_EQ(out.str(),
            "  op_id:             0x1\n"
            "  cancel_requested:  no\n"
            "  target:\n");
}

}  // namespace
}  // namespace asyncd::ctl
