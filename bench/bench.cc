// scatterbrain/bench/bench.cc — Google Benchmark timings of exact attention
// against Scatterbrain and its baselines on the CPU backend.
//
// Shapes: B=1, H=8, d=dv=64, N in {1024, 4096, 16384}, iid Gaussian q, k
// (logit std 1 at tau = 1/sqrt(d)) and v ~ N(0, 1), generated once per N.
// Methods at budget 256 (features + support entries per query):
//   exact, performer (m=256), sb_lsh (m=128, bucket 128, calibrated),
//   sb_lsh_xpoly (the same with the cross-polytope hash instead of k-means),
//   sb_local (m=128, window 128, calibrated), lsh (bucket 256),
//   local (window 256).
//
// After the Google Benchmark output a summary table gives, per N, each
// method's median wall time per call and its speedup over exact measured in
// the same run (per-iteration times are collected from inside the
// benchmarks; a method filtered out by --benchmark_filter shows "-").
//
// Extra flags (removed before benchmark::Initialize sees argv):
//   --sb_sizes=1024,4096   restrict the sequence lengths
//   --sb_threads=N         CPU backend worker threads (0 = all cores)
//   --sb_min_time=S        MinTime per benchmark in seconds (default 1)
//   --profile              instead: Scatterbrain's time per phase, cold and
//                          warm (bench_modes.cc)
//   --compare              instead (or after --profile): ours against
//                          PyTorch's dense attention and SDPA on the same
//                          inputs, in the same run (bench/torch_compare.py)
//   --sb_repeats=N         warm calls per configuration in those modes (7)
//   --sb_python=PATH       the Python with torch for --compare
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "bench/bench_shared.h"
#include "benchmark/benchmark.h"
#include "kernels/backend.h"
#include "kernels/error_estimate.h"
#include "kernels/params.h"

namespace scatterbrain {
namespace bench {

Options& GetOptions() {
  static Options* o = new Options;
  return *o;
}

const std::vector<MethodSpec>& Methods() {
  static const std::vector<MethodSpec>* m = new std::vector<MethodSpec>{
      {"exact", Method::kExact},
      {"performer", Method::kPerformer, /*num_features=*/256},
      {"sb_lsh", Method::kScatterbrain, 128, 128, 128, SparseSupport::kLsh},
      {"sb_lsh_xpoly", Method::kScatterbrain, 128, 128, 128,
       SparseSupport::kLsh, LshHash::kCrossPolytope},
      {"sb_local", Method::kScatterbrain, 128, 128, 128, SparseSupport::kLocal},
      {"lsh", Method::kLsh, 128, /*bucket_size=*/256},
      {"local", Method::kLocal, 128, 128, /*window=*/256},
  };
  return *m;
}

const MethodSpec& MethodByName(const std::string& name) {
  for (const MethodSpec& m : Methods())
    if (name == m.name) return m;
  std::fprintf(stderr, "no method %s in the benchmark's table\n", name.c_str());
  std::exit(2);
}

const Inputs& GetInputs(int64_t n) {
  static std::mutex mu;
  static std::map<int64_t, std::unique_ptr<Inputs>>* cache =
      new std::map<int64_t, std::unique_ptr<Inputs>>;
  std::lock_guard<std::mutex> l(mu);
  auto it = cache->find(n);
  if (it != cache->end()) return *it->second;
  auto in = std::make_unique<Inputs>();
  std::mt19937_64 rng(kSeed ^ static_cast<uint64_t>(n));
  // q, k components N(0, 1): tau * q.k has standard deviation 1.
  std::normal_distribution<float> normal(0.0f, 1.0f);
  auto fill = [&](std::vector<float>& x, int64_t count) {
    x.resize(count);
    for (float& e : x) e = normal(rng);
  };
  fill(in->q, kBatch * kHeads * n * kDim);
  fill(in->k, kBatch * kHeads * n * kDim);
  fill(in->v, kBatch * kHeads * n * kDimV);
  const Inputs& ref = *in;
  (*cache)[n] = std::move(in);
  return ref;
}

Backend* GetBackend() {
  static Backend* b = [] {
    BackendOptions options;
    options.threads = GetOptions().threads;
    auto be = CreateBackend("cpu", options);
    if (!be.ok()) {
      std::fprintf(stderr, "cannot create cpu backend: %s\n",
                   std::string(be.status().message()).c_str());
      std::exit(1);
    }
    return be->release();
  }();
  return b;
}

AttentionParams MakeParams(const MethodSpec& spec, int64_t n, const Inputs& in,
                           float* out) {
  AttentionParams p;
  p.q = in.q.data();
  p.k = in.k.data();
  p.v = in.v.data();
  p.out = out;
  p.batch = kBatch;
  p.heads = kHeads;
  p.seq_q = n;
  p.seq_k = n;
  p.dim = kDim;
  p.dim_v = kDimV;
  SetContiguousStrides(p);
  p.method = spec.method;
  p.num_features = spec.num_features;
  p.bucket_size = spec.bucket_size;
  p.window = spec.window;
  p.sparse = spec.sparse;
  p.lsh_hash = spec.hash;
  p.seed = kSeed;
  return p;
}

double Median(std::vector<double> v) {
  if (v.empty()) return std::nan("");
  std::sort(v.begin(), v.end());
  const size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

}  // namespace bench

namespace {

using namespace bench;  // NOLINT: this file is the benchmark's own

// Per (method, N): wall seconds of every timed call.
std::mutex timings_mu;
std::map<std::pair<std::string, int64_t>, std::vector<double>>& Timings() {
  static auto* t =
      new std::map<std::pair<std::string, int64_t>, std::vector<double>>;
  return *t;
}

void BM_Attention(benchmark::State& state, MethodSpec spec, int64_t n) {
  const Inputs& in = GetInputs(n);
  std::vector<float> out(static_cast<size_t>(kBatch * kHeads * n * kDimV));
  const AttentionParams p = MakeParams(spec, n, in, out.data());
  Backend* be = GetBackend();

  // One untimed warm-up call (allocator, page faults), except for exact at
  // large N, where a call takes seconds and warms nothing that matters.
  const bool warm_up = !(spec.method == Method::kExact && n > 4096);
  if (warm_up) {
    auto st = be->Forward(p);
    if (!st.ok()) {
      state.SkipWithError(std::string(st.status().message()).c_str());
      return;
    }
  }

  AttentionStats last;
  std::vector<double> secs;
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    auto st = be->Forward(p);
    const auto t1 = std::chrono::steady_clock::now();
    if (!st.ok()) {
      state.SkipWithError(std::string(st.status().message()).c_str());
      break;
    }
    last = *st;
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
    secs.push_back(std::chrono::duration<double>(t1 - t0).count());
  }
  if (secs.empty()) return;

  state.counters["workspace_bytes"] = benchmark::Counter(
      static_cast<double>(last.workspace_bytes), benchmark::Counter::kDefaults,
      benchmark::Counter::kIs1024);
  state.counters["dense_bytes"] = benchmark::Counter(
      static_cast<double>(last.dense_score_bytes),
      benchmark::Counter::kDefaults, benchmark::Counter::kIs1024);
  state.counters["guards"] = static_cast<double>(last.denominator_guards);
  state.counters["fallbacks"] = static_cast<double>(last.fallbacks);
  if (spec.method != Method::kExact) {
    // Error on a few sampled rows per head (cheap: rows * N * d per head).
    auto err = EstimateRelativeError(p, kErrorRowsPerHead, kSeed + 1);
    state.counters["err_est"] = err.ok() ? *err : std::nan("");
  }
  std::lock_guard<std::mutex> l(timings_mu);
  auto& v = Timings()[{spec.name, n}];
  v.insert(v.end(), secs.begin(), secs.end());
}

void PrintSummary() {
  std::lock_guard<std::mutex> l(timings_mu);
  const auto& t = Timings();
  if (t.empty()) return;
  std::printf(
      "\nSummary (CPU backend, %d threads; B=%lld H=%lld d=%lld dv=%lld, "
      "budget 256): median wall ms per call; speedup = exact median / "
      "method median, same run\n\n",
      GetOptions().threads > 0
          ? GetOptions().threads
          : static_cast<int>(std::max(1u, std::thread::hardware_concurrency())),
      static_cast<long long>(kBatch), static_cast<long long>(kHeads),
      static_cast<long long>(kDim), static_cast<long long>(kDimV));
  std::printf("| N | method | iters | median ms | speedup vs exact |\n");
  std::printf("|---|---|---|---|---|\n");
  for (int64_t n : GetOptions().sizes) {
    auto ex = t.find({"exact", n});
    const double exact_ms =
        ex == t.end() ? std::nan("") : 1e3 * Median(ex->second);
    for (const MethodSpec& spec : Methods()) {
      auto it = t.find({spec.name, n});
      if (it == t.end()) continue;
      const double ms = 1e3 * Median(it->second);
      char speedup[32];
      if (std::isfinite(exact_ms) && ms > 0)
        std::snprintf(speedup, sizeof(speedup), "%.2fx", exact_ms / ms);
      else
        std::snprintf(speedup, sizeof(speedup), "-");
      std::printf("| %lld | %s | %zu | %.2f | %s |\n",
                  static_cast<long long>(n), spec.name, it->second.size(), ms,
                  speedup);
    }
  }
  std::fflush(stdout);
}

bool ParseSizes(const char* s, std::vector<int64_t>* out) {
  out->clear();
  std::string str(s);
  size_t pos = 0;
  while (pos <= str.size()) {
    size_t comma = str.find(',', pos);
    if (comma == std::string::npos) comma = str.size();
    const std::string tok = str.substr(pos, comma - pos);
    if (tok.empty()) return false;
    char* end = nullptr;
    const long long v = std::strtoll(tok.c_str(), &end, 10);
    if (*end != '\0' || v < 1) return false;
    out->push_back(v);
    pos = comma + 1;
  }
  return !out->empty();
}

// Removes our --sb_* flags from argv; exits on a malformed one.
void ParseOwnFlags(int* argc, char** argv) {
  Options& o = GetOptions();
  int w = 1;
  for (int r = 1; r < *argc; ++r) {
    const char* a = argv[r];
    if (std::strncmp(a, "--sb_sizes=", 11) == 0) {
      if (!ParseSizes(a + 11, &o.sizes)) {
        std::fprintf(stderr, "bad --sb_sizes: %s\n", a + 11);
        std::exit(2);
      }
    } else if (std::strncmp(a, "--sb_threads=", 13) == 0) {
      o.threads = std::atoi(a + 13);
    } else if (std::strncmp(a, "--sb_min_time=", 14) == 0) {
      o.min_time = std::atof(a + 14);
      if (!(o.min_time > 0)) {
        std::fprintf(stderr, "bad --sb_min_time: %s\n", a + 14);
        std::exit(2);
      }
    } else if (std::strcmp(a, "--profile") == 0) {
      o.profile = true;
    } else if (std::strcmp(a, "--compare") == 0) {
      o.compare = true;
    } else if (std::strncmp(a, "--sb_repeats=", 13) == 0) {
      o.repeats = std::atoi(a + 13);
      if (o.repeats < 1) {
        std::fprintf(stderr, "bad --sb_repeats: %s\n", a + 13);
        std::exit(2);
      }
    } else if (std::strncmp(a, "--sb_python=", 12) == 0) {
      o.python = a + 12;
    } else if (std::strncmp(a, "--sb_", 5) == 0) {
      std::fprintf(stderr,
                   "unknown flag %s (known: --sb_sizes=, --sb_threads=, "
                   "--sb_min_time=, --sb_repeats=, --sb_python=)\n",
                   a);
      std::exit(2);
    } else {
      argv[w++] = argv[r];
    }
  }
  *argc = w;
  argv[w] = nullptr;
}

void RegisterAll() {
  const Options& o = GetOptions();
  for (int64_t n : o.sizes) {
    for (const MethodSpec& spec : Methods()) {
      const std::string name =
          std::string(spec.name) + "/N:" + std::to_string(n);
      benchmark::RegisterBenchmark(name.c_str(), BM_Attention, spec, n)
          ->UseRealTime()
          ->Unit(benchmark::kMillisecond)
          // A call longer than MinTime ends the run after one iteration:
          // exact at N=16384 (seconds per call on 2 cores) runs once.
          ->MinTime(o.min_time);
    }
  }
}

}  // namespace
}  // namespace scatterbrain

int main(int argc, char** argv) {
  scatterbrain::ParseOwnFlags(&argc, argv);
  const scatterbrain::bench::Options& o = scatterbrain::bench::GetOptions();
  if (o.profile || o.compare) {
    int rc = 0;
    if (o.profile) rc = scatterbrain::bench::RunProfile();
    if (o.compare && rc == 0) rc = scatterbrain::bench::RunCompare(argv[0]);
    return rc;
  }
  scatterbrain::RegisterAll();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  scatterbrain::PrintSummary();
  return 0;
}
