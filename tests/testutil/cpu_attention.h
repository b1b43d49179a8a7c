// tests/testutil/cpu_attention.h — the local computation that the server,
// client and CLI tests compare a remote answer with: one call to the CPU
// backend on contiguous inputs, the output returned as a vector. The tests
// had each written the same allocate / strides / CreateBackend("cpu") /
// Forward sequence.
#ifndef SCATTERBRAIN_TESTS_TESTUTIL_CPU_ATTENTION_H_
#define SCATTERBRAIN_TESTS_TESTUTIL_CPU_ATTENTION_H_

#include <vector>

#include "kernels/params.h"

namespace scatterbrain {
namespace testutil {

// The CPU backend's [batch, heads, seq_q, dim_v] output for `p`: its
// tensors (q, k, v, optional key_lengths), sizes and settings are used;
// p.out and the strides are not (contiguous strides are set, the output is
// allocated here). A backend that cannot be created or a Forward that fails
// is a test failure (EXPECT).
std::vector<float> CpuAttention(AttentionParams p);

}  // namespace testutil
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_TESTS_TESTUTIL_CPU_ATTENTION_H_
