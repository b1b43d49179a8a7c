// scatterbrain/kernels/session/paged_kv.h — a session's keys and values in
// fixed-size blocks (PagedAttention's layout): per sequence a list of
// blocks of `block_tokens` tokens, each holding every head's keys
// [heads, block_tokens, dim] then values [heads, block_tokens, dim_v] in the
// storage dtype. Appending fills the last block and adds blocks; nothing
// stored ever moves, so an append costs what it brings.
//
// Not thread-safe: KvSession guards it. Rows past a sequence's committed
// length may be written (an append in progress) and are invisible until
// Commit.
#ifndef SCATTERBRAIN_KERNELS_SESSION_PAGED_KV_H_
#define SCATTERBRAIN_KERNELS_SESSION_PAGED_KV_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "common/dtype.h"

namespace scatterbrain {
namespace session {

class PagedKv {
 public:
  PagedKv(int64_t batch, int64_t heads, int64_t dim, int64_t dim_v, DType dtype,
          int64_t block_tokens);

  int64_t batch() const { return batch_; }
  int64_t heads() const { return heads_; }
  int64_t dim() const { return dim_; }
  int64_t dim_v() const { return dim_v_; }
  DType dtype() const { return dtype_; }
  int64_t block_tokens() const { return block_tokens_; }
  // Bytes of one block (one sequence, every head, keys and values).
  int64_t block_bytes() const { return block_bytes_; }
  int64_t length(int64_t b) const { return length_[b]; }
  int64_t blocks(int64_t b) const {
    return static_cast<int64_t>(blocks_[b].size());
  }
  int64_t total_blocks() const;
  // Stored bytes of the committed tokens (no block rounding).
  int64_t payload_bytes() const;

  // Blocks sequence b needs beyond those it has to hold `extra` more tokens.
  int64_t BlocksNeeded(int64_t b, int64_t extra) const;
  // Adds `n` blocks to sequence b (the caller reserved their bytes).
  void AddBlocks(int64_t b, int64_t n);
  // Frees the blocks of sequence b past those its committed length needs;
  // returns how many were freed.
  int64_t TrimBlocks(int64_t b);

  // Writes `count` tokens of head h of sequence b at positions [pos,
  // pos + count) from float32 rows k (count x dim) and v (count x dim_v),
  // rounded to the storage dtype. The blocks must exist.
  void Write(int64_t b, int64_t h, int64_t pos, int64_t count, const float* k,
             const float* v);
  void Commit(int64_t b, int64_t length) { length_[b] = length; }

  // Key / value j of (b, h) as float32.
  void ReadKey(int64_t b, int64_t h, int64_t j, float* dst) const;
  void ReadValue(int64_t b, int64_t h, int64_t j, float* dst) const;
  // Hints the cache to load key and value j of (b, h) (a gather of
  // scattered rows issues these first, so their misses overlap).
  void Prefetch(int64_t b, int64_t h, int64_t j) const;
  // Tokens [j0, j1) of (b, h), which must lie in one block, as float32 rows
  // (dst rows of dim / dim_v): no copy when stored as float32 (the block's
  // own memory is returned and `scratch` unused), else decoded into
  // `scratch` (at least (j1 - j0) * max(dim, dim_v) floats).
  const float* KeyRows(int64_t b, int64_t h, int64_t j0, int64_t j1,
                       float* scratch) const;
  const float* ValueRows(int64_t b, int64_t h, int64_t j0, int64_t j1,
                         float* scratch) const;
  // Tokens [0, n) of (b, h) as contiguous float32 rows.
  void GatherKeys(int64_t b, int64_t h, int64_t n, float* dst) const;
  void GatherValues(int64_t b, int64_t h, int64_t n, float* dst) const;

 private:
  const char* KeyPtr(int64_t b, int64_t h, int64_t j) const;
  const char* ValuePtr(int64_t b, int64_t h, int64_t j) const;
  char* KeyPtr(int64_t b, int64_t h, int64_t j);
  char* ValuePtr(int64_t b, int64_t h, int64_t j);

  const int64_t batch_, heads_, dim_, dim_v_;
  const DType dtype_;
  const int64_t block_tokens_;
  const int64_t esize_;
  const int64_t block_bytes_;
  std::vector<std::vector<std::unique_ptr<char[]>>> blocks_;
  std::vector<int64_t> length_;
};

}  // namespace session
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_KERNELS_SESSION_PAGED_KV_H_
