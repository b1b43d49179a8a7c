// scatterbrain/server/answer_writer.h — what a stream sends back: each
// request's answer (one error message, or a response header then output
// chunks), the queue of answers waiting for the stream's single write, and
// the backpressure that pauses reads while too many wait.
//
// The reactor owns one AnswerQueue under its mutex and calls NextMessage
// outside it: output chunks are encoded from float32 straight into the
// message's bytes as they are sent (the output's one copy), so a large
// output never exists twice in the wire dtype.
#ifndef SCATTERBRAIN_SERVER_ANSWER_WRITER_H_
#define SCATTERBRAIN_SERVER_ANSWER_WRITER_H_

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "scatterbrain/v1/attention.pb.h"
#include "server/executor.h"

namespace scatterbrain {
namespace server {

// One request's answer on a stream.
struct Answer {
  std::string request_id;
  std::string method;     // metrics label
  bool accepted = false;  // counted in the service's in-flight requests
  int64_t start_us = 0;   // when the request's header arrived
  absl::Status error;     // not OK: the answer is this one error message
  JobPtr job;             // OK: the computed request and its result
  JobResult result;
  int64_t sent_bytes = -1;  // output bytes sent; -1: header not yet sent
};

// An error answer. The id is echoed whole, even one over the contract's 128
// bytes (refused, never truncated: the client must be able to match the
// error to its request); the message it came in bounds it.
std::unique_ptr<Answer> ErrorAnswer(const std::string& request_id,
                                    const absl::Status& error,
                                    const std::string& method, bool accepted,
                                    int64_t start_us);

// Fills `msg` (cleared) with the next message of `a`: the error, else the
// response header, then output chunks of at most `chunk_bytes` (whole
// elements, at least one). True when it is the answer's last message; the
// output buffer is released then.
bool NextMessage(Answer& a, int64_t chunk_bytes, v1::AttendResponse* msg);

// The unary response: the response header and the whole output, encoded
// into the message; the float32 output is released.
void FillUnaryResponse(const RequestSpec& spec, JobResult& result,
                       v1::AttendUnaryResponse* response);

// Answers waiting to be written, plus the one whose last message is being
// written. Not thread-safe: the reactor guards it with its mutex.
class AnswerQueue {
 public:
  // More than `max_queued` waiting answers pause the stream's reads until
  // half have gone (a client that sends without reading cannot grow the
  // server's memory without bound).
  explicit AnswerQueue(size_t max_queued) : max_queued_(max_queued) {}

  bool empty() const { return queue_.empty(); }
  size_t size() const { return queue_.size(); }
  // Accepted requests whose answer is queued or partly sent: with the live
  // requests, the stream's requests in flight.
  size_t accepted() const { return accepted_; }

  void Push(std::unique_ptr<Answer> answer) {
    if (answer->accepted) ++accepted_;
    queue_.push_back(std::move(answer));
  }
  Answer* front() { return queue_.front().get(); }
  // The front answer's last message is going out: it leaves the queue and
  // is held until that write completes (FinishWritten). It stops counting
  // as in flight now, before the client can see the message: a client that
  // sends its next request on receipt must find the room it was promised.
  void StartLast() {
    finishing_ = std::move(queue_.front());
    queue_.pop_front();
    if (finishing_->accepted) --accepted_;
  }
  // The write of the held answer's last message completed; returns it.
  std::unique_ptr<Answer> FinishWritten() { return std::move(finishing_); }
  // Drops every queued answer, but the front one when `keep_front` (the
  // writer may be filling it), calling f(answer) for each, last first.
  template <typename F>
  void Drop(bool keep_front, F f) {
    const size_t keep = keep_front && !queue_.empty() ? 1 : 0;
    while (queue_.size() > keep) {
      const Answer& a = *queue_.back();
      f(a);
      if (a.accepted) --accepted_;
      queue_.pop_back();
    }
  }

  bool ShouldPauseReads() const { return queue_.size() >= max_queued_; }
  bool CanResumeReads() const { return queue_.size() <= max_queued_ / 2; }

 private:
  const size_t max_queued_;
  std::deque<std::unique_ptr<Answer>> queue_;
  std::unique_ptr<Answer> finishing_;
  size_t accepted_ = 0;
};

}  // namespace server
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_SERVER_ANSWER_WRITER_H_
