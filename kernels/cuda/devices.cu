// scatterbrain/kernels/cuda/devices.cu — device discovery through the CUDA
// runtime. Errors (no driver, no device) are answers, never aborts.
#include <cuda_runtime.h>

#include <cstdio>
#include <string>
#include <vector>

#include "kernels/devices.h"

namespace scatterbrain {

bool CudaCompiled() { return true; }

std::vector<std::string> CudaDevices() {
  std::vector<std::string> out;
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error
    return out;
  }
  for (int i = 0; i < n; ++i) {
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) continue;
    char buf[sizeof(prop.name) + 64];
    std::snprintf(buf, sizeof(buf), "%s, sm_%d%d, %.0f GiB", prop.name,
                  prop.major, prop.minor,
                  static_cast<double>(prop.totalGlobalMem) / (1ull << 30));
    out.emplace_back(buf);
  }
  return out;
}

std::string CudaRuntimeSummary() {
  int runtime = 0;
  cudaRuntimeGetVersion(&runtime);
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  char buf[256];
  if (err != cudaSuccess) {
    cudaGetLastError();
    std::snprintf(buf, sizeof(buf), "CUDA %d.%d runtime compiled in, no device: %s",
                  runtime / 1000, (runtime % 1000) / 10, cudaGetErrorString(err));
  } else {
    std::snprintf(buf, sizeof(buf), "CUDA %d.%d runtime compiled in, %d device(s)",
                  runtime / 1000, (runtime % 1000) / 10, n);
  }
  return buf;
}

}  // namespace scatterbrain
