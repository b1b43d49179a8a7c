// tests/testutil/files.h — the file-system helpers several tests had each
// written for themselves: read and write a whole file, test for a path,
// the directory of the running test binary (where build/bin puts the
// server and the CLI too), and a scratch directory per test.
#ifndef SCATTERBRAIN_TESTS_TESTUTIL_FILES_H_
#define SCATTERBRAIN_TESTS_TESTUTIL_FILES_H_

#include <string>
#include <vector>

namespace scatterbrain {
namespace testutil {

// The whole file, bytes as they are; "" when it cannot be read.
std::string ReadFile(const std::string& path);

// Creates or truncates `path` with `bytes`; false on failure.
bool WriteFile(const std::string& path, const std::string& bytes);

// True when `path` names something (file, directory, ...).
bool Exists(const std::string& path);

// The directory holding the running executable (from /proc/self/exe, no
// trailing '/'); "." when that cannot be read.
std::string BinDir();

// <TempDir>/<name>, TempDir being gtest's (::testing::TempDir(): $TEST_TMPDIR
// or /tmp).
std::string TempPath(const std::string& name);

// A new empty directory TempPath("<prefix>.XXXXXX"), removed with all it
// holds on destruction. When it cannot be created, the constructor records
// a test failure (ADD_FAILURE) and ok() is false.
class ScratchDir {
 public:
  explicit ScratchDir(const std::string& prefix);
  ~ScratchDir();
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;

  bool ok() const { return !path_.empty(); }
  const std::string& path() const { return path_; }
  // path()/name.
  std::string File(const std::string& name) const;
  // The names of the entries in it (not "." and ".."), in no given order.
  std::vector<std::string> List() const;

 private:
  std::string path_;
};

}  // namespace testutil
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_TESTS_TESTUTIL_FILES_H_
