// scatterbrain/kernels/cuda/convert.cu — see convert.h. Grid-stride loops
// (tensors may exceed 2^31 elements).
#include "common/float16_bits.h"
#include "kernels/cuda/convert.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/math.h"

namespace scatterbrain {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t{1} << 20;

unsigned Blocks(int64_t n) {
  int64_t b = (n + kThreads - 1) / kThreads;
  if (b < 1) b = 1;
  if (b > kMaxBlocks) b = kMaxBlocks;
  return static_cast<unsigned>(b);
}

__device__ inline int64_t First() {
  return blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
}
__device__ inline int64_t Step() {
  return static_cast<int64_t>(gridDim.x) * blockDim.x;
}

// dst[i] = f(src[i]) for i in [0, n).
template <typename In, typename Out, typename F>
__global__ void MapKernel(const In* src, int64_t n, Out* dst, F f) {
  for (int64_t i = First(); i < n; i += Step()) dst[i] = f(src[i]);
}

struct HalfToFloatOp {
  __device__ float operator()(uint16_t x) const {
    return float16_bits::HalfToFloat(x);
  }
};
struct BFloat16ToFloatOp {
  __device__ float operator()(uint16_t x) const {
    return float16_bits::BFloat16ToFloat(x);
  }
};
struct FloatToHalfOp {
  __device__ uint16_t operator()(float x) const {
    return float16_bits::FloatToHalf(x);
  }
};
struct FloatToBFloat16Op {
  __device__ uint16_t operator()(float x) const {
    return float16_bits::FloatToBFloat16(x);
  }
};

template <typename In, typename Out, typename F>
absl::Status Map(const void* src, int64_t n, void* dst, F f,
                 cudaStream_t stream) {
  MapKernel<<<Blocks(n), kThreads, 0, stream>>>(static_cast<const In*>(src), n,
                                                static_cast<Out*>(dst), f);
  SB_CUDA_RETURN_IF_LAUNCH_FAILED("MapKernel");
  return absl::OkStatus();
}

absl::Status CopyFloats(const void* src, int64_t n, void* dst,
                        cudaStream_t stream) {
  SB_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dst, src, n * sizeof(float),
                                          cudaMemcpyDeviceToDevice, stream));
  return absl::OkStatus();
}

__global__ void NonFiniteKernel(const float* x, int64_t n,
                                unsigned long long* first_bad) {
  for (int64_t i = First(); i < n; i += Step()) {
    if (!devmath::IsFinite(x[i])) {
      // The thread's indices only grow: its first hit is its smallest.
      atomicMin(first_bad, static_cast<unsigned long long>(i));
      return;
    }
  }
}

}  // namespace

absl::Status ConvertToFloat(const void* src, DType dtype, int64_t n, float* dst,
                            cudaStream_t stream) {
  if (n <= 0) return absl::OkStatus();
  switch (dtype) {
    case DType::kFloat32:
      return CopyFloats(src, n, dst, stream);
    case DType::kFloat16:
      return Map<uint16_t, float>(src, n, dst, HalfToFloatOp(), stream);
    case DType::kBFloat16:
      return Map<uint16_t, float>(src, n, dst, BFloat16ToFloatOp(), stream);
  }
  return absl::InvalidArgumentError("cuda convert: unknown dtype");
}

absl::Status ConvertFromFloat(const float* src, DType dtype, int64_t n,
                              void* dst, cudaStream_t stream) {
  if (n <= 0) return absl::OkStatus();
  switch (dtype) {
    case DType::kFloat32:
      return CopyFloats(src, n, dst, stream);
    case DType::kFloat16:
      return Map<float, uint16_t>(src, n, dst, FloatToHalfOp(), stream);
    case DType::kBFloat16:
      return Map<float, uint16_t>(src, n, dst, FloatToBFloat16Op(), stream);
  }
  return absl::InvalidArgumentError("cuda convert: unknown dtype");
}

absl::Status FindNonFinite(const float* x, int64_t n,
                           unsigned long long* first_bad, cudaStream_t stream) {
  if (n <= 0) return absl::OkStatus();
  NonFiniteKernel<<<Blocks(n), kThreads, 0, stream>>>(x, n, first_bad);
  SB_CUDA_RETURN_IF_LAUNCH_FAILED("NonFiniteKernel");
  return absl::OkStatus();
}

}  // namespace cuda
}  // namespace scatterbrain
