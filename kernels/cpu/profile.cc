// scatterbrain/kernels/cpu/profile.cc
#include "kernels/cpu/profile.h"

#include <time.h>

namespace scatterbrain {
namespace cpu {
namespace {

std::atomic<bool> g_enabled{false};
// Nanoseconds per phase, all threads together.
std::array<std::atomic<int64_t>, kNumPhases> g_ns{};

// This thread's current phase and when it was entered (or last charged).
thread_local Phase t_phase = Phase::kOther;
thread_local int64_t t_since_ns = 0;
// Open scopes on this thread: time outside every scope is not charged.
thread_local int t_depth = 0;

// This thread's CPU time, not the wall clock: on a shared machine a
// descheduled thread would otherwise charge its wait to whatever phase it
// was in.
int64_t NowNs() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

// Charges the time since the last switch to the current phase.
void Charge(int64_t now) {
  g_ns[static_cast<int>(t_phase)].fetch_add(now - t_since_ns,
                                            std::memory_order_relaxed);
  t_since_ns = now;
}

}  // namespace

const char* PhaseName(Phase p) {
  switch (p) {
    case Phase::kOther:
      return "other";
    case Phase::kCalibration:
      return "calibration rows";
    case Phase::kKMeansFit:
      return "k-means fit";
    case Phase::kHashAssign:
      return "hash assignment";
    case Phase::kSortChunk:
      return "sort + chunks";
    case Phase::kFeatures:
      return "feature maps";
    case Phase::kLowRank:
      return "low-rank sums";
    case Phase::kSparsePass:
      return "sparse pass";
    case Phase::kCombine:
      return "combine";
    case Phase::kExact:
      return "exact rows";
    case Phase::kSetup:
      return "call setup";
    case Phase::kCount:
      break;
  }
  return "?";
}

void EnableProfile(bool on) { g_enabled.store(on); }
bool ProfileEnabled() { return g_enabled.load(std::memory_order_relaxed); }

std::array<double, kNumPhases> TakeProfile() {
  std::array<double, kNumPhases> out{};
  for (int i = 0; i < kNumPhases; ++i)
    out[i] = 1e-9 * static_cast<double>(g_ns[i].exchange(0));
  return out;
}

PhaseScope::PhaseScope(Phase phase) : on_(ProfileEnabled()), saved_(t_phase) {
  if (!on_) return;
  const int64_t now = NowNs();
  // An outermost scope starts the clock: nothing before it is charged.
  if (t_depth > 0) Charge(now);
  t_since_ns = now;
  ++t_depth;
  t_phase = phase;
}

PhaseScope::~PhaseScope() {
  if (!on_) return;
  Charge(NowNs());
  --t_depth;
  t_phase = saved_;
}

}  // namespace cpu
}  // namespace scatterbrain
