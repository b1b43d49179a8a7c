// scatterbrain/tests/testutil/reference.h — the fp64 exact attention
// reference every backend is measured against, the relative-error metric,
// deterministic synthetic input families, and TestTensors: owned q/k/v/out
// buffers in several layouts with sentinel guards that catch out-of-bounds
// writes.
//
// Determinism: inputs come from std::mt19937_64 (its output sequence is fixed
// by the standard) and a hand-written Box–Muller transform (no
// std::normal_distribution, whose algorithm varies between standard
// libraries), so a (family, seed, shape) triple gives the same inputs on
// every platform, up to the last-ulp accuracy of the libm log/sin/cos.
// Generation runs in parallel over (batch, head) slices, each with its own
// seeded stream, so the thread count does not change the values.
// Values do not depend on the layout: the same seed in kContiguous, kPadded
// and kBNHD gives the same logical tensors.
//
// Note for test files: this namespace is scatterbrain::testing. Inside
// `namespace scatterbrain { ... }`, write gtest's names as ::testing::Test.
#ifndef SCATTERBRAIN_TESTS_TESTUTIL_REFERENCE_H_
#define SCATTERBRAIN_TESTS_TESTUTIL_REFERENCE_H_

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "kernels/params.h"

namespace scatterbrain {
namespace testing {

// ---------------------------------------------------------------------------
// Exact fp64 reference.
// ---------------------------------------------------------------------------

// Exact softmax attention in double precision, honouring p's strides, causal
// mask (bottom-right aligned: query i sees keys j <= i + (seq_k - seq_q)),
// key_lengths (keys j >= key_lengths[b] excluded; values are clamped to
// [0, seq_k]) and scale (EffectiveScale(p), i.e. the float the kernels use).
// Rows that see no key produce zeros. Ignores p.method and p.out.
// Returns a contiguous [batch, heads, seq_q, dim_v] tensor.
//
// Cost: batch*heads*seq_q*seq_k*(dim+dim_v) fp64 multiply-adds, spread over
// all hardware threads (env SB_TEST_THREADS overrides the count). For
// B=1, H=8, N=16384, d=dv=64 that is 2.7e11 operations plus 2.1e9 exp():
// measured ~80 s on the 2-core dev machine (so ~10 s on 16 cores). For large
// N prefer ExactAttentionDoubleRows on a sample of rows (256 rows of that
// shape: ~1.2 s on 2 cores). Generating the inputs of that shape takes
// ~0.3 s (TestTensors::Make, 2 cores).
std::vector<double> ExactAttentionDouble(const AttentionParams& p);

// The same restricted to the query rows in `rows` (each in [0, seq_q)), for
// every (batch, head). Returns contiguous [batch, heads, rows.size(), dim_v].
std::vector<double> ExactAttentionDoubleRows(const AttentionParams& p,
                                             const std::vector<int64_t>& rows);

// Exact softmax attention restricted to the local window of p.window, the
// reference for Method::kLocal: query i sees keys j with
// |i + (seq_k - seq_q) - j| <= p.window / 2 (integer division), intersected
// with the causal mask and key_lengths. Same layout and cost caveats as
// ExactAttentionDouble (but cost ~ seq_q * window).
std::vector<double> LocalAttentionDouble(const AttentionParams& p);

// ||O_hat - O||_F / ||O||_F over the whole [batch, heads, seq_q, dim_v]
// tensor, O_hat read from `out` with `strides` (shape from p), O = ref
// (contiguous, as returned by ExactAttentionDouble). If ||O|| == 0 the
// absolute error ||O_hat||_F is returned. NaN/Inf in out propagate (the
// result is then not finite). Returns NaN if ref has the wrong size.
double RelativeError(const float* out, const Strides& strides,
                     const AttentionParams& p, const std::vector<double>& ref);
// Convenience: reads p.out with p.out_strides.
double RelativeError(const AttentionParams& p, const std::vector<double>& ref);
// Same metric restricted to `rows` (ref from ExactAttentionDoubleRows with
// the same rows).
double RelativeErrorRows(const float* out, const Strides& strides,
                         const AttentionParams& p,
                         const std::vector<int64_t>& rows,
                         const std::vector<double>& ref);
// max |O_hat - O| elementwise (NaN if any element of out is NaN).
double MaxAbsError(const float* out, const Strides& strides,
                   const AttentionParams& p, const std::vector<double>& ref);

// ---------------------------------------------------------------------------
// Deterministic random numbers.
// ---------------------------------------------------------------------------

// std::mt19937_64 + Box–Muller; the same sequence on every platform.
class Rng {
 public:
  explicit Rng(uint64_t seed);
  uint64_t NextU64();
  // Uniform in [0, 1) with 53 random bits.
  double Uniform();
  // Standard normal.
  double Normal();
  // Uniform integer in [0, n) (n > 0; modulo bias < n / 2^64).
  uint64_t UniformInt(uint64_t n);

 private:
  std::mt19937_64 engine_;
  bool has_spare_ = false;
  double spare_ = 0.0;
};

// SplitMix64-style mixing of a seed with stream indices.
uint64_t MixSeed(uint64_t seed, uint64_t a, uint64_t b = 0, uint64_t c = 0);

// ---------------------------------------------------------------------------
// Input families. All draw V iid N(0, 1) except kRandomV. Generated per
// (batch, head) slice; tokens of q and k are aligned bottom-right like the
// causal mask when seq_q != seq_k.
// ---------------------------------------------------------------------------
enum Family {
  // q, k iid N(0, s) per component, s = logit_std: with tau = 1/sqrt(d) the
  // logit tau * q.k has standard deviation logit_std.
  kGaussian,
  // C = max(4, seq_k / 64) centres, random unit directions times radius
  // 3 * d^0.25 (so within-cluster logits are ~9 above between-cluster ones
  // at tau = 1/sqrt(d)); every q and k token picks a centre uniformly (q and
  // k independently) and adds N(0, 0.5^2) noise per component.
  kClustered,
  // x_t = 0.98 x_{t-1} + sqrt(1 - 0.98^2) e_t (per slice, d-dimensional,
  // unit stationary variance); q = 1.5 x + 0.3 noise, k = 1.5 x + 0.3 noise
  // with independent noise: neighbouring tokens are alike, local windows
  // capture most of the mass.
  kSmooth,
  // q = k = 0: uniform attention, output = mean of the visible v.
  kZeros,
  // q, k random directions with norm 1e3: logits ~1e5, hard argmax
  // attention; tests overflow handling.
  kHugeNorm,
  // q, k as kGaussian(logit_std); V has per-(slice, column) non-zero means
  // mu_c ~ N(0, 2^2) and unequal scales s_c = exp(0.5 N(0,1)):
  // V_jc = mu_c + s_c * N(0, 1). Tests that normalisation preserves the
  // mean and that error does not hide in a zero-mean V.
  kRandomV,
};
const char* FamilyName(Family f);  // "gaussian", "clustered", ...
bool ParseFamily(const std::string& s, Family* f);
std::vector<Family> AllFamilies();

// Buffer layouts (all have the last dimension contiguous).
enum Layout {
  // [B, H, N, D] packed.
  kContiguous,
  // [B, H, N, D] with gaps everywhere: row stride D + 3, head stride
  // N * (D + 3) + 5, batch stride H * head_stride + 7. Input gaps hold a
  // NaN (reading them poisons the result); output gaps hold the sentinel.
  kPadded,
  // [B, N, H, D] packed (heads interleaved, as a fused QKV projection gives):
  // batch N*H*D, head D, row H*D.
  kBNHD,
};
const char* LayoutName(Layout l);
std::vector<Layout> AllLayouts();

// Strides for a [B, H, N, D] tensor in `layout`, and the number of floats a
// buffer holding it needs (guards not included).
Strides LayoutStrides(Layout layout, int64_t heads, int64_t seq, int64_t dim);
int64_t LayoutSpan(Layout layout, int64_t batch, int64_t heads, int64_t seq,
                   int64_t dim);

// Fills logical [B, H, N, D] tensors q, k, v (written through the given
// strides) with `family`. Exposed for tools; TestTensors::Fill uses it.
void GenerateInputs(Family family, uint64_t seed, double logit_std,
                    const AttentionParams& shape, float* q, const Strides& qs,
                    float* k, const Strides& ks, float* v, const Strides& vs);

// ---------------------------------------------------------------------------
// TestTensors: owned buffers + an AttentionParams pointing at them.
// ---------------------------------------------------------------------------
class TestTensors {
 public:
  // Bit pattern of every guard / gap element of out: a quiet NaN with a
  // payload no arithmetic produces.
  static constexpr uint32_t kSentinelBits = 0x7FC5E47Du;
  // Bit pattern of valid out elements before a backend writes them (a
  // different quiet NaN): an element never written stays NaN.
  static constexpr uint32_t kUnwrittenBits = 0x7FCBAD00u;
  // Guard elements before the first and after the last element of every
  // buffer.
  static constexpr int64_t kGuard = 67;

  TestTensors() = default;
  // Allocates buffers for the given shape and layout; inputs zero, out
  // unwritten (see kUnwrittenBits), guards and gaps sentinel. params has
  // pointers, shapes and strides set; other fields keep their defaults.
  TestTensors(int64_t batch, int64_t heads, int64_t seq_q, int64_t seq_k,
              int64_t dim, int64_t dim_v, Layout layout = kContiguous);
  TestTensors(TestTensors&& other) noexcept;
  TestTensors& operator=(TestTensors&& other) noexcept;
  TestTensors(const TestTensors&) = delete;
  TestTensors& operator=(const TestTensors&) = delete;

  // Allocates and fills (family, seed) in one go.
  static TestTensors Make(int64_t batch, int64_t heads, int64_t seq_q,
                          int64_t seq_k, int64_t dim, int64_t dim_v,
                          Family family, uint64_t seed,
                          Layout layout = kContiguous, double logit_std = 1.0);

  // The params to pass to a backend (set method etc. on it freely; the
  // pointer, shape and stride fields must stay as they are).
  AttentionParams params;

  // Refills q, k, v from a family (layout-independent values).
  void Fill(Family family, uint64_t seed, double logit_std = 1.0);
  // Sets every valid element of q / k / v to `value`.
  void FillQ(float value);
  void FillK(float value);
  void FillV(float value);
  // Sets every valid out element back to the unwritten pattern (and all
  // guards / gaps to the sentinel), e.g. between two backend calls.
  void ResetOut();

  // Sets per-batch key lengths (size batch) and points params at them;
  // an empty vector clears them.
  void SetKeyLengths(std::vector<int32_t> lengths);

  // Element access by logical index (b, h, i, c).
  float& Q(int64_t b, int64_t h, int64_t i, int64_t c);
  float& K(int64_t b, int64_t h, int64_t j, int64_t c);
  float& V(int64_t b, int64_t h, int64_t j, int64_t c);
  float& Out(int64_t b, int64_t h, int64_t i, int64_t c);
  float Q(int64_t b, int64_t h, int64_t i, int64_t c) const;
  float K(int64_t b, int64_t h, int64_t j, int64_t c) const;
  float V(int64_t b, int64_t h, int64_t j, int64_t c) const;
  float Out(int64_t b, int64_t h, int64_t i, int64_t c) const;

  // True iff every guard element (before / after every buffer) and every
  // stride gap (kPadded) still holds its initial bit pattern — in out and in
  // the inputs (a backend must not write its inputs' gaps either).
  bool SentinelsIntact() const;
  // Human-readable list (at most `max_items`) of damaged guard positions,
  // for test failure messages; empty when intact.
  std::string SentinelReport(int max_items = 8) const;
  // Number of valid out elements still holding kUnwrittenBits.
  int64_t UnwrittenOutputs() const;
  // True iff every valid out element is finite.
  bool OutputFinite() const;
  // out copied to a contiguous [B, H, Nq, dv] float vector.
  std::vector<float> OutContiguous() const;

  // The exact fp64 reference for these inputs (ExactAttentionDouble(params)).
  std::vector<double> Reference() const;
  // RelativeError of the current out against `ref`.
  double RelativeError(const std::vector<double>& ref) const;

  Layout layout() const { return layout_; }

 private:
  void Rebind();
  void InitBuffers();

  Layout layout_ = kContiguous;
  std::vector<float> q_, k_, v_, out_;
  std::vector<int32_t> key_lengths_;
};

// The factory of the brief: TestTensors::Make under a free name.
TestTensors Make(int64_t batch, int64_t heads, int64_t seq_q, int64_t seq_k,
                 int64_t dim, int64_t dim_v, Family family, uint64_t seed,
                 Layout layout = kContiguous, double logit_std = 1.0);

}  // namespace testing
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_TESTS_TESTUTIL_REFERENCE_H_
