// scatterbrain/client/cli/attend.cc — `scatterbrain_cli attend`: one
// attention call on .npy files, on a local backend or, with --server, on a
// scatterbrain_server through the C++ client (same settings and seed, same
// output); writes the output as a float32 .npy.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/cli/commands.h"
#include "client/cli/flags.h"
#include "client/cli/npy.h"
#include "client/cpp/client.h"
#include "kernels/backend.h"
#include "kernels/params.h"
#include "proto/convert/wire.h"

namespace scatterbrain {
namespace cli {
namespace {

const FlagSpecs& AttendFlags() {
  static const auto* flags = new FlagSpecs(WithSecurity(WithSettings({
      {"q", {FlagKind::kString, true}},
      {"k", {FlagKind::kString, true}},
      {"v", {FlagKind::kString, true}},
      {"out", {FlagKind::kString, true}},
      {"method", {FlagKind::kString, true}},
      {"key_lengths", {FlagKind::kString, false}},
      {"threads", {FlagKind::kString, false}},
      {"backend", {FlagKind::kString, false}},
      {"stats", {FlagKind::kBool, false}},
      {"server", {FlagKind::kString, false}},
      {"dtype", {FlagKind::kString, false}},
      {"unary", {FlagKind::kBool, false}},
      {"chunk_bytes", {FlagKind::kString, false}},
      {"timeout_s", {FlagKind::kString, false}},
      {"retry_budget_s", {FlagKind::kString, false}},
  })));
  ;
  return *flags;
}

// After the stats line: one line per (batch, head) that Scatterbrain chose
// for (sparse=auto, global_keys, target_error), e.g.
//   head b=0 h=3: local features=32 bucket=0 window=32 globals=2 mass=0.91
//       err=0.041/0.077
// (one line; err = estimate / upper bound, target_error only), or
//   head b=0 h=3: exact
// where the error target made the slice exact attention.
void PrintPlans(const std::vector<HeadPlan>& plans) {
  for (const HeadPlan& h : plans) {
    std::string line =
        absl::StrFormat("head b=%lld h=%lld: ", static_cast<long long>(h.batch),
                        static_cast<long long>(h.head));
    if (h.exact) {
      absl::StrAppend(&line, "exact");
    } else {
      absl::StrAppendFormat(&line, "%s features=%d bucket=%d window=%d",
                            SparseName(h.sparse), h.num_features, h.bucket_size,
                            h.window);
      absl::StrAppendFormat(&line, " globals=%d", h.global_keys);
      if (h.support_mass >= 0) {
        absl::StrAppendFormat(&line, " mass=%.3f", h.support_mass);
      }
      if (h.error_bound >= 0) {
        absl::StrAppendFormat(&line, " err=%.4f/%.4f", h.error_estimate,
                              h.error_bound);
      }
    }
    std::printf("%s\n", line.c_str());
  }
}

// The stats line's cost fields: query-key evaluations spent against exact
// attention's, and the request's error bound (target_error only).
std::string CostFields(int64_t score_evaluations,
                       int64_t exact_score_evaluations, double error_bound) {
  std::string s;
  if (exact_score_evaluations > 0) {
    absl::StrAppendFormat(
        &s, " score_evaluations=%lld exact_score_evaluations=%lld cost=%.4f",
        static_cast<long long>(score_evaluations),
        static_cast<long long>(exact_score_evaluations),
        static_cast<double>(score_evaluations) / exact_score_evaluations);
  }
  if (error_bound >= 0)
    absl::StrAppendFormat(&s, " error_bound=%.4f", error_bound);
  return s;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

absl::StatusOr<NpyArray> LoadTensor(const FlagValues& f, const char* flag) {
  absl::StatusOr<NpyArray> a = ReadNpy(f.at(flag), /*required_rank=*/4);
  if (!a.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, ": ", a.status().message()));
  }
  return a;
}

int AttendRemote(const FlagValues& f, const AttentionParams& p,
                 const std::vector<int32_t>& key_lengths, const NpyArray& q,
                 const NpyArray& k, const NpyArray& v, bool stats) {
  absl::StatusOr<std::unique_ptr<client::AttentionClient>> c =
      ClientFromFlags(f, absl::InfiniteDuration());
  if (!c.ok()) return Fail(2, c.status().message());
  absl::StatusOr<DType> dtype = DTypeFlag(f);
  if (!dtype.ok()) return Fail(2, dtype.status().message());
  absl::StatusOr<v1::MethodSettings> settings = WireSettings(p);
  if (!settings.ok()) return Fail(2, settings.status().message());

  client::AttendInput in;
  in.q = q.data;
  in.k = k.data;
  in.v = v.data;
  in.shape = ShapeOf(p);
  in.settings = *settings;
  in.key_lengths = key_lengths;
  in.dtype = wire::DTypeToProto(*dtype);

  const bool unary = BoolFlag(f, "unary");
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<client::AttendResult> r =
      unary ? (*c)->AttendUnary(in) : (*c)->Attend(in);
  const double elapsed_ms = std::chrono::duration<double, std::milli>(
                                std::chrono::steady_clock::now() - start)
                                .count();
  if (!r.ok()) return FailRemote((*c)->options().target, r.status());
  if (static_cast<int64_t>(r->out.size()) != in.shape.out_elements()) {
    return Fail(1, "server returned an output of the wrong size");
  }
  absl::Status w = WriteNpy(f.at("out"), {p.batch, p.heads, p.seq_q, p.dim_v},
                            r->out.data());
  if (!w.ok()) return Fail(1, w.message());
  if (stats) {
    const client::Stats& st = r->stats;
    std::string err = st.estimated_relative_error.has_value()
                          ? absl::StrFormat(" estimated_relative_error=%.6g",
                                            *st.estimated_relative_error)
                          : "";
    std::printf(
        "stats: method=%s backend=%s workspace_bytes=%lld "
        "dense_score_bytes=%lld denominator_guards=%lld fallbacks=%lld "
        "elapsed_ms=%.3f queue_ms=%.3f compute_ms=%.3f batch_size=%d "
        "memory_saved_bytes=%lld%s%s\n",
        MethodName(p.method), st.backend.c_str(),
        static_cast<long long>(st.workspace_bytes),
        static_cast<long long>(st.dense_score_bytes),
        static_cast<long long>(st.denominator_guards),
        static_cast<long long>(st.fallbacks), elapsed_ms,
        st.queue_seconds * 1e3, st.compute_seconds * 1e3, st.batch_size,
        static_cast<long long>(st.memory_saved_bytes), err.c_str(),
        CostFields(st.score_evaluations, st.exact_score_evaluations,
                   st.error_bound.value_or(-1.0))
            .c_str());
    PrintPlans(st.head_plans);
  }
  return 0;
}

}  // namespace

int Attend(const std::vector<std::string>& args) {
  absl::StatusOr<FlagValues> flags = ParseFlags(args, AttendFlags());
  if (!flags.ok()) return Fail(2, flags.status().message());
  const FlagValues& f = *flags;

  AttentionParams p = OneShotDefaults();
  absl::Status settings = ParseSettings(f, &p);
  if (!settings.ok()) return Fail(2, settings.message());
  std::vector<int32_t> key_lengths;
  BackendOptions backend_options;
  for (absl::Status s : {
           IntFlag(f, "threads", &backend_options.threads),
           KeyLengthsFlag(f, &key_lengths),
       }) {
    if (!s.ok()) return Fail(2, s.message());
  }
  if (backend_options.threads < 0) {
    return Fail(2, "flag --threads: must be >= 0");
  }
  const bool stats = BoolFlag(f, "stats");
  const bool remote = f.count("server") > 0;
  if (remote) {
    for (const char* local_only : {"threads", "backend"}) {
      if (f.count(local_only)) {
        return Fail(2, absl::StrCat("flag --", local_only,
                                    " applies to local runs only (the "
                                    "server picks its backend and threads)"));
      }
    }
  } else {
    std::vector<std::string> remote_only = SecurityFlagNames();
    remote_only.insert(remote_only.end(), {"dtype", "unary", "chunk_bytes",
                                           "timeout_s", "retry_budget_s"});
    for (const std::string& name : remote_only) {
      if (f.count(name)) {
        return Fail(2, absl::StrCat("flag --", name, " needs --server"));
      }
    }
  }

  const std::string backend_name = f.count("backend") ? f.at("backend") : "cpu";
  const std::vector<std::string> compiled = CompiledBackends();
  if (!remote && std::find(compiled.begin(), compiled.end(), backend_name) ==
                     compiled.end()) {
    return Fail(
        2, absl::StrCat("unknown --backend '", backend_name,
                        "' (compiled: ", absl::StrJoin(compiled, ", "), ")"));
  }

  absl::StatusOr<NpyArray> q = LoadTensor(f, "q");
  if (!q.ok()) return Fail(2, q.status().message());
  absl::StatusOr<NpyArray> k = LoadTensor(f, "k");
  if (!k.ok()) return Fail(2, k.status().message());
  absl::StatusOr<NpyArray> v = LoadTensor(f, "v");
  if (!v.ok()) return Fail(2, v.status().message());

  const auto& qs = q->shape;
  const auto& ks = k->shape;
  const auto& vs = v->shape;
  if (qs[0] != ks[0] || qs[0] != vs[0] || qs[1] != ks[1] || qs[1] != vs[1]) {
    return Fail(2,
                absl::StrCat("shape mismatch: batch and heads must agree: q ",
                             ShapeString(qs), ", k ", ShapeString(ks), ", v ",
                             ShapeString(vs)));
  }
  if (ks[2] != vs[2]) {
    return Fail(2, absl::StrCat("shape mismatch: k and v need the same seq: k ",
                                ShapeString(ks), ", v ", ShapeString(vs)));
  }
  if (qs[3] != ks[3]) {
    return Fail(2, absl::StrCat("shape mismatch: q and k need the same dim: q ",
                                ShapeString(qs), ", k ", ShapeString(ks)));
  }
  if (!key_lengths.empty() &&
      static_cast<int64_t>(key_lengths.size()) != qs[0]) {
    return Fail(
        2, absl::StrFormat("flag --key_lengths: %d values given, batch is %d",
                           key_lengths.size(), qs[0]));
  }

  SetShape({qs[0], qs[1], qs[2], ks[2], qs[3], vs[3]}, p);
  if (remote) return AttendRemote(f, p, key_lengths, *q, *k, *v, stats);
  // Guard the output allocation against int64 overflow before sizing it.
  const int64_t kMaxOut = int64_t{1} << 36;
  int64_t out_elems = 1;
  for (int64_t d : {p.batch, p.heads, p.seq_q, p.dim_v}) {
    if (d != 0 && out_elems > kMaxOut / d) {
      return Fail(2, "output too large");
    }
    out_elems *= d;
  }
  std::vector<float> out(static_cast<size_t>(out_elems));
  p.q = q->data.data();
  p.k = k->data.data();
  p.v = v->data.data();
  p.out = out.data();
  p.key_lengths = key_lengths.empty() ? nullptr : key_lengths.data();
  SetContiguousStrides(p);

  absl::StatusOr<std::unique_ptr<Backend>> backend =
      CreateBackend(backend_name, backend_options);
  if (!backend.ok()) {
    return Fail(
        backend.status().code() == absl::StatusCode::kInvalidArgument ? 2 : 1,
        backend.status().message());
  }
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<AttentionStats> st = (*backend)->Forward(p);
  const double elapsed_ms = std::chrono::duration<double, std::milli>(
                                std::chrono::steady_clock::now() - start)
                                .count();
  if (!st.ok()) {
    return Fail(
        st.status().code() == absl::StatusCode::kInvalidArgument ? 2 : 1,
        st.status().message());
  }

  absl::Status w =
      WriteNpy(f.at("out"), {p.batch, p.heads, p.seq_q, p.dim_v}, out.data());
  if (!w.ok()) return Fail(1, w.message());

  if (stats) {
    std::printf(
        "stats: method=%s backend=%s workspace_bytes=%lld "
        "dense_score_bytes=%lld denominator_guards=%lld fallbacks=%lld "
        "elapsed_ms=%.3f%s\n",
        MethodName(p.method), (*backend)->name().c_str(),
        static_cast<long long>(st->workspace_bytes),
        static_cast<long long>(st->dense_score_bytes),
        static_cast<long long>(st->denominator_guards),
        static_cast<long long>(st->fallbacks), elapsed_ms,
        CostFields(st->score_evaluations, st->exact_score_evaluations,
                   st->error_bound)
            .c_str());
    PrintPlans(st->head_plans);
  }
  return 0;
}

}  // namespace cli
}  // namespace scatterbrain
