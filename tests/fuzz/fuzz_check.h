// tests/fuzz/fuzz_check.h — what the fuzz targets share: the libFuzzer entry
// point's declaration and FUZZ_CHECK, which reports a broken invariant and
// aborts (libFuzzer then saves the input as a crash; the replay test fails).
// Only the targets use it: aborting is right in a test harness, never in
// the server.
#ifndef SCATTERBRAIN_TESTS_FUZZ_FUZZ_CHECK_H_
#define SCATTERBRAIN_TESTS_FUZZ_FUZZ_CHECK_H_

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/status/status.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

#define FUZZ_CHECK(cond, what)                                             \
  do {                                                                     \
    if (!(cond)) {                                                         \
      std::fprintf(stderr, "%s:%d: FUZZ_CHECK(%s) failed: %s\n", __FILE__, \
                   __LINE__, #cond, std::string(what).c_str());            \
      std::abort();                                                        \
    }                                                                      \
  } while (0)

namespace scatterbrain {
namespace fuzz {

// The error of a refused input: one of the codes the server answers bad
// input with, and a message that says something (clients show it).
inline void CheckClientError(const absl::Status& st, const char* where) {
  FUZZ_CHECK(!st.ok(), where);
  FUZZ_CHECK(st.code() == absl::StatusCode::kInvalidArgument ||
                 st.code() == absl::StatusCode::kResourceExhausted,
             std::string(where) + ": " + st.ToString());
  FUZZ_CHECK(!st.message().empty(), where);
}

}  // namespace fuzz
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_TESTS_FUZZ_FUZZ_CHECK_H_
