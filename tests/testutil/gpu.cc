// tests/testutil/gpu.cc — see gpu.h.
#include "tests/testutil/gpu.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/devices.h"

#ifdef SB_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace scatterbrain {
namespace testutil {

absl::StatusOr<std::unique_ptr<Backend>> CreateCudaForTest(
    const BackendOptions& options, std::string* skip_reason) {
  skip_reason->clear();
  if (!CudaCompiled()) {
    *skip_reason =
        "no GPU: CUDA is not compiled into this build (no nvcc, or "
        "SB_ENABLE_CUDA=OFF)";
    return absl::FailedPreconditionError(*skip_reason);
  }
  if (CudaDevices().empty()) {
    *skip_reason = absl::StrCat("no GPU: ", CudaRuntimeSummary());
    return absl::FailedPreconditionError(*skip_reason);
  }
  absl::StatusOr<std::unique_ptr<Backend>> b = CreateBackend("cuda", options);
  if (!b.ok() && b.status().code() == absl::StatusCode::kUnimplemented) {
    *skip_reason = absl::StrCat("cuda backend not implemented in this build: ",
                                b.status().message());
  }
  return b;
}

bool CudaTest::stand_in() {
  const char* v = std::getenv("SB_GPU_TESTS_STAND_IN");
  return v != nullptr && std::strcmp(v, "cpu") == 0;
}

bool RequireCuda() {
  const char* v = std::getenv("SB_REQUIRE_CUDA");
  return v != nullptr && std::strcmp(v, "1") == 0;
}

double RelDiff(absl::Span<const float> a, absl::Span<const float> b) {
  if (a.size() != b.size()) return std::numeric_limits<double>::infinity();
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) return std::numeric_limits<double>::infinity();
    const double d = static_cast<double>(a[i]) - b[i];
    num += d * d;
    den += static_cast<double>(b[i]) * b[i];
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

// ---------------------------------------------------------------------------
// CudaTest
// ---------------------------------------------------------------------------

std::unique_ptr<Backend> CudaTest::cuda_;
std::unique_ptr<Backend> CudaTest::cpu_;
std::string* CudaTest::skip_reason_ = nullptr;

void CudaTest::SetUpTestSuite() {
  delete skip_reason_;
  skip_reason_ = new std::string;
  absl::StatusOr<std::unique_ptr<Backend>> cuda =
      stand_in() ? CreateBackend("cpu")
                 : CreateCudaForTest(BackendOptions(), skip_reason_);
  if (!cuda.ok()) {
    if (skip_reason_->empty()) {
      *skip_reason_ = absl::StrCat("ERROR creating the cuda backend: ",
                                   cuda.status().ToString());
    }
    return;
  }
  cuda_ = *std::move(cuda);
  absl::StatusOr<std::unique_ptr<Backend>> cpu = CreateBackend("cpu");
  if (!cpu.ok()) {
    *skip_reason_ = absl::StrCat("ERROR creating the cpu backend: ",
                                 cpu.status().ToString());
    cuda_.reset();
    return;
  }
  cpu_ = *std::move(cpu);
}

void CudaTest::TearDownTestSuite() {
  cuda_.reset();
  cpu_.reset();
  delete skip_reason_;
  skip_reason_ = nullptr;
}

void CudaTest::SetUp() {
  if (cuda_ != nullptr) return;
  const std::string reason =
      skip_reason_ != nullptr ? *skip_reason_ : "suite not set up";
  // A backend that exists but fails to start is a failure, never a skip.
  if (RequireCuda() || reason.rfind("ERROR", 0) == 0) {
    GTEST_FAIL() << reason;
  }
  GTEST_SKIP() << reason;
}

void CudaTest::TearDown() {
  if (max_rel_err_vs_cpu_ >= 0) {
    RecordProperty("max_rel_err_vs_cpu", absl::StrCat(max_rel_err_vs_cpu_));
  }
}

std::unique_ptr<Backend> CudaTest::NewCuda(const BackendOptions& options) {
  std::string reason;
  absl::StatusOr<std::unique_ptr<Backend>> b =
      stand_in() ? CreateBackend("cpu", options)
                 : CreateCudaForTest(options, &reason);
  EXPECT_TRUE(b.ok()) << b.status();
  return b.ok() ? *std::move(b) : nullptr;
}

// ---------------------------------------------------------------------------
// DeviceMemory
// ---------------------------------------------------------------------------

#ifdef SB_HAVE_CUDA
namespace {
absl::Status CudaError(const char* what, cudaError_t e) {
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorString(e)));
}
}  // namespace

absl::StatusOr<DeviceMemory> DeviceMemory::Allocate(int64_t bytes) {
  DeviceMemory m;
  const cudaError_t e =
      cudaMalloc(&m.data_, static_cast<size_t>(std::max<int64_t>(bytes, 1)));
  if (e != cudaSuccess) {
    cudaGetLastError();
    return CudaError("cudaMalloc", e);
  }
  m.bytes_ = bytes;
  return m;
}

DeviceMemory::~DeviceMemory() {
  if (data_ != nullptr) cudaFree(data_);
}

absl::Status DeviceMemory::CopyFrom(const void* src, int64_t bytes,
                                    int64_t offset) {
  if (offset < 0 || offset + bytes > bytes_) {
    return absl::OutOfRangeError("DeviceMemory::CopyFrom out of range");
  }
  const cudaError_t e =
      cudaMemcpy(static_cast<char*>(data_) + offset, src,
                 static_cast<size_t>(bytes), cudaMemcpyHostToDevice);
  return e == cudaSuccess ? absl::OkStatus() : CudaError("cudaMemcpy H2D", e);
}

absl::Status DeviceMemory::CopyTo(void* dst, int64_t bytes,
                                  int64_t offset) const {
  if (offset < 0 || offset + bytes > bytes_) {
    return absl::OutOfRangeError("DeviceMemory::CopyTo out of range");
  }
  const cudaError_t e =
      cudaMemcpy(dst, static_cast<const char*>(data_) + offset,
                 static_cast<size_t>(bytes), cudaMemcpyDeviceToHost);
  return e == cudaSuccess ? absl::OkStatus() : CudaError("cudaMemcpy D2H", e);
}
#else
absl::StatusOr<DeviceMemory> DeviceMemory::Allocate(int64_t) {
  return absl::FailedPreconditionError("CUDA is not compiled in");
}
DeviceMemory::~DeviceMemory() = default;
absl::Status DeviceMemory::CopyFrom(const void*, int64_t, int64_t) {
  return absl::FailedPreconditionError("CUDA is not compiled in");
}
absl::Status DeviceMemory::CopyTo(void*, int64_t, int64_t) const {
  return absl::FailedPreconditionError("CUDA is not compiled in");
}
#endif

DeviceMemory::DeviceMemory(DeviceMemory&& o) noexcept { *this = std::move(o); }

DeviceMemory& DeviceMemory::operator=(DeviceMemory&& o) noexcept {
  if (this != &o) {
    std::swap(data_, o.data_);
    std::swap(bytes_, o.bytes_);
  }
  return *this;
}

// ---------------------------------------------------------------------------
// GuardedTensor
// ---------------------------------------------------------------------------

absl::StatusOr<GuardedTensor> GuardedTensor::Make(DType dtype, int64_t n,
                                                  MemorySpace space,
                                                  Backend* backend) {
  GuardedTensor t;
  t.dtype_ = dtype;
  t.space_ = space;
  t.n_ = n;
  const int64_t total = t.bytes() + 2 * kGuardBytes;
  switch (space) {
    case MemorySpace::kHost:
      t.host_ = std::make_shared<std::vector<unsigned char>>(total);
      break;
    case MemorySpace::kPinnedHost: {
      if (backend == nullptr) {
        return absl::InvalidArgumentError("pinned memory needs a backend");
      }
      absl::StatusOr<HostBuffer> buf = backend->AllocateHost(total);
      if (!buf.ok()) return buf.status();
      t.space_ = buf->space();  // what the backend actually gave
      t.pinned_ = std::make_shared<HostBuffer>(*std::move(buf));
      break;
    }
    case MemorySpace::kDevice: {
      absl::StatusOr<DeviceMemory> mem = DeviceMemory::Allocate(total);
      if (!mem.ok()) return mem.status();
      t.device_ = std::make_shared<DeviceMemory>(*std::move(mem));
      break;
    }
  }
  absl::Status st = t.Poison();
  if (!st.ok()) return st;
  return t;
}

void* GuardedTensor::data() const {
  unsigned char* base = host_     ? host_->data()
                        : pinned_ ? static_cast<unsigned char*>(pinned_->data())
                        : device_ ? static_cast<unsigned char*>(device_->data())
                                  : nullptr;
  return base == nullptr ? nullptr : base + kGuardBytes;
}

absl::Status GuardedTensor::Store(const std::vector<unsigned char>& block) {
  if (device_) return device_->CopyFrom(block.data(), block.size());
  unsigned char* base =
      host_ ? host_->data() : static_cast<unsigned char*>(pinned_->data());
  std::memcpy(base, block.data(), block.size());
  return absl::OkStatus();
}

absl::StatusOr<std::vector<unsigned char>> GuardedTensor::Load() const {
  std::vector<unsigned char> block(
      static_cast<size_t>(bytes() + 2 * kGuardBytes));
  if (device_) {
    absl::Status st = device_->CopyTo(block.data(), block.size());
    if (!st.ok()) return st;
    return block;
  }
  const unsigned char* base =
      host_ ? host_->data() : static_cast<unsigned char*>(pinned_->data());
  std::memcpy(block.data(), base, block.size());
  return block;
}

absl::Status GuardedTensor::Set(absl::Span<const float> values) {
  if (static_cast<int64_t>(values.size()) != n_) {
    return absl::InvalidArgumentError("GuardedTensor::Set: wrong size");
  }
  std::vector<unsigned char> block(
      static_cast<size_t>(bytes() + 2 * kGuardBytes), kGuardByte);
  EncodeFromFloat(dtype_, values.data(), n_,
                  reinterpret_cast<char*>(block.data() + kGuardBytes));
  return Store(block);
}

absl::Status GuardedTensor::Poison() {
  return Set(std::vector<float>(static_cast<size_t>(n_),
                                std::numeric_limits<float>::quiet_NaN()));
}

absl::StatusOr<std::vector<float>> GuardedTensor::Read() const {
  absl::StatusOr<std::vector<unsigned char>> block = Load();
  if (!block.ok()) return block.status();
  std::vector<float> out(static_cast<size_t>(n_));
  DecodeToFloat(dtype_,
                reinterpret_cast<const char*>(block->data() + kGuardBytes), n_,
                out.data());
  return out;
}

absl::StatusOr<bool> GuardedTensor::GuardsIntact() const {
  absl::StatusOr<std::vector<unsigned char>> block = Load();
  if (!block.ok()) return block.status();
  const size_t tail = static_cast<size_t>(kGuardBytes + bytes());
  for (size_t i = 0; i < static_cast<size_t>(kGuardBytes); ++i) {
    if ((*block)[i] != kGuardByte || (*block)[tail + i] != kGuardByte) {
      return false;
    }
  }
  return true;
}

}  // namespace testutil
}  // namespace scatterbrain
