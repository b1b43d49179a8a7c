// scatterbrain/kernels/cpu/profile.h — an opt-in, process-wide breakdown of
// the CPU backend's time by phase (hashing, features, the sparse pass, ...),
// for scatterbrain_bench --profile. Off by default: a disabled PhaseScope
// costs one relaxed atomic load.
//
// Times are each thread's CPU time (so a loaded machine's waits are not
// counted) and exclusive: a scope charges the time since the last switch to
// the phase it interrupts, so nested scopes never count twice. The totals
// are CPU-seconds summed over the worker threads.
#ifndef SCATTERBRAIN_KERNELS_CPU_PROFILE_H_
#define SCATTERBRAIN_KERNELS_CPU_PROFILE_H_

#include <array>
#include <atomic>
#include <cstdint>

namespace scatterbrain {
namespace cpu {

enum class Phase : int {
  kOther = 0,    // inside a slice, outside every named phase
  kCalibration,  // exact calibration / held-out rows
  kKMeansFit,    // k-means centroids (Lloyd iterations on the sample)
  kHashAssign,   // every key's and query's leaf / bucket and order key
  kSortChunk,    // sorting by hash, cutting chunks, placing queries
  kFeatures,     // positive random features of q and k
  kLowRank,      // low-rank sums (and the fused path's chunk sums)
  kSparsePass,   // exact scores on the support (gather, GEMMs, exp, sums)
  kCombine,      // calibration choice and the output rows
  kExact,        // exact attention rows (method exact, fallbacks)
  kSetup,        // per call, outside slices: draws, workers, scratch
  kCount
};
inline constexpr int kNumPhases = static_cast<int>(Phase::kCount);
const char* PhaseName(Phase p);

// Turns the accounting on or off for the whole process.
void EnableProfile(bool on);
bool ProfileEnabled();

// Seconds per phase accumulated since the last call; resets them.
std::array<double, kNumPhases> TakeProfile();

// Charges the time until it ends (minus nested scopes) to `phase`, on this
// thread. Cheap when profiling is off.
class PhaseScope {
 public:
  explicit PhaseScope(Phase phase);
  ~PhaseScope();
  PhaseScope(const PhaseScope&) = delete;
  PhaseScope& operator=(const PhaseScope&) = delete;

 private:
  bool on_;
  Phase saved_;
};

}  // namespace cpu
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_KERNELS_CPU_PROFILE_H_
