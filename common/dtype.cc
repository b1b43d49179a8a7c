// scatterbrain/common/dtype.cc — see dtype.h.
#include "common/dtype.h"

#include <cstring>
#include <string>

#include "absl/strings/ascii.h"
#include "common/float16.h"

namespace scatterbrain {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "the wire format is little-endian; add byte swaps for this host");

int DTypeBytes(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return 4;
    case DType::kFloat16:
    case DType::kBFloat16:
      return 2;
  }
  return 4;
}

const char* DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return "float32";
    case DType::kFloat16:
      return "float16";
    case DType::kBFloat16:
      return "bfloat16";
  }
  return "float32";
}

bool ParseDType(absl::string_view name, DType* out) {
  const std::string s = absl::AsciiStrToLower(name);
  if (s == "float32" || s == "fp32" || s == "f32") {
    *out = DType::kFloat32;
  } else if (s == "float16" || s == "fp16" || s == "f16" || s == "half") {
    *out = DType::kFloat16;
  } else if (s == "bfloat16" || s == "bf16") {
    *out = DType::kBFloat16;
  } else {
    return false;
  }
  return true;
}

void DecodeToFloat(DType dtype, const char* src, int64_t n, float* dst) {
  switch (dtype) {
    case DType::kFloat32:
      if (n > 0) std::memcpy(dst, src, static_cast<size_t>(n) * 4);
      return;
    case DType::kFloat16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        dst[i] = HalfToFloat(h);
      }
      return;
    case DType::kBFloat16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t b;
        std::memcpy(&b, src + 2 * i, 2);
        dst[i] = BFloat16ToFloat(b);
      }
      return;
  }
}

void EncodeFromFloat(DType dtype, const float* src, int64_t n, char* dst) {
  switch (dtype) {
    case DType::kFloat32:
      if (n > 0) std::memcpy(dst, src, static_cast<size_t>(n) * 4);
      return;
    case DType::kFloat16:
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t h = FloatToHalf(src[i]);
        std::memcpy(dst + 2 * i, &h, 2);
      }
      return;
    case DType::kBFloat16:
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t b = FloatToBFloat16(src[i]);
        std::memcpy(dst + 2 * i, &b, 2);
      }
      return;
  }
}

}  // namespace scatterbrain
