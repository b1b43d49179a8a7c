// scatterbrain/kernels/devices_nocuda.cc — device discovery in a build
// without the CUDA toolkit.
#ifndef SB_HAVE_CUDA
#include "kernels/devices.h"

namespace scatterbrain {
bool CudaCompiled() { return false; }
std::vector<std::string> CudaDevices() { return {}; }
std::string CudaRuntimeSummary() { return "built without CUDA"; }
}  // namespace scatterbrain
#endif  // SB_HAVE_CUDA
