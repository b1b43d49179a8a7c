// tests/testutil/cpu_attention.cc — see cpu_attention.h.
#include "tests/testutil/cpu_attention.h"

#include <memory>

#include "gtest/gtest.h"
#include "kernels/backend.h"

namespace scatterbrain {
namespace testutil {

std::vector<float> CpuAttention(AttentionParams p) {
  std::vector<float> out(static_cast<size_t>(ShapeOf(p).out_elements()));
  p.out = out.data();
  SetContiguousStrides(p);
  absl::StatusOr<std::unique_ptr<Backend>> backend = CreateBackend("cpu");
  EXPECT_TRUE(backend.ok()) << backend.status();
  if (!backend.ok()) return out;
  absl::StatusOr<AttentionStats> st = (*backend)->Forward(p);
  EXPECT_TRUE(st.ok()) << st.status();
  return out;
}

}  // namespace testutil
}  // namespace scatterbrain
