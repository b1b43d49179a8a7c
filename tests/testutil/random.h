// tests/testutil/random.h — seeded random float tensors for the tests that
// compare the server's or the CLI's output with a local computation on the
// same inputs (both sides see the same vector, so the standard library's
// distribution algorithms need not be portable here; for inputs that must
// be the same on every platform use testutil/reference.h's families).
#ifndef SCATTERBRAIN_TESTS_TESTUTIL_RANDOM_H_
#define SCATTERBRAIN_TESTS_TESTUTIL_RANDOM_H_

#include <cstdint>
#include <vector>

namespace scatterbrain {
namespace testutil {

// `n` draws of N(0, 1): std::normal_distribution<float> on std::mt19937
// seeded with `seed`. Drawing 3n values and splitting them gives the same
// values as one distribution drawn for three n-sized tensors in turn.
std::vector<float> RandomNormal(int64_t n, uint32_t seed);

// `n` draws of U(lo, hi): std::uniform_real_distribution<float> on
// std::mt19937_64 seeded with `seed`.
std::vector<float> RandomUniform(int64_t n, uint64_t seed, float lo, float hi);

}  // namespace testutil
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_TESTS_TESTUTIL_RANDOM_H_
