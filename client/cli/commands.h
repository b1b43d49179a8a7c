// scatterbrain/client/cli/commands.h — the commands of scatterbrain_cli, one
// file each (attend.cc, bench.cc, info.cc), and what they print on failure.
//
// Exit codes: 0 success; 2 bad usage or bad input (flags, files, shapes,
// settings: nothing is written); 1 any other failure (health: not SERVING).
#ifndef SCATTERBRAIN_CLIENT_CLI_COMMANDS_H_
#define SCATTERBRAIN_CLIENT_CLI_COMMANDS_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace scatterbrain {
namespace cli {

// Each takes the arguments after the command's name; returns the exit code.
int Attend(const std::vector<std::string>& args);  // attend.cc
int Bench(const std::vector<std::string>& args);   // bench.cc
// bench --decode (bench_decode.cc); Bench hands over to it.
int BenchDecode(const std::vector<std::string>& args);
int Info(const std::vector<std::string>& args);    // info.cc
int Health(const std::vector<std::string>& args);  // info.cc

// Nearest-rank percentile of sorted values (q in (0, 1]); 0 when empty
// (bench.cc, for both benches).
double Percentile(const std::vector<double>& sorted, double q);

// --- failures (main.cc) ------------------------------------------------------

// `s` with its line breaks turned into spaces.
std::string OneLine(absl::string_view s);
// Prints "error: <message>" (one line) to stderr; returns `code`.
int Fail(int code, absl::string_view message);
// "CODE: message".
std::string StatusLine(const absl::Status& s);
// Server errors: bad input (INVALID_ARGUMENT, over a limit) exits 2 as the
// local mode does; everything else (unreachable, unavailable) exits 1.
int FailRemote(const std::string& server, const absl::Status& s);

}  // namespace cli
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_CLIENT_CLI_COMMANDS_H_
