// scatterbrain/tools/accuracy_common.h — what the two modes of
// scatterbrain_accuracy share: the methods compared at equal budget (one
// definition of each column's settings, so the synthetic and the real-data
// tables measure the same thing) and the comma-list flag parsing.
#ifndef SCATTERBRAIN_TOOLS_ACCURACY_COMMON_H_
#define SCATTERBRAIN_TOOLS_ACCURACY_COMMON_H_

#include <cstring>
#include <string>
#include <vector>

#include "kernels/params.h"

namespace scatterbrain {
namespace accuracy {

// The methods at budget Bud (features + support entries per query;
// Scatterbrain splits it half and half between its two parts).
enum class Compared {
  kPerformer,  // num_features = Bud
  kLsh,        // bucket_size = Bud, num_hashes = 1
  kLocal,      // window = Bud
  kSbLsh,      // scatterbrain, sparse lsh, num_features = bucket = Bud/2
  kSbLocal,    // scatterbrain, sparse local, num_features = window = Bud/2
  kSbAuto,     // scatterbrain, sparse auto, features = bucket = window = Bud/2
};

// `base` (tensors, seed, calibration rows, ...) set to method `m` at budget
// `bud`; every Scatterbrain column uses the calibrated estimator.
inline AttentionParams ConfigureCompared(const AttentionParams& base,
                                         Compared m, int bud) {
  AttentionParams p = base;
  switch (m) {
    case Compared::kPerformer:
      p.method = Method::kPerformer;
      p.num_features = bud;
      break;
    case Compared::kLsh:
      p.method = Method::kLsh;
      p.bucket_size = bud;
      p.num_hashes = 1;
      break;
    case Compared::kLocal:
      p.method = Method::kLocal;
      p.window = bud;
      break;
    case Compared::kSbLsh:
    case Compared::kSbLocal:
    case Compared::kSbAuto:
      p.method = Method::kScatterbrain;
      p.sparse = m == Compared::kSbLsh     ? SparseSupport::kLsh
                 : m == Compared::kSbLocal ? SparseSupport::kLocal
                                           : SparseSupport::kAuto;
      p.num_features = bud / 2;
      // Only the sizes the support uses are set (the others keep base's).
      if (m != Compared::kSbLocal) p.bucket_size = bud / 2;
      if (m != Compared::kSbLsh) p.window = bud / 2;
      if (m != Compared::kSbLocal) p.num_hashes = 1;
      p.estimator = Estimator::kCalibrated;
      break;
  }
  return p;
}

// "a,b,c" -> {"a", "b", "c"} ("" -> {""}).
inline std::vector<std::string> SplitList(const std::string& s) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos <= s.size()) {
    size_t comma = s.find(',', pos);
    if (comma == std::string::npos) comma = s.size();
    out.push_back(s.substr(pos, comma - pos));
    pos = comma + 1;
  }
  return out;
}

// The value of `arg` when it reads "<flag>=value" (flag with its dashes),
// else nullptr.
inline const char* FlagValue(const char* arg, const char* flag) {
  const size_t len = std::strlen(flag);
  if (std::strncmp(arg, flag, len) == 0 && arg[len] == '=')
    return arg + len + 1;
  return nullptr;
}

}  // namespace accuracy
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_TOOLS_ACCURACY_COMMON_H_
