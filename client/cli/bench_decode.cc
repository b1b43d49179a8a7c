// scatterbrain/client/cli/bench_decode.cc — `scatterbrain_cli bench
// --decode`: what a server-held K/V session buys a decoding client.
//
// Builds a context of N tokens in a session (appends of --prefill_chunk
// tokens), then runs T decode steps, each one Session::Step (the token's q,
// k and v in one message, its output back), and reports per-step latency
// percentiles, the server's compute and queue time, the bytes on the wire
// per step and tokens/s. Then the same attention without a session: the
// first R of those steps again, each a one-shot Attend carrying the whole
// K/V of the context so far (causal), with the same figures and the ratios.
// The outputs of the two are compared (equal to rounding for exact,
// performer and local; lsh and scatterbrain cluster differently), and each
// --compare_method adds a session run of another method on the same data;
// with exact among them, both runs' errors against it are printed.
// Inputs are random N(0, 1), generated once from --seed.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "client/cli/commands.h"
#include "client/cli/flags.h"
#include "client/cpp/client.h"
#include "client/cpp/session.h"
#include "common/dtype.h"
#include "kernels/params.h"
#include "proto/convert/wire.h"

namespace scatterbrain {
namespace cli {
namespace {

const FlagSpecs& DecodeFlags() {
  static const auto* flags = new FlagSpecs(WithSecurity(WithSettings({
      {"decode", {FlagKind::kBool, true}},
      {"server", {FlagKind::kString, true}},
      {"method", {FlagKind::kString, false}},
      {"compare_method", {FlagKind::kString, false}},
      {"context", {FlagKind::kString, false}},
      {"steps", {FlagKind::kString, false}},
      {"resend_steps", {FlagKind::kString, false}},
      {"prefill_chunk", {FlagKind::kString, false}},
      {"batch", {FlagKind::kString, false}},
      {"heads", {FlagKind::kString, false}},
      {"dim", {FlagKind::kString, false}},
      {"kv_dtype", {FlagKind::kString, false}},
      {"dtype", {FlagKind::kString, false}},
      {"chunk_bytes", {FlagKind::kString, false}},
      {"timeout_s", {FlagKind::kString, false}},
      {"retry_budget_s", {FlagKind::kString, false}},
  })));
  return *flags;
}

// The bench's data: K/V of context + steps tokens, the steps' queries.
struct Data {
  int64_t batch, heads, dim, context, steps;
  std::vector<float> k, v;  // [batch, heads, context + steps, dim]
  std::vector<float> q;     // [batch, heads, steps, dim]

  int64_t tokens() const { return context + steps; }
  // Tokens [t0, t1) of `x` ([batch, heads, n, dim], n = its size's tokens)
  // as a contiguous [batch, heads, t1 - t0, dim].
  std::vector<float> Slice(const std::vector<float>& x, int64_t n, int64_t t0,
                           int64_t t1) const {
    std::vector<float> out;
    out.reserve(static_cast<size_t>(batch * heads * (t1 - t0) * dim));
    for (int64_t bh = 0; bh < batch * heads; ++bh) {
      const float* row = x.data() + (bh * n + t0) * dim;
      out.insert(out.end(), row, row + (t1 - t0) * dim);
    }
    return out;
  }
};

// Figures of one way of decoding.
struct Run {
  std::string name;
  std::vector<double> latency_s, compute_s, queue_s;
  int64_t bytes_sent = 0, bytes_received = 0;
  double wall_s = 0;
  int64_t incremental = 0;              // steps the server ran incrementally
  std::vector<std::vector<float>> out;  // per step, kept for the comparison
  int64_t steps() const { return static_cast<int64_t>(latency_s.size()); }
  double BytesPerStep() const {
    return steps() > 0
               ? static_cast<double>(bytes_sent + bytes_received) / steps()
               : 0;
  }
};

double Ms(double s) { return s * 1e3; }

// ||a - ref|| / ||ref|| (Frobenius) over the first `steps` steps' outputs.
double RelativeError(const std::vector<std::vector<float>>& a,
                     const std::vector<std::vector<float>>& ref,
                     int64_t steps) {
  double num = 0, den = 0;
  for (size_t t = 0;
       t < static_cast<size_t>(steps) && t < a.size() && t < ref.size(); ++t) {
    for (size_t i = 0; i < std::min(a[t].size(), ref[t].size()); ++i) {
      const double e = static_cast<double>(a[t][i]) - ref[t][i];
      num += e * e;
      den += static_cast<double>(ref[t][i]) * ref[t][i];
    }
  }
  return den > 0 ? std::sqrt(num / den) : 0;
}

void Sort(Run* r) {
  for (auto* v : {&r->latency_s, &r->compute_s, &r->queue_s}) {
    std::sort(v->begin(), v->end());
  }
}

void PrintRun(const Run& r, int64_t batch) {
  std::printf(
      "%s: %lld steps, latency p50=%.3f ms p90=%.3f ms p99=%.3f ms, server "
      "compute p50=%.3f ms, queue p50=%.3f ms, bytes/step sent+received=%.0f "
      "(%.0f + %.0f), tokens/s=%.1f, incremental %lld/%lld\n",
      r.name.c_str(), static_cast<long long>(r.steps()),
      Ms(Percentile(r.latency_s, 0.5)), Ms(Percentile(r.latency_s, 0.9)),
      Ms(Percentile(r.latency_s, 0.99)), Ms(Percentile(r.compute_s, 0.5)),
      Ms(Percentile(r.queue_s, 0.5)), r.BytesPerStep(),
      static_cast<double>(r.bytes_sent) / std::max<int64_t>(1, r.steps()),
      static_cast<double>(r.bytes_received) / std::max<int64_t>(1, r.steps()),
      r.wall_s > 0 ? r.steps() * batch / r.wall_s : 0,
      static_cast<long long>(r.incremental), static_cast<long long>(r.steps()));
}

void Record(const client::AttendResult& res, double secs, Run* r) {
  r->latency_s.push_back(secs);
  r->compute_s.push_back(res.stats.compute_seconds);
  r->queue_s.push_back(res.stats.queue_seconds);
  r->incremental += res.stats.incremental ? 1 : 0;
}

double Since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
      .count();
}

// A session of `settings`: prefill the context, then the decode steps.
absl::StatusOr<Run> RunSession(const client::AttentionClient& c,
                               const client::SessionSpec& spec, const Data& d,
                               int64_t prefill_chunk, const std::string& name) {
  absl::StatusOr<client::Session> s = client::Session::Create(c, spec);
  if (!s.ok()) return s.status();
  const auto p0 = std::chrono::steady_clock::now();
  int64_t appends = 0;
  for (int64_t t0 = 0; t0 < d.context; t0 += prefill_chunk) {
    const int64_t t1 = std::min(d.context, t0 + prefill_chunk);
    absl::StatusOr<v1::SessionInfo> info =
        s->Append(t1 - t0, d.Slice(d.k, d.tokens(), t0, t1),
                  d.Slice(d.v, d.tokens(), t0, t1));
    if (!info.ok()) return info.status();
    ++appends;
  }
  const client::WireBytes before = s->wire_bytes();
  std::printf("%s prefill: %lld tokens in %lld appends, %.3f s, %.1f MB sent\n",
              name.c_str(), static_cast<long long>(d.context),
              static_cast<long long>(appends), Since(p0), before.sent / 1e6);
  Run r;
  r.name = name;
  const auto w0 = std::chrono::steady_clock::now();
  for (int64_t t = 0; t < d.steps; ++t) {
    const int64_t tok = d.context + t;
    const std::vector<float> q = d.Slice(d.q, d.steps, t, t + 1);
    const std::vector<float> k = d.Slice(d.k, d.tokens(), tok, tok + 1);
    const std::vector<float> v = d.Slice(d.v, d.tokens(), tok, tok + 1);
    const auto t0 = std::chrono::steady_clock::now();
    absl::StatusOr<client::AttendResult> res = s->Step(q, k, v);
    const double secs = Since(t0);
    if (!res.ok()) return res.status();
    Record(*res, secs, &r);
    r.out.push_back(std::move(res->out));
  }
  r.wall_s = Since(w0);
  const client::WireBytes after = s->wire_bytes();
  r.bytes_sent = after.sent - before.sent;
  r.bytes_received = after.received - before.received;
  absl::StatusOr<v1::SessionInfo> info = s->Info();
  if (!info.ok()) return info.status();
  const double kv = static_cast<double>(info->kv_bytes());
  const double state = static_cast<double>(info->state_bytes());
  std::printf(
      "%s memory: held %.2f MB = K/V %.2f MB + state %.2f MB + unfilled "
      "blocks %.2f MB (held / (K/V + state) = %.4f); refits %llu\n",
      name.c_str(), info->held_bytes() / 1e6, kv / 1e6, state / 1e6,
      (static_cast<double>(info->held_bytes()) - kv - state) / 1e6,
      info->held_bytes() / std::max(1.0, kv + state),
      static_cast<unsigned long long>(info->refits()));
  absl::StatusOr<int64_t> freed = s->Close();
  if (!freed.ok()) return freed.status();
  return r;
}

// The first `steps` decode steps again, each a one-shot Attend carrying
// the whole K/V so far. The inputs are prepared (copied and converted)
// before the clock starts, so latency is the wire and the server.
absl::StatusOr<Run> RunResend(client::AttentionClient& c,
                              const v1::MethodSettings& settings, DType dtype,
                              const Data& d, int64_t steps) {
  Run r;
  r.name = "resend K/V";
  std::unique_ptr<client::AttendStream> stream = c.OpenStream();
  for (int64_t t = 0; t < steps; ++t) {
    const int64_t len = d.context + t + 1;
    const std::vector<float> q = d.Slice(d.q, d.steps, t, t + 1);
    const std::vector<float> k = d.Slice(d.k, d.tokens(), 0, len);
    const std::vector<float> v = d.Slice(d.v, d.tokens(), 0, len);
    client::AttendInput in;
    in.q = q;
    in.k = k;
    in.v = v;
    in.shape = {d.batch, d.heads, 1, len, d.dim, d.dim};
    in.settings = settings;
    in.settings.set_causal(true);
    in.dtype = wire::DTypeToProto(dtype);
    absl::StatusOr<std::shared_ptr<const client::PreparedRequest>> req =
        client::Prepare(in);
    if (!req.ok()) return req.status();
    const int64_t sent0 = stream->bytes_sent();
    const int64_t recv0 = stream->bytes_received();
    const auto t0 = std::chrono::steady_clock::now();
    absl::StatusOr<client::AttendResult> res = stream->Submit(*req).get();
    const double secs = Since(t0);
    if (!res.ok()) return res.status();
    r.wall_s += secs;
    r.bytes_sent += stream->bytes_sent() - sent0;
    r.bytes_received += stream->bytes_received() - recv0;
    Record(*res, secs, &r);
    r.out.push_back(std::move(res->out));
  }
  absl::Status s = stream->Finish();
  if (!s.ok() && !absl::IsUnavailable(s)) return s;
  return r;
}

}  // namespace

int BenchDecode(const std::vector<std::string>& args) {
  absl::StatusOr<FlagValues> flags = ParseFlags(args, DecodeFlags());
  if (!flags.ok()) return Fail(2, flags.status().message());
  const FlagValues& f = *flags;
  AttentionParams p;  // method defaults to scatterbrain
  absl::Status s = ParseSettings(f, &p);
  if (!s.ok()) return Fail(2, s.message());
  if (p.causal) {
    return Fail(2, "flag --causal: not for --decode (steps are causal)");
  }
  absl::StatusOr<v1::MethodSettings> settings = WireSettings(p);
  if (!settings.ok()) return Fail(2, settings.status().message());
  absl::StatusOr<DType> dtype = DTypeFlag(f);
  if (!dtype.ok()) return Fail(2, dtype.status().message());
  DType kv_dtype = DType::kFloat32;
  if (auto it = f.find("kv_dtype");
      it != f.end() && !ParseDType(it->second, &kv_dtype)) {
    return Fail(2, absl::StrCat("unknown --kv_dtype '", it->second,
                                "' (float32|float16|bfloat16)"));
  }
  // Other methods to run a session of, on the same data.
  std::vector<std::pair<std::string, v1::MethodSettings>> compare;
  if (auto it = f.find("compare_method"); it != f.end()) {
    for (absl::string_view m : absl::StrSplit(it->second, ',')) {
      AttentionParams cp = p;
      if (!ParseMethod(std::string(m), &cp.method)) {
        return Fail(2, absl::StrCat("unknown --compare_method '", m,
                                    "' (exact|performer|lsh|local|"
                                    "scatterbrain)"));
      }
      absl::StatusOr<v1::MethodSettings> cs = WireSettings(cp);
      if (!cs.ok()) return Fail(2, cs.status().message());
      compare.emplace_back(std::string(m), *cs);
    }
  }
  int64_t batch = 1, heads = 8, dim = 64, context = 4096, steps = 100,
          resend = 20, prefill_chunk = 4096;
  for (absl::Status st : {
           PositiveFlag(f, "batch", &batch),
           PositiveFlag(f, "heads", &heads),
           PositiveFlag(f, "dim", &dim),
           PositiveFlag(f, "context", &context),
           PositiveFlag(f, "steps", &steps),
           PositiveFlag(f, "prefill_chunk", &prefill_chunk),
       }) {
    if (!st.ok()) return Fail(2, st.message());
  }
  if (auto it = f.find("resend_steps"); it != f.end()) {
    // 0 skips the resend run.
    if (!absl::SimpleAtoi(it->second, &resend) || resend < 0) {
      return Fail(2, absl::StrCat("flag --resend_steps: '", it->second,
                                  "' is not an integer >= 0"));
    }
  }
  resend = std::min(resend, steps);
  if (batch * heads * (context + steps) * dim > (int64_t{1} << 30)) {
    return Fail(2, "bench tensors too large (over 2^30 elements)");
  }
  absl::StatusOr<client::ClientOptions> options =
      ClientOptionsFromFlags(f, absl::InfiniteDuration());
  if (!options.ok()) return Fail(2, options.status().message());
  absl::StatusOr<std::unique_ptr<client::AttentionClient>> c =
      client::AttentionClient::Create(*options);
  if (!c.ok()) return Fail(2, c.status().message());
  absl::StatusOr<v1::ServerInfo> info = (*c)->GetServerInfo();
  if (!info.ok()) return FailRemote(options->target, info.status());
  std::printf(
      "server: %s (scatterbrain %s, backend %s, max_queue_delay_us %llu, "
      "kv_block_tokens %u)\n",
      options->target.c_str(), info->version().c_str(), info->backend().c_str(),
      static_cast<unsigned long long>(info->limits().max_queue_delay_us()),
      info->limits().kv_block_tokens());
  std::printf(
      "decode bench: context %lld, %lld steps (resend %lld), batch %lld, "
      "heads %lld, dim %lld, method %s, kv_dtype %s, wire %s\n",
      static_cast<long long>(context), static_cast<long long>(steps),
      static_cast<long long>(resend), static_cast<long long>(batch),
      static_cast<long long>(heads), static_cast<long long>(dim),
      MethodName(p.method), DTypeName(kv_dtype), DTypeName(*dtype));
  std::fflush(stdout);

  Data d{batch, heads, dim, context, steps, {}, {}, {}};
  std::mt19937 rng(static_cast<uint32_t>(p.seed) + 1);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  d.k.resize(static_cast<size_t>(batch * heads * d.tokens() * dim));
  d.v.resize(d.k.size());
  d.q.resize(static_cast<size_t>(batch * heads * steps * dim));
  for (auto* t : {&d.k, &d.v, &d.q}) {
    for (float& x : *t) x = normal(rng);
  }

  client::SessionSpec spec;
  spec.settings = *settings;
  spec.shape = {batch, heads, dim, dim};
  spec.kv_dtype = wire::DTypeToProto(kv_dtype);
  spec.dtype = wire::DTypeToProto(*dtype);
  absl::StatusOr<Run> session =
      RunSession(**c, spec, d, prefill_chunk, "session");
  if (!session.ok()) return FailRemote(options->target, session.status());
  Sort(&*session);
  PrintRun(*session, batch);
  // Exact outputs of the steps, when a run computed them: the reference
  // of the error lines below.
  std::vector<std::vector<float>> exact_out;
  if (p.method == Method::kExact) exact_out = session->out;
  std::vector<Run> others;
  for (const auto& [name, cs] : compare) {
    spec.settings = cs;
    absl::StatusOr<Run> r =
        RunSession(**c, spec, d, prefill_chunk, "session " + name);
    if (!r.ok()) return FailRemote(options->target, r.status());
    Sort(&*r);
    PrintRun(*r, batch);
    if (cs.method() == v1::METHOD_EXACT) exact_out = r->out;
    others.push_back(*std::move(r));
  }
  if (!exact_out.empty()) {
    others.insert(others.begin(), *session);
    for (const Run& r : others) {
      if (r.out != exact_out) {
        std::printf("%s error vs exact: %.4g over %lld steps\n", r.name.c_str(),
                    RelativeError(r.out, exact_out, steps),
                    static_cast<long long>(steps));
      }
    }
  }
  if (resend > 0) {
    absl::StatusOr<Run> rs = RunResend(**c, *settings, *dtype, d, resend);
    if (!rs.ok()) return FailRemote(options->target, rs.status());
    Sort(&*rs);
    PrintRun(*rs, batch);
    // The two computed the same attention of the same steps.
    double diff = 0, norm = 0;
    for (int64_t t = 0; t < resend; ++t) {
      const std::vector<float>& a = session->out[static_cast<size_t>(t)];
      const std::vector<float>& b = rs->out[static_cast<size_t>(t)];
      for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
        diff = std::max(diff, static_cast<double>(std::fabs(a[i] - b[i])));
        norm = std::max(norm, static_cast<double>(std::fabs(b[i])));
      }
    }
    std::printf(
        "check: session vs resend outputs over %lld steps: max abs diff %.3g "
        "(max |out| %.3g)\n",
        static_cast<long long>(resend), diff, norm);
    if (!exact_out.empty() && p.method != Method::kExact) {
      // The same steps: does the session's incremental state cost accuracy
      // against the one-shot call's?
      std::printf(
          "error vs exact over %lld steps: session %.4g, resend %.4g "
          "(session / resend = %.3f)\n",
          static_cast<long long>(resend),
          RelativeError(session->out, exact_out, resend),
          RelativeError(rs->out, exact_out, resend),
          RelativeError(session->out, exact_out, resend) /
              std::max(1e-30, RelativeError(rs->out, exact_out, resend)));
    }
    // The last column: how many times the session does better.
    std::printf(
        "\n| per step | session | resend K/V | session's advantage |\n"
        "|---|---|---|---|\n");
    const auto row = [](const char* name, double a, double b, const char* fmt) {
      std::printf("| %s | ", name);
      std::printf(fmt, a);
      std::printf(" | ");
      std::printf(fmt, b);
      std::printf(" | %.1fx |\n", a > 0 ? b / a : 0.0);
    };
    const Run& a = *session;
    const Run& b = *rs;
    row("latency p50 (ms)", Ms(Percentile(a.latency_s, 0.5)),
        Ms(Percentile(b.latency_s, 0.5)), "%.3f");
    row("latency p99 (ms)", Ms(Percentile(a.latency_s, 0.99)),
        Ms(Percentile(b.latency_s, 0.99)), "%.3f");
    row("server compute p50 (ms)", Ms(Percentile(a.compute_s, 0.5)),
        Ms(Percentile(b.compute_s, 0.5)), "%.3f");
    row("bytes sent+received", a.BytesPerStep(), b.BytesPerStep(), "%.0f");
    const double ta = a.steps() * batch / a.wall_s;
    const double tb = b.steps() * batch / b.wall_s;
    std::printf("| tokens/s | %.1f | %.1f | %.1fx |\n", ta, tb,
                tb > 0 ? ta / tb : 0.0);
  }
  return 0;
}

}  // namespace cli
}  // namespace scatterbrain
