// scatterbrain/bench/bench_modes.cc — scatterbrain_bench's two non-Google-
// Benchmark modes.
//
// --profile: Scatterbrain (sb_lsh: 128 features, k-means clusters of 128,
// calibrated, default settings) per phase (kernels/cpu/profile.h) at each
// N: the first call at that N (the process's first call for the first N:
// workers, draws and scratch all cold) and the mean over --sb_repeats warm
// calls; phases are CPU milliseconds summed over the worker threads, beside
// the call's wall time and the input validation it includes.
//
// --compare: at each N, in this one process and on the same inputs: our
// exact and sb_lsh (median warm wall time), then PyTorch's dense
// softmax(QK^T / sqrt d) V and scaled_dot_product_attention through
// bench/torch_compare.py with the same thread count, when some Python can
// import torch (--sb_python, python3 on PATH, /usr/bin/python3): the
// helper runs twice (BLAS threads as installed, and OPENBLAS_NUM_THREADS=1)
// and the faster median per N is shown. The
// authors' reference (HazyResearch/fly) is not installable here; the table
// says so rather than quoting a number from another run.
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench_shared.h"
#include "kernels/cpu/profile.h"
#include "kernels/validate.h"

#ifndef SB_BENCH_DIR
#define SB_BENCH_DIR "bench"
#endif

namespace scatterbrain {
namespace bench {
namespace {

using Clock = std::chrono::steady_clock;

int Threads() {
  const int t = GetOptions().threads;
  return t > 0 ? t
               : static_cast<int>(
                     std::max(1u, std::thread::hardware_concurrency()));
}

// One timed call: wall seconds, or a negative value on error (printed).
double TimedCall(const AttentionParams& p) {
  const auto t0 = Clock::now();
  auto st = GetBackend()->Forward(p);
  const double s = std::chrono::duration<double>(Clock::now() - t0).count();
  if (!st.ok()) {
    std::fprintf(stderr, "call failed: %s\n",
                 std::string(st.status().message()).c_str());
    return -1.0;
  }
  return s;
}

// Minor page faults of the process so far.
int64_t MinorFaults() {
  rusage u;
  getrusage(RUSAGE_SELF, &u);
  return u.ru_minflt;
}

void PrintLoad() {
  double load[3] = {0, 0, 0};
  if (getloadavg(load, 3) == 3)
    std::printf("load average: %.2f %.2f %.2f\n", load[0], load[1], load[2]);
}

}  // namespace

int RunProfile() {
  const Options& o = GetOptions();
  const MethodSpec& spec = MethodByName("sb_lsh");
  cpu::EnableProfile(true);
  std::printf(
      "\nProfile: sb_lsh (scatterbrain, %d features, k-means clusters of %d, "
      "1 round, calibrated; defaults otherwise), B=%lld H=%lld d=%lld, %d "
      "threads.\nPhases are CPU ms summed over the threads (exclusive: a "
      "nested phase is not counted in its parent). \"cold\" is the first "
      "call at that N (for the first N, the process's first call); \"warm\" "
      "the mean of %d later calls.\n",
      spec.num_features, spec.bucket_size, static_cast<long long>(kBatch),
      static_cast<long long>(kHeads), static_cast<long long>(kDim), Threads(),
      o.repeats);
  PrintLoad();
  GetBackend();  // created (and warmed up) before any timed call
  for (int64_t n : o.sizes) {
    const Inputs& in = GetInputs(n);
    std::vector<float> out(static_cast<size_t>(kBatch * kHeads * n * kDimV));
    const AttentionParams p = MakeParams(spec, n, in, out.data());
    cpu::TakeProfile();
    const int64_t faults0 = MinorFaults();
    const double cold_s = TimedCall(p);
    if (cold_s < 0) return 1;
    const int64_t cold_faults = MinorFaults() - faults0;
    const std::array<double, cpu::kNumPhases> cold = cpu::TakeProfile();
    std::array<double, cpu::kNumPhases> warm{};
    std::vector<double> walls;
    const int64_t faults1 = MinorFaults();
    for (int r = 0; r < o.repeats; ++r) {
      const double s = TimedCall(p);
      if (s < 0) return 1;
      walls.push_back(s);
      const auto ph = cpu::TakeProfile();
      for (int i = 0; i < cpu::kNumPhases; ++i) warm[i] += ph[i] / o.repeats;
    }
    const double warm_faults =
        static_cast<double>(MinorFaults() - faults1) / o.repeats;
    // The value scan and shape checks Forward does before the backend runs.
    std::vector<double> validate;
    for (int r = 0; r < o.repeats; ++r) {
      const auto t0 = Clock::now();
      (void)ValidateParams(p, /*check_values=*/true);
      validate.push_back(
          std::chrono::duration<double>(Clock::now() - t0).count());
    }
    std::printf("\nN = %lld\n\n", static_cast<long long>(n));
    std::printf("| phase | cold CPU ms | warm CPU ms | warm share |\n");
    std::printf("|---|---|---|---|\n");
    double cold_sum = 0, warm_sum = 0;
    for (int i = 0; i < cpu::kNumPhases; ++i) {
      cold_sum += cold[i];
      warm_sum += warm[i];
    }
    for (int i = 0; i < cpu::kNumPhases; ++i) {
      if (cold[i] == 0 && warm[i] == 0) continue;
      std::printf("| %s | %.2f | %.2f | %.1f%% |\n",
                  cpu::PhaseName(static_cast<cpu::Phase>(i)), 1e3 * cold[i],
                  1e3 * warm[i], warm_sum > 0 ? 100.0 * warm[i] / warm_sum : 0);
    }
    std::printf("| sum of phases (CPU) | %.2f | %.2f | 100%% |\n",
                1e3 * cold_sum, 1e3 * warm_sum);
    std::printf(
        "| validation (wall, one thread; part of the call) | - | %.2f | - |\n",
        1e3 * Median(validate));
    std::printf("| call wall ms | %.2f | %.2f (median) | - |\n", 1e3 * cold_s,
                1e3 * Median(walls));
    std::printf("| minor page faults in the call | %lld | %.0f (mean) | - |\n",
                static_cast<long long>(cold_faults), warm_faults);
  }
  cpu::EnableProfile(false);
  PrintLoad();
  std::fflush(stdout);
  return 0;
}

namespace {

// Writes the three tensors of N as raw little-endian float32 files.
bool WriteRaw(const std::string& dir, int64_t n, const Inputs& in) {
  const std::pair<const char*, const std::vector<float>*> files[] = {
      {"q", &in.q}, {"k", &in.k}, {"v", &in.v}};
  for (const auto& [name, data] : files) {
    const std::string path = dir + "/" + name + std::to_string(n) + ".f32";
    FILE* f = std::fopen(path.c_str(), "wb");
    if (f == nullptr) return false;
    const size_t w = std::fwrite(data->data(), sizeof(float), data->size(), f);
    if (std::fclose(f) != 0 || w != data->size()) return false;
  }
  return true;
}

// The first of the candidate interpreters that can import torch.
std::string FindTorchPython() {
  std::vector<std::string> cands;
  if (!GetOptions().python.empty()) cands.push_back(GetOptions().python);
  cands.push_back("python3");
  cands.push_back("/usr/bin/python3");
  for (const std::string& py : cands) {
    const std::string cmd = py + " -c 'import torch' >/dev/null 2>&1";
    if (std::system(cmd.c_str()) == 0) return py;
  }
  return "";
}

struct TorchTimes {
  double dense_ms = std::nan("");
  double sdpa_ms = std::nan("");
};

// Runs bench/torch_compare.py; its stdout holds one line per N:
// "N dense_ms sdpa_ms" (nan where not measured), and "# ..." notes.
std::map<int64_t, TorchTimes> RunTorch(const std::string& py,
                                       const std::string& dir,
                                       const std::string& env,
                                       std::string* version) {
  std::map<int64_t, TorchTimes> out;
  std::string sizes;
  for (int64_t n : GetOptions().sizes)
    sizes += (sizes.empty() ? "" : ",") + std::to_string(n);
  const std::string cmd =
      (env.empty() ? "" : "env " + env + " ") + py +
      " " SB_BENCH_DIR "/torch_compare.py --dir=" + dir + " --sizes=" + sizes +
      " --heads=" + std::to_string(kHeads) + " --dim=" + std::to_string(kDim) +
      " --threads=" + std::to_string(Threads()) +
      " --repeats=" + std::to_string(GetOptions().repeats);
  FILE* pipe = popen(cmd.c_str(), "r");
  if (pipe == nullptr) return out;
  char line[512];
  while (std::fgets(line, sizeof(line), pipe) != nullptr) {
    if (line[0] == '#') {
      // "# torch 1.13.1 ..." names the version; other notes are echoed.
      std::string s(line + 1);
      s.erase(0, s.find_first_not_of(' '));
      if (!s.empty() && s.back() == '\n') s.pop_back();
      if (s.rfind("torch ", 0) == 0)
        *version = s;
      else if (env.empty())  // the second run says the same
        std::printf("PyTorch note: %s\n", s.c_str());
      continue;
    }
    long long n = 0;
    char a[64], b[64];
    if (std::sscanf(line, "%lld %63s %63s", &n, a, b) == 3) {
      out[n].dense_ms = std::strtod(a, nullptr);
      out[n].sdpa_ms = std::strtod(b, nullptr);
    }
  }
  pclose(pipe);
  return out;
}

std::string Ms(double ms) {
  if (!std::isfinite(ms)) return "-";
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f", ms);
  return buf;
}

std::string Ratio(double num, double den) {
  if (!std::isfinite(num) || !std::isfinite(den) || den <= 0) return "-";
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1fx", num / den);
  return buf;
}

}  // namespace

int RunCompare(const char* /*argv0*/) {
  const Options& o = GetOptions();
  std::printf(
      "\nCompare (one process, same inputs; B=%lld H=%lld d=%lld, iid N(0,1) "
      "q, k, v; %d threads; median wall ms of %d warm calls, exact at N > "
      "4096: of 2):\n",
      static_cast<long long>(kBatch), static_cast<long long>(kHeads),
      static_cast<long long>(kDim), Threads(), o.repeats);
  PrintLoad();
  std::map<int64_t, double> ours_sb, ours_exact;
  for (int64_t n : o.sizes) {
    const Inputs& in = GetInputs(n);
    std::vector<float> out(static_cast<size_t>(kBatch * kHeads * n * kDimV));
    for (const char* name : {"sb_lsh", "exact"}) {
      const AttentionParams p =
          MakeParams(MethodByName(name), n, in, out.data());
      const bool big_exact = std::string(name) == "exact" && n > 4096;
      const int reps = big_exact ? 2 : o.repeats;
      if (!big_exact && TimedCall(p) < 0) return 1;  // warm-up
      std::vector<double> t;
      for (int r = 0; r < reps; ++r) {
        const double s = TimedCall(p);
        if (s < 0) return 1;
        t.push_back(s);
      }
      (std::string(name) == "exact" ? ours_exact : ours_sb)[n] =
          1e3 * Median(t);
    }
  }
  std::map<int64_t, TorchTimes> torch;
  std::string version;
  const std::string py = FindTorchPython();
  if (py.empty()) {
    std::printf(
        "PyTorch: no Python here imports torch (tried --sb_python, python3, "
        "/usr/bin/python3): its columns are empty.\n");
  } else {
    char tmpl[] = "/tmp/sb_compare_XXXXXX";
    const char* dir = mkdtemp(tmpl);
    bool ok = dir != nullptr;
    for (int64_t n : o.sizes) ok = ok && WriteRaw(dir, n, GetInputs(n));
    // Debian's torch calls a multi-threaded OpenBLAS from inside its own
    // OpenMP threads; either setting can win on a given machine, so the
    // helper runs under both and the faster time per N counts.
    if (ok) {
      torch = RunTorch(py, dir, "", &version);
      std::string v2;
      for (const auto& [n, t] :
           RunTorch(py, dir, "OPENBLAS_NUM_THREADS=1", &v2)) {
        TorchTimes& best = torch[n];
        if (std::isfinite(t.dense_ms) && !(best.dense_ms <= t.dense_ms))
          best.dense_ms = t.dense_ms;
        if (std::isfinite(t.sdpa_ms) && !(best.sdpa_ms <= t.sdpa_ms))
          best.sdpa_ms = t.sdpa_ms;
      }
    }
    if (dir != nullptr) {
      const std::string rm = std::string("rm -rf ") + dir;
      (void)std::system(rm.c_str());
    }
    std::printf("PyTorch: %s (%s)\n", version.empty() ? "?" : version.c_str(),
                py.c_str());
  }
  std::printf(
      "\n| N | ours sb_lsh | ours exact | torch dense | torch SDPA | exact / "
      "sb_lsh | torch dense / sb_lsh | torch SDPA / sb_lsh |\n");
  std::printf("|---|---|---|---|---|---|---|---|\n");
  for (int64_t n : o.sizes) {
    const TorchTimes t = torch.count(n) ? torch[n] : TorchTimes();
    std::printf("| %lld | %s | %s | %s | %s | %s | %s | %s |\n",
                static_cast<long long>(n), Ms(ours_sb[n]).c_str(),
                Ms(ours_exact[n]).c_str(), Ms(t.dense_ms).c_str(),
                Ms(t.sdpa_ms).c_str(), Ratio(ours_exact[n], ours_sb[n]).c_str(),
                Ratio(t.dense_ms, ours_sb[n]).c_str(),
                Ratio(t.sdpa_ms, ours_sb[n]).c_str());
  }
  std::printf(
      "\nThe authors' Scatterbrain (HazyResearch/fly) is not installable on "
      "this machine (no package of it; GitHub unreachable): not measured in "
      "this run.\n");
  PrintLoad();
  std::fflush(stdout);
  return 0;
}

}  // namespace bench
}  // namespace scatterbrain
