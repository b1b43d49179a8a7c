// scatterbrain/server/backend_select.cc — see backend_select.h.
#include "server/backend_select.h"

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/devices.h"

namespace scatterbrain {
namespace server {
namespace {

struct Problem {
  AttentionParams params;
  std::vector<float> q, k, v;
  std::vector<int32_t> key_lengths;
};

Problem MakeProblem(Method method, bool causal, int64_t seq_q, int64_t seq_k,
                    bool lengths, uint64_t seed) {
  Problem pr;
  AttentionParams& p = pr.params;
  p.method = method;
  p.batch = 2;
  p.heads = 2;
  p.seq_q = seq_q;
  p.seq_k = seq_k;
  p.dim = 24;
  p.dim_v = 16;
  p.causal = causal;
  p.num_features = 32;
  p.bucket_size = 16;
  p.window = 12;
  p.calibration_rows = 8;
  p.seed = seed;
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  const AttentionShape s = ShapeOf(p);
  for (auto [vec, n] :
       {std::pair{&pr.q, s.q_elements()}, std::pair{&pr.k, s.k_elements()},
        std::pair{&pr.v, s.v_elements()}}) {
    vec->resize(static_cast<size_t>(n));
    for (float& x : *vec) x = g(rng);
  }
  if (lengths)
    pr.key_lengths = {static_cast<int32_t>(seq_k),
                      static_cast<int32_t>(seq_k / 2 + 1)};
  return pr;
}

absl::StatusOr<std::vector<float>> Run(Backend& backend, const Problem& pr,
                                       Method method) {
  AttentionCall call;
  call.params = pr.params;
  call.params.method = method;
  call.params.key_lengths =
      pr.key_lengths.empty() ? nullptr : pr.key_lengths.data();
  std::vector<float> out(static_cast<size_t>(ShapeOf(pr.params).out_elements()),
                         0.0f);
  call.q = TensorRef{pr.q.data(), DType::kFloat32, MemorySpace::kHost};
  call.k = TensorRef{pr.k.data(), DType::kFloat32, MemorySpace::kHost};
  call.v = TensorRef{pr.v.data(), DType::kFloat32, MemorySpace::kHost};
  call.out = MutableTensorRef{out.data(), DType::kFloat32, MemorySpace::kHost};
  backend.ForwardBatch(absl::MakeSpan(&call, 1));
  if (!call.status.ok()) return call.status;
  for (float x : out) {
    if (!std::isfinite(x)) {
      return absl::FailedPreconditionError("a non-finite output");
    }
  }
  return out;
}

double RelDiff(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (double{a[i]} - b[i]) * (double{a[i]} - b[i]);
    den += double{b[i]} * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

}  // namespace

absl::Status SelfCheck(Backend& candidate, Backend& reference) {
  struct Case {
    bool causal;
    int64_t seq_q, seq_k;
    bool lengths;
    // Clusters of every key: LSH and Scatterbrain make no discrete choice
    // that matters (the support is everything), so they must agree with the
    // CPU as closely as the continuous methods.
    bool full_support;
  };
  const Case cases[] = {{false, 67, 67, false, false},
                        {true, 53, 77, true, false},
                        {true, 53, 77, true, true}};
  const Method methods[] = {Method::kExact, Method::kPerformer, Method::kLsh,
                            Method::kLocal, Method::kScatterbrain};
  uint64_t seed = 11;
  for (const Case& c : cases) {
    for (Method m : methods) {
      const bool discrete = m == Method::kLsh || m == Method::kScatterbrain;
      if (c.full_support && !discrete) continue;
      Problem pr =
          MakeProblem(m, c.causal, c.seq_q, c.seq_k, c.lengths, seed++);
      if (c.full_support) pr.params.bucket_size = 128;
      const std::string what =
          absl::StrCat(MethodName(m), c.causal ? " causal" : "", " ", c.seq_q,
                       "x", c.seq_k, c.full_support ? " full support" : "");
      absl::StatusOr<std::vector<float>> got = Run(candidate, pr, m);
      if (!got.ok()) {
        return absl::FailedPreconditionError(
            absl::StrCat("self-check ", what, ": ", got.status().message()));
      }
      absl::StatusOr<std::vector<float>> want = Run(reference, pr, m);
      if (!want.ok()) return want.status();
      if (!discrete || c.full_support) {
        const double d = RelDiff(*got, *want);
        if (d > 1e-3) {
          return absl::FailedPreconditionError(
              absl::StrCat("self-check ", what, ": relative difference ", d,
                           " from the cpu backend"));
        }
        continue;
      }
      absl::StatusOr<std::vector<float>> exact =
          Run(reference, pr, Method::kExact);
      if (!exact.ok()) return exact.status();
      const double err = RelDiff(*got, *exact);
      const double ref_err = RelDiff(*want, *exact);
      if (err > 1.25 * ref_err + 1e-3) {
        return absl::FailedPreconditionError(absl::StrCat(
            "self-check ", what, ": error ", err,
            " against exact attention, the cpu backend's is ", ref_err));
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Backend>> SelectBackend(
    const std::string& name, const BackendOptions& options) {
  if (name == "cpu" || name == "cuda") return CreateBackend(name, options);
  if (name != "auto") {
    return absl::InvalidArgumentError(
        absl::StrCat("backend: must be auto, cpu or cuda, got '", name, "'"));
  }
  absl::StatusOr<std::unique_ptr<Backend>> cpu = CreateBackend("cpu", options);
  if (!cpu.ok() || CudaDevices().empty()) return cpu;
  absl::StatusOr<std::unique_ptr<Backend>> cuda =
      CreateBackend("cuda", options);
  absl::Status why = cuda.status();
  if (cuda.ok()) why = SelfCheck(**cuda, **cpu);
  if (why.ok()) return cuda;
  std::fprintf(stderr,
               "scatterbrain_server: a GPU is present but the cuda backend is "
               "not used (%s); using cpu\n",
               std::string(why.message()).c_str());
  return cpu;
}

}  // namespace server
}  // namespace scatterbrain
