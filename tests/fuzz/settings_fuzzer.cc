// tests/fuzz/settings_fuzzer.cc — the proto -> params mapping
// (proto/convert/settings) and the core's validation on arbitrary
// MethodSettings bytes.
//
// Invariants: SettingsToParams refuses with INVALID_ARGUMENT naming a
// "settings." field, or maps; what maps comes back from SettingsFromParams
// (every field explicit) and maps again to the same AttentionParams; the
// explicit form is a fixed point. ValidateShapeAndSettings and
// ValidateParams on a few small shapes never crash, refuse with
// INVALID_ARGUMENT and a message, and agree with each other.
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "kernels/params.h"
#include "kernels/validate.h"
#include "proto/convert/settings.h"
#include "scatterbrain/v1/attention.pb.h"
#include "tests/fuzz/fuzz_check.h"

namespace scatterbrain {
namespace fuzz {
namespace {

bool SameSettings(const AttentionParams& a, const AttentionParams& b) {
  for (const wire::CountSetting& c : wire::CountSettings()) {
    if (a.*c.member != b.*c.member) return false;
  }
  return a.method == b.method && a.sparse == b.sparse &&
         a.estimator == b.estimator && a.lsh_hash == b.lsh_hash &&
         a.lsh_transform == b.lsh_transform && a.precision == b.precision &&
         a.causal == b.causal && a.seed == b.seed &&
         std::memcmp(&a.scale, &b.scale, sizeof(float)) == 0;  // NaN too
}

void CheckValidation(AttentionParams p) {
  // Self-attention and cross-attention, MQA-sized and ragged.
  const AttentionShape shapes[] = {{1, 1, 4, 4, 8, 8}, {2, 3, 5, 9, 4, 6}};
  for (const AttentionShape& shape : shapes) {
    SetShape(shape, p);
    const absl::Status st = ValidateShapeAndSettings(p);
    if (!st.ok()) {
      FUZZ_CHECK(st.code() == absl::StatusCode::kInvalidArgument,
                 st.ToString());
      FUZZ_CHECK(!st.message().empty(), "empty message");
    }
    // The same call with real (zero) tensors: values are finite, so the
    // verdict is the one without tensors.
    std::vector<float> q(shape.q_elements()), k(shape.k_elements()),
        v(shape.v_elements()), out(shape.out_elements());
    AttentionParams full = p;
    full.q = q.data();
    full.k = k.data();
    full.v = v.data();
    full.out = out.data();
    SetContiguousStrides(full);
    FUZZ_CHECK(ValidateParams(full) == st, "ValidateParams disagrees");
  }
}

}  // namespace
}  // namespace fuzz
}  // namespace scatterbrain

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace scatterbrain;  // NOLINT: a fuzz entry point
  v1::MethodSettings s;
  if (!s.ParseFromArray(data, static_cast<int>(size))) return 0;
  AttentionParams p;
  const absl::Status st = wire::SettingsToParams(s, "settings", &p);
  if (!st.ok()) {
    fuzz::CheckClientError(st, "SettingsToParams");
    FUZZ_CHECK(absl::StartsWith(st.message(), "settings."), st.ToString());
    return 0;
  }
  fuzz::CheckValidation(p);

  absl::StatusOr<v1::MethodSettings> explicit_form =
      wire::SettingsFromParams(p);
  FUZZ_CHECK(explicit_form.ok(), explicit_form.status().ToString());
  AttentionParams back;
  const absl::Status st2 =
      wire::SettingsToParams(*explicit_form, "settings", &back);
  FUZZ_CHECK(st2.ok(), st2.ToString());
  FUZZ_CHECK(fuzz::SameSettings(p, back), "params round trip");
  absl::StatusOr<v1::MethodSettings> again = wire::SettingsFromParams(back);
  FUZZ_CHECK(again.ok() && again->SerializeAsString() ==
                               explicit_form->SerializeAsString(),
             "explicit settings are not a fixed point");
  return 0;
}
