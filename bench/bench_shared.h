// scatterbrain/bench/bench_shared.h — what scatterbrain_bench's modes share:
// the fixed shapes, the method table, the inputs (generated once per N) and
// the CPU backend. bench.cc holds the Google Benchmark mode and main;
// bench_modes.cc the per-phase profile (--profile) and the same-run
// comparison with PyTorch (--compare).
#ifndef SCATTERBRAIN_BENCH_BENCH_SHARED_H_
#define SCATTERBRAIN_BENCH_BENCH_SHARED_H_

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "kernels/params.h"

namespace scatterbrain {
namespace bench {

inline constexpr int64_t kBatch = 1;
inline constexpr int64_t kHeads = 8;
inline constexpr int64_t kDim = 64;
inline constexpr int64_t kDimV = 64;
inline constexpr uint64_t kSeed = 42;
// Sampled rows per (batch, head) for the cheap error counter.
inline constexpr int kErrorRowsPerHead = 16;

struct Options {
  std::vector<int64_t> sizes = {1024, 4096, 16384};
  int threads = 0;
  double min_time = 1.0;
  // Modes other than Google Benchmark's (bench_modes.cc).
  bool profile = false;
  bool compare = false;
  int repeats = 7;          // warm calls per configuration in those modes
  std::string python = "";  // interpreter for --compare ("" = search)
};
Options& GetOptions();

// One method configuration of the benchmark.
struct MethodSpec {
  const char* name;
  Method method;
  int num_features = 128;
  int bucket_size = 128;
  int window = 128;
  SparseSupport sparse = SparseSupport::kLsh;
  LshHash hash = LshHash::kKMeans;
};
const std::vector<MethodSpec>& Methods();
// The entry of Methods() called `name` (it must exist).
const MethodSpec& MethodByName(const std::string& name);

// Inputs for one N, generated once and shared by every method.
struct Inputs {
  std::vector<float> q, k, v;
};
const Inputs& GetInputs(int64_t n);

// The process's CPU backend (created on first use; exits if it cannot be).
Backend* GetBackend();

AttentionParams MakeParams(const MethodSpec& spec, int64_t n, const Inputs& in,
                           float* out);
double Median(std::vector<double> v);

// The modes; each returns the process's exit status.
int RunProfile();
int RunCompare(const char* argv0);

}  // namespace bench
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_BENCH_BENCH_SHARED_H_
