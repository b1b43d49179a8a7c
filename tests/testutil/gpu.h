// tests/testutil/gpu.h — what the GPU tests (tests/cuda_*_test.cc) share:
// the decision to skip (no CUDA in the build, no device, or a cuda backend
// that is not implemented yet) made in one place with one message, a
// fixture holding a CUDA and a CPU backend, the relative difference the
// CPU-agreement tolerances are stated in, and guarded tensors in any wire
// dtype and memory space (pageable, pinned, device) whose guard bytes show
// an out-of-bounds write.
//
// Written against the public Backend API only, so the tests run unchanged
// once the cuda backend lands. SB_REQUIRE_CUDA=1 in the environment turns
// every skip into a failure (for a machine that must have a working GPU).
// SB_GPU_TESTS_STAND_IN=cpu runs them with a CPU backend standing in for
// CUDA, so the tests' own logic can be exercised without a GPU (what needs
// device memory or a device's limits is skipped then); it says nothing
// about the GPU.
#ifndef SCATTERBRAIN_TESTS_TESTUTIL_GPU_H_
#define SCATTERBRAIN_TESTS_TESTUTIL_GPU_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/dtype.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/tensor.h"

namespace scatterbrain {
namespace testutil {

// A CUDA backend with `options`, or why there is none. `*skip_reason` is set
// (and the status is not OK) when the tests should skip: CUDA not compiled
// in, no device, or CreateBackend("cuda") answering UNIMPLEMENTED. Any other
// failure leaves it empty: a real error.
absl::StatusOr<std::unique_ptr<Backend>> CreateCudaForTest(
    const BackendOptions& options, std::string* skip_reason);

// True when SB_REQUIRE_CUDA=1: a test that would skip fails instead.
bool RequireCuda();

// ||a - b||_F / ||b||_F over equal-length vectors (||a - b||_F when b is
// all zeros); +inf when a holds a non-finite value or the sizes differ.
double RelDiff(absl::Span<const float> a, absl::Span<const float> b);

// The end-to-end rule for methods whose discrete choices (LSH hash ties,
// k-means assignments, calibration) may flip on rounding: the GPU's error
// against fp64 may exceed the CPU's by 5 % plus 1e-4, no more.
inline double AllowedGpuError(double cpu_error) {
  return cpu_error * 1.05 + 1e-4;
}
// Float32 agreement with the CPU backend for exact, performer and local.
constexpr double kCpuAgreement = 1e-4;

// Fixture of the GPU tests: SetUpTestSuite makes one CUDA and one CPU
// backend for the suite (or records why it cannot); SetUp skips (or fails
// under SB_REQUIRE_CUDA=1) with that reason. TearDown records the largest
// RelDiff against the CPU the test noted as the test property
// "max_rel_err_vs_cpu" (gtest's JSON output carries it; scripts/gpu/report.py
// reads it).
class CudaTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite();
  static void TearDownTestSuite();
  void SetUp() override;
  void TearDown() override;

  static Backend& cuda() { return *cuda_; }
  // True under SB_GPU_TESTS_STAND_IN=cpu; DeviceSpace() is then kHost.
  static bool stand_in();
  static MemorySpace DeviceSpace() {
    return stand_in() ? MemorySpace::kHost : MemorySpace::kDevice;
  }
  static Backend& cpu() { return *cpu_; }
  // Another CUDA backend, for options other than the defaults.
  static std::unique_ptr<Backend> NewCuda(const BackendOptions& options);
  // Remembers a float32 GPU-vs-CPU relative difference for the report.
  void NoteCpuDiff(double rel) {
    if (rel > max_rel_err_vs_cpu_) max_rel_err_vs_cpu_ = rel;
  }

 private:
  static std::unique_ptr<Backend> cuda_;
  static std::unique_ptr<Backend> cpu_;
  static std::string* skip_reason_;
  double max_rel_err_vs_cpu_ = -1;
};

// Device memory (cudaMalloc); without CUDA compiled in, Allocate fails.
class DeviceMemory {
 public:
  static absl::StatusOr<DeviceMemory> Allocate(int64_t bytes);
  DeviceMemory() = default;
  DeviceMemory(DeviceMemory&& o) noexcept;
  DeviceMemory& operator=(DeviceMemory&& o) noexcept;
  ~DeviceMemory();
  void* data() const { return data_; }
  int64_t bytes() const { return bytes_; }
  // Host <-> device copies at byte `offset` (synchronous).
  absl::Status CopyFrom(const void* src, int64_t bytes, int64_t offset = 0);
  absl::Status CopyTo(void* dst, int64_t bytes, int64_t offset = 0) const;

 private:
  void* data_ = nullptr;
  int64_t bytes_ = 0;
};

// `n` elements in `dtype` in `space`, with kGuardBytes of guard on each
// side: pageable host memory (kHost), pinned memory from
// backend->AllocateHost (kPinnedHost), or device memory (kDevice).
class GuardedTensor {
 public:
  static constexpr int64_t kGuardBytes = 256;
  static constexpr unsigned char kGuardByte = 0xC5;

  static absl::StatusOr<GuardedTensor> Make(DType dtype, int64_t n,
                                            MemorySpace space,
                                            Backend* backend = nullptr);
  GuardedTensor() = default;

  // Stores `values` (n floats) encoded in the dtype; guards reset.
  absl::Status Set(absl::Span<const float> values);
  // Every element NaN (as the dtype writes it), guards reset: an element
  // the backend never writes stays NaN.
  absl::Status Poison();
  // The elements decoded to float32.
  absl::StatusOr<std::vector<float>> Read() const;
  // True when every guard byte still holds kGuardByte.
  absl::StatusOr<bool> GuardsIntact() const;

  TensorRef ref() const { return TensorRef{data(), dtype_, space_}; }
  MutableTensorRef mutable_ref() const {
    return MutableTensorRef{data(), dtype_, space_};
  }
  DType dtype() const { return dtype_; }
  MemorySpace space() const { return space_; }
  int64_t size() const { return n_; }

 private:
  void* data() const;
  int64_t bytes() const { return n_ * DTypeBytes(dtype_); }
  // The whole block (guards included) to / from host bytes.
  absl::Status Store(const std::vector<unsigned char>& block);
  absl::StatusOr<std::vector<unsigned char>> Load() const;

  DType dtype_ = DType::kFloat32;
  MemorySpace space_ = MemorySpace::kHost;
  int64_t n_ = 0;
  std::shared_ptr<std::vector<unsigned char>> host_;
  std::shared_ptr<HostBuffer> pinned_;
  std::shared_ptr<DeviceMemory> device_;
};

}  // namespace testutil
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_TESTS_TESTUTIL_GPU_H_
