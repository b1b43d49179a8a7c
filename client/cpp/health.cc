// scatterbrain/client/cpp/health.cc — see health.h.
#include "client/cpp/health.h"

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/support/byte_buffer.h>

#include <cstdint>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "client/cpp/retry.h"
#include "proto/convert/wire.h"

namespace scatterbrain {
namespace client {
namespace {

// HealthCheckRequest{string service = 1}.
std::string EncodeHealthRequest(const std::string& service) {
  std::string out;
  if (service.empty()) return out;
  out.push_back(0x0A);  // field 1, length-delimited
  uint64_t n = service.size();
  while (n >= 0x80) {
    out.push_back(static_cast<char>((n & 0x7F) | 0x80));
    n >>= 7;
  }
  out.push_back(static_cast<char>(n));
  out += service;
  return out;
}

bool ReadVarint(const std::string& s, size_t* pos, uint64_t* v) {
  *v = 0;
  for (int shift = 0; shift < 64 && *pos < s.size(); shift += 7) {
    const uint8_t b = static_cast<uint8_t>(s[(*pos)++]);
    *v |= static_cast<uint64_t>(b & 0x7F) << shift;
    if ((b & 0x80) == 0) return true;
  }
  return false;
}

// HealthCheckResponse{ServingStatus status = 1}; other fields are skipped.
absl::StatusOr<int> DecodeHealthResponse(const std::string& s) {
  int status = 0;  // proto3 default: UNKNOWN
  size_t pos = 0;
  while (pos < s.size()) {
    uint64_t key;
    if (!ReadVarint(s, &pos, &key)) break;
    const int wire = static_cast<int>(key & 7);
    uint64_t v = 0;
    if (wire == 0) {
      if (!ReadVarint(s, &pos, &v)) break;
      if ((key >> 3) == 1) status = static_cast<int>(v);
    } else if (wire == 2) {
      if (!ReadVarint(s, &pos, &v) || v > s.size() - pos) break;
      pos += v;
    } else if (wire == 1) {
      pos += 8;
    } else if (wire == 5) {
      pos += 4;
    } else {
      break;
    }
    if (pos > s.size()) break;
    if (pos == s.size()) return status;
  }
  if (pos == s.size()) return status;
  return absl::InternalError("malformed grpc.health.v1.HealthCheckResponse");
}

}  // namespace

const char* ServingStatusName(ServingStatus s) {
  switch (s) {
    case ServingStatus::kServing:
      return "SERVING";
    case ServingStatus::kNotServing:
      return "NOT_SERVING";
    case ServingStatus::kServiceUnknown:
      return "SERVICE_UNKNOWN";
    default:
      return "UNKNOWN";
  }
}

namespace internal {

absl::StatusOr<std::string> RawUnaryCall(
    const std::shared_ptr<grpc::Channel>& channel, const std::string& method,
    const std::string& request, absl::Duration deadline) {
  grpc::GenericStub generic(channel);
  grpc::Slice slice(request);
  grpc::ByteBuffer request_buffer(&slice, 1);
  grpc::ByteBuffer response;
  grpc::ClientContext ctx;
  SetDeadline(&ctx, deadline);
  absl::Notification done;
  grpc::Status status;
  generic.UnaryCall(&ctx, method, grpc::StubOptions(), &request_buffer,
                    &response, [&](grpc::Status s) {
                      status = std::move(s);
                      done.Notify();
                    });
  done.WaitForNotification();
  if (!status.ok()) return wire::FromGrpcStatus(status);
  std::vector<grpc::Slice> slices;
  if (!response.Dump(&slices).ok()) {
    return absl::InternalError(absl::StrCat("unreadable response of ", method));
  }
  std::string bytes;
  for (const grpc::Slice& s : slices) {
    bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  return bytes;
}

absl::StatusOr<ServingStatus> CheckHealth(
    const std::shared_ptr<grpc::Channel>& channel, const std::string& service,
    absl::Duration deadline) {
  absl::StatusOr<std::string> bytes =
      RawUnaryCall(channel, "/grpc.health.v1.Health/Check",
                   EncodeHealthRequest(service), deadline);
  if (!bytes.ok()) return bytes.status();
  absl::StatusOr<int> code = DecodeHealthResponse(*bytes);
  if (!code.ok()) return code.status();
  switch (*code) {
    case 1:
      return ServingStatus::kServing;
    case 2:
      return ServingStatus::kNotServing;
    case 3:
      return ServingStatus::kServiceUnknown;
    default:
      return ServingStatus::kUnknown;
  }
}

}  // namespace internal
}  // namespace client
}  // namespace scatterbrain
