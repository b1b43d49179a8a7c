// tests/accuracy_npy_test.cc — scatterbrain_accuracy's real-data mode
// (--npy_dir) end to end: on a tiny generated directory the tables have the
// expected rows and the yardsticks behave as their definitions say (the
// oracle over every key is exact attention, the mean of V is not, the
// backend's exact method is at rounding level, all the mass of a row of
// fewer than 64 keys lies in its top 64); bad input exits as documented; on
// the MiniLM data (when present) the sparsity figures match its README.
// Also the synthetic mode's --auto column.
#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "client/cli/npy.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testutil/files.h"
#include "tests/testutil/minilm.h"
#include "tests/testutil/process.h"
#include "tests/testutil/random.h"

#ifndef SB_ACCURACY_PATH
#error "SB_ACCURACY_PATH must name the scatterbrain_accuracy binary"
#endif

namespace scatterbrain {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// The cells of the Markdown row of `table_text` whose first two cells are
// `first` and `second` (empty when there is no such row).
std::vector<std::string> Row(const std::string& text, const std::string& first,
                             const std::string& second) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (!absl::ConsumePrefix(&line, "| ")) continue;
    absl::ConsumeSuffix(&line, " |");
    std::vector<std::string> cells = absl::StrSplit(line, " | ");
    if (cells.size() >= 2 && cells[0] == first && cells[1] == second)
      return cells;
  }
  return {};
}

double Num(const std::string& cell) {
  char* end = nullptr;
  const double x = std::strtod(cell.c_str(), &end);
  return end != cell.c_str() && *end == '\0' ? x : std::nan("");
}

class AccuracyNpyTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(dir_.ok()); }

  testutil::CommandResult Run(const std::vector<std::string>& args) {
    std::vector<std::string> argv = {SB_ACCURACY_PATH};
    argv.insert(argv.end(), args.begin(), args.end());
    return testutil::RunCommand(argv, dir_.path());
  }

  // layer{L}_{q,k,v}.npy of shape [1, 2, n, 8], float32 N(0, 1) (q and k
  // scaled so the attention is neither uniform nor one-hot).
  void WriteLayer(int layer, int64_t n, int64_t kv_n = -1) {
    const std::string stem = data_.File("layer" + std::to_string(layer));
    const char* names[3] = {"_q.npy", "_k.npy", "_v.npy"};
    for (int t = 0; t < 3; ++t) {
      const std::vector<int64_t> shape = {1, 2, t == 0 || kv_n < 0 ? n : kv_n,
                                          8};
      std::vector<float> x = testutil::RandomNormal(
          shape[0] * shape[1] * shape[2] * shape[3], 10 * layer + t);
      if (t < 2)
        for (float& f : x) f *= 1.5f;
      ASSERT_TRUE(WriteNpy(stem + names[t], shape, x.data()).ok());
    }
  }

  testutil::ScratchDir dir_{"accuracy_npy_test"};
  testutil::ScratchDir data_{"accuracy_npy_data"};
};

TEST_F(AccuracyNpyTest, TinyDirectoryGivesEveryRowAndSaneYardsticks) {
  constexpr int64_t kN = 48;  // more rows than calibration computes
  WriteLayer(0, kN);
  WriteLayer(2, kN);  // layers are found by globbing: 0 and 2
  const auto r =
      Run({"--npy_dir=" + data_.path(), "--budgets=8,48", "--seeds=1,2",
           "--targets=0.25", "--threads=1", "--study", "--study_budget=8"});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_THAT(r.out, HasSubstr("layers 0,2, [B, H, N, d] = [1, 2, 48, 8]"));
  for (const char* layer : {"0", "2", "**mean**"}) {
    for (const char* bud : {"8", "48"}) {
      SCOPED_TRACE(std::string(layer) + " budget " + bud);
      const std::vector<std::string> row = Row(r.out, layer, bud);
      // layer, budget, exact, 7 methods, oracle, mean(V), 2 ratios, the
      // +global ratio and the picks.
      ASSERT_EQ(row.size(), 16u) << r.out;
      EXPECT_LT(Num(row[2]), 1e-5);  // the backend's exact method
      for (int c = 3; c <= 9; ++c) {
        EXPECT_GE(Num(row[c]), 0) << c;
        EXPECT_LT(Num(row[c]), 3) << c;
      }
      const double oracle = Num(row[10]), mean_v = Num(row[11]);
      // With k >= N keys the oracle is exact attention itself.
      if (std::string(bud) == "48") EXPECT_LT(oracle, 1e-9);
      if (std::string(bud) == "8") EXPECT_GT(oracle, 1e-3);
      EXPECT_GT(mean_v, 0.05);
      EXPECT_LT(mean_v, 2);
      EXPECT_GT(Num(row[12]), 0);  // SB-auto / best, mean and max over seeds
      EXPECT_GE(Num(row[13]), Num(row[12]) - 1e-3);
    }
  }
  for (const char* layer : {"0", "2"}) {
    SCOPED_TRACE(layer);
    const std::vector<std::string> sp = [&] {
      // Sparsity rows: | layer | entropy | top32 | top64 | local | 0 | last |
      for (absl::string_view line : absl::StrSplit(r.out, '\n')) {
        std::vector<std::string> c = absl::StrSplit(line, " | ");
        if (c.size() == 7 && c[0] == std::string("| ") + layer) return c;
      }
      return std::vector<std::string>{};
    }();
    ASSERT_EQ(sp.size(), 7u) << r.out;
    EXPECT_GT(Num(sp[1]), 0);
    EXPECT_LE(Num(sp[1]), std::log(kN) + 1e-2);
    EXPECT_GT(Num(sp[2]), 32.0 / kN);    // the top 32 hold more than average
    EXPECT_NEAR(Num(sp[3]), 1.0, 1e-3);  // 48 keys: all in the top 64
    EXPECT_GT(Num(sp[4]), 0);
    EXPECT_LT(Num(sp[4]), 1);
    // Error target: 2 seeds x 2 heads per layer.
    const std::vector<std::string> t = Row(r.out, "0.25", layer);
    ASSERT_EQ(t.size(), 12u) << r.out;
    EXPECT_EQ(t[2], "4");
    EXPECT_GE(Num(t[3]), 0);
    EXPECT_LE(Num(t[3]), 1);
    EXPECT_GE(Num(t[4]), 0);
  }
  EXPECT_EQ(Row(r.out, "0.25", "**all**").at(2), "8");
  EXPECT_THAT(r.out, HasSubstr("| lsh kmeans 3 it | lsh kmeans 8 it |"));
  EXPECT_THAT(r.out, HasSubstr("target_error 0.25 met on >= 95%"));
  EXPECT_THAT(r.out, HasSubstr("No run errors or non-finite outputs."));
}

TEST_F(AccuracyNpyTest, NoGlobalColumnWhenGlobalKeysIsZero) {
  WriteLayer(0, 16);
  const auto r = Run({"--npy_dir=" + data_.path(), "--budgets=8", "--seeds=3",
                      "--targets=0.5", "--global_keys=0"});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_THAT(r.out, Not(HasSubstr("SB-auto+global")));
  EXPECT_EQ(Row(r.out, "0", "8").size(), 14u) << r.out;
}

TEST_F(AccuracyNpyTest, BadInputExitsAsDocumented) {
  // Bad flags: 2.
  EXPECT_EQ(Run({"--npy_dir=" + data_.path(), "--budgets=7"}).code, 2);
  EXPECT_EQ(Run({"--npy_dir=" + data_.path(), "--targets=1.5"}).code, 2);
  EXPECT_EQ(Run({"--npy_dir=" + data_.path(), "--bogus"}).code, 2);
  // No layers, or q and k/v that do not fit together: 1, one error line.
  auto r = Run({"--npy_dir=" + data_.path()});
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.err, HasSubstr("error: "));
  WriteLayer(0, 16, /*kv_n=*/12);  // q [.., 16, 8], k [.., 12, 8]: fine
  WriteLayer(1, 16);
  ASSERT_TRUE(WriteNpy(data_.File("layer1_v.npy"), {1, 2, 15, 8},
                       testutil::RandomNormal(240, 1).data())
                  .ok());
  r = Run({"--npy_dir=" + data_.path(), "--layers=1", "--budgets=8",
           "--seeds=1", "--targets=0.5"});
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.err, HasSubstr("shapes do not match"));
  r = Run({"--npy_dir=" + data_.path(), "--layers=0", "--budgets=8",
           "--seeds=1", "--targets=0.5"});
  EXPECT_EQ(r.code, 0) << r.out << r.err;
}

TEST_F(AccuracyNpyTest, MiniLmLayerOneMatchesItsReadme) {
  const std::string root = testing::MiniLmDir();
  if (root.empty()) GTEST_SKIP() << "no MiniLM data (set SB_MINILM_DIR)";
  const auto r = Run({"--npy_dir=" + root, "--layers=1", "--budgets=32",
                      "--seeds=1", "--targets=0.25"});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  const std::vector<std::string> row = Row(r.out, "1", "32");
  ASSERT_EQ(row.size(), 16u) << r.out;
  // The README: mean of V 0.6 to 0.8-ish per layer; the oracle top-32
  // beats every method that has no oracle.
  EXPECT_GT(Num(row[11]), 0.5);
  EXPECT_LT(Num(row[11]), 1.0);
  for (int c = 3; c <= 9; ++c) EXPECT_LT(Num(row[10]), Num(row[c])) << c;
  // Sparsity of layer 1 as the data's README gives it (2 decimals).
  bool found = false;
  for (absl::string_view line : absl::StrSplit(r.out, '\n')) {
    std::vector<std::string> c = absl::StrSplit(line, " | ");
    if (c.size() != 7 || c[0] != "| 1") continue;
    found = true;
    EXPECT_NEAR(Num(c[1]), 3.42, 0.006);
    EXPECT_NEAR(Num(c[2]), 0.77, 0.006);
    EXPECT_NEAR(Num(c[3]), 0.85, 0.006);
    EXPECT_NEAR(Num(c[4]), 0.50, 0.006);
    EXPECT_NEAR(Num(c[5]), 0.09, 0.006);
  }
  EXPECT_TRUE(found) << r.out;
}

TEST_F(AccuracyNpyTest, SyntheticAutoColumnOnlyWhenAsked) {
  const std::vector<std::string> args = {
      "--n=64", "--heads=1", "--families=gaussian:1", "--budgets=16"};
  auto r = Run(args);
  EXPECT_THAT(r.out, HasSubstr("| gaussian (std 1) | 16 |"));
  EXPECT_THAT(r.out, Not(HasSubstr("SB-auto")));
  std::vector<std::string> with_auto = args;
  with_auto.push_back("--auto");
  r = Run(with_auto);
  const std::vector<std::string> row = Row(r.out, "gaussian (std 1)", "16");
  ASSERT_EQ(row.size(), 13u) << r.out;
  EXPECT_GE(Num(row[11]), 0);  // SB-auto's error
  EXPECT_GT(Num(row[12]), 0);  // its ratio to the best baseline
}

}  // namespace
}  // namespace scatterbrain
