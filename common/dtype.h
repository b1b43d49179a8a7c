// scatterbrain/common/dtype.h — the element types tensors travel in, and the
// one codec between them and float32.
//
// The server's tensor assembler and output writer, the C++ client and the
// CLI all encode and decode through these functions, so that a wire dtype
// has one name, one size and one conversion everywhere. The proto's enum
// maps onto this one in proto/convert/wire.h; nothing here knows protobuf.
#ifndef SCATTERBRAIN_COMMON_DTYPE_H_
#define SCATTERBRAIN_COMMON_DTYPE_H_

#include <cstdint>

#include "absl/strings/string_view.h"

namespace scatterbrain {

enum class DType { kFloat32, kFloat16, kBFloat16 };

// Bytes per element: 4, 2, 2.
int DTypeBytes(DType dtype);
// "float32", "float16", "bfloat16".
const char* DTypeName(DType dtype);
// The names above and the usual aliases ("fp32", "f32", "fp16", "f16",
// "half", "bf16"), any case. False for anything else.
bool ParseDType(absl::string_view name, DType* out);

// `n` little-endian `dtype` elements at `src` -> float32 at `dst`. Exact.
void DecodeToFloat(DType dtype, const char* src, int64_t n, float* dst);
// `n` floats -> little-endian `dtype` bytes at `dst` (n * DTypeBytes(dtype)
// bytes). Round to nearest even; overflow becomes inf, NaN stays NaN.
void EncodeFromFloat(DType dtype, const float* src, int64_t n, char* dst);

}  // namespace scatterbrain

#endif  // SCATTERBRAIN_COMMON_DTYPE_H_
