// scatterbrain/kernels/params.cc — small helpers around AttentionParams.
#include "kernels/params.h"

#include <cmath>
#include <initializer_list>

namespace scatterbrain {

Strides ContiguousStrides(int64_t heads, int64_t seq, int64_t dim) {
  return Strides{heads * seq * dim, seq * dim, dim};
}

void SetContiguousStrides(AttentionParams& p) {
  p.q_strides = ContiguousStrides(p.heads, p.seq_q, p.dim);
  p.k_strides = ContiguousStrides(p.heads, p.seq_k, p.dim);
  p.v_strides = ContiguousStrides(p.heads, p.seq_k, p.dim_v);
  p.out_strides = ContiguousStrides(p.heads, p.seq_q, p.dim_v);
}

AttentionShape ShapeOf(const AttentionParams& p) {
  AttentionShape s;
  s.batch = p.batch;
  s.heads = p.heads;
  s.seq_q = p.seq_q;
  s.seq_k = p.seq_k;
  s.dim = p.dim;
  s.dim_v = p.dim_v;
  return s;
}

void SetShape(const AttentionShape& s, AttentionParams& p) {
  p.batch = s.batch;
  p.heads = s.heads;
  p.seq_q = s.seq_q;
  p.seq_k = s.seq_k;
  p.dim = s.dim;
  p.dim_v = s.dim_v;
}

float EffectiveScale(const AttentionParams& p) {
  if (p.scale != 0.0f) return p.scale;
  return p.dim > 0 ? 1.0f / std::sqrt(static_cast<float>(p.dim)) : 1.0f;
}

namespace {

// Parses `s` as the name (per `name`) of one of `all`.
template <typename T, typename NameFn>
bool ParseByName(const std::string& s, std::initializer_list<T> all,
                 NameFn name, T* out) {
  for (T c : all) {
    if (s == name(c)) {
      *out = c;
      return true;
    }
  }
  return false;
}

}  // namespace

const char* MethodName(Method m) {
  switch (m) {
    case Method::kExact:
      return "exact";
    case Method::kPerformer:
      return "performer";
    case Method::kLsh:
      return "lsh";
    case Method::kLocal:
      return "local";
    case Method::kScatterbrain:
      return "scatterbrain";
  }
  return "unknown";
}

bool ParseMethod(const std::string& s, Method* m) {
  return ParseByName(s,
                     {Method::kExact, Method::kPerformer, Method::kLsh,
                      Method::kLocal, Method::kScatterbrain},
                     MethodName, m);
}

const char* SparseName(SparseSupport s) {
  switch (s) {
    case SparseSupport::kLsh:
      return "lsh";
    case SparseSupport::kLocal:
      return "local";
    case SparseSupport::kBoth:
      return "both";
    case SparseSupport::kAuto:
      return "auto";
  }
  return "unknown";
}

bool ParseSparse(const std::string& s, SparseSupport* out) {
  return ParseByName(s,
                     {SparseSupport::kLsh, SparseSupport::kLocal,
                      SparseSupport::kBoth, SparseSupport::kAuto},
                     SparseName, out);
}

const char* EstimatorName(Estimator e) {
  return e == Estimator::kCalibrated ? "calibrated" : "unbiased";
}

bool ParseEstimator(const std::string& s, Estimator* out) {
  return ParseByName(s, {Estimator::kCalibrated, Estimator::kUnbiased},
                     EstimatorName, out);
}

const char* PrecisionName(Precision p) {
  switch (p) {
    case Precision::kFp32:
      return "fp32";
    case Precision::kTf32:
      return "tf32";
    case Precision::kBf16:
      return "bf16";
  }
  return "unknown";
}

bool ParsePrecision(const std::string& s, Precision* out) {
  return ParseByName(s, {Precision::kFp32, Precision::kTf32, Precision::kBf16},
                     PrecisionName, out);
}

const char* LshTransformName(LshTransform t) {
  return t == LshTransform::kNone ? "none" : "smyrf";
}

bool ParseLshTransform(const std::string& s, LshTransform* out) {
  return ParseByName(s, {LshTransform::kNone, LshTransform::kSmyrf},
                     LshTransformName, out);
}

const char* LshHashName(LshHash h) {
  return h == LshHash::kCrossPolytope ? "crosspolytope" : "kmeans";
}

bool ParseLshHash(const std::string& s, LshHash* out) {
  return ParseByName(s, {LshHash::kCrossPolytope, LshHash::kKMeans},
                     LshHashName, out);
}

}  // namespace scatterbrain
