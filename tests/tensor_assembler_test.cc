// server/tensor_assembler and the wire dtype codec (common/dtype): chunks
// that split elements anywhere reassemble bit-exactly; out-of-order and
// overlong chunks are refused naming the field.
#include "server/tensor_assembler.h"

#include <algorithm>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "common/float16.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testutil/status_matchers.h"

namespace scatterbrain {
namespace server {
namespace {

using ::testing::HasSubstr;
using testutil::StatusIs;

TEST(TensorAssemblerTest, AssemblerHandlesChunksThatSplitElements) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-3, 3);
  for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    const int64_t n = 101;
    std::vector<float> values(n);
    for (float& x : values) x = u(rng);
    std::string bytes(n * DTypeBytes(dtype), '\0');
    EncodeFromFloat(dtype, values.data(), n, bytes.data());
    std::vector<float> want(n);
    DecodeToFloat(dtype, bytes.data(), n, want.data());

    TensorAssembler a;
    ASSERT_TRUE(a.Init("q", dtype, n).ok());
    size_t off = 0, step = 1;
    while (off < bytes.size()) {
      const size_t len = std::min(step, bytes.size() - off);
      ASSERT_TRUE(
          a.Append(off, absl::string_view(bytes).substr(off, len)).ok());
      off += len;
      step = step % 7 + 1;  // 1..7 bytes: splits every element somewhere
      if (off < bytes.size()) {
        EXPECT_FALSE(a.complete());
      }
    }
    EXPECT_TRUE(a.complete());
    TensorBuffer got = a.Take();
    ASSERT_EQ(got.size, n);
    for (int64_t i = 0; i < n; ++i)
      EXPECT_EQ(FloatBits(got.data()[i]), FloatBits(want[i]));
  }
  TensorAssembler a;
  ASSERT_TRUE(a.Init("k", DType::kFloat16, 4).ok());
  absl::Status st = a.Append(2, "ab");
  EXPECT_THAT(st, StatusIs(absl::StatusCode::kInvalidArgument,
                           HasSubstr("chunk.offset")));
  st = a.Append(0, "0123456789");
  EXPECT_THAT(st, StatusIs(absl::StatusCode::kInvalidArgument,
                           HasSubstr("chunk.data")));
}

// Issue 9, finding 1: a header alone used to allocate the request's whole
// float32 buffers. Now a tensor's buffer is allocated when its first bytes
// arrive, and an allocation failure is the chunk's RESOURCE_EXHAUSTED.
TEST(TensorAssemblerTest, BufferIsAllocatedWhenTheFirstBytesArrive) {
  int allocations = 0;
  bool fail = false;
  const HostAllocator counting =
      [&](int64_t bytes) -> absl::StatusOr<HostBuffer> {
    ++allocations;
    if (fail) return absl::ResourceExhaustedError("no memory");
    char* p = new char[static_cast<size_t>(bytes)];
    return HostBuffer(p, bytes, MemorySpace::kHost,
                      [](void* d) { delete[] static_cast<char*>(d); });
  };
  TensorAssembler a;
  ASSERT_TRUE(a.Init("q", DType::kFloat16, 1 << 20, counting).ok());
  EXPECT_EQ(allocations, 0) << "Init must not commit memory";
  ASSERT_TRUE(a.Append(0, "").ok());
  EXPECT_EQ(allocations, 0) << "an empty chunk commits nothing either";
  ASSERT_TRUE(a.Append(0, "abcd").ok());
  EXPECT_EQ(allocations, 1);
  ASSERT_TRUE(a.Append(4, "efgh").ok());
  EXPECT_EQ(allocations, 1);

  fail = true;
  TensorAssembler b;
  ASSERT_TRUE(b.Init("k", DType::kFloat32, 16, counting).ok());
  EXPECT_THAT(b.Append(0, "abcd"),
              StatusIs(absl::StatusCode::kResourceExhausted));
}

TEST(DTypeTest, NamesSizesAndAliases) {
  const struct {
    DType dtype;
    const char* name;
    int bytes;
    std::vector<const char*> aliases;
  } cases[] = {
      {DType::kFloat32, "float32", 4, {"float32", "FP32", "f32"}},
      {DType::kFloat16, "float16", 2, {"float16", "fp16", "F16", "half"}},
      {DType::kBFloat16, "bfloat16", 2, {"bfloat16", "BF16"}}};
  for (const auto& c : cases) {
    EXPECT_STREQ(DTypeName(c.dtype), c.name);
    EXPECT_EQ(DTypeBytes(c.dtype), c.bytes);
    for (const char* alias : c.aliases) {
      DType got = DType::kFloat32;
      ASSERT_TRUE(ParseDType(alias, &got)) << alias;
      EXPECT_EQ(got, c.dtype) << alias;
    }
  }
  DType d;
  EXPECT_FALSE(ParseDType("int8", &d));
  EXPECT_FALSE(ParseDType("", &d));
}

}  // namespace
}  // namespace server
}  // namespace scatterbrain
