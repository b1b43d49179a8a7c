// scatterbrain/kernels/cancel.h — how a caller stops a call it no longer
// wants. A backend checks the call's CancelToken (AttentionParams::cancel)
// between pieces of work — row blocks of exact attention, (batch, head)
// slices, LSH chunks, causal blocks — on every worker thread, so a dropped
// request frees the machine within one piece (milliseconds) instead of
// running to its end. Plain C++ (no gRPC): a front end points the token at
// its request's flag and converts its deadline to the steady clock.
#ifndef SCATTERBRAIN_KERNELS_CANCEL_H_
#define SCATTERBRAIN_KERNELS_CANCEL_H_

#include <atomic>
#include <chrono>

#include "absl/status/status.h"

namespace scatterbrain {

// Once Stopped() is true it stays true (the flag is only ever set, time only
// moves on): an operation may check it, return early with its work half
// done, and rely on its caller's next check saying the same, so no partial
// result is ever used.
struct CancelToken {
  using Clock = std::chrono::steady_clock;

  // Set (never cleared) by whoever drops the call; not owned, must outlive
  // the call; null: no flag.
  const std::atomic<bool>* cancelled = nullptr;
  // The call stops once the steady clock passes this; max(): no deadline.
  Clock::time_point deadline = Clock::time_point::max();

  // Cheap (an atomic load and, with a deadline, a vDSO clock read: ~25 ns):
  // made per row block or chunk, never per element.
  bool Stopped() const {
    if (cancelled != nullptr && cancelled->load(std::memory_order_relaxed)) {
      return true;
    }
    return deadline != Clock::time_point::max() && Clock::now() >= deadline;
  }
};

// Null-safe forms (a call without a token never stops early).
inline bool Stopped(const CancelToken* token) {
  return token != nullptr && token->Stopped();
}
// OK while not stopped; CANCELLED when the flag is set, else
// DEADLINE_EXCEEDED once the deadline has passed.
absl::Status CancelStatus(const CancelToken* token);

}  // namespace scatterbrain

#endif  // SCATTERBRAIN_KERNELS_CANCEL_H_
