// scatterbrain/kernels/cuda/math.h — the per-element and per-row math of the
// CUDA kernels, as __host__ __device__ functions: the kernels call them on
// the device and tests/device_math_test.cc calls the very same code on the
// CPU (there is no GPU in CI), against the CPU backend and fp64.
//
// What lives here: which keys a query sees (causal bottom-right, key
// lengths, local windows), the online-softmax update, the feature map's
// log-space scales (kernels/cpu/lowrank.cc's conventions, bit for bit where
// the CPU rounds to float), the performer's guarded ratio (WritePerformer),
// the causal chunk layout of the low-rank prefix sums and the request lookup
// of a slice. (The float16 / bfloat16 conversions are common/float16_bits.h,
// shared with the host codec.)
//
// Plain C++ when not compiled by nvcc (SB_HD is then `inline`).
#ifndef SCATTERBRAIN_KERNELS_CUDA_MATH_H_
#define SCATTERBRAIN_KERNELS_CUDA_MATH_H_

#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/float16_bits.h"

#if defined(__CUDACC__)
#define SB_HD __host__ __device__ __forceinline__
#else
#define SB_HD inline
#endif

namespace scatterbrain {
namespace cuda {
namespace devmath {

// ---------------------------------------------------------------------------
// Bits and special values.
// ---------------------------------------------------------------------------

SB_HD uint32_t FloatToBits(float f) { return float16_bits::ToBits(f); }
SB_HD float BitsToFloat(uint32_t u) { return float16_bits::FromBits(u); }

SB_HD float Infinity() { return BitsToFloat(0x7f800000u); }
SB_HD float NegInfinity() { return BitsToFloat(0xff800000u); }

// Neither inf nor NaN (the exponent bits are not all ones).
SB_HD bool IsFinite(float x) {
  return (FloatToBits(x) & 0x7f800000u) != 0x7f800000u;
}

SB_HD bool IsFiniteDouble(double x) {
  uint64_t u;
#if defined(__CUDA_ARCH__)
  u = static_cast<uint64_t>(__double_as_longlong(x));
#else
  std::memcpy(&u, &x, sizeof(u));
#endif
  return (u & 0x7ff0000000000000ull) != 0x7ff0000000000000ull;
}

SB_HD int64_t MinI(int64_t a, int64_t b) { return a < b ? a : b; }
SB_HD int64_t MaxI(int64_t a, int64_t b) { return a > b ? a : b; }
SB_HD int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
// Division rounding towards -infinity (b > 0), for negative offsets.
SB_HD int64_t FloorDiv(int64_t a, int64_t b) {
  const int64_t q = a / b;
  return (a % b != 0 && a < 0) ? q - 1 : q;
}

// ---------------------------------------------------------------------------
// Which keys a query row sees (kernels/cpu/cpu_common.h Slice::KeyLimit and
// sparse.cc's window). offset = seq_k - seq_q (bottom-right alignment);
// nk = the valid keys of the sequence (key_lengths[b] or seq_k).
// ---------------------------------------------------------------------------

// Keys [0, KeyLimit) are visible to query i.
SB_HD int64_t KeyLimit(int64_t i, int64_t offset, int64_t nk, bool causal) {
  if (!causal) return nk;
  const int64_t lim = i + offset + 1;
  return lim < 0 ? 0 : (lim > nk ? nk : lim);
}

struct KeyRange {
  int64_t lo = 0;
  int64_t hi = 0;  // exclusive; hi == lo means empty
};

// Whether query i sees key j: j in [0, KeyLimit) and, with a window
// (half >= 0), |i + offset - j| <= half.
SB_HD bool KeyVisible(int64_t i, int64_t j, int64_t offset, int64_t nk,
                      bool causal, int64_t half) {
  if (j < 0 || j >= KeyLimit(i, offset, nk, causal)) return false;
  if (half < 0) return true;
  const int64_t pos = i + offset;
  return j >= pos - half && j <= pos + half;
}

// The keys any of the query rows [i0, i1) may see (i0 < i1): a superset of
// each row's visible keys, for the tile loops (exact: [0, KeyLimit(i1 - 1));
// local: the band around the rows, clipped); 0 <= lo <= hi <= nk.
SB_HD KeyRange TileKeys(int64_t i0, int64_t i1, int64_t offset, int64_t nk,
                        bool causal, int64_t half) {
  KeyRange r;
  r.lo = 0;
  r.hi = KeyLimit(i1 - 1, offset, nk, causal);
  if (half >= 0) {
    r.lo = MaxI(0, i0 + offset - half);
    r.hi = MinI(r.hi, i1 - 1 + offset + half + 1);
  }
  // Empty ranges still keep 0 <= lo <= hi <= nk.
  if (r.hi < 0) r.hi = 0;
  if (r.lo > r.hi) r.lo = r.hi;
  return r;
}

// ---------------------------------------------------------------------------
// Online softmax (FlashAttention): per row a running max and a running sum
// of exp(logit - max); accumulators made under an old max are rescaled.
// Masked logits are -inf and weigh 0; a row that has seen nothing has max
// -inf and sum 0, and never produces NaN.
// ---------------------------------------------------------------------------

struct SoftmaxState {
  float max;
  float sum;
};

SB_HD SoftmaxState SoftmaxStart() { return SoftmaxState{NegInfinity(), 0.0f}; }

// exp(x - m): the weight of logit x under the running max m; 0 for a masked
// logit (-inf), which covers m = -inf (then every logit so far was masked).
SB_HD float SoftmaxWeight(float x, float m) {
  return x == NegInfinity() ? 0.0f : ::expf(x - m);
}

// exp(old_max - new_max), the factor for what was accumulated under
// old_max; 0 when old_max is -inf (nothing was accumulated).
SB_HD float SoftmaxRescale(float old_max, float new_max) {
  return old_max == NegInfinity() ? 0.0f : ::expf(old_max - new_max);
}

// Starts folding a tile whose largest logit is tile_max (-inf when all are
// masked): returns the rescale factor for the row's accumulators and sets
// s->max to the new max (the weights of the tile are then
// SoftmaxWeight(x, s->max)). Finish with SoftmaxAddTile.
SB_HD float SoftmaxBeginTile(SoftmaxState* s, float tile_max) {
  const float m = s->max > tile_max ? s->max : tile_max;
  const float alpha = SoftmaxRescale(s->max, m);
  s->max = m;
  s->sum *= alpha;
  return alpha;
}
SB_HD void SoftmaxAddTile(SoftmaxState* s, float tile_weight_sum) {
  s->sum += tile_weight_sum;
}

// Merges b into a (two partial rows over disjoint keys). The returned
// factors scale a's and b's accumulators to the merged max.
struct MergeFactors {
  float a;
  float b;
};
SB_HD MergeFactors SoftmaxMerge(SoftmaxState* a, SoftmaxState b) {
  const float m = a->max > b.max ? a->max : b.max;
  MergeFactors f{SoftmaxRescale(a->max, m), SoftmaxRescale(b.max, m)};
  a->sum = a->sum * f.a + b.sum * f.b;
  a->max = m;
  return f;
}

// 1 / sum, or 0 when the row saw no key (its output is zeros).
SB_HD float SoftmaxInverse(float sum) { return sum > 0.0f ? 1.0f / sum : 0.0f; }

// ---------------------------------------------------------------------------
// Positive random features in log space (kernels/cpu/lowrank.cc). With
// p_l = sqrt(tau) w_l . x, the stored features are phi_bar_l = exp(p_l +
// shift), phi_bar_{r+l} = exp(-p_l + shift):
//  - query row i: shift = -pmax_i (pmax = max_l |p_l|, from 0), log-scale
//    qscale_i = pmax_i - tau |q_i|^2 / 2 - log(m);
//  - key row j: shift = base_j - kscale, base_j = -tau |k_j|^2 / 2, one
//    log-scale per slice kscale = max_j (pmax_j + base_j) over valid keys
//    (0 when there is none). Padding keys' features are 0.
// |x|^2 is accumulated in double, as on the CPU.
// ---------------------------------------------------------------------------

SB_HD float FeatureLogNorm(int m) { return -::logf(static_cast<float>(m)); }

SB_HD float QueryLogScale(float pmax, double sq_norm, float tau, int m) {
  return pmax - static_cast<float>(0.5 * static_cast<double>(tau) * sq_norm) +
         FeatureLogNorm(m);
}

SB_HD float KeyBase(double sq_norm, float tau) {
  return -static_cast<float>(0.5 * static_cast<double>(tau) * sq_norm);
}

SB_HD float FeatureValue(float p, float shift) { return ::expf(p + shift); }

// ---------------------------------------------------------------------------
// The performer's output element: num / den in double (WritePerformer).
// False when the row must be guarded: den not positive or not finite, or a
// ratio that is not finite in double or in float.
// ---------------------------------------------------------------------------

SB_HD bool GuardedRatio(float num, float den, float* out) {
  if (!(den > 0.0f) || !IsFinite(den)) {
    *out = 0.0f;
    return false;
  }
  const double x = static_cast<double>(num) / static_cast<double>(den);
  const float xf = static_cast<float>(x);
  *out = xf;
  return IsFiniteDouble(x) && IsFinite(xf);
}

// ---------------------------------------------------------------------------
// Causal low-rank sums (lowrank.cu): the keys of a slice are cut into chunks
// of width W aligned with the query blocks of W rows, so that query block t
// sees whole chunks [0, PrefixChunk(t)] plus, row by row, fewer than W keys
// of the next chunk. Chunk 0 = [0, rho), chunk k >= 1 = [rho + (k-1)W,
// rho + kW), clipped to [0, seq_k); rho = KeyLimit(0) mod W before clipping.
// Features of padding keys are 0, so seq_k stands in for key_lengths here.
// ---------------------------------------------------------------------------

// The chunk width (= query block rows) of lowrank.cu's causal scan.
constexpr int64_t kLowRankChunk = 64;

struct ChunkLayout {
  int64_t width = 1;
  int64_t rho = 0;
  int64_t count = 1;  // chunks of the slice (chunk 0 may be empty)
  int64_t shift = 0;  // query block t ends its prefix at chunk t + shift
};

SB_HD ChunkLayout MakeChunkLayout(int64_t seq_q, int64_t seq_k, int64_t w) {
  ChunkLayout c;
  const int64_t base = seq_k - seq_q + 1;  // KeyLimit(0), unclipped
  c.width = w;
  c.rho = ((base % w) + w) % w;
  c.shift = FloorDiv(base, w);
  c.count = 1 + CeilDiv(MaxI(0, seq_k - c.rho), w);
  return c;
}

SB_HD KeyRange ChunkKeys(const ChunkLayout& c, int64_t k, int64_t seq_k) {
  KeyRange r;
  r.lo = k == 0 ? 0 : MinI(seq_k, MaxI(0, c.rho + (k - 1) * c.width));
  r.hi = MinI(seq_k, MaxI(0, c.rho + k * c.width));
  return r;
}

// The last chunk whose keys every row of query block t sees (all of chunks
// [0, k]), or -1 when the block's first row sees no key.
SB_HD int64_t PrefixChunk(const ChunkLayout& c, int64_t t) {
  const int64_t k = t + c.shift;
  return k < 0 ? -1 : MinI(k, c.count - 1);
}

// Where chunk k of a slice lives in the batch's chunk array: slices never
// overlap and every index is below ChunkSlots(...). first_key_row is the
// slice's first global key row (DeviceBatch::k_row_offsets).
SB_HD int64_t ChunkSlot(int64_t slice, int64_t first_key_row, int64_t k,
                        int64_t w) {
  return 2 * slice + first_key_row / w + k;
}
SB_HD int64_t ChunkSlots(int64_t total_slices, int64_t total_k_rows,
                         int64_t w) {
  return 2 * total_slices + total_k_rows / w + 1;
}

// ---------------------------------------------------------------------------
// Batch layout.
// ---------------------------------------------------------------------------

// The request that owns slice s: the largest i with offsets[i] <= s, for
// ascending offsets[0..n] with offsets[0] = 0 <= s < offsets[n].
SB_HD int FindRequest(const int64_t* offsets, int n, int64_t s) {
  int lo = 0, hi = n - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (offsets[mid] <= s) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

}  // namespace devmath
}  // namespace cuda
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_KERNELS_CUDA_MATH_H_
