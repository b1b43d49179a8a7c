// scatterbrain/client/cli/flags.cc — see flags.h.
#include "client/cli/flags.h"

#include <cmath>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "proto/convert/settings.h"

namespace scatterbrain {
namespace cli {
namespace {

// The settings chosen by name: flag, parser into AttentionParams, choices.
// Checked in this order (the first bad one is reported).
struct EnumFlag {
  const char* name;
  bool (*parse)(const std::string& value, AttentionParams* p);
  const char* choices;
};
const EnumFlag kEnumFlags[] = {
    {"method",
     [](const std::string& s, AttentionParams* p) {
       return ParseMethod(s, &p->method);
     },
     "exact|performer|lsh|local|scatterbrain"},
    {"sparse",
     [](const std::string& s, AttentionParams* p) {
       return ParseSparse(s, &p->sparse);
     },
     "lsh|local|both"},
    {"estimator",
     [](const std::string& s, AttentionParams* p) {
       return ParseEstimator(s, &p->estimator);
     },
     "calibrated|unbiased"},
    {"lsh_hash",
     [](const std::string& s, AttentionParams* p) {
       return ParseLshHash(s, &p->lsh_hash);
     },
     "kmeans|crosspolytope"},
    {"lsh_transform",
     [](const std::string& s, AttentionParams* p) {
       return ParseLshTransform(s, &p->lsh_transform);
     },
     "none|smyrf"},
};

// The integer settings: flag name = AttentionParams member (= the proto's
// field, which proto/convert/settings maps).
struct CountFlag {
  const char* name;
  int AttentionParams::*member;
};
constexpr CountFlag kCountFlags[] = {
    {"num_features", &AttentionParams::num_features},
    {"bucket_size", &AttentionParams::bucket_size},
    {"num_hashes", &AttentionParams::num_hashes},
    {"hash_projections", &AttentionParams::hash_projections},
    {"kmeans_iterations", &AttentionParams::kmeans_iterations},
    {"window", &AttentionParams::window},
    {"calibration_rows", &AttentionParams::calibration_rows},
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
  for (const CountFlag& c : kCountFlags) {
    own.emplace(c.name, FlagSpec{FlagKind::kString, false});
  }
  own.emplace("causal", FlagSpec{FlagKind::kBool, false});
  own.emplace("scale", FlagSpec{FlagKind::kString, false});
  own.emplace("seed", FlagSpec{FlagKind::kString, false});
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

absl::Status ParseSettings(const FlagValues& f, AttentionParams* p) {
  for (const EnumFlag& e : kEnumFlags) {
    auto it = f.find(e.name);
    if (it != f.end() && !e.parse(it->second, p)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "unknown --", e.name, " '", it->second, "' (", e.choices, ")"));
    }
  }
  for (const CountFlag& c : kCountFlags) {
    absl::Status s = IntFlag(f, c.name, &(p->*c.member));
    if (!s.ok()) return s;
  }
  for (absl::Status s : {SeedFlag(f, &p->seed), ScaleFlag(f, &p->scale)}) {
    if (!s.ok()) return s;
  }
  p->causal = BoolFlag(f, "causal");
  return absl::OkStatus();
}

absl::StatusOr<v1::MethodSettings> WireSettings(const AttentionParams& p) {
  absl::StatusOr<v1::MethodSettings> s = wire::SettingsFromParams(p);
  if (!s.ok() && absl::IsInvalidArgument(s.status())) {
    // "num_features: must be >= 0, got -1": the field is the flag.
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
  absl::StatusOr<client::ResolvedTarget> t = client::ResolveTarget(o);
  if (!t.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("flag --server: ", t.status().message()));
  }
  return o;
}

}  // namespace cli
}  // namespace scatterbrain
