// scatterbrain/proto/convert/session.cc — see session.h.
#include "proto/convert/session.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "proto/convert/settings.h"
#include "proto/convert/wire.h"

namespace scatterbrain {
namespace wire {

absl::Status SessionConfigFromProto(const v1::CreateSessionRequest& r,
                                    SessionConfig* config, double* ttl_s) {
  AttentionParams p;
  absl::Status st = SettingsToParams(r.settings(), "settings", &p);
  if (!st.ok()) return st;
  // The planner chooses per head from exact rows of the whole call; a
  // session's decode steps see one row at a time and have no such rows.
  if (p.target_error != 0.0) {
    return absl::InvalidArgumentError(
        "settings.target_error: target_error is for one-shot calls, not "
        "sessions (leave it unset)");
  }
  DType kv = DType::kFloat32;
  if (r.kv_dtype() != v1::DTYPE_UNSPECIFIED &&
      !DTypeFromProto(r.kv_dtype(), &kv)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "kv_dtype: must be unset or DTYPE_FLOAT32, DTYPE_FLOAT16 or "
        "DTYPE_BFLOAT16, got ",
        DTypeProtoName(r.kv_dtype())));
  }
  config->settings = p;
  config->batch = r.batch() == 0 ? 1 : r.batch();
  config->heads = r.heads() == 0 ? 1 : r.heads();
  config->dim = r.dim();
  config->dim_v = r.dim_v() == 0 ? r.dim() : r.dim_v();
  config->kv_dtype = kv;
  *ttl_s = r.ttl_seconds();
  return absl::OkStatus();
}

absl::StatusOr<v1::CreateSessionRequest> SessionConfigToProto(
    const SessionConfig& config, double ttl_s) {
  v1::CreateSessionRequest r;
  absl::StatusOr<v1::MethodSettings> s = SettingsFromParams(config.settings);
  if (!s.ok()) return s.status();
  *r.mutable_settings() = *std::move(s);
  r.set_batch(static_cast<uint32_t>(config.batch));
  r.set_heads(static_cast<uint32_t>(config.heads));
  r.set_dim(static_cast<uint32_t>(config.dim));
  r.set_dim_v(static_cast<uint32_t>(config.dim_v));
  r.set_kv_dtype(DTypeToProto(config.kv_dtype));
  r.set_ttl_seconds(ttl_s);
  return r;
}

absl::Status CreateSessionPath(const absl::Status& st) {
  const absl::string_view msg = st.message();
  const size_t colon = msg.find(": ");
  if (colon == absl::string_view::npos) return st;
  const absl::string_view field = msg.substr(0, colon);
  if (IsSettingsField(field)) {
    return absl::Status(st.code(), absl::StrCat("settings.", msg));
  }
  return st;  // batch, heads, dim, dim_v: the request's own fields
}

void SessionInfoToProto(const std::string& id, const SessionInfo& info,
                        const SessionConfig& config,
                        const SessionLimitsView& limits, double idle_seconds,
                        v1::SessionInfo* out) {
  const auto u64 = [](int64_t v) {
    return static_cast<uint64_t>(std::max<int64_t>(v, 0));
  };
  out->set_session_id(id);
  for (int64_t l : info.lengths) out->add_lengths(u64(l));
  out->set_kv_bytes(u64(info.kv_bytes));
  out->set_state_bytes(u64(info.state_bytes));
  out->set_held_bytes(u64(info.held_bytes));
  out->set_idle_seconds(idle_seconds);
  v1::SessionLimits* l = out->mutable_limits();
  l->set_max_tokens(u64(limits.max_tokens));
  l->set_max_bytes(u64(limits.max_bytes));
  l->set_ttl_seconds(limits.ttl_seconds);
  l->set_kv_block_tokens(static_cast<uint32_t>(limits.block_tokens));
  absl::StatusOr<v1::MethodSettings> s = SettingsFromParams(config.settings);
  if (s.ok()) *out->mutable_settings() = *std::move(s);
  v1::Shape* shape = out->mutable_shape();
  shape->set_batch(static_cast<uint32_t>(config.batch));
  shape->set_heads(static_cast<uint32_t>(config.heads));
  shape->set_dim(static_cast<uint32_t>(config.dim));
  shape->set_dim_v(static_cast<uint32_t>(config.dim_v));
  out->set_kv_dtype(DTypeToProto(config.kv_dtype));
  out->set_appends(u64(info.appends));
  out->set_steps(u64(info.steps));
  out->set_refits(u64(info.refits));
}

}  // namespace wire
}  // namespace scatterbrain
