// scatterbrain/client/cli/main.cc — the `scatterbrain_cli` tool: runs one
// attention call on .npy files through a local backend or on a
// scatterbrain_server (--server), reports the build's or a server's version
// and backends, checks a server's health, and load-tests a server (bench).
//
// This file: the usage text, the dispatch to the commands (commands.h, one
// file each) and how failures are printed. Exit codes: 0 success; 2 bad
// usage or bad input (flags, files, shapes, settings: nothing is written);
// 1 any other failure (health: not SERVING).
#include <cstdio>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "client/cli/commands.h"

namespace scatterbrain {
namespace cli {
namespace {

constexpr char kUsage[] =
    R"(usage:
  scatterbrain_cli attend --q=Q.npy --k=K.npy --v=V.npy --out=O.npy
      --method=exact|performer|lsh|local|scatterbrain [options]
      [--server=HOST:PORT [server options]]
  scatterbrain_cli info [--server=HOST:PORT [security options]]
  scatterbrain_cli health --server=HOST:PORT [--service=NAME] [--timeout_s=S]
      [security options]
  scatterbrain_cli bench --server=HOST:PORT [--clients=N] [--requests=M]
      [--seq=N] [--heads=H] [--dim=D] [--method=...] [options]
  scatterbrain_cli bench --decode --server=HOST:PORT [--context=N]
      [--steps=T] [--resend_steps=R] [--method=...] [options]
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
  --sparse=lsh|local|both|auto   Scatterbrain's sparse support; auto: per
                        head the one holding the most attention mass
                        [auto; bench --decode: lsh]
  --global_keys=G       Scatterbrain: up to G keys with the most calibration-
                        row mass in every row's support, within the
                        budget; 0 = off [4; bench --decode: 0]
  --target_error=E      Scatterbrain: per head the cheapest budget whose
                        estimated error bound is <= E (else exact), in
                        [0, 1); 0 = off (the budget as given) [0]
  --estimator=calibrated|unbiased   Scatterbrain's combination [calibrated]
  --calibration_rows=N  exact rows per (batch, head) for calibration [16]
  --causal              causal mask (query i sees keys j <= i + seq_k - seq_q)
  --scale=S             softmax scale; 0 = 1/sqrt(dim) [0]
  --seed=N              seed of the random draws [0]
  --precision=fp32|tf32|bf16   arithmetic: tf32/bf16 let the cuda backend
                        use tensor cores (the cpu computes fp32) [fp32]
  --key_lengths=L1,L2,...   valid keys per batch entry (one per batch)
  --threads=T           CPU worker threads; 0 = all cores [0] (local only)
  --backend=NAME        backend to run on (see `info`) [cpu] (local only)
  --stats               print one line of call statistics to stdout, then
                        one line per head Scatterbrain chose a plan for
                        (auto, global_keys, target_error)

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
  --retry_budget_s=S    attend, bench: retry UNAVAILABLE (a server down or
                        restarting) for up to S seconds after a request's
                        first failure; 0 = no retries [5]

security options (attend with --server, info, health, bench):
  --tls                 TLS with the system's CA roots (implied by the flags
                        below)
  --tls_ca_file=PEM     CA bundle that verifies the server's certificate
  --tls_cert_file=PEM --tls_key_file=PEM   this client's certificate and
                        key, for a server that requires mutual TLS
  --tls_server_name=N   name the server's certificate must carry, when the
                        --server host is not it
  --auth_token_file=F   bearer token (first line that is not blank or '#')
                        sent as 'authorization: Bearer <token>' on every call

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

bench --decode: a server-held K/V session against re-sending K/V. Builds a
context of N tokens in a session (appends), runs T decode steps (each one
message with the token's q, k, v; its output back), then R of the same
steps as one-shot causal Attends carrying the whole K/V so far. Prints per
step: latency p50/p90/p99, server compute and queue p50, bytes on the wire
(sent + received), tokens/s; the session's memory (K/V, state); the largest
difference between the two runs' outputs (rounding for exact, performer and
local); and a table of the two with the session's advantage.
  --context=N           tokens stored before the steps [4096]
  --steps=T             decode steps on the session [100]
  --resend_steps=R      steps re-sending K/V (each is slow); 0 = none [20]
  --prefill_chunk=C     tokens per append while building the context [4096]
  --batch=B --heads=H --dim=D   session shape (dim_v = dim) [1, 8, 64]
  --kv_dtype=float32|float16|bfloat16   K/V storage on the server [float32]
  --compare_method=M1,M2   also run a session of each method (same data);
                        with exact: the relative error of the session and
                        of the resend steps against it
  --method=... and the settings above, --dtype, --chunk_bytes, --timeout_s,
  --retry_budget_s, security options: as bench

exit codes: 0 ok, 2 bad usage or input (no output written), 1 other errors.
)";

}  // namespace

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

std::string StatusLine(const absl::Status& s) {
  return absl::StrCat(absl::StatusCodeToString(s.code()), ": ", s.message());
}

int FailRemote(const std::string& server, const absl::Status& s) {
  const bool bad_input = s.code() == absl::StatusCode::kInvalidArgument ||
                         s.code() == absl::StatusCode::kResourceExhausted;
  return Fail(bad_input ? 2 : 1,
              absl::StrCat("server ", server, ": ", StatusLine(s)));
}

namespace {

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
}  // namespace cli
}  // namespace scatterbrain

int main(int argc, char** argv) { return scatterbrain::cli::Main(argc, argv); }
