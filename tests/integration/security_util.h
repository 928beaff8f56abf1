#pragma once

// Helpers shared by the security tests (auth, limits, TLS).
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace asyncd::testing {

/// A config file in its own temporary directory (the daemon's directory is
/// made later, by Daemon), removed at the end.
class ConfigFile {
 public:
  explicit ConfigFile(const std::string& text) {
    char tmpl[] = "/tmp/asyncd-cfg.XXXXXX";
    dir_ = mkdtemp(tmpl);
    path_ = dir_ + "/asyncd.toml";
    std::ofstream(path_) << text;
  }
  ~ConfigFile() {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  ConfigFile(const ConfigFile&) = delete;
  ConfigFile& operator=(const ConfigFile&) = delete;

  const std::string& dir() const { return dir_; }
  const std::string& path() const { return path_; }
  std::vector<std::string> Args() const { return {"--config", path_}; }

 private:
  std::string dir_, path_;
};

}  // namespace asyncd::testing
