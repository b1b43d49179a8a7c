// scatterbrain/common/status_macros.h — early return on an error Status:
// SB_RETURN_IF_ERROR and SB_ASSIGN_OR_RETURN, for the chains of
// `if (!st.ok()) return st;` that validation and setup code would otherwise
// repeat. Abseil only (absl::Status, absl::StatusOr).
//
//   absl::Status Check(const AttentionParams& p) {
//     SB_RETURN_IF_ERROR(CheckShape(p));
//     SB_RETURN_IF_ERROR(CheckStrides(p));
//     return absl::OkStatus();
//   }
//
//   absl::StatusOr<Result> Run(const Options& o) {
//     SB_ASSIGN_OR_RETURN(std::unique_ptr<Backend> backend, MakeBackend(o));
//     SB_ASSIGN_OR_RETURN(stats_, backend->Forward(p));  // an existing lvalue
//     ...
//   }
//
// SB_RETURN_IF_ERROR(expr): `expr` is an absl::Status, evaluated once; if it
// is not OK, the enclosing function returns it. A single statement: safe as
// the body of an unbraced if / else.
//
// SB_ASSIGN_OR_RETURN(lhs, expr): `expr` is an absl::StatusOr<T>, evaluated
// once; if it is not OK, the enclosing function returns its status, else
// its value is moved into `lhs` — a declaration (`T x`, `const T x`,
// `auto x`) or an existing lvalue. It expands to several statements:
//   - not as the unbraced body of an if / else / loop (put braces around);
//   - its temporary is named after the line (__LINE__), so two of them on
//     one line do not compile (write one per line);
//   - `lhs` cannot contain an unparenthesised comma
//     (`std::pair<int, int> p`): use an alias or `auto`. Commas in `expr`
//     are fine.
//
// Both work in functions returning absl::Status or any absl::StatusOr<U>
// (the returned absl::Status converts). The status is returned as is: no
// message is added.
#ifndef SCATTERBRAIN_COMMON_STATUS_MACROS_H_
#define SCATTERBRAIN_COMMON_STATUS_MACROS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define SB_RETURN_IF_ERROR(expr)                      \
  do {                                                \
    ::absl::Status sb_status_macros_status_ = (expr); \
    if (!sb_status_macros_status_.ok()) {             \
      return sb_status_macros_status_;                \
    }                                                 \
  } while (false)

#define SB_ASSIGN_OR_RETURN(lhs, ...)                                      \
  SB_STATUS_MACROS_ASSIGN_OR_RETURN_(                                      \
      SB_STATUS_MACROS_CONCAT_(sb_status_macros_statusor_, __LINE__), lhs, \
      __VA_ARGS__)

// Implementation details.
#define SB_STATUS_MACROS_CONCAT_INNER_(a, b) a##b
#define SB_STATUS_MACROS_CONCAT_(a, b) SB_STATUS_MACROS_CONCAT_INNER_(a, b)

#define SB_STATUS_MACROS_ASSIGN_OR_RETURN_(statusor, lhs, ...) \
  auto statusor = (__VA_ARGS__);                               \
  if (!statusor.ok()) {                                        \
    return std::move(statusor).status();                       \
  }                                                            \
  lhs = *std::move(statusor)

#endif  // SCATTERBRAIN_COMMON_STATUS_MACROS_H_
