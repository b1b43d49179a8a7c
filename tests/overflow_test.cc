// Finite inputs whose magnitudes overflow float32 inside a computation
// (found by tests/fuzz/request_fuzzer): every public Backend call refuses
// them (INVALID_ARGUMENT naming out) instead of answering NaN, and the
// vector exp maps NaN to NaN without an undefined conversion (UBSan).
#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/cpu/vmath.h"
#include "tests/testutil/reference.h"
#include "tests/testutil/status_matchers.h"

namespace scatterbrain {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;
using testutil::StatusIs;

constexpr Method kAllMethods[] = {Method::kExact, Method::kPerformer,
                                  Method::kLsh, Method::kLocal,
                                  Method::kScatterbrain};

// q and k of magnitude 1e20: every score |q.k| / sqrt(d) is ~1e40, past
// float32's 3.4e38, so exact softmax rows become inf - inf = NaN.
testing::TestTensors HugeScores() {
  testing::TestTensors t =
      testing::Make(1, 2, 16, 16, 8, 8, testing::kGaussian, 5);
  for (int64_t h = 0; h < 2; ++h)
    for (int64_t i = 0; i < 16; ++i)
      for (int64_t c = 0; c < 8; ++c) {
        t.Q(0, h, i, c) *= 1e20f;
        t.K(0, h, i, c) *= 1e20f;
      }
  t.params.num_features = 8;
  t.params.bucket_size = 4;
  t.params.window = 4;
  return t;
}

std::unique_ptr<Backend> Cpu() {
  absl::StatusOr<std::unique_ptr<Backend>> b = CreateBackend("cpu");
  EXPECT_TRUE(b.ok()) << b.status();
  return std::move(*b);
}

TEST(OverflowTest, ForwardRefusesWhatItCannotComputeAndNeverAnswersNan) {
  std::unique_ptr<Backend> be = Cpu();
  testing::TestTensors t = HugeScores();
  for (Method m : kAllMethods) {
    t.params.method = m;
    t.ResetOut();
    const absl::StatusOr<AttentionStats> st = be->Forward(t.params);
    if (st.ok()) {
      EXPECT_TRUE(t.OutputFinite()) << MethodName(m);
    } else {
      EXPECT_THAT(st.status(),
                  StatusIs(absl::StatusCode::kInvalidArgument,
                           StartsWith("out: non-finite value at [")))
          << MethodName(m);
    }
  }
  // Exact attention overflows (it used to answer OK with NaN everywhere).
  t.params.method = Method::kExact;
  EXPECT_THAT(be->Forward(t.params).status(),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("overflow float32")));
}

TEST(OverflowTest, TheBatchCallsTheServerMakesFailTheCallAlone) {
  std::unique_ptr<Backend> be = Cpu();
  testing::TestTensors huge = HugeScores();
  testing::TestTensors fine =
      testing::Make(1, 2, 16, 16, 8, 8, testing::kGaussian, 6);
  huge.params.method = fine.params.method = Method::kExact;
  std::vector<float> out_huge(2 * 16 * 8), out_fine(2 * 16 * 8);
  auto call = [](const testing::TestTensors& t, std::vector<float>& out) {
    AttentionCall c;
    c.params = t.params;
    // The tensors are contiguous (TestTensors' default layout).
    c.q = TensorRef{t.params.q};
    c.k = TensorRef{t.params.k};
    c.v = TensorRef{t.params.v};
    c.out = MutableTensorRef{out.data()};
    return c;
  };
  std::vector<AttentionCall> calls = {call(huge, out_huge),
                                      call(fine, out_fine)};
  be->ForwardBatch(absl::MakeSpan(calls));
  EXPECT_THAT(calls[0].status, StatusIs(absl::StatusCode::kInvalidArgument,
                                        StartsWith("out: non-finite")));
  EXPECT_TRUE(calls[1].status.ok()) << calls[1].status;

  calls = {call(huge, out_huge), call(fine, out_fine)};
  bool done = false;
  be->ForwardBatchAsync(absl::MakeSpan(calls), [&done] { done = true; });
  ASSERT_TRUE(done);  // the CPU backend completes on the calling thread
  EXPECT_THAT(calls[0].status, StatusIs(absl::StatusCode::kInvalidArgument,
                                        StartsWith("out: non-finite")));
  EXPECT_TRUE(calls[1].status.ok()) << calls[1].status;
}

TEST(OverflowTest, VectorExpMapsNanToNanAndKeepsItsRange) {
  constexpr float kNan = std::numeric_limits<float>::quiet_NaN();
  constexpr float kInf = std::numeric_limits<float>::infinity();
  // Nine values: the vectorised body and the scalar tail both see a NaN.
  std::vector<float> x = {kNan,    0.0f, -kInf, kInf, 100.0f,
                          -100.0f, 1.0f, 2.0f,  kNan};
  cpu::ExpInPlace(x.data(), static_cast<int64_t>(x.size()));
  EXPECT_TRUE(std::isnan(x[0]));
  EXPECT_FLOAT_EQ(x[1], 1.0f);
  EXPECT_EQ(x[2], 0.0f);
  EXPECT_EQ(x[3], kInf);
  EXPECT_EQ(x[4], kInf);
  EXPECT_EQ(x[5], 0.0f);
  EXPECT_NEAR(x[6], std::exp(1.0f), 1e-6f);
  EXPECT_NEAR(x[7], std::exp(2.0f), 1e-6f);
  EXPECT_TRUE(std::isnan(x[8]));
}

}  // namespace
}  // namespace scatterbrain
