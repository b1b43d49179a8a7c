// scatterbrain/kernels/devices.h — what accelerators this build and machine
// have. Safe to call without a GPU or driver (reports none, never aborts).
#ifndef SCATTERBRAIN_KERNELS_DEVICES_H_
#define SCATTERBRAIN_KERNELS_DEVICES_H_

#include <string>
#include <vector>

namespace scatterbrain {

// True when the library was compiled with the CUDA toolkit.
bool CudaCompiled();
// Names of the CUDA devices present ("NVIDIA H100 80GB HBM3, sm_90, 79 GiB");
// empty without a driver or device.
std::vector<std::string> CudaDevices();
// One line: "CUDA 13.0 runtime, 1 device(s)" or why there is none.
std::string CudaRuntimeSummary();

}  // namespace scatterbrain

#endif  // SCATTERBRAIN_KERNELS_DEVICES_H_
