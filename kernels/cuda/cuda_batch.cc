// scatterbrain/kernels/cuda/cuda_batch.cc — see cuda_batch.h.
//
// Order on the stream: input copies and conversions; the metadata (request
// table, slice and row offsets, key lengths, zeroed counters, the scan
// flags) in one copy from the pinned staging area; the non-finite scans of
// device-resident inputs; the launcher; output conversions and copies; the
// read-back of counters and flags into the staging area. Host refs that are
// not pinned are copied by cudaMemcpyAsync as they are (the caller keeps
// them alive until `done`); the copy is then synchronous for the host.
#include "kernels/cuda/cuda_batch.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cuda/convert.h"
#include "kernels/cuda/cuda_check.h"

namespace scatterbrain {
namespace cuda {
namespace {

constexpr int64_t kAlign = 256;  // DeviceArena's rounding
constexpr unsigned long long kNoBad = ~0ull;

int64_t RoundUp(int64_t bytes) {
  return (std::max<int64_t>(bytes, 1) + kAlign - 1) / kAlign * kAlign;
}

bool OnDevice(MemorySpace s) { return s == MemorySpace::kDevice; }

// Which arena buffers a tensor ref needs: a float32 copy (unless it is
// device float32, used in place) and, for host refs in a 16-bit dtype, the
// raw bytes on the device.
struct RefPlan {
  bool f32 = false;
  bool raw = false;
};
RefPlan PlanRef(MemorySpace space, DType dtype) {
  RefPlan p;
  p.f32 = !(OnDevice(space) && dtype == DType::kFloat32);
  p.raw = !OnDevice(space) && dtype != DType::kFloat32;
  return p;
}

// Byte layout of the metadata block (the same in staging and on the
// device); every part 16-byte aligned.
struct MetaLayout {
  int64_t requests = 0, slice_offsets = 0, q_rows = 0, k_rows = 0,
          key_lengths = 0, counters = 0, first_bad = 0, bytes = 0;
  // The read-back area in staging, after the block: counters, first_bad.
  int64_t back_counters = 0, back_first_bad = 0, staging_bytes = 0;
};
int64_t Align16(int64_t x) { return (x + 15) / 16 * 16; }
MetaLayout Layout(int n, int64_t slices, int64_t key_length_entries) {
  MetaLayout m;
  int64_t at = 0;
  auto take = [&at](int64_t bytes) {
    const int64_t here = at;
    at = Align16(at + bytes);
    return here;
  };
  m.requests = take(int64_t{n} * sizeof(DeviceRequest));
  m.slice_offsets = take((int64_t{n} + 1) * 8);
  m.q_rows = take((slices + 1) * 8);
  m.k_rows = take((slices + 1) * 8);
  m.key_lengths = take(key_length_entries * 4);
  m.counters = take(int64_t{n} * sizeof(DeviceCounters));
  m.first_bad = take(int64_t{n} * 3 * 8);
  m.bytes = at;
  m.back_counters = take(int64_t{n} * sizeof(DeviceCounters));
  m.back_first_bad = take(int64_t{n} * 3 * 8);
  m.staging_bytes = at;
  return m;
}

struct Totals {
  int64_t slices = 0, q_rows = 0, k_rows = 0, key_lengths = 0;
  int32_t max_seq_q = 0, max_seq_k = 0, max_heads = 0;
};

absl::Status Count(absl::Span<AttentionCall* const> calls, Totals* t) {
  constexpr int64_t kInt32 = std::numeric_limits<int32_t>::max();
  for (const AttentionCall* c : calls) {
    const AttentionParams& p = c->params;
    if (p.batch > kInt32 || p.heads > kInt32 || p.seq_q > kInt32 ||
        p.seq_k > kInt32) {
      return absl::InvalidArgumentError(
          "cuda backend: batch, heads and sequence lengths must fit in int32");
    }
    const int64_t slices = p.batch * p.heads;
    t->slices += slices;
    t->q_rows += slices * p.seq_q;
    t->k_rows += slices * p.seq_k;
    if (p.key_lengths != nullptr) t->key_lengths += p.batch;
    t->max_seq_q =
        std::max<int32_t>(t->max_seq_q, static_cast<int32_t>(p.seq_q));
    t->max_seq_k =
        std::max<int32_t>(t->max_seq_k, static_cast<int32_t>(p.seq_k));
    t->max_heads =
        std::max<int32_t>(t->max_heads, static_cast<int32_t>(p.heads));
  }
  if (t->slices > kInt32) {
    return absl::InvalidArgumentError(
        absl::StrCat("cuda backend: ", t->slices,
                     " (batch, head) slices in one batch; at most ", kInt32));
  }
  return absl::OkStatus();
}

// Arena bytes of one call's tensor copies.
int64_t CallTensorBytes(const AttentionCall& c) {
  const AttentionShape s = ShapeOf(c.params);
  int64_t bytes = 0;
  auto add = [&bytes](const RefPlan& p, int64_t n, DType dtype) {
    if (p.f32) bytes += RoundUp(n * 4);
    if (p.raw) bytes += RoundUp(n * DTypeBytes(dtype));
  };
  add(PlanRef(c.q.space, c.q.dtype), s.q_elements(), c.q.dtype);
  add(PlanRef(c.k.space, c.k.dtype), s.k_elements(), c.k.dtype);
  add(PlanRef(c.v.space, c.v.dtype), s.v_elements(), c.v.dtype);
  add(PlanRef(c.out.space, c.out.dtype), s.out_elements(), c.out.dtype);
  return bytes;
}

// An input ref as device float32: device float32 in place, anything else
// copied and / or converted into the arena (enqueued on the stream).
absl::StatusOr<const float*> Upload(const TensorRef& t, int64_t n,
                                    const StreamContext& sc) {
  const RefPlan plan = PlanRef(t.space, t.dtype);
  if (!plan.f32) return static_cast<const float*>(t.data);
  SB_ASSIGN_OR_RETURN(float* f32, sc.arena->AllocateArray<float>(n));
  const int64_t bytes = n * DTypeBytes(t.dtype);
  if (OnDevice(t.space)) {
    SB_RETURN_IF_ERROR(ConvertToFloat(t.data, t.dtype, n, f32, sc.stream));
    return static_cast<const float*>(f32);
  }
  void* dst = f32;
  if (plan.raw) {
    SB_ASSIGN_OR_RETURN(dst, sc.arena->Allocate(bytes));
  }
  SB_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(dst, t.data, bytes, cudaMemcpyHostToDevice, sc.stream));
  if (plan.raw) {
    SB_RETURN_IF_ERROR(ConvertToFloat(dst, t.dtype, n, f32, sc.stream));
  }
  return static_cast<const float*>(f32);
}

// Where the launcher writes a call's output: the caller's device float32
// tensor itself, else a float32 buffer delivered by Deliver.
absl::StatusOr<float*> OutputBuffer(const MutableTensorRef& o, int64_t n,
                                    const StreamContext& sc) {
  if (!PlanRef(o.space, o.dtype).f32) return static_cast<float*>(o.data);
  return sc.arena->AllocateArray<float>(n);
}

absl::Status Deliver(const MutableTensorRef& o, const float* f32, int64_t n,
                     const StreamContext& sc) {
  const RefPlan plan = PlanRef(o.space, o.dtype);
  if (!plan.f32) return absl::OkStatus();
  if (OnDevice(o.space))
    return ConvertFromFloat(f32, o.dtype, n, o.data, sc.stream);
  const void* src = f32;
  if (plan.raw) {
    SB_ASSIGN_OR_RETURN(void* raw, sc.arena->Allocate(n * DTypeBytes(o.dtype)));
    SB_RETURN_IF_ERROR(ConvertFromFloat(f32, o.dtype, n, raw, sc.stream));
    src = raw;
  }
  SB_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(o.data, src, n * DTypeBytes(o.dtype),
                                          cudaMemcpyDeviceToHost, sc.stream));
  return absl::OkStatus();
}

absl::Status Launch(const DeviceBatch& batch, const LaunchContext& ctx) {
  switch (batch.settings.method) {
    case Method::kExact:
      return RunExact(batch, ctx);
    case Method::kPerformer:
      return RunPerformer(batch, ctx);
    case Method::kLocal:
      return RunLocal(batch, ctx);
    case Method::kLsh:
      return RunLsh(batch, ctx);
    case Method::kScatterbrain:
      return RunScatterbrain(batch, ctx);
  }
  return absl::InvalidArgumentError("cuda backend: unknown method");
}

}  // namespace

AttentionStats BaseStats(const AttentionParams& p) {
  AttentionStats st;
  st.dense_score_bytes = p.batch * p.heads * p.seq_q * p.seq_k *
                         static_cast<int64_t>(sizeof(float));
  const int64_t slices = p.batch * p.heads;
  st.workspace_bytes =
      ScratchBytes(p, slices, slices * p.seq_q, slices * p.seq_k);
  return st;
}

int64_t BatchArenaBytes(absl::Span<AttentionCall* const> calls) {
  Totals t;
  if (calls.empty() || !Count(calls, &t).ok()) return 0;
  int64_t bytes = RoundUp(
      Layout(static_cast<int>(calls.size()), t.slices, t.key_lengths).bytes);
  for (const AttentionCall* c : calls) bytes += CallTensorBytes(*c);
  return bytes + ScratchBytes(calls[0]->params, t.slices, t.q_rows, t.k_rows);
}

absl::Status EnqueueBatch(absl::Span<AttentionCall* const> calls,
                          const StreamContext& sc, DrawCache* draws,
                          PendingBatch* pending) {
  const int n = static_cast<int>(calls.size());
  Totals t;
  SB_RETURN_IF_ERROR(Count(calls, &t));
  const MetaLayout lay = Layout(n, t.slices, t.key_lengths);
  // The draws first: a new upload waits for its copy on this stream, which
  // is idle now.
  SB_ASSIGN_OR_RETURN(pending->draws,
                      draws->Get(calls[0]->params, t.max_heads, sc.stream));
  sc.arena->Reset();
  SB_RETURN_IF_ERROR(sc.arena->Reserve(BatchArenaBytes(calls)));
  SB_RETURN_IF_ERROR(sc.staging->Reserve(lay.staging_bytes));
  char* host = sc.staging->data();
  SB_ASSIGN_OR_RETURN(void* meta_ptr, sc.arena->Allocate(lay.bytes));
  char* dev = static_cast<char*>(meta_ptr);

  DeviceBatch batch;
  batch.settings = calls[0]->params;
  batch.settings.q = batch.settings.k = batch.settings.v = nullptr;
  batch.settings.out = nullptr;
  batch.settings.key_lengths = nullptr;
  batch.settings.cancel = nullptr;  // per call, checked before the launch
  batch.n = n;
  batch.total_slices = t.slices;
  batch.total_q_rows = t.q_rows;
  batch.total_k_rows = t.k_rows;
  batch.max_seq_q = t.max_seq_q;
  batch.max_seq_k = t.max_seq_k;
  batch.host_requests.resize(n);
  batch.host_slice_offsets.assign(n + 1, 0);
  batch.host_q_row_offsets.assign(t.slices + 1, 0);
  batch.host_k_row_offsets.assign(t.slices + 1, 0);

  // Inputs, outputs and the request table.
  std::vector<float*> outputs(n);
  auto* key_lengths = reinterpret_cast<int32_t*>(host + lay.key_lengths);
  int64_t kl_at = 0, slice = 0, q_row = 0, k_row = 0;
  for (int i = 0; i < n; ++i) {
    const AttentionCall& c = *calls[i];
    const AttentionParams& p = c.params;
    const AttentionShape s = ShapeOf(p);
    DeviceRequest& r = batch.host_requests[i];
    r.batch = static_cast<int32_t>(p.batch);
    r.heads = static_cast<int32_t>(p.heads);
    r.seq_q = static_cast<int32_t>(p.seq_q);
    r.seq_k = static_cast<int32_t>(p.seq_k);
    SB_ASSIGN_OR_RETURN(r.q, Upload(c.q, s.q_elements(), sc));
    SB_ASSIGN_OR_RETURN(r.k, Upload(c.k, s.k_elements(), sc));
    SB_ASSIGN_OR_RETURN(r.v, Upload(c.v, s.v_elements(), sc));
    SB_ASSIGN_OR_RETURN(outputs[i], OutputBuffer(c.out, s.out_elements(), sc));
    r.out = outputs[i];
    if (p.key_lengths != nullptr) {
      std::memcpy(key_lengths + kl_at, p.key_lengths,
                  p.batch * sizeof(int32_t));
      r.key_lengths =
          reinterpret_cast<const int32_t*>(dev + lay.key_lengths) + kl_at;
      kl_at += p.batch;
    }
    batch.host_slice_offsets[i] = slice;
    for (int64_t bh = 0; bh < p.batch * p.heads; ++bh, ++slice) {
      batch.host_q_row_offsets[slice] = q_row;
      batch.host_k_row_offsets[slice] = k_row;
      q_row += p.seq_q;
      k_row += p.seq_k;
    }
  }
  batch.host_slice_offsets[n] = slice;
  batch.host_q_row_offsets[slice] = q_row;
  batch.host_k_row_offsets[slice] = k_row;

  // The metadata block: staged, then one copy.
  std::memcpy(host + lay.requests, batch.host_requests.data(),
              n * sizeof(DeviceRequest));
  std::memcpy(host + lay.slice_offsets, batch.host_slice_offsets.data(),
              (n + 1) * sizeof(int64_t));
  std::memcpy(host + lay.q_rows, batch.host_q_row_offsets.data(),
              (t.slices + 1) * sizeof(int64_t));
  std::memcpy(host + lay.k_rows, batch.host_k_row_offsets.data(),
              (t.slices + 1) * sizeof(int64_t));
  std::memset(host + lay.counters, 0, n * sizeof(DeviceCounters));
  std::memset(host + lay.first_bad, 0xff, n * 3 * sizeof(unsigned long long));
  SB_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(dev, host, lay.bytes, cudaMemcpyHostToDevice, sc.stream));
  batch.requests = reinterpret_cast<const DeviceRequest*>(dev + lay.requests);
  batch.slice_offsets =
      reinterpret_cast<const int64_t*>(dev + lay.slice_offsets);
  batch.q_row_offsets = reinterpret_cast<const int64_t*>(dev + lay.q_rows);
  batch.k_row_offsets = reinterpret_cast<const int64_t*>(dev + lay.k_rows);
  batch.counters = reinterpret_cast<DeviceCounters*>(dev + lay.counters);
  auto* first_bad = reinterpret_cast<unsigned long long*>(dev + lay.first_bad);

  // Device-resident inputs: the scan ValidateCall does for host values.
  for (int i = 0; i < n; ++i) {
    const AttentionCall& c = *calls[i];
    const AttentionShape s = ShapeOf(c.params);
    const DeviceRequest& r = batch.host_requests[i];
    const struct {
      const TensorRef& ref;
      const float* data;
      int64_t n;
    } in[3] = {{c.q, r.q, s.q_elements()},
               {c.k, r.k, s.k_elements()},
               {c.v, r.v, s.v_elements()}};
    for (int x = 0; x < 3; ++x) {
      if (!OnDevice(in[x].ref.space)) continue;
      SB_RETURN_IF_ERROR(
          FindNonFinite(in[x].data, in[x].n, first_bad + 3 * i + x, sc.stream));
    }
  }

  batch.draws = pending->draws->draws();
  LaunchContext ctx;
  ctx.stream = sc.stream;
  ctx.cublas = sc.cublas;
  ctx.arena = sc.arena;
  ctx.sm_count = sc.sm_count;
  SB_RETURN_IF_ERROR(Launch(batch, ctx));

  for (int i = 0; i < n; ++i) {
    SB_RETURN_IF_ERROR(Deliver(calls[i]->out, outputs[i],
                               ShapeOf(calls[i]->params).out_elements(), sc));
  }
  SB_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(
      host + lay.back_counters, dev + lay.counters, n * sizeof(DeviceCounters),
      cudaMemcpyDeviceToHost, sc.stream));
  SB_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(
      host + lay.back_first_bad, dev + lay.first_bad,
      n * 3 * sizeof(unsigned long long), cudaMemcpyDeviceToHost, sc.stream));
  pending->calls.assign(calls.begin(), calls.end());
  pending->counters =
      reinterpret_cast<const DeviceCounters*>(host + lay.back_counters);
  pending->first_bad =
      reinterpret_cast<const unsigned long long*>(host + lay.back_first_bad);
  return absl::OkStatus();
}

void CompleteBatch(const PendingBatch& pending) {
  static const char* const kNames[3] = {"q", "k", "v"};
  for (size_t i = 0; i < pending.calls.size(); ++i) {
    AttentionCall& c = *pending.calls[i];
    const AttentionParams& p = c.params;
    bool bad = false;
    for (int x = 0; x < 3 && !bad; ++x) {
      const unsigned long long at = pending.first_bad[3 * i + x];
      if (at == kNoBad) continue;
      // Named as ValidateCall names it: [batch, head, row, column].
      const int64_t cols = x == 2 ? p.dim_v : p.dim;
      const int64_t seq = x == 0 ? p.seq_q : p.seq_k;
      const int64_t idx = static_cast<int64_t>(at);
      const int64_t col = idx % cols, row = idx / cols;
      const int64_t r = row % seq, bh = row / seq;
      c.status = absl::InvalidArgumentError(
          absl::StrCat(kNames[x], ": non-finite value at [", bh / p.heads, ", ",
                       bh % p.heads, ", ", r, ", ", col, "]"));
      bad = true;
    }
    if (bad) continue;
    c.stats = BaseStats(p);
    c.stats.denominator_guards =
        static_cast<int64_t>(pending.counters[i].guards);
    c.stats.fallbacks = static_cast<int64_t>(pending.counters[i].fallbacks);
  }
}

}  // namespace cuda
}  // namespace scatterbrain
