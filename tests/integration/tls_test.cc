// TCP is TLS: the daemon with server.tcp + tls_cert/tls_key/tls_client_ca
// (certificates made with the openssl CLI into a temp dir) serves a client
// that presents a certificate signed by the CA, mapping CN "uid:N" to uid N
// and CNs in [admin] tls_cns to admins; a plaintext client and a client
// without a certificate are refused; TCP without TLS does not start unless
// server.tcp_insecure, which warns and makes every caller nobody.
#include <gmock/gmock.h>

#include <cstdio>
#include <fstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "tests/integration/daemon_fixture.h"
#include "tests/integration/security_util.h"

namespace asyncd::testing {
namespace {

using client::Client;
using ::testing::HasSubstr;

bool Sh(const std::string& dir, const std::string& cmd) {
  return std::system(absl::StrCat("cd '", dir, "' && ", cmd, " >>openssl.log 2>&1").c_str()) == 0;
}

// A CA, a server certificate for 127.0.0.1/localhost, and client
// certificates with the given CNs (files NAME.crt/NAME.key), in `dir`.
bool MakeCerts(const std::string& dir,
               const std::vector<std::pair<std::string, std::string>>& clients) {
  const std::string key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
  if (!Sh(dir, absl::StrCat("openssl req -x509 ", key,
                            " -keyout ca.key -out ca.crt -days 2 -subj /CN=asyncd-test-ca"))) {
    return false;
  }
  auto sign = [&](const std::string& name, const std::string& cn, const std::string& ext) {
    std::ofstream(dir + "/" + name + ".ext") << ext << "\n";
    return Sh(dir, absl::StrCat("openssl req ", key, " -keyout ", name, ".key -out ", name,
                                ".csr -subj '/CN=", cn, "'")) &&
           Sh(dir, absl::StrCat("openssl x509 -req -in ", name,
                                ".csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -out ", name,
                                ".crt -extfile ", name, ".ext"));
  };
  if (!sign("server", "localhost", "subjectAltName=IP:127.0.0.1,DNS:localhost")) return false;
  for (const auto& [name, cn] : clients) {
    if (!sign(name, cn, "extendedKeyUsage=clientAuth")) return false;
  }
  return true;
}

int ReadPort(const std::string& path) {
  int port = 0;
  std::ifstream in(path);
  std::string text;
  in >> text;
  return absl::SimpleAtoi(text, &port) ? port : 0;
}

// The uid the client certificate names: never the uid running the test (the
// daemon's own uid is an admin of it), root, or nobody.
uint32_t CertUid() { return geteuid() == 4242 ? 4243 : 4242; }

class TlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (std::system("openssl version >/dev/null 2>&1") != 0) GTEST_SKIP() << "no openssl CLI";
    files_ = std::make_unique<ConfigFile>("[admin]\ntls_cns = [\"ops-admin\"]\n");
    dir_ = files_->dir();
    ASSERT_TRUE(MakeCerts(dir_, {{"client", absl::StrCat("uid:", CertUid())},
                                 {"admin", "ops-admin"},
                                 {"anon", "x"}}))
        << "openssl failed; see " << dir_ << "/openssl.log";
    std::vector<std::string> args = files_->Args();
    for (const char* a : {"--tcp", "127.0.0.1:0"}) args.push_back(a);
    args.insert(args.end(),
                {"--tls-cert", dir_ + "/server.crt", "--tls-key", dir_ + "/server.key",
                 "--tls-client-ca", dir_ + "/ca.crt", "--tcp-port-file", dir_ + "/port"});
    daemon_ = std::make_unique<Daemon>(BackendMode::kThreadPoolOnly, args);
    ASSERT_TRUE(WaitFor([&] { return ReadPort(dir_ + "/port") != 0; })) << daemon_->Log();
    target_ = absl::StrCat("127.0.0.1:", ReadPort(dir_ + "/port"));
  }

  Client TlsClient(const std::string& name) {
    auto tls = name.empty() ? client::ReadTls(dir_ + "/ca.crt")
                            : client::ReadTls(dir_ + "/ca.crt", dir_ + "/" + name + ".crt",
                                              dir_ + "/" + name + ".key");
    EXPECT_TRUE(tls.ok()) << tls.status();
    return Client(client::Connect(target_, tls.ok() ? *tls : client::TlsOptions{}),
                  {.default_timeout = std::chrono::milliseconds(5000)});
  }

  std::unique_ptr<ConfigFile> files_;
  std::string dir_;
  std::unique_ptr<Daemon> daemon_;
  std::string target_;
};

TEST_F(TlsTest, ClientCertificateCnUidMapsToThatUidWithoutAdminRights) {
  Client c = TlsClient("client");
  auto s = c.OpenSession("over-tls");
  ASSERT_TRUE(s.ok()) << s.status() << "\n" << daemon_->Log();
  auto nop = c.Submit(*s, NopOp());
  ASSERT_TRUE(nop.ok()) << nop.status();
  auto sessions = c.ListSessions();
  ASSERT_TRUE(sessions.ok());
  ASSERT_EQ(sessions->size(), 1u);
  EXPECT_EQ(sessions->front().uid(), CertUid());
  // The session of the user on the unix socket is not its business.
  Client root(daemon_->channel());
  auto rs = root.OpenSession("local user's");
  ASSERT_TRUE(rs.ok());
  EXPECT_EQ(c.KeepAlive(*rs).status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(c.Drain(0).status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(daemon_->Log(), HasSubstr(absl::StrCat("cert CN \"uid:", CertUid(), "\"")));
}

TEST_F(TlsTest, ClientCertificateCnListedInTlsCnsIsAnAdmin) {
  Client root(daemon_->channel());
  ASSERT_TRUE(root.OpenSession("root's").ok());
  Client admin = TlsClient("admin");
  auto sessions = admin.ListSessions();
  ASSERT_TRUE(sessions.ok()) << sessions.status();
  ASSERT_EQ(sessions->size(), 1u);
  EXPECT_EQ(sessions->front().uid(), geteuid());  // sees the unix-socket user's session
  // Another CN ("x", not "uid:N") is nobody, and no admin.
  Client anon = TlsClient("anon");
  auto own = anon.OpenSession("anon");
  ASSERT_TRUE(own.ok()) << own.status();
  auto listed = anon.ListSessions();
  ASSERT_TRUE(listed.ok());
  ASSERT_EQ(listed->size(), 1u);
  EXPECT_EQ(listed->front().uid(), 65534u);
}

TEST_F(TlsTest, PlaintextClientIsRefused) {
  Client plain(client::Connect(target_), {.default_timeout = std::chrono::milliseconds(2000)});
  auto s = plain.OpenSession("plain");
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE(s.status().code() == absl::StatusCode::kUnavailable ||
              s.status().code() == absl::StatusCode::kDeadlineExceeded)
      << s.status();
}

TEST_F(TlsTest, ClientWithoutCertificateIsRefusedUnderMutualTls) {
  Client c = TlsClient("");
  auto s = c.OpenSession("no-cert");
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE(s.status().code() == absl::StatusCode::kUnavailable ||
              s.status().code() == absl::StatusCode::kDeadlineExceeded)
      << s.status();
}

// Runs the daemon binary to its exit (it should not start); its output.
int RunDaemonExpectingExit(const std::vector<std::string>& args, std::string* out) {
  std::string cmd = ASYNCD_BINARY;
  for (const auto& a : args) absl::StrAppend(&cmd, " '", a, "'");
  absl::StrAppend(&cmd, " 2>&1");
  FILE* p = popen(cmd.c_str(), "r");
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out->append(buf, n);
  const int status = pclose(p);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

TEST(TcpConfigTest, TcpWithoutTlsDoesNotStart) {
  ConfigFile dir("");
  std::string out;
  EXPECT_EQ(RunDaemonExpectingExit({"--socket", dir.dir() + "/s.sock", "--root", dir.dir() + "/r",
                                    "--tcp", "127.0.0.1:0"},
                                   &out),
            2);
  EXPECT_THAT(out, HasSubstr("requires TLS"));
}

TEST(TcpConfigTest, InsecureTcpWarnsAndEveryCallerIsNobody) {
  ConfigFile dir("");
  Daemon daemon(BackendMode::kThreadPoolOnly,
                {"--tcp", "127.0.0.1:0", "--tcp-insecure", "--tcp-port-file", dir.dir() + "/port"});
  ASSERT_TRUE(WaitFor([&] { return ReadPort(dir.dir() + "/port") != 0; }));
  Client c(client::Connect(absl::StrCat("127.0.0.1:", ReadPort(dir.dir() + "/port"))),
           {.default_timeout = std::chrono::milliseconds(5000)});
  auto s = c.OpenSession("plain");
  ASSERT_TRUE(s.ok()) << s.status();
  auto sessions = c.ListSessions();
  ASSERT_TRUE(sessions.ok());
  ASSERT_EQ(sessions->size(), 1u);
  EXPECT_EQ(sessions->front().uid(), 65534u);
  EXPECT_EQ(c.Drain(0).status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(daemon.Log(), HasSubstr("PLAINTEXT"));
}

}  // namespace
}  // namespace asyncd::testing
