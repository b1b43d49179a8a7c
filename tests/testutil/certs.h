// tests/testutil/certs.h — TLS material for the security tests, made at
// test time with the openssl command-line tool (nothing secret is checked
// in, nothing expires in the repository): two unrelated CAs, a server
// certificate from each (SAN DNS:localhost and IP:127.0.0.1, so a client
// dialing 127.0.0.1 verifies it), and a client certificate from each.
// ECDSA P-256 keys: fast to generate on a loaded machine.
//
// Part of sb_testutil (no gRPC): it only runs a program and writes files.
#ifndef SCATTERBRAIN_TESTS_TESTUTIL_CERTS_H_
#define SCATTERBRAIN_TESTS_TESTUTIL_CERTS_H_

#include <string>

#include "absl/status/statusor.h"

namespace scatterbrain {
namespace testutil {

// Paths of PEM files (all in the directory given to MakeTestCertificates).
struct TestCertificates {
  std::string ca;           // CA certificate
  std::string server_cert;  // CN=localhost, issued by `ca`
  std::string server_key;
  std::string client_cert;  // CN=scatterbrain-test-client, by `ca`
  std::string client_key;
  std::string other_ca;           // an unrelated CA
  std::string other_server_cert;  // CN=localhost, same SANs, by `other_ca`
  std::string other_server_key;
  std::string other_client_cert;  // CN=intruder, by `other_ca`
  std::string other_client_key;
};

// The openssl binary on PATH; "" when there is none.
std::string OpensslBinary();

// Generates everything into `dir` (which must exist). Errors name the
// openssl step and carry its stderr; FailedPrecondition without openssl.
absl::StatusOr<TestCertificates> MakeTestCertificates(const std::string& dir);

}  // namespace testutil
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_TESTS_TESTUTIL_CERTS_H_
