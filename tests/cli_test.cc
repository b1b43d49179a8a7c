// End-to-end tests of the scatterbrain_cli binary: runs it in a temporary
// directory and checks exit codes, the one-line error contract, that bad
// input writes no output, and that every method produces a sane output.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "client/cli/npy.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testutil/files.h"
#include "tests/testutil/process.h"
#include "tests/testutil/random.h"

#ifndef SB_CLI_PATH
#error "SB_CLI_PATH must name the scatterbrain_cli binary"
#endif

namespace scatterbrain {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;
using testutil::Exists;
using testutil::ReadFile;
using testutil::WriteFile;
using RunResult = testutil::CommandResult;

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(dir_.ok()); }

  std::string Path(const std::string& name) const { return dir_.File(name); }

  RunResult Run(const std::vector<std::string>& args) {
    std::vector<std::string> argv = {SB_CLI_PATH};
    argv.insert(argv.end(), args.begin(), args.end());
    return testutil::RunCommand(argv, dir_.path());
  }

  // Writes a float32 [shape] array of N(0, 1) values; returns its path.
  std::string WriteRandom(const std::string& name,
                          const std::vector<int64_t>& shape, uint32_t seed,
                          std::vector<float>* values = nullptr) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    const std::vector<float> data = testutil::RandomNormal(n, seed);
    const std::string path = Path(name);
    EXPECT_TRUE(WriteNpy(path, shape, data.data()).ok());
    if (values != nullptr) *values = data;
    return path;
  }

  // Standard small inputs: B=1, H=2, N=33, d=16.
  void WriteQkv() {
    WriteRandom("q.npy", {1, 2, 33, 16}, 1, &q_);
    WriteRandom("k.npy", {1, 2, 33, 16}, 2, &k_);
    WriteRandom("v.npy", {1, 2, 33, 16}, 3, &v_);
  }

  std::vector<std::string> AttendArgs(const std::string& method) {
    return {"attend",
            "--q=" + Path("q.npy"),
            "--k=" + Path("k.npy"),
            "--v=" + Path("v.npy"),
            "--out=" + Path("o.npy"),
            "--method=" + method};
  }

  // The error contract: exit 2, exactly one line "error: ..." on stderr
  // containing `want`, nothing on stdout, no output file.
  void ExpectUsageError(const std::vector<std::string>& args,
                        const std::string& want) {
    SCOPED_TRACE(absl::StrJoin(args, " "));
    const RunResult r = Run(args);
    EXPECT_EQ(r.code, 2);
    EXPECT_THAT(r.err, StartsWith("error: "));
    ASSERT_FALSE(r.err.empty());
    EXPECT_EQ(r.err.back(), '\n');
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_THAT(r.err, HasSubstr(want));
    EXPECT_EQ(r.out, "");
    EXPECT_FALSE(Exists(Path("o.npy")));
  }

  testutil::ScratchDir dir_{"cli_test"};
  std::vector<float> q_, k_, v_;
};

// Exact softmax attention in double, [1, H, N, d] contiguous, no mask.
std::vector<double> ExactReference(const std::vector<float>& q,
                                   const std::vector<float>& k,
                                   const std::vector<float>& v, int heads,
                                   int n, int d) {
  std::vector<double> out(q.size());
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  for (int h = 0; h < heads; ++h) {
    const size_t base = static_cast<size_t>(h) * n * d;
    for (int i = 0; i < n; ++i) {
      std::vector<double> s(n);
      double mx = -1e300;
      for (int j = 0; j < n; ++j) {
        double dot = 0;
        for (int c = 0; c < d; ++c)
          dot += double(q[base + i * d + c]) * k[base + j * d + c];
        s[j] = dot * scale;
        mx = std::max(mx, s[j]);
      }
      double sum = 0;
      for (int j = 0; j < n; ++j) sum += (s[j] = std::exp(s[j] - mx));
      for (int c = 0; c < d; ++c) {
        double acc = 0;
        for (int j = 0; j < n; ++j) acc += s[j] * v[base + j * d + c];
        out[base + i * d + c] = acc / sum;
      }
    }
  }
  return out;
}

TEST_F(CliTest, InfoListsCpuAndVersion) {
  const RunResult r = Run({"info"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("cpu"));
  EXPECT_THAT(r.out, HasSubstr("0.1.0"));
}

TEST_F(CliTest, HelpExitsZero) {
  const RunResult r = Run({"--help"});
  EXPECT_EQ(r.code, 0);
  EXPECT_THAT(r.out, HasSubstr("usage"));
  EXPECT_THAT(r.out, HasSubstr("--method"));
}

TEST_F(CliTest, NoArgumentsIsUsageError) {
  const RunResult r = Run({});
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.err, HasSubstr("usage"));
}

TEST_F(CliTest, EveryMethodProducesFiniteOutput) {
  WriteQkv();
  for (const std::string method :
       {"exact", "performer", "lsh", "local", "scatterbrain"}) {
    SCOPED_TRACE(method);
    std::vector<std::string> args = AttendArgs(method);
    args.insert(args.end(), {"--num_features=32", "--bucket_size=8",
                             "--window=8", "--seed=7"});
    const RunResult r = Run(args);
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_EQ(r.err, "");
    absl::StatusOr<NpyArray> o = ReadNpy(Path("o.npy"));
    ASSERT_TRUE(o.ok()) << o.status();
    EXPECT_EQ(o->shape, (std::vector<int64_t>{1, 2, 33, 16}));
    ASSERT_EQ(o->data.size(), 2u * 33 * 16);
    for (float x : o->data) ASSERT_TRUE(std::isfinite(x));
    if (method == "exact") {
      const std::vector<double> want = ExactReference(q_, k_, v_, 2, 33, 16);
      for (size_t i = 0; i < want.size(); ++i) {
        EXPECT_NEAR(o->data[i], want[i], 1e-4) << i;
      }
    }
    ASSERT_EQ(std::remove(Path("o.npy").c_str()), 0);
  }
}

TEST_F(CliTest, ScatterbrainVariantsAndOptions) {
  WriteQkv();
  const std::vector<std::vector<std::string>> variants = {
      {"--sparse=local", "--window=8", "--estimator=unbiased"},
      {"--sparse=both", "--window=8", "--bucket_size=8", "--num_hashes=2",
       "--hash_projections=2", "--calibration_rows=4"},
      {"--causal", "--scale=0.2", "--threads=1"},
      {"--causal=true", "--key_lengths=20"},
      {"--lsh_hash=crosspolytope", "--lsh_transform=smyrf", "--bucket_size=8"},
      {"--lsh_hash=kmeans", "--kmeans_iterations=5", "--bucket_size=4"},
  };
  for (const auto& extra : variants) {
    SCOPED_TRACE(absl::StrJoin(extra, " "));
    std::vector<std::string> args = AttendArgs("scatterbrain");
    args.insert(args.end(), extra.begin(), extra.end());
    args.push_back("--num_features=16");
    const RunResult r = Run(args);
    ASSERT_EQ(r.code, 0) << r.err;
    absl::StatusOr<NpyArray> o = ReadNpy(Path("o.npy"));
    ASSERT_TRUE(o.ok()) << o.status();
    for (float x : o->data) ASSERT_TRUE(std::isfinite(x));
    ASSERT_EQ(std::remove(Path("o.npy").c_str()), 0);
  }
}

TEST_F(CliTest, StatsPrintsOneLine) {
  WriteQkv();
  std::vector<std::string> args = AttendArgs("exact");
  args.push_back("--stats");
  const RunResult r = Run(args);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;
  for (const char* field :
       {"workspace_bytes=", "dense_score_bytes=", "denominator_guards=",
        "fallbacks=", "elapsed_ms="}) {
    EXPECT_THAT(r.out, HasSubstr(field));
  }
  // Dense scores for [1, 2, 33, 33] float32.
  EXPECT_THAT(r.out, HasSubstr("dense_score_bytes=8712"));
}

TEST_F(CliTest, PlansPrintOneLinePerHeadAfterTheStats) {
  WriteQkv();
  std::vector<std::string> args = AttendArgs("scatterbrain");
  for (const char* flag :
       {"--sparse=auto", "--target_error=0.3", "--global_keys=2",
        "--num_features=16", "--bucket_size=8", "--window=8",
        "--calibration_rows=8", "--stats"}) {
    args.push_back(flag);
  }
  const RunResult r = Run(args);
  ASSERT_EQ(r.code, 0) << r.err;
  const std::vector<std::string> lines =
      absl::StrSplit(r.out, '\n', absl::SkipEmpty());
  // The stats line, then one line per head (B=1, H=2).
  ASSERT_EQ(lines.size(), 3u) << r.out;
  EXPECT_THAT(lines[0], StartsWith("stats: "));
  for (const char* field : {"score_evaluations=", "exact_score_evaluations=",
                            "cost=", "error_bound="}) {
    EXPECT_THAT(lines[0], HasSubstr(field));
  }
  EXPECT_THAT(lines[1], StartsWith("head b=0 h=0: "));
  EXPECT_THAT(lines[2], StartsWith("head b=0 h=1: "));
  for (int i = 1; i <= 2; ++i) {
    // A support with its sizes and error, or exact.
    if (lines[i].find("exact") == std::string::npos) {
      EXPECT_THAT(lines[i], HasSubstr("features="));
      EXPECT_THAT(lines[i], HasSubstr("globals="));
      EXPECT_THAT(lines[i], HasSubstr("err="));
    }
  }
  // Without --stats nothing is printed; bad values are usage errors.
  args.pop_back();
  ASSERT_EQ(std::remove(Path("o.npy").c_str()), 0);
  const RunResult quiet = Run(args);
  ASSERT_EQ(quiet.code, 0) << quiet.err;
  EXPECT_EQ(quiet.out, "");
  ASSERT_EQ(std::remove(Path("o.npy").c_str()), 0);
  std::vector<std::string> bad = AttendArgs("scatterbrain");
  bad.push_back("--target_error=much");
  ExpectUsageError(bad, "flag --target_error: 'much' is not a finite number");
  bad.back() = "--target_error=1.5";
  ExpectUsageError(bad, "target_error: must be in [0, 1)");
  bad.back() = "--sparse=sometimes";
  ExpectUsageError(bad, "lsh|local|both|auto");
  bad.back() = "--global_keys=-1";
  ExpectUsageError(bad, "global_keys");
}

TEST_F(CliTest, Float16InputMatchesFloat32) {
  // Values exactly representable in float16, so both runs see the same input.
  WriteQkv();
  for (const char* name : {"q", "k", "v"}) {
    std::vector<float>& src = name[0] == 'q' ? q_ : name[0] == 'k' ? k_ : v_;
    std::vector<uint16_t> half(src.size());
    for (size_t i = 0; i < src.size(); ++i) {
      half[i] = FloatToHalf(src[i]);
      src[i] = HalfToFloat(half[i]);
    }
    ASSERT_TRUE(
        WriteNpy(Path(absl::StrCat(name, "32.npy")), {1, 2, 33, 16}, src.data())
            .ok());
    std::string header =
        "{'descr': '<f2', 'fortran_order': False, 'shape': (1, 2, 33, 16), }";
    while ((10 + header.size() + 1) % 64) header.push_back(' ');
    header.push_back('\n');
    std::string bytes("\x93NUMPY\x01\x00", 8);
    bytes.push_back(static_cast<char>(header.size() & 0xff));
    bytes.push_back(static_cast<char>(header.size() >> 8));
    bytes += header;
    bytes.append(reinterpret_cast<const char*>(half.data()), half.size() * 2);
    WriteFile(Path(absl::StrCat(name, "16.npy")), bytes);
  }
  auto run = [&](const std::string& suffix, const std::string& out) {
    return Run({"attend", "--q=" + Path("q" + suffix + ".npy"),
                "--k=" + Path("k" + suffix + ".npy"),
                "--v=" + Path("v" + suffix + ".npy"), "--out=" + Path(out),
                "--method=exact"});
  };
  RunResult r = run("16", "o16.npy");
  ASSERT_EQ(r.code, 0) << r.err;
  r = run("32", "o32.npy");
  ASSERT_EQ(r.code, 0) << r.err;
  absl::StatusOr<NpyArray> a = ReadNpy(Path("o16.npy"));
  absl::StatusOr<NpyArray> b = ReadNpy(Path("o32.npy"));
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->shape, b->shape);
  EXPECT_EQ(a->data, b->data);
}

TEST_F(CliTest, MissingInputFile) {
  WriteQkv();
  std::vector<std::string> args = AttendArgs("exact");
  args[1] = "--q=" + Path("nope.npy");
  ExpectUsageError(args, "nope.npy");
}

TEST_F(CliTest, BadMagic) {
  WriteQkv();
  WriteFile(Path("q.npy"), "this is not a numpy file at all");
  ExpectUsageError(AttendArgs("exact"), "bad magic");
}

std::string HandMade(const std::string& dict, size_t payload_bytes) {
  std::string header = dict;
  while ((10 + header.size() + 1) % 64) header.push_back(' ');
  header.push_back('\n');
  std::string bytes("\x93NUMPY\x01\x00", 8);
  bytes.push_back(static_cast<char>(header.size() & 0xff));
  bytes.push_back(static_cast<char>(header.size() >> 8));
  return bytes + header + std::string(payload_bytes, '\0');
}

TEST_F(CliTest, FortranOrder) {
  WriteQkv();
  WriteFile(Path("k.npy"), HandMade("{'descr': '<f4', 'fortran_order': True, "
                                    "'shape': (1, 2, 33, 16), }",
                                    4 * 2 * 33 * 16));
  ExpectUsageError(AttendArgs("exact"), "fortran");
}

TEST_F(CliTest, Float64Dtype) {
  WriteQkv();
  WriteFile(Path("v.npy"), HandMade("{'descr': '<f8', 'fortran_order': False, "
                                    "'shape': (1, 2, 33, 16), }",
                                    8 * 2 * 33 * 16));
  ExpectUsageError(AttendArgs("exact"), "'<f8'");
}

TEST_F(CliTest, ThreeDimensionalArray) {
  WriteQkv();
  WriteRandom("q.npy", {2, 33, 16}, 4);
  ExpectUsageError(AttendArgs("exact"), "wrong rank");
}

TEST_F(CliTest, TruncatedData) {
  WriteQkv();
  const std::string bytes = ReadFile(Path("q.npy"));
  WriteFile(Path("q.npy"), bytes.substr(0, bytes.size() - 10));
  ExpectUsageError(AttendArgs("exact"), "truncated data");
}

TEST_F(CliTest, MismatchedShapes) {
  WriteQkv();
  WriteRandom("k.npy", {1, 3, 33, 16}, 5);  // heads differ
  ExpectUsageError(AttendArgs("exact"), "shape mismatch");
  WriteQkv();
  WriteRandom("v.npy", {1, 2, 34, 16}, 5);  // k, v seq differ
  ExpectUsageError(AttendArgs("exact"), "shape mismatch");
  WriteQkv();
  WriteRandom("k.npy", {1, 2, 33, 8}, 5);  // q, k dim differ
  ExpectUsageError(AttendArgs("exact"), "shape mismatch");
}

TEST_F(CliTest, UnknownMethod) {
  WriteQkv();
  ExpectUsageError(AttendArgs("reformer"), "reformer");
}

TEST_F(CliTest, BadSettings) {
  WriteQkv();
  std::vector<std::string> args = AttendArgs("performer");
  args.push_back("--num_features=0");
  ExpectUsageError(args, "num_features");

  args = AttendArgs("performer");
  args.push_back("--num_features=12x");
  ExpectUsageError(args, "num_features");

  args = AttendArgs("scatterbrain");
  args.push_back("--sparse=dense");
  ExpectUsageError(args, "sparse");

  args = AttendArgs("lsh");
  args.push_back("--lsh_hash=simhash");
  ExpectUsageError(args, "lsh_hash");

  args = AttendArgs("lsh");
  args.push_back("--lsh_transform=xbox");
  ExpectUsageError(args, "lsh_transform");

  args = AttendArgs("lsh");
  args.push_back("--kmeans_iterations=-1");
  ExpectUsageError(args, "kmeans_iterations");

  args = AttendArgs("exact");
  args.push_back("--scale=nan");
  ExpectUsageError(args, "scale");

  args = AttendArgs("exact");
  args.push_back("--key_lengths=3,4");
  ExpectUsageError(args, "key_lengths");

  args = AttendArgs("exact");
  args.push_back("--key_lengths=99");
  ExpectUsageError(args, "key_lengths");

  args = AttendArgs("exact");
  args.push_back("--backend=tpu");
  ExpectUsageError(args, "tpu");
}

TEST_F(CliTest, FlagErrors) {
  WriteQkv();
  std::vector<std::string> args = AttendArgs("exact");
  args.push_back("--frobnicate=1");
  ExpectUsageError(args, "unknown flag --frobnicate");

  args = AttendArgs("exact");
  args.erase(args.begin() + 2);  // drop --k
  ExpectUsageError(args, "missing required flag --k");

  args = AttendArgs("exact");
  args.push_back("--window");
  ExpectUsageError(args, "--window");

  args = AttendArgs("exact");
  args.push_back("--causal=maybe");
  ExpectUsageError(args, "causal");

  args = AttendArgs("exact");
  args.push_back("stray");
  ExpectUsageError(args, "stray");

  ExpectUsageError({"frobnicate"}, "unknown command");
}

TEST_F(CliTest, NonFiniteInputIsRejected) {
  WriteQkv();
  q_[5] = std::numeric_limits<float>::infinity();
  ASSERT_TRUE(WriteNpy(Path("q.npy"), {1, 2, 33, 16}, q_.data()).ok());
  ExpectUsageError(AttendArgs("exact"), "non-finite");
}

}  // namespace
}  // namespace scatterbrain
