// scatterbrain/client/cpp/client.cc — see client.h.
#include "client/cpp/client.h"

#include <grpcpp/create_channel.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/channel_arguments.h>
#include <grpcpp/support/client_callback.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <deque>
#include <limits>
#include <new>
#include <optional>
#include <random>
#include <thread>
#include <tuple>
#include <unordered_map>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "common/dtype.h"
#include "proto/convert/wire.h"

namespace scatterbrain {
namespace client {
namespace {

// Requests above this many elements per tensor are refused before any
// allocation (2^36 floats = 256 GiB, as the CLI's .npy reader).
constexpr int64_t kMaxElements = int64_t{1} << 36;

// Multiplies non-negative sizes, refusing overflow past kMaxElements.
bool CheckedProduct(std::initializer_list<int64_t> dims, int64_t* out) {
  int64_t n = 1;
  for (int64_t d : dims) {
    if (d < 0) return false;
    if (d != 0 && n > kMaxElements / d) return false;
    n *= d;
  }
  *out = n;
  return true;
}

void SetDeadline(grpc::ClientContext* ctx, absl::Duration deadline) {
  if (deadline != absl::InfiniteDuration()) {
    ctx->set_deadline(absl::ToChronoTime(absl::Now() + deadline));
  }
}

// Decodes a float output of `count` elements from `bytes`, checking size.
absl::Status DecodeOutput(const std::string& bytes, v1::DType wire_dtype,
                          int64_t count, std::vector<float>* out) {
  DType dtype;
  if (!wire::DTypeFromProto(wire_dtype, &dtype)) {
    return absl::InternalError(
        absl::StrCat("server answered in unknown dtype ", wire_dtype));
  }
  const int eb = DTypeBytes(dtype);
  if (static_cast<int64_t>(bytes.size()) != count * eb) {
    return absl::InternalError(absl::StrCat(
        "server sent ", bytes.size(), " output bytes, expected ", count * eb));
  }
  out->resize(static_cast<size_t>(count));
  DecodeToFloat(dtype, bytes.data(), count, out->data());
  return absl::OkStatus();
}

// --- grpc.health.v1 without generated stubs --------------------------------
// Debian ships no C++ stubs for health.proto; its two messages are one
// field each, so they are encoded by hand: HealthCheckRequest{string
// service = 1}, HealthCheckResponse{ServingStatus status = 1}.

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

// ---------------------------------------------------------------------------
// Targets and requests
// ---------------------------------------------------------------------------

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

namespace {

// Prepare() into a caller-owned request (AttendUnary moves its buffers).
absl::Status PrepareInto(const AttendInput& in, PreparedRequest* req) {
  const TensorShape& s = in.shape;
  for (const auto& [name, d] :
       {std::pair<const char*, int64_t>{"batch", s.batch},
        {"heads", s.heads},
        {"seq_q", s.seq_q},
        {"seq_k", s.seq_k},
        {"dim", s.dim},
        {"dim_v", s.dim_v}}) {
    if (d < 0 || d > std::numeric_limits<uint32_t>::max()) {
      return absl::InvalidArgumentError(
          absl::StrCat("shape.", name, ": ", d, " is out of range"));
    }
  }
  DType dtype;
  if (!wire::DTypeFromProto(in.dtype, &dtype)) {
    return absl::InvalidArgumentError(
        absl::StrCat("dtype: ", in.dtype, " is not float32|float16|bfloat16"));
  }
  DType unused;
  if (in.output_dtype != v1::DTYPE_UNSPECIFIED &&
      !wire::DTypeFromProto(in.output_dtype, &unused)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "output_dtype: ", in.output_dtype, " is not float32|float16|bfloat16"));
  }
  int64_t nq, nk, nv;
  if (!CheckedProduct({s.batch, s.heads, s.seq_q, s.dim}, &nq) ||
      !CheckedProduct({s.batch, s.heads, s.seq_k, s.dim}, &nk) ||
      !CheckedProduct({s.batch, s.heads, s.seq_k, s.dim_v}, &nv)) {
    return absl::InvalidArgumentError("shape: tensors too large");
  }
  for (const auto& [name, span, n] :
       {std::tuple<const char*, absl::Span<const float>, int64_t>{"q", in.q,
                                                                  nq},
        {"k", in.k, nk},
        {"v", in.v, nv}}) {
    if (static_cast<int64_t>(span.size()) != n) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, ": ", span.size(), " values, shape needs ", n));
    }
  }
  v1::RequestHeader& h = req->header;
  *h.mutable_settings() = in.settings;
  *h.mutable_shape() = wire::ShapeToProto(s);
  h.set_dtype(in.dtype);
  h.set_output_dtype(in.output_dtype);
  for (int32_t len : in.key_lengths) h.add_key_lengths(len);
  try {
    for (const auto& [dst, span] :
         {std::pair<std::string*, absl::Span<const float>>{&req->q, in.q},
          {&req->k, in.k},
          {&req->v, in.v}}) {
      dst->resize(span.size() * DTypeBytes(dtype));
      EncodeFromFloat(dtype, span.data(), static_cast<int64_t>(span.size()),
                      dst->data());
    }
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError("out of memory encoding the tensors");
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::shared_ptr<const PreparedRequest>> Prepare(
    const AttendInput& in) {
  auto req = std::make_shared<PreparedRequest>();
  absl::Status s = PrepareInto(in, req.get());
  if (!s.ok()) return s;
  return std::shared_ptr<const PreparedRequest>(std::move(req));
}

// ---------------------------------------------------------------------------
// AttendStream
// ---------------------------------------------------------------------------

// The stream's reactor. Writes go one at a time (gRPC allows one write in
// flight): requests queue in `sending_`, and the next message (a header or a
// chunk of at most chunk_bytes) is cut from the queue's front only when the
// previous write is done, so a request's bytes exist once (in its
// PreparedRequest) however long the queue. A read is always outstanding
// until the stream ends; StartWrite from outside a reaction happens under
// mu_ and only while !read_closed_, which is what keeps OnDone from running
// concurrently with it (the outstanding read holds the call open).
class AttendStream::Reactor
    : public grpc::ClientBidiReactor<v1::AttendRequest, v1::AttendResponse> {
 public:
  Reactor(v1::AttentionService::Stub* stub, int64_t chunk_bytes,
          int max_on_wire, absl::Duration deadline)
      : chunk_bytes_(std::max<int64_t>(1, chunk_bytes)),
        max_on_wire_(max_on_wire > 0 ? max_on_wire
                                     : std::numeric_limits<int>::max()) {
    SetDeadline(&ctx_, deadline);
    stub->async()->Attend(&ctx_, this);
    StartRead(&read_msg_);
    StartCall();
  }

  ~Reactor() override = default;

  absl::StatusOr<std::string> Submit(std::shared_ptr<const PreparedRequest> req,
                                     std::string id, Callback done) {
    absl::MutexLock lock(&mu_);
    if (closing_) {
      return absl::FailedPreconditionError(
          "the Attend stream is closed (Finish was called); open a new one");
    }
    if (finished_) {
      absl::Status s = wire::FromGrpcStatus(final_status_);
      if (s.ok()) {
        return absl::FailedPreconditionError(
            "the Attend stream has ended; open a new one");
      }
      return s;
    }
    // After the read side closed (the call failed) but before OnDone, the
    // request is registered and not sent: OnDone fails it with the call's
    // status, so the caller sees why (UNAVAILABLE, DEADLINE_EXCEEDED...).
    if (id.empty()) {
      do {
        id = absl::StrCat("r", next_id_++);
      } while (inflight_.count(id));
    } else if (id.size() > 128) {
      return absl::InvalidArgumentError("request_id: longer than 128 bytes");
    } else if (inflight_.count(id)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "request_id: '", id, "' is already in flight on this stream"));
    }
    Incoming& in = inflight_[id];
    in.done = std::move(done);
    in.result.request_id = id;
    sending_.push_back(Outgoing{id, std::move(req)});
    MaybeStartWriteLocked();
    return id;
  }

  void Cancel(const std::string& id) {
    Callback done;
    {
      absl::MutexLock lock(&mu_);
      auto it = inflight_.find(id);
      if (it == inflight_.end() || it->second.cancel_sent) return;
      // Not started on the wire: drop it here, the server never hears of it.
      auto unsent = std::find_if(
          sending_.begin(), sending_.end(),
          [&](const Outgoing& o) { return o.id == id && !o.header_sent; });
      if (unsent != sending_.end()) {
        sending_.erase(unsent);
        done = std::move(it->second.done);
        inflight_.erase(it);
      } else {
        // Stop sending its chunks, tell the server; the server answers
        // CANCELLED (or the result, if it was already done).
        it->second.cancel_sent = true;
        auto sending =
            std::find_if(sending_.begin(), sending_.end(),
                         [&](const Outgoing& o) { return o.id == id; });
        if (sending != sending_.end() && sending != sending_.begin()) {
          sending_.erase(sending);
        } else if (sending != sending_.end()) {
          sending->abandoned = true;  // the front may be mid-write
        }
        v1::AttendRequest msg;
        msg.mutable_cancel()->set_request_id(id);
        control_.push_back(std::move(msg));
        MaybeStartWriteLocked();
      }
    }
    if (done) done(absl::CancelledError("request cancelled by the client"));
  }

  int64_t inflight() const {
    absl::MutexLock lock(&mu_);
    return static_cast<int64_t>(inflight_.size());
  }

  absl::Status Finish() {
    {
      absl::MutexLock lock(&mu_);
      if (!closing_) {
        closing_ = true;
        MaybeStartWriteLocked();  // sends WritesDone when nothing is queued
      }
    }
    done_.WaitForNotification();
    absl::MutexLock lock(&mu_);
    return wire::FromGrpcStatus(final_status_);
  }

  void TryCancel() { ctx_.TryCancel(); }

  // The call failed or ended: a new request here would fail too.
  bool Broken() const {
    absl::MutexLock lock(&mu_);
    return finished_ || read_closed_ || write_failed_;
  }

  // Half-closes without waiting (a stream replaced after a failure).
  void Close() {
    absl::MutexLock lock(&mu_);
    if (!closing_) {
      closing_ = true;
      MaybeStartWriteLocked();
    }
  }

  void WaitDone() { done_.WaitForNotification(); }
  bool IsDone() const { return done_.HasBeenNotified(); }

  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    if (!ok) {
      // The call is over (server ended it, cancel or deadline): nothing
      // more can be written; OnDone reports the status.
      write_failed_ = true;
      return;
    }
    MaybeStartWriteLocked();
  }

  void OnWritesDoneDone(bool /*ok*/) override {}

  void OnReadDone(bool ok) override {
    if (!ok) {
      absl::MutexLock lock(&mu_);
      read_closed_ = true;
      return;
    }
    Callback done;
    std::optional<absl::StatusOr<AttendResult>> result = HandleResponse(&done);
    StartRead(&read_msg_);
    if (result.has_value() && done) done(*std::move(result));
  }

  void OnDone(const grpc::Status& status) override {
    std::vector<Callback> orphans;
    absl::Status err;
    {
      absl::MutexLock lock(&mu_);
      finished_ = true;
      final_status_ = status;
      err = status.ok() ? absl::UnavailableError(
                              "the Attend stream ended before the response")
                        : wire::FromGrpcStatus(status);
      for (auto& [id, in] : inflight_) {
        if (in.done) orphans.push_back(std::move(in.done));
      }
      inflight_.clear();
      sending_.clear();
      control_.clear();
    }
    for (Callback& cb : orphans) cb(err);
    // Last touch of `this`: the owner may delete the reactor once notified.
    done_.Notify();
  }

 private:
  struct Outgoing {
    std::string id;
    std::shared_ptr<const PreparedRequest> req;
    bool header_sent = false;
    bool abandoned = false;  // cancelled while its chunks were being sent
    int tensor = 0;          // 0 q, 1 k, 2 v
    int64_t offset = 0;      // in that tensor
  };
  struct Incoming {
    Callback done;
    bool cancel_sent = false;
    bool on_wire = false;  // its header was sent (counts in on_wire_)
    bool header = false;
    DType dtype = DType::kFloat32;  // of the output, from the header
    int64_t expected_bytes = 0;
    int64_t received_bytes = 0;
    AttendResult result;
  };

  // Fills write_msg_ with the next message; false when nothing is queued.
  bool FillNextLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!control_.empty()) {
      write_msg_ = std::move(control_.front());
      control_.pop_front();
      return true;
    }
    while (!sending_.empty()) {
      Outgoing& o = sending_.front();
      if (o.abandoned) {
        sending_.pop_front();
        continue;
      }
      if (!o.header_sent) {
        // The window is full: this request (and those behind it) wait for
        // a response to complete.
        if (on_wire_ >= max_on_wire_) return false;
        ++on_wire_;
        inflight_[o.id].on_wire = true;
        write_msg_.Clear();
        v1::RequestHeader* h = write_msg_.mutable_header();
        *h = o.req->header;
        h->set_request_id(o.id);
        o.header_sent = true;
        return true;
      }
      const std::string* tensors[3] = {&o.req->q, &o.req->k, &o.req->v};
      while (o.tensor < 3 &&
             o.offset >= static_cast<int64_t>(tensors[o.tensor]->size())) {
        ++o.tensor;
        o.offset = 0;
      }
      if (o.tensor == 3) {
        sending_.pop_front();
        continue;
      }
      const std::string& t = *tensors[o.tensor];
      const int64_t n = std::min<int64_t>(
          chunk_bytes_, static_cast<int64_t>(t.size()) - o.offset);
      write_msg_.Clear();
      v1::TensorChunk* c = write_msg_.mutable_chunk();
      c->set_request_id(o.id);
      static constexpr v1::TensorName kNames[3] = {
          v1::TENSOR_NAME_Q, v1::TENSOR_NAME_K, v1::TENSOR_NAME_V};
      c->set_tensor(kNames[o.tensor]);
      c->set_offset(static_cast<uint64_t>(o.offset));
      c->set_data(t.data() + o.offset, static_cast<size_t>(n));
      o.offset += n;
      // Release the request's bytes as soon as its last chunk is cut.
      if (o.tensor == 2 && o.offset >= static_cast<int64_t>(t.size())) {
        sending_.pop_front();
      }
      return true;
    }
    return false;
  }

  void MaybeStartWriteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (writing_ || write_failed_ || read_closed_ || finished_ ||
        writes_done_) {
      return;
    }
    if (FillNextLocked()) {
      writing_ = true;
      StartWrite(&write_msg_);
    } else if (closing_ && sending_.empty() && control_.empty()) {
      writes_done_ = true;
      StartWritesDone();
    }
  }

  // Consumes read_msg_; returns the finished request's result (and its
  // callback in *done) when this message completed one, else nullopt.
  std::optional<absl::StatusOr<AttendResult>> HandleResponse(Callback* done) {
    absl::MutexLock lock(&mu_);
    const std::string& id = read_msg_.request_id();
    auto it = inflight_.find(id);
    if (it == inflight_.end()) {
      // The rest of a request already failed here (and cancelled on the
      // server), or a server bug: nobody waits for it.
      return std::nullopt;
    }
    Incoming& in = it->second;
    absl::Status error;
    switch (read_msg_.kind_case()) {
      case v1::AttendResponse::kHeader: {
        const v1::ResponseHeader& h = read_msg_.header();
        in.header = true;
        in.result.shape = wire::ShapeFromProto(h.shape());
        in.result.stats = wire::StatsFromProto(h.stats());
        int64_t n;
        if (!wire::DTypeFromProto(h.dtype(), &in.dtype)) {
          error = absl::InternalError(
              absl::StrCat("server answered in unknown dtype ", h.dtype()));
        } else if (!CheckedProduct(
                       {in.result.shape.batch, in.result.shape.heads,
                        in.result.shape.seq_q, in.result.shape.dim_v},
                       &n)) {
          error = absl::InternalError("server sent an absurd output shape");
        } else {
          in.expected_bytes = n * DTypeBytes(in.dtype);
          try {
            in.result.out.assign(static_cast<size_t>(n), 0.0f);
          } catch (const std::bad_alloc&) {
            error = absl::ResourceExhaustedError(
                "out of memory for the output tensor");
          }
        }
        break;
      }
      case v1::AttendResponse::kChunk: {
        const v1::TensorChunk& c = read_msg_.chunk();
        const int eb = DTypeBytes(in.dtype);
        const int64_t size = static_cast<int64_t>(c.data().size());
        if (!in.header) {
          error = absl::InternalError("output chunk before the header");
        } else if (c.tensor() != v1::TENSOR_NAME_OUTPUT ||
                   static_cast<int64_t>(c.offset()) != in.received_bytes ||
                   size % eb != 0 ||
                   in.received_bytes + size > in.expected_bytes) {
          error = absl::InternalError(
              absl::StrCat("output chunk out of order: offset ", c.offset(),
                           ", ", size, " bytes, expected offset ",
                           in.received_bytes, " of ", in.expected_bytes));
        } else {
          DecodeToFloat(in.dtype, c.data().data(), size / eb,
                        in.result.out.data() + in.received_bytes / eb);
          in.received_bytes += size;
        }
        break;
      }
      case v1::AttendResponse::kError:
        error = wire::StatusFromCode(read_msg_.error().code(),
                                     read_msg_.error().message());
        break;
      default:
        error = absl::InternalError("empty AttendResponse");
        break;
    }
    if (error.ok() && !read_msg_.last()) return std::nullopt;
    if (error.ok() && in.received_bytes != in.expected_bytes) {
      error = absl::InternalError(
          absl::StrCat("output incomplete: ", in.received_bytes, " of ",
                       in.expected_bytes, " bytes"));
    }
    *done = std::move(in.done);
    absl::StatusOr<AttendResult> result =
        error.ok() ? absl::StatusOr<AttendResult>(std::move(in.result))
                   : absl::StatusOr<AttendResult>(error);
    // A request that failed on our side mid-response is cancelled on the
    // server too, and its remaining messages are ignored (unknown id).
    if (!error.ok() && read_msg_.kind_case() != v1::AttendResponse::kError &&
        !read_msg_.last() && !in.cancel_sent) {
      v1::AttendRequest msg;
      msg.mutable_cancel()->set_request_id(id);
      control_.push_back(std::move(msg));
      MaybeStartWriteLocked();
    }
    if (in.on_wire) {
      --on_wire_;
      MaybeStartWriteLocked();  // a waiting request may go now
    }
    inflight_.erase(it);
    return result;
  }

  grpc::ClientContext ctx_;
  const int64_t chunk_bytes_;
  const int max_on_wire_;

  mutable absl::Mutex mu_;
  int on_wire_ ABSL_GUARDED_BY(mu_) = 0;
  std::deque<v1::AttendRequest> control_ ABSL_GUARDED_BY(mu_);
  std::deque<Outgoing> sending_ ABSL_GUARDED_BY(mu_);
  std::unordered_map<std::string, Incoming> inflight_ ABSL_GUARDED_BY(mu_);
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool write_failed_ ABSL_GUARDED_BY(mu_) = false;
  bool closing_ ABSL_GUARDED_BY(mu_) = false;
  bool writes_done_ ABSL_GUARDED_BY(mu_) = false;
  bool read_closed_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  // The message of the write in flight (written under mu_ only while no
  // write is in flight; gRPC reads it until OnWriteDone).
  v1::AttendRequest write_msg_;
  // Touched only by OnReadDone (one read in flight) and under mu_.
  v1::AttendResponse read_msg_;
  grpc::Status final_status_ ABSL_GUARDED_BY(mu_);  // set by OnDone
  absl::Notification done_;
};

// What AttendStream is: the stream (Reactor) its requests currently go to,
// the streams it replaced (kept until they end: their reactions may still
// run), and every request not yet completed, so that one that failed with
// UNAVAILABLE can be resubmitted on a new stream. The waits between tries
// run on a thread started at the first retry (callbacks must not block).
// Lock order: Impl::mu_, then Reactor::mu_ (Reactor::Submit); a reactor
// calls back into OnResult without holding its own lock.
class AttendStream::Impl {
 public:
  Impl(v1::AttentionService::Stub* stub, const ClientOptions& options,
       absl::Duration deadline)
      : stub_(stub), options_(options), deadline_(deadline) {
    absl::MutexLock lock(&mu_);
    RollLocked();
  }

  ~Impl() {
    if (inflight() > 0) TryCancel();
    Finish().IgnoreError();
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
      cv_.SignalAll();
    }
    if (retrier_.joinable()) retrier_.join();
  }

  absl::StatusOr<std::string> Submit(std::shared_ptr<const PreparedRequest> req,
                                     std::string id, Callback done) {
    absl::MutexLock lock(&mu_);
    if (closing_) {
      return absl::FailedPreconditionError(
          "the Attend stream is closed (Finish was called); open a new one");
    }
    // Ids are unique across the streams this one spans (a resubmitted
    // request keeps its id).
    if (id.empty()) {
      do {
        id = absl::StrCat("r", next_id_++);
      } while (pending_.count(id));
    } else if (pending_.count(id)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "request_id: '", id, "' is already in flight on this stream"));
    }
    Pending& p = pending_[id];
    p.req = req;
    p.done = std::move(done);
    p.reactor = current_.get();
    absl::StatusOr<std::string> s =
        current_->Submit(std::move(req), id, Wrap(id));
    if (!s.ok()) {
      if (absl::IsUnavailable(s.status()) && MayRetryLocked(p)) {
        ScheduleRetryLocked(id, &p);
        return id;
      }
      pending_.erase(id);
      return s.status();
    }
    return id;
  }

  void Cancel(const std::string& id) {
    Callback done;
    Reactor* reactor = nullptr;
    {
      absl::MutexLock lock(&mu_);
      auto it = pending_.find(id);
      if (it == pending_.end()) return;
      if (it->second.waiting) {  // between tries: not on any stream
        done = std::move(it->second.done);
        pending_.erase(it);
        cv_.SignalAll();
      } else {
        it->second.cancelled = true;  // no retry from now on
        reactor = it->second.reactor;
      }
    }
    if (done) done(absl::CancelledError("request cancelled by the client"));
    if (reactor != nullptr) reactor->Cancel(id);
  }

  int64_t inflight() const {
    absl::MutexLock lock(&mu_);
    return static_cast<int64_t>(pending_.size());
  }

  absl::Status Finish() {
    std::vector<Reactor*> reactors;
    {
      absl::MutexLock lock(&mu_);
      closing_ = true;
      while (!pending_.empty()) cv_.Wait(&mu_);
      // Nothing pending and no Submit accepted: the set of streams is final.
      for (auto& r : old_) reactors.push_back(r.get());
      reactors.push_back(current_.get());
    }
    absl::Status status;
    for (Reactor* r : reactors) status = r->Finish();  // the current one's
    return status;
  }

  void TryCancel() {
    std::vector<Callback> waiting;
    std::vector<Reactor*> reactors;
    {
      absl::MutexLock lock(&mu_);
      cancelled_ = true;
      for (auto it = pending_.begin(); it != pending_.end();) {
        if (it->second.waiting) {
          waiting.push_back(std::move(it->second.done));
          it = pending_.erase(it);
        } else {
          ++it;
        }
      }
      for (auto& r : old_) reactors.push_back(r.get());
      reactors.push_back(current_.get());
      cv_.SignalAll();
    }
    for (Callback& cb : waiting) {
      if (cb) cb(absl::CancelledError("request cancelled by the client"));
    }
    for (Reactor* r : reactors) r->TryCancel();
  }

 private:
  struct Pending {
    std::shared_ptr<const PreparedRequest> req;
    Callback done;                 // the caller's
    Reactor* reactor = nullptr;    // the stream of its current try
    Reactor* failed_on = nullptr;  // the stream of its last failed try
    int attempts = 1;
    bool waiting = false;    // between tries (in no stream)
    bool cancelled = false;  // by Cancel: never retried
  };

  Callback Wrap(const std::string& id) {
    return [this, id](absl::StatusOr<AttendResult> r) {
      OnResult(id, std::move(r));
    };
  }

  bool MayRetryLocked(const Pending& p) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return !p.cancelled && !cancelled_ && p.attempts < options_.max_attempts;
  }

  void ScheduleRetryLocked(const std::string& id, Pending* p)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    p->waiting = true;
    p->failed_on = p->reactor;
    p->reactor = nullptr;
    retries_.emplace_back(absl::Now() + RetryBackoff(options_, p->attempts),
                          id);
    ++p->attempts;
    if (!retrier_.joinable()) retrier_ = std::thread([this] { RetryLoop(); });
    cv_.SignalAll();
  }

  // A reactor's answer for `id` (each reactor answers each id once).
  void OnResult(const std::string& id, absl::StatusOr<AttendResult> r) {
    Callback done;
    {
      absl::MutexLock lock(&mu_);
      auto it = pending_.find(id);
      if (it == pending_.end()) return;
      if (!r.ok() && absl::IsUnavailable(r.status()) &&
          MayRetryLocked(it->second)) {
        ScheduleRetryLocked(id, &it->second);
        return;
      }
      if (!r.ok() && it->second.attempts > 1) {
        r = absl::Status(r.status().code(),
                         absl::StrCat(r.status().message(), " (after ",
                                      it->second.attempts, " tries)"));
      }
      done = std::move(it->second.done);
      pending_.erase(it);
      cv_.SignalAll();
    }
    if (done) done(std::move(r));
  }

  // Replaces the current stream by a new call (round_robin picks a live
  // server for it); the old one is half-closed and kept until it ends.
  void RollLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (current_ != nullptr) {
      current_->Close();
      old_.push_back(std::move(current_));
    }
    current_ =
        std::make_unique<Reactor>(stub_, options_.chunk_bytes,
                                  options_.max_inflight_per_stream, deadline_);
  }

  void RetryLoop() {
    for (;;) {
      std::vector<std::string> due;
      {
        absl::MutexLock lock(&mu_);
        for (;;) {
          if (stop_) return;
          const absl::Time now = absl::Now();
          absl::Time next = absl::InfiniteFuture();
          for (const auto& [t, id] : retries_) next = std::min(next, t);
          if (next <= now) break;
          cv_.WaitWithDeadline(&mu_, next);
        }
        const absl::Time now = absl::Now();
        for (auto it = retries_.begin(); it != retries_.end();) {
          if (it->first <= now) {
            due.push_back(std::move(it->second));
            it = retries_.erase(it);
          } else {
            ++it;
          }
        }
      }
      for (const std::string& id : due) Resubmit(id);
    }
  }

  void Resubmit(const std::string& id) {
    Callback done;
    absl::Status error;
    {
      absl::MutexLock lock(&mu_);
      auto it = pending_.find(id);
      if (it == pending_.end() || !it->second.waiting) return;  // cancelled
      Pending& p = it->second;
      p.waiting = false;
      if (cancelled_) {
        error = absl::CancelledError("request cancelled by the client");
      } else {
        // The failed stream (the current one, or one already replaced) is
        // not reused: a request retried goes on a stream opened after its
        // failure.
        if (current_.get() == p.failed_on || current_->Broken()) {
          RollLocked();
        }
        absl::StatusOr<std::string> s = current_->Submit(p.req, id, Wrap(id));
        if (s.ok()) {
          p.reactor = current_.get();
          return;
        }
        if (absl::IsUnavailable(s.status()) && MayRetryLocked(p)) {
          ScheduleRetryLocked(id, &p);
          return;
        }
        error = s.status();
      }
      done = std::move(p.done);
      pending_.erase(it);
      cv_.SignalAll();
    }
    if (done) done(error);
  }

  v1::AttentionService::Stub* const stub_;
  const ClientOptions options_;
  const absl::Duration deadline_;

  mutable absl::Mutex mu_;
  absl::CondVar cv_;  // pending_ shrank, retries_ grew, stop_ / cancel
  std::unique_ptr<Reactor> current_ ABSL_GUARDED_BY(mu_);
  std::vector<std::unique_ptr<Reactor>> old_ ABSL_GUARDED_BY(mu_);
  std::unordered_map<std::string, Pending> pending_ ABSL_GUARDED_BY(mu_);
  std::vector<std::pair<absl::Time, std::string>> retries_ ABSL_GUARDED_BY(mu_);
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  bool closing_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread retrier_;
};

AttendStream::AttendStream(std::unique_ptr<Impl> impl)
    : impl_(std::move(impl)) {}

AttendStream::~AttendStream() = default;

absl::StatusOr<std::string> AttendStream::Submit(const AttendInput& in,
                                                 Callback done) {
  absl::StatusOr<std::shared_ptr<const PreparedRequest>> req = Prepare(in);
  if (!req.ok()) return req.status();
  return impl_->Submit(*std::move(req), in.request_id, std::move(done));
}

absl::StatusOr<std::string> AttendStream::Submit(
    std::shared_ptr<const PreparedRequest> request, std::string request_id,
    Callback done) {
  if (request == nullptr) {
    return absl::InvalidArgumentError("request: null PreparedRequest");
  }
  return impl_->Submit(std::move(request), std::move(request_id),
                       std::move(done));
}

std::future<absl::StatusOr<AttendResult>> AttendStream::Submit(
    std::shared_ptr<const PreparedRequest> request, std::string request_id) {
  auto promise = std::make_shared<std::promise<absl::StatusOr<AttendResult>>>();
  std::future<absl::StatusOr<AttendResult>> future = promise->get_future();
  absl::StatusOr<std::string> id =
      Submit(std::move(request), std::move(request_id),
             [promise](absl::StatusOr<AttendResult> r) {
               promise->set_value(std::move(r));
             });
  if (!id.ok()) promise->set_value(id.status());
  return future;
}

std::future<absl::StatusOr<AttendResult>> AttendStream::Submit(
    const AttendInput& in) {
  absl::StatusOr<std::shared_ptr<const PreparedRequest>> req = Prepare(in);
  if (!req.ok()) {
    std::promise<absl::StatusOr<AttendResult>> p;
    p.set_value(req.status());
    return p.get_future();
  }
  return Submit(*std::move(req), in.request_id);
}

absl::StatusOr<AttendResult> AttendStream::Attend(const AttendInput& in) {
  return Submit(in).get();
}

void AttendStream::Cancel(const std::string& request_id) {
  impl_->Cancel(request_id);
}

int64_t AttendStream::inflight() const { return impl_->inflight(); }

absl::Status AttendStream::Finish() { return impl_->Finish(); }

void AttendStream::TryCancel() { impl_->TryCancel(); }

// ---------------------------------------------------------------------------
// AttentionClient
// ---------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<AttentionClient>> AttentionClient::Create(
    Options options) {
  if (options.chunk_bytes <= 0) {
    return absl::InvalidArgumentError("chunk_bytes: must be > 0");
  }
  if (options.max_message_bytes <= 0) {
    return absl::InvalidArgumentError("max_message_bytes: must be > 0");
  }
  if (options.max_attempts < 1) {
    return absl::InvalidArgumentError("max_attempts: must be >= 1");
  }
  if (options.initial_backoff < absl::ZeroDuration() ||
      options.max_backoff < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("initial_backoff, max_backoff: >= 0");
  }
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
  std::shared_ptr<grpc::ChannelCredentials> creds =
      options.credentials ? options.credentials
                          : grpc::InsecureChannelCredentials();
  std::shared_ptr<grpc::Channel> channel =
      grpc::CreateCustomChannel(target->uri, creds, args);
  if (channel == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("target: cannot create a channel to '", target->uri, "'"));
  }
  return std::unique_ptr<AttentionClient>(
      new AttentionClient(std::move(options), std::move(channel)));
}

AttentionClient::AttentionClient(Options options,
                                 std::shared_ptr<grpc::Channel> channel)
    : options_(std::move(options)),
      channel_(std::move(channel)),
      stub_(v1::AttentionService::NewStub(channel_)) {}

AttentionClient::~AttentionClient() = default;

std::unique_ptr<AttendStream> AttentionClient::OpenStream(
    absl::Duration deadline) {
  return std::unique_ptr<AttendStream>(new AttendStream(
      std::make_unique<AttendStream::Impl>(stub_.get(), options_, deadline)));
}

absl::Duration RetryBackoff(const ClientOptions& options, int retry) {
  absl::Duration d = options.initial_backoff;
  for (int i = 1; i < retry && d < options.max_backoff; ++i) d *= 2;
  d = std::min(d, options.max_backoff);
  thread_local std::mt19937 rng(std::random_device{}());
  std::uniform_real_distribution<double> jitter(0.8, 1.2);
  return d * jitter(rng);
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
  absl::StatusOr<AttendResult> result;
  for (int attempt = 1;; ++attempt) {
    result = AttendUnaryOnce(in);
    if (result.ok() || !absl::IsUnavailable(result.status()) ||
        attempt >= options_.max_attempts) {
      return result;
    }
    absl::SleepFor(RetryBackoff(options_, attempt));
  }
}

absl::StatusOr<AttendResult> AttentionClient::AttendUnaryOnce(
    const AttendInput& in) {
  v1::AttendUnaryRequest request;
  {
    // The encoded buffers move into the message: no second copy.
    PreparedRequest req;
    absl::Status s = PrepareInto(in, &req);
    if (!s.ok()) return s;
    *request.mutable_header() = std::move(req.header);
    request.mutable_header()->set_request_id(in.request_id);
    *request.mutable_q() = std::move(req.q);
    *request.mutable_k() = std::move(req.k);
    *request.mutable_v() = std::move(req.v);
  }

  grpc::ClientContext ctx;
  SetDeadline(&ctx, options_.deadline);
  v1::AttendUnaryResponse response;
  grpc::Status st = stub_->AttendUnary(&ctx, request, &response);
  if (!st.ok()) return wire::FromGrpcStatus(st);
  AttendResult r;
  r.request_id = in.request_id;
  r.shape = wire::ShapeFromProto(response.header().shape());
  r.stats = wire::StatsFromProto(response.header().stats());
  int64_t n;
  if (!CheckedProduct(
          {r.shape.batch, r.shape.heads, r.shape.seq_q, r.shape.dim_v}, &n)) {
    return absl::InternalError("server sent an absurd output shape");
  }
  absl::Status d =
      DecodeOutput(response.output(), response.header().dtype(), n, &r.out);
  if (!d.ok()) return d;
  return r;
}

absl::StatusOr<ServingStatus> AttentionClient::Health(
    const std::string& service) {
  grpc::GenericStub generic(channel_);
  const std::string encoded = EncodeHealthRequest(service);
  grpc::Slice slice(encoded);
  grpc::ByteBuffer request(&slice, 1);
  grpc::ByteBuffer response;
  grpc::ClientContext ctx;
  SetDeadline(&ctx, options_.deadline);
  absl::Notification done;
  grpc::Status status;
  generic.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(),
                    &request, &response, [&](grpc::Status s) {
                      status = std::move(s);
                      done.Notify();
                    });
  done.WaitForNotification();
  if (!status.ok()) return wire::FromGrpcStatus(status);
  std::vector<grpc::Slice> slices;
  if (!response.Dump(&slices).ok()) {
    return absl::InternalError("unreadable health response");
  }
  std::string bytes;
  for (const grpc::Slice& s : slices) {
    bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  absl::StatusOr<int> code = DecodeHealthResponse(bytes);
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

absl::StatusOr<v1::ServerInfo> AttentionClient::GetServerInfo() {
  grpc::ClientContext ctx;
  SetDeadline(&ctx, options_.deadline);
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
