// tests/testutil/proc.cc — see proc.h.
#include "tests/testutil/proc.h"

#include <dirent.h>

#include <fstream>
#include <sstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace scatterbrain {
namespace testutil {
namespace {

std::string ProcDir(pid_t pid) {
  return pid == 0 ? "/proc/self" : absl::StrCat("/proc/", pid);
}

// The first number after "<key>:" in /proc/<pid>/status; -1 if absent.
int64_t StatusField(pid_t pid, const std::string& key) {
  std::ifstream in(ProcDir(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    absl::string_view rest = line;
    if (!absl::ConsumePrefix(&rest, key) || !absl::ConsumePrefix(&rest, ":"))
      continue;
    std::istringstream fields{std::string(rest)};
    int64_t value = -1;
    fields >> value;
    return fields ? value : -1;
  }
  return -1;
}

}  // namespace

int OpenFdCount(pid_t pid) {
  DIR* dir = ::opendir((ProcDir(pid) + "/fd").c_str());
  if (dir == nullptr) return -1;
  int n = 0;
  while (const dirent* e = ::readdir(dir)) {
    if (e->d_name[0] != '.') ++n;
  }
  ::closedir(dir);
  // The directory's own descriptor was open while it was read.
  return pid == 0 ? n - 1 : n;
}

int64_t ResidentBytes(pid_t pid) {
  const int64_t kib = StatusField(pid, "VmRSS");
  return kib < 0 ? -1 : kib * 1024;
}

int ThreadCount(pid_t pid) {
  return static_cast<int>(StatusField(pid, "Threads"));
}

}  // namespace testutil
}  // namespace scatterbrain
