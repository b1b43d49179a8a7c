// scatterbrain/kernels/cpu/cpu_backend.cc
#include "kernels/cpu/cpu_backend.h"

#include <malloc.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <exception>
#include <mutex>
#include <new>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cancel.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/plan.h"
#include "kernels/cpu/profile.h"
#include "kernels/random_draws.h"
#include "kernels/validate.h"

namespace scatterbrain {
namespace {

using cpu::Slice;

// Exact attention is split further than per slice so that B * H = 1 still
// uses every core.
constexpr int64_t kExactRowsPerTask = 256;

// Resident memory of this process: what "device memory in use" means for
// the CPU backend.
int64_t ResidentBytes() {
  FILE* f = std::fopen("/proc/self/statm", "r");
  if (f == nullptr) return 0;
  long long size = 0, resident = 0;
  const int n = std::fscanf(f, "%lld %lld", &size, &resident);
  std::fclose(f);
  if (n != 2) return 0;
  return static_cast<int64_t>(resident) * sysconf(_SC_PAGESIZE);
}

// Query-key pairs exact attention evaluates on `p` (padding and the causal
// mask excluded).
int64_t VisiblePairs(const AttentionParams& p) {
  int64_t n = 0;
  for (int64_t b = 0; b < p.batch; ++b) {
    const int64_t nk = p.key_lengths ? p.key_lengths[b] : p.seq_k;
    const int64_t offset = p.seq_k - p.seq_q;
    for (int64_t i = 0; i < p.seq_q; ++i)
      n += p.causal ? std::clamp<int64_t>(i + offset + 1, 0, nk) : nk;
  }
  return n * p.heads;
}

class CpuBackend : public Backend {
 public:
  explicit CpuBackend(const BackendOptions& options)
      : threads_(cpu::ResolveThreads(options.threads)) {
    cpu::PinBlasToOneThread();
    // Every call allocates tens of MB of scratch per thread; with glibc's
    // defaults those come from fresh mmaps and each call pays the page
    // faults and zeroing again (a sixth of the CPU time at N = 16384). Keep
    // freed scratch in the heap for reuse instead: resident memory then
    // stays at the peak of the largest request, which a server wants anyway.
    mallopt(M_MMAP_THRESHOLD, 512 << 20);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
    // Workers, BLAS buffers and heap ready before the first call (a cold
    // CLI call paid ~40% over a warm one for them).
    cpu::WarmUp(threads_, options.warm_bytes_per_thread);
  }
  std::string name() const override { return "cpu"; }
  absl::Status Supports(const AttentionParams&) const override {
    return absl::OkStatus();
  }
  int64_t WorkspaceBytes(const AttentionParams& p) const override;
  MemoryStats GetMemoryStats() const override {
    MemoryStats m;
    m.device = "cpu";
    m.used_bytes = ResidentBytes();
    return m;
  }

 protected:
  absl::StatusOr<AttentionStats> ForwardImpl(const AttentionParams& p) override;

 private:
  const int threads_;
};

int64_t CpuBackend::WorkspaceBytes(const AttentionParams& p) const {
  // An upper estimate of the scratch the slices running at once hold, term
  // by term after what ops.h's operations allocate (kernels_test checks it
  // bounds the reported peak). Exact: one block of scores per thread.
  const int64_t slices = std::max<int64_t>(p.batch * p.heads, 1);
  const int64_t at_once = std::min<int64_t>(slices, threads_);
  if (p.method == Method::kExact) {
    return at_once * kExactRowsPerTask * p.seq_k * 4;
  }
  const int64_t nq = p.seq_q, nk = p.seq_k, d = p.dim, dv = p.dim_v;
  const int64_t rows = nq + nk;
  const bool features =
      p.method == Method::kPerformer || p.method == Method::kScatterbrain;
  // An error target's ladder may climb to b = num_features + max(bucket,
  // window), with b / 2 features (plan.cc).
  const bool target = p.method == Method::kScatterbrain && p.target_error > 0;
  const int64_t m =
      !features ? 0
      : target
          ? std::max<int64_t>(p.num_features, std::max(p.bucket_size, p.window))
          : p.num_features;
  const int64_t bucket = std::max<int64_t>(p.bucket_size, 1);
  const int64_t chunks = nk / bucket + 2;
  int64_t floats = 0;
  if (features) {
    floats += rows * (m + 1);                        // phi(q), phi(k), scales
    floats += nq * (dv + 1);                         // low-rank sums
    floats += chunks * m * (dv + 1) + m * (dv + 1);  // prefix / chunk sums
  }
  if (p.method != Method::kPerformer) {
    floats += nq * (3 * dv + 6);  // support accumulators (exact, low-rank)
    // One LSH round's keys, orders, chunk ids and hash projections, the
    // k-means sample and centroids, a tile's gathered rows, scores and
    // features; local windows use a tile of the same size.
    const int64_t tile = std::max<int64_t>(bucket, p.window + 1);
    floats += std::max(p.num_hashes, 1) * rows * 4 + rows * 8;
    floats += 2 * rows * d + (chunks + 1) * bucket * d;
    floats += 2 * tile * (d + dv + m) + 2 * tile * tile + tile * dv;
  }
  if (p.method == Method::kScatterbrain) {
    // Calibration: a double prefix of v, the exact rows, the candidates.
    floats +=
        2 * (nk + 1) * dv + std::max(p.calibration_rows, 0) * (nk + 4 * dv);
  }
  if (cpu::PlansPerSlice(p)) {
    // The calibration rows' weights, the held-out rows, and a second set of
    // LSH rounds while the support choice compares candidates.
    floats += std::max(p.calibration_rows, 0) * nk +
              cpu::kValidationRows * (2 * dv + 2) + nk +
              std::max(p.num_hashes, 1) * rows * 6;
  }
  return at_once * floats * 4;
}

absl::StatusOr<AttentionStats> CpuBackend::ForwardImpl(
    const AttentionParams& p) {
  // A call dropped before it starts costs nothing.
  SB_RETURN_IF_ERROR(CancelStatus(p.cancel));
  AttentionStats stats;
  stats.dense_score_bytes = p.batch * p.heads * p.seq_q * p.seq_k *
                            static_cast<int64_t>(sizeof(float));
  cpu::WorkspaceMeter meter;
  const int threads = threads_;
  const int64_t slices = p.batch * p.heads;

  std::mutex mu;
  absl::Status first_error;
  cpu::SliceStats total;
  auto guarded = [&](auto&& body) {
    try {
      body();
    } catch (const std::bad_alloc&) {
      std::lock_guard<std::mutex> l(mu);
      if (first_error.ok())
        first_error = absl::ResourceExhaustedError(
            "cpu backend: out of memory for this request");
    } catch (const std::exception& e) {
      std::lock_guard<std::mutex> l(mu);
      if (first_error.ok())
        first_error =
            absl::InternalError(absl::StrCat("cpu backend: ", e.what()));
    }
  };

  try {
    if (p.method == Method::kExact) {
      const int64_t per_slice =
          (p.seq_q + kExactRowsPerTask - 1) / kExactRowsPerTask;
      cpu::ParallelFor(
          slices * per_slice, threads,
          [&](int64_t t) {
            guarded([&] {
              const int64_t sl = t / per_slice, part = t % per_slice;
              const Slice s = cpu::MakeSlice(p, sl / p.heads, sl % p.heads);
              const int64_t r0 = part * kExactRowsPerTask;
              cpu::ExactRows(s, r0, std::min(s.nq, r0 + kExactRowsPerTask),
                             &meter);
            });
          },
          p.cancel);
    } else {
      const bool features =
          p.method == Method::kPerformer || p.method == Method::kScatterbrain;
      const int r = p.num_features / 2;
      cpu::SupportOptions so = cpu::BaseSupport(p);
      so.lsh = p.method == Method::kLsh;
      so.local = p.method == Method::kLocal;
      // Per-slice choices land in their own entries (no lock needed).
      const bool plans = cpu::PlansPerSlice(p);
      std::vector<cpu::SlicePlan> slice_plans(plans ? slices : 0);
      cpu::ParallelFor(
          slices, threads,
          [&](int64_t sl) {
            guarded([&] {
              cpu::PhaseScope slice_scope(cpu::Phase::kOther);
              const Slice s = cpu::MakeSlice(p, sl / p.heads, sl % p.heads);
              cpu::SliceStats ss;
              // Each slice fetches its head's projections: a first call's
              // draws (cached by seed afterwards) run on every worker.
              DrawCache::Draw proj;
              if (features) {
                cpu::PhaseScope setup_scope(cpu::Phase::kSetup);
                proj = DrawCache::Global().FeatureProjections(p.seed, s.h, r,
                                                              p.dim);
              }
              // After every operation: a stopped call abandons the slice (an
              // operation that saw the stop may have returned half done).
              if (p.method == Method::kScatterbrain) {
                cpu::SlicePlan local_plan;
                cpu::RunScatterbrain(s, p, *proj, &meter, &ss,
                                     plans ? &slice_plans[sl] : &local_plan);
                if (s.stopped()) return;
              } else if (p.method == Method::kPerformer) {
                cpu::Features f;
                cpu::LowRank lr;
                cpu::ComputeFeatures(s, *proj, r, &meter, &f);
                if (s.stopped()) return;
                cpu::ComputeLowRank(s, f, &meter, &lr);
                if (s.stopped()) return;
                cpu::WritePerformer(s, lr, &ss);
                ss.evaluations += (s.nq + s.nk) * int64_t{p.num_features};
              } else {
                cpu::SparseAcc acc;
                cpu::AccumulateSupport(s, so, nullptr, nullptr, &meter, &acc);
                if (s.stopped()) return;
                cpu::WriteSparseOnly(s, acc, &ss);
                for (int64_t i = 0; i < s.nq; ++i)
                  ss.evaluations += acc.count[i];
              }
              std::lock_guard<std::mutex> l(mu);
              total.guards += ss.guards;
              total.fallbacks += ss.fallbacks;
              total.evaluations += ss.evaluations;
            });
          },
          p.cancel);
      if (plans) {
        double num = 0, den = 0;
        bool bounded = p.target_error > 0.0;
        for (const cpu::SlicePlan& sp : slice_plans) {
          stats.head_plans.push_back(sp.plan);
          if (sp.plan.error_bound < 0) bounded = false;
          num += sp.plan.error_bound * sp.plan.error_bound * sp.out_norm2;
          den += sp.out_norm2;
        }
        if (bounded) stats.error_bound = den > 0 ? std::sqrt(num / den) : 0.0;
      }
    }
  } catch (const std::exception& e) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cpu backend: could not start workers: ", e.what()));
  }
  if (!first_error.ok()) return first_error;
  // Skipped or abandoned work leaves the output unspecified.
  SB_RETURN_IF_ERROR(CancelStatus(p.cancel));
  stats.workspace_bytes = meter.peak();
  stats.denominator_guards = total.guards;
  stats.fallbacks = total.fallbacks;
  stats.exact_score_evaluations = VisiblePairs(p);
  stats.score_evaluations = p.method == Method::kExact
                                ? stats.exact_score_evaluations
                                : total.evaluations;
  return stats;
}

}  // namespace

std::unique_ptr<Backend> MakeCpuBackend(const BackendOptions& options) {
  return std::make_unique<CpuBackend>(options);
}

}  // namespace scatterbrain
