// scatterbrain/tests/testutil/minilm.cc
#include "tests/testutil/minilm.h"

#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "client/cli/npy.h"

namespace scatterbrain {
namespace testing {

std::string MiniLmDir() {
  const char* env = std::getenv("SB_MINILM_DIR");
  for (const std::string& dir :
       {std::string(env != nullptr ? env : ""),
        std::string(SB_SOURCE_DIR) + "/../shared/data/minilm",
        std::string("/work/shared/data/minilm")}) {
    if (dir.empty()) continue;
    std::FILE* probe = std::fopen((dir + "/layer0_q.npy").c_str(), "rb");
    if (probe == nullptr) continue;
    std::fclose(probe);
    return dir;
  }
  return "";
}

absl::StatusOr<MiniLmLayer> LoadMiniLmLayer(const std::string& dir, int layer) {
  MiniLmLayer out;
  std::vector<float>* dst[3] = {&out.q, &out.k, &out.v};
  const char* names[3] = {"q", "k", "v"};
  for (int t = 0; t < 3; ++t) {
    absl::StatusOr<NpyArray> a =
        ReadNpy(absl::StrCat(dir, "/layer", layer, "_", names[t], ".npy"));
    if (!a.ok()) return a.status();
    if (a->shape.size() != 4)
      return absl::InvalidArgumentError(
          absl::StrCat(names[t], ": expected 4 dimensions"));
    *dst[t] = std::move(a->data);
    out.batch = a->shape[0];
    out.heads = a->shape[1];
    out.n = a->shape[2];
    out.d = a->shape[3];
  }
  return out;
}

}  // namespace testing
}  // namespace scatterbrain
