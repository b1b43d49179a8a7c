// tests/fuzz/npy_fuzzer.cc — the CLI's .npy reader (client/cli/npy) on
// arbitrary bytes.
//
// Invariants: ParseNpy never crashes and refuses with INVALID_ARGUMENT and
// a message naming the file; ReadNpy, which reads a file in pieces and
// checks its size before allocating, agrees with ParseNpy on the same bytes
// (same code and message, or the same array); what parses round-trips
// through EncodeNpy bit for bit.
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "client/cli/npy.h"
#include "tests/fuzz/fuzz_check.h"

namespace scatterbrain {
namespace fuzz {
namespace {

bool SameArray(const NpyArray& a, const NpyArray& b) {
  return a.shape == b.shape && a.data.size() == b.data.size() &&
         (a.data.empty() || std::memcmp(a.data.data(), b.data.data(),
                                        a.data.size() * sizeof(float)) == 0);
}

// ReadNpy on the same bytes, through an in-memory file (no disk writes per
// input); returns false when no such file can be made here.
bool ReadThroughFile(absl::string_view bytes, std::string* path,
                     absl::StatusOr<NpyArray>* out) {
  static const int fd = memfd_create("npy_fuzzer", 0);
  if (fd < 0) return false;
  if (ftruncate(fd, 0) != 0 || pwrite(fd, bytes.data(), bytes.size(), 0) !=
                                   static_cast<ssize_t>(bytes.size())) {
    return false;
  }
  *path = absl::StrCat("/proc/self/fd/", fd);
  *out = ReadNpy(*path, /*required_rank=*/-1);
  return true;
}

}  // namespace
}  // namespace fuzz
}  // namespace scatterbrain

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace scatterbrain;  // NOLINT: a fuzz entry point
  const absl::string_view bytes(reinterpret_cast<const char*>(data), size);

  std::string path;
  absl::StatusOr<NpyArray> read = absl::UnknownError("not read");
  const bool have_file = fuzz::ReadThroughFile(bytes, &path, &read);
  const std::string name = have_file ? path : "fuzz.npy";
  const absl::StatusOr<NpyArray> parsed = ParseNpy(bytes, name, -1);
  if (have_file) {
    FUZZ_CHECK(read.status() == parsed.status(),
               "ReadNpy " + read.status().ToString() + " vs ParseNpy " +
                   parsed.status().ToString());
    if (parsed.ok()) {
      FUZZ_CHECK(fuzz::SameArray(*read, *parsed), "ReadNpy != ParseNpy");
    }
  }
  // The rank check is one more refusal, never a different parse.
  const absl::StatusOr<NpyArray> rank4 = ParseNpy(bytes, name, 4);
  if (!parsed.ok()) {
    FUZZ_CHECK(parsed.status().code() == absl::StatusCode::kInvalidArgument,
               parsed.status().ToString());
    FUZZ_CHECK(absl::StartsWith(parsed.status().message(), name + ": "),
               "message does not name the file: " + parsed.status().ToString());
    FUZZ_CHECK(!rank4.ok(), "rank 4 parses what any rank refuses");
    return 0;
  }
  FUZZ_CHECK(rank4.ok() == (parsed->shape.size() == 4), "rank check");

  int64_t elements = 1;
  for (int64_t d : parsed->shape) {
    FUZZ_CHECK(d >= 0, "negative dimension");
    elements *= d;
  }
  FUZZ_CHECK(elements == static_cast<int64_t>(parsed->data.size()),
             "element count");
  const std::string encoded = EncodeNpy(parsed->shape, parsed->data.data());
  const absl::StatusOr<NpyArray> again = ParseNpy(encoded, "encoded", -1);
  FUZZ_CHECK(again.ok(), again.status().ToString());
  FUZZ_CHECK(fuzz::SameArray(*again, *parsed), "round trip");
  return 0;
}
