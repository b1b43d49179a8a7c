// server/backend_select: the self-check that stands between "a GPU is
// present" and "the server computes on it" accepts a backend that agrees
// with the CPU and refuses one that is off for any single method; explicit
// names and unknown names behave as before.
#include "server/backend_select.h"

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"

namespace scatterbrain {
namespace server {
namespace {

using ::testing::HasSubstr;

// The CPU backend, wrong for one method by a relative `error`.
class SkewedBackend : public Backend {
 public:
  SkewedBackend(Method method, float error)
      : cpu_(*CreateBackend("cpu")), method_(method), error_(error) {}
  std::string name() const override { return "skewed"; }
  absl::Status Supports(const AttentionParams&) const override {
    return absl::OkStatus();
  }
  int64_t WorkspaceBytes(const AttentionParams&) const override { return 0; }
  MemoryStats GetMemoryStats() const override { return {}; }

 protected:
  absl::StatusOr<AttentionStats> ForwardImpl(
      const AttentionParams& p) override {
    absl::StatusOr<AttentionStats> st = cpu_->Forward(p);
    if (st.ok() && p.method == method_) {
      const int64_t n = ShapeOf(p).out_elements();
      for (int64_t i = 0; i < n; ++i) p.out[i] *= 1.0f + error_;
    }
    return st;
  }

 private:
  std::unique_ptr<Backend> cpu_;
  const Method method_;
  const float error_;
};

TEST(BackendSelectTest, AgreeingBackendPasses) {
  auto a = CreateBackend("cpu");
  auto b = CreateBackend("cpu");
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_TRUE(SelfCheck(**a, **b).ok());
  SkewedBackend tiny(Method::kExact, 1e-6f);  // rounding-sized: accepted
  EXPECT_TRUE(SelfCheck(tiny, **b).ok());
}

TEST(BackendSelectTest, AnyMethodOffIsRefusedNamingIt) {
  auto cpu = CreateBackend("cpu");
  ASSERT_TRUE(cpu.ok());
  for (Method m : {Method::kExact, Method::kPerformer, Method::kLocal,
                   Method::kLsh, Method::kScatterbrain}) {
    SkewedBackend skewed(m, 0.2f);
    const absl::Status st = SelfCheck(skewed, **cpu);
    EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition)
        << MethodName(m);
    EXPECT_THAT(st.message(), HasSubstr(MethodName(m)));
  }
}

TEST(BackendSelectTest, NamesResolve) {
  auto cpu = SelectBackend("cpu", {});
  ASSERT_TRUE(cpu.ok());
  EXPECT_EQ((*cpu)->name(), "cpu");
  // No device here: auto is the CPU.
  auto automatic = SelectBackend("auto", {});
  ASSERT_TRUE(automatic.ok());
  EXPECT_EQ((*automatic)->name(), "cpu");
  EXPECT_EQ(SelectBackend("tpu", {}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace server
}  // namespace scatterbrain
