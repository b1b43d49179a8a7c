// scatterbrain/common/credential_files.cc — see credential_files.h.
#include "common/credential_files.h"

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace scatterbrain {
namespace {

constexpr size_t kMaxTokenBytes = 4096;

absl::Status ErrnoError(int err, const std::string& message) {
  switch (err) {
    case ENOENT:
    case ENOTDIR:
      return absl::NotFoundError(message);
    case EACCES:
    case EPERM:
      return absl::PermissionDeniedError(message);
    default:
      return absl::FailedPreconditionError(message);
  }
}

}  // namespace

absl::StatusOr<std::string> ReadCredentialFile(const std::string& path,
                                               size_t max_bytes) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) {
    const int err = errno;
    return ErrnoError(
        err, absl::StrCat("cannot read '", path, "': ", std::strerror(err)));
  }
  std::string out;
  char buf[8192];
  size_t n = 0;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) {
    out.append(buf, n);
    if (out.size() > max_bytes) {
      std::fclose(f);
      return absl::FailedPreconditionError(
          absl::StrCat("'", path, "' is larger than ", max_bytes, " bytes"));
    }
  }
  // A directory opens but fails to read (EISDIR).
  const bool failed = std::ferror(f) != 0;
  const int err = errno;
  std::fclose(f);
  if (failed) {
    return ErrnoError(
        err, absl::StrCat("cannot read '", path, "': ", std::strerror(err)));
  }
  return out;
}

absl::StatusOr<std::vector<std::string>> ParseTokens(absl::string_view text) {
  std::vector<std::string> tokens;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line[0] == '#') continue;
    if (line.size() > kMaxTokenBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("line ", line_number, ": a token is at most ",
                       kMaxTokenBytes, " characters"));
    }
    for (char c : line) {
      if (c < 0x21 || c > 0x7E) {
        // The character is not printed: it may be part of a secret.
        return absl::InvalidArgumentError(absl::StrCat(
            "line ", line_number,
            ": a token is one word of visible ASCII characters (no spaces, "
            "no control or non-ASCII bytes)"));
      }
    }
    tokens.emplace_back(line);
  }
  if (tokens.empty()) {
    return absl::InvalidArgumentError(
        "no tokens (one per line; blank and '#' lines are ignored)");
  }
  return tokens;
}

absl::StatusOr<std::vector<std::string>> ReadTokenFile(
    const std::string& path) {
  absl::StatusOr<std::string> text = ReadCredentialFile(path);
  if (!text.ok()) return text.status();
  absl::StatusOr<std::vector<std::string>> tokens = ParseTokens(*text);
  if (!tokens.ok()) {
    return absl::Status(
        tokens.status().code(),
        absl::StrCat("'", path, "': ", tokens.status().message()));
  }
  return tokens;
}

}  // namespace scatterbrain
