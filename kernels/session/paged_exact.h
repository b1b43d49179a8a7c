// scatterbrain/kernels/session/paged_exact.h — exact softmax attention of a
// few query rows over a session's stored keys, read block by block in place
// (an online softmax across blocks), so an exact decode step costs one pass
// over the keys and no copy of them.
#ifndef SCATTERBRAIN_KERNELS_SESSION_PAGED_EXACT_H_
#define SCATTERBRAIN_KERNELS_SESSION_PAGED_EXACT_H_

#include <cstdint>

#include "kernels/session/paged_kv.h"

namespace scatterbrain {
namespace session {

// Rows q (n x dim) of (b, h), row r seeing keys [0, lims[r]) (rows that see
// none get zeros), scale tau; out is n x dim_v. float32 accumulation with a
// double row sum.
void PagedExactRows(const PagedKv& kv, int64_t b, int64_t h, const float* q,
                    int64_t n, const int64_t* lims, float tau, float* out);

}  // namespace session
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_KERNELS_SESSION_PAGED_EXACT_H_
