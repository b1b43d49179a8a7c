// scatterbrain/kernels/session/paged_kv.cc — see paged_kv.h.
#include "kernels/session/paged_kv.h"

#include <algorithm>
#include <cstring>

namespace scatterbrain {
namespace session {

PagedKv::PagedKv(int64_t batch, int64_t heads, int64_t dim, int64_t dim_v,
                 DType dtype, int64_t block_tokens)
    : batch_(batch),
      heads_(heads),
      dim_(dim),
      dim_v_(dim_v),
      dtype_(dtype),
      block_tokens_(block_tokens),
      esize_(DTypeBytes(dtype)),
      block_bytes_(heads * block_tokens * (dim + dim_v) * DTypeBytes(dtype)),
      blocks_(batch),
      length_(batch, 0) {}

int64_t PagedKv::total_blocks() const {
  int64_t n = 0;
  for (const auto& b : blocks_) n += static_cast<int64_t>(b.size());
  return n;
}

int64_t PagedKv::payload_bytes() const {
  int64_t tokens = 0;
  for (int64_t l : length_) tokens += l;
  return tokens * heads_ * (dim_ + dim_v_) * esize_;
}

int64_t PagedKv::BlocksNeeded(int64_t b, int64_t extra) const {
  const int64_t need = (length_[b] + extra + block_tokens_ - 1) / block_tokens_;
  return std::max<int64_t>(0, need - blocks(b));
}

void PagedKv::AddBlocks(int64_t b, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    blocks_[b].emplace_back(new char[static_cast<size_t>(block_bytes_)]);
}

int64_t PagedKv::TrimBlocks(int64_t b) {
  const int64_t keep = (length_[b] + block_tokens_ - 1) / block_tokens_;
  const int64_t freed = blocks(b) - keep;
  if (freed > 0) blocks_[b].resize(static_cast<size_t>(keep));
  return std::max<int64_t>(freed, 0);
}

const char* PagedKv::KeyPtr(int64_t b, int64_t h, int64_t j) const {
  const char* block = blocks_[b][j / block_tokens_].get();
  return block + ((h * block_tokens_ + j % block_tokens_) * dim_) * esize_;
}
const char* PagedKv::ValuePtr(int64_t b, int64_t h, int64_t j) const {
  const char* block = blocks_[b][j / block_tokens_].get();
  const int64_t keys = heads_ * block_tokens_ * dim_;
  return block +
         (keys + (h * block_tokens_ + j % block_tokens_) * dim_v_) * esize_;
}
char* PagedKv::KeyPtr(int64_t b, int64_t h, int64_t j) {
  return const_cast<char*>(static_cast<const PagedKv*>(this)->KeyPtr(b, h, j));
}
char* PagedKv::ValuePtr(int64_t b, int64_t h, int64_t j) {
  return const_cast<char*>(
      static_cast<const PagedKv*>(this)->ValuePtr(b, h, j));
}

void PagedKv::Write(int64_t b, int64_t h, int64_t pos, int64_t count,
                    const float* k, const float* v) {
  // Within a block a head's rows are contiguous: write block by block.
  for (int64_t j = pos; j < pos + count;) {
    const int64_t end =
        std::min(pos + count, (j / block_tokens_ + 1) * block_tokens_);
    const int64_t n = end - j;
    EncodeFromFloat(dtype_, k + (j - pos) * dim_, n * dim_, KeyPtr(b, h, j));
    EncodeFromFloat(dtype_, v + (j - pos) * dim_v_, n * dim_v_,
                    ValuePtr(b, h, j));
    j = end;
  }
}

void PagedKv::ReadKey(int64_t b, int64_t h, int64_t j, float* dst) const {
  DecodeToFloat(dtype_, KeyPtr(b, h, j), dim_, dst);
}
void PagedKv::ReadValue(int64_t b, int64_t h, int64_t j, float* dst) const {
  DecodeToFloat(dtype_, ValuePtr(b, h, j), dim_v_, dst);
}

void PagedKv::Prefetch(int64_t b, int64_t h, int64_t j) const {
  const char* k = KeyPtr(b, h, j);
  const char* v = ValuePtr(b, h, j);
  for (int64_t o = 0; o < dim_ * esize_; o += 64) __builtin_prefetch(k + o);
  for (int64_t o = 0; o < dim_v_ * esize_; o += 64) __builtin_prefetch(v + o);
}

const float* PagedKv::KeyRows(int64_t b, int64_t h, int64_t j0, int64_t j1,
                              float* scratch) const {
  const char* src = KeyPtr(b, h, j0);
  if (dtype_ == DType::kFloat32) return reinterpret_cast<const float*>(src);
  DecodeToFloat(dtype_, src, (j1 - j0) * dim_, scratch);
  return scratch;
}
const float* PagedKv::ValueRows(int64_t b, int64_t h, int64_t j0, int64_t j1,
                                float* scratch) const {
  const char* src = ValuePtr(b, h, j0);
  if (dtype_ == DType::kFloat32) return reinterpret_cast<const float*>(src);
  DecodeToFloat(dtype_, src, (j1 - j0) * dim_v_, scratch);
  return scratch;
}

void PagedKv::GatherKeys(int64_t b, int64_t h, int64_t n, float* dst) const {
  for (int64_t j = 0; j < n; j += block_tokens_) {
    const int64_t m = std::min(block_tokens_, n - j);
    DecodeToFloat(dtype_, KeyPtr(b, h, j), m * dim_, dst + j * dim_);
  }
}
void PagedKv::GatherValues(int64_t b, int64_t h, int64_t n, float* dst) const {
  for (int64_t j = 0; j < n; j += block_tokens_) {
    const int64_t m = std::min(block_tokens_, n - j);
    DecodeToFloat(dtype_, ValuePtr(b, h, j), m * dim_v_, dst + j * dim_v_);
  }
}

}  // namespace session
}  // namespace scatterbrain
