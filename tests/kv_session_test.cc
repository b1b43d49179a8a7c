// tests/kv_session_test.cc — the core's server-held K/V sessions: paged
// storage and appends, attends that equal a one-shot call on the same K/V,
// all-or-nothing appends, memory reservations, calls on several sessions.
#include "kernels/session/kv_session.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/backend.h"
#include "kernels/session/paged_kv.h"
#include "tests/testutil/cpu_attention.h"
#include "tests/testutil/random.h"
#include "tests/testutil/reference.h"

namespace scatterbrain {
namespace {

using testutil::CpuAttention;
using testutil::RandomNormal;

// [batch, heads, rows, dim] of tensor `x` (seq rows) -> rows [r0, r1).
std::vector<float> Rows(const std::vector<float>& x, int64_t bh, int64_t seq,
                        int64_t dim, int64_t r0, int64_t r1) {
  std::vector<float> out;
  out.reserve(bh * (r1 - r0) * dim);
  for (int64_t s = 0; s < bh; ++s)
    out.insert(out.end(), x.begin() + (s * seq + r0) * dim,
               x.begin() + (s * seq + r1) * dim);
  return out;
}

double MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i)
    m = std::max(m, std::fabs(double(a[i]) - b[i]));
  return m;
}

// Tracks what a session reserves; refuses past `limit`.
class CountingMemory : public SessionMemory {
 public:
  explicit CountingMemory(int64_t limit) : limit_(limit) {}
  absl::Status Reserve(int64_t bytes) override {
    if (held_ + bytes > limit_)
      return absl::ResourceExhaustedError("max_session_bytes: full");
    held_ += bytes;
    return absl::OkStatus();
  }
  void Release(int64_t bytes) override { held_ -= bytes; }
  int64_t held() const { return held_; }

 private:
  int64_t limit_;
  int64_t held_ = 0;
};

struct Problem {
  int64_t B, H, N, d, dv;
  std::vector<float> q, k, v;
  Problem(int64_t B_, int64_t H_, int64_t N_, int64_t d_, int64_t dv_,
          uint32_t seed)
      : B(B_), H(H_), N(N_), d(d_), dv(dv_) {
    q = RandomNormal(B * H * N * d, seed);
    k = RandomNormal(B * H * N * d, seed + 1);
    v = RandomNormal(B * H * N * dv, seed + 2);
  }
  SessionConfig Config(Method method) const {
    SessionConfig c;
    c.settings.method = method;
    c.settings.seed = 7;
    c.settings.window = 16;
    c.settings.bucket_size = 16;
    c.settings.num_features = 32;
    c.batch = B;
    c.heads = H;
    c.dim = d;
    c.dim_v = dv;
    c.block_tokens = 5;  // odd, so blocks split rows everywhere
    return c;
  }
  // The one-shot call of rows [r0, r1) of q against keys [0, r1), causal.
  std::vector<float> OneShot(const SessionConfig& c, int64_t r0,
                             int64_t r1) const {
    std::vector<float> qq = Rows(q, B * H, N, d, r0, r1);
    std::vector<float> kk = Rows(k, B * H, N, d, 0, r1);
    std::vector<float> vv = Rows(v, B * H, N, dv, 0, r1);
    AttentionParams p = c.settings;
    p.q = qq.data();
    p.k = kk.data();
    p.v = vv.data();
    p.batch = B;
    p.heads = H;
    p.seq_q = r1 - r0;
    p.seq_k = r1;
    p.dim = d;
    p.dim_v = dv;
    p.causal = true;
    return CpuAttention(p);
  }
};

// Appends keys [r0, r1) of every sequence.
absl::Status AppendRows(KvSession& s, const Problem& pr, int64_t r0, int64_t r1,
                        DType dtype = DType::kFloat32) {
  std::vector<float> kk = Rows(pr.k, pr.B * pr.H, pr.N, pr.d, r0, r1);
  std::vector<float> vv = Rows(pr.v, pr.B * pr.H, pr.N, pr.dv, r0, r1);
  const int64_t count = r1 - r0;
  if (dtype == DType::kFloat32)
    return s.Append(absl::MakeConstSpan(&count, 1), kk.data(), vv.data(),
                    dtype);
  std::vector<char> kb(kk.size() * DTypeBytes(dtype)),
      vb(vv.size() * DTypeBytes(dtype));
  EncodeFromFloat(dtype, kk.data(), kk.size(), kb.data());
  EncodeFromFloat(dtype, vv.data(), vv.size(), vb.data());
  return s.Append(absl::MakeConstSpan(&count, 1), kb.data(), vb.data(), dtype);
}

// One call of rows [r0, r1) of q; appends their k/v first when `step`.
std::vector<float> Call(KvSession& s, const Problem& pr, int64_t r0, int64_t r1,
                        bool step, SessionCall* out_call = nullptr) {
  std::vector<float> qq = Rows(pr.q, pr.B * pr.H, pr.N, pr.d, r0, r1);
  std::vector<float> kk = Rows(pr.k, pr.B * pr.H, pr.N, pr.d, r0, r1);
  std::vector<float> vv = Rows(pr.v, pr.B * pr.H, pr.N, pr.dv, r0, r1);
  std::vector<float> out(pr.B * pr.H * (r1 - r0) * pr.dv, NAN);
  SessionCall call;
  call.session = &s;
  call.q = qq.data();
  call.seq_q = r1 - r0;
  if (step) {
    call.k = kk.data();
    call.v = vv.data();
  }
  call.out = out.data();
  AttendSessions(absl::MakeSpan(&call, 1), nullptr, 2);
  EXPECT_TRUE(call.status.ok()) << call.status;
  if (out_call != nullptr) *out_call = call;
  return out;
}

class SessionEquality : public ::testing::TestWithParam<Method> {};

// Prefill then decode steps (each appending its own k/v) equal one-shot
// causal calls on the same K/V: every method whose session path is exact.
TEST_P(SessionEquality, PrefillThenStepsEqualOneShot) {
  const Problem pr(2, 3, 41, 12, 7, 11);
  const SessionConfig c = pr.Config(GetParam());
  auto s = KvSession::Create(c, nullptr);
  ASSERT_TRUE(s.ok()) << s.status();
  const int64_t P = 23;
  ASSERT_TRUE(AppendRows(**s, pr, 0, P).ok());
  // A prefill block of queries over what is there.
  EXPECT_LT(MaxAbsDiff(Call(**s, pr, 0, P, false), pr.OneShot(c, 0, P)), 1e-5);
  // Decode steps of one and of three rows.
  int64_t r = P;
  while (r < pr.N) {
    const int64_t n = r % 2 == 0 ? 1 : std::min<int64_t>(3, pr.N - r);
    SessionCall call;
    const std::vector<float> got = Call(**s, pr, r, r + n, true, &call);
    EXPECT_LT(MaxAbsDiff(got, pr.OneShot(c, r, r + n)), 1e-5) << "row " << r;
    ASSERT_EQ(call.lengths.size(), 2u);
    EXPECT_EQ(call.lengths[0], r + n);
    r += n;
  }
  const SessionInfo info = (*s)->Info();
  EXPECT_EQ(info.lengths, (std::vector<int64_t>{pr.N, pr.N}));
  EXPECT_EQ(info.kv_bytes, 2 * 3 * pr.N * (12 + 7) * 4);
  EXPECT_GE(info.held_bytes, info.kv_bytes + info.state_bytes);
}

INSTANTIATE_TEST_SUITE_P(Methods, SessionEquality,
                         ::testing::Values(Method::kExact, Method::kPerformer,
                                           Method::kLocal),
                         [](const auto& info) {
                           return std::string(MethodName(info.param));
                         });

TEST(KvSession, Float16StorageIsTheRoundedKeys) {
  const Problem pr(1, 2, 30, 8, 8, 3);
  SessionConfig c = pr.Config(Method::kExact);
  c.kv_dtype = DType::kFloat16;
  auto s = KvSession::Create(c, nullptr);
  ASSERT_TRUE(s.ok());
  ASSERT_TRUE(AppendRows(**s, pr, 0, pr.N, DType::kBFloat16).ok());
  // Reference: keys rounded to bfloat16 then float16 (what is stored).
  Problem rounded = pr;
  for (auto* x : {&rounded.k, &rounded.v}) {
    std::vector<char> b(x->size() * 2);
    EncodeFromFloat(DType::kBFloat16, x->data(), x->size(), b.data());
    DecodeToFloat(DType::kBFloat16, b.data(), x->size(), x->data());
    EncodeFromFloat(DType::kFloat16, x->data(), x->size(), b.data());
    DecodeToFloat(DType::kFloat16, b.data(), x->size(), x->data());
  }
  EXPECT_LT(MaxAbsDiff(Call(**s, pr, pr.N - 1, pr.N, false),
                       rounded.OneShot(c, pr.N - 1, pr.N)),
            1e-5);
  EXPECT_EQ((*s)->Info().kv_bytes, 2 * 30 * 16 * 2);
}

TEST(KvSession, AppendIsAllOrNothing) {
  const Problem pr(2, 2, 12, 4, 4, 5);
  CountingMemory mem(1 << 20);
  auto s = KvSession::Create(pr.Config(Method::kExact), &mem);
  ASSERT_TRUE(s.ok());
  ASSERT_TRUE(AppendRows(**s, pr, 0, 6).ok());
  const SessionInfo before = (*s)->Info();
  EXPECT_EQ(mem.held(), before.held_bytes);
  // A NaN in the last head of the last sequence: nothing is applied.
  std::vector<float> kk = Rows(pr.k, 4, pr.N, 4, 6, 12);
  std::vector<float> vv = Rows(pr.v, 4, pr.N, 4, 6, 12);
  kk.back() = NAN;
  const int64_t count = 6;
  absl::Status st = (*s)->Append(absl::MakeConstSpan(&count, 1), kk.data(),
                                 vv.data(), DType::kFloat32);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_NE(st.message().find("k[1, 1]"), std::string::npos) << st;
  // Cancelled: nothing applied either.
  kk.back() = 0.5f;
  std::atomic<bool> flag{true};
  CancelToken cancel;
  cancel.cancelled = &flag;
  st = (*s)->Append(absl::MakeConstSpan(&count, 1), kk.data(), vv.data(),
                    DType::kFloat32, &cancel);
  EXPECT_EQ(st.code(), absl::StatusCode::kCancelled);
  const SessionInfo after = (*s)->Info();
  EXPECT_EQ(after.lengths, before.lengths);
  EXPECT_EQ(after.held_bytes, before.held_bytes);
  EXPECT_EQ(mem.held(), before.held_bytes);
  // Per-sequence counts: 2 tokens to sequence 0, 0 to sequence 1.
  std::vector<int64_t> counts = {2, 0};
  ASSERT_TRUE((*s)->Append(counts, kk.data(), vv.data(), DType::kFloat32).ok());
  EXPECT_EQ((*s)->Lengths(), (std::vector<int64_t>{8, 6}));
}

TEST(KvSession, MemoryAndTokenLimits) {
  const Problem pr(1, 1, 40, 4, 4, 9);
  SessionConfig c = pr.Config(Method::kExact);
  c.block_tokens = 8;
  c.max_tokens = 20;
  const int64_t block = 8 * (4 + 4) * 4;
  CountingMemory mem(2 * block);
  auto s = KvSession::Create(c, &mem);
  ASSERT_TRUE(s.ok());
  ASSERT_TRUE(AppendRows(**s, pr, 0, 16).ok());  // two blocks
  EXPECT_EQ(mem.held(), 2 * block);
  absl::Status st = AppendRows(**s, pr, 16, 17);
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(st.message().find("max_session_bytes"), std::string::npos);
  EXPECT_EQ((*s)->Lengths()[0], 16);
  s->reset();
  EXPECT_EQ(mem.held(), 0);
  CountingMemory big(1 << 20);
  auto t = KvSession::Create(c, &big);
  ASSERT_TRUE(t.ok());
  st = AppendRows(**t, pr, 0, 21);
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(st.message().find("max_tokens"), std::string::npos);
}

TEST(KvSession, UnequalLengthsAlignCausallyPerSequence) {
  const Problem pr(2, 2, 20, 6, 5, 21);
  const SessionConfig c = pr.Config(Method::kExact);
  auto s = KvSession::Create(c, nullptr);
  ASSERT_TRUE(s.ok());
  // Sequence 0 gets 20 keys, sequence 1 gets 13.
  std::vector<float> kk, vv;
  for (int64_t b = 0; b < 2; ++b) {
    const int64_t n = b == 0 ? 20 : 13;
    for (int64_t h = 0; h < 2; ++h) {
      const int64_t s0 = (b * 2 + h) * pr.N;
      kk.insert(kk.end(), pr.k.begin() + s0 * 6, pr.k.begin() + (s0 + n) * 6);
      vv.insert(vv.end(), pr.v.begin() + s0 * 5, pr.v.begin() + (s0 + n) * 5);
    }
  }
  std::vector<int64_t> counts = {20, 13};
  ASSERT_TRUE((*s)->Append(counts, kk.data(), vv.data(), DType::kFloat32).ok());
  for (int64_t n : {1, 20}) {  // per-head path and the gather path
    std::vector<float> qq = Rows(pr.q, 4, pr.N, 6, 0, n);
    std::vector<float> out(4 * n * 5);
    SessionCall call;
    call.session = s->get();
    call.q = qq.data();
    call.seq_q = n;
    call.out = out.data();
    AttendSessions(absl::MakeSpan(&call, 1), nullptr, 1);
    ASSERT_TRUE(call.status.ok()) << call.status;
    // Sequence 1, head 1, last row sees all 13 keys.
    AttentionParams p;
    p.method = Method::kExact;
    p.batch = 1;
    p.heads = 1;
    std::vector<float> q1(qq.begin() + (3 * n + n - 1) * 6,
                          qq.begin() + (3 * n + n) * 6);
    std::vector<float> k1(pr.k.begin() + 3 * pr.N * 6,
                          pr.k.begin() + (3 * pr.N + 13) * 6);
    std::vector<float> v1(pr.v.begin() + 3 * pr.N * 5,
                          pr.v.begin() + (3 * pr.N + 13) * 5);
    p.q = q1.data();
    p.k = k1.data();
    p.v = v1.data();
    p.seq_q = 1;
    p.seq_k = 13;
    p.dim = 6;
    p.dim_v = 5;
    const std::vector<float> want = CpuAttention(p);
    const std::vector<float> got(out.begin() + (3 * n + n - 1) * 5,
                                 out.begin() + (3 * n + n) * 5);
    EXPECT_LT(MaxAbsDiff(got, want), 1e-5) << "rows " << n;
  }
}

TEST(KvSession, CallsOnOneSessionInOneBatchRunInOrder) {
  const Problem pr(1, 2, 10, 4, 4, 31);
  const SessionConfig c = pr.Config(Method::kExact);
  auto s = KvSession::Create(c, nullptr);
  auto t = KvSession::Create(c, nullptr);
  ASSERT_TRUE(s.ok() && t.ok());
  ASSERT_TRUE(AppendRows(**s, pr, 0, 5).ok());
  ASSERT_TRUE(AppendRows(**t, pr, 0, 5).ok());
  std::vector<std::vector<float>> qs, ks, vs, outs;
  std::vector<SessionCall> calls(3);
  KvSession* order[3] = {s->get(), t->get(), s->get()};
  for (int i = 0; i < 3; ++i) {
    const int64_t r = i == 2 ? 6 : 5;
    qs.push_back(Rows(pr.q, 2, pr.N, 4, r, r + 1));
    ks.push_back(Rows(pr.k, 2, pr.N, 4, r, r + 1));
    vs.push_back(Rows(pr.v, 2, pr.N, 4, r, r + 1));
    outs.emplace_back(2 * 4);
  }
  for (int i = 0; i < 3; ++i) {
    calls[i].session = order[i];
    calls[i].q = qs[i].data();
    calls[i].k = ks[i].data();
    calls[i].v = vs[i].data();
    calls[i].seq_q = 1;
    calls[i].out = outs[i].data();
  }
  AttendSessions(absl::MakeSpan(calls), nullptr, 2);
  for (auto& call : calls) ASSERT_TRUE(call.status.ok()) << call.status;
  EXPECT_EQ(calls[0].lengths[0], 6);
  EXPECT_EQ(calls[2].lengths[0], 7);
  EXPECT_LT(MaxAbsDiff(outs[0], pr.OneShot(c, 5, 6)), 1e-5);
  EXPECT_LT(MaxAbsDiff(outs[1], pr.OneShot(c, 5, 6)), 1e-5);
  EXPECT_LT(MaxAbsDiff(outs[2], pr.OneShot(c, 6, 7)), 1e-5);
}

TEST(KvSession, RefusesWhatItCannotDo) {
  SessionConfig c;
  c.settings.method = Method::kScatterbrain;
  c.settings.lsh_transform = LshTransform::kSmyrf;
  c.dim = 8;
  c.dim_v = 8;
  absl::Status st = ValidateSessionConfig(c);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("lsh_transform"), std::string::npos);
  c.settings.lsh_transform = LshTransform::kNone;
  c.dim = 0;
  EXPECT_NE(ValidateSessionConfig(c).message().find("dim"), std::string::npos);
  c.dim = 8;
  auto s = KvSession::Create(c, nullptr);
  ASSERT_TRUE(s.ok());
  std::vector<float> q(8), out(8, NAN);
  q[3] = INFINITY;
  SessionCall call;
  call.session = s->get();
  call.q = q.data();
  call.seq_q = 1;
  call.out = out.data();
  AttendSessions(absl::MakeSpan(&call, 1), nullptr, 1);
  EXPECT_EQ(call.status.code(), absl::StatusCode::kInvalidArgument);
  // An empty session answers zeros (no key to attend).
  q[3] = 1.0f;
  AttendSessions(absl::MakeSpan(&call, 1), nullptr, 1);
  EXPECT_TRUE(call.status.ok()) << call.status;
  for (float x : out) EXPECT_EQ(x, 0.0f);
}

}  // namespace
}  // namespace scatterbrain

namespace scatterbrain {
namespace {

// A Scatterbrain session's state: refits as the context grows (counted),
// steps on the incremental path, and memory held within 5% of the K/V
// bytes plus the state at a realistic block size.
TEST(KvSessionIncremental, RefitsCalibratesAndHoldsWhatItReports) {
  const Problem pr(1, 2, 4096, 32, 32, 41);
  SessionConfig c = pr.Config(Method::kScatterbrain);
  c.settings.bucket_size = 32;
  c.settings.num_features = 32;
  c.block_tokens = 64;
  CountingMemory mem(int64_t{1} << 30);
  auto s = KvSession::Create(c, &mem);
  ASSERT_TRUE(s.ok());
  ASSERT_TRUE(AppendRows(**s, pr, 0, 1024).ok());
  EXPECT_EQ((*s)->Info().refits, 2);  // one fit per head
  // Appends in pieces up to 4000 tokens: the index refits as it grows.
  for (int64_t r = 1024; r < 4000; r += 500)
    ASSERT_TRUE(AppendRows(**s, pr, r, std::min<int64_t>(4000, r + 500)).ok());
  const SessionInfo grown = (*s)->Info();
  EXPECT_GT(grown.refits, 2 + 2 * 4);  // several refits per head
  EXPECT_GT(grown.refit_seconds, 0.0);
  for (int64_t r = 4000; r < 4096; ++r) {
    SessionCall call;
    const std::vector<float> out = Call(**s, pr, r, r + 1, true, &call);
    EXPECT_TRUE(call.incremental);
    for (float x : out) ASSERT_TRUE(std::isfinite(x));
  }
  const SessionInfo info = (*s)->Info();
  EXPECT_EQ(info.lengths[0], 4096);
  EXPECT_EQ(info.kv_bytes, 2 * 4096 * 64 * 4);
  EXPECT_GT(info.state_bytes, 0);
  EXPECT_GT(info.calibrations, 0);
  EXPECT_EQ(info.steps, 96);
  EXPECT_LE(info.held_bytes, 1.05 * (info.kv_bytes + info.state_bytes));
  // What the session reserved covers what it holds; deleting it returns
  // everything.
  EXPECT_GE(mem.held(), info.held_bytes);
  s->reset();
  EXPECT_EQ(mem.held(), 0);
}

// Sessions of a batch run together: two sessions' steps in one call of
// AttendSessions equal each alone.
TEST(KvSessionIncremental, StepsOfManySessionsInOneBatch) {
  const Problem pr(1, 2, 300, 16, 16, 43);
  const SessionConfig c = pr.Config(Method::kScatterbrain);
  auto a = KvSession::Create(c, nullptr);
  auto b = KvSession::Create(c, nullptr);
  auto solo = KvSession::Create(c, nullptr);
  ASSERT_TRUE(a.ok() && b.ok() && solo.ok());
  for (auto* s : {a->get(), b->get(), solo->get()})
    ASSERT_TRUE(AppendRows(*s, pr, 0, 250).ok());
  for (int64_t r = 250; r < 300; ++r) {
    const std::vector<float> want = Call(**solo, pr, r, r + 1, true);
    std::vector<float> q = Rows(pr.q, 2, pr.N, 16, r, r + 1);
    std::vector<float> k = Rows(pr.k, 2, pr.N, 16, r, r + 1);
    std::vector<float> v = Rows(pr.v, 2, pr.N, 16, r, r + 1);
    std::vector<float> out_a(32), out_b(32);
    SessionCall calls[2];
    KvSession* ss[2] = {a->get(), b->get()};
    float* outs[2] = {out_a.data(), out_b.data()};
    for (int i = 0; i < 2; ++i) {
      calls[i].session = ss[i];
      calls[i].q = q.data();
      calls[i].k = k.data();
      calls[i].v = v.data();
      calls[i].seq_q = 1;
      calls[i].out = outs[i];
    }
    AttendSessions(absl::MakeSpan(calls, 2), nullptr, 2);
    ASSERT_TRUE(calls[0].status.ok() && calls[1].status.ok());
    EXPECT_EQ(out_a, want) << "step " << r;
    EXPECT_EQ(out_b, want) << "step " << r;
  }
}

}  // namespace
}  // namespace scatterbrain
