// scatterbrain/client/cli/info.cc — `scatterbrain_cli info` (this build's
// version, backends and CUDA devices, or with --server a server's version,
// backends, devices and limits) and `scatterbrain_cli health` (one
// grpc.health.v1 Check: prints SERVING, NOT_SERVING, or the error's code).
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "client/cli/commands.h"
#include "client/cli/flags.h"
#include "client/cpp/client.h"
#include "kernels/backend.h"
#include "kernels/devices.h"

#ifndef SB_VERSION
#define SB_VERSION "unknown"
#endif

namespace scatterbrain {
namespace cli {
namespace {

const FlagSpecs& HealthFlags() {
  static const auto* flags = new FlagSpecs(WithSecurity({
      {"server", {FlagKind::kString, true}},
      {"service", {FlagKind::kString, false}},
      {"timeout_s", {FlagKind::kString, false}},
  }));
  return *flags;
}

const FlagSpecs& InfoFlags() {
  static const auto* flags = new FlagSpecs(WithSecurity({
      {"server", {FlagKind::kString, false}},
      {"timeout_s", {FlagKind::kString, false}},
  }));
  return *flags;
}

// This build: version, compiled backends, CUDA.
int InfoLocal() {
  std::printf("scatterbrain %s\n", SB_VERSION);
  const std::vector<std::string> names = CompiledBackends();
  std::printf("backends: %s\n", absl::StrJoin(names, ", ").c_str());
  for (const std::string& name : names) {
    absl::StatusOr<std::unique_ptr<Backend>> b = CreateBackend(name);
    if (b.ok()) {
      std::printf("  %s: available\n", name.c_str());
    } else {
      std::printf("  %s: unavailable (%s)\n", name.c_str(),
                  OneLine(b.status().message()).c_str());
    }
  }
  std::printf("cuda: %s\n", OneLine(CudaRuntimeSummary()).c_str());
  for (const std::string& device : CudaDevices()) {
    std::printf("  %s\n", device.c_str());
  }
  return 0;
}

int InfoRemote(const FlagValues& f) {
  absl::StatusOr<std::unique_ptr<client::AttentionClient>> c =
      ClientFromFlags(f, absl::Seconds(5));
  if (!c.ok()) return Fail(2, c.status().message());
  const std::string& target = (*c)->options().target;
  absl::StatusOr<v1::ServerInfo> info = (*c)->GetServerInfo();
  if (!info.ok()) {
    return Fail(
        1, absl::StrCat("server ", target, ": ", StatusLine(info.status())));
  }
  const v1::ServerLimits& l = info->limits();
  std::printf("server: %s\n", target.c_str());
  std::printf("scatterbrain %s\n", info->version().c_str());
  std::printf("backends: %s\n", absl::StrJoin(info->backends(), ", ").c_str());
  std::printf("backend: %s\n", info->backend().c_str());
  std::printf("devices:%s\n", info->devices().empty() ? " none" : "");
  for (const std::string& d : info->devices()) std::printf("  %s\n", d.c_str());
  std::printf("limits:\n");
  std::printf("  max_request_bytes: %llu\n",
              static_cast<unsigned long long>(l.max_request_bytes()));
  std::printf("  max_message_bytes: %llu\n",
              static_cast<unsigned long long>(l.max_message_bytes()));
  std::printf("  chunk_bytes: %llu\n",
              static_cast<unsigned long long>(l.chunk_bytes()));
  std::printf("  max_seq: %u\n", l.max_seq());
  std::printf("  max_queue_requests: %u\n", l.max_queue_requests());
  std::printf("  max_inflight_per_stream: %u\n", l.max_inflight_per_stream());
  std::printf("  max_batch_requests: %u\n", l.max_batch_requests());
  std::printf("  max_batch_tokens: %llu\n",
              static_cast<unsigned long long>(l.max_batch_tokens()));
  std::printf("  max_queue_delay_us: %llu\n",
              static_cast<unsigned long long>(l.max_queue_delay_us()));
  std::printf("  error_sample_rows: %u\n", l.error_sample_rows());
  std::printf("  max_request_flops: %llu\n",
              static_cast<unsigned long long>(l.max_request_flops()));
  return 0;
}

}  // namespace

int Info(const std::vector<std::string>& args) {
  if (args.empty()) return InfoLocal();
  absl::StatusOr<FlagValues> flags = ParseFlags(args, InfoFlags());
  if (!flags.ok()) return Fail(2, flags.status().message());
  if (!flags->count("server")) {
    return Fail(2,
                "info takes no arguments except --server, --timeout_s and the "
                "TLS and token flags");
  }
  return InfoRemote(*flags);
}

int Health(const std::vector<std::string>& args) {
  absl::StatusOr<FlagValues> flags = ParseFlags(args, HealthFlags());
  if (!flags.ok()) return Fail(2, flags.status().message());
  const FlagValues& f = *flags;
  absl::StatusOr<std::unique_ptr<client::AttentionClient>> c =
      ClientFromFlags(f, absl::Seconds(5));
  if (!c.ok()) return Fail(2, c.status().message());
  const std::string& target = (*c)->options().target;
  const std::string service = f.count("service") ? f.at("service") : "";
  absl::StatusOr<client::ServingStatus> st = (*c)->Health(service);
  if (!st.ok()) {
    std::printf("%s\n", absl::StatusCodeToString(st.status().code()).c_str());
    return Fail(1,
                absl::StrCat("server ", target, ": ", StatusLine(st.status())));
  }
  std::printf("%s\n", client::ServingStatusName(*st));
  return *st == client::ServingStatus::kServing ? 0 : 1;
}

}  // namespace cli
}  // namespace scatterbrain
