// deploy/asyncd.toml.example documents every config key with its embedded
// default: parsed over a Config whose every field differs from the default,
// it must give back exactly the defaults (so no key is missing and no
// documented default is wrong). Unknown keys and bad values are refused with
// "FILE:LINE: reason".
#include <filesystem>
#include <fstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "daemon/config.h"

namespace asyncd::daemon {
namespace {

using ::testing::HasSubstr;

std::string ExamplePath() {
  return (std::filesystem::path(__FILE__).parent_path() / "../../deploy/asyncd.toml.example")
      .lexically_normal()
      .string();
}

// Every field set to something other than its default.
Config Poisoned() {
  Config c;
  c.socket = "/poison.sock";
  c.takeover_socket = "/poison.takeover";
  c.ring_socket = "/poison.ring";
  c.ring_spin_us = 3;
  c.root = "/poison";
  c.tcp = "127.0.0.1:1";
  c.metrics = "127.0.0.1:2";
  c.log_level = "trace";
  c.state_dir = "/poison-state";
  c.socket_mode = 0600;
  c.drain_grace_ms = 1;
  c.drain_manifests_keep = 3;
  c.io_uring = false;
  c.uring_entries = 8;
  c.thread_pool_threads = 3;
  c.thread_pool_queue = 3;
  c.path_resolver = "userspace";
  c.max_sessions = 3;
  c.max_inflight_per_session = 3;
  c.max_pool_queued_per_session = 3;
  c.max_pool_running_per_session = 3;
  c.max_batch_ops = 3;
  c.max_op_bytes = 3;
  c.max_handles_per_session = 3;
  c.max_message_bytes = 8192;
  c.default_lease_ms = 200;
  c.max_lease_ms = 300;
  c.history_capacity = 3;
  c.slow_history_capacity = 3;
  c.max_watchers = 3;
  c.watch_buffer_events = 32;
  c.admin_uids = {7};
  c.admin_gids = {7};
  c.tcp_insecure = true;
  c.tls_cert = "/poison.crt";
  c.tls_key = "/poison.key";
  c.tls_client_ca = "/poison-ca.crt";
  c.socket_group = "poison";
  c.socket_gid = 7;
  c.max_inflight_total = 3;
  c.max_buffered_bytes = 8192;
  c.admin_groups = {"poison"};
  c.admin_group_gids = {7};
  c.admin_tls_cns = {"poison"};
  c.shares = {ShareConfig{.path = "poison", .uids = {7}}};
  return c;
}

std::string WriteTemp(const std::string& name, const std::string& text) {
  const std::string path = testing::TempDir() + "/" + name;
  std::ofstream(path) << text;
  return path;
}

TEST(ConfigExampleTest, PoisonedDiffersFromDefaultsInEveryField) {
  // Guards the test itself: a field added to Config but not poisoned here
  // would make the next test blind to it. Adding a key: poison it, and
  // document it in deploy/asyncd.toml.example.
  // Fails to compile when Config gains or loses a field.
  [[maybe_unused]] const auto& [f1,f2,f3,f4,f5,f6,f7,f8,f9,f10,f11,f12,f13,f14,f15,f16,f17,f18,f19,f20,f21,f22,f23,f24,f25,f26,f27,f28,f29,f30,f31,f32,f33,f34,f35,f36,f37,f38,f39,f40,f41,f42,f43,f44,f45] = Config{};
  EXPECT_NE(Poisoned(), Config{});
}

TEST(ConfigExampleTest, ExampleSetsEveryKeyToItsDefault) {
  // No shares is written by writing none: the example shows one commented
  // out (checked below), so that field starts at its default here.
  Config poisoned = Poisoned();
  poisoned.shares.clear();
  absl::StatusOr<Config> loaded = LoadConfigFile(ExamplePath(), poisoned);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  const Config defaults;
  EXPECT_EQ(loaded->socket, defaults.socket);
  EXPECT_EQ(loaded->takeover_socket, defaults.takeover_socket);
  EXPECT_EQ(loaded->ring_socket, defaults.ring_socket);
  EXPECT_EQ(loaded->ring_spin_us, defaults.ring_spin_us);
  EXPECT_EQ(loaded->root, defaults.root);
  EXPECT_EQ(loaded->tcp, defaults.tcp);
  EXPECT_EQ(loaded->metrics, defaults.metrics);
  EXPECT_EQ(loaded->log_level, defaults.log_level);
  EXPECT_EQ(loaded->state_dir, defaults.state_dir);
  EXPECT_EQ(loaded->socket_mode, defaults.socket_mode);
  EXPECT_EQ(loaded->drain_grace_ms, defaults.drain_grace_ms);
  EXPECT_EQ(loaded->drain_manifests_keep, defaults.drain_manifests_keep);
  EXPECT_EQ(loaded->io_uring, defaults.io_uring);
  EXPECT_EQ(loaded->uring_entries, defaults.uring_entries);
  EXPECT_EQ(loaded->thread_pool_threads, defaults.thread_pool_threads);
  EXPECT_EQ(loaded->thread_pool_queue, defaults.thread_pool_queue);
  EXPECT_EQ(loaded->path_resolver, defaults.path_resolver);
  EXPECT_EQ(loaded->max_sessions, defaults.max_sessions);
  EXPECT_EQ(loaded->max_inflight_per_session, defaults.max_inflight_per_session);
  EXPECT_EQ(loaded->max_pool_queued_per_session, defaults.max_pool_queued_per_session);
  EXPECT_EQ(loaded->max_pool_running_per_session, defaults.max_pool_running_per_session);
  EXPECT_EQ(loaded->max_batch_ops, defaults.max_batch_ops);
  EXPECT_EQ(loaded->max_op_bytes, defaults.max_op_bytes);
  EXPECT_EQ(loaded->max_handles_per_session, defaults.max_handles_per_session);
  EXPECT_EQ(loaded->max_message_bytes, defaults.max_message_bytes);
  EXPECT_EQ(loaded->default_lease_ms, defaults.default_lease_ms);
  EXPECT_EQ(loaded->max_lease_ms, defaults.max_lease_ms);
  EXPECT_EQ(loaded->history_capacity, defaults.history_capacity);
  EXPECT_EQ(loaded->slow_history_capacity, defaults.slow_history_capacity);
  EXPECT_EQ(loaded->max_watchers, defaults.max_watchers);
  EXPECT_EQ(loaded->watch_buffer_events, defaults.watch_buffer_events);
  EXPECT_EQ(loaded->admin_uids, defaults.admin_uids);
  EXPECT_EQ(loaded->admin_gids, defaults.admin_gids);
  EXPECT_EQ(loaded->tcp_insecure, defaults.tcp_insecure);
  EXPECT_EQ(loaded->tls_cert, defaults.tls_cert);
  EXPECT_EQ(loaded->tls_key, defaults.tls_key);
  EXPECT_EQ(loaded->tls_client_ca, defaults.tls_client_ca);
  EXPECT_EQ(loaded->socket_group, defaults.socket_group);
  EXPECT_EQ(loaded->socket_gid, defaults.socket_gid);
  EXPECT_EQ(loaded->max_inflight_total, defaults.max_inflight_total);
  EXPECT_EQ(loaded->max_buffered_bytes, defaults.max_buffered_bytes);
  EXPECT_EQ(loaded->admin_groups, defaults.admin_groups);
  EXPECT_EQ(loaded->admin_group_gids, defaults.admin_group_gids);
  EXPECT_EQ(loaded->admin_tls_cns, defaults.admin_tls_cns);
  EXPECT_EQ(*loaded, defaults);  // and nothing else differs
}

// The example's commented-out [[share]] is a working one once uncommented.
TEST(ConfigExampleTest, TheCommentedShareExampleParses) {
  std::ifstream in(ExamplePath());
  std::string text, line;
  bool in_share = false;
  while (std::getline(in, line)) {
    in_share = in_share || line == "# [[share]]";
    text += (in_share && line.rfind("# ", 0) == 0 ? line.substr(2) : line) + "\n";
  }
  ASSERT_TRUE(in_share) << "no \"# [[share]]\" line in the example";
  absl::StatusOr<Config> loaded = LoadConfigFile(WriteTemp("share.toml", text), Config{});
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ASSERT_EQ(loaded->shares.size(), 1u);
  EXPECT_EQ(loaded->shares[0].path, "common");
  EXPECT_FALSE(loaded->shares[0].uids.empty());
}

TEST(ConfigExampleTest, UnknownKeyIsRefusedWithFileAndLine) {
  const std::string path =
      WriteTemp("unknown.toml", "[server]\nlog_level = \"info\"\nlog_levle = \"debug\"\n");
  absl::StatusOr<Config> loaded = LoadConfigFile(path, Config{});
  ASSERT_FALSE(loaded.ok());
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(loaded.status().message(), HasSubstr(path + ":3: unknown key server.log_levle"));
}

TEST(ConfigExampleTest, UnknownSectionIsRefusedWithFileAndLine) {
  const std::string path = WriteTemp("section.toml", "\n[servre]\nsocket = \"/x\"\n");
  absl::StatusOr<Config> loaded = LoadConfigFile(path, Config{});
  ASSERT_FALSE(loaded.ok());
  EXPECT_THAT(loaded.status().message(), HasSubstr(path + ":2: unknown section [servre]"));
}

TEST(ConfigExampleTest, BadValueIsRefusedWithFileLineAndReason) {
  const std::string path = WriteTemp("bad.toml", "[limits]\n\nmax_batch_ops = 0\n");
  absl::StatusOr<Config> loaded = LoadConfigFile(path, Config{});
  ASSERT_FALSE(loaded.ok());
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(loaded.status().message(),
              HasSubstr(path + ":3: limits.max_batch_ops must be an integer in [1, 65536]"));
}

TEST(ConfigExampleTest, WrongTypeIsRefused) {
  const std::string path = WriteTemp("type.toml", "[backends]\nio_uring = \"yes\"\n");
  absl::StatusOr<Config> loaded = LoadConfigFile(path, Config{});
  ASSERT_FALSE(loaded.ok());
  EXPECT_THAT(loaded.status().message(),
              HasSubstr(path + ":2: backends.io_uring must be true or false"));
}

TEST(ConfigExampleTest, BadMetricsAddressIsRefused) {
  const std::string path = WriteTemp("metrics.toml", "[server]\nmetrics = \"localhost\"\n");
  absl::StatusOr<Config> loaded = LoadConfigFile(path, Config{});
  ASSERT_FALSE(loaded.ok());
  EXPECT_THAT(loaded.status().message(), HasSubstr(path + ":2: server.metrics must be"));
  const std::string ok = WriteTemp("metrics-ok.toml", "[server]\nmetrics = \"[::1]:9464\"\n");
  absl::StatusOr<Config> good = LoadConfigFile(ok, Config{});
  ASSERT_TRUE(good.ok()) << good.status();
  EXPECT_EQ(good->metrics, "[::1]:9464");
}

TEST(ConfigExampleTest, SyntaxErrorNamesTheLine) {
  const std::string path = WriteTemp("syntax.toml", "[server]\nlog_level = \n");
  absl::StatusOr<Config> loaded = LoadConfigFile(path, Config{});
  ASSERT_FALSE(loaded.ok());
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(loaded.status().message(), HasSubstr(path + ":2: "));
}

TEST(ConfigExampleTest, MissingFileIsNotFound) {
  absl::StatusOr<Config> loaded = LoadConfigFile(testing::TempDir() + "/no-such.toml", Config{});
  ASSERT_FALSE(loaded.ok());
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kNotFound);
}

TEST(ConfigExampleTest, AdminGroupsAreResolvedByNameAndUnknownNamesRefused) {
  // "root" (gid 0) exists everywhere.
  const std::string good =
      WriteTemp("groups.toml", "[admin]\ngroups = [\"root\"]\n[server]\nsocket_group = \"root\"\n");
  absl::StatusOr<Config> loaded = LoadConfigFile(good, Config{});
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->admin_group_gids, std::vector<uint32_t>{0});
  EXPECT_EQ(loaded->socket_gid, 0);
  const std::string bad =
      WriteTemp("badgroup.toml", "[admin]\n\ngroups = [\"no-such-group-asyncd\"]\n");
  loaded = LoadConfigFile(bad, Config{});
  ASSERT_FALSE(loaded.ok());
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(loaded.status().message(),
              HasSubstr(bad + ":3: admin.groups names unknown group \"no-such-group-asyncd\""));
  const std::string bad_socket =
      WriteTemp("badsock.toml", "[server]\nsocket_group = \"no-such-group-asyncd\"\n");
  loaded = LoadConfigFile(bad_socket, Config{});
  ASSERT_FALSE(loaded.ok());
  EXPECT_THAT(loaded.status().message(), HasSubstr(bad_socket + ":2: server.socket_group"));
}

TEST(ConfigExampleTest, TcpRequiresTlsUnlessExplicitlyInsecure) {
  Config c;
  EXPECT_TRUE(ValidateConfig(c).ok());
  c.tcp = "127.0.0.1:0";
  EXPECT_THAT(ValidateConfig(c).message(), HasSubstr("requires TLS"));
  c.tcp_insecure = true;
  EXPECT_TRUE(ValidateConfig(c).ok());
  c.tls_cert = "/c.pem";
  c.tls_key = "/k.pem";
  EXPECT_FALSE(ValidateConfig(c).ok());  // both TLS and insecure
  c.tcp_insecure = false;
  EXPECT_TRUE(ValidateConfig(c).ok());
  c.tls_key.clear();
  EXPECT_FALSE(ValidateConfig(c).ok());  // a cert without its key
  c = Config{};
  c.tls_client_ca = "/ca.pem";
  EXPECT_FALSE(ValidateConfig(c).ok());  // TLS settings without TCP
}

TEST(LiveLimitsTest, ApplyChangesWhatReadersSee) {
  Config c;
  LiveLimits live(c);
  EXPECT_EQ(live.max_op_bytes(), c.max_op_bytes);
  c.max_op_bytes = 4096;
  c.max_batch_ops = 8;
  c.default_lease_ms = 1000;
  c.drain_grace_ms = 5;
  live.Apply(c);
  EXPECT_EQ(live.max_op_bytes(), 4096u);
  EXPECT_EQ(live.max_batch_ops(), 8u);
  EXPECT_EQ(live.default_lease_ms(), 1000u);
  EXPECT_EQ(live.drain_grace_ms(), 5u);
  c.max_inflight_total = 7;
  c.max_buffered_bytes = 8192;
  live.Apply(c);
  EXPECT_EQ(live.max_inflight_total(), 7u);
  EXPECT_EQ(live.max_buffered_bytes(), 8192u);
}

}  // namespace
}  // namespace asyncd::daemon
