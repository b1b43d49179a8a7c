// scatterbrain/client/cli/npy.h — reading and writing NumPy .npy files for
// the command-line tools. Reads little-endian float32 ('<f4') and float16
// ('<f2', widened exactly to float32) arrays in C order, format versions 1,
// 2 and 3; writes float32 atomically (a failed write leaves nothing behind).
// Every error message starts with the file name and says what is wrong.
#ifndef SCATTERBRAIN_CLIENT_CLI_NPY_H_
#define SCATTERBRAIN_CLIENT_CLI_NPY_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/float16.h"

namespace scatterbrain {

struct NpyArray {
  std::vector<int64_t> shape;
  std::vector<float> data;  // C order, product(shape) elements
};

// Largest header the reader accepts (NumPy itself refuses > 10000 bytes by
// default); guards against absurd allocations from a corrupt length field.
inline constexpr uint32_t kNpyMaxHeaderBytes = 65536;
// Largest element count the reader accepts (2^36 floats = 256 GiB).
inline constexpr int64_t kNpyMaxElements = int64_t{1} << 36;

// Reads `path`. `required_rank` >= 0 demands exactly that many dimensions
// (4 for attention tensors [batch, heads, seq, dim]); -1 accepts any rank.
// Errors: NOT_FOUND when the file cannot be opened, INVALID_ARGUMENT for
// every format problem.
absl::StatusOr<NpyArray> ReadNpy(const std::string& path,
                                 int required_rank = 4);

// Parses an in-memory .npy image; `name` is used in error messages.
absl::StatusOr<NpyArray> ParseNpy(absl::string_view bytes,
                                  absl::string_view name,
                                  int required_rank = 4);

// Writes a float32 '<f4' C-order array. `data` holds product(shape)
// elements. The file appears complete or not at all: the bytes go to a
// temporary file in the same directory, which is then renamed over `path`.
absl::Status WriteNpy(const std::string& path,
                      const std::vector<int64_t>& shape, const float* data);

// The bytes WriteNpy would write (header + data), for tests and pipes.
std::string EncodeNpy(const std::vector<int64_t>& shape, const float* data);

// IEEE binary16 <-> binary32: HalfToFloat / FloatToHalf from
// common/float16.h (shared with the server and the client library).

}  // namespace scatterbrain

#endif  // SCATTERBRAIN_CLIENT_CLI_NPY_H_
