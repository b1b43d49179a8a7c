// scatterbrain/kernels/backend.cc — the Backend's public calls (host-side
// validation, then the implementation), the default batch path, and the
// backend registry.
#include "kernels/backend.h"

#include <cmath>
#include <cstring>
#include <new>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cancel.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/devices.h"
#include "kernels/validate.h"

#ifdef SB_HAVE_CUDA
#include "kernels/cuda/cuda_backend.h"
#endif

namespace scatterbrain {
namespace {

bool IsHost(MemorySpace s) { return s != MemorySpace::kDevice; }

// `n` elements of a host tensor in any dtype: the index of the first
// non-finite one, or -1.
int64_t FirstNonFinite(const TensorRef& t, int64_t n) {
  if (t.dtype == DType::kFloat32) {
    const float* x = static_cast<const float*>(t.data);
    for (int64_t i = 0; i < n; ++i) {
      if (!std::isfinite(x[i])) return i;
    }
    return -1;
  }
  constexpr int64_t kBlock = 4096;
  float buf[kBlock];
  const char* bytes = static_cast<const char*>(t.data);
  for (int64_t i = 0; i < n; i += kBlock) {
    const int64_t m = std::min(kBlock, n - i);
    DecodeToFloat(t.dtype, bytes + i * DTypeBytes(t.dtype), m, buf);
    for (int64_t j = 0; j < m; ++j) {
      if (!std::isfinite(buf[j])) return i + j;
    }
  }
  return -1;
}

// A host tensor as float32: the caller's bytes when they already are, else
// a converted copy in `storage`.
const float* HostFloats(const TensorRef& t, int64_t n,
                        std::vector<float>* storage) {
  if (t.dtype == DType::kFloat32) return static_cast<const float*>(t.data);
  storage->resize(static_cast<size_t>(n));
  DecodeToFloat(t.dtype, static_cast<const char*>(t.data), n, storage->data());
  return storage->data();
}

// Validates every call (each gets its status) and returns the valid ones.
// A call already stopped (cancel.h) is not scanned or run.
std::vector<AttentionCall*> ValidCalls(absl::Span<AttentionCall> calls) {
  std::vector<AttentionCall*> valid;
  for (AttentionCall& c : calls) {
    c.status = CancelStatus(c.params.cancel);
    if (c.status.ok()) c.status = ValidateCall(c, /*check_values=*/true);
    c.stats = AttentionStats();
    if (c.status.ok()) valid.push_back(&c);
  }
  return valid;
}

// Fails each computed call whose float32 host output holds a non-finite
// value (CheckOutputFinite). Outputs in other dtypes were encoded from
// float32, where overflow to inf is the encoding's documented answer;
// device outputs are the device's business.
void CheckOutputs(absl::Span<AttentionCall* const> calls) {
  for (AttentionCall* c : calls) {
    if (!c->status.ok() || c->out.dtype != DType::kFloat32 ||
        !IsHost(c->out.space)) {
      continue;
    }
    AttentionParams p = c->params;
    p.out = static_cast<float*>(c->out.data);
    SetContiguousStrides(p);
    c->status = CheckOutputFinite(p);
  }
}

}  // namespace

const char* MemorySpaceName(MemorySpace space) {
  switch (space) {
    case MemorySpace::kHost:
      return "host";
    case MemorySpace::kPinnedHost:
      return "pinned host";
    case MemorySpace::kDevice:
      return "device";
  }
  return "unknown";
}

absl::Status ValidateCall(const AttentionCall& call, bool check_values) {
  const AttentionParams& p = call.params;
  SB_RETURN_IF_ERROR(ValidateShapeAndSettings(p));
  const AttentionShape shape = ShapeOf(p);
  const struct {
    const char* name;
    TensorRef ref;
    int64_t n;
  } tensors[] = {
      {"q", call.q, shape.q_elements()},
      {"k", call.k, shape.k_elements()},
      {"v", call.v, shape.v_elements()},
      {"out", TensorRef{call.out.data, call.out.dtype, call.out.space},
       shape.out_elements()}};
  for (const auto& t : tensors) {
    if (t.ref.data == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(t.name, ": is null"));
    }
  }
  if (!check_values) return absl::OkStatus();
  const int64_t seq[] = {p.seq_q, p.seq_k, p.seq_k};
  const int64_t cols[] = {p.dim, p.dim, p.dim_v};
  for (int i = 0; i < 3; ++i) {
    const auto& t = tensors[i];
    if (!IsHost(t.ref.space)) continue;  // device values: the backend's scan
    const int64_t bad = FirstNonFinite(t.ref, t.n);
    if (bad >= 0) {
      // Named as ValidateParams names it: [batch, head, row, column].
      const int64_t c = bad % cols[i], row = bad / cols[i];
      const int64_t r = row % seq[i], bh = row / seq[i];
      return absl::InvalidArgumentError(
          absl::StrCat(t.name, ": non-finite value at [", bh / p.heads, ", ",
                       bh % p.heads, ", ", r, ", ", c, "]"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<AttentionStats> Backend::Forward(const AttentionParams& p) {
  SB_RETURN_IF_ERROR(CancelStatus(p.cancel));
  const absl::Status st = ValidateParams(p, /*check_values=*/true);
  if (!st.ok()) return st;
  absl::StatusOr<AttentionStats> stats = ForwardImpl(p);
  if (!stats.ok()) return stats;
  SB_RETURN_IF_ERROR(CheckOutputFinite(p));
  return stats;
}

void Backend::ForwardBatch(absl::Span<AttentionCall> calls) {
  std::vector<AttentionCall*> valid = ValidCalls(calls);
  if (!valid.empty()) ForwardBatchImpl(absl::MakeSpan(valid));
  CheckOutputs(valid);
}

void Backend::ForwardBatchAsync(absl::Span<AttentionCall> calls,
                                std::function<void()> done) {
  std::vector<AttentionCall*> valid = ValidCalls(calls);
  if (valid.empty()) {
    done();
    return;
  }
  // The implementation keeps its own copy of the pointers; this one is for
  // the output check when the batch completes.
  ForwardBatchAsyncImpl(absl::MakeSpan(valid), [valid, done = std::move(done)] {
    CheckOutputs(valid);
    done();
  });
}

absl::StatusOr<HostBuffer> Backend::AllocateHost(int64_t bytes) {
  char* p =
      new (std::nothrow) char[static_cast<size_t>(std::max<int64_t>(bytes, 1))];
  if (p == nullptr) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot allocate ", bytes, " bytes of host memory"));
  }
  return HostBuffer(p, bytes, MemorySpace::kHost,
                    [](void* d) { delete[] static_cast<char*>(d); });
}

void Backend::ForwardBatchImpl(absl::Span<AttentionCall*> calls) {
  for (AttentionCall* c : calls) {
    if (!IsHost(c->q.space) || !IsHost(c->k.space) || !IsHost(c->v.space) ||
        !IsHost(c->out.space)) {
      c->status = absl::InvalidArgumentError(absl::StrCat(
          "backend ", name(), " reads and writes host memory only"));
      continue;
    }
    AttentionParams p = c->params;
    const AttentionShape shape = ShapeOf(p);
    std::vector<float> q, k, v, out;
    p.q = HostFloats(c->q, shape.q_elements(), &q);
    p.k = HostFloats(c->k, shape.k_elements(), &k);
    p.v = HostFloats(c->v, shape.v_elements(), &v);
    if (c->out.dtype == DType::kFloat32) {
      p.out = static_cast<float*>(c->out.data);
    } else {
      out.resize(static_cast<size_t>(shape.out_elements()));
      p.out = out.data();
    }
    SetContiguousStrides(p);
    absl::StatusOr<AttentionStats> stats = ForwardImpl(p);
    if (!stats.ok()) {
      c->status = stats.status();
      continue;
    }
    c->stats = *stats;
    if (!out.empty()) {
      EncodeFromFloat(c->out.dtype, out.data(), shape.out_elements(),
                      static_cast<char*>(c->out.data));
    }
  }
}

void Backend::ForwardBatchAsyncImpl(absl::Span<AttentionCall*> calls,
                                    std::function<void()> done) {
  ForwardBatchImpl(calls);
  done();
}

absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(
    const std::string& name, const BackendOptions& options) {
  if (name == "cpu") return MakeCpuBackend(options);
  if (name == "cuda") {
#ifdef SB_HAVE_CUDA
    return MakeCudaBackend(options);
#else
    return absl::UnimplementedError(
        absl::StrCat("backend: 'cuda' is not compiled into this build (",
                     CudaRuntimeSummary(), "); use --backend=cpu"));
#endif
  }
  return absl::InvalidArgumentError(
      absl::StrCat("backend: unknown backend '", name,
                   "' (known: ", CudaCompiled() ? "cpu, cuda" : "cpu", ")"));
}

std::vector<std::string> CompiledBackends() {
  if (CudaCompiled()) return {"cpu", "cuda"};
  return {"cpu"};
}

}  // namespace scatterbrain
