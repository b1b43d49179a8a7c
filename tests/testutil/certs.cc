// tests/testutil/certs.cc — see certs.h.
#include "tests/testutil/certs.h"

#include <unistd.h>

#include <cstdlib>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "tests/testutil/files.h"
#include "tests/testutil/process.h"

namespace scatterbrain {
namespace testutil {
namespace {

// One openssl configuration for every step, so the machine's openssl.cnf
// (its defaults, its extensions) plays no part.
constexpr char kConfig[] = R"([req]
distinguished_name = dn
[dn]
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost,IP:127.0.0.1
[client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
)";

class Openssl {
 public:
  Openssl(std::string bin, std::string dir)
      : bin_(std::move(bin)), dir_(std::move(dir)) {}

  std::string Path(const std::string& name) const {
    return absl::StrCat(dir_, "/", name);
  }

  // A self-signed CA: <name>.pem, <name>.key.
  absl::Status Ca(const std::string& name, const std::string& subject) {
    return Run({"req",
                "-x509",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                Path(name + ".key"),
                "-out",
                Path(name + ".pem"),
                "-days",
                "3",
                "-subj",
                subject,
                "-config",
                Path("openssl.cnf"),
                "-extensions",
                "ca"});
  }

  // A leaf issued by CA `ca` with the config's section `extensions`.
  absl::Status Leaf(const std::string& name, const std::string& subject,
                    const std::string& ca, const std::string& extensions) {
    absl::Status st = Run({"req", "-new", "-newkey", "ec", "-pkeyopt",
                           "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
                           Path(name + ".key"), "-out", Path(name + ".csr"),
                           "-subj", subject, "-config", Path("openssl.cnf")});
    if (!st.ok()) return st;
    return Run({"x509", "-req", "-in", Path(name + ".csr"), "-CA",
                Path(ca + ".pem"), "-CAkey", Path(ca + ".key"), "-set_serial",
                absl::StrCat(++serial_), "-days", "3", "-out",
                Path(name + ".pem"), "-extfile", Path("openssl.cnf"),
                "-extensions", extensions});
  }

 private:
  absl::Status Run(std::vector<std::string> args) {
    args.insert(args.begin(), bin_);
    const CommandResult r = RunCommand(args, dir_);
    if (r.code != 0) {
      return absl::InternalError(absl::StrCat(absl::StrJoin(args, " "),
                                              " exited ", r.code, ": ", r.err));
    }
    return absl::OkStatus();
  }

  const std::string bin_;
  const std::string dir_;
  int serial_ = 1;
};

}  // namespace

std::string OpensslBinary() {
  const char* path = std::getenv("PATH");
  for (absl::string_view d :
       absl::StrSplit(path != nullptr ? path : "/usr/bin:/bin", ':')) {
    if (d.empty()) continue;
    const std::string candidate = absl::StrCat(d, "/openssl");
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

absl::StatusOr<TestCertificates> MakeTestCertificates(const std::string& dir) {
  const std::string bin = OpensslBinary();
  if (bin.empty()) {
    return absl::FailedPreconditionError(
        "no openssl on PATH (scripts/test installs the Debian package)");
  }
  Openssl ssl(bin, dir);
  if (!WriteFile(ssl.Path("openssl.cnf"), kConfig)) {
    return absl::InternalError(absl::StrCat("cannot write into ", dir));
  }
  for (absl::Status st : {
           ssl.Ca("ca", "/CN=scatterbrain test CA"),
           ssl.Leaf("server", "/CN=localhost", "ca", "server"),
           ssl.Leaf("client", "/CN=scatterbrain-test-client", "ca", "client"),
           ssl.Ca("other_ca", "/CN=unrelated test CA"),
           ssl.Leaf("other_server", "/CN=localhost", "other_ca", "server"),
           ssl.Leaf("other_client", "/CN=intruder", "other_ca", "client"),
       }) {
    if (!st.ok()) return st;
  }
  TestCertificates c;
  c.ca = ssl.Path("ca.pem");
  c.server_cert = ssl.Path("server.pem");
  c.server_key = ssl.Path("server.key");
  c.client_cert = ssl.Path("client.pem");
  c.client_key = ssl.Path("client.key");
  c.other_ca = ssl.Path("other_ca.pem");
  c.other_server_cert = ssl.Path("other_server.pem");
  c.other_server_key = ssl.Path("other_server.key");
  c.other_client_cert = ssl.Path("other_client.pem");
  c.other_client_key = ssl.Path("other_client.key");
  return c;
}

}  // namespace testutil
}  // namespace scatterbrain
