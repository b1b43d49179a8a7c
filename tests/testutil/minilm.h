// tests/testutil/minilm.h — where the real attention inputs of
// ../shared/data/minilm (all-MiniLM-L6-v2's Q/K/V, see its README) are, for
// the tests that measure on them when they are present.
#ifndef SCATTERBRAIN_TESTS_TESTUTIL_MINILM_H_
#define SCATTERBRAIN_TESTS_TESTUTIL_MINILM_H_

#include <string>

namespace scatterbrain {
namespace testutil {

// The first of $SB_MINILM_DIR, <source_dir>/../shared/data/minilm and
// /work/shared/data/minilm that holds layer3_q.npy; "" when none does (the
// caller skips).
std::string FindMinilmDir(const std::string& source_dir);

}  // namespace testutil
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_TESTS_TESTUTIL_MINILM_H_
