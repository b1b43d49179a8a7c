// scatterbrain/bench/session_bench.cc — Google Benchmark timings of a
// server-held session's decode step (the core, no transport) against the
// same attention done without a session, measured in the same run.
//
// Shapes: B=1, H=8, d=dv=64, context N in {4096, 16384, 65536} built by one
// append of iid Gaussian keys (logit std 1) and values; budget 256
// (Scatterbrain: 128 features, LSH neighbourhood of 128 keys, calibrated).
// Per N:
//   sb_step      a decode step: append one token's k/v, attend its query on
//                the incremental state (O(budget))
//   exact_step   the same step with exact attention over the stored blocks
//                (O(N), no copy)
//   sb_oneshot   what a stateless call computes for that token: the one-shot
//                Scatterbrain call of one query row against all N keys
//                (the K/V already in memory: transport not counted)
// After the Google Benchmark output, a table gives each one's median time
// per step, the ratios, and the session's memory (K/V bytes, state bytes,
// held bytes).
//
// Extra flags (removed before benchmark::Initialize sees argv):
//   --sb_sizes=4096,65536   restrict the context lengths
//   --sb_threads=N          worker threads (0 = all cores)
//   --sb_min_time=S         MinTime per benchmark in seconds (default 2)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "benchmark/benchmark.h"
#include "kernels/backend.h"
#include "kernels/session/kv_session.h"

namespace scatterbrain {
namespace {

constexpr int64_t kHeads = 8, kDim = 64;
std::vector<int64_t> g_sizes = {4096, 16384, 65536};
int g_threads = 0;
double g_min_time = 2.0;

std::vector<float> Gaussian(int64_t n, uint64_t seed, float stddev) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<float> x(n);
  for (float& v : x) v = dist(rng);
  return x;
}

AttentionParams Settings(Method method) {
  AttentionParams s;
  s.method = method;
  s.num_features = 128;
  s.bucket_size = 128;
  s.seed = 1;
  return s;
}

// A context of n tokens: keys with logit std 1 at tau = 1/sqrt(d).
struct Context {
  int64_t n;
  std::vector<float> k, v;                       // [H, n, d]
  std::vector<float> steps_q, steps_k, steps_v;  // [H, 4096, d]
};
const Context& GetContext(int64_t n) {
  static std::mutex mu;
  static std::map<int64_t, std::unique_ptr<Context>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto& c = cache[n];
  if (!c) {
    c = std::make_unique<Context>();
    c->n = n;
    const float s = std::pow(static_cast<float>(kDim), 0.25f);
    c->k = Gaussian(kHeads * n * kDim, 11 + n, s);
    c->v = Gaussian(kHeads * n * kDim, 12 + n, 1.0f);
    c->steps_q = Gaussian(kHeads * 4096 * kDim, 13, s);
    c->steps_k = Gaussian(kHeads * 4096 * kDim, 14, s);
    c->steps_v = Gaussian(kHeads * 4096 * kDim, 15, 1.0f);
  }
  return *c;
}

std::unique_ptr<KvSession> MakeSession(Method method, const Context& c) {
  SessionConfig cfg;
  cfg.settings = Settings(method);
  cfg.heads = kHeads;
  cfg.dim = cfg.dim_v = kDim;
  auto s = KvSession::Create(cfg, nullptr);
  if (!s.ok()) return nullptr;
  const int64_t n = c.n;
  if (!(*s)->Append(absl::MakeConstSpan(&n, 1), c.k.data(), c.v.data(),
                    DType::kFloat32)
           .ok())
    return nullptr;
  return std::move(*s);
}

// Median seconds per iteration, per (benchmark, N), for the summary.
std::mutex g_mu;
std::map<std::pair<std::string, int64_t>, std::vector<double>> g_times;
std::map<int64_t, SessionInfo> g_info;
void Record(const std::string& name, int64_t n, double s) {
  std::lock_guard<std::mutex> lock(g_mu);
  g_times[{name, n}].push_back(s);
}

// One session per (method, N), kept across Google Benchmark's runs of a
// benchmark so that its steps continue one decode (the prefill and the
// first steps' calibration rows are paid once, as a real session pays them).
KvSession* GetSession(Method method, const Context& c) {
  static std::mutex mu;
  static std::map<std::pair<int, int64_t>, std::unique_ptr<KvSession>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto& s = cache[{static_cast<int>(method), c.n}];
  if (!s) s = MakeSession(method, c);
  return s.get();
}

void Step(benchmark::State& state, Method method, const char* name) {
  const Context& c = GetContext(state.range(0));
  KvSession* s = GetSession(method, c);
  if (!s) {
    state.SkipWithError("session");
    return;
  }
  std::vector<float> q(kHeads * kDim), k(kHeads * kDim), v(kHeads * kDim),
      out(kHeads * kDim);
  int64_t t = 0;
  for (auto _ : state) {
    // Step t's token (cycling through 4096 prepared ones).
    const int64_t i = t++ % 4096;
    for (int64_t h = 0; h < kHeads; ++h) {
      std::memcpy(q.data() + h * kDim, c.steps_q.data() + (h * 4096 + i) * kDim,
                  kDim * sizeof(float));
      std::memcpy(k.data() + h * kDim, c.steps_k.data() + (h * 4096 + i) * kDim,
                  kDim * sizeof(float));
      std::memcpy(v.data() + h * kDim, c.steps_v.data() + (h * 4096 + i) * kDim,
                  kDim * sizeof(float));
    }
    SessionCall call;
    call.session = s;
    call.q = q.data();
    call.k = k.data();
    call.v = v.data();
    call.seq_q = 1;
    call.out = out.data();
    const auto t0 = std::chrono::steady_clock::now();
    AttendSessions(absl::MakeSpan(&call, 1), nullptr, g_threads);
    Record(name, c.n,
           std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
               .count());
    if (!call.status.ok()) {
      state.SkipWithError(std::string(call.status.message()).c_str());
      return;
    }
    benchmark::DoNotOptimize(out.data());
  }
  if (method == Method::kScatterbrain) {
    std::lock_guard<std::mutex> lock(g_mu);
    g_info[c.n] = s->Info();
  }
}

void BM_SbStep(benchmark::State& state) {
  Step(state, Method::kScatterbrain, "sb_step");
}
void BM_ExactStep(benchmark::State& state) {
  Step(state, Method::kExact, "exact_step");
}

void BM_SbOneShot(benchmark::State& state) {
  const Context& c = GetContext(state.range(0));
  BackendOptions bo;
  bo.threads = g_threads;
  auto backend = CreateBackend("cpu", bo);
  if (!backend.ok()) {
    state.SkipWithError("backend");
    return;
  }
  std::vector<float> q(c.steps_q.begin(), c.steps_q.begin() + kHeads * kDim);
  std::vector<float> out(kHeads * kDim);
  AttentionParams p = Settings(Method::kScatterbrain);
  p.q = q.data();
  p.k = c.k.data();
  p.v = c.v.data();
  p.out = out.data();
  p.batch = 1;
  p.heads = kHeads;
  p.seq_q = 1;
  p.seq_k = c.n;
  p.dim = p.dim_v = kDim;
  p.causal = true;
  SetContiguousStrides(p);
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    auto st = (*backend)->Forward(p);
    Record("sb_oneshot", c.n,
           std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
               .count());
    if (!st.ok()) {
      state.SkipWithError(std::string(st.status().message()).c_str());
      return;
    }
  }
}

double Percentile(std::vector<double> x, double q) {
  if (x.empty()) return 0;
  std::sort(x.begin(), x.end());
  return x[std::min(x.size() - 1, static_cast<size_t>(q * x.size()))];
}
double Median(std::vector<double> x) { return Percentile(std::move(x), 0.5); }

void PrintSummary() {
  std::printf(
      "\nDecode step, B=1 H=8 d=64, budget 256, median per step (same run):\n");
  std::printf("%8s %12s %12s %14s %10s %10s %12s %12s %12s\n", "context",
              "sb_step us", "exact_step", "sb_oneshot us", "exact/sb",
              "oneshot/sb", "kv MB", "state MB", "held/(kv+st)");
  for (int64_t n : g_sizes) {
    const double sb = Median(g_times[{"sb_step", n}]);
    const double ex = Median(g_times[{"exact_step", n}]);
    const double os = Median(g_times[{"sb_oneshot", n}]);
    const SessionInfo& info = g_info[n];
    const double kvst = static_cast<double>(info.kv_bytes + info.state_bytes);
    std::printf(
        "%8ld %12.1f %12.1f %14.1f %10.1f %10.1f %12.2f %12.2f %12.4f\n",
        static_cast<long>(n), sb * 1e6, ex * 1e6, os * 1e6,
        sb > 0 ? ex / sb : 0, sb > 0 ? os / sb : 0, info.kv_bytes / 1e6,
        info.state_bytes / 1e6, kvst > 0 ? info.held_bytes / kvst : 0);
  }
  std::printf("\nsb_step percentiles (us): p50 / p90 / p99 / max\n");
  for (int64_t n : g_sizes) {
    const std::vector<double>& t = g_times[{"sb_step", n}];
    std::printf("%8ld %10.1f %10.1f %10.1f %10.1f  (%zu steps)\n",
                static_cast<long>(n), Percentile(t, 0.5) * 1e6,
                Percentile(t, 0.9) * 1e6, Percentile(t, 0.99) * 1e6,
                Percentile(t, 1.0) * 1e6, t.size());
  }
}

}  // namespace
}  // namespace scatterbrain

int main(int argc, char** argv) {
  using namespace scatterbrain;
  std::vector<char*> rest;
  for (int i = 0; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--sb_sizes=", 0) == 0) {
      g_sizes.clear();
      for (const char* p = argv[i] + 11; *p;) {
        g_sizes.push_back(std::strtoll(p, const_cast<char**>(&p), 10));
        if (*p == ',') ++p;
      }
    } else if (a.rfind("--sb_min_time=", 0) == 0) {
      g_min_time = std::atof(argv[i] + 14);
    } else if (a.rfind("--sb_threads=", 0) == 0) {
      g_threads = std::atoi(argv[i] + 13);
    } else {
      rest.push_back(argv[i]);
    }
  }
  for (int64_t n : g_sizes) {
    benchmark::RegisterBenchmark("sb_step", BM_SbStep)
        ->Arg(n)
        ->Unit(benchmark::kMicrosecond)
        ->MinTime(g_min_time);
    benchmark::RegisterBenchmark("exact_step", BM_ExactStep)
        ->Arg(n)
        ->Unit(benchmark::kMicrosecond)
        ->MinTime(g_min_time);
    benchmark::RegisterBenchmark("sb_oneshot", BM_SbOneShot)
        ->Arg(n)
        ->Unit(benchmark::kMicrosecond)
        ->MinTime(g_min_time);
  }
  int n = static_cast<int>(rest.size());
  benchmark::Initialize(&n, rest.data());
  benchmark::RunSpecifiedBenchmarks();
  PrintSummary();
  return 0;
}
