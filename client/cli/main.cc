// scatterbrain/client/cli/main.cc — the `scatterbrain_cli` tool: runs one
// attention call on .npy files through a local backend (no server), and
// reports the build's version and backends.
//
// Exit codes: 0 success; 2 bad usage or bad input (flags, files, shapes,
// settings: nothing is written); 1 any other failure.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
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
#include "client/cli/npy.h"
#include "kernels/backend.h"
#include "kernels/devices.h"
#include "kernels/params.h"

#ifndef SB_VERSION
#define SB_VERSION "unknown"
#endif

namespace scatterbrain {
namespace {

constexpr char kUsage[] =
    R"(usage:
  scatterbrain_cli attend --q=Q.npy --k=K.npy --v=V.npy --out=O.npy
      --method=exact|performer|lsh|local|scatterbrain [options]
  scatterbrain_cli info
  scatterbrain_cli --help

attend computes attention on [batch, heads, seq, dim] float32 ('<f4') or
float16 ('<f2') .npy arrays and writes O as float32 [batch, heads, seq_q, dim_v].

options:
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
  --threads=T           CPU worker threads; 0 = all cores [0]
  --backend=NAME        backend to run on (see `info`) [cpu]
  --stats               print one line of call statistics to stdout

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

const std::map<std::string, FlagSpec>& AttendFlags() {
  static const auto* flags = new std::map<std::string, FlagSpec>{
      {"q", {FlagKind::kString, true}},
      {"k", {FlagKind::kString, true}},
      {"v", {FlagKind::kString, true}},
      {"out", {FlagKind::kString, true}},
      {"method", {FlagKind::kString, true}},
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
      {"key_lengths", {FlagKind::kString, false}},
      {"threads", {FlagKind::kString, false}},
      {"backend", {FlagKind::kString, false}},
      {"stats", {FlagKind::kBool, false}},
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

int Attend(const std::vector<std::string>& args) {
  absl::StatusOr<FlagValues> flags = ParseFlags(args, AttendFlags());
  if (!flags.ok()) return Fail(2, flags.status().message());
  const FlagValues& f = *flags;

  AttentionParams p;
  if (!ParseMethod(f.at("method"), &p.method)) {
    return Fail(2, absl::StrCat("unknown --method '", f.at("method"),
                                "' (exact|performer|lsh|local|scatterbrain)"));
  }
  if (f.count("sparse") && !ParseSparse(f.at("sparse"), &p.sparse)) {
    return Fail(2, absl::StrCat("unknown --sparse '", f.at("sparse"),
                                "' (lsh|local|both)"));
  }
  if (f.count("estimator") &&
      !ParseEstimator(f.at("estimator"), &p.estimator)) {
    return Fail(2, absl::StrCat("unknown --estimator '", f.at("estimator"),
                                "' (calibrated|unbiased)"));
  }
  if (f.count("lsh_hash") && !ParseLshHash(f.at("lsh_hash"), &p.lsh_hash)) {
    return Fail(2, absl::StrCat("unknown --lsh_hash '", f.at("lsh_hash"),
                                "' (kmeans|crosspolytope)"));
  }
  if (f.count("lsh_transform") &&
      !ParseLshTransform(f.at("lsh_transform"), &p.lsh_transform)) {
    return Fail(2, absl::StrCat("unknown --lsh_transform '",
                                f.at("lsh_transform"), "' (none|smyrf)"));
  }
  std::vector<int32_t> key_lengths;
  for (absl::Status s : {
           IntFlag(f, "num_features", &p.num_features),
           IntFlag(f, "bucket_size", &p.bucket_size),
           IntFlag(f, "num_hashes", &p.num_hashes),
           IntFlag(f, "hash_projections", &p.hash_projections),
           IntFlag(f, "kmeans_iterations", &p.kmeans_iterations),
           IntFlag(f, "window", &p.window),
           IntFlag(f, "calibration_rows", &p.calibration_rows),
           IntFlag(f, "threads", &p.num_threads),
           SeedFlag(f, &p.seed),
           ScaleFlag(f, &p.scale),
           KeyLengthsFlag(f, &key_lengths),
       }) {
    if (!s.ok()) return Fail(2, s.message());
  }
  if (p.num_threads < 0) {
    return Fail(2, "flag --threads: must be >= 0");
  }
  p.causal = f.count("causal") && f.at("causal") == "true";
  const bool stats = f.count("stats") && f.at("stats") == "true";

  const std::string backend_name = f.count("backend") ? f.at("backend") : "cpu";
  const std::vector<std::string> compiled = CompiledBackends();
  if (std::find(compiled.begin(), compiled.end(), backend_name) ==
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
  if (command == "info") {
    if (!args.empty()) {
      return Fail(2,
                  absl::StrCat("info takes no arguments, got '", args[0], "'"));
    }
    return Info();
  }
  return Fail(
      2, absl::StrCat("unknown command '", command, "' (attend|info|--help)"));
}

}  // namespace
}  // namespace scatterbrain

int main(int argc, char** argv) { return scatterbrain::Main(argc, argv); }
