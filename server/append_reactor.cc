// scatterbrain/server/append_reactor.cc — see append_reactor.h.
#include "server/append_reactor.h"

#include <thread>

#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "kernels/cancel.h"
#include "proto/convert/wire.h"
#include "server/proto_convert.h"

namespace scatterbrain {
namespace server {
namespace {

absl::Status Invalid(absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", what));
}

// The core's append errors name "counts[b]"; the client sent
// header.counts.
absl::Status WithHeaderPath(const absl::Status& st) {
  if (absl::StartsWith(st.message(), "counts")) {
    return absl::Status(st.code(), absl::StrCat("header.", st.message()));
  }
  return st;
}

}  // namespace

AttentionServiceImpl::AppendReactor::AppendReactor(
    AttentionServiceImpl* svc, grpc::CallbackServerContext* ctx,
    v1::SessionInfo* response)
    : svc_(svc),
      ctx_(ctx),
      response_(response),
      identity_(svc->IdentityOf(*ctx)),
      start_us_(svc->clock_->NowMicros()) {}

void AttentionServiceImpl::AppendReactor::Begin() {
  svc_->RegisterAppend(this);
  {
    absl::MutexLock lock(&mu_);
    ++busy_;  // no Finish before the first read is issued
  }
  StartRead(&msg_);
  Leave();
}

void AttentionServiceImpl::AppendReactor::CheckTimeouts(int64_t now_us) {
  const double timeout_s = svc_->options_.upload_timeout_s;
  {
    absl::MutexLock lock(&mu_);
    if (finished_ || end_decided_ || applying_ || timeout_s <= 0 ||
        static_cast<double>(now_us - start_us_) < timeout_s * 1e6) {
      return;
    }
  }
  svc_->metrics_->ProtocolErrorSeen(ProtocolError::kUploadTimeout);
  EndWith(absl::DeadlineExceededError(absl::StrCat(
      "AppendKV: K and V were not complete ", timeout_s,
      " s after the call began (the server's upload_timeout_s); nothing was "
      "appended")));
}

void AttentionServiceImpl::AppendReactor::OnReadDone(bool ok) {
  {
    absl::MutexLock lock(&mu_);
    if (finished_) return;
    ++busy_;
  }
  if (!ok) {
    // Applying the append is real work (conversion, the incremental state,
    // maybe a k-means refit: seconds at long contexts), so it never runs on
    // a gRPC callback thread. busy_ holds the call open until Leave.
    std::thread([this] {
      EndWith(AtEndOfReads());
      Leave();
    }).detach();
    return;
  }
  absl::Status st = Process();
  bool more = st.ok();
  if (more) {
    absl::MutexLock lock(&mu_);
    more = !end_decided_;  // the timer ended it meanwhile
  }
  if (more) {
    StartRead(&msg_);
  } else if (!st.ok()) {
    EndWith(st);
  }
  Leave();
}

void AttentionServiceImpl::AppendReactor::OnDone() {
  svc_->UnregisterAppend(this);
  if (accepted_) svc_->Finished();
  Unref();
}

void AttentionServiceImpl::AppendReactor::EndWith(const absl::Status& st) {
  {
    absl::MutexLock lock(&mu_);
    if (finished_ || end_decided_) return;  // the first reason stands
    end_decided_ = true;
    end_status_ = st;
    if (busy_ > 0) return;  // the read path finishes as it leaves
    finished_ = true;
  }
  Finish(ToGrpcStatus(st));
}

void AttentionServiceImpl::AppendReactor::Leave() {
  absl::Status st;
  {
    absl::MutexLock lock(&mu_);
    --busy_;
    if (busy_ > 0 || !end_decided_ || finished_) return;
    finished_ = true;
    st = end_status_;
  }
  Finish(ToGrpcStatus(st));
}

absl::Status AttentionServiceImpl::AppendReactor::Process() {
  svc_->metrics_->BytesReceived(static_cast<int64_t>(msg_.ByteSizeLong()));
  absl::Status st;
  switch (msg_.kind_case()) {
    case v1::AppendKVRequest::kHeader:
      st = HandleHeader(msg_.header());
      break;
    case v1::AppendKVRequest::kChunk:
      st = HandleChunk(msg_.chunk());
      break;
    default:
      svc_->metrics_->ProtocolErrorSeen(ProtocolError::kEmptyMessage);
      st = Invalid("AppendKVRequest.kind",
                   "empty message (set header, then chunks)");
      break;
  }
  msg_.Clear();  // the chunk's bytes are staged now
  return st;
}

absl::Status AttentionServiceImpl::AppendReactor::HandleHeader(
    const v1::AppendKVHeader& h) {
  if (have_header_) {
    return Invalid("header", "sent twice (one AppendKVHeader per call)");
  }
  have_header_ = true;
  if (svc_->draining()) return DrainingError();
  if (h.session_id().empty())
    return Invalid("header.session_id", "must be set");
  if (!wire::DTypeFromProto(h.dtype(), &dtype_)) {
    return Invalid("header.dtype",
                   absl::StrCat("must be DTYPE_FLOAT32, DTYPE_FLOAT16 or "
                                "DTYPE_BFLOAT16, got ",
                                wire::DTypeProtoName(h.dtype())));
  }
  absl::StatusOr<SessionView> view =
      svc_->sessions_->Lookup(h.session_id(), identity_, "header.session_id");
  if (!view.ok()) return view.status();
  view_ = *std::move(view);
  const SessionConfig& c = view_.session->config();
  if (h.counts_size() != 1 && h.counts_size() != c.batch) {
    return Invalid("header.counts",
                   absl::StrCat("must have 1 or ", c.batch,
                                " entries (one for every sequence, or one "
                                "each), got ",
                                h.counts_size()));
  }
  const int64_t max_tokens = svc_->sessions_->options().max_session_tokens;
  int64_t k_elements = 0, v_elements = 0;
  counts_.assign(static_cast<size_t>(c.batch), 0);
  for (int64_t b = 0; b < c.batch; ++b) {
    const int i = h.counts_size() == 1 ? 0 : static_cast<int>(b);
    const int64_t n = h.counts(i);
    if (n > max_tokens) {
      return absl::ResourceExhaustedError(
          absl::StrCat("header.counts[", i, "]: ", n,
                       " tokens is over the server's limit of ", max_tokens,
                       " per sequence (max_session_tokens)"));
    }
    counts_[b] = n;
    k_elements += c.heads * n * c.dim;
    v_elements += c.heads * n * c.dim_v;
  }
  const int64_t bytes = (k_elements + v_elements) * DTypeBytes(dtype_);
  const int64_t max_bytes = svc_->options_.limits.max_request_bytes;
  if (bytes > max_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "header.counts: K and V take ", bytes,
        " bytes, over the server's limit of ", max_bytes,
        " bytes per request (max_request_bytes); append in several calls"));
  }
  // The staged bytes count in the server's memory until applied.
  absl::StatusOr<MemoryReservation> staging =
      svc_->budget_.Reserve(bytes, "AppendKV header");
  if (!staging.ok()) return staging.status();
  staging_ = *std::move(staging);
  // Staged in their wire dtype: Append converts as it stores.
  absl::Status st = k_.Init("k", dtype_, k_elements, nullptr, true);
  if (st.ok()) st = v_.Init("v", dtype_, v_elements, nullptr, true);
  if (!st.ok()) return st;
  if (!svc_->TryAccept()) return DrainingError();
  accepted_ = true;
  return absl::OkStatus();
}

absl::Status AttentionServiceImpl::AppendReactor::HandleChunk(
    const v1::TensorChunk& chunk) {
  if (!have_header_) {
    return Invalid("AppendKVRequest.header", "must be the first message");
  }
  switch (chunk.tensor()) {
    case v1::TENSOR_NAME_K:
      return k_.Append(chunk.offset(), chunk.data());
    case v1::TENSOR_NAME_V:
      return v_.Append(chunk.offset(), chunk.data());
    default:
      return Invalid(
          "chunk.tensor",
          absl::StrCat("must be TENSOR_NAME_K or TENSOR_NAME_V, got ",
                       TensorLabel(chunk.tensor())));
  }
}

absl::Status AttentionServiceImpl::AppendReactor::AtEndOfReads() {
  if (cancelled_.load() || ctx_->IsCancelled()) {
    return absl::CancelledError("AppendKV cancelled: nothing was appended");
  }
  if (!have_header_) {
    return Invalid("AppendKVRequest.header",
                   "the call ended without a header; nothing was appended");
  }
  for (const TensorAssembler* t : {&k_, &v_}) {
    if (!t->complete()) {
      return Invalid(
          "chunk",
          absl::StrCat("the call ended before K and V were complete "
                       "(tensor ",
                       t->name(), ": ", t->received_bytes(), " of ",
                       t->total_bytes(), " bytes); nothing was appended"));
    }
  }
  {
    absl::MutexLock lock(&mu_);
    if (end_decided_) return end_status_;  // timed out: not applied
    applying_ = true;                      // the timer leaves it alone now
  }
  const TensorBuffer k = k_.Take();
  const TensorBuffer v = v_.Take();
  CancelToken token;
  token.cancelled = &cancelled_;
  KvSession* session = view_.session.get();
  const absl::Status st = svc_->sessions_->Append(view_, [&] {
    return session->Append(counts_, k.raw(), v.raw(), dtype_, &token);
  });
  staging_.Release();
  if (!st.ok()) return WithHeaderPath(st);
  absl::StatusOr<SessionView> now = svc_->sessions_->Lookup(
      view_.id, identity_, "header.session_id", /*touch=*/false);
  svc_->FillSessionInfo(now.ok() ? *now : view_, response_);
  return absl::OkStatus();
}

}  // namespace server
}  // namespace scatterbrain
