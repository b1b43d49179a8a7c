// scatterbrain/server/backend_select.h — which backend the server runs on.
//
// "auto" prefers the GPU, but only a GPU backend that agrees with the CPU
// backend: before it is chosen it computes every method on a small problem
// and its outputs are compared with the CPU's (SelfCheck). A device whose
// backend is missing, fails to start or disagrees leaves the server on the
// CPU, with a line on stderr saying why — never serving wrong answers
// because of an unverified device path.
#ifndef SCATTERBRAIN_SERVER_BACKEND_SELECT_H_
#define SCATTERBRAIN_SERVER_BACKEND_SELECT_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/backend.h"

namespace scatterbrain {
namespace server {

// "cpu" or "cuda": that backend, or its error. "auto": cuda when a device is
// present, its backend starts and SelfCheck passes; else cpu.
absl::StatusOr<std::unique_ptr<Backend>> SelectBackend(
    const std::string& name, const BackendOptions& options);

// Runs every method on small odd-sized problems (causal and not, key
// lengths, seq_q != seq_k, dv != d) on `candidate` and `reference`, through
// ForwardBatch on host float32. Exact, performer and local must agree to
// 1e-3 relative; so must lsh and scatterbrain with clusters that hold every
// key (no discrete choice matters then); with real clusters, whose choices
// may flip on rounding, they must be no further from exact attention than
// the reference is (x1.25 + 1e-3). FAILED_PRECONDITION naming the first
// disagreement.
absl::Status SelfCheck(Backend& candidate, Backend& reference);

}  // namespace server
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_SERVER_BACKEND_SELECT_H_
