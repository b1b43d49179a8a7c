// scatterbrain/client/cpp/session.cc — see session.h.
#include "client/cpp/session.h"

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <functional>
#include <future>
#include <limits>
#include <optional>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "client/cpp/retry.h"
#include "client/cpp/stream_call.h"
#include "common/dtype.h"
#include "proto/convert/wire.h"

namespace scatterbrain {
namespace client {
namespace {

using internal::StreamCall;

// gRPC's length-prefixed message framing (as stream_call.cc counts it).
constexpr int64_t kMessagePrefixBytes = 5;

std::chrono::duration<double> Chrono(absl::Duration d) {
  return std::chrono::duration<double>(absl::ToDoubleSeconds(d));
}

int64_t MessageBytes(const google::protobuf::Message& m) {
  return kMessagePrefixBytes + static_cast<int64_t>(m.ByteSizeLong());
}

// How long an attend whose deadline passed waits for the server to confirm
// its cancel before the whole stream is cancelled (which always ends it).
constexpr absl::Duration kCancelGrace = absl::Seconds(1);

absl::Status Closed() {
  return absl::FailedPreconditionError(
      "session: closed (Close() was called, or the Session was moved from)");
}

// Elements of [rows..., dim] given the span's size; INVALID_ARGUMENT naming
// `name` unless the size is a positive multiple of `row_elements`.
absl::StatusOr<int64_t> RowsOf(const char* name, absl::Span<const float> t,
                               int64_t row_elements) {
  const int64_t n = static_cast<int64_t>(t.size());
  if (row_elements <= 0 || n == 0 || n % row_elements != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": ", n, " values are not a positive multiple of ",
                     row_elements, " (batch * heads * dim)"));
  }
  return n / row_elements;
}

}  // namespace

// The session's state: its id, the channel's stub, the Attend stream its
// attends and steps go on (replaced when it breaks), and byte counts.
class Session::Impl {
 public:
  Impl(std::shared_ptr<grpc::Channel> channel, ClientOptions options,
       SessionSpec spec)
      : channel_(std::move(channel)),
        stub_(v1::AttentionService::NewStub(channel_)),
        options_(std::move(options)),
        spec_(std::move(spec)) {}

  ~Impl() {
    absl::MutexLock lock(&mu_);
    if (!closed_) CloseLocked().IgnoreError();
  }

  absl::Status CreateOnServer() {
    absl::MutexLock lock(&mu_);
    v1::CreateSessionRequest req;
    *req.mutable_settings() = spec_.settings;
    req.set_batch(static_cast<uint32_t>(spec_.shape.batch));
    req.set_heads(static_cast<uint32_t>(spec_.shape.heads));
    req.set_dim(static_cast<uint32_t>(spec_.shape.dim));
    req.set_dim_v(static_cast<uint32_t>(spec_.shape.dim_v));
    req.set_kv_dtype(spec_.kv_dtype);
    req.set_ttl_seconds(absl::ToDoubleSeconds(spec_.ttl));
    absl::StatusOr<v1::SessionInfo> info = Unary<v1::SessionInfo>(
        req, [this](grpc::ClientContext* ctx, const v1::CreateSessionRequest& r,
                    v1::SessionInfo* out) {
          return stub_->CreateSession(ctx, r, out);
        });
    if (!info.ok()) return info.status();
    created_ = *std::move(info);
    const v1::Shape& s = created_.shape();
    // The server's shape is the truth (it fills in the defaults).
    shape_ = {s.batch(), s.heads(), s.dim(), s.dim_v()};
    if (created_.session_id().empty() || shape_.batch <= 0 ||
        shape_.heads <= 0 || shape_.dim <= 0 || shape_.dim_v <= 0) {
      return absl::InternalError(
          "CreateSession answered without a session id or shape");
    }
    closed_ = false;
    return absl::OkStatus();
  }

  const std::string& id() const { return created_.session_id(); }
  const v1::SessionInfo& created() const { return created_; }
  const SessionShape& shape() const { return shape_; }

  absl::StatusOr<v1::SessionInfo> Append(absl::Span<const int64_t> counts,
                                         absl::Span<const float> k,
                                         absl::Span<const float> v) {
    absl::MutexLock lock(&mu_);
    if (closed_) return Closed();
    if (counts.size() != 1 &&
        static_cast<int64_t>(counts.size()) != shape_.batch) {
      return absl::InvalidArgumentError(
          absl::StrCat("counts: ", counts.size(), " values, need 1 or batch (",
                       shape_.batch, ")"));
    }
    int64_t tokens = 0;
    for (int64_t c : counts) {
      if (c < 0 || c > std::numeric_limits<uint32_t>::max()) {
        return absl::InvalidArgumentError(
            absl::StrCat("counts: ", c, " is out of range"));
      }
      tokens += counts.size() == 1 ? c * shape_.batch : c;
    }
    for (const auto& [name, t, d] :
         {std::tuple<const char*, absl::Span<const float>, int64_t>{"k", k,
                                                                    shape_.dim},
          {"v", v, shape_.dim_v}}) {
      if (static_cast<int64_t>(t.size()) != tokens * shape_.heads * d) {
        return absl::InvalidArgumentError(absl::StrCat(
            name, ": ", t.size(), " values, the counts need ",
            tokens * shape_.heads * d, " (tokens * heads * ", d, ")"));
      }
    }
    DType dtype;
    if (!wire::DTypeFromProto(spec_.dtype, &dtype)) {
      return absl::InvalidArgumentError("dtype: not float32|float16|bfloat16");
    }
    std::string kb, vb;  // converted once for every try
    for (const auto& [t, out] : {std::pair{k, &kb}, std::pair{v, &vb}}) {
      absl::Status s = internal::EncodeTensor(dtype, t, out);
      if (!s.ok()) return s;
    }
    v1::AppendKVRequest header;
    header.mutable_header()->set_session_id(id());
    header.mutable_header()->set_dtype(spec_.dtype);
    for (int64_t c : counts) {
      header.mutable_header()->add_counts(static_cast<uint32_t>(c));
    }

    // Retried only while not half-closed: until then the server has not
    // applied it.
    return internal::CallWithRetries<v1::SessionInfo>(
        options_, [&](bool* half_closed) {
          mu_.AssertHeld();  // the caller's lock (tries run in its scope)
          return AppendOnce(header, kb, vb, half_closed);
        });
  }

  absl::StatusOr<AttendResult> Attend(absl::Span<const float> q,
                                      absl::Span<const float> k,
                                      absl::Span<const float> v, bool append,
                                      bool see_all) {
    absl::MutexLock lock(&mu_);
    if (closed_) return Closed();
    absl::StatusOr<std::shared_ptr<const PreparedRequest>> req =
        PrepareAttend(q, k, v, append, see_all);
    if (!req.ok()) return req.status();
    // An appending step may have appended before it failed: never sent
    // again (session.h).
    return internal::CallWithRetries<AttendResult>(options_, [&](bool* final) {
      mu_.AssertHeld();
      *final = append;
      return SubmitLocked(*req);
    });
  }

  absl::StatusOr<v1::SessionInfo> Info() {
    absl::MutexLock lock(&mu_);
    if (closed_) return Closed();
    v1::GetSessionRequest req;
    req.set_session_id(id());
    return Unary<v1::SessionInfo>(
        req, [this](grpc::ClientContext* ctx, const v1::GetSessionRequest& r,
                    v1::SessionInfo* out) {
          return stub_->GetSession(ctx, r, out);
        });
  }

  absl::StatusOr<int64_t> Close() {
    absl::MutexLock lock(&mu_);
    if (closed_) return Closed();
    return CloseLocked();
  }

  bool closed() const {
    absl::MutexLock lock(&mu_);
    return closed_;
  }

  WireBytes wire_bytes() const {
    absl::MutexLock lock(&mu_);
    WireBytes b = unary_bytes_;
    for (const auto& c : {&call_, &retired_}) {
      if (*c != nullptr) {
        b.sent += (*c)->bytes_sent();
        b.received += (*c)->bytes_received();
      }
    }
    return b;
  }

 private:
  // One try of a unary call: its deadline, its bytes counted.
  template <typename Resp, typename Req, typename Fn>
  absl::StatusOr<Resp> Unary(const Req& req, Fn fn)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return internal::CallWithRetries<Resp>(
        options_, [&](bool*) -> absl::StatusOr<Resp> {
          mu_.AssertHeld();
          grpc::ClientContext ctx;
          internal::SetDeadline(&ctx, options_.deadline);
          Resp out;
          unary_bytes_.sent += MessageBytes(req);
          grpc::Status st = fn(&ctx, req, &out);
          if (!st.ok()) return wire::FromGrpcStatus(st);
          unary_bytes_.received += MessageBytes(out);
          return out;
        });
  }

  // One AppendKV upload. *half_closed: the writes were all sent and the
  // stream half-closed, after which the server may have applied it.
  absl::StatusOr<v1::SessionInfo> AppendOnce(const v1::AppendKVRequest& header,
                                             const std::string& kb,
                                             const std::string& vb,
                                             bool* half_closed)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    grpc::ClientContext ctx;
    internal::SetDeadline(&ctx, options_.deadline);
    v1::SessionInfo info;
    std::unique_ptr<grpc::ClientWriter<v1::AppendKVRequest>> writer =
        stub_->AppendKV(&ctx, &info);
    bool ok = writer->Write(header);
    unary_bytes_.sent += MessageBytes(header);
    internal::TensorChunker chunks(
        {{v1::TENSOR_NAME_K, &kb}, {v1::TENSOR_NAME_V, &vb}},
        options_.chunk_bytes);
    v1::AppendKVRequest msg;
    while (ok) {
      msg.Clear();
      if (!chunks.Next(msg.mutable_chunk())) break;
      unary_bytes_.sent += MessageBytes(msg);
      ok = writer->Write(msg);
    }
    if (ok) *half_closed = writer->WritesDone();
    grpc::Status st = writer->Finish();
    if (!st.ok()) return wire::FromGrpcStatus(st);
    unary_bytes_.received += MessageBytes(info);
    return info;
  }

  absl::StatusOr<std::shared_ptr<const PreparedRequest>> PrepareAttend(
      absl::Span<const float> q, absl::Span<const float> k,
      absl::Span<const float> v, bool append, bool see_all)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const int64_t rows_per_token = shape_.batch * shape_.heads;
    absl::StatusOr<int64_t> seq_q = RowsOf("q", q, rows_per_token * shape_.dim);
    if (!seq_q.ok()) return seq_q.status();
    if (append) {
      for (const auto& [name, t, d] :
           {std::tuple<const char*, absl::Span<const float>, int64_t>{
                "k", k, shape_.dim},
            {"v", v, shape_.dim_v}}) {
        if (static_cast<int64_t>(t.size()) != *seq_q * rows_per_token * d) {
          return absl::InvalidArgumentError(
              absl::StrCat(name, ": ", t.size(), " values, q's ", *seq_q,
                           " rows need ", *seq_q * rows_per_token * d));
        }
      }
    }
    DType dtype;
    if (!wire::DTypeFromProto(spec_.dtype, &dtype)) {
      return absl::InvalidArgumentError("dtype: not float32|float16|bfloat16");
    }
    auto req = std::make_shared<PreparedRequest>();
    v1::RequestHeader& h = req->header;
    h.set_dtype(spec_.dtype);
    h.set_output_dtype(spec_.output_dtype);
    v1::Shape* s = h.mutable_shape();
    s->set_batch(static_cast<uint32_t>(shape_.batch));
    s->set_heads(static_cast<uint32_t>(shape_.heads));
    s->set_seq_q(static_cast<uint32_t>(*seq_q));
    s->set_dim(static_cast<uint32_t>(shape_.dim));
    s->set_dim_v(static_cast<uint32_t>(shape_.dim_v));
    v1::SessionAttend* sa = h.mutable_session();
    sa->set_session_id(id());
    sa->set_append(append);
    sa->set_see_all(see_all);
    for (const auto& [t, out] : {std::pair{q, &req->q}, std::pair{k, &req->k},
                                 std::pair{v, &req->v}}) {
      if (out != &req->q && !append) break;
      absl::Status st = internal::EncodeTensor(dtype, t, out);
      if (!st.ok()) return st;
    }
    return std::shared_ptr<const PreparedRequest>(std::move(req));
  }

  // One try of an attend on the session's stream (opened or replaced
  // here), waiting at most options_.deadline.
  absl::StatusOr<AttendResult> SubmitLocked(
      std::shared_ptr<const PreparedRequest> req)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (call_ == nullptr || call_->Broken()) ReplaceCallLocked();
    auto promise =
        std::make_shared<std::promise<absl::StatusOr<AttendResult>>>();
    std::future<absl::StatusOr<AttendResult>> future = promise->get_future();
    absl::StatusOr<std::string> rid = call_->Submit(
        std::move(req), "", [promise](absl::StatusOr<AttendResult> r) {
          promise->set_value(std::move(r));
        });
    if (!rid.ok()) return rid.status();
    if (options_.deadline == absl::InfiniteDuration()) return future.get();
    if (future.wait_for(Chrono(options_.deadline)) ==
        std::future_status::ready) {
      return future.get();
    }
    // Past the deadline: cancel it on the server; if the server does not
    // confirm soon, end the stream (which fails the request for sure).
    call_->Cancel(*rid);
    if (future.wait_for(Chrono(kCancelGrace)) != std::future_status::ready) {
      call_->TryCancel();
    }
    absl::StatusOr<AttendResult> r = future.get();
    if (r.ok()) return r;  // answered just before the cancel
    return absl::DeadlineExceededError(
        absl::StrCat("session attend: no answer within the deadline of ",
                     absl::FormatDuration(options_.deadline)));
  }

  // A new Attend stream (no deadline: it lives as long as the session;
  // each request has its own). The old one is half-closed and waited for.
  void ReplaceCallLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (call_ != nullptr) {
      call_->Finish().IgnoreError();
      if (retired_ != nullptr) {
        unary_bytes_.sent += retired_->bytes_sent();
        unary_bytes_.received += retired_->bytes_received();
      }
      retired_ = std::move(call_);
    }
    call_ = std::make_unique<StreamCall>(stub_.get(), options_.chunk_bytes,
                                         options_.max_inflight_per_stream,
                                         absl::InfiniteDuration());
  }

  absl::StatusOr<int64_t> CloseLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    closed_ = true;
    if (call_ != nullptr) call_->Finish().IgnoreError();
    v1::DeleteSessionRequest req;
    req.set_session_id(id());
    bool retried = false;
    absl::StatusOr<v1::DeleteSessionResponse> r =
        Unary<v1::DeleteSessionResponse>(
            req,
            [&](grpc::ClientContext* ctx, const v1::DeleteSessionRequest& m,
                v1::DeleteSessionResponse* out) {
              grpc::Status st = stub_->DeleteSession(ctx, m, out);
              // A retry's NOT_FOUND: an earlier try deleted it.
              if (retried && st.error_code() == grpc::StatusCode::NOT_FOUND) {
                out->Clear();
                st = grpc::Status::OK;
              }
              retried = true;
              return st;
            });
    if (!r.ok()) return r.status();
    return static_cast<int64_t>(r->freed_bytes());
  }

  const std::shared_ptr<grpc::Channel> channel_;
  const std::unique_ptr<v1::AttentionService::Stub> stub_;
  const ClientOptions options_;
  const SessionSpec spec_;
  // Set by CreateOnServer, read-only after.
  v1::SessionInfo created_;
  SessionShape shape_;

  mutable absl::Mutex mu_;
  bool closed_ ABSL_GUARDED_BY(mu_) = true;  // until created
  // The stream of attends and steps, and the one it replaced (kept for its
  // byte counts; older ones are folded into unary_bytes_).
  std::unique_ptr<StreamCall> call_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<StreamCall> retired_ ABSL_GUARDED_BY(mu_);
  WireBytes unary_bytes_ ABSL_GUARDED_BY(mu_);
};

absl::StatusOr<Session> Session::Create(const AttentionClient& client,
                                        const SessionSpec& spec) {
  if (spec.shape.dim <= 0) {
    return absl::InvalidArgumentError("shape.dim: must be > 0");
  }
  for (const auto& [name, d] : {std::pair{"batch", spec.shape.batch},
                                {"heads", spec.shape.heads},
                                {"dim", spec.shape.dim},
                                {"dim_v", spec.shape.dim_v}}) {
    if (d < 0 || d > std::numeric_limits<uint32_t>::max()) {
      return absl::InvalidArgumentError(
          absl::StrCat("shape.", name, ": ", d, " is out of range"));
    }
  }
  if (spec.ttl < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("ttl: must be >= 0");
  }
  DType unused;
  if (!wire::DTypeFromProto(spec.dtype, &unused)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "dtype: ", spec.dtype, " is not float32|float16|bfloat16"));
  }
  auto impl = std::make_unique<Impl>(client.channel(), client.options(), spec);
  absl::Status s = impl->CreateOnServer();
  if (!s.ok()) return s;
  return Session(std::move(impl));
}

Session::Session(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Session::~Session() = default;
Session::Session(Session&& other) noexcept = default;
Session& Session::operator=(Session&& other) noexcept = default;

const std::string& Session::id() const {
  static const std::string* const kNone = new std::string;
  return impl_ != nullptr ? impl_->id() : *kNone;
}

const v1::SessionInfo& Session::created() const {
  return impl_ != nullptr ? impl_->created()
                          : v1::SessionInfo::default_instance();
}

const SessionShape& Session::shape() const {
  static const SessionShape* const kNone = new SessionShape;
  return impl_ != nullptr ? impl_->shape() : *kNone;
}

absl::StatusOr<v1::SessionInfo> Session::Append(int64_t count,
                                                absl::Span<const float> k,
                                                absl::Span<const float> v) {
  const int64_t counts[1] = {count};
  return Append(counts, k, v);
}

absl::StatusOr<v1::SessionInfo> Session::Append(
    absl::Span<const int64_t> counts, absl::Span<const float> k,
    absl::Span<const float> v) {
  if (impl_ == nullptr) return Closed();
  return impl_->Append(counts, k, v);
}

absl::StatusOr<AttendResult> Session::Attend(absl::Span<const float> q,
                                             bool see_all) {
  if (impl_ == nullptr) return Closed();
  return impl_->Attend(q, {}, {}, /*append=*/false, see_all);
}

absl::StatusOr<AttendResult> Session::Step(absl::Span<const float> q,
                                           absl::Span<const float> k,
                                           absl::Span<const float> v) {
  if (impl_ == nullptr) return Closed();
  return impl_->Attend(q, k, v, /*append=*/true, /*see_all=*/false);
}

absl::StatusOr<v1::SessionInfo> Session::Info() {
  if (impl_ == nullptr) return Closed();
  return impl_->Info();
}

absl::StatusOr<int64_t> Session::Close() {
  if (impl_ == nullptr) return Closed();
  return impl_->Close();
}

bool Session::closed() const { return impl_ == nullptr || impl_->closed(); }

WireBytes Session::wire_bytes() const {
  return impl_ != nullptr ? impl_->wire_bytes() : WireBytes{};
}

}  // namespace client
}  // namespace scatterbrain
