// The security flags end to end: scatterbrain_server started with
// --tls_cert_file, --tls_key_file, --tls_client_ca_file and
// --auth_token_file, called by scatterbrain_cli with its TLS and token
// flags; SIGHUP reloading the token file; bad flags exiting 2 with the
// flag's name. Certificates come from the openssl CLI (testutil/certs.h).
#include <signal.h>

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/cli/npy.h"
#include "gmock/gmock.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "tests/testutil/certs.h"
#include "tests/testutil/files.h"
#include "tests/testutil/process.h"
#include "tests/testutil/random.h"
#include "tests/testutil/server_process.h"
#include "tests/testutil/status_matchers.h"

namespace scatterbrain {
namespace {

using ::testing::HasSubstr;
using testutil::CommandResult;
using testutil::IsOk;
using testutil::ReadFile;

class SecurityProcessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(dir_.ok());
    absl::StatusOr<testutil::TestCertificates> c =
        testutil::MakeTestCertificates(dir_.path());
    ASSERT_THAT(c, IsOk());
    certs_ = *std::move(c);
  }

  CommandResult Cli(std::vector<std::string> args) {
    args.insert(args.begin(), testutil::BinDir() + "/scatterbrain_cli");
    return testutil::RunCommand(args, dir_.path());
  }
  CommandResult Server(std::vector<std::string> args) {
    args.insert(args.begin(), testutil::ServerBinary());
    return testutil::RunCommand(args, dir_.path());
  }

  // The CLI's flags for a mutual-TLS server, plus `extra`.
  std::vector<std::string> TlsFlags(const std::string& command,
                                    std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {command, "--server=" + server_.target(),
                                     "--tls_ca_file=" + certs_.ca,
                                     "--tls_cert_file=" + certs_.client_cert,
                                     "--tls_key_file=" + certs_.client_key};
    args.insert(args.end(), extra.begin(), extra.end());
    return args;
  }

  testutil::ScratchDir dir_{"security_process_test"};
  testutil::TestCertificates certs_;
  testutil::ServerProcess server_;
};

TEST_F(SecurityProcessTest, MutualTlsAndTokensThroughTheCli) {
  const std::string tokens = dir_.File("tokens.txt");
  const std::string token = dir_.File("token.txt");
  ASSERT_TRUE(testutil::WriteFile(tokens, "# service accounts\ntok-one\n"));
  ASSERT_TRUE(testutil::WriteFile(token, "tok-one\n"));
  testutil::ServerProcessOptions o;
  o.flags = {"--backend=cpu",
             "--security_reload_interval_s=3600",  // SIGHUP reloads
             "--tls_cert_file=" + certs_.server_cert,
             "--tls_key_file=" + certs_.server_key,
             "--tls_client_ca_file=" + certs_.ca,
             "--auth_token_file=" + tokens};
  grpc::SslCredentialsOptions probe;
  probe.pem_root_certs = ReadFile(certs_.ca);
  probe.pem_cert_chain = ReadFile(certs_.client_cert);
  probe.pem_private_key = ReadFile(certs_.client_key);
  o.credentials = grpc::SslCredentials(probe);
  ASSERT_THAT(server_.Start(o), IsOk());
  EXPECT_THAT(server_.log(),
              HasSubstr("security: TLS with client certificates (mutual TLS"));
  EXPECT_THAT(server_.log(), HasSubstr("bearer tokens from " + tokens));
  EXPECT_THAT(server_.log(), HasSubstr("reflection off"));

  CommandResult r = Cli(TlsFlags("info", {"--auth_token_file=" + token}));
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("backend: cpu"));

  // An attend through the CLI, both ways of calling.
  for (const char* name : {"q", "k", "v"}) {
    const std::vector<float> x = testutil::RandomNormal(2 * 16 * 8, 3);
    ASSERT_THAT(WriteNpy(dir_.File(absl::StrCat(name, ".npy")), {1, 2, 16, 8},
                         x.data()),
                IsOk());
  }
  for (const char* mode : {"--stats", "--unary"}) {
    r = Cli(TlsFlags("attend",
                     {"--auth_token_file=" + token, "--q=" + dir_.File("q.npy"),
                      "--k=" + dir_.File("k.npy"), "--v=" + dir_.File("v.npy"),
                      "--out=" + dir_.File("o.npy"), "--method=exact", mode}));
    EXPECT_EQ(r.code, 0) << mode << ": " << r.err;
  }

  // No token: refused (exit 1), saying what is missing; health is exempt.
  r = Cli(TlsFlags("info"));
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.err, HasSubstr("UNAUTHENTICATED"));
  EXPECT_THAT(r.err, HasSubstr("authorization: Bearer"));
  r = Cli(TlsFlags("health"));
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("SERVING"));

  // No client certificate: the handshake fails, nothing answers.
  r = Cli({"health", "--server=" + server_.target(),
           "--tls_ca_file=" + certs_.ca, "--timeout_s=10"});
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.err, HasSubstr("UNAVAILABLE"));
  // Plaintext on the TLS port: the same.
  r = Cli({"health", "--server=" + server_.target(), "--timeout_s=10"});
  EXPECT_EQ(r.code, 1);

  // SIGHUP: the rotated token file is read at once.
  ASSERT_TRUE(testutil::WriteFile(tokens, "tok-two\n"));
  ASSERT_TRUE(testutil::WriteFile(token, "tok-two\n"));
  ASSERT_TRUE(server_.Signal(SIGHUP));
  ASSERT_TRUE(
      server_.WaitForLog("SIGHUP: credentials reloaded", absl::Seconds(30)))
      << server_.log();
  r = Cli(TlsFlags("info", {"--auth_token_file=" + token}));
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_THAT(server_.Stop(), IsOk());
}

TEST_F(SecurityProcessTest, BadSecurityFlagsExitTwoNamingTheFlag) {
  const std::string missing = dir_.File("missing.pem");
  const struct {
    std::vector<std::string> flags;
    const char* want;
  } cases[] = {
      {{"--tls_key_file=" + certs_.server_key},
       "--tls_key_file: set without tls_cert_file"},
      {{"--tls_cert_file=" + missing, "--tls_key_file=" + certs_.server_key},
       "--tls_cert_file: cannot read"},
      {{"--tls_client_ca_file=" + certs_.ca},
       "--tls_client_ca_file: set without"},
      {{"--auth_token_file=" + missing}, "--auth_token_file: cannot read"},
      {{"--reflection=maybe"}, "--reflection='maybe'"},
      {{"--security_reload_interval_s=0"}, "--security_reload_interval_s"},
  };
  for (const auto& k : cases) {
    SCOPED_TRACE(k.want);
    CommandResult r = Server(k.flags);
    EXPECT_EQ(r.code, 2);
    EXPECT_THAT(r.err, HasSubstr(k.want));
  }
  CommandResult help = Server({"--help"});
  EXPECT_EQ(help.code, 0);
  for (const char* flag :
       {"--tls_cert_file", "--tls_key_file", "--tls_client_ca_file",
        "--auth_token_file", "--security_reload_interval_s",
        "--reflection (default auto)", "--host (default 0.0.0.0)"}) {
    EXPECT_THAT(help.out, HasSubstr(flag));
  }

  // The CLI's own checks, before any connection.
  CommandResult r = Cli({"info", "--server=127.0.0.1:1",
                         "--tls_cert_file=" + certs_.client_cert});
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.err,
              HasSubstr("flag --tls_cert_file: set without tls_key_file"));
  r = Cli({"health", "--server=127.0.0.1:1", "--auth_token_file=" + missing});
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.err, HasSubstr("flag --auth_token_file: cannot read"));
  r = Cli({"attend", "--q=q.npy", "--k=k.npy", "--v=v.npy", "--out=o.npy",
           "--method=exact", "--tls"});
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.err, HasSubstr("flag --tls needs --server"));
}

}  // namespace
}  // namespace scatterbrain
