// scatterbrain/tests/testutil/minilm.h — the real attention inputs in
// ../shared/data/minilm (all-MiniLM-L6-v2's Q/K/V per layer, float16 .npy
// [windows, heads, 512, 32]; see that folder's README), for accuracy tests
// that must hold on what users send, not only on synthetic families.
#ifndef SCATTERBRAIN_TESTS_TESTUTIL_MINILM_H_
#define SCATTERBRAIN_TESTS_TESTUTIL_MINILM_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace scatterbrain {
namespace testing {

// The data folder: $SB_MINILM_DIR, else the checkout's sibling
// shared/data/minilm, else /work/shared/data/minilm; "" when none holds
// layer0_q.npy (tests then skip).
std::string MiniLmDir();

// One layer's tensors as float32, each [batch, heads, n, d] contiguous.
struct MiniLmLayer {
  int64_t batch = 0, heads = 0, n = 0, d = 0;
  std::vector<float> q, k, v;
};
absl::StatusOr<MiniLmLayer> LoadMiniLmLayer(const std::string& dir, int layer);

}  // namespace testing
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_TESTS_TESTUTIL_MINILM_H_
