// scatterbrain/tests/testutil/service_calls.cc — see service_calls.h.
#include "tests/testutil/service_calls.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/params.h"
#include "proto/convert/settings.h"
#include "proto/convert/wire.h"
#include "server/proto_convert.h"
#include "tests/testutil/cpu_attention.h"
#include "tests/testutil/random.h"

namespace scatterbrain {
namespace testutil {

server::ServerOptions LoopbackServerOptions() {
  server::ServerOptions o;
  o.host = "127.0.0.1";
  o.port = 0;
  o.metrics_port = 0;
  o.executor.backend = "cpu";
  return o;
}

std::shared_ptr<grpc::Channel> OwnChannel(int port) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetMaxReceiveMessageSize(64 << 20);
  return grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", port),
                                   grpc::InsecureChannelCredentials(), args);
}

// The core dtype of a wire dtype the test set.
DType Core(pb::DType dtype) {
  DType d = DType::kFloat32;
  EXPECT_TRUE(wire::DTypeFromProto(dtype, &d)) << dtype;
  return d;
}

std::string RandomTensor(pb::DType wire_dtype, int64_t n, uint64_t seed) {
  const DType dtype = Core(wire_dtype);
  const std::vector<float> x = testutil::RandomUniform(n, seed, -1.5f, 1.5f);
  std::string bytes(n * DTypeBytes(dtype), '\0');
  EncodeFromFloat(dtype, x.data(), n, bytes.data());
  return bytes;
}

Req MakeReq(const std::string& id, pb::Method method, pb::DType dtype, int b,
            int h, int nq, int nk, int d, int dv, uint64_t seed) {
  Req r;
  r.header.set_request_id(id);
  pb::MethodSettings* s = r.header.mutable_settings();
  s->set_method(method);
  s->set_seed(1234);
  if (method == pb::METHOD_PERFORMER || method == pb::METHOD_SCATTERBRAIN)
    s->set_num_features(16);
  if (method == pb::METHOD_LSH || method == pb::METHOD_SCATTERBRAIN)
    s->set_bucket_size(8);
  if (method == pb::METHOD_LOCAL) s->set_window(6);
  if (method == pb::METHOD_SCATTERBRAIN) s->set_calibration_rows(4);
  r.header.set_dtype(dtype);
  pb::Shape* sh = r.header.mutable_shape();
  sh->set_batch(b);
  sh->set_heads(h);
  sh->set_seq_q(nq);
  sh->set_seq_k(nk);
  sh->set_dim(d);
  sh->set_dim_v(dv);
  r.q = RandomTensor(dtype, int64_t{b} * h * nq * d, seed);
  r.k = RandomTensor(dtype, int64_t{b} * h * nk * d, seed + 1);
  r.v = RandomTensor(dtype, int64_t{b} * h * nk * dv, seed + 2);
  return r;
}

// The same computation done locally (CPU backend, same settings and seed),
// as the output bytes the server must send.
std::string LocalOutput(const Req& r) {
  const pb::RequestHeader& h = r.header;
  AttentionParams p;
  EXPECT_TRUE(server::RequestSettingsToParams(
                  h.settings(), server::RequestDefaults(), "settings", &p)
                  .ok());
  SetShape(wire::ShapeFromProto(h.shape()), p);
  const DType dt = Core(h.dtype());
  const int eb = DTypeBytes(dt);
  std::vector<float> q(r.q.size() / eb), k(r.k.size() / eb), v(r.v.size() / eb);
  DecodeToFloat(dt, r.q.data(), q.size(), q.data());
  DecodeToFloat(dt, r.k.data(), k.size(), k.data());
  DecodeToFloat(dt, r.v.data(), v.size(), v.data());
  std::vector<int32_t> lengths(h.key_lengths().begin(), h.key_lengths().end());
  p.q = q.data();
  p.k = k.data();
  p.v = v.data();
  if (!lengths.empty()) p.key_lengths = lengths.data();
  const std::vector<float> out = testutil::CpuAttention(p);
  const DType odt =
      h.output_dtype() == pb::DTYPE_UNSPECIFIED ? dt : Core(h.output_dtype());
  std::string bytes(out.size() * DTypeBytes(odt), '\0');
  EncodeFromFloat(odt, out.data(), out.size(), bytes.data());
  return bytes;
}

void SendHeader(StreamRW* s, const pb::RequestHeader& h) {
  pb::AttendRequest m;
  *m.mutable_header() = h;
  ASSERT_TRUE(s->Write(m));
}

void SendChunk(StreamRW* s, const std::string& id, pb::TensorName t,
               uint64_t offset, absl::string_view data) {
  pb::AttendRequest m;
  pb::TensorChunk* c = m.mutable_chunk();
  c->set_request_id(id);
  c->set_tensor(t);
  c->set_offset(offset);
  c->set_data(std::string(data));
  ASSERT_TRUE(s->Write(m));
}

void SendCancel(StreamRW* s, const std::string& id) {
  pb::AttendRequest m;
  m.mutable_cancel()->set_request_id(id);
  ASSERT_TRUE(s->Write(m));
}

// Sends a whole request. `interleave`: round-robin over q, k and v chunks
// (allowed: only each tensor's own chunks must be in order).
void SendRequest(StreamRW* s, const Req& r, size_t chunk, bool interleave) {
  SendHeader(s, r.header);
  const std::string& id = r.header.request_id();
  const std::pair<pb::TensorName, const std::string*> tensors[] = {
      {pb::TENSOR_NAME_Q, &r.q},
      {pb::TENSOR_NAME_K, &r.k},
      {pb::TENSOR_NAME_V, &r.v}};
  if (!interleave) {
    for (const auto& [name, bytes] : tensors) {
      for (size_t off = 0; off < bytes->size(); off += chunk) {
        SendChunk(s, id, name, off,
                  absl::string_view(*bytes).substr(off, chunk));
      }
    }
    return;
  }
  size_t offs[3] = {0, 0, 0};
  for (bool more = true; more;) {
    more = false;
    for (int t = 0; t < 3; ++t) {
      const std::string& bytes = *tensors[t].second;
      if (offs[t] >= bytes.size()) continue;
      SendChunk(s, id, tensors[t].first, offs[t],
                absl::string_view(bytes).substr(offs[t], chunk));
      offs[t] += chunk;
      more = true;
    }
  }
}

void Absorb(const pb::AttendResponse& m,
            std::map<std::string, Reply>* replies) {
  Reply& r = (*replies)[m.request_id()];
  ++r.messages;
  if (r.last) r.out_of_order = true;  // anything after `last` is a bug
  switch (m.kind_case()) {
    case pb::AttendResponse::kHeader:
      if (r.has_header || r.chunks > 0) r.out_of_order = true;
      r.has_header = true;
      r.header = m.header();
      break;
    case pb::AttendResponse::kChunk:
      if (!r.has_header || m.chunk().offset() != r.output.size() ||
          m.chunk().tensor() != pb::TENSOR_NAME_OUTPUT ||
          m.chunk().request_id() != m.request_id()) {
        r.out_of_order = true;
      }
      r.output += m.chunk().data();
      ++r.chunks;
      break;
    case pb::AttendResponse::kError:
      r.has_error = true;
      r.code = m.error().code();
      r.message = m.error().message();
      break;
    default:
      r.out_of_order = true;
  }
  if (m.last()) r.last = true;
}

// Reads until the server ends the stream.
std::map<std::string, Reply> ReadAll(StreamRW* s) {
  std::map<std::string, Reply> replies;
  pb::AttendResponse m;
  while (s->Read(&m)) Absorb(m, &replies);
  return replies;
}

// Reads until every id in `ids` has its last message.
std::map<std::string, Reply> ReadUntilDone(
    StreamRW* s, const std::vector<std::string>& ids) {
  std::map<std::string, Reply> replies;
  pb::AttendResponse m;
  auto all_done = [&] {
    for (const std::string& id : ids) {
      auto it = replies.find(id);
      if (it == replies.end() || !it->second.last) return false;
    }
    return true;
  };
  while (!all_done() && s->Read(&m)) Absorb(m, &replies);
  return replies;
}

void ExpectOutput(const Reply& r, const Req& req, const std::string& what) {
  ASSERT_FALSE(r.has_error) << what << ": " << r.message;
  EXPECT_TRUE(r.last) << what;
  EXPECT_FALSE(r.out_of_order) << what;
  ASSERT_TRUE(r.has_header) << what;
  EXPECT_EQ(r.header.shape().SerializeAsString(),
            req.header.shape().SerializeAsString());
  const std::string want = LocalOutput(req);
  ASSERT_EQ(r.output.size(), want.size()) << what;
  EXPECT_TRUE(r.output == want) << what << ": output differs from local";
  const pb::Stats& st = r.header.stats();
  EXPECT_GE(st.batch_size(), 1u);
  EXPECT_GE(st.queue_seconds(), 0);
  EXPECT_GE(st.compute_seconds(), 0);
  EXPECT_EQ(st.backend(), "cpu");
  EXPECT_EQ(st.memory_saved_bytes(),
            st.dense_score_bytes() > st.workspace_bytes()
                ? st.dense_score_bytes() - st.workspace_bytes()
                : 0);
}

// The value of one sample line of the text exposition ("name{labels} v").
double MetricValue(const std::string& text, const std::string& series) {
  size_t pos = 0;
  while ((pos = text.find(series, pos)) != std::string::npos) {
    const bool line_start = pos == 0 || text[pos - 1] == '\n';
    const size_t end = pos + series.size();
    if (line_start && end < text.size() && text[end] == ' ') {
      return std::stod(text.substr(end + 1, text.find('\n', end) - end - 1));
    }
    pos = end;
  }
  return -1;
}

// --- sessions ---------------------------------------------------------------

void WithToken(grpc::ClientContext* ctx, const std::string& token) {
  if (!token.empty()) ctx->AddMetadata("authorization", "Bearer " + token);
}

grpc::Status CreateSession(pb::AttentionService::Stub* stub,
                           const pb::MethodSettings& settings, int b, int h,
                           int d, int dv, pb::SessionInfo* out,
                           const std::string& token, pb::DType kv_dtype) {
  pb::CreateSessionRequest r;
  *r.mutable_settings() = settings;
  r.set_batch(b);
  r.set_heads(h);
  r.set_dim(d);
  r.set_dim_v(dv);
  r.set_kv_dtype(kv_dtype);
  grpc::ClientContext ctx;
  WithToken(&ctx, token);
  return stub->CreateSession(&ctx, r, out);
}

grpc::Status AppendKV(pb::AttentionService::Stub* stub, const std::string& id,
                      const std::vector<uint32_t>& counts, pb::DType dtype,
                      const std::string& k, const std::string& v, size_t chunk,
                      pb::SessionInfo* out, const std::string& token) {
  grpc::ClientContext ctx;
  WithToken(&ctx, token);
  std::unique_ptr<grpc::ClientWriter<pb::AppendKVRequest>> w =
      stub->AppendKV(&ctx, out);
  pb::AppendKVRequest m;
  pb::AppendKVHeader* h = m.mutable_header();
  h->set_session_id(id);
  h->set_dtype(dtype);
  for (uint32_t c : counts) h->add_counts(c);
  bool ok = w->Write(m);
  const std::pair<pb::TensorName, const std::string*> tensors[] = {
      {pb::TENSOR_NAME_K, &k}, {pb::TENSOR_NAME_V, &v}};
  for (const auto& [name, bytes] : tensors) {
    for (size_t at = 0; ok && at < bytes->size(); at += chunk) {
      pb::AppendKVRequest c;
      c.mutable_chunk()->set_tensor(name);
      c.mutable_chunk()->set_offset(at);
      c.mutable_chunk()->set_data(bytes->substr(at, chunk));
      ok = w->Write(c);
    }
  }
  if (ok) w->WritesDone();
  return w->Finish();
}

Req SessionReq(const std::string& request_id, const std::string& id, int seq_q,
               bool append, bool see_all, std::string q, std::string k,
               std::string v, pb::DType dtype) {
  Req r;
  r.header.set_request_id(request_id);
  r.header.set_dtype(dtype);
  r.header.mutable_shape()->set_seq_q(seq_q);
  pb::SessionAttend* s = r.header.mutable_session();
  s->set_session_id(id);
  s->set_append(append);
  s->set_see_all(see_all);
  r.q = std::move(q);
  r.k = std::move(k);
  r.v = std::move(v);
  return r;
}

Reply AttendOnce(pb::AttentionService::Stub* stub, const Req& r,
                 const std::string& token) {
  grpc::ClientContext ctx;
  WithToken(&ctx, token);
  Stream s = stub->Attend(&ctx);
  SendRequest(s.get(), r, 1 << 16);
  s->WritesDone();
  Reply reply = ReadAll(s.get())[r.header.request_id()];
  const grpc::Status st = s->Finish();
  EXPECT_TRUE(st.ok()) << st.error_message();
  return reply;
}

}  // namespace testutil
}  // namespace scatterbrain
