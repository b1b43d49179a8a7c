// tests/testutil/status_matchers.h — gMock matchers for absl::Status and
// absl::StatusOr<T>, so that a test states a status's code and message in
// one assertion (and a failure prints both) instead of an EXPECT_EQ on
// code() followed by an EXPECT_THAT on message():
//
//   EXPECT_THAT(st, IsOk());
//   EXPECT_THAT(st, StatusIs(absl::StatusCode::kInvalidArgument));
//   EXPECT_THAT(r, StatusIs(absl::StatusCode::kInvalidArgument,
//                           HasSubstr("num_features")));
//   EXPECT_THAT(r, IsOkAndHolds(42));   // r is an absl::StatusOr<int>
//
// StatusIs's second argument is any matcher of a std::string (the message),
// or a string, which must then equal the message. Header only; gtest, gmock
// and Abseil, no gRPC.
#ifndef SCATTERBRAIN_TESTS_TESTUTIL_STATUS_MATCHERS_H_
#define SCATTERBRAIN_TESTS_TESTUTIL_STATUS_MATCHERS_H_

#include <ostream>
#include <string>
#include <type_traits>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gmock/gmock.h"

namespace scatterbrain {
namespace testutil {
namespace internal_status_matchers {

inline const absl::Status& GetStatus(const absl::Status& status) {
  return status;
}
template <typename T>
const absl::Status& GetStatus(const absl::StatusOr<T>& status_or) {
  return status_or.status();
}

class StatusIsMatcher {
 public:
  StatusIsMatcher(absl::StatusCode code,
                  ::testing::Matcher<const std::string&> message)
      : code_(code), message_(std::move(message)) {}

  template <typename StatusType>
  bool MatchAndExplain(const StatusType& value,
                       ::testing::MatchResultListener* listener) const {
    const absl::Status& status = GetStatus(value);
    *listener << "whose status is " << status;
    if (status.code() != code_) return false;
    ::testing::StringMatchResultListener inner;
    if (!message_.MatchAndExplain(std::string(status.message()), &inner)) {
      if (!inner.str().empty()) *listener << ", the message " << inner.str();
      return false;
    }
    return true;
  }

  void DescribeTo(std::ostream* os) const {
    *os << "has code " << absl::StatusCodeToString(code_)
        << " and a message that ";
    message_.DescribeTo(os);
  }

  void DescribeNegationTo(std::ostream* os) const {
    *os << "has a code other than " << absl::StatusCodeToString(code_)
        << " or a message that ";
    message_.DescribeNegationTo(os);
  }

 private:
  absl::StatusCode code_;
  ::testing::Matcher<const std::string&> message_;
};

class IsOkMatcher {
 public:
  template <typename StatusType>
  bool MatchAndExplain(const StatusType& value,
                       ::testing::MatchResultListener* listener) const {
    const absl::Status& status = GetStatus(value);
    if (!status.ok()) *listener << "whose status is " << status;
    return status.ok();
  }
  void DescribeTo(std::ostream* os) const { *os << "is OK"; }
  void DescribeNegationTo(std::ostream* os) const { *os << "is not OK"; }
};

// IsOkAndHolds's matcher once the StatusOr type is known.
template <typename StatusOrType>
class IsOkAndHoldsMatcherImpl
    : public ::testing::MatcherInterface<StatusOrType> {
 public:
  using value_type = typename std::remove_cv_t<
      std::remove_reference_t<StatusOrType>>::value_type;

  template <typename InnerMatcher>
  explicit IsOkAndHoldsMatcherImpl(InnerMatcher&& inner)
      : inner_(::testing::SafeMatcherCast<const value_type&>(
            std::forward<InnerMatcher>(inner))) {}

  bool MatchAndExplain(
      StatusOrType actual,
      ::testing::MatchResultListener* listener) const override {
    if (!actual.ok()) {
      *listener << "whose status is " << actual.status();
      return false;
    }
    *listener << "which holds " << ::testing::PrintToString(*actual);
    ::testing::StringMatchResultListener inner;
    const bool matches = inner_.MatchAndExplain(*actual, &inner);
    if (!inner.str().empty()) *listener << ", " << inner.str();
    return matches;
  }
  void DescribeTo(std::ostream* os) const override {
    *os << "is OK and holds a value that ";
    inner_.DescribeTo(os);
  }
  void DescribeNegationTo(std::ostream* os) const override {
    *os << "is not OK or holds a value that ";
    inner_.DescribeNegationTo(os);
  }

 private:
  const ::testing::Matcher<const value_type&> inner_;
};

template <typename InnerMatcher>
class IsOkAndHoldsMatcher {
 public:
  explicit IsOkAndHoldsMatcher(InnerMatcher inner) : inner_(std::move(inner)) {}

  template <typename StatusOrType>
  operator ::testing::Matcher<StatusOrType>() const {  // NOLINT: implicit
    return ::testing::Matcher<StatusOrType>(
        new IsOkAndHoldsMatcherImpl<const StatusOrType&>(inner_));
  }

 private:
  const InnerMatcher inner_;
};

}  // namespace internal_status_matchers

// Matches an absl::Status or absl::StatusOr<T> whose code is `code` and
// whose message matches `message` (a std::string matcher, or a string that
// must equal the message).
template <typename MessageMatcher>
::testing::PolymorphicMatcher<internal_status_matchers::StatusIsMatcher>
StatusIs(absl::StatusCode code, MessageMatcher&& message) {
  return ::testing::MakePolymorphicMatcher(
      internal_status_matchers::StatusIsMatcher(
          code, ::testing::MatcherCast<const std::string&>(
                    std::forward<MessageMatcher>(message))));
}

// Matches an absl::Status or absl::StatusOr<T> whose code is `code`, any
// message.
inline ::testing::PolymorphicMatcher<internal_status_matchers::StatusIsMatcher>
StatusIs(absl::StatusCode code) {
  return StatusIs(code, ::testing::_);
}

// Matches an OK absl::Status or absl::StatusOr<T>.
inline ::testing::PolymorphicMatcher<internal_status_matchers::IsOkMatcher>
IsOk() {
  return ::testing::MakePolymorphicMatcher(
      internal_status_matchers::IsOkMatcher());
}

// Matches an OK absl::StatusOr<T> whose value matches `inner` (a matcher
// of T, or a value the T must equal).
template <typename InnerMatcher>
internal_status_matchers::IsOkAndHoldsMatcher<std::decay_t<InnerMatcher>>
IsOkAndHolds(InnerMatcher&& inner) {
  return internal_status_matchers::IsOkAndHoldsMatcher<
      std::decay_t<InnerMatcher>>(std::forward<InnerMatcher>(inner));
}

}  // namespace testutil
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_TESTS_TESTUTIL_STATUS_MATCHERS_H_
