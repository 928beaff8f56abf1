// Identity and authorization (daemon/caller.h): who is an admin on the unix
// socket (uid 0, the daemon's own uid, [admin] uids, gids and groups,
// primary or supplementary) and on TLS (the certificate's CN); everyone
// else is not; an unverified TCP peer is nobody. Deny refuses with
// PERMISSION_DENIED and logs at most 20 lines a second.
#include "daemon/caller.h"

#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <sstream>
#include <string>
#include <thread>

namespace asyncd::daemon {
namespace {

constexpr uint32_t kDaemonUid = 990;

AdminRules Rules() {
  Config config;
  config.admin_uids = {1500};
  config.admin_gids = {2500};
  config.admin_group_gids = {3500};
  config.admin_tls_cns = {"ops-admin"};
  return AdminRules::FromConfig(config, kDaemonUid);
}

PeerCred Cred(uint32_t uid, uint32_t gid, std::vector<uint32_t> groups = {}) {
  return PeerCred{.uid = uid, .gid = gid, .pid = 4242, .groups = std::move(groups)};
}

TEST(CallerTest, RootIsAdmin) { EXPECT_TRUE(CallerFromPeerCred(Cred(0, 100), Rules()).admin); }

TEST(CallerTest, TheDaemonsOwnUidIsAdmin) {
  EXPECT_TRUE(CallerFromPeerCred(Cred(kDaemonUid, 100), Rules()).admin);
}

TEST(CallerTest, ConfiguredUidIsAdmin) {
  EXPECT_TRUE(CallerFromPeerCred(Cred(1500, 100), Rules()).admin);
}

TEST(CallerTest, ConfiguredGidAsPrimaryGroupIsAdmin) {
  EXPECT_TRUE(CallerFromPeerCred(Cred(1000, 2500), Rules()).admin);
}

TEST(CallerTest, ConfiguredGidAsSupplementaryGroupIsAdmin) {
  EXPECT_TRUE(CallerFromPeerCred(Cred(1000, 100, {7, 2500}), Rules()).admin);
}

TEST(CallerTest, ConfiguredGroupNameResolvedIsAdmin) {
  EXPECT_TRUE(CallerFromPeerCred(Cred(1000, 3500), Rules()).admin);
  EXPECT_TRUE(CallerFromPeerCred(Cred(1000, 100, {3500}), Rules()).admin);
}

TEST(CallerTest, AnyoneElseIsNotAdmin) {
  const Caller c = CallerFromPeerCred(Cred(1000, 100, {7, 8}), Rules());
  EXPECT_FALSE(c.admin);
  EXPECT_EQ(c.uid, 1000u);
  EXPECT_EQ(c.gid, 100u);
  EXPECT_EQ(c.pid, 4242u);
  EXPECT_EQ(c.peer, "unix pid 4242");
}

TEST(CallerTest, ConfigUidsDoNotMakeAGroupAdmin) {
  // 1500 is an admin uid, not an admin gid.
  EXPECT_FALSE(CallerFromPeerCred(Cred(1000, 1500, {1500}), Rules()).admin);
}

TEST(CallerTest, UnverifiedTcpPeerIsNobody) {
  const Caller c = CallerFromCertificate("ipv4:10.0.0.1:5000", std::nullopt, Rules());
  EXPECT_EQ(c.uid, 65534u);
  EXPECT_EQ(c.gid, 65534u);
  EXPECT_FALSE(c.admin);
  EXPECT_EQ(c.peer, "ipv4:10.0.0.1:5000");
}

TEST(CallerTest, CertificateCnNamesAUid) {
  const Caller c = CallerFromCertificate("ipv4:10.0.0.1:5000", "uid:1234", Rules());
  EXPECT_EQ(c.uid, 1234u);
  EXPECT_EQ(c.gid, 65534u);
  EXPECT_FALSE(c.admin);
  EXPECT_EQ(c.peer, "ipv4:10.0.0.1:5000 cert CN \"uid:1234\"");
}

TEST(CallerTest, CertificateCannotClaimRoot) {
  EXPECT_EQ(CallerFromCertificate("p", "uid:0", Rules()).uid, 65534u);
  EXPECT_EQ(CallerFromCertificate("p", "uid:x", Rules()).uid, 65534u);
}

TEST(CallerTest, ConfiguredCertificateCnIsAdmin) {
  const Caller c = CallerFromCertificate("p", "ops-admin", Rules());
  EXPECT_TRUE(c.admin);
  EXPECT_EQ(c.uid, 65534u);
  EXPECT_FALSE(CallerFromCertificate("p", "ops-admin2", Rules()).admin);
}

TEST(CallerTest, DenyIsPermissionDeniedWithTheReason) {
  const absl::Status s = Deny(Caller{.uid = 1000}, "close session 7: not yours");
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(s.message(), "close session 7: not yours");
}

TEST(CallerTest, DenyLogsAtMostTwentyLinesASecondAndCountsTheRest) {
  std::ostringstream log;
  auto logger = std::make_shared<spdlog::logger>(
      "deny", std::make_shared<spdlog::sinks::ostream_sink_mt>(log));
  const std::shared_ptr<spdlog::logger> saved = spdlog::default_logger();
  spdlog::set_default_logger(logger);
  for (int i = 0; i < 100; ++i) (void)Deny(Caller{.uid = 1000}, "refused");
  const std::string burst = log.str();
  // The next window reports what the last one did not log.
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  (void)Deny(Caller{.uid = 1000}, "refused");
  spdlog::set_default_logger(saved);
  const auto lines = std::count(burst.begin(), burst.end(), '\n');
  // 100 refusals take far less than a second: at most two windows' worth
  // (20 each) and one "not logged" line between them.
  EXPECT_GT(lines, 0);
  EXPECT_LE(lines, 41);
  EXPECT_NE(log.str().find("more refusals not logged"), std::string::npos) << log.str();
}

}  // namespace
}  // namespace asyncd::daemon
