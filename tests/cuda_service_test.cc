// tests/cuda_service_test.cc — the server end to end on the CUDA backend:
// an in-process Server with backend "cuda" on 127.0.0.1, called through the
// C++ client library. Remote outputs equal the local CPU computation within
// the GPU tolerances (tests/testutil/gpu.h), requests of one setting fuse
// into one batch (stats batch_size > 1), and the metrics name the device
// (scatterbrain_device_memory_used_bytes{device="cuda:0"}). Skipped without
// a GPU or while the cuda backend is not implemented.
#include <cmath>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "client/cpp/client.h"
#include "common/dtype.h"
#include "gtest/gtest.h"
#include "kernels/params.h"
#include "proto/convert/settings.h"
#include "proto/convert/wire.h"
#include "server/server.h"
#include "tests/testutil/cpu_attention.h"
#include "tests/testutil/gpu.h"
#include "tests/testutil/random.h"
#include "tests/testutil/reference.h"

namespace scatterbrain {
namespace {

namespace v1 = ::scatterbrain::v1;
using client::AttendInput;
using client::AttendResult;
using testutil::AllowedGpuError;
using testutil::kCpuAgreement;
using testutil::RelDiff;

// Owned inputs of one request.
struct Qkv {
  AttentionShape shape;
  std::vector<float> q, k, v;
  std::vector<int32_t> key_lengths;
};

Qkv MakeQkv(int64_t b, int64_t h, int64_t nq, int64_t nk, uint32_t seed,
            std::vector<int32_t> key_lengths = {}) {
  Qkv t;
  t.shape = {b, h, nq, nk, 64, 64};
  t.q = testutil::RandomNormal(t.shape.q_elements(), seed);
  t.k = testutil::RandomNormal(t.shape.k_elements(), seed + 1000);
  t.v = testutil::RandomNormal(t.shape.v_elements(), seed + 2000);
  t.key_lengths = std::move(key_lengths);
  return t;
}

AttendInput Input(const Qkv& t, v1::Method method, v1::DType dtype) {
  AttendInput in;
  in.q = t.q;
  in.k = t.k;
  in.v = t.v;
  in.shape = t.shape;
  in.key_lengths = t.key_lengths;
  in.dtype = dtype;
  in.settings.set_method(method);
  in.settings.set_seed(11);
  if (method == v1::METHOD_PERFORMER || method == v1::METHOD_SCATTERBRAIN) {
    in.settings.set_num_features(64);
  }
  if (method == v1::METHOD_LSH || method == v1::METHOD_SCATTERBRAIN) {
    in.settings.set_bucket_size(32);
  }
  if (method == v1::METHOD_LOCAL) in.settings.set_window(33);
  return in;
}

// `x` as the wire dtype carries it.
std::vector<float> ThroughWire(std::vector<float> x, DType dtype) {
  std::vector<char> bytes(x.size() * DTypeBytes(dtype));
  EncodeFromFloat(dtype, x.data(), x.size(), bytes.data());
  DecodeToFloat(dtype, bytes.data(), x.size(), x.data());
  return x;
}

// What the server computes on: the inputs through the wire, with `in`'s
// settings and shape.
struct Local {
  AttentionParams params;
  std::vector<float> q, k, v;
};

Local LocalProblem(const AttendInput& in, const Qkv& t, DType dtype) {
  Local l;
  EXPECT_TRUE(wire::SettingsToParams(in.settings, "settings", &l.params).ok());
  SetShape(t.shape, l.params);
  l.q = ThroughWire(t.q, dtype);
  l.k = ThroughWire(t.k, dtype);
  l.v = ThroughWire(t.v, dtype);
  l.params.q = l.q.data();
  l.params.k = l.k.data();
  l.params.v = l.v.data();
  l.params.key_lengths = t.key_lengths.empty() ? nullptr : t.key_lengths.data();
  SetContiguousStrides(l.params);
  return l;
}

// The value of one sample line ("name{labels} v") of the text exposition.
double MetricValue(const std::string& text, const std::string& series) {
  size_t pos = 0;
  while ((pos = text.find(series, pos)) != std::string::npos) {
    const size_t end = pos + series.size();
    if ((pos == 0 || text[pos - 1] == '\n') && end < text.size() &&
        text[end] == ' ') {
      return std::stod(text.substr(end + 1, text.find('\n', end) - end - 1));
    }
    pos = end;
  }
  return -1;
}

class CudaServiceTest : public testutil::CudaTest {
 protected:
  // A batch closes at `max_batch_requests`, or after `max_delay_us`.
  void StartServer(int max_batch_requests, int64_t max_delay_us) {
    server::ServerOptions o;
    o.host = "127.0.0.1";
    o.port = 0;
    o.metrics_port = 0;
    o.executor.backend = stand_in() ? "cpu" : "cuda";
    o.executor.batcher.max_batch_requests = max_batch_requests;
    o.executor.batcher.max_queue_delay_us = max_delay_us;
    o.drain_timeout_s = 10;
    absl::StatusOr<std::unique_ptr<server::Server>> s =
        server::Server::Start(o);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = *std::move(s);
    client::ClientOptions co;
    co.target = absl::StrCat("127.0.0.1:", server_->port());
    co.deadline = absl::Seconds(120);
    absl::StatusOr<std::unique_ptr<client::AttentionClient>> c =
        client::AttentionClient::Create(co);
    ASSERT_TRUE(c.ok()) << c.status();
    client_ = *std::move(c);
  }

  void TearDown() override {
    client_.reset();
    if (server_ != nullptr) server_->Shutdown();
    server_.reset();
    CudaTest::TearDown();
  }

  // A remote result against the local CPU backend on the same problem.
  void ExpectMatchesLocal(const AttendResult& r, const AttendInput& in,
                          const Qkv& t, DType dtype, const std::string& what) {
    EXPECT_EQ(r.stats.backend, stand_in() ? "cpu" : "cuda") << what;
    const Local l = LocalProblem(in, t, dtype);
    const std::vector<float> cpu =
        ThroughWire(testutil::CpuAttention(l.params), dtype);
    const Method m = l.params.method;
    if (m == Method::kExact || m == Method::kPerformer || m == Method::kLocal) {
      const double diff = RelDiff(r.out, cpu);
      if (dtype == DType::kFloat32) NoteCpuDiff(diff);
      const double ulp = dtype == DType::kFloat16    ? std::ldexp(1.0, -10)
                         : dtype == DType::kBFloat16 ? std::ldexp(1.0, -7)
                                                     : 0.0;
      EXPECT_LE(diff, kCpuAgreement + ulp) << what;
    } else {
      const std::vector<double> ref = testing::ExactAttentionDouble(l.params);
      const Strides s =
          ContiguousStrides(t.shape.heads, t.shape.seq_q, t.shape.dim_v);
      const double gpu_err =
          testing::RelativeError(r.out.data(), s, l.params, ref);
      const double cpu_err =
          testing::RelativeError(cpu.data(), s, l.params, ref);
      EXPECT_LE(gpu_err, AllowedGpuError(cpu_err)) << what;
    }
  }

  std::unique_ptr<server::Server> server_;
  std::unique_ptr<client::AttentionClient> client_;
};

TEST_F(CudaServiceTest, FusedBatchesMatchTheLocalCpu) {
  constexpr int kBatch = 4;
  StartServer(kBatch, 30'000'000);  // only the size closes a batch
  const std::vector<Qkv> inputs = {
      MakeQkv(1, 8, 256, 256, 1), MakeQkv(2, 4, 100, 300, 2, {300, 129}),
      MakeQkv(1, 8, 513, 513, 3), MakeQkv(1, 2, 1, 64, 4)};
  struct Group {
    v1::Method method;
    v1::DType dtype;
    bool causal;
  };
  for (const Group& g :
       {Group{v1::METHOD_EXACT, v1::DTYPE_FLOAT32, false},
        Group{v1::METHOD_EXACT, v1::DTYPE_BFLOAT16, true},
        Group{v1::METHOD_PERFORMER, v1::DTYPE_FLOAT32, false},
        Group{v1::METHOD_LOCAL, v1::DTYPE_FLOAT16, true},
        Group{v1::METHOD_LSH, v1::DTYPE_FLOAT32, false},
        Group{v1::METHOD_SCATTERBRAIN, v1::DTYPE_FLOAT16, false}}) {
    DType dtype = DType::kFloat32;
    ASSERT_TRUE(wire::DTypeFromProto(g.dtype, &dtype));
    std::unique_ptr<client::AttendStream> stream = client_->OpenStream();
    std::vector<AttendInput> ins;
    std::vector<std::future<absl::StatusOr<AttendResult>>> futures;
    for (const Qkv& t : inputs) {
      ins.push_back(Input(t, g.method, g.dtype));
      ins.back().settings.set_causal(g.causal);
      futures.push_back(stream->Submit(ins.back()));
    }
    for (int i = 0; i < kBatch; ++i) {
      const std::string what = absl::StrCat(v1::Method_Name(g.method), " ",
                                            DTypeName(dtype), " request ", i);
      absl::StatusOr<AttendResult> r = futures[i].get();
      ASSERT_TRUE(r.ok()) << what << ": " << r.status();
      EXPECT_EQ(r->stats.batch_size, kBatch) << what;
      ExpectMatchesLocal(*r, ins[i], inputs[i], dtype, what);
    }
    EXPECT_TRUE(stream->Finish().ok());
  }
  const std::string text = server_->metrics().Serialize();
  const std::string device = stand_in() ? "cpu" : "cuda:0";
  EXPECT_GT(
      MetricValue(text, absl::StrCat("scatterbrain_device_memory_used_bytes{"
                                     "device=\"",
                                     device, "\"}")),
      0)
      << text;
  EXPECT_EQ(MetricValue(text, "scatterbrain_batch_size_count"), 6) << text;
  EXPECT_EQ(MetricValue(text, "scatterbrain_batch_size_sum"), 6 * kBatch);
}

TEST_F(CudaServiceTest, InfoAndUnaryCallsUseTheDevice) {
  StartServer(8, 500);
  absl::StatusOr<v1::ServerInfo> info = client_->GetServerInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->backend(), stand_in() ? "cpu" : "cuda");
  const Qkv t = MakeQkv(2, 2, 97, 130, 7, {130, 50});
  for (v1::Method m : {v1::METHOD_EXACT, v1::METHOD_SCATTERBRAIN}) {
    const AttendInput in = Input(t, m, v1::DTYPE_FLOAT32);
    absl::StatusOr<AttendResult> r = client_->AttendUnary(in);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->stats.batch_size, 1);
    ExpectMatchesLocal(*r, in, t, DType::kFloat32, v1::Method_Name(m));
  }
}

}  // namespace
}  // namespace scatterbrain
