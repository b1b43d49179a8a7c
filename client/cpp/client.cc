// scatterbrain/client/cpp/client.cc — see client.h.
#include "client/cpp/client.h"

#include <grpcpp/grpcpp.h>

#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "proto/convert/wire.h"

namespace scatterbrain {
namespace client {

absl::StatusOr<std::unique_ptr<AttentionClient>> AttentionClient::Create(
    Options options) {
  if (options.chunk_bytes <= 0) {
    return absl::InvalidArgumentError("chunk_bytes: must be > 0");
  }
  if (options.max_message_bytes <= 0) {
    return absl::InvalidArgumentError("max_message_bytes: must be > 0");
  }
  if (options.max_attempts < 0) {
    return absl::InvalidArgumentError(
        "max_attempts: must be >= 0 (0: the retry budget alone)");
  }
  if (options.initial_backoff < absl::ZeroDuration() ||
      options.max_backoff < absl::ZeroDuration() ||
      options.retry_budget < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        "initial_backoff, max_backoff, retry_budget: must be >= 0");
  }
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel =
      internal::CreateChannel(options);
  if (!channel.ok()) return channel.status();
  return std::unique_ptr<AttentionClient>(
      new AttentionClient(std::move(options), *std::move(channel)));
}

AttentionClient::AttentionClient(Options options,
                                 std::shared_ptr<grpc::Channel> channel)
    : options_(std::move(options)),
      channel_(std::move(channel)),
      stub_(v1::AttentionService::NewStub(channel_)) {}

AttentionClient::~AttentionClient() = default;

std::unique_ptr<AttendStream> AttentionClient::OpenStream(
    absl::Duration deadline) {
  return AttendStream::Open(stub_.get(), options_, deadline);
}

absl::StatusOr<AttendResult> AttentionClient::Attend(const AttendInput& in) {
  absl::StatusOr<std::shared_ptr<const PreparedRequest>> req = Prepare(in);
  if (!req.ok()) return req.status();
  // The stream retries UNAVAILABLE itself (a new call per try, which
  // round_robin sends to a live server).
  std::unique_ptr<AttendStream> stream = OpenStream(options_.deadline);
  absl::StatusOr<AttendResult> result =
      stream->Submit(*std::move(req), in.request_id).get();
  absl::Status finish = stream->Finish();
  // The last stream's status: an earlier, replaced one may have failed.
  // UNAVAILABLE after a complete answer (the server died before the
  // stream's trailers) does not undo the answer.
  if (result.ok() && !finish.ok() && !absl::IsUnavailable(finish)) {
    return finish;
  }
  return result;
}

absl::StatusOr<AttendResult> AttentionClient::AttendUnary(
    const AttendInput& in) {
  // This client never cancels a unary call: a CANCELLED is the server's.
  return internal::CallWithRetries<AttendResult>(
      options_, [&](bool*) { return AttendUnaryOnce(in); });
}

absl::StatusOr<AttendResult> AttentionClient::AttendUnaryOnce(
    const AttendInput& in) {
  v1::AttendUnaryRequest request;
  {
    // The encoded buffers move into the message: no second copy.
    PreparedRequest req;
    absl::Status s = internal::PrepareInto(in, &req);
    if (!s.ok()) return s;
    *request.mutable_header() = std::move(req.header);
    request.mutable_header()->set_request_id(in.request_id);
    *request.mutable_q() = std::move(req.q);
    *request.mutable_k() = std::move(req.k);
    *request.mutable_v() = std::move(req.v);
  }

  grpc::ClientContext ctx;
  internal::SetDeadline(&ctx, options_.deadline);
  v1::AttendUnaryResponse response;
  grpc::Status st = stub_->AttendUnary(&ctx, request, &response);
  if (!st.ok()) return wire::FromGrpcStatus(st);
  AttendResult r;
  r.request_id = in.request_id;
  absl::StatusOr<internal::OutputFormat> output =
      internal::ReadResponseHeader(response.header(), &r);
  if (!output.ok()) return output.status();
  const std::string& bytes = response.output();
  if (static_cast<int64_t>(bytes.size()) != output->bytes()) {
    return absl::InternalError(absl::StrCat("server sent ", bytes.size(),
                                            " output bytes, expected ",
                                            output->bytes()));
  }
  r.out.resize(static_cast<size_t>(output->elements));
  DecodeToFloat(output->dtype, bytes.data(), output->elements, r.out.data());
  return r;
}

absl::StatusOr<ServingStatus> AttentionClient::Health(
    const std::string& service) {
  return internal::CheckHealth(channel_, service, options_.deadline);
}

absl::StatusOr<v1::ServerInfo> AttentionClient::GetServerInfo() {
  grpc::ClientContext ctx;
  internal::SetDeadline(&ctx, options_.deadline);
  v1::ServerInfo info;
  grpc::Status st =
      stub_->GetServerInfo(&ctx, v1::GetServerInfoRequest(), &info);
  if (!st.ok()) return wire::FromGrpcStatus(st);
  return info;
}

bool AttentionClient::WaitForConnected(absl::Duration timeout) {
  return channel_->WaitForConnected(absl::ToChronoTime(absl::Now() + timeout));
}

}  // namespace client
}  // namespace scatterbrain
