// scatterbrain/kernels/cuda/convert.h — element-wise device passes of the
// backend: the wire dtypes (float16, bfloat16) to float32 and back, so that
// only the wire's bytes cross the bus, and the scan of device-resident
// inputs for non-finite values (host inputs are scanned by ValidateCall).
// The conversions are common/float16_bits.h, as on the host.
#ifndef SCATTERBRAIN_KERNELS_CUDA_CONVERT_H_
#define SCATTERBRAIN_KERNELS_CUDA_CONVERT_H_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "common/dtype.h"

namespace scatterbrain {
namespace cuda {

// n elements of `dtype` at src -> float32 at dst (device pointers). For
// float32 this is a device copy.
absl::Status ConvertToFloat(const void* src, DType dtype, int64_t n, float* dst,
                            cudaStream_t stream);
// n float32 at src -> `dtype` at dst (device pointers).
absl::Status ConvertFromFloat(const float* src, DType dtype, int64_t n,
                              void* dst, cudaStream_t stream);
// Lowers *first_bad (device; the caller sets it to ~0ull first) to the
// index of the first non-finite value of x[0, n), if there is one.
absl::Status FindNonFinite(const float* x, int64_t n,
                           unsigned long long* first_bad, cudaStream_t stream);

}  // namespace cuda
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_KERNELS_CUDA_CONVERT_H_
