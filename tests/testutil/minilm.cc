// tests/testutil/minilm.cc — locating the MiniLM Q/K/V (see minilm.h).
#include "tests/testutil/minilm.h"

#include <cstdlib>

#include "tests/testutil/files.h"

namespace scatterbrain {
namespace testutil {

std::string FindMinilmDir(const std::string& source_dir) {
  const char* env = std::getenv("SB_MINILM_DIR");
  for (const std::string& dir : {std::string(env != nullptr ? env : ""),
                                 source_dir + "/../shared/data/minilm",
                                 std::string("/work/shared/data/minilm")}) {
    if (!dir.empty() && Exists(dir + "/layer3_q.npy")) return dir;
  }
  return "";
}

}  // namespace testutil
}  // namespace scatterbrain
