// scatterbrain/kernels/session/kv_session.cc — see kv_session.h.
#include "kernels/session/kv_session.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <new>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "kernels/cost.h"
#include "kernels/cpu/cpu_common.h"
#include "kernels/session/incremental.h"
#include "kernels/session/paged_exact.h"
#include "kernels/session/paged_kv.h"
#include "kernels/validate.h"

namespace scatterbrain {

namespace {

absl::Status Bad(const std::string& field, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", what));
}

// Runs `fn` (returning a Status) so that no exception leaves the core: an
// allocation that fails is RESOURCE_EXHAUSTED, anything else INTERNAL.
template <typename F>
absl::Status Guarded(F&& fn) {
  try {
    return fn();
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(
        "out of memory in a session call (nothing was kept of it)");
  } catch (const std::exception& e) {
    return absl::InternalError(e.what());
  }
}

bool AllFinite(const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(x[i])) return false;
  return true;
}

}  // namespace

absl::Status ValidateSessionConfig(const SessionConfig& c) {
  if (c.batch < 1) return Bad("batch", "must be >= 1");
  if (c.heads < 1) return Bad("heads", "must be >= 1");
  if (c.block_tokens < 1 || c.block_tokens > 65536)
    return Bad("kv_block_tokens", "must be in [1, 65536]");
  if (c.max_tokens < 1) return Bad("max_tokens", "must be >= 1");
  if (c.settings.lsh_transform == LshTransform::kSmyrf)
    return Bad("lsh_transform",
               "SMYRF is not supported with sessions (its padding needs the "
               "norms of every query, which a session never sees in advance)");
  // The settings and head sizes as a one-token call would have them.
  AttentionParams p = c.settings;
  p.batch = c.batch;
  p.heads = c.heads;
  p.seq_q = 1;
  p.seq_k = 1;
  p.dim = c.dim;
  p.dim_v = c.dim_v;
  p.causal = false;
  p.key_lengths = nullptr;
  return ValidateShapeAndSettings(p);
}

class KvSession::Impl {
 public:
  Impl(const SessionConfig& config, SessionMemory* memory)
      : config_(config),
        memory_(memory),
        kv_(config.batch, config.heads, config.dim, config.dim_v,
            config.kv_dtype, config.block_tokens),
        state_(session::IncrementalState::Create(config)) {}

  ~Impl() {
    if (memory_ != nullptr && reserved_ > 0) memory_->Release(reserved_);
  }

  absl::Status ReserveInitial() {
    absl::MutexLock lock(&mu_);
    return ReserveLocked(state_ ? state_->bytes() : 0);
  }

  const SessionConfig& config() const { return config_; }
  absl::Mutex& mu() ABSL_LOCK_RETURNED(mu_) { return mu_; }

  absl::Status AppendLocked(absl::Span<const int64_t> counts, const void* k,
                            const void* v, DType dtype,
                            const CancelToken* cancel, int threads)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The incremental (or in-place exact) rows of one (b, h) of `call`.
  void AttendHeadLocked(SessionCall& call, int64_t b, int64_t h,
                        AttentionStats* stats)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Whether `call` runs per (b, h) on the session's own state.
  bool PerHead(int64_t seq_q) const {
    return seq_q <= kMaxIncrementalRows &&
           (state_ != nullptr || config_.settings.method == Method::kExact);
  }
  bool Incremental(int64_t seq_q) const {
    return seq_q <= kMaxIncrementalRows && state_ != nullptr;
  }

  // A prefill (or exact call beyond the per-head path): the sequences
  // gathered and run through `backend` as one-shot calls; the call's stats
  // are filled.
  absl::Status GatherAttend(SessionCall& call, Backend* backend)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  SessionInfo InfoLocked() const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  std::vector<int64_t> LengthsLocked() const ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    std::vector<int64_t> l(config_.batch);
    for (int64_t b = 0; b < config_.batch; ++b) l[b] = kv_.length(b);
    return l;
  }
  int64_t AppendBytes(int64_t tokens) const;
  void CountStep() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { ++steps_; }

 private:
  absl::Status ReserveLocked(int64_t bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (bytes <= 0) return absl::OkStatus();
    if (memory_ != nullptr) {
      absl::Status st = memory_->Reserve(bytes);
      if (!st.ok()) return st;
    }
    reserved_ += bytes;
    return absl::OkStatus();
  }
  void ReleaseLocked(int64_t bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (bytes <= 0) return;
    if (memory_ != nullptr) memory_->Release(bytes);
    reserved_ -= bytes;
  }

  const SessionConfig config_;
  SessionMemory* const memory_;
  mutable absl::Mutex mu_;
  session::PagedKv kv_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<session::IncrementalState> state_ ABSL_GUARDED_BY(mu_);
  // Bytes reserved from memory_: blocks plus state capacity.
  int64_t reserved_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t appends_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t steps_ ABSL_GUARDED_BY(mu_) = 0;
};

int64_t KvSession::Impl::AppendBytes(int64_t tokens) const {
  const int64_t blocks =
      (tokens + config_.block_tokens - 1) / config_.block_tokens + 1;
  const int64_t per_token = state_ ? state_->BytesPerToken() : 0;
  return config_.batch *
         (blocks * config_.heads * config_.block_tokens *
              (config_.dim + config_.dim_v) * DTypeBytes(config_.kv_dtype) +
          tokens * per_token);
}

absl::Status KvSession::Impl::AppendLocked(absl::Span<const int64_t> counts,
                                           const void* k, const void* v,
                                           DType dtype,
                                           const CancelToken* cancel,
                                           int threads) {
  const int64_t B = config_.batch, H = config_.heads;
  const int64_t d = config_.dim, dv = config_.dim_v;
  if (counts.size() != 1 && static_cast<int64_t>(counts.size()) != B)
    return Bad("counts", absl::StrCat("must have 1 or ", B, " entries, got ",
                                      counts.size()));
  std::vector<int64_t> c(B);
  int64_t total = 0;
  for (int64_t b = 0; b < B; ++b) {
    c[b] = counts.size() == 1 ? counts[0] : counts[b];
    if (c[b] < 0) return Bad(absl::StrCat("counts[", b, "]"), "must be >= 0");
    if (c[b] > config_.max_tokens - kv_.length(b))
      return absl::ResourceExhaustedError(absl::StrCat(
          "counts[", b, "]: sequence ", b, " would hold ", kv_.length(b) + c[b],
          " tokens, over the session's max_tokens ", config_.max_tokens));
    total += c[b];
  }
  if (total == 0) return absl::OkStatus();
  if (k == nullptr || v == nullptr) return Bad("k", "is null");
  absl::Status st = CancelStatus(cancel);
  if (!st.ok()) return st;

  // Reserve the new blocks and the state's growth, then write past the
  // committed lengths: nothing is visible until the commit at the end.
  int64_t new_blocks = 0;
  for (int64_t b = 0; b < B; ++b) new_blocks += kv_.BlocksNeeded(b, c[b]);
  const int64_t state_growth = state_ ? total * state_->BytesPerToken() : 0;
  const int64_t bytes = new_blocks * kv_.block_bytes() + state_growth;
  st = ReserveLocked(bytes);
  if (!st.ok()) return st;
  // Blocks, rows and checks; any failure (a NaN, a stop, an allocation)
  // gives back every block past the committed lengths and the reservation.
  st = Guarded([&]() -> absl::Status {
    for (int64_t b = 0; b < B; ++b) kv_.AddBlocks(b, kv_.BlocksNeeded(b, c[b]));
    const char* kb = static_cast<const char*>(k);
    const char* vb = static_cast<const char*>(v);
    const int64_t es = DTypeBytes(dtype);
    std::vector<float> kf, vf;
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t h = 0; h < H; ++h) {
        if (Stopped(cancel)) return CancelStatus(cancel);
        kf.resize(static_cast<size_t>(c[b] * d));
        vf.resize(static_cast<size_t>(c[b] * dv));
        DecodeToFloat(dtype, kb, c[b] * d, kf.data());
        DecodeToFloat(dtype, vb, c[b] * dv, vf.data());
        if (!AllFinite(kf.data(), c[b] * d))
          return Bad(absl::StrCat("k[", b, ", ", h, "]"),
                     "holds a non-finite value");
        if (!AllFinite(vf.data(), c[b] * dv))
          return Bad(absl::StrCat("v[", b, ", ", h, "]"),
                     "holds a non-finite value");
        kv_.Write(b, h, kv_.length(b), c[b], kf.data(), vf.data());
        kb += c[b] * d * es;
        vb += c[b] * dv * es;
      }
    }
    return CancelStatus(cancel);
  });
  if (!st.ok()) {
    int64_t freed = 0;
    for (int64_t b = 0; b < B; ++b) freed += kv_.TrimBlocks(b);
    ReleaseLocked(freed * kv_.block_bytes() + state_growth);
    return st;
  }
  // From here the append completes: the state takes the new keys in.
  for (int64_t b = 0; b < B; ++b) {
    if (c[b] == 0) continue;
    if (state_)
      state_->Append(kv_, b, kv_.length(b), kv_.length(b) + c[b], threads);
    kv_.Commit(b, kv_.length(b) + c[b]);
  }
  ++appends_;
  return absl::OkStatus();
}

SessionInfo KvSession::Impl::InfoLocked() const {
  SessionInfo info;
  info.lengths = LengthsLocked();
  info.kv_bytes = kv_.payload_bytes();
  info.state_bytes = state_ ? state_->bytes() : 0;
  info.held_bytes = kv_.total_blocks() * kv_.block_bytes() + info.state_bytes;
  info.appends = appends_;
  info.steps = steps_;
  if (state_) {
    const session::IncrementalCounters c = state_->counters();
    info.refits = c.refits;
    info.refit_seconds = c.refit_seconds;
    info.calibrations = c.calibrations;
  }
  return info;
}

void KvSession::Impl::AttendHeadLocked(SessionCall& call, int64_t b, int64_t h,
                                       AttentionStats* stats) {
  const int64_t n = call.seq_q, d = config_.dim, dv = config_.dim_v;
  const int64_t H = config_.heads;
  const int64_t L = kv_.length(b);
  const float* q = call.q + (b * H + h) * n * d;
  float* out = call.out + (b * H + h) * n * dv;
  int64_t lims[kMaxIncrementalRows];
  for (int64_t r = 0; r < n; ++r)
    lims[r] = call.see_all ? L : std::clamp<int64_t>(L - n + r + 1, 0, L);
  if (state_ == nullptr) {
    AttentionParams p = config_.settings;
    p.dim = d;
    session::PagedExactRows(kv_, b, h, q, n, lims, EffectiveScale(p), out);
    return;
  }
  state_->Attend(kv_, b, h, L, q, n, lims, out, stats);
}

absl::Status KvSession::Impl::GatherAttend(SessionCall& call,
                                           Backend* backend) {
  const int64_t B = config_.batch, H = config_.heads;
  const int64_t d = config_.dim, dv = config_.dim_v, n = call.seq_q;
  // Equal lengths: one call over every sequence (exactly what a one-shot
  // call on the same K/V computes); else one call per sequence, each with
  // its own length (the causal alignment is per sequence).
  bool equal = true;
  for (int64_t b = 1; b < B; ++b)
    equal = equal && kv_.length(b) == kv_.length(0);
  const int64_t groups = equal ? 1 : B;
  const int64_t per = equal ? B : 1;
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t L = kv_.length(g * per);
    AttentionParams p = config_.settings;
    p.batch = per;
    p.heads = H;
    p.seq_q = n;
    p.seq_k = std::max<int64_t>(L, 1);
    p.dim = d;
    p.dim_v = dv;
    p.causal = !call.see_all;
    p.key_lengths = nullptr;
    p.cancel = call.cancel;
    float* out = call.out + g * per * H * n * dv;
    if (L == 0) {
      std::fill(out, out + per * H * n * dv, 0.0f);
      continue;
    }
    std::vector<float> k(static_cast<size_t>(per * H * L * d));
    std::vector<float> v(static_cast<size_t>(per * H * L * dv));
    for (int64_t b = 0; b < per; ++b)
      for (int64_t h = 0; h < H; ++h) {
        kv_.GatherKeys(g * per + b, h, L, k.data() + (b * H + h) * L * d);
        kv_.GatherValues(g * per + b, h, L, v.data() + (b * H + h) * L * dv);
      }
    p.q = call.q + g * per * H * n * d;
    p.k = k.data();
    p.v = v.data();
    p.out = out;
    SetContiguousStrides(p);
    absl::StatusOr<AttentionStats> st = backend->Forward(p);
    if (!st.ok()) return st.status();
    call.stats.workspace_bytes =
        std::max(call.stats.workspace_bytes, st->workspace_bytes);
    call.stats.dense_score_bytes += st->dense_score_bytes;
    call.stats.denominator_guards += st->denominator_guards;
    call.stats.fallbacks += st->fallbacks;
  }
  if (state_ != nullptr) {
    std::vector<int64_t> lims(n);
    for (int64_t b = 0; b < B; ++b) {
      const int64_t L = kv_.length(b);
      for (int64_t r = 0; r < n; ++r)
        lims[r] = call.see_all ? L : std::clamp<int64_t>(L - n + r + 1, 0, L);
      for (int64_t h = 0; h < H; ++h)
        state_->Observe(kv_, b, h, L, call.q + (b * H + h) * n * d, n,
                        lims.data(), &call.stats);
    }
  }
  return absl::OkStatus();
}

KvSession::KvSession(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
KvSession::~KvSession() = default;

absl::StatusOr<std::unique_ptr<KvSession>> KvSession::Create(
    const SessionConfig& config, SessionMemory* memory) {
  absl::Status st = ValidateSessionConfig(config);
  if (!st.ok()) return st;
  // Sessions parallelise over (call, sequence, head) themselves; a threaded
  // BLAS would spin its pool for every small GEMM of a decode step.
  cpu::PinBlasToOneThread();
  auto impl = std::make_unique<Impl>(config, memory);
  st = impl->ReserveInitial();
  if (!st.ok()) return st;
  return std::unique_ptr<KvSession>(new KvSession(std::move(impl)));
}

const SessionConfig& KvSession::config() const { return impl_->config(); }

absl::Status KvSession::Append(absl::Span<const int64_t> counts, const void* k,
                               const void* v, DType dtype,
                               const CancelToken* cancel) {
  absl::MutexLock lock(&impl_->mu());
  return Guarded([&] {
    return impl_->AppendLocked(counts, k, v, dtype, cancel, /*threads=*/0);
  });
}

SessionInfo KvSession::Info() const {
  absl::MutexLock lock(&impl_->mu());
  return impl_->InfoLocked();
}

std::vector<int64_t> KvSession::Lengths() const {
  absl::MutexLock lock(&impl_->mu());
  return impl_->LengthsLocked();
}

bool KvSession::Incremental(int64_t seq_q) const {
  return impl_->Incremental(seq_q);
}

int64_t KvSession::AppendBytes(int64_t tokens) const {
  return impl_->AppendBytes(tokens);
}

int64_t KvSession::EstimateFlops(int64_t seq_q, int64_t append) const {
  const SessionConfig& c = impl_->config();
  int64_t longest = 0;
  for (int64_t l : Lengths()) longest = std::max(longest, l);
  AttentionParams p = c.settings;
  p.batch = c.batch;
  p.heads = c.heads;
  p.seq_q = seq_q;
  p.seq_k = std::max<int64_t>(longest + append, 1);
  p.dim = c.dim;
  p.dim_v = c.dim_v;
  p.causal = true;
  if (!impl_->PerHead(seq_q) || c.settings.method == Method::kExact)
    return scatterbrain::EstimateFlops(p);
  // Incremental: each row meets its support (bucket and window keys) and
  // the m x dv running sums; the appended keys enter the sums.
  const int64_t support =
      int64_t{c.settings.bucket_size} * c.settings.num_hashes +
      c.settings.window + 1;
  const int64_t m = c.settings.num_features;
  const int64_t per_row =
      support * (2 * (c.dim + c.dim_v) + 2 * m + kScoreFlops) +
      2 * m * (c.dim + c.dim_v);
  return c.batch * c.heads *
         (seq_q * per_row + append * 2 * m * (c.dim + c.dim_v));
}

namespace {

// Calls a wave may run together: no session twice.
std::vector<std::vector<SessionCall*>> Waves(absl::Span<SessionCall> calls) {
  std::vector<std::vector<SessionCall*>> waves;
  std::vector<std::vector<KvSession*>> members;
  for (SessionCall& call : calls) {
    size_t w = 0;
    // The wave after the last one holding this session.
    for (size_t i = 0; i < waves.size(); ++i)
      if (std::find(members[i].begin(), members[i].end(), call.session) !=
          members[i].end())
        w = i + 1;
    if (w == waves.size()) {
      waves.emplace_back();
      members.emplace_back();
    }
    waves[w].push_back(&call);
    members[w].push_back(call.session);
  }
  return waves;
}

absl::Status CheckCall(const SessionCall& call) {
  if (call.session == nullptr) return Bad("session", "is null");
  const SessionConfig& c = call.session->config();
  if (call.q == nullptr) return Bad("q", "is null");
  if (call.out == nullptr) return Bad("out", "is null");
  if (call.seq_q < 1) return Bad("seq_q", "must be >= 1");
  if ((call.k == nullptr) != (call.v == nullptr))
    return Bad("k", "k and v are appended together");
  if (!AllFinite(call.q, c.batch * c.heads * call.seq_q * c.dim))
    return Bad("q", "holds a non-finite value");
  return CancelStatus(call.cancel);
}

}  // namespace

// The wave's locks are taken and released in loops, which the static
// analysis cannot follow.
void AttendSessions(absl::Span<SessionCall> calls, Backend* backend,
                    int threads) ABSL_NO_THREAD_SAFETY_ANALYSIS {
  std::unique_ptr<Backend> own;
  for (std::vector<SessionCall*>& wave : Waves(calls)) {
    // Lock the wave's sessions in address order (no two waits can cross).
    std::vector<SessionCall*> order = wave;
    std::sort(order.begin(), order.end(), [](SessionCall* a, SessionCall* b) {
      return a->session < b->session;
    });
    std::vector<SessionCall*> per_head, gather;
    std::vector<KvSession::Impl*> locked;
    for (SessionCall* call : order) {
      call->status = CheckCall(*call);
      call->stats = AttentionStats();
      call->incremental = false;
      if (!call->status.ok()) continue;
      KvSession::Impl& s = *call->session->impl_;
      s.mu().Lock();
      locked.push_back(&s);
      if (call->k != nullptr) {
        const int64_t count = call->seq_q;
        call->status = Guarded([&] {
          return s.AppendLocked(absl::MakeConstSpan(&count, 1), call->k,
                                call->v, call->kv_dtype, call->cancel, threads);
        });
      }
      call->lengths = s.LengthsLocked();
      if (call->status.ok()) {
        s.CountStep();
        if (s.PerHead(call->seq_q)) {
          call->incremental = s.Incremental(call->seq_q);
          per_head.push_back(call);
        } else {
          gather.push_back(call);
        }
      }
    }
    // Every (call, sequence, head) of the incremental calls in one pass.
    std::vector<std::pair<SessionCall*, int64_t>> items;
    for (SessionCall* call : per_head) {
      const SessionConfig& c = call->session->config();
      for (int64_t bh = 0; bh < c.batch * c.heads; ++bh)
        items.emplace_back(call, bh);
    }
    std::vector<AttentionStats> item_stats(items.size());
    std::vector<absl::Status> item_status(items.size());
    // Nothing escapes a worker: a failure is its call's status.
    cpu::ParallelFor(static_cast<int64_t>(items.size()),
                     cpu::ResolveThreads(threads), [&](int64_t i) {
                       SessionCall* call = items[i].first;
                       if (Stopped(call->cancel)) return;
                       const int64_t H = call->session->config().heads;
                       item_status[i] = Guarded([&] {
                         call->session->impl_->AttendHeadLocked(
                             *call, items[i].second / H, items[i].second % H,
                             &item_stats[i]);
                         return absl::OkStatus();
                       });
                     });
    for (size_t i = 0; i < items.size(); ++i) {
      if (!item_status[i].ok() && items[i].first->status.ok())
        items[i].first->status = item_status[i];
      AttentionStats& st = items[i].first->stats;
      st.workspace_bytes += item_stats[i].workspace_bytes;
      st.denominator_guards += item_stats[i].denominator_guards;
      st.fallbacks += item_stats[i].fallbacks;
    }
    for (SessionCall* call : per_head) {
      if (call->status.ok()) call->status = CancelStatus(call->cancel);
    }
    for (SessionCall* call : gather) {
      if (backend == nullptr && own == nullptr) {
        absl::StatusOr<std::unique_ptr<Backend>> cpu = CreateBackend("cpu");
        if (cpu.ok()) own = std::move(*cpu);
      }
      Backend* be = backend != nullptr ? backend : own.get();
      if (be == nullptr) {
        call->status = absl::InternalError("no backend to run a prefill on");
        continue;
      }
      KvSession::Impl& s = *call->session->impl_;
      call->status = Guarded([&] { return s.GatherAttend(*call, be); });
    }
    for (KvSession::Impl* s : locked) s->mu().Unlock();
  }
}

}  // namespace scatterbrain
