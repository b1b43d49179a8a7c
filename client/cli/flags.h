// scatterbrain/client/cli/flags.h — the CLI's flags: specs, parsing of
// `--name=value`, numeric flags, the method settings into AttentionParams
// (and from there to the wire through proto/convert), and the server
// options (--server, --dtype, --chunk_bytes, --timeout_s, TLS and token).
//
// Shared by every command (attend.cc, bench.cc, info.cc); each command keeps
// its own FlagSpecs. Every error is INVALID_ARGUMENT naming the flag, which
// the commands print as "error: ..." and exit 2.
#ifndef SCATTERBRAIN_CLIENT_CLI_FLAGS_H_
#define SCATTERBRAIN_CLIENT_CLI_FLAGS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/cpp/client.h"
#include "common/dtype.h"
#include "kernels/params.h"

namespace scatterbrain {
namespace cli {

enum class FlagKind { kString, kBool };

struct FlagSpec {
  FlagKind kind;
  bool required;
};

using FlagSpecs = std::map<std::string, FlagSpec>;
using FlagValues = std::map<std::string, std::string>;

// `own` plus the method settings' flags (every one but --method, which
// each command lists itself), shared by attend (local and remote) and bench.
FlagSpecs WithSettings(FlagSpecs own);

// Parses `--name=value` and bare `--name` (booleans only) against `spec`:
// unknown, repeated, empty and missing required flags are errors.
absl::StatusOr<FlagValues> ParseFlags(const std::vector<std::string>& args,
                                      const FlagSpecs& spec);

// A boolean flag's value (false when absent).
bool BoolFlag(const FlagValues& f, const std::string& name);
// Reads an int flag if present; leaves *out alone otherwise.
absl::Status IntFlag(const FlagValues& f, const std::string& name, int* out);
// The same for integers > 0.
absl::Status PositiveFlag(const FlagValues& f, const std::string& name,
                          int64_t* out);
// --key_lengths=L1,L2,... appended to *out.
absl::Status KeyLengthsFlag(const FlagValues& f, std::vector<int32_t>* out);

// Reads the method and its settings (the flags WithSettings adds, plus
// --method when present) into *p. Messages name the flag.
// The settings one-shot commands (attend, bench) start from: the core's
// defaults with the server's defaults for what the CLI always sends
// (sparse = auto, global_keys = 4: server/request.h's RequestDefaults), so a
// local call and a call on a server compute the same thing.
AttentionParams OneShotDefaults();
absl::Status ParseSettings(const FlagValues& f, AttentionParams* p);
// The settings of `p` as the wire carries them (wire::SettingsFromParams,
// every field explicit, so the server computes what the local mode would);
// a negative count names its flag: "flag --num_features: must be >= 0, got
// -1".
absl::StatusOr<v1::MethodSettings> WireSettings(const AttentionParams& p);

// `own` plus the connection's security flags (--tls, --tls_ca_file,
// --tls_cert_file, --tls_key_file, --tls_server_name, --auth_token_file),
// for every command that talks to a server.
FlagSpecs WithSecurity(FlagSpecs own);
// The names of those flags (attend refuses them without --server).
const std::vector<std::string>& SecurityFlagNames();

// --dtype (float32 when absent).
absl::StatusOr<DType> DTypeFlag(const FlagValues& f);
// Client options from --server, --chunk_bytes, --timeout_s (`default_timeout`
// when absent; 0 = none) and the security flags (files read and checked).
absl::StatusOr<client::ClientOptions> ClientOptionsFromFlags(
    const FlagValues& f, absl::Duration default_timeout);

// A client from the same flags; errors are the flags' (exit 2). The client
// does not connect until its first call.
absl::StatusOr<std::unique_ptr<client::AttentionClient>> ClientFromFlags(
    const FlagValues& f, absl::Duration default_timeout);

}  // namespace cli
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_CLIENT_CLI_FLAGS_H_
