// tests/status_matchers_test.cc — the status matchers of
// tests/testutil/status_matchers.h: StatusIs, IsOk and IsOkAndHolds match
// what they should on absl::Status and absl::StatusOr<T>, reject the rest,
// and say why (the code and message of the status they saw).
#include "tests/testutil/status_matchers.h"

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace scatterbrain {
namespace {

using ::testing::DescribeMatcher;
using ::testing::Gt;
using ::testing::HasSubstr;
using ::testing::Matcher;
using ::testing::Not;
using ::testing::Pointee;
using ::testing::StartsWith;
using testutil::IsOk;
using testutil::IsOkAndHolds;
using testutil::StatusIs;

// The explanation `matcher` gives for `value`.
template <typename T, typename M>
std::string Explain(const M& matcher, const T& value) {
  ::testing::StringMatchResultListener listener;
  ::testing::ExplainMatchResult(matcher, value, &listener);
  return listener.str();
}

TEST(StatusMatchersTest, StatusIsOnStatus) {
  const absl::Status st = absl::InvalidArgumentError("q: bad shape");
  EXPECT_THAT(st, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(
      st, StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("bad shape")));
  EXPECT_THAT(st, StatusIs(absl::StatusCode::kInvalidArgument, "q: bad shape"));
  EXPECT_THAT(st, StatusIs(absl::StatusCode::kInvalidArgument,
                           StartsWith(std::string("q:"))));
  EXPECT_THAT(st, Not(StatusIs(absl::StatusCode::kNotFound)));
  EXPECT_THAT(
      st, Not(StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("k:"))));
  EXPECT_THAT(st, Not(StatusIs(absl::StatusCode::kInvalidArgument, "q:")));
  EXPECT_THAT(absl::OkStatus(), StatusIs(absl::StatusCode::kOk));
  EXPECT_THAT(absl::OkStatus(), StatusIs(absl::StatusCode::kOk, ""));
}

TEST(StatusMatchersTest, StatusIsOnStatusOr) {
  const absl::StatusOr<int> bad = absl::UnavailableError("draining");
  EXPECT_THAT(bad, StatusIs(absl::StatusCode::kUnavailable, "draining"));
  EXPECT_THAT(bad, Not(StatusIs(absl::StatusCode::kUnavailable, "queue")));
  const absl::StatusOr<int> good = 3;
  EXPECT_THAT(good, StatusIs(absl::StatusCode::kOk));
  EXPECT_THAT(good, Not(StatusIs(absl::StatusCode::kUnavailable)));
  // Move-only values too.
  const absl::StatusOr<std::unique_ptr<int>> none =
      absl::NotFoundError("nothing");
  EXPECT_THAT(none, StatusIs(absl::StatusCode::kNotFound));
}

TEST(StatusMatchersTest, IsOk) {
  EXPECT_THAT(absl::OkStatus(), IsOk());
  EXPECT_THAT(absl::StatusOr<std::string>("x"), IsOk());
  EXPECT_THAT(absl::InternalError("boom"), Not(IsOk()));
  EXPECT_THAT(absl::StatusOr<std::string>(absl::InternalError("boom")),
              Not(IsOk()));
}

TEST(StatusMatchersTest, IsOkAndHolds) {
  EXPECT_THAT(absl::StatusOr<int>(7), IsOkAndHolds(7));
  EXPECT_THAT(absl::StatusOr<int>(7), IsOkAndHolds(Gt(6)));
  EXPECT_THAT(absl::StatusOr<int>(7), Not(IsOkAndHolds(8)));
  EXPECT_THAT(absl::StatusOr<int>(absl::InternalError("boom")),
              Not(IsOkAndHolds(::testing::_)));
  EXPECT_THAT(absl::StatusOr<std::string>("abc"), IsOkAndHolds(HasSubstr("b")));
  EXPECT_THAT(absl::StatusOr<std::unique_ptr<int>>(std::make_unique<int>(5)),
              IsOkAndHolds(Pointee(5)));
}

TEST(StatusMatchersTest, DescriptionsAndExplanations) {
  EXPECT_EQ(DescribeMatcher<absl::Status>(
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("q:"))),
            "has code INVALID_ARGUMENT and a message that has substring "
            "\"q:\"");
  EXPECT_EQ(DescribeMatcher<absl::Status>(IsOk()), "is OK");
  EXPECT_EQ(DescribeMatcher<absl::Status>(Not(IsOk())), "is not OK");
  EXPECT_EQ(DescribeMatcher<absl::StatusOr<int>>(IsOkAndHolds(7)),
            "is OK and holds a value that is equal to 7");

  // A failure names the status it saw, code and message.
  const absl::Status st = absl::NotFoundError("no file x.npy");
  EXPECT_THAT(Explain(StatusIs(absl::StatusCode::kInvalidArgument), st),
              HasSubstr("NOT_FOUND: no file x.npy"));
  EXPECT_THAT(Explain(IsOk(), st), HasSubstr("NOT_FOUND: no file x.npy"));
  EXPECT_THAT(Explain(IsOkAndHolds(1), absl::StatusOr<int>(st)),
              HasSubstr("NOT_FOUND: no file x.npy"));
  EXPECT_THAT(Explain(IsOkAndHolds(1), absl::StatusOr<int>(2)),
              HasSubstr("which holds 2"));
}

}  // namespace
}  // namespace scatterbrain
