// The client library and asyncctl are built on the public API and on
// src/common only: no source under client/ includes a src/core/ header, so
// the installed library never depends on the daemon's internals.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace asyncd::client {
namespace {

namespace fs = std::filesystem;

// CMake compiles this file by its absolute path: tests/client/<this file>.
fs::path RepoRoot() { return fs::path(__FILE__).parent_path().parent_path().parent_path(); }

TEST(IncludeBoundaryTest, ClientSourcesIncludeNoCoreHeader) {
  const fs::path client = RepoRoot() / "client";
  ASSERT_TRUE(fs::is_directory(client)) << client;
  std::vector<std::string> offenders;
  size_t scanned = 0;
  for (const fs::directory_entry& entry : fs::recursive_directory_iterator(client)) {
    const std::string ext = entry.path().extension().string();
    if (!entry.is_regular_file() || (ext != ".h" && ext != ".cc")) continue;
    ++scanned;
    std::ifstream in(entry.path());
    std::string line;
    for (int number = 1; std::getline(in, line); ++number) {
      if (line.rfind("#include", 0) == 0 && line.find("src/core/") != std::string::npos) {
        offenders.push_back(entry.path().string() + ":" + std::to_string(number) + ": " + line);
      }
    }
  }
  EXPECT_GT(scanned, 10u);
  EXPECT_TRUE(offenders.empty()) << ::testing::PrintToString(offenders);
}

}  // namespace
}  // namespace asyncd::client
