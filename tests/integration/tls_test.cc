// TCP is TLS: the daemon with server.tcp + tls_cert/tls_key/tls_client_ca
// (certificates made with the openssl CLI into a temp dir) serves a client
// that presents a certificate signed by the CA, mapping CN "uid:N" to uid N
// and CNs in [admin] tls_cns to admins; a plaintext client and a client
// without a certificate are refused; TCP without TLS does not start unless
// server.tcp_insecure, which warns and makes every caller nobody.
// Certificates for several uids also show per-uid file areas: each uid's
// paths resolve beneath its own directory of the root, a [[share]] is
// reached by its members only, and an admin sees the whole root.
#include <gmock/gmock.h>

#include <cstdio>
#include <filesystem>
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

// A daemon on TCP with mutual TLS, its config `config_text`, serving
// clients with certificates for `clients` ({name, CN}).
class TlsFixture {
 protected:
  void StartTls(const std::string& config_text,
                const std::vector<std::pair<std::string, std::string>>& clients,
                BackendMode mode = BackendMode::kThreadPoolOnly) {
    if (std::system("openssl version >/dev/null 2>&1") != 0) GTEST_SKIP() << "no openssl CLI";
    files_ = std::make_unique<ConfigFile>(config_text);
    dir_ = files_->dir();
    ASSERT_TRUE(MakeCerts(dir_, clients)) << "openssl failed; see " << dir_ << "/openssl.log";
    std::vector<std::string> args = files_->Args();
    for (const char* a : {"--tcp", "127.0.0.1:0"}) args.push_back(a);
    args.insert(args.end(),
                {"--tls-cert", dir_ + "/server.crt", "--tls-key", dir_ + "/server.key",
                 "--tls-client-ca", dir_ + "/ca.crt", "--tcp-port-file", dir_ + "/port"});
    daemon_ = std::make_unique<Daemon>(mode, args);
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

class TlsTest : public ::testing::Test, public TlsFixture {
 protected:
  void SetUp() override {
    StartTls("[admin]\ntls_cns = [\"ops-admin\"]\n",
             {{"client", absl::StrCat("uid:", CertUid())}, {"admin", "ops-admin"}, {"anon", "x"}});
  }
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

// Three users on certificates, none the daemon's own uid: A and B share
// "common", C shares nothing.
class FileAreaTest : public ::testing::TestWithParam<BackendMode>, public TlsFixture {
 protected:
  static constexpr uint32_t kBase = 4242;
  uint32_t A() const { return Base(); }
  uint32_t B() const { return Base() + 1; }
  uint32_t C() const { return Base() + 2; }
  static uint32_t Base() { return geteuid() >= kBase && geteuid() < kBase + 3 ? kBase + 10 : kBase; }

  void SetUp() override {
    StartTls(absl::StrCat("[[share]]\npath = \"common\"\nuids = [", A(), ", ", B(),
                          "]\n[admin]\ntls_cns = [\"boss\"]\n"),
             {{"a", absl::StrCat("uid:", A())},
              {"b", absl::StrCat("uid:", B())},
              {"c", absl::StrCat("uid:", C())},
              {"boss", "boss"},    // an admin, uid 65534
              {"anon", "nobody"}},  // uid 65534 too, no admin
             GetParam());
  }

  struct User {
    Client client;
    uint64_t session = 0;
  };
  User Login(const std::string& name) {
    auto tls = client::ReadTls(dir_ + "/ca.crt", dir_ + "/" + name + ".crt",
                               dir_ + "/" + name + ".key");
    EXPECT_TRUE(tls.ok()) << tls.status();
    User u{Client(client::Connect(target_, *tls),
                  {.default_timeout = std::chrono::milliseconds(5000)})};
    auto s = u.client.OpenSession(name);
    EXPECT_TRUE(s.ok()) << s.status() << "\n" << daemon_->Log();
    u.session = s.ok() ? *s : 0;
    return u;
  }
  // The op's completion; a refusal as a completion with that status.
  static v1::Completion Run(User& u, const v1::Operation& op) {
    auto c = u.client.Submit(u.session, op);
    if (c.ok()) return *c;
    v1::Completion refused;
    refused.set_status_code(static_cast<int>(c.status().code()));
    refused.set_message(std::string(c.status().message()));
    return refused;
  }
  static std::string Errno(const v1::Completion& c) {
    if (c.status_code() != 0) return absl::StrCat("status ", c.status_code(), " ", c.message());
    return c.error_number() == 0 ? "ok" : c.error_name();
  }
  static v1::Operation Open(const std::string& path, bool create) {
    v1::Operation op;
    op.mutable_open()->set_path(path);
    op.mutable_open()->set_access(v1::OPEN_MODE_READ_WRITE);
    op.mutable_open()->set_create(create);
    op.mutable_open()->set_mode(0600);
    return op;
  }
  static v1::Operation Stat(const std::string& path) {
    v1::Operation op;
    op.mutable_statx()->set_path(path);
    return op;
  }
  static v1::Operation Rename(const std::string& from, const std::string& to) {
    v1::Operation op;
    op.mutable_rename()->set_old_path(from);
    op.mutable_rename()->set_new_path(to);
    return op;
  }
  static v1::Operation Unlink(const std::string& path) {
    v1::Operation op;
    op.mutable_unlink()->set_path(path);
    return op;
  }
  // Creates `path` holding `data` as `u`.
  static void Put(User& u, const std::string& path, const std::string& data) {
    const v1::Completion opened = Run(u, Open(path, true));
    ASSERT_EQ(Errno(opened), "ok") << path;
    v1::Operation w;
    w.mutable_write()->set_handle(opened.handle());
    w.mutable_write()->set_data(data);
    EXPECT_EQ(Run(u, w).result(), static_cast<int>(data.size()));
    v1::Operation close;
    close.mutable_close()->set_handle(opened.handle());
    EXPECT_EQ(Errno(Run(u, close)), "ok");
  }
  // What `u` reads from `path`: its bytes, or the errno's name.
  static std::string Get(User& u, const std::string& path) {
    const v1::Completion opened = Run(u, Open(path, false));
    if (Errno(opened) != "ok") return Errno(opened);
    const v1::Completion read = Run(u, ReadOp(opened.handle(), 0, 100));
    return Errno(read) == "ok" ? read.data() : Errno(read);
  }
  std::string OnDisk(const std::string& rel) const {
    std::ifstream in(daemon_->root() + "/" + rel);
    return in ? std::string(std::istreambuf_iterator<char>(in), {}) : "(absent)";
  }
};

TEST_P(FileAreaTest, AUserCannotReachAnotherUsersFiles) {
  User a = Login("a");
  User b = Login("b");
  Put(a, "secret", "a's");
  const std::string a_dir = absl::StrCat(A());
  EXPECT_EQ(OnDisk(a_dir + "/secret"), "a's");
  EXPECT_EQ(std::filesystem::status(daemon_->root() + "/" + a_dir).permissions(),
            std::filesystem::perms::owner_all);

  // B's "secret" is B's own (absent); A's is out of its reach by any path.
  const std::string theirs = "/" + a_dir + "/secret";
  for (const std::string& path : {std::string("secret"), theirs, "./" + a_dir + "/secret"}) {
    EXPECT_EQ(Get(b, path), "ENOENT") << path;
    EXPECT_EQ(Errno(Run(b, Stat(path))), "ENOENT") << path;
    EXPECT_EQ(Errno(Run(b, Rename(path, "mine"))), "ENOENT") << path;
    EXPECT_EQ(Errno(Run(b, Unlink(path))), "ENOENT") << path;
  }
  const v1::Completion climb = Run(b, Stat("../" + a_dir + "/secret"));
  EXPECT_EQ(climb.status_code(), static_cast<int>(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(climb.message(), HasSubstr("climbs above the root"));
  // Writing "secret" creates B's own file beside, never into, A's.
  Put(b, "secret", "b's");
  EXPECT_EQ(OnDisk(absl::StrCat(B(), "/secret")), "b's");
  // Symlinks in B's area (made behind the daemon's back) stay in B's area.
  const std::string b_root = absl::StrCat(daemon_->root(), "/", B());
  std::filesystem::create_directory_symlink("../" + a_dir, b_root + "/up");
  std::filesystem::create_directory_symlink("/" + a_dir, b_root + "/abs");
  for (const char* path : {"up/secret", "abs/secret"}) {
    EXPECT_EQ(Errno(Run(b, Stat(path))), "ENOENT") << path;
    EXPECT_EQ(Get(b, path), "ENOENT") << path;
    EXPECT_EQ(Errno(Run(b, Unlink(path))), "ENOENT") << path;
  }
  EXPECT_EQ(OnDisk(a_dir + "/secret"), "a's");
  EXPECT_EQ(Get(a, "secret"), "a's");

  // An admin (the daemon's own uid, on the unix socket) sees every area.
  Client admin(daemon_->channel());
  auto s = admin.OpenSession("admin");
  ASSERT_TRUE(s.ok()) << s.status();
  auto st = admin.Submit(*s, Stat(a_dir + "/secret"));
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(st->error_number(), 0) << st->error_name();
  EXPECT_EQ(st->stat().size_bytes(), 3u);
}

TEST_P(FileAreaTest, MembersShareAShareAndNobodyElseReachesIt) {
  User a = Login("a");
  User b = Login("b");
  User c = Login("c");
  Put(a, "common/report", "by a");
  EXPECT_EQ(OnDisk("common/report"), "by a");
  EXPECT_EQ(Get(b, "common/report"), "by a");
  EXPECT_EQ(Get(b, "/common//./report"), "by a");
  EXPECT_EQ(Errno(Run(b, Rename("common/report", "common/final"))), "ok");
  EXPECT_EQ(Errno(Run(a, Stat("common/final"))), "ok");
  // C is no member: "common" is a name in its own area.
  EXPECT_EQ(Errno(Run(c, Stat("common/final"))), "ENOENT");
  EXPECT_EQ(Errno(Run(c, Unlink("common/final"))), "ENOENT");
  // A path may not leave a share by "..", nor a rename move between areas.
  const v1::Completion out = Run(b, Stat("common/../secret"));
  EXPECT_EQ(out.status_code(), static_cast<int>(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(out.message(), HasSubstr("climbs out of share \"common\""));
  const v1::Completion across = Run(b, Rename("common/final", "mine"));
  EXPECT_EQ(across.status_code(), static_cast<int>(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(across.message(), HasSubstr("different areas"));
  EXPECT_EQ(OnDisk("common/final"), "by a");
  // The share itself cannot be removed by a member.
  EXPECT_NE(Errno(Run(b, Unlink("common"))), "ok");
  EXPECT_TRUE(std::filesystem::is_directory(daemon_->root() + "/common"));
  // Listings and the history show the path as the client named it.
  auto history = a.client.ListHistory(v1::OpSelector());
  ASSERT_TRUE(history.ok()) << history.status();
  std::vector<std::string> targets;
  for (const v1::OperationInfo& op : *history) targets.push_back(op.target());
  EXPECT_THAT(targets, ::testing::Contains("common/report"));
  EXPECT_THAT(targets, ::testing::Not(::testing::Contains("/report")));
  EXPECT_EQ(Errno(Run(b, Unlink("common/final"))), "ok");
  EXPECT_EQ(OnDisk("common/final"), "(absent)");
}

// A session keeps its opener's area: a caller of the same uid with less
// access (no admin) cannot use an admin's session to reach the whole root.
TEST_P(FileAreaTest, ASessionIsUsableOnlyWithItsOpenersAccess) {
  User a = Login("a");
  Put(a, "kept", "a's");
  User boss = Login("boss");
  User anon = Login("anon");
  const std::string kept = absl::StrCat(A(), "/kept");
  EXPECT_EQ(Errno(Run(boss, Stat(kept))), "ok");  // an admin sees it
  anon.session = boss.session;  // same uid (65534), so it is "its own"
  const v1::Completion c = Run(anon, Stat(kept));
  EXPECT_EQ(c.status_code(), static_cast<int>(absl::StatusCode::kPermissionDenied));
  EXPECT_THAT(c.message(), HasSubstr("opened by an admin"));
}

INSTANTIATE_TEST_SUITE_P(Backends, FileAreaTest,
                         ::testing::Values(BackendMode::kIoUring, BackendMode::kThreadPoolOnly),
                         [](const auto& info) { return Name(info.param); });

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
