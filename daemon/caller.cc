#include "daemon/caller.h"

#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <memory>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "src/core/clock.h"

namespace asyncd::daemon {

namespace {

bool Listed(const std::vector<uint32_t>& ids, uint32_t id) {
  return std::find(ids.begin(), ids.end(), id) != ids.end();
}

// `cred`'s uid is in `uids`, or its primary or a supplementary group is one
// `gid_listed` accepts.
template <typename GidListed>
bool Member(const PeerCred& cred, const std::vector<uint32_t>& uids, GidListed gid_listed) {
  return Listed(uids, cred.uid) || gid_listed(cred.gid) ||
         std::any_of(cred.groups.begin(), cred.groups.end(), gid_listed);
}

}  // namespace

AdminRules AdminRules::FromConfig(const Config& config, uint32_t own_uid) {
  AdminRules rules{.own_uid = own_uid,
                   .uids = config.admin_uids,
                   .gids = config.admin_gids,
                   .group_gids = config.admin_group_gids,
                   .tls_cns = config.admin_tls_cns};
  for (const ShareConfig& share : config.shares) {
    ShareMembers& m = rules.shares.emplace_back();
    m.uids = share.uids;
    m.gids = share.gids;
    m.gids.insert(m.gids.end(), share.group_gids.begin(), share.group_gids.end());
  }
  return rules;
}

Caller CallerFromPeerCred(const PeerCred& cred, const AdminRules& rules) {
  Caller c;
  c.uid = cred.uid;
  c.gid = cred.gid;
  c.pid = cred.pid;
  c.peer = absl::StrCat("unix pid ", c.pid);
  // The daemon's own user can signal and trace it anyway: an admin of it,
  // so a daemon a user runs for themselves can be drained by them.
  c.admin = c.uid == 0 || c.uid == rules.own_uid || Member(cred, rules.uids, [&](uint32_t gid) {
              return Listed(rules.gids, gid) || Listed(rules.group_gids, gid);
            });
  for (size_t i = 0; i < rules.shares.size(); ++i) {
    const AdminRules::ShareMembers& m = rules.shares[i];
    if (Member(cred, m.uids, [&](uint32_t gid) { return Listed(m.gids, gid); })) {
      c.shares |= uint64_t{1} << i;
    }
  }
  return c;
}

Caller CallerFromCertificate(const std::string& peer, const std::optional<std::string>& verified_cn,
                             const AdminRules& rules) {
  Caller c;
  c.peer = peer;
  if (!verified_cn) return c;
  const std::string& cn = *verified_cn;
  absl::StrAppend(&c.peer, " cert CN \"", cn, "\"");
  uint32_t uid = 0;
  if (cn.rfind("uid:", 0) == 0 && absl::SimpleAtoi(cn.substr(4), &uid) && uid != 0) {
    c.uid = uid;
    for (size_t i = 0; i < rules.shares.size(); ++i) {
      if (Listed(rules.shares[i].uids, uid)) c.shares |= uint64_t{1} << i;
    }
  }
  c.admin = std::find(rules.tls_cns.begin(), rules.tls_cns.end(), cn) != rules.tls_cns.end();
  return c;
}

Caller Identifier::Identify(grpc::CallbackServerContext* ctx) const {
  const std::string peer = ctx->peer();
  if (listener_ != nullptr) {
    if (std::optional<PeerCred> cred = listener_->Lookup(peer)) {
      return CallerFromPeerCred(*cred, rules_);
    }
  }
  // Not our unix socket: TCP. Only a certificate the TLS layer verified
  // against server.tls_client_ca names anyone; everyone else is nobody.
  std::optional<std::string> cn;
  std::shared_ptr<const grpc::AuthContext> auth = ctx->auth_context();
  if (auth != nullptr && auth->IsPeerAuthenticated()) {
    std::vector<grpc::string_ref> cns = auth->FindPropertyValues("x509_common_name");
    if (!cns.empty()) cn.emplace(cns.front().data(), cns.front().size());
  }
  return CallerFromCertificate(peer, cn, rules_);
}

absl::Status Deny(const Caller& caller, const std::string& why) {
  // At most kDenialLogsPerSecond lines a second: a client looping on a
  // refused call must not flood the journal. The rest are counted.
  constexpr int64_t kDenialLogsPerSecond = 20;
  static std::atomic<int64_t> window{0};
  static std::atomic<int64_t> in_window{0};
  static std::atomic<int64_t> suppressed{0};
  const int64_t now_s = core::MonoNanos() / 1'000'000'000;
  int64_t seen = window.load(std::memory_order_relaxed);
  if (seen != now_s && window.compare_exchange_strong(seen, now_s)) {
    in_window.store(0, std::memory_order_relaxed);
    if (const int64_t n = suppressed.exchange(0); n > 0) {
      spdlog::warn("permission denied: {} more refusals not logged", n);
    }
  }
  if (in_window.fetch_add(1, std::memory_order_relaxed) < kDenialLogsPerSecond) {
    spdlog::warn("permission denied: uid {} gid {} ({}): {}", caller.uid, caller.gid, caller.peer,
                 why);
  } else {
    suppressed.fetch_add(1, std::memory_order_relaxed);
  }
  return absl::PermissionDeniedError(why);
}

}  // namespace asyncd::daemon
