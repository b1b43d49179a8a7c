// tests/testutil/health.cc — see health.h.
#include "tests/testutil/health.h"

#include <future>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"

namespace scatterbrain {
namespace testutil {

std::ostream& operator<<(std::ostream& os, ServingStatus status) {
  switch (status) {
    case ServingStatus::kUnknown:
      return os << "UNKNOWN";
    case ServingStatus::kServing:
      return os << "SERVING";
    case ServingStatus::kNotServing:
      return os << "NOT_SERVING";
    case ServingStatus::kServiceUnknown:
      return os << "SERVICE_UNKNOWN";
  }
  return os << "ServingStatus(" << static_cast<int>(status) << ")";
}

absl::StatusOr<ServingStatus> CheckHealth(
    const std::shared_ptr<grpc::Channel>& channel, absl::Duration timeout) {
  grpc::GenericStub stub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  grpc::Slice empty("");
  grpc::ByteBuffer request(&empty, 1), response;
  std::promise<grpc::Status> done;
  stub.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(),
                 &request, &response,
                 [&done](grpc::Status s) { done.set_value(std::move(s)); });
  const grpc::Status st = done.get_future().get();
  if (!st.ok()) {
    return absl::Status(static_cast<absl::StatusCode>(st.error_code()),
                        st.error_message());
  }
  std::vector<grpc::Slice> slices;
  if (!response.Dump(&slices).ok()) {
    return absl::InternalError("unreadable grpc.health.v1 response");
  }
  std::string bytes;
  for (const grpc::Slice& s : slices) {
    bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  if (bytes.empty()) return ServingStatus::kUnknown;  // all fields default
  // Field 1 (status), varint: tag 0x08 and one byte for the values 1..3.
  if (bytes.size() != 2 || bytes[0] != 0x08) {
    return absl::InternalError(absl::StrCat(
        "malformed grpc.health.v1 response of ", bytes.size(), " bytes"));
  }
  return static_cast<ServingStatus>(bytes[1]);
}

}  // namespace testutil
}  // namespace scatterbrain
