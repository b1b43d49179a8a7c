// Tests for client/cli/npy.h: round trips, float16 conversion, and every
// malformed-file error the reader promises.
#include "client/cli/npy.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testutil/files.h"
#include "tests/testutil/status_matchers.h"

namespace scatterbrain {
namespace {

using ::testing::HasSubstr;

using testutil::ReadFile;
using testutil::ScratchDir;
using testutil::StatusIs;
using testutil::WriteFile;

// A hand-built .npy image: any version, dict text and payload.
std::string MakeNpy(const std::string& dict, const std::string& payload,
                    int major = 1) {
  std::string header = dict;
  const size_t pre = major == 1 ? 10 : 12;
  while ((pre + header.size() + 1) % 64 != 0) header.push_back(' ');
  header.push_back('\n');
  std::string out("\x93NUMPY", 6);
  out.push_back(static_cast<char>(major));
  out.push_back('\0');
  const uint32_t len = static_cast<uint32_t>(header.size());
  for (size_t i = 0; i < pre - 8; ++i) {
    out.push_back(static_cast<char>((len >> (8 * i)) & 0xff));
  }
  return out + header + payload;
}

std::string Dict(const std::string& descr, const std::string& shape,
                 bool fortran = false) {
  return absl::StrCat("{'descr': '", descr,
                      "', 'fortran_order': ", fortran ? "True" : "False",
                      ", 'shape': ", shape, ", }");
}

std::string Floats(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4);
}

std::string Halves(const std::vector<uint16_t>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 2);
}

uint32_t Bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

// Independent reference for binary16 -> double.
double HalfReference(uint16_t h) {
  const int sign = (h >> 15) & 1;
  const int exp = (h >> 10) & 0x1f;
  const int mant = h & 0x3ff;
  double mag;
  if (exp == 0) {
    mag = std::ldexp(mant, -24);
  } else if (exp == 31) {
    mag = mant ? std::numeric_limits<double>::quiet_NaN()
               : std::numeric_limits<double>::infinity();
  } else {
    mag = std::ldexp(1024 + mant, exp - 25);
  }
  return sign ? -mag : mag;
}

TEST(NpyTest, RoundTripFloat32) {
  ScratchDir dir("npy_test");
  const std::vector<int64_t> shape = {2, 3, 5, 7};
  std::vector<float> data(2 * 3 * 5 * 7);
  for (size_t i = 0; i < data.size(); ++i) {
    data[i] = std::sin(static_cast<float>(i)) * 1e3f;
  }
  data[3] = -0.0f;
  data[4] = std::numeric_limits<float>::denorm_min();
  data[5] = std::numeric_limits<float>::infinity();
  const std::string path = dir.File("a.npy");
  ASSERT_TRUE(WriteNpy(path, shape, data.data()).ok());

  const std::string raw = ReadFile(path);
  ASSERT_GE(raw.size(), 10u);
  const size_t header_len = static_cast<unsigned char>(raw[8]) |
                            static_cast<unsigned char>(raw[9]) << 8;
  EXPECT_EQ((10 + header_len) % 64, 0u) << "data must be 64-byte aligned";
  EXPECT_EQ(raw[10 + header_len - 1], '\n');
  EXPECT_THAT(raw.substr(10, header_len),
              HasSubstr("'descr': '<f4', 'fortran_order': False, "
                        "'shape': (2, 3, 5, 7)"));

  absl::StatusOr<NpyArray> a = ReadNpy(path);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->shape, shape);
  ASSERT_EQ(a->data.size(), data.size());
  for (size_t i = 0; i < data.size(); ++i) {
    EXPECT_EQ(Bits(a->data[i]), Bits(data[i])) << i;
  }
  // No temporary files are left behind.
  EXPECT_THAT(dir.List(), ::testing::ElementsAre("a.npy"));
}

TEST(NpyTest, RoundTripOtherRanks) {
  ScratchDir dir("npy_test");
  const std::vector<float> data = {1, 2, 3};
  for (const std::vector<int64_t>& shape :
       std::vector<std::vector<int64_t>>{{3}, {1, 3}, {3, 1, 1, 1, 1}}) {
    const std::string path = dir.File("r.npy");
    ASSERT_TRUE(WriteNpy(path, shape, data.data()).ok());
    absl::StatusOr<NpyArray> a = ReadNpy(path, /*required_rank=*/-1);
    ASSERT_TRUE(a.ok()) << a.status();
    EXPECT_EQ(a->shape, shape);
    EXPECT_EQ(a->data, data);
  }
  // Scalars and empty arrays.
  ASSERT_TRUE(WriteNpy(dir.File("s.npy"), {}, data.data()).ok());
  absl::StatusOr<NpyArray> s = ReadNpy(dir.File("s.npy"), -1);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_TRUE(s->shape.empty());
  EXPECT_EQ(s->data, std::vector<float>{1});
  ASSERT_TRUE(WriteNpy(dir.File("e.npy"), {1, 0, 4, 2}, nullptr).ok());
  absl::StatusOr<NpyArray> e = ReadNpy(dir.File("e.npy"));
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->shape, (std::vector<int64_t>{1, 0, 4, 2}));
  EXPECT_TRUE(e->data.empty());
}

TEST(NpyTest, EncodeMatchesParse) {
  const std::vector<float> data = {0.5f, -2.0f, 3.25f, 8.0f};
  const std::string bytes = EncodeNpy({1, 1, 2, 2}, data.data());
  absl::StatusOr<NpyArray> a = ParseNpy(bytes, "mem");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->data, data);
}

TEST(NpyTest, OverwritesExistingFile) {
  ScratchDir dir("npy_test");
  const std::string path = dir.File("o.npy");
  WriteFile(path, "old contents");
  const std::vector<float> data = {4, 5};
  ASSERT_TRUE(WriteNpy(path, {1, 1, 1, 2}, data.data()).ok());
  absl::StatusOr<NpyArray> a = ReadNpy(path);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->data, data);
  EXPECT_THAT(dir.List(), ::testing::ElementsAre("o.npy"));
}

TEST(NpyTest, FailedWriteLeavesNothing) {
  ScratchDir dir("npy_test");
  const std::vector<float> data = {1};
  const std::string path = dir.File("missing_dir/o.npy");
  absl::Status s = WriteNpy(path, {1, 1, 1, 1}, data.data());
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.message()), HasSubstr(path));
  EXPECT_TRUE(dir.List().empty());
  struct stat st;
  EXPECT_NE(::stat(path.c_str(), &st), 0);
}

TEST(NpyTest, HalfToFloatIsExactForAllInputs) {
  for (uint32_t h = 0; h <= 0xffff; ++h) {
    const float f = HalfToFloat(static_cast<uint16_t>(h));
    const double want = HalfReference(static_cast<uint16_t>(h));
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(f)) << h;
      // The payload survives the widening.
      EXPECT_EQ((Bits(f) >> 13) & 0x3ffu, h & 0x3ffu) << h;
    } else {
      EXPECT_EQ(static_cast<double>(f), want) << h;
    }
    EXPECT_EQ(std::signbit(f), (h & 0x8000u) != 0) << h;
    // binary16 -> binary32 -> binary16 is the identity.
    EXPECT_EQ(FloatToHalf(f), h) << h;
  }
}

TEST(NpyTest, HalfSpecialValues) {
  EXPECT_EQ(HalfToFloat(0x0001), std::ldexp(1.0f, -24));     // min subnormal
  EXPECT_EQ(HalfToFloat(0x03ff), std::ldexp(1023.0f, -24));  // max subnormal
  EXPECT_EQ(HalfToFloat(0x0400), std::ldexp(1.0f, -14));     // min normal
  EXPECT_EQ(HalfToFloat(0x7bff), 65504.0f);
  EXPECT_EQ(HalfToFloat(0x3c00), 1.0f);
  EXPECT_EQ(HalfToFloat(0xc000), -2.0f);
  EXPECT_EQ(HalfToFloat(0x7c00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(HalfToFloat(0xfc00), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(HalfToFloat(0x7e00)));
  EXPECT_TRUE(std::signbit(HalfToFloat(0x8000)));
}

TEST(NpyTest, FloatToHalfRoundsToNearestEven) {
  // 1 + 2^-11 is halfway between 1 and 1 + 2^-10: ties to even (1).
  EXPECT_EQ(FloatToHalf(1.0f + std::ldexp(1.0f, -11)), 0x3c00);
  // 1 + 3 * 2^-11 is halfway between 1 + 2^-10 and 1 + 2^-9: to even (up).
  EXPECT_EQ(FloatToHalf(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);
  EXPECT_EQ(FloatToHalf(1.0f + std::ldexp(1.0f, -11) + std::ldexp(1.0f, -20)),
            0x3c01);
  EXPECT_EQ(FloatToHalf(65504.0f), 0x7bff);
  EXPECT_EQ(FloatToHalf(65519.0f), 0x7bff);
  EXPECT_EQ(FloatToHalf(65520.0f), 0x7c00);
  EXPECT_EQ(FloatToHalf(1e10f), 0x7c00);
  EXPECT_EQ(FloatToHalf(-1e10f), 0xfc00);
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -25)), 0x0000);  // tie to even: 0
  EXPECT_EQ(FloatToHalf(std::ldexp(1.5f, -25)), 0x0001);
  EXPECT_EQ(FloatToHalf(std::ldexp(3.0f, -25)), 0x0002);  // 1.5 ulp: to even
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -30)), 0x0000);
  EXPECT_EQ(FloatToHalf(-std::ldexp(1.0f, -30)), 0x8000);
  EXPECT_EQ(FloatToHalf(std::ldexp(1023.5f, -24)), 0x0400);  // to min normal
  EXPECT_EQ(FloatToHalf(std::numeric_limits<float>::infinity()), 0x7c00);
  const uint16_t nan = FloatToHalf(std::numeric_limits<float>::quiet_NaN());
  EXPECT_EQ(nan & 0x7c00, 0x7c00);
  EXPECT_NE(nan & 0x3ff, 0);
}

TEST(NpyTest, ReadsFloat16) {
  ScratchDir dir("npy_test");
  // 1, -2, min subnormal, max subnormal, 65504, -0, inf, 0.333 (rounded)
  const std::vector<uint16_t> h = {0x3c00, 0xc000, 0x0001, 0x03ff,
                                   0x7bff, 0x8000, 0x7c00, 0x3555};
  WriteFile(dir.File("h.npy"), MakeNpy(Dict("<f2", "(1, 2, 2, 2)"), Halves(h)));
  absl::StatusOr<NpyArray> a = ReadNpy(dir.File("h.npy"));
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->shape, (std::vector<int64_t>{1, 2, 2, 2}));
  ASSERT_EQ(a->data.size(), h.size());
  for (size_t i = 0; i < h.size(); ++i) {
    EXPECT_EQ(static_cast<double>(a->data[i]), HalfReference(h[i])) << i;
  }
}

TEST(NpyTest, ReadsVersions2And3AndQuoteStyles) {
  const std::vector<float> data = {1, 2, 3, 4};
  for (int major : {2, 3}) {
    absl::StatusOr<NpyArray> a = ParseNpy(
        MakeNpy(Dict("<f4", "(1, 1, 2, 2)"), Floats(data), major), "v");
    ASSERT_TRUE(a.ok()) << major << ": " << a.status();
    EXPECT_EQ(a->data, data);
  }
  // Double quotes, no trailing comma, keys in another order, no spaces.
  absl::StatusOr<NpyArray> a = ParseNpy(
      MakeNpy("{\"shape\":(1,1,2,2),\"fortran_order\":False,\"descr\":\"<f4\"}",
              Floats(data)),
      "q");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->data, data);
}

TEST(NpyTest, MissingFile) {
  absl::StatusOr<NpyArray> a = ReadNpy("/nonexistent/dir/x.npy");
  ASSERT_FALSE(a.ok());
  EXPECT_THAT(a, StatusIs(absl::StatusCode::kNotFound,
                          HasSubstr("/nonexistent/dir/x.npy")));
}

struct BadCase {
  const char* label;
  std::string bytes;
  const char* want;  // substring of the message
};

TEST(NpyTest, RejectsMalformedFiles) {
  const std::string f4 = Floats(std::vector<float>(8, 1.0f));
  std::string too_long("\x93NUMPY\x02\x00", 8);
  too_long += std::string("\x00\x00\x10\x00", 4);  // 1 MiB header
  too_long += std::string(100, ' ');
  const std::vector<BadCase> cases = {
      {"empty", "", "bad magic"},
      {"text", "hello world, not numpy", "bad magic"},
      {"short magic", std::string("\x93NUM", 4), "bad magic"},
      {"version", MakeNpy(Dict("<f4", "(1, 2, 2, 2)"), f4, 9), "version 9"},
      {"header truncated",
       MakeNpy(Dict("<f4", "(1, 2, 2, 2)"), "").substr(0, 30),
       "truncated header"},
      {"header too long", too_long, "header too long"},
      {"float64", MakeNpy(Dict("<f8", "(1, 2, 2, 1)"), f4), "'<f8'"},
      {"big endian", MakeNpy(Dict(">f4", "(1, 2, 2, 2)"), f4), "'>f4'"},
      {"int32", MakeNpy(Dict("<i4", "(1, 2, 2, 2)"), f4), "'<i4'"},
      {"structured",
       MakeNpy("{'descr': [('a', '<f4')], 'fortran_order': False, "
               "'shape': (1, 2, 2, 2), }",
               f4),
       "structured"},
      {"fortran", MakeNpy(Dict("<f4", "(1, 2, 2, 2)", true), f4), "fortran"},
      {"rank 3", MakeNpy(Dict("<f4", "(2, 2, 2)"), f4), "wrong rank"},
      {"rank 1", MakeNpy(Dict("<f4", "(8,)"), f4), "wrong rank"},
      {"truncated data", MakeNpy(Dict("<f4", "(1, 2, 2, 2)"), f4.substr(0, 30)),
       "truncated data"},
      {"extra data", MakeNpy(Dict("<f4", "(1, 2, 2, 2)"), f4 + "xyz"),
       "size mismatch"},
      {"overflow",
       MakeNpy(Dict("<f4", "(4294967296, 4294967296, 4294967296, 2)"), f4),
       "too large"},
      {"huge", MakeNpy(Dict("<f4", "(1000000, 1000, 1000, 1)"), f4),
       "too large"},
      {"absurd but countable",
       MakeNpy(Dict("<f4", "(1000, 1000, 1000, 10)"), f4), "truncated data"},
      {"negative dim", MakeNpy(Dict("<f4", "(1, -2, 2, 2)"), f4),
       "malformed header"},
      {"huge int", MakeNpy(Dict("<f4", "(1, 99999999999999999999, 2, 2)"), f4),
       "malformed header"},
      {"missing shape", MakeNpy("{'descr': '<f4', 'fortran_order': False}", f4),
       "malformed header"},
      {"not a dict", MakeNpy("['<f4']", f4), "malformed header"},
      {"garbage after", MakeNpy(Dict("<f4", "(1, 2, 2, 2)") + " x", f4),
       "malformed header"},
      {"bad bool",
       MakeNpy("{'descr': '<f4', 'fortran_order': maybe, 'shape': (1,2,2,2)}",
               f4),
       "fortran_order"},
  };
  for (const BadCase& c : cases) {
    absl::StatusOr<NpyArray> a = ParseNpy(c.bytes, "in.npy");
    ASSERT_FALSE(a.ok()) << c.label;
    EXPECT_THAT(
        a, StatusIs(absl::StatusCode::kInvalidArgument,
                    ::testing::AllOf(HasSubstr("in.npy: "), HasSubstr(c.want))))
        << c.label;
  }
}

TEST(NpyTest, ReadNpyFileErrorsNameTheFile) {
  ScratchDir dir("npy_test");
  const std::string f4 = Floats(std::vector<float>(8, 1.0f));
  const std::string path = dir.File("trunc.npy");
  WriteFile(path, MakeNpy(Dict("<f4", "(1, 2, 2, 2)"), f4.substr(0, 20)));
  absl::StatusOr<NpyArray> a = ReadNpy(path);
  ASSERT_FALSE(a.ok());
  EXPECT_THAT(std::string(a.status().message()),
              HasSubstr(path + ": truncated data"));
  // A shape promising far more than the file holds fails before allocating.
  WriteFile(path, MakeNpy(Dict("<f4", "(1000, 1000, 1000, 10)"), f4));
  a = ReadNpy(path);
  ASSERT_FALSE(a.ok());
  EXPECT_THAT(std::string(a.status().message()), HasSubstr("truncated data"));
  // A directory is not a file.
  a = ReadNpy(dir.path());
  EXPECT_FALSE(a.ok());
}

}  // namespace
}  // namespace scatterbrain
