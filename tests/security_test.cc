// In-process tests of the server's security (server/security.h, auth.h)
// through the C++ client's own TLS and token options: TLS, mutual TLS with
// a good, a foreign and no client certificate, plaintext and TLS clients
// on the wrong kind of port, bearer tokens on every method but health,
// reflection's default, reloads of the token file and of the certificate,
// and option validation naming the option.
//
// Certificates are made once per run with the openssl CLI
// (testutil/certs.h). Waits for a reload are bounded polls (30 s) against
// a 1 s reload interval: generous for a loaded 2-core machine, and nothing
// asserts how soon within that bound it happens.
#include "server/security.h"

#include <chrono>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/cpp/client.h"
#include "gmock/gmock.h"
#include "grpcpp/generic/async_generic_service.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/test/server_context_test_spouse.h"
#include "gtest/gtest.h"
#include "server/auth.h"
#include "server/server.h"
#include "tests/testutil/certs.h"
#include "tests/testutil/files.h"
#include "tests/testutil/random.h"
#include "tests/testutil/service_calls.h"
#include "tests/testutil/status_matchers.h"

namespace scatterbrain {
namespace server {
namespace {

namespace pb = ::scatterbrain::v1;
using ::testing::HasSubstr;
using ::testing::Not;
using testutil::IsOk;
using testutil::StatusIs;
using Code = absl::StatusCode;

// Polls `pred` every 50 ms for up to 30 s (see the file comment).
bool Eventually(const std::function<bool()>& pred) {
  for (int i = 0; i < 600; ++i) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return pred();
}

// Replaces `path` by `bytes` atomically (write aside, rename), as a
// rotation by a secrets manager does.
void Replace(const std::string& path, const std::string& bytes) {
  const std::string tmp = path + ".new";
  ASSERT_TRUE(testutil::WriteFile(tmp, bytes));
  ASSERT_EQ(std::rename(tmp.c_str(), path.c_str()), 0) << path;
}

class SecurityTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new testutil::ScratchDir("security_test");
    absl::StatusOr<testutil::TestCertificates> c =
        testutil::MakeTestCertificates(dir_->path());
    if (c.ok()) {
      certs_ = new testutil::TestCertificates(*std::move(c));
    } else {
      *certs_error_ = std::string(c.status().message());
    }
  }
  static void TearDownTestSuite() {
    delete certs_;
    certs_ = nullptr;
    delete dir_;
    dir_ = nullptr;
  }

  void SetUp() override {
    ASSERT_NE(certs_, nullptr)
        << "cannot make test certificates: " << *certs_error_;
  }
  void TearDown() override {
    if (server_ != nullptr) server_->Shutdown();
  }

  const testutil::TestCertificates& certs() const { return *certs_; }
  static std::string File(const std::string& name) { return dir_->File(name); }

  static ServerOptions Options() {
    ServerOptions o = testutil::LoopbackServerOptions();
    o.executor.batcher.max_queue_delay_us = 0;
    o.drain_timeout_s = 5;
    o.security.reload_interval_s = 1;
    return o;
  }
  ServerOptions TlsOptions() const {
    ServerOptions o = Options();
    o.security.tls_cert_file = certs().server_cert;
    o.security.tls_key_file = certs().server_key;
    return o;
  }
  // A token file holding `text`, under a fresh name.
  static std::string TokenFile(const std::string& text) {
    static int n = 0;
    const std::string path = File(absl::StrCat("tokens", ++n, ".txt"));
    EXPECT_TRUE(testutil::WriteFile(path, text));
    return path;
  }

  void Start(const ServerOptions& o) {
    absl::StatusOr<std::unique_ptr<Server>> s = Server::Start(o);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = *std::move(s);
  }
  // Starts a plaintext server whose token file, returned, holds `tokens`
  // and is looked at every `reload_interval_s`.
  std::string StartWithTokens(const std::string& tokens,
                              int reload_interval_s) {
    ServerOptions o = Options();
    o.security.auth_token_file = TokenFile(tokens);
    o.security.reload_interval_s = reload_interval_s;
    Start(o);
    return o.security.auth_token_file;
  }

  // A client on its own connection, one try per call (a refused handshake
  // must show as itself, not as five retries).
  client::ClientOptions ClientOptions() const {
    client::ClientOptions o;
    o.target = absl::StrCat("127.0.0.1:", server_->port());
    o.own_connection = true;
    o.max_attempts = 1;
    o.deadline = absl::Seconds(30);
    return o;
  }
  client::ClientOptions WithToken(const std::string& token) const {
    client::ClientOptions o = ClientOptions();
    o.auth_token = token;
    return o;
  }
  client::ClientOptions TlsClientOptions() const {
    client::ClientOptions o = ClientOptions();
    o.tls_ca_file = certs().ca;
    return o;
  }
  static std::unique_ptr<client::AttentionClient> Connect(
      const client::ClientOptions& o) {
    absl::StatusOr<std::unique_ptr<client::AttentionClient>> c =
        client::AttentionClient::Create(o);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *std::move(c) : nullptr;
  }

  // GetServerInfo's status with `o`: the cheapest call that proves the
  // connection (TLS handshake) and the token.
  absl::Status InfoStatus(const client::ClientOptions& o) {
    std::unique_ptr<client::AttentionClient> c = Connect(o);
    if (c == nullptr) return absl::InternalError("no client");
    return c->GetServerInfo().status();
  }

  // One small exact request, streamed and unary: both statuses.
  std::vector<absl::Status> AttendStatuses(client::AttentionClient* c) {
    client::AttendInput in;
    in.shape.batch = 1;
    in.shape.heads = 1;
    in.shape.seq_q = in.shape.seq_k = 8;
    in.shape.dim = in.shape.dim_v = 4;
    in.settings.set_method(pb::METHOD_EXACT);
    const std::vector<float> x = testutil::RandomUniform(32, 7, -1, 1);
    in.q = in.k = in.v = x;
    return {c->Attend(in).status(), c->AttendUnary(in).status()};
  }

  // grpc.reflection.v1alpha list_services (field 7, empty): the response
  // bytes (they name the services) or the error (UNIMPLEMENTED: off).
  static absl::StatusOr<std::string> ListServices(
      const std::shared_ptr<grpc::Channel>& channel) {
    return client::internal::RawUnaryCall(
        channel,
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        std::string("\x3a\x00", 2), absl::Seconds(30));
  }

  std::unique_ptr<Server> server_;
  static testutil::ScratchDir* dir_;
  static testutil::TestCertificates* certs_;
  static std::string* certs_error_;
};

testutil::ScratchDir* SecurityTest::dir_ = nullptr;
testutil::TestCertificates* SecurityTest::certs_ = nullptr;
std::string* SecurityTest::certs_error_ = new std::string;

// --- TLS ---------------------------------------------------------------------

TEST_F(SecurityTest, TlsServesTlsClientsAndRefusesPlaintext) {
  Start(TlsOptions());
  std::unique_ptr<client::AttentionClient> tls = Connect(TlsClientOptions());
  EXPECT_THAT(tls->GetServerInfo(), IsOk());
  for (const absl::Status& s : AttendStatuses(tls.get()))
    EXPECT_THAT(s, IsOk());
  EXPECT_THAT(tls->Health(),
              testutil::IsOkAndHolds(client::ServingStatus::kServing));
  // A plaintext client gets no further than the handshake: nothing of the
  // service, not even health.
  std::unique_ptr<client::AttentionClient> plain = Connect(ClientOptions());
  EXPECT_THAT(plain->GetServerInfo(), StatusIs(Code::kUnavailable));
  EXPECT_THAT(plain->Health(), StatusIs(Code::kUnavailable));
}

TEST_F(SecurityTest, PlaintextServerRefusesTlsClient) {
  Start(Options());
  EXPECT_THAT(InfoStatus(TlsClientOptions()), StatusIs(Code::kUnavailable));
  EXPECT_THAT(InfoStatus(ClientOptions()), IsOk());
}

TEST_F(SecurityTest, ClientRefusesAServerItsCaDidNotCertify) {
  Start(TlsOptions());
  client::ClientOptions o = ClientOptions();
  o.tls_ca_file = certs().other_ca;
  EXPECT_THAT(InfoStatus(o), StatusIs(Code::kUnavailable));
  // The name checked is the target's host unless overridden: the server's
  // certificate is for localhost and 127.0.0.1, not "attention.internal".
  o = TlsClientOptions();
  o.tls_server_name = "attention.internal";
  EXPECT_THAT(InfoStatus(o), StatusIs(Code::kUnavailable));
  o.tls_server_name = "localhost";
  EXPECT_THAT(InfoStatus(o), IsOk());
}

TEST_F(SecurityTest, MutualTlsNeedsAClientCertificateFromTheCa) {
  ServerOptions so = TlsOptions();
  so.security.tls_client_ca_file = certs().ca;
  Start(so);
  client::ClientOptions good = TlsClientOptions();
  good.tls_cert_file = certs().client_cert;
  good.tls_key_file = certs().client_key;
  std::unique_ptr<client::AttentionClient> c = Connect(good);
  EXPECT_THAT(c->GetServerInfo(), IsOk());
  for (const absl::Status& s : AttendStatuses(c.get())) EXPECT_THAT(s, IsOk());

  client::ClientOptions foreign = TlsClientOptions();
  foreign.tls_cert_file = certs().other_client_cert;
  foreign.tls_key_file = certs().other_client_key;
  EXPECT_THAT(InfoStatus(foreign), StatusIs(Code::kUnavailable));
  EXPECT_THAT(InfoStatus(TlsClientOptions()), StatusIs(Code::kUnavailable));
}

TEST_F(SecurityTest, CertificateReplacedOnDiskIsServedToNewConnections) {
  // The server's files are copies the test can replace.
  const std::string cert = File("rotating.pem"), key = File("rotating.key");
  ASSERT_TRUE(
      testutil::WriteFile(cert, testutil::ReadFile(certs().server_cert)));
  ASSERT_TRUE(testutil::WriteFile(key, testutil::ReadFile(certs().server_key)));
  ServerOptions so = Options();
  so.security.tls_cert_file = cert;
  so.security.tls_key_file = key;
  Start(so);
  client::ClientOptions old_ca = TlsClientOptions();
  client::ClientOptions new_ca = ClientOptions();
  new_ca.tls_ca_file = certs().other_ca;
  ASSERT_THAT(InfoStatus(old_ca), IsOk());
  ASSERT_THAT(InfoStatus(new_ca), StatusIs(Code::kUnavailable));

  // The key first: until the certificate follows, the watcher's pair does
  // not match and handshakes fail, which the polls below ride out.
  Replace(key, testutil::ReadFile(certs().other_server_key));
  Replace(cert, testutil::ReadFile(certs().other_server_cert));
  EXPECT_TRUE(Eventually([&] { return InfoStatus(new_ca).ok(); }))
      << "the server never presented the new certificate";
  EXPECT_THAT(InfoStatus(old_ca), StatusIs(Code::kUnavailable));
}

// --- tokens ------------------------------------------------------------------

TEST_F(SecurityTest, TokensGuardEveryMethodButHealth) {
  ServerOptions so = Options();
  so.security.auth_token_file =
      TokenFile("# rotated monthly\n\n  tok-alpha  \ntok-beta\n");
  Start(so);

  std::unique_ptr<client::AttentionClient> none = Connect(ClientOptions());
  const auto missing = StatusIs(Code::kUnauthenticated,
                                HasSubstr("authorization: Bearer <token>"));
  EXPECT_THAT(none->GetServerInfo(), missing);
  for (const absl::Status& s : AttendStatuses(none.get())) {
    EXPECT_THAT(s, missing);
  }
  // Load balancers and orchestrators probe health without credentials.
  EXPECT_THAT(none->Health(),
              testutil::IsOkAndHolds(client::ServingStatus::kServing));

  absl::Status refused = InfoStatus(WithToken("tok-gamma-secret"));
  EXPECT_THAT(refused, StatusIs(Code::kUnauthenticated,
                                HasSubstr("not one this server accepts")));
  EXPECT_THAT(std::string(refused.message()), Not(HasSubstr("gamma")));

  for (const char* token : {"tok-alpha", "tok-beta"}) {
    std::unique_ptr<client::AttentionClient> c = Connect(WithToken(token));
    EXPECT_THAT(c->GetServerInfo(), IsOk()) << token;
    for (const absl::Status& s : AttendStatuses(c.get())) {
      EXPECT_THAT(s, IsOk()) << token;
    }
  }
  // A token file on the client side: its first token.
  client::ClientOptions from_file = ClientOptions();
  from_file.auth_token_file = TokenFile("# mine\ntok-beta\n");
  EXPECT_THAT(InfoStatus(from_file), IsOk());

  // Something other than "Bearer <token>".
  auto channel = grpc::CreateChannel(ClientOptions().target,
                                     grpc::InsecureChannelCredentials());
  auto stub = pb::AttentionService::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.AddMetadata("authorization", "Basic dG9rLWFscGhhOg==");
  pb::ServerInfo info;
  const grpc::Status st =
      stub->GetServerInfo(&ctx, pb::GetServerInfoRequest(), &info);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(st.error_message(), HasSubstr("'Bearer <token>'"));

  // Refusals by reason: 3 missing (info, stream, unary), 1 invalid, 1
  // malformed; the label set is fixed whatever clients send.
  const std::string m = server_->metrics().Serialize();
  EXPECT_THAT(
      m, HasSubstr("scatterbrain_auth_refused_total{reason=\"missing\"} 3"));
  EXPECT_THAT(
      m, HasSubstr("scatterbrain_auth_refused_total{reason=\"invalid\"} 1"));
  EXPECT_THAT(
      m, HasSubstr("scatterbrain_auth_refused_total{reason=\"malformed\"} 1"));
}

TEST_F(SecurityTest, TokensAndMutualTlsTogether) {
  ServerOptions so = TlsOptions();
  so.security.tls_client_ca_file = certs().ca;
  so.security.auth_token_file = TokenFile("tok-alpha\n");
  Start(so);
  client::ClientOptions o = TlsClientOptions();
  o.tls_cert_file = certs().client_cert;
  o.tls_key_file = certs().client_key;
  EXPECT_THAT(InfoStatus(o), StatusIs(Code::kUnauthenticated));
  o.auth_token = "tok-alpha";
  std::unique_ptr<client::AttentionClient> c = Connect(o);
  for (const absl::Status& s : AttendStatuses(c.get())) EXPECT_THAT(s, IsOk());
}

TEST_F(SecurityTest, TokenFileChangesAreReloaded) {
  const std::string path = StartWithTokens("tok-old\n", 1);
  const client::ClientOptions old_token = WithToken("tok-old");
  const client::ClientOptions new_token = WithToken("tok-new");
  ASSERT_THAT(InfoStatus(old_token), IsOk());

  // On change: picked up by a call after the 1 s interval.
  Replace(path, "tok-new\n");
  EXPECT_TRUE(Eventually([&] { return InfoStatus(new_token).ok(); }));
  EXPECT_THAT(InfoStatus(old_token), StatusIs(Code::kUnauthenticated));
}

TEST_F(SecurityTest, ReloadTakesTheTokenFileAtOnceAndKeepsTokensOnError) {
  // An hour between looks: only Reload can pick the change up.
  const std::string path = StartWithTokens("tok-old\n", 3600);
  const client::ClientOptions old_token = WithToken("tok-old");
  const client::ClientOptions new_token = WithToken("tok-new");

  Replace(path, "tok-new\n");
  EXPECT_THAT(InfoStatus(new_token), StatusIs(Code::kUnauthenticated));
  EXPECT_THAT(server_->ReloadCredentials(), IsOk());
  EXPECT_THAT(InfoStatus(new_token), IsOk());
  EXPECT_THAT(InfoStatus(old_token), StatusIs(Code::kUnauthenticated));

  // A file that went bad keeps the tokens loaded (no lock-out), and
  // Reload (SIGHUP) says why.
  Replace(path, "# emptied by mistake\n");
  EXPECT_THAT(server_->ReloadCredentials(),
              StatusIs(Code::kInvalidArgument, HasSubstr("no tokens")));
  EXPECT_THAT(InfoStatus(new_token), IsOk());
}

// --- reflection --------------------------------------------------------------

TEST_F(SecurityTest, ReflectionIsOnOnlyForAnOpenServerUnlessAsked) {
  struct Case {
    const char* name;
    bool tls;
    bool tokens;
    ReflectionMode mode;
    bool want;
  };
  for (const Case& k : {
           Case{"plaintext, auto", false, false, ReflectionMode::kAuto, true},
           Case{"TLS, auto", true, false, ReflectionMode::kAuto, false},
           Case{"tokens, auto", false, true, ReflectionMode::kAuto, false},
           Case{"TLS, on", true, false, ReflectionMode::kOn, true},
           Case{"plaintext, off", false, false, ReflectionMode::kOff, false},
       }) {
    SCOPED_TRACE(k.name);
    ServerOptions so = k.tls ? TlsOptions() : Options();
    if (k.tokens) so.security.auth_token_file = TokenFile("tok\n");
    so.security.reflection = k.mode;
    Start(so);
    std::unique_ptr<client::AttentionClient> c =
        Connect(k.tls ? TlsClientOptions() : ClientOptions());
    const absl::StatusOr<std::string> list = ListServices(c->channel());
    if (k.want) {
      EXPECT_THAT(list, testutil::IsOkAndHolds(
                            HasSubstr("scatterbrain.v1.AttentionService")));
    } else {
      EXPECT_THAT(list, StatusIs(Code::kUnimplemented));
    }
    server_->Shutdown();
    server_.reset();
  }
}

// --- options -----------------------------------------------------------------

TEST_F(SecurityTest, BadOptionsAreRefusedNamingTheOption) {
  const std::string missing = File("does-not-exist.pem");
  struct Case {
    std::function<void(SecurityOptions*)> set;
    const char* want;
  };
  const testutil::TestCertificates& c = certs();
  const std::vector<Case> cases = {
      {[&](SecurityOptions* s) { s->tls_key_file = c.server_key; },
       "tls_key_file: set without tls_cert_file"},
      {[&](SecurityOptions* s) { s->tls_cert_file = c.server_cert; },
       "tls_cert_file: set without tls_key_file"},
      {[&](SecurityOptions* s) { s->tls_client_ca_file = c.ca; },
       "tls_client_ca_file: set without tls_cert_file"},
      {[&](SecurityOptions* s) {
         s->tls_cert_file = missing;
         s->tls_key_file = c.server_key;
       },
       "tls_cert_file: cannot read"},
      {[&](SecurityOptions* s) {
         s->tls_cert_file = c.server_key;
         s->tls_key_file = c.server_key;
       },
       "tls_cert_file: '"},
      {[&](SecurityOptions* s) {
         s->tls_cert_file = c.server_cert;
         s->tls_key_file = c.other_server_key;
       },
       "is not the key of the certificate"},
      {[&](SecurityOptions* s) {
         s->tls_cert_file = c.server_cert;
         s->tls_key_file = c.server_key;
         s->tls_client_ca_file = c.server_key;
       },
       "tls_client_ca_file: '"},
      {[&](SecurityOptions* s) { s->auth_token_file = missing; },
       "auth_token_file: cannot read"},
      {[&](SecurityOptions* s) { s->auth_token_file = TokenFile("# none\n"); },
       "auth_token_file: '"},
      {[&](SecurityOptions* s) {
         s->auth_token_file = TokenFile("good\ntwo words\n");
       },
       "line 2: a token is one word"},
      {[&](SecurityOptions* s) { s->reload_interval_s = 0; },
       "security_reload_interval_s: must be in [1, 86400]"},
  };
  for (const Case& k : cases) {
    ServerOptions o = Options();
    k.set(&o.security);
    SCOPED_TRACE(k.want);
    EXPECT_THAT(ValidateServerOptions(o),
                StatusIs(Code::kInvalidArgument, HasSubstr(k.want)));
    EXPECT_THAT(Server::Start(o), StatusIs(Code::kInvalidArgument));
  }
}

TEST_F(SecurityTest, ClientOptionsAreCheckedNamingTheOption) {
  client::ClientOptions o;
  o.tls_cert_file = certs().client_cert;
  EXPECT_THAT(client::CheckSecurityOptions(o),
              StatusIs(Code::kInvalidArgument,
                       HasSubstr("tls_cert_file: set without tls_key_file")));
  o = client::ClientOptions();
  o.tls_ca_file = certs().client_key;
  EXPECT_THAT(client::CheckSecurityOptions(o),
              StatusIs(Code::kInvalidArgument, HasSubstr("tls_ca_file: '")));
  o = client::ClientOptions();
  o.auth_token = "two words";
  EXPECT_THAT(client::CheckSecurityOptions(o),
              StatusIs(Code::kInvalidArgument, HasSubstr("auth_token:")));
  o.auth_token_file = TokenFile("x\n");
  o.auth_token = "x";
  EXPECT_THAT(client::CheckSecurityOptions(o),
              StatusIs(Code::kInvalidArgument, HasSubstr("auth_token_file:")));
  EXPECT_THAT(client::AttentionClient::Create(o),
              StatusIs(Code::kInvalidArgument));
}

// --- the Authenticator alone -------------------------------------------------

TEST_F(SecurityTest, AuthenticatorParsesTheHeaderAndNamesTheCaller) {
  absl::StatusOr<std::unique_ptr<Authenticator>> a = Authenticator::Create(
      TokenFile("tok-alpha\ntok-beta\ntok-alpha\n"), absl::Hours(1), nullptr);
  ASSERT_THAT(a, IsOk());
  EXPECT_EQ((*a)->token_count(), 2);  // duplicates count once
  const auto check = [&](std::vector<std::string> values) {
    grpc::ServerContext ctx;
    grpc::testing::ServerContextTestSpouse spouse(&ctx);
    for (const std::string& v : values)
      spouse.AddClientMetadata("authorization", v);
    return std::make_pair((*a)->Authenticate(ctx), (*a)->Identity(ctx));
  };
  EXPECT_THAT(check({"Bearer tok-alpha"}).first, IsOk());
  EXPECT_THAT(check({"bearer   tok-beta "}).first, IsOk());  // RFC 7235
  EXPECT_THAT(check({"Bearer"}).first, StatusIs(Code::kUnauthenticated));
  EXPECT_THAT(check({"tok-alpha"}).first, StatusIs(Code::kUnauthenticated));
  EXPECT_THAT(check({"Bearer tok-alpha", "Bearer tok-beta"}).first,
              StatusIs(Code::kUnauthenticated, HasSubstr("one entry")));
  EXPECT_THAT(check({"Bearer tok-alph"}).first,
              StatusIs(Code::kUnauthenticated));
  EXPECT_THAT(check({"Bearer tok-alphaa"}).first,
              StatusIs(Code::kUnauthenticated));

  // Identity: stable per token, distinct across tokens, never the token.
  const std::string alpha = check({"Bearer tok-alpha"}).second;
  EXPECT_EQ(alpha, check({"bearer tok-alpha"}).second);
  EXPECT_NE(alpha, check({"Bearer tok-beta"}).second);
  EXPECT_THAT(alpha, ::testing::MatchesRegex("token:[0-9a-f]{16}"));

  absl::StatusOr<std::unique_ptr<Authenticator>> open =
      Authenticator::Create("", absl::Hours(1), nullptr);
  ASSERT_THAT(open, IsOk());
  grpc::ServerContext ctx;
  EXPECT_THAT((*open)->Authenticate(ctx), IsOk());
  EXPECT_EQ((*open)->Identity(ctx), "anonymous");
}

// The identity of a mutual-TLS caller is its certificate's subject: a
// generic service on a server with the same credentials records it.
TEST_F(SecurityTest, IdentityOfAMutualTlsCallerIsItsCertificateSubject) {
  SecurityOptions so;
  so.tls_cert_file = certs().server_cert;
  so.tls_key_file = certs().server_key;
  so.tls_client_ca_file = certs().ca;
  absl::StatusOr<std::unique_ptr<Authenticator>> auth =
      Authenticator::Create("", absl::Hours(1), nullptr);
  ASSERT_THAT(auth, IsOk());

  class WhoAmI final : public grpc::CallbackGenericService {
   public:
    explicit WhoAmI(const Authenticator* auth) : auth_(auth) {}
    grpc::ServerGenericBidiReactor* CreateReactor(
        grpc::GenericCallbackServerContext* ctx) override {
      class Reactor final : public grpc::ServerGenericBidiReactor {
       public:
        explicit Reactor(std::string who) {
          // The identity comes back as the status message.
          Finish(grpc::Status(grpc::StatusCode::ABORTED, who));
        }
        void OnDone() override { delete this; }
      };
      return new Reactor(auth_->Identity(*ctx));
    }

   private:
    const Authenticator* auth_;
  } who(auth->get());

  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", MakeServerCredentials(so), &port);
  builder.RegisterCallbackGenericService(&who);
  std::unique_ptr<grpc::Server> s = builder.BuildAndStart();
  ASSERT_NE(s, nullptr);
  client::ClientOptions o;
  o.target = absl::StrCat("127.0.0.1:", port);
  o.tls_ca_file = certs().ca;
  o.tls_cert_file = certs().client_cert;
  o.tls_key_file = certs().client_key;
  std::unique_ptr<client::AttentionClient> c = Connect(o);
  EXPECT_THAT(
      client::internal::RawUnaryCall(c->channel(), "/who.Am/I", "",
                                     absl::Seconds(30)),
      StatusIs(Code::kAborted, HasSubstr("x509:CN=scatterbrain-test-client")));
  s->Shutdown();
}

}  // namespace
}  // namespace server
}  // namespace scatterbrain
