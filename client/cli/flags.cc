// scatterbrain/client/cli/flags.cc — see flags.h.
#include "client/cli/flags.h"

#include <cmath>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "proto/convert/settings.h"

namespace scatterbrain {
namespace cli {
namespace {

// Parses a setting's name (params.h's ParseMethod, ParseSparse, ...) into
// its member of AttentionParams.
template <typename E, bool (*Parse)(const std::string&, E*),
          E AttentionParams::*member>
bool ParseInto(const std::string& value, AttentionParams* p) {
  return Parse(value, &(p->*member));
}

// The settings chosen by name: flag, parser, choices. Checked in this order
// (the first bad one is reported). The counts are proto/convert/settings'
// table (flag name = field name = member name).
struct EnumFlag {
  const char* name;
  bool (*parse)(const std::string& value, AttentionParams* p);
  const char* choices;
};
constexpr EnumFlag kEnumFlags[] = {
    {"method", ParseInto<Method, ParseMethod, &AttentionParams::method>,
     "exact|performer|lsh|local|scatterbrain"},
    {"sparse", ParseInto<SparseSupport, ParseSparse, &AttentionParams::sparse>,
     "lsh|local|both|auto"},
    {"estimator",
     ParseInto<Estimator, ParseEstimator, &AttentionParams::estimator>,
     "calibrated|unbiased"},
    {"lsh_hash", ParseInto<LshHash, ParseLshHash, &AttentionParams::lsh_hash>,
     "kmeans|crosspolytope"},
    {"lsh_transform",
     ParseInto<LshTransform, ParseLshTransform,
               &AttentionParams::lsh_transform>,
     "none|smyrf"},
    {"precision",
     ParseInto<Precision, ParsePrecision, &AttentionParams::precision>,
     "fp32|tf32|bf16"},
};

absl::Status BadNumber(absl::string_view name, absl::string_view value,
                       absl::string_view want) {
  return absl::InvalidArgumentError(
      absl::StrCat("flag --", name, ": '", value, "' is not ", want));
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

// A finite number flag (--scale, --target_error), parsed by `parse`
// (absl::SimpleAtof or SimpleAtod); absent: `*out` is left alone. Ranges
// are ValidateParams' to check, locally or on the server, with the same
// message.
template <typename T>
absl::Status FiniteFlag(const FlagValues& f, const char* name,
                        bool (*parse)(absl::string_view, T*), T* out) {
  auto it = f.find(name);
  if (it == f.end()) return absl::OkStatus();
  T v;
  if (!parse(it->second, &v) || !std::isfinite(v)) {
    return BadNumber(name, it->second, "a finite number");
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

}  // namespace

FlagSpecs WithSettings(FlagSpecs own) {
  for (const EnumFlag& e : kEnumFlags) {
    if (absl::string_view(e.name) != "method") {
      own.emplace(e.name, FlagSpec{FlagKind::kString, false});
    }
  }
  for (const wire::CountSetting& c : wire::CountSettings()) {
    own.emplace(c.name, FlagSpec{FlagKind::kString, false});
  }
  own.emplace("causal", FlagSpec{FlagKind::kBool, false});
  own.emplace("scale", FlagSpec{FlagKind::kString, false});
  own.emplace("target_error", FlagSpec{FlagKind::kString, false});
  own.emplace("seed", FlagSpec{FlagKind::kString, false});
  return own;
}

const std::vector<std::string>& SecurityFlagNames() {
  static const auto* names = new std::vector<std::string>{
      "tls",          "tls_ca_file",     "tls_cert_file",
      "tls_key_file", "tls_server_name", "auth_token_file"};
  return *names;
}

FlagSpecs WithSecurity(FlagSpecs own) {
  for (const std::string& name : SecurityFlagNames()) {
    own.emplace(
        name,
        FlagSpec{name == "tls" ? FlagKind::kBool : FlagKind::kString, false});
  }
  return own;
}

absl::StatusOr<FlagValues> ParseFlags(const std::vector<std::string>& args,
                                      const FlagSpecs& spec) {
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

bool BoolFlag(const FlagValues& f, const std::string& name) {
  auto it = f.find(name);
  return it != f.end() && it->second == "true";
}

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

AttentionParams OneShotDefaults() {
  AttentionParams p;
  p.sparse = SparseSupport::kAuto;
  p.global_keys = 4;
  return p;
}

absl::Status ParseSettings(const FlagValues& f, AttentionParams* p) {
  for (const EnumFlag& e : kEnumFlags) {
    auto it = f.find(e.name);
    if (it != f.end() && !e.parse(it->second, p)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "unknown --", e.name, " '", it->second, "' (", e.choices, ")"));
    }
  }
  for (const wire::CountSetting& c : wire::CountSettings()) {
    absl::Status s = IntFlag(f, c.name, &(p->*c.member));
    if (!s.ok()) return s;
  }
  for (absl::Status s :
       {SeedFlag(f, &p->seed),
        FiniteFlag<float>(f, "scale", absl::SimpleAtof, &p->scale),
        FiniteFlag<double>(f, "target_error", absl::SimpleAtod,
                           &p->target_error)}) {
    if (!s.ok()) return s;
  }
  p->causal = BoolFlag(f, "causal");
  return absl::OkStatus();
}

absl::StatusOr<v1::MethodSettings> WireSettings(const AttentionParams& p) {
  absl::StatusOr<v1::MethodSettings> s = wire::SettingsFromParams(p);
  if (!s.ok() && absl::IsInvalidArgument(s.status())) {
    // "num_features: must be >= 0, got -1": the field's name is the flag's.
    return absl::InvalidArgumentError(
        absl::StrCat("flag --", s.status().message()));
  }
  return s;
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

absl::StatusOr<client::ClientOptions> ClientOptionsFromFlags(
    const FlagValues& f, absl::Duration default_timeout) {
  client::ClientOptions o;
  o.target = f.at("server");
  o.deadline = default_timeout;
  absl::Status s = PositiveFlag(f, "chunk_bytes", &o.chunk_bytes);
  if (!s.ok()) return s;
  s = TimeoutFlag(f, &o.deadline);
  if (!s.ok()) return s;
  o.use_tls = BoolFlag(f, "tls");
  for (auto [name, field] : {
           std::pair{"tls_ca_file", &o.tls_ca_file},
           std::pair{"tls_cert_file", &o.tls_cert_file},
           std::pair{"tls_key_file", &o.tls_key_file},
           std::pair{"tls_server_name", &o.tls_server_name},
           std::pair{"auth_token_file", &o.auth_token_file},
       }) {
    if (auto it = f.find(name); it != f.end()) *field = it->second;
  }
  // The options' names are the flags'.
  s = client::CheckSecurityOptions(o);
  if (!s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("flag --", s.message()));
  }
  if (auto it = f.find("retry_budget_s"); it != f.end()) {
    double v;
    if (!absl::SimpleAtod(it->second, &v) || !(v >= 0) || !std::isfinite(v)) {
      return BadNumber("retry_budget_s", it->second,
                       "a number of seconds >= 0");
    }
    o.retry_budget = absl::Seconds(v);
  }
  absl::StatusOr<client::ResolvedTarget> t = client::ResolveTarget(o);
  if (!t.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("flag --server: ", t.status().message()));
  }
  return o;
}

absl::StatusOr<std::unique_ptr<client::AttentionClient>> ClientFromFlags(
    const FlagValues& f, absl::Duration default_timeout) {
  absl::StatusOr<client::ClientOptions> options =
      ClientOptionsFromFlags(f, default_timeout);
  if (!options.ok()) return options.status();
  return client::AttentionClient::Create(*std::move(options));
}

}  // namespace cli
}  // namespace scatterbrain
