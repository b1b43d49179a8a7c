// scatterbrain/client/cpp/target.cc — see target.h.
#include "client/cpp/target.h"

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/channel_arguments.h>

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "client/cpp/credentials.h"

namespace scatterbrain {
namespace client {

absl::StatusOr<ResolvedTarget> ResolveTarget(const ClientOptions& options) {
  const std::string target(absl::StripAsciiWhitespace(options.target));
  if (target.empty()) {
    return absl::InvalidArgumentError("target: empty (want host:port)");
  }
  ResolvedTarget r;
  r.lb_policy = options.load_balancing_policy;
  const bool is_uri =
      absl::StrContains(target, ":///") || absl::StartsWith(target, "unix:") ||
      absl::StartsWith(target, "unix-abstract:") ||
      absl::StartsWith(target, "ipv4:") || absl::StartsWith(target, "ipv6:") ||
      absl::StartsWith(target, "dns:");
  if (is_uri || !absl::StrContains(target, ',')) {
    r.uri = target;
    return r;
  }
  // Several "host:port" endpoints: a static address list. gRPC's ipv4 /
  // ipv6 schemes take IP literals only; localhost is the one name allowed.
  std::vector<std::string> v4, v6;
  for (absl::string_view part : absl::StrSplit(target, ',')) {
    std::string ep(absl::StripAsciiWhitespace(part));
    if (ep.empty()) continue;
    const size_t colon = ep.rfind(':');
    int port = 0;
    if (colon == std::string::npos ||
        !absl::SimpleAtoi(ep.substr(colon + 1), &port) || port <= 0 ||
        port > 65535) {
      return absl::InvalidArgumentError(absl::StrCat(
          "target: endpoint '", ep, "' is not host:port (port 1..65535)"));
    }
    std::string host = ep.substr(0, colon);
    if (host == "localhost") host = "127.0.0.1";
    if (absl::StartsWith(host, "[") && absl::EndsWith(host, "]")) {
      v6.push_back(absl::StrCat(host, ":", port));
      continue;
    }
    int dots = 0;
    bool ipv4 = !host.empty();
    for (char c : host) {
      if (c == '.') {
        ++dots;
      } else if (!absl::ascii_isdigit(static_cast<unsigned char>(c))) {
        ipv4 = false;
      }
    }
    if (!ipv4 || dots != 3) {
      return absl::InvalidArgumentError(absl::StrCat(
          "target: endpoint '", ep,
          "': a list of endpoints takes IP literals (or localhost); use "
          "dns:///NAME:PORT for a name that resolves to several addresses"));
    }
    v4.push_back(absl::StrCat(host, ":", port));
  }
  if (!v4.empty() && !v6.empty()) {
    return absl::InvalidArgumentError(
        "target: a list of endpoints cannot mix IPv4 and IPv6 addresses");
  }
  if (v4.empty() && v6.empty()) {
    return absl::InvalidArgumentError("target: no endpoint given");
  }
  r.uri = v4.empty() ? absl::StrCat("ipv6:///", absl::StrJoin(v6, ","))
                     : absl::StrCat("ipv4:///", absl::StrJoin(v4, ","));
  if (r.lb_policy.empty()) r.lb_policy = "round_robin";
  return r;
}

namespace internal {

absl::StatusOr<std::shared_ptr<grpc::Channel>> CreateChannel(
    const ClientOptions& options) {
  absl::StatusOr<ResolvedTarget> target = ResolveTarget(options);
  if (!target.ok()) return target.status();
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(options.max_message_bytes);
  args.SetMaxSendMessageSize(options.max_message_bytes);
  if (!target->lb_policy.empty()) {
    args.SetLoadBalancingPolicyName(target->lb_policy);
  } else {
    // round_robin by default, also for dns:/// names with several
    // addresses (gRPC's own default, pick_first, would use one of them).
    args.SetServiceConfigJSON(
        R"({"loadBalancingConfig":[{"round_robin":{}}]})");
  }
  if (options.own_connection) {
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  }
  absl::StatusOr<ChannelSecurity> security = MakeChannelSecurity(options);
  if (!security.ok()) return security.status();
  if (!options.tls_server_name.empty()) {
    args.SetSslTargetNameOverride(options.tls_server_name);
  }
  // Reconnect on the retries' backoff: gRPC's own (1 s, x1.6, up to 2 min)
  // left a restarted server unreached for seconds, failing every retry in
  // between fast with UNAVAILABLE.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS,
              static_cast<int>(std::max<int64_t>(
                  1, absl::ToInt64Milliseconds(options.initial_backoff))));
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS,
              static_cast<int>(std::max<int64_t>(
                  1, absl::ToInt64Milliseconds(options.max_backoff))));
  std::shared_ptr<grpc::Channel> channel =
      grpc::experimental::CreateCustomChannelWithInterceptors(
          target->uri, security->credentials, args,
          AuthorizationInterceptors(security->authorization));
  if (channel == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("target: cannot create a channel to '", target->uri, "'"));
  }
  return channel;
}

}  // namespace internal
}  // namespace client
}  // namespace scatterbrain
