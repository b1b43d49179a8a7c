// scatterbrain/client/cpp/stream_call.cc — see stream_call.h.
#include "client/cpp/stream_call.h"

#include <algorithm>
#include <limits>
#include <new>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/cpp/retry.h"
#include "proto/convert/wire.h"

namespace scatterbrain {
namespace client {
namespace internal {
namespace {

// gRPC's length-prefixed message framing: a compressed flag and a 4-byte
// length before each message.
constexpr int64_t kMessagePrefixBytes = 5;

}  // namespace

StreamCall::StreamCall(v1::AttentionService::Stub* stub, int64_t chunk_bytes,
                       int max_on_wire, absl::Duration deadline)
    : chunk_bytes_(std::max<int64_t>(1, chunk_bytes)),
      max_on_wire_(max_on_wire > 0 ? max_on_wire
                                   : std::numeric_limits<int>::max()) {
  SetDeadline(&ctx_, deadline);
  stub->async()->Attend(&ctx_, this);
  StartRead(&read_msg_);
  StartCall();
}

absl::StatusOr<std::string> StreamCall::Submit(
    std::shared_ptr<const PreparedRequest> req, std::string id, Callback done) {
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

void StreamCall::Cancel(const std::string& id) {
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

int64_t StreamCall::inflight() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(inflight_.size());
}

absl::Status StreamCall::Finish() {
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

bool StreamCall::Broken() const {
  absl::MutexLock lock(&mu_);
  return finished_ || read_closed_ || write_failed_;
}

int64_t StreamCall::bytes_sent() const {
  absl::MutexLock lock(&mu_);
  return bytes_sent_;
}

int64_t StreamCall::bytes_received() const {
  absl::MutexLock lock(&mu_);
  return bytes_received_;
}

void StreamCall::Close() {
  absl::MutexLock lock(&mu_);
  if (!closing_) {
    closing_ = true;
    MaybeStartWriteLocked();
  }
}

void StreamCall::OnWriteDone(bool ok) {
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

void StreamCall::OnReadDone(bool ok) {
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

void StreamCall::OnDone(const grpc::Status& status) {
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
  // Last touch of `this`: the owner may delete the call once notified.
  done_.Notify();
}

bool StreamCall::FillNextLocked() {
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
      o.chunks.emplace(
          std::vector<TensorChunker::Tensor>{{v1::TENSOR_NAME_Q, &o.req->q},
                                             {v1::TENSOR_NAME_K, &o.req->k},
                                             {v1::TENSOR_NAME_V, &o.req->v}},
          chunk_bytes_);
      return true;
    }
    write_msg_.Clear();
    v1::TensorChunk* c = write_msg_.mutable_chunk();
    if (!o.chunks->Next(c)) {
      sending_.pop_front();
      continue;
    }
    c->set_request_id(o.id);
    // Release the request's bytes as soon as its last chunk is cut.
    if (o.chunks->done()) sending_.pop_front();
    return true;
  }
  return false;
}

void StreamCall::MaybeStartWriteLocked() {
  if (writing_ || write_failed_ || read_closed_ || finished_ || writes_done_) {
    return;
  }
  if (FillNextLocked()) {
    writing_ = true;
    bytes_sent_ +=
        kMessagePrefixBytes + static_cast<int64_t>(write_msg_.ByteSizeLong());
    StartWrite(&write_msg_);
  } else if (closing_ && sending_.empty() && control_.empty()) {
    writes_done_ = true;
    StartWritesDone();
  }
}

std::optional<absl::StatusOr<AttendResult>> StreamCall::HandleResponse(
    Callback* done) {
  absl::MutexLock lock(&mu_);
  bytes_received_ +=
      kMessagePrefixBytes + static_cast<int64_t>(read_msg_.ByteSizeLong());
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
      in.header = true;
      absl::StatusOr<OutputFormat> output =
          ReadResponseHeader(read_msg_.header(), &in.result);
      if (!output.ok()) {
        error = output.status();
        break;
      }
      in.output = *output;
      try {
        in.result.out.assign(static_cast<size_t>(output->elements), 0.0f);
      } catch (const std::bad_alloc&) {
        error =
            absl::ResourceExhaustedError("out of memory for the output tensor");
      }
      break;
    }
    case v1::AttendResponse::kChunk: {
      const v1::TensorChunk& c = read_msg_.chunk();
      const int eb = DTypeBytes(in.output.dtype);
      const int64_t size = static_cast<int64_t>(c.data().size());
      if (!in.header) {
        error = absl::InternalError("output chunk before the header");
      } else if (c.tensor() != v1::TENSOR_NAME_OUTPUT ||
                 static_cast<int64_t>(c.offset()) != in.received_bytes ||
                 size % eb != 0 ||
                 in.received_bytes + size > in.output.bytes()) {
        error = absl::InternalError(
            absl::StrCat("output chunk out of order: offset ", c.offset(), ", ",
                         size, " bytes, expected offset ", in.received_bytes,
                         " of ", in.output.bytes()));
      } else {
        DecodeToFloat(in.output.dtype, c.data().data(), size / eb,
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
  if (error.ok() && in.received_bytes != in.output.bytes()) {
    error = absl::InternalError(
        absl::StrCat("output incomplete: ", in.received_bytes, " of ",
                     in.output.bytes(), " bytes"));
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

}  // namespace internal
}  // namespace client
}  // namespace scatterbrain
