// tests/status_macros_test.cc — SB_RETURN_IF_ERROR and SB_ASSIGN_OR_RETURN
// (common/status_macros.h): they return the first error unchanged, evaluate
// their expression once, go on when it is OK, assign into declarations and
// existing lvalues, move (move-only values work), and work in functions
// returning absl::Status and absl::StatusOr.
#include "common/status_macros.h"

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testutil/status_matchers.h"

namespace scatterbrain {
namespace {

using ::testing::ElementsAre;
using testutil::IsOk;
using testutil::IsOkAndHolds;
using testutil::StatusIs;

// Records each call, returns `result`.
absl::Status Step(std::vector<std::string>* log, const std::string& name,
                  absl::Status result) {
  log->push_back(name);
  return result;
}

absl::Status Chain(std::vector<std::string>* log, absl::Status second) {
  SB_RETURN_IF_ERROR(Step(log, "first", absl::OkStatus()));
  SB_RETURN_IF_ERROR(Step(log, "second", std::move(second)));
  SB_RETURN_IF_ERROR(Step(log, "third", absl::OkStatus()));
  return absl::OkStatus();
}

TEST(StatusMacrosTest, ReturnIfErrorGoesOnWhenOk) {
  std::vector<std::string> log;
  EXPECT_THAT(Chain(&log, absl::OkStatus()), IsOk());
  EXPECT_THAT(log, ElementsAre("first", "second", "third"));
}

TEST(StatusMacrosTest, ReturnIfErrorReturnsTheFirstErrorUnchanged) {
  std::vector<std::string> log;
  const absl::Status st = Chain(&log, absl::NotFoundError("no such thing"));
  EXPECT_EQ(st, absl::NotFoundError("no such thing"));
  EXPECT_THAT(log, ElementsAre("first", "second"));  // once each, no third
}

absl::StatusOr<int> ReturnIfErrorInStatusOr(bool fail) {
  // One statement each: the unbraced if / else binds as written.
  if (fail)
    SB_RETURN_IF_ERROR(absl::InternalError("boom"));
  else
    SB_RETURN_IF_ERROR(absl::OkStatus());
  return 7;
}

TEST(StatusMacrosTest, ReturnIfErrorInAFunctionReturningStatusOr) {
  EXPECT_THAT(ReturnIfErrorInStatusOr(false), IsOkAndHolds(7));
  EXPECT_THAT(ReturnIfErrorInStatusOr(true),
              StatusIs(absl::StatusCode::kInternal, "boom"));
}

absl::StatusOr<int> Half(int x, int* calls) {
  ++*calls;
  if (x % 2 != 0) return absl::InvalidArgumentError("odd");
  return x / 2;
}

// Two SB_ASSIGN_OR_RETURN in one scope (distinct temporaries), one into a
// declaration and one into an existing variable.
absl::StatusOr<int> Quarter(int x, int* calls) {
  SB_ASSIGN_OR_RETURN(const int half, Half(x, calls));
  int quarter = -1;
  SB_ASSIGN_OR_RETURN(quarter, Half(half, calls));
  return quarter;
}

TEST(StatusMacrosTest, AssignOrReturnAssignsTheValue) {
  int calls = 0;
  EXPECT_THAT(Quarter(12, &calls), IsOkAndHolds(3));
  EXPECT_EQ(calls, 2);  // each expression evaluated once
}

TEST(StatusMacrosTest, AssignOrReturnReturnsTheError) {
  int calls = 0;
  EXPECT_THAT(Quarter(7, &calls),
              StatusIs(absl::StatusCode::kInvalidArgument, "odd"));
  EXPECT_EQ(calls, 1);  // stopped at the first error
  calls = 0;
  EXPECT_THAT(Quarter(6, &calls),
              StatusIs(absl::StatusCode::kInvalidArgument, "odd"));
  EXPECT_EQ(calls, 2);
}

absl::StatusOr<std::unique_ptr<int>> MakeBox(int v) {
  if (v < 0) return absl::OutOfRangeError("negative");
  return std::make_unique<int>(v);
}

// A function returning absl::Status; a move-only value; commas in the
// expression (a template argument list, a call with two arguments).
absl::Status Unbox(int v, int* out) {
  SB_ASSIGN_OR_RETURN(std::unique_ptr<int> box, MakeBox(v));
  SB_ASSIGN_OR_RETURN(auto pair,
                      absl::StatusOr<std::pair<int, int>>(std::pair(*box, 1)));
  *out = pair.first + pair.second;
  return absl::OkStatus();
}

TEST(StatusMacrosTest, AssignOrReturnMovesAndWorksInStatusFunctions) {
  int out = 0;
  EXPECT_THAT(Unbox(41, &out), IsOk());
  EXPECT_EQ(out, 42);
  EXPECT_THAT(Unbox(-1, &out),
              StatusIs(absl::StatusCode::kOutOfRange, "negative"));
  EXPECT_EQ(out, 42);
}

}  // namespace
}  // namespace scatterbrain
