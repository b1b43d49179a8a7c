// scatterbrain/kernels/cpu/cpu_backend.h — the CPU backend: multi-threaded
// over (batch, head) slices, GEMMs through BLAS (single-threaded inside).
#ifndef SCATTERBRAIN_KERNELS_CPU_CPU_BACKEND_H_
#define SCATTERBRAIN_KERNELS_CPU_CPU_BACKEND_H_

#include <memory>

#include "kernels/backend.h"

namespace scatterbrain {

std::unique_ptr<Backend> MakeCpuBackend(const BackendOptions& options = {});

}  // namespace scatterbrain

#endif  // SCATTERBRAIN_KERNELS_CPU_CPU_BACKEND_H_
