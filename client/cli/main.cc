// scatterbrain/client/cli/main.cc — the `scatterbrain_cli` tool: runs one
// attention call on .npy files through a local backend or on a
// scatterbrain_server (--server), reports the build's or a server's version
// and backends, checks a server's health, and load-tests a server (bench).
//
// Exit codes: 0 success; 2 bad usage or bad input (flags, files, shapes,
// settings: nothing is written); 1 any other failure (health: not SERVING).
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/cli/npy.h"
#include "client/cpp/client.h"
#include "common/dtype.h"
#include "kernels/backend.h"
#include "kernels/devices.h"
#include "kernels/params.h"
#include "proto/convert/wire.h"

#ifndef SB_VERSION
#define SB_VERSION "unknown"
#endif

namespace scatterbrain {
namespace {

constexpr char kUsage[] =
    R"(usage:
  scatterbrain_cli attend --q=Q.npy --k=K.npy --v=V.npy --out=O.npy
      --method=exact|performer|lsh|local|scatterbrain [options]
      [--server=HOST:PORT [server options]]
  scatterbrain_cli info [--server=HOST:PORT]
  scatterbrain_cli health --server=HOST:PORT [--service=NAME] [--timeout_s=S]
  scatterbrain_cli bench --server=HOST:PORT [--clients=N] [--requests=M]
      [--seq=N] [--heads=H] [--dim=D] [--method=...] [options]
  scatterbrain_cli --help

attend computes attention on [batch, heads, seq, dim] float32 ('<f4') or
float16 ('<f2') .npy arrays and writes O as float32 [batch, heads, seq_q, dim_v],
locally or, with --server, on a scatterbrain_server (same settings and seed:
same output).

options (attend and bench):
  --num_features=M      random features, even (performer, scatterbrain) [128]
  --bucket_size=C       LSH cluster size in keys [128]
  --num_hashes=R        LSH hash rounds [1]
  --lsh_hash=kmeans|crosspolytope   how an LSH round orders keys [kmeans]
  --kmeans_iterations=I Lloyd iterations of the k-means hash [3]
  --hash_projections=P  cross-polytope projections per level [4]
  --lsh_transform=none|smyrf   cross-polytope input: raw directions or
                        SMYRF's asymmetric transform [none]
  --window=W            local window width: |i - j| <= W/2 [128]
  --sparse=lsh|local|both   Scatterbrain's sparse support [lsh]
  --estimator=calibrated|unbiased   Scatterbrain's combination [calibrated]
  --calibration_rows=N  exact rows per (batch, head) for calibration [16]
  --causal              causal mask (query i sees keys j <= i + seq_k - seq_q)
  --scale=S             softmax scale; 0 = 1/sqrt(dim) [0]
  --seed=N              seed of the random draws [0]
  --key_lengths=L1,L2,...   valid keys per batch entry (one per batch)
  --threads=T           CPU worker threads; 0 = all cores [0] (local only)
  --backend=NAME        backend to run on (see `info`) [cpu] (local only)
  --stats               print one line of call statistics to stdout

server options:
  --server=TARGET       host:port; several host:port,host:port (IP literals,
                        round robin); or a gRPC URI such as dns:///name:port
  --dtype=float32|float16|bfloat16   tensor bytes on the wire (both ways);
                        the .npy output stays float32 [float32]
  --unary               attend: one AttendUnary message instead of the
                        chunked Attend stream (small tensors only)
  --chunk_bytes=N       tensor bytes per stream message [1048576]
  --timeout_s=S         deadline of each call; 0 = none [attend 0, bench 0,
                        info and health 5]

health prints SERVING or NOT_SERVING (or the error) and exits 0 only when
the server is SERVING.

bench: a load generator. N clients (threads, each with its own connection
and Attend stream, one request in flight each) send M requests in total on
inputs generated once; progress goes to stderr about once a second; at the
end it prints throughput (requests/s, MB/s of tensor bytes sent), latency
p50/p90/p99 and the batch sizes the server reported.
  --clients=N           concurrent clients [1]
  --requests=M          requests in total [100]
  --duration_s=S        stop sending new requests after S seconds [60]
  --batch=B --heads=H --seq=N --dim=D   request shape [1, 8, 1024, 64]
  --seq_k=N             keys per sequence [= --seq]
  --method=...          as attend [scatterbrain]; every setting above applies

exit codes: 0 ok, 2 bad usage or input (no output written), 1 other errors.
)";

// An error that ends the program with `code` after printing one line.
struct CliError {
  int code;
  std::string message;
};

std::string OneLine(absl::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  return out;
}

int Fail(int code, absl::string_view message) {
  std::fprintf(stderr, "error: %s\n", OneLine(message).c_str());
  return code;
}

// --- flag parsing ---------------------------------------------------------

enum class FlagKind { kString, kBool };

struct FlagSpec {
  FlagKind kind;
  bool required;
};

using FlagSpecs = std::map<std::string, FlagSpec>;

// The method settings, shared by attend (local and remote) and bench.
const FlagSpecs& SettingsFlags() {
  static const auto* flags = new FlagSpecs{
      {"num_features", {FlagKind::kString, false}},
      {"bucket_size", {FlagKind::kString, false}},
      {"num_hashes", {FlagKind::kString, false}},
      {"hash_projections", {FlagKind::kString, false}},
      {"lsh_hash", {FlagKind::kString, false}},
      {"lsh_transform", {FlagKind::kString, false}},
      {"kmeans_iterations", {FlagKind::kString, false}},
      {"window", {FlagKind::kString, false}},
      {"sparse", {FlagKind::kString, false}},
      {"estimator", {FlagKind::kString, false}},
      {"calibration_rows", {FlagKind::kString, false}},
      {"causal", {FlagKind::kBool, false}},
      {"scale", {FlagKind::kString, false}},
      {"seed", {FlagKind::kString, false}},
  };
  return *flags;
}

FlagSpecs WithSettings(FlagSpecs own) {
  for (const auto& [name, spec] : SettingsFlags()) own.emplace(name, spec);
  return own;
}

const FlagSpecs& AttendFlags() {
  static const auto* flags = new FlagSpecs(WithSettings({
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
  }));
  return *flags;
}

const FlagSpecs& BenchFlags() {
  static const auto* flags = new FlagSpecs(WithSettings({
      {"server", {FlagKind::kString, true}},
      {"method", {FlagKind::kString, false}},
      {"clients", {FlagKind::kString, false}},
      {"requests", {FlagKind::kString, false}},
      {"duration_s", {FlagKind::kString, false}},
      {"batch", {FlagKind::kString, false}},
      {"heads", {FlagKind::kString, false}},
      {"seq", {FlagKind::kString, false}},
      {"seq_k", {FlagKind::kString, false}},
      {"dim", {FlagKind::kString, false}},
      {"dtype", {FlagKind::kString, false}},
      {"chunk_bytes", {FlagKind::kString, false}},
      {"timeout_s", {FlagKind::kString, false}},
  }));
  return *flags;
}

const FlagSpecs& HealthFlags() {
  static const auto* flags = new FlagSpecs{
      {"server", {FlagKind::kString, true}},
      {"service", {FlagKind::kString, false}},
      {"timeout_s", {FlagKind::kString, false}},
  };
  return *flags;
}

const FlagSpecs& InfoFlags() {
  static const auto* flags = new FlagSpecs{
      {"server", {FlagKind::kString, false}},
      {"timeout_s", {FlagKind::kString, false}},
  };
  return *flags;
}

using FlagValues = std::map<std::string, std::string>;

// Parses `--name=value` and bare `--name` (booleans only).
absl::StatusOr<FlagValues> ParseFlags(
    const std::vector<std::string>& args,
    const std::map<std::string, FlagSpec>& spec) {
  FlagValues values;
  for (const std::string& arg : args) {
    if (arg.size() < 3 || arg.compare(0, 2, "--") != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "unexpected argument '", arg, "' (flags are --name=value)"));
    }
    const size_t eq = arg.find('=');
    const std::string name =
        arg.substr(2, eq == std::string::npos ? std::string::npos : eq - 2);
    auto it = spec.find(name);
    if (it == spec.end()) {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name));
    }
    if (values.count(name)) {
      return absl::InvalidArgumentError(
          absl::StrCat("flag --", name, " given more than once"));
    }
    std::string value;
    if (eq == std::string::npos) {
      if (it->second.kind != FlagKind::kBool) {
        return absl::InvalidArgumentError(
            absl::StrCat("flag --", name, " needs a value (--", name, "=...)"));
      }
      value = "true";
    } else {
      value = arg.substr(eq + 1);
      if (it->second.kind == FlagKind::kBool) {
        if (value == "true" || value == "1") {
          value = "true";
        } else if (value == "false" || value == "0") {
          value = "false";
        } else {
          return absl::InvalidArgumentError(
              absl::StrCat("flag --", name, " is boolean: got '", value, "'"));
        }
      } else if (value.empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat("flag --", name, " has an empty value"));
      }
    }
    values[name] = value;
  }
  for (const auto& [name, s] : spec) {
    if (s.required && !values.count(name)) {
      return absl::InvalidArgumentError(
          absl::StrCat("missing required flag --", name));
    }
  }
  return values;
}

absl::Status BadNumber(absl::string_view name, absl::string_view value,
                       absl::string_view want) {
  return absl::InvalidArgumentError(
      absl::StrCat("flag --", name, ": '", value, "' is not ", want));
}

// Reads an int flag if present; leaves *out alone otherwise.
absl::Status IntFlag(const FlagValues& f, const std::string& name, int* out) {
  auto it = f.find(name);
  if (it == f.end()) return absl::OkStatus();
  int v;
  if (!absl::SimpleAtoi(it->second, &v)) {
    return BadNumber(name, it->second, "an integer");
  }
  *out = v;
  return absl::OkStatus();
}

absl::Status SeedFlag(const FlagValues& f, uint64_t* out) {
  auto it = f.find("seed");
  if (it == f.end()) return absl::OkStatus();
  uint64_t v;
  if (it->second[0] == '-' || !absl::SimpleAtoi(it->second, &v)) {
    return BadNumber("seed", it->second, "a non-negative integer");
  }
  *out = v;
  return absl::OkStatus();
}

absl::Status ScaleFlag(const FlagValues& f, float* out) {
  auto it = f.find("scale");
  if (it == f.end()) return absl::OkStatus();
  float v;
  if (!absl::SimpleAtof(it->second, &v) || !std::isfinite(v)) {
    return BadNumber("scale", it->second, "a finite number");
  }
  *out = v;
  return absl::OkStatus();
}

absl::Status KeyLengthsFlag(const FlagValues& f, std::vector<int32_t>* out) {
  auto it = f.find("key_lengths");
  if (it == f.end()) return absl::OkStatus();
  for (absl::string_view part : absl::StrSplit(it->second, ',')) {
    int32_t v;
    if (!absl::SimpleAtoi(part, &v)) {
      return BadNumber("key_lengths", part, "an integer");
    }
    out->push_back(v);
  }
  return absl::OkStatus();
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// --- commands --------------------------------------------------------------

int Info() {
  std::printf("scatterbrain %s\n", SB_VERSION);
  const std::vector<std::string> names = CompiledBackends();
  std::printf("backends: %s\n", absl::StrJoin(names, ", ").c_str());
  for (const std::string& name : names) {
    absl::StatusOr<std::unique_ptr<Backend>> b = CreateBackend(name);
    if (b.ok()) {
      std::printf("  %s: available\n", name.c_str());
    } else {
      std::printf("  %s: unavailable (%s)\n", name.c_str(),
                  OneLine(b.status().message()).c_str());
    }
  }
  std::printf("cuda: %s\n", OneLine(CudaRuntimeSummary()).c_str());
  for (const std::string& device : CudaDevices()) {
    std::printf("  %s\n", device.c_str());
  }
  return 0;
}

absl::StatusOr<NpyArray> LoadTensor(const FlagValues& f, const char* flag) {
  absl::StatusOr<NpyArray> a = ReadNpy(f.at(flag), /*required_rank=*/4);
  if (!a.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, ": ", a.status().message()));
  }
  return a;
}

// Reads the method and its settings (every flag of SettingsFlags, plus
// --method when present) into *p. Messages name the flag.
absl::Status ParseSettings(const FlagValues& f, AttentionParams* p) {
  if (f.count("method") && !ParseMethod(f.at("method"), &p->method)) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown --method '", f.at("method"),
                     "' (exact|performer|lsh|local|scatterbrain)"));
  }
  if (f.count("sparse") && !ParseSparse(f.at("sparse"), &p->sparse)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown --sparse '", f.at("sparse"), "' (lsh|local|both)"));
  }
  if (f.count("estimator") &&
      !ParseEstimator(f.at("estimator"), &p->estimator)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown --estimator '", f.at("estimator"), "' (calibrated|unbiased)"));
  }
  if (f.count("lsh_hash") && !ParseLshHash(f.at("lsh_hash"), &p->lsh_hash)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown --lsh_hash '", f.at("lsh_hash"), "' (kmeans|crosspolytope)"));
  }
  if (f.count("lsh_transform") &&
      !ParseLshTransform(f.at("lsh_transform"), &p->lsh_transform)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown --lsh_transform '", f.at("lsh_transform"), "' (none|smyrf)"));
  }
  for (absl::Status s : {
           IntFlag(f, "num_features", &p->num_features),
           IntFlag(f, "bucket_size", &p->bucket_size),
           IntFlag(f, "num_hashes", &p->num_hashes),
           IntFlag(f, "hash_projections", &p->hash_projections),
           IntFlag(f, "kmeans_iterations", &p->kmeans_iterations),
           IntFlag(f, "window", &p->window),
           IntFlag(f, "calibration_rows", &p->calibration_rows),
           SeedFlag(f, &p->seed),
           ScaleFlag(f, &p->scale),
       }) {
    if (!s.ok()) return s;
  }
  p->causal = f.count("causal") && f.at("causal") == "true";
  return absl::OkStatus();
}

// --- the server modes -------------------------------------------------------

// The settings of `p` as the proto carries them. Every field is set
// explicitly, so the server computes exactly what the local mode would.
// Negative counts cannot travel (uint32 fields): the flag is named.
absl::StatusOr<v1::MethodSettings> ToMethodSettings(const AttentionParams& p) {
  for (const auto& [name, value] :
       {std::pair<const char*, int>{"num_features", p.num_features},
        {"bucket_size", p.bucket_size},
        {"num_hashes", p.num_hashes},
        {"hash_projections", p.hash_projections},
        {"window", p.window},
        {"calibration_rows", p.calibration_rows},
        {"kmeans_iterations", p.kmeans_iterations}}) {
    if (value < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("flag --", name, ": must be >= 0, got ", value));
    }
  }
  v1::MethodSettings s;
  switch (p.method) {
    case Method::kExact:
      s.set_method(v1::METHOD_EXACT);
      break;
    case Method::kPerformer:
      s.set_method(v1::METHOD_PERFORMER);
      break;
    case Method::kLsh:
      s.set_method(v1::METHOD_LSH);
      break;
    case Method::kLocal:
      s.set_method(v1::METHOD_LOCAL);
      break;
    case Method::kScatterbrain:
      s.set_method(v1::METHOD_SCATTERBRAIN);
      break;
  }
  s.set_num_features(static_cast<uint32_t>(p.num_features));
  s.set_bucket_size(static_cast<uint32_t>(p.bucket_size));
  s.set_num_hashes(static_cast<uint32_t>(p.num_hashes));
  s.set_hash_projections(static_cast<uint32_t>(p.hash_projections));
  s.set_window(static_cast<uint32_t>(p.window));
  s.set_calibration_rows(static_cast<uint32_t>(p.calibration_rows));
  s.set_kmeans_iterations(static_cast<uint32_t>(p.kmeans_iterations));
  switch (p.sparse) {
    case SparseSupport::kLsh:
      s.set_sparse(v1::SPARSE_SUPPORT_LSH);
      break;
    case SparseSupport::kLocal:
      s.set_sparse(v1::SPARSE_SUPPORT_LOCAL);
      break;
    case SparseSupport::kBoth:
      s.set_sparse(v1::SPARSE_SUPPORT_BOTH);
      break;
  }
  s.set_estimator(p.estimator == Estimator::kUnbiased
                      ? v1::ESTIMATOR_UNBIASED
                      : v1::ESTIMATOR_CALIBRATED);
  s.set_lsh_hash(p.lsh_hash == LshHash::kCrossPolytope
                     ? v1::LSH_HASH_CROSSPOLYTOPE
                     : v1::LSH_HASH_KMEANS);
  s.set_lsh_transform(p.lsh_transform == LshTransform::kSmyrf
                          ? v1::LSH_TRANSFORM_SMYRF
                          : v1::LSH_TRANSFORM_NONE);
  s.set_causal(p.causal);
  s.set_scale(p.scale);
  s.set_seed(p.seed);
  return s;
}

absl::Status PositiveFlag(const FlagValues& f, const std::string& name,
                          int64_t* out) {
  auto it = f.find(name);
  if (it == f.end()) return absl::OkStatus();
  int64_t v;
  if (!absl::SimpleAtoi(it->second, &v) || v <= 0) {
    return BadNumber(name, it->second, "a positive integer");
  }
  *out = v;
  return absl::OkStatus();
}

// --timeout_s: seconds >= 0; 0 = no deadline.
absl::Status TimeoutFlag(const FlagValues& f, absl::Duration* out) {
  auto it = f.find("timeout_s");
  if (it == f.end()) return absl::OkStatus();
  double v;
  if (!absl::SimpleAtod(it->second, &v) || !(v >= 0) || !std::isfinite(v)) {
    return BadNumber("timeout_s", it->second, "a number of seconds >= 0");
  }
  *out = v == 0 ? absl::InfiniteDuration() : absl::Seconds(v);
  return absl::OkStatus();
}

// Client options from --server, --chunk_bytes, --timeout_s.
absl::StatusOr<client::ClientOptions> ClientOptionsFromFlags(
    const FlagValues& f, absl::Duration default_timeout) {
  client::ClientOptions o;
  o.target = f.at("server");
  o.deadline = default_timeout;
  absl::Status s = PositiveFlag(f, "chunk_bytes", &o.chunk_bytes);
  if (!s.ok()) return s;
  s = TimeoutFlag(f, &o.deadline);
  if (!s.ok()) return s;
  absl::StatusOr<client::ResolvedTarget> t = client::ResolveTarget(o);
  if (!t.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("flag --server: ", t.status().message()));
  }
  return o;
}

absl::StatusOr<DType> DTypeFlag(const FlagValues& f) {
  DType d = DType::kFloat32;
  auto it = f.find("dtype");
  if (it != f.end() && !ParseDType(it->second, &d)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown --dtype '", it->second, "' (float32|float16|bfloat16)"));
  }
  return d;
}

std::string StatusLine(const absl::Status& s) {
  return absl::StrCat(absl::StatusCodeToString(s.code()), ": ", s.message());
}

// Server errors: bad input (INVALID_ARGUMENT, over a limit) exits 2 as the
// local mode does; everything else (unreachable, unavailable) exits 1.
int FailRemote(const std::string& server, const absl::Status& s) {
  const bool bad_input = s.code() == absl::StatusCode::kInvalidArgument ||
                         s.code() == absl::StatusCode::kResourceExhausted;
  return Fail(bad_input ? 2 : 1,
              absl::StrCat("server ", server, ": ", StatusLine(s)));
}

int AttendRemote(const FlagValues& f, const AttentionParams& p,
                 const std::vector<int32_t>& key_lengths, const NpyArray& q,
                 const NpyArray& k, const NpyArray& v, bool stats) {
  absl::StatusOr<client::ClientOptions> options =
      ClientOptionsFromFlags(f, absl::InfiniteDuration());
  if (!options.ok()) return Fail(2, options.status().message());
  absl::StatusOr<DType> dtype = DTypeFlag(f);
  if (!dtype.ok()) return Fail(2, dtype.status().message());
  absl::StatusOr<v1::MethodSettings> settings = ToMethodSettings(p);
  if (!settings.ok()) return Fail(2, settings.status().message());

  client::AttendInput in;
  in.q = q.data;
  in.k = k.data;
  in.v = v.data;
  in.shape = {p.batch, p.heads, p.seq_q, p.seq_k, p.dim, p.dim_v};
  in.settings = *settings;
  in.key_lengths = key_lengths;
  in.dtype = wire::DTypeToProto(*dtype);

  absl::StatusOr<std::unique_ptr<client::AttentionClient>> c =
      client::AttentionClient::Create(*options);
  if (!c.ok()) return Fail(2, c.status().message());
  const bool unary = f.count("unary") && f.at("unary") == "true";
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<client::AttendResult> r =
      unary ? (*c)->AttendUnary(in) : (*c)->Attend(in);
  const double elapsed_ms = std::chrono::duration<double, std::milli>(
                                std::chrono::steady_clock::now() - start)
                                .count();
  if (!r.ok()) return FailRemote(options->target, r.status());
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
        "memory_saved_bytes=%lld%s\n",
        MethodName(p.method), st.backend.c_str(),
        static_cast<long long>(st.workspace_bytes),
        static_cast<long long>(st.dense_score_bytes),
        static_cast<long long>(st.denominator_guards),
        static_cast<long long>(st.fallbacks), elapsed_ms,
        st.queue_seconds * 1e3, st.compute_seconds * 1e3, st.batch_size,
        static_cast<long long>(st.memory_saved_bytes), err.c_str());
  }
  return 0;
}

int InfoRemote(const FlagValues& f) {
  absl::StatusOr<client::ClientOptions> options =
      ClientOptionsFromFlags(f, absl::Seconds(5));
  if (!options.ok()) return Fail(2, options.status().message());
  absl::StatusOr<std::unique_ptr<client::AttentionClient>> c =
      client::AttentionClient::Create(*options);
  if (!c.ok()) return Fail(2, c.status().message());
  absl::StatusOr<v1::ServerInfo> info = (*c)->GetServerInfo();
  if (!info.ok()) {
    return Fail(1, absl::StrCat("server ", options->target, ": ",
                                StatusLine(info.status())));
  }
  const v1::ServerLimits& l = info->limits();
  std::printf("server: %s\n", options->target.c_str());
  std::printf("scatterbrain %s\n", info->version().c_str());
  std::printf("backends: %s\n", absl::StrJoin(info->backends(), ", ").c_str());
  std::printf("backend: %s\n", info->backend().c_str());
  std::printf("devices:%s\n", info->devices().empty() ? " none" : "");
  for (const std::string& d : info->devices()) std::printf("  %s\n", d.c_str());
  std::printf("limits:\n");
  std::printf("  max_request_bytes: %llu\n",
              static_cast<unsigned long long>(l.max_request_bytes()));
  std::printf("  max_message_bytes: %llu\n",
              static_cast<unsigned long long>(l.max_message_bytes()));
  std::printf("  chunk_bytes: %llu\n",
              static_cast<unsigned long long>(l.chunk_bytes()));
  std::printf("  max_seq: %u\n", l.max_seq());
  std::printf("  max_queue_requests: %u\n", l.max_queue_requests());
  std::printf("  max_inflight_per_stream: %u\n", l.max_inflight_per_stream());
  std::printf("  max_batch_requests: %u\n", l.max_batch_requests());
  std::printf("  max_batch_tokens: %llu\n",
              static_cast<unsigned long long>(l.max_batch_tokens()));
  std::printf("  max_queue_delay_us: %llu\n",
              static_cast<unsigned long long>(l.max_queue_delay_us()));
  std::printf("  error_sample_rows: %u\n", l.error_sample_rows());
  return 0;
}

int Info(const std::vector<std::string>& args) {
  if (args.empty()) return Info();
  absl::StatusOr<FlagValues> flags = ParseFlags(args, InfoFlags());
  if (!flags.ok()) return Fail(2, flags.status().message());
  if (!flags->count("server")) {
    return Fail(2, "info takes no arguments except --server and --timeout_s");
  }
  return InfoRemote(*flags);
}

int Health(const std::vector<std::string>& args) {
  absl::StatusOr<FlagValues> flags = ParseFlags(args, HealthFlags());
  if (!flags.ok()) return Fail(2, flags.status().message());
  const FlagValues& f = *flags;
  absl::StatusOr<client::ClientOptions> options =
      ClientOptionsFromFlags(f, absl::Seconds(5));
  if (!options.ok()) return Fail(2, options.status().message());
  absl::StatusOr<std::unique_ptr<client::AttentionClient>> c =
      client::AttentionClient::Create(*options);
  if (!c.ok()) return Fail(2, c.status().message());
  const std::string service = f.count("service") ? f.at("service") : "";
  absl::StatusOr<client::ServingStatus> st = (*c)->Health(service);
  if (!st.ok()) {
    std::printf("%s\n", absl::StatusCodeToString(st.status().code()).c_str());
    return Fail(1, absl::StrCat("server ", options->target, ": ",
                                StatusLine(st.status())));
  }
  std::printf("%s\n", client::ServingStatusName(*st));
  return *st == client::ServingStatus::kServing ? 0 : 1;
}

// --- bench ------------------------------------------------------------------

// Nearest-rank percentile of sorted values (q in (0, 1]).
double Percentile(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) return 0;
  size_t rank = static_cast<size_t>(std::ceil(q * sorted.size()));
  rank = std::min(std::max<size_t>(rank, 1), sorted.size());
  return sorted[rank - 1];
}

// What one client thread saw.
struct ClientTally {
  std::vector<double> latency_s;
  std::vector<double> queue_s;
  std::vector<double> compute_s;
  std::map<int, int64_t> batch_sizes;
  std::map<std::string, int64_t> errors;  // "CODE: message" -> count
};

int Bench(const std::vector<std::string>& args) {
  absl::StatusOr<FlagValues> flags = ParseFlags(args, BenchFlags());
  if (!flags.ok()) return Fail(2, flags.status().message());
  const FlagValues& f = *flags;
  AttentionParams p;  // method defaults to scatterbrain
  absl::Status s = ParseSettings(f, &p);
  if (!s.ok()) return Fail(2, s.message());
  absl::StatusOr<v1::MethodSettings> settings = ToMethodSettings(p);
  if (!settings.ok()) return Fail(2, settings.status().message());
  absl::StatusOr<DType> dtype = DTypeFlag(f);
  if (!dtype.ok()) return Fail(2, dtype.status().message());
  absl::StatusOr<client::ClientOptions> options =
      ClientOptionsFromFlags(f, absl::InfiniteDuration());
  if (!options.ok()) return Fail(2, options.status().message());
  options->own_connection = true;

  int64_t clients = 1, requests = 100, duration_s = 60;
  client::TensorShape shape;
  shape.batch = 1;
  shape.heads = 8;
  shape.seq_q = 1024;
  shape.dim = 64;
  int64_t seq_k = 0;
  for (absl::Status st : {
           PositiveFlag(f, "clients", &clients),
           PositiveFlag(f, "requests", &requests),
           PositiveFlag(f, "duration_s", &duration_s),
           PositiveFlag(f, "batch", &shape.batch),
           PositiveFlag(f, "heads", &shape.heads),
           PositiveFlag(f, "seq", &shape.seq_q),
           PositiveFlag(f, "seq_k", &seq_k),
           PositiveFlag(f, "dim", &shape.dim),
       }) {
    if (!st.ok()) return Fail(2, st.message());
  }
  if (clients > 1024) return Fail(2, "flag --clients: at most 1024");
  shape.seq_k = seq_k > 0 ? seq_k : shape.seq_q;
  shape.dim_v = shape.dim;
  int64_t qn = 0, kn = 0;
  for (int64_t d :
       {shape.batch, shape.heads, shape.seq_q, shape.seq_k, shape.dim}) {
    if (d > (int64_t{1} << 24)) return Fail(2, "bench shape too large");
  }
  qn = shape.q_elements();
  kn = shape.k_elements();
  if (qn > (int64_t{1} << 30) || kn > (int64_t{1} << 30)) {
    return Fail(2, "bench tensors too large (over 2^30 elements)");
  }

  // Inputs are generated once and shared by every client (read-only).
  std::mt19937 rng(static_cast<uint32_t>(p.seed) + 1);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> q(static_cast<size_t>(qn)), k(static_cast<size_t>(kn)),
      v(static_cast<size_t>(kn));
  for (auto* t : {&q, &k, &v}) {
    for (float& x : *t) x = normal(rng);
  }
  client::AttendInput in;
  in.q = q;
  in.k = k;
  in.v = v;
  in.shape = shape;
  in.settings = *settings;
  in.dtype = wire::DTypeToProto(*dtype);
  absl::StatusOr<std::shared_ptr<const client::PreparedRequest>> prepared =
      client::Prepare(in);
  if (!prepared.ok()) return Fail(2, prepared.status().message());
  const int64_t request_bytes = (*prepared)->tensor_bytes();

  // Fail fast when the server is not there.
  {
    client::ClientOptions probe = *options;
    probe.deadline = absl::Seconds(10);
    absl::StatusOr<std::unique_ptr<client::AttentionClient>> c =
        client::AttentionClient::Create(probe);
    if (!c.ok()) return Fail(2, c.status().message());
    absl::StatusOr<v1::ServerInfo> info = (*c)->GetServerInfo();
    if (!info.ok()) {
      return Fail(1, absl::StrCat("server ", options->target, ": ",
                                  StatusLine(info.status())));
    }
    std::printf(
        "server: %s (scatterbrain %s, backend %s, max_batch_requests %u, "
        "max_queue_delay_us %llu)\n",
        options->target.c_str(), info->version().c_str(),
        info->backend().c_str(), info->limits().max_batch_requests(),
        static_cast<unsigned long long>(info->limits().max_queue_delay_us()));
  }
  std::printf(
      "bench: %lld requests, %lld clients, method %s, q [%lld, %lld, %lld, "
      "%lld], k/v seq %lld, %s, %.3f MB of tensors per request\n",
      static_cast<long long>(requests), static_cast<long long>(clients),
      MethodName(p.method), static_cast<long long>(shape.batch),
      static_cast<long long>(shape.heads), static_cast<long long>(shape.seq_q),
      static_cast<long long>(shape.dim), static_cast<long long>(shape.seq_k),
      DTypeName(*dtype), request_bytes / 1e6);
  std::fflush(stdout);

  std::atomic<int64_t> next{0}, ok_count{0}, failed{0}, running{0};
  const absl::Time start = absl::Now();
  const absl::Time stop_sending = start + absl::Seconds(duration_s);
  std::vector<ClientTally> tallies(static_cast<size_t>(clients));
  std::vector<std::thread> threads;
  running = clients;
  for (int64_t i = 0; i < clients; ++i) {
    threads.emplace_back([&, i] {
      ClientTally& t = tallies[static_cast<size_t>(i)];
      absl::StatusOr<std::unique_ptr<client::AttentionClient>> c =
          client::AttentionClient::Create(*options);
      std::unique_ptr<client::AttendStream> stream;
      if (c.ok()) stream = (*c)->OpenStream(options->deadline);
      while (next.fetch_add(1) < requests && absl::Now() < stop_sending) {
        const auto t0 = std::chrono::steady_clock::now();
        absl::StatusOr<client::AttendResult> r =
            c.ok() ? stream->Submit(*prepared).get()
                   : absl::StatusOr<client::AttendResult>(c.status());
        const double secs =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
                .count();
        if (r.ok()) {
          t.latency_s.push_back(secs);
          t.queue_s.push_back(r->stats.queue_seconds);
          t.compute_s.push_back(r->stats.compute_seconds);
          ++t.batch_sizes[r->stats.batch_size];
          ok_count.fetch_add(1);
        } else {
          ++t.errors[OneLine(StatusLine(r.status()))];
          failed.fetch_add(1);
          // A broken stream fails every later request: open a new one.
          if (c.ok()) {
            stream.reset();
            stream = (*c)->OpenStream(options->deadline);
          }
        }
      }
      if (stream != nullptr) stream->Finish().IgnoreError();
      running.fetch_sub(1);
    });
  }

  // Progress on stderr about once a second: one line rewritten in place on
  // a terminal, one line per second otherwise.
  const bool tty = ::isatty(STDERR_FILENO) == 1;
  absl::Time last_print = start;
  bool printed = false;
  while (running.load() > 0) {
    absl::SleepFor(absl::Milliseconds(50));
    const absl::Time now = absl::Now();
    if (now - last_print < absl::Seconds(1)) continue;
    last_print = now;
    const double el = absl::ToDoubleSeconds(now - start);
    const int64_t done = ok_count.load() + failed.load();
    std::fprintf(
        stderr,
        "%s[bench] %lld/%lld done, %lld failed, %.1f s, %.1f requests/s%s",
        tty ? "\r" : "", static_cast<long long>(done),
        static_cast<long long>(requests), static_cast<long long>(failed.load()),
        el, done / el, tty ? "   " : "\n");
    std::fflush(stderr);
    printed = true;
  }
  for (std::thread& t : threads) t.join();
  const double elapsed = absl::ToDoubleSeconds(absl::Now() - start);
  if (printed && tty) std::fputc('\n', stderr);

  ClientTally all;
  for (ClientTally& t : tallies) {
    all.latency_s.insert(all.latency_s.end(), t.latency_s.begin(),
                         t.latency_s.end());
    all.queue_s.insert(all.queue_s.end(), t.queue_s.begin(), t.queue_s.end());
    all.compute_s.insert(all.compute_s.end(), t.compute_s.begin(),
                         t.compute_s.end());
    for (const auto& [size, n] : t.batch_sizes) all.batch_sizes[size] += n;
    for (const auto& [msg, n] : t.errors) all.errors[msg] += n;
  }
  for (auto* v : {&all.latency_s, &all.queue_s, &all.compute_s}) {
    std::sort(v->begin(), v->end());
  }
  const int64_t n_ok = ok_count.load();
  const int64_t n_failed = failed.load();
  std::printf("completed: %lld ok, %lld failed in %.3f s\n",
              static_cast<long long>(n_ok), static_cast<long long>(n_failed),
              elapsed);
  std::printf(
      "throughput: %.2f requests/s, %.2f MB/s sent (tensor bytes), %.2f MB/s "
      "received\n",
      n_ok / elapsed, n_ok * static_cast<double>(request_bytes) / elapsed / 1e6,
      n_ok * static_cast<double>(shape.out_elements() * DTypeBytes(*dtype)) /
          elapsed / 1e6);
  if (n_ok > 0) {
    double mean = 0;
    for (double x : all.latency_s) mean += x;
    mean /= all.latency_s.size();
    std::printf(
        "latency: p50=%.2f ms p90=%.2f ms p99=%.2f ms (min %.2f, mean %.2f, "
        "max %.2f ms)\n",
        Percentile(all.latency_s, 0.5) * 1e3,
        Percentile(all.latency_s, 0.9) * 1e3,
        Percentile(all.latency_s, 0.99) * 1e3, all.latency_s.front() * 1e3,
        mean * 1e3, all.latency_s.back() * 1e3);
    std::printf(
        "server time: queue p50=%.2f ms p99=%.2f ms, compute p50=%.2f ms "
        "p99=%.2f ms\n",
        Percentile(all.queue_s, 0.5) * 1e3, Percentile(all.queue_s, 0.99) * 1e3,
        Percentile(all.compute_s, 0.5) * 1e3,
        Percentile(all.compute_s, 0.99) * 1e3);
    std::vector<std::string> parts;
    double mean_batch = 0;
    for (const auto& [size, count] : all.batch_sizes) {
      parts.push_back(absl::StrCat(size, " x", count));
      mean_batch += static_cast<double>(size) * count;
    }
    std::printf("batch sizes: %s (mean %.2f)\n",
                absl::StrJoin(parts, ", ").c_str(), mean_batch / n_ok);
  }
  for (const auto& [msg, count] : all.errors) {
    std::printf("error x%lld: %s\n", static_cast<long long>(count),
                msg.c_str());
  }
  return n_failed == 0 && n_ok > 0 ? 0 : 1;
}

int Attend(const std::vector<std::string>& args) {
  absl::StatusOr<FlagValues> flags = ParseFlags(args, AttendFlags());
  if (!flags.ok()) return Fail(2, flags.status().message());
  const FlagValues& f = *flags;

  AttentionParams p;
  absl::Status settings = ParseSettings(f, &p);
  if (!settings.ok()) return Fail(2, settings.message());
  std::vector<int32_t> key_lengths;
  for (absl::Status s : {
           IntFlag(f, "threads", &p.num_threads),
           KeyLengthsFlag(f, &key_lengths),
       }) {
    if (!s.ok()) return Fail(2, s.message());
  }
  if (p.num_threads < 0) {
    return Fail(2, "flag --threads: must be >= 0");
  }
  const bool stats = f.count("stats") && f.at("stats") == "true";
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
    for (const char* remote_only :
         {"dtype", "unary", "chunk_bytes", "timeout_s"}) {
      if (f.count(remote_only)) {
        return Fail(2, absl::StrCat("flag --", remote_only, " needs --server"));
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

  p.batch = qs[0];
  p.heads = qs[1];
  p.seq_q = qs[2];
  p.seq_k = ks[2];
  p.dim = qs[3];
  p.dim_v = vs[3];
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
      CreateBackend(backend_name);
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
        "elapsed_ms=%.3f\n",
        MethodName(p.method), (*backend)->name().c_str(),
        static_cast<long long>(st->workspace_bytes),
        static_cast<long long>(st->dense_score_bytes),
        static_cast<long long>(st->denominator_guards),
        static_cast<long long>(st->fallbacks), elapsed_ms);
  }
  return 0;
}

int Main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  for (const std::string& a : args) {
    if (a == "--help" || a == "-h" || a == "help") {
      std::fputs(kUsage, stdout);
      return 0;
    }
  }
  if (args.empty()) {
    std::fputs(kUsage, stderr);
    return 2;
  }
  const std::string command = args[0];
  args.erase(args.begin());
  if (command == "attend") return Attend(args);
  if (command == "info") return Info(args);
  if (command == "health") return Health(args);
  if (command == "bench") return Bench(args);
  return Fail(2, absl::StrCat("unknown command '", command,
                              "' (attend|info|health|bench|--help)"));
}

}  // namespace
}  // namespace scatterbrain

int main(int argc, char** argv) { return scatterbrain::Main(argc, argv); }
