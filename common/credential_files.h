// scatterbrain/common/credential_files.h — the files that hold credentials
// (PEM certificates and keys, bearer tokens): read whole, with errors that
// name the path, and the token file's format, which the server (a set of
// accepted tokens) and the clients (the token they send) share.
//
// Token file: one token per line; surrounding spaces, blank lines and
// lines whose first non-space character is '#' are ignored. A token is
// 1..4096 visible ASCII characters (0x21..0x7E): it travels as an HTTP/2
// header value, `authorization: Bearer <token>`.
#ifndef SCATTERBRAIN_COMMON_CREDENTIAL_FILES_H_
#define SCATTERBRAIN_COMMON_CREDENTIAL_FILES_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace scatterbrain {

// The whole file. Errors: "cannot read '<path>': <strerror>" (NOT_FOUND,
// PERMISSION_DENIED, ...); a file over `max_bytes` is FAILED_PRECONDITION
// (credential files are small: a 1 GiB "certificate" is a mistake).
absl::StatusOr<std::string> ReadCredentialFile(const std::string& path,
                                               size_t max_bytes = size_t{16}
                                                                  << 20);

// The tokens of a token file's text, in order, duplicates kept.
// INVALID_ARGUMENT "line N: ..." for a malformed token (the message never
// contains the token), and "no tokens" when there is none.
absl::StatusOr<std::vector<std::string>> ParseTokens(absl::string_view text);

// ReadCredentialFile + ParseTokens; errors name the path.
absl::StatusOr<std::vector<std::string>> ReadTokenFile(const std::string& path);

}  // namespace scatterbrain

#endif  // SCATTERBRAIN_COMMON_CREDENTIAL_FILES_H_
