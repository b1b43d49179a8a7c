// scatterbrain/server/kserve_request.cc — see kserve_request.h.
#include "server/kserve_request.h"

#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/dtype.h"
#include "proto/convert/wire.h"

namespace scatterbrain {
namespace server {
namespace kserve {
namespace {

using google::protobuf::FieldDescriptor;
using Params = google::protobuf::Map<std::string, inference::InferParameter>;

constexpr char kQ[] = "Q", kK[] = "K", kV[] = "V",
               kKeyLengths[] = "KEY_LENGTHS", kOut[] = "OUT";
constexpr char kRegion[] = "shared_memory_region";
constexpr char kRegionBytes[] = "shared_memory_byte_size";
constexpr char kRegionOffset[] = "shared_memory_offset";

absl::Status Invalid(absl::string_view what, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(what, ": ", why));
}

std::string ParamName(absl::string_view name) {
  return absl::StrCat("parameter '", name, "'");
}

// KServe's datatype names of the wire dtypes.
const char* KServeName(DType d) {
  switch (d) {
    case DType::kFloat32:
      return "FP32";
    case DType::kFloat16:
      return "FP16";
    case DType::kBFloat16:
      return "BF16";
  }
  return "FP32";
}

bool FromKServeName(absl::string_view name, DType* out) {
  for (DType d : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    if (name == KServeName(d)) {
      *out = d;
      return true;
    }
  }
  return false;
}

// A parameter as an integer: int64_param, uint64_param or a decimal string
// (perf_analyzer's --request-parameter sends strings).
bool AsInteger(const inference::InferParameter& p, int64_t* out) {
  switch (p.parameter_choice_case()) {
    case inference::InferParameter::kInt64Param:
      *out = p.int64_param();
      return true;
    case inference::InferParameter::kUint64Param:
      if (p.uint64_param() >
          static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        *out = std::numeric_limits<int64_t>::max();
      } else {
        *out = static_cast<int64_t>(p.uint64_param());
      }
      return true;
    case inference::InferParameter::kStringParam:
      return absl::SimpleAtoi(p.string_param(), out);
    default:
      return false;
  }
}

std::string Describe(const inference::InferParameter& p) {
  switch (p.parameter_choice_case()) {
    case inference::InferParameter::kBoolParam:
      return p.bool_param() ? "bool true" : "bool false";
    case inference::InferParameter::kInt64Param:
      return absl::StrCat("int64 ", p.int64_param());
    case inference::InferParameter::kUint64Param:
      return absl::StrCat("uint64 ", p.uint64_param());
    case inference::InferParameter::kDoubleParam:
      return absl::StrCat("double ", p.double_param());
    case inference::InferParameter::kStringParam:
      return absl::StrCat("string '", p.string_param(), "'");
    default:
      return "no value";
  }
}

// The setting names a request may carry: MethodSettings' fields but the
// method (the model is the method).
std::string SettingNames() {
  std::vector<std::string> names;
  const auto* d = v1::MethodSettings::descriptor();
  for (int i = 0; i < d->field_count(); ++i) {
    if (d->field(i)->name() != "method")
      names.emplace_back(d->field(i)->name());
  }
  names.emplace_back("output_dtype");
  return absl::StrJoin(names, ", ");
}

// One parameter into the MethodSettings field `f` of the same name, by the
// field's type; the values are range-checked by SettingsToParams later.
absl::Status SetSetting(const FieldDescriptor* f,
                        const inference::InferParameter& p,
                        v1::MethodSettings* s) {
  const auto* r = s->GetReflection();
  const std::string what = ParamName(f->name());
  int64_t i = 0;
  switch (f->cpp_type()) {
    case FieldDescriptor::CPPTYPE_UINT32:
      if (!AsInteger(p, &i) || i < 0 ||
          i > std::numeric_limits<uint32_t>::max()) {
        return Invalid(what, absl::StrCat("must be an integer in [0, ",
                                          std::numeric_limits<uint32_t>::max(),
                                          "], got ", Describe(p)));
      }
      r->SetUInt32(s, f, static_cast<uint32_t>(i));
      return absl::OkStatus();
    case FieldDescriptor::CPPTYPE_UINT64:
      if (p.parameter_choice_case() ==
          inference::InferParameter::kUint64Param) {
        r->SetUInt64(s, f, p.uint64_param());
        return absl::OkStatus();
      }
      if (!AsInteger(p, &i) || i < 0) {
        return Invalid(
            what, absl::StrCat("must be an integer >= 0, got ", Describe(p)));
      }
      r->SetUInt64(s, f, static_cast<uint64_t>(i));
      return absl::OkStatus();
    case FieldDescriptor::CPPTYPE_BOOL: {
      bool b = false;
      if (p.parameter_choice_case() == inference::InferParameter::kBoolParam) {
        b = p.bool_param();
      } else if (p.parameter_choice_case() !=
                     inference::InferParameter::kStringParam ||
                 !absl::SimpleAtob(p.string_param(), &b)) {
        return Invalid(what, absl::StrCat("must be a bool, got ", Describe(p)));
      }
      r->SetBool(s, f, b);
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_FLOAT:
    case FieldDescriptor::CPPTYPE_DOUBLE: {  // scale, target_error
      double d = 0;
      if (p.parameter_choice_case() ==
          inference::InferParameter::kDoubleParam) {
        d = p.double_param();
      } else if (AsInteger(p, &i)) {
        d = static_cast<double>(i);
      } else if (p.parameter_choice_case() !=
                     inference::InferParameter::kStringParam ||
                 !absl::SimpleAtod(p.string_param(), &d)) {
        return Invalid(what,
                       absl::StrCat("must be a number, got ", Describe(p)));
      }
      if (f->cpp_type() == FieldDescriptor::CPPTYPE_DOUBLE) {
        r->SetDouble(s, f, d);
      } else {
        r->SetFloat(s, f, static_cast<float>(d));
      }
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_ENUM: {
      // The CLI's value names are the proto's enum names without their
      // prefix, lower-cased: "both" is SPARSE_SUPPORT_BOTH.
      // Every enum's value 0 is <PREFIX>_UNSPECIFIED.
      const auto* e = f->enum_type();
      const std::string& zero = e->value(0)->name();
      const size_t prefix = zero.size() - (sizeof("UNSPECIFIED") - 1);
      std::vector<std::string> accepted;
      for (int k = 1; k < e->value_count(); ++k) {
        const std::string& full = e->value(k)->name();
        accepted.push_back(absl::AsciiStrToLower(full.substr(prefix)));
        if (p.parameter_choice_case() ==
                inference::InferParameter::kStringParam &&
            absl::AsciiStrToLower(p.string_param()) == accepted.back()) {
          r->SetEnumValue(s, f, e->value(k)->number());
          return absl::OkStatus();
        }
      }
      return Invalid(
          what, absl::StrCat("must be one of ", absl::StrJoin(accepted, ", "),
                             ", got ", Describe(p)));
    }
    default:
      return Invalid(what, "is not a setting");
  }
}

// The shared_memory_* parameters of a tensor: the region's bytes for it,
// or nullopt when the tensor does not use shared memory.
absl::StatusOr<std::optional<ShmSpan>> SharedMemoryOf(
    const Params& params, const SystemShmRegistry& shm,
    const std::string& owner, const std::string& what) {
  const auto region = params.find(kRegion);
  if (region == params.end()) return std::nullopt;
  if (region->second.parameter_choice_case() !=
      inference::InferParameter::kStringParam) {
    return Invalid(what, absl::StrCat(kRegion, " must be a string"));
  }
  int64_t bytes = 0, offset = 0;
  const auto size = params.find(kRegionBytes);
  if (size == params.end() || !AsInteger(size->second, &bytes) || bytes < 0) {
    return Invalid(
        what, absl::StrCat(kRegionBytes, " must be set to an integer >= 0"));
  }
  if (const auto off = params.find(kRegionOffset); off != params.end()) {
    if (!AsInteger(off->second, &offset) || offset < 0) {
      return Invalid(what,
                     absl::StrCat(kRegionOffset, " must be an integer >= 0"));
    }
  }
  absl::StatusOr<ShmSpan> span =
      shm.Resolve(region->second.string_param(), static_cast<uint64_t>(offset),
                  static_cast<uint64_t>(bytes), owner, what);
  if (!span.ok()) return span.status();
  return std::optional<ShmSpan>(*std::move(span));
}

std::string ShapeText(const google::protobuf::RepeatedField<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

}  // namespace

const std::vector<std::string>& ModelNames() {
  static const auto* names = new std::vector<std::string>{
      "scatterbrain", "exact", "performer", "lsh", "local"};
  return *names;
}

bool MethodOfModel(absl::string_view model, v1::Method* out) {
  static constexpr struct {
    const char* name;
    v1::Method method;
  } kModels[] = {{"scatterbrain", v1::METHOD_SCATTERBRAIN},
                 {"exact", v1::METHOD_EXACT},
                 {"performer", v1::METHOD_PERFORMER},
                 {"lsh", v1::METHOD_LSH},
                 {"local", v1::METHOD_LOCAL}};
  for (const auto& m : kModels) {
    if (model == m.name) {
      *out = m.method;
      return true;
    }
  }
  return false;
}

absl::Status CheckModel(absl::string_view model, absl::string_view version) {
  v1::Method m;
  if (!MethodOfModel(model, &m)) {
    return absl::NotFoundError(absl::StrCat(
        "model '", model,
        "' is not served; models: ", absl::StrJoin(ModelNames(), ", ")));
  }
  if (!version.empty() && version != "1") {
    return absl::NotFoundError(absl::StrCat(
        "model '", model, "' version '", version, "': only version 1 exists"));
  }
  return absl::OkStatus();
}

void FillModelMetadata(const std::string& model,
                       inference::ModelMetadataResponse* out) {
  out->set_name(model);
  out->add_versions("1");
  out->set_platform("scatterbrain");
  for (const char* name : {kQ, kK, kV}) {
    auto* t = out->add_inputs();
    t->set_name(name);
    t->set_datatype("FP32");  // FP16 and BF16 are accepted too
    for (int i = 0; i < 4; ++i) t->add_shape(-1);
  }
  auto* lengths = out->add_inputs();
  lengths->set_name(kKeyLengths);
  lengths->set_datatype("INT32");
  lengths->add_shape(-1);
  auto* o = out->add_outputs();
  o->set_name(kOut);
  o->set_datatype("FP32");
  for (int i = 0; i < 4; ++i) o->add_shape(-1);
}

void FillModelConfig(const std::string& model, inference::ModelConfig* out) {
  out->set_name(model);
  out->set_platform("scatterbrain");
  out->set_backend("scatterbrain");
  // The batch dimension is part of each tensor's shape (the server batches
  // requests itself), as for a Triton model with max_batch_size 0.
  out->set_max_batch_size(0);
  for (const char* name : {kQ, kK, kV}) {
    auto* in = out->add_input();
    in->set_name(name);
    in->set_data_type(inference::TYPE_FP32);
    for (int i = 0; i < 4; ++i) in->add_dims(-1);
  }
  auto* lengths = out->add_input();
  lengths->set_name(kKeyLengths);
  lengths->set_data_type(inference::TYPE_INT32);
  lengths->add_dims(-1);
  lengths->set_optional(true);
  auto* o = out->add_output();
  o->set_name(kOut);
  o->set_data_type(inference::TYPE_FP32);
  for (int i = 0; i < 4; ++i) o->add_dims(-1);
}

absl::Status ApplyParameters(const Params& params, v1::RequestHeader* header) {
  for (const auto& [name, value] : params) {
    if (name == "priority" || name == "timeout") continue;
    if (name == "output_dtype") {
      DType d;
      if (value.parameter_choice_case() !=
              inference::InferParameter::kStringParam ||
          !FromKServeName(value.string_param(), &d)) {
        return Invalid(
            ParamName(name),
            absl::StrCat("must be FP32, FP16 or BF16, got ", Describe(value)));
      }
      header->set_output_dtype(wire::DTypeToProto(d));
      continue;
    }
    const FieldDescriptor* f =
        v1::MethodSettings::descriptor()->FindFieldByName(name);
    if (f == nullptr || name == "method") {
      return Invalid(ParamName(name),
                     absl::StrCat("unknown (the model names the method); "
                                  "accepted: ",
                                  SettingNames()));
    }
    if (absl::Status st = SetSetting(f, value, header->mutable_settings());
        !st.ok()) {
      return st;
    }
  }
  return absl::OkStatus();
}

absl::Status ParseInferRequest(const inference::ModelInferRequest& request,
                               const SystemShmRegistry& shm,
                               const std::string& owner, InferInputs* out) {
  if (absl::Status st =
          CheckModel(request.model_name(), request.model_version());
      !st.ok()) {
    return st;
  }
  out->model = request.model_name();
  out->id = request.id();
  v1::RequestHeader& h = out->header;
  h.set_request_id(request.id());
  v1::Method method;
  MethodOfModel(request.model_name(), &method);
  h.mutable_settings()->set_method(method);
  h.set_output_dtype(v1::DTYPE_FLOAT32);
  if (absl::Status st = ApplyParameters(request.parameters(), &h); !st.ok()) {
    return st;
  }

  const inference::ModelInferRequest::InferInputTensor* tensors[4] = {};
  absl::string_view* views[4] = {&out->q, &out->k, &out->v, nullptr};
  const char* names[4] = {kQ, kK, kV, kKeyLengths};
  absl::string_view lengths_bytes;
  int raw_used = 0;
  for (const auto& in : request.inputs()) {
    int slot = -1;
    for (int i = 0; i < 4; ++i) {
      if (in.name() == names[i]) slot = i;
    }
    const std::string what = absl::StrCat("input '", in.name(), "'");
    if (slot < 0) {
      return Invalid(what, absl::StrCat("unknown; model '", out->model,
                                        "' takes Q, K, V and optionally "
                                        "KEY_LENGTHS"));
    }
    if (tensors[slot] != nullptr) return Invalid(what, "given twice");
    tensors[slot] = &in;
    absl::string_view* bytes = slot < 3 ? views[slot] : &lengths_bytes;
    absl::StatusOr<std::optional<ShmSpan>> span =
        SharedMemoryOf(in.parameters(), shm, owner, what);
    if (!span.ok()) return span.status();
    if (span->has_value()) {
      *bytes = absl::string_view((*span)->data, (*span)->size);
      if (slot < 3) out->in_shm[slot] = (*span)->keep_alive;
      out->held.push_back(**std::move(span));
    } else if (in.has_contents()) {
      const auto& c = in.contents();
      if (slot < 3 && in.datatype() == "FP32") {
        *bytes = absl::string_view(
            reinterpret_cast<const char*>(c.fp32_contents().data()),
            sizeof(float) * c.fp32_contents().size());
      } else if (slot == 3 && in.datatype() == "INT32") {
        *bytes = absl::string_view(
            reinterpret_cast<const char*>(c.int_contents().data()),
            sizeof(int32_t) * c.int_contents().size());
      } else {
        return Invalid(what, absl::StrCat("typed contents carry FP32 (Q, K, "
                                          "V) or INT32 (KEY_LENGTHS) only; ",
                                          in.datatype(),
                                          " travels in raw_input_contents"));
      }
    } else {
      if (raw_used >= request.raw_input_contents_size()) {
        return Invalid(what,
                       "no data: neither contents, shared memory nor a "
                       "raw_input_contents entry");
      }
      *bytes = request.raw_input_contents(raw_used++);
    }
  }
  if (raw_used != request.raw_input_contents_size()) {
    return Invalid(
        "raw_input_contents",
        absl::StrCat(request.raw_input_contents_size(), " entries for ",
                     raw_used, " inputs without contents or shared memory"));
  }
  for (int i = 0; i < 3; ++i) {
    if (tensors[i] == nullptr) {
      return Invalid(absl::StrCat("input '", names[i], "'"), "missing");
    }
  }
  // Datatypes: Q's, K's and V's alike, one of the wire dtypes.
  DType dtype;
  if (!FromKServeName(tensors[0]->datatype(), &dtype)) {
    return Invalid("input 'Q'", absl::StrCat("datatype must be FP32, FP16 or "
                                             "BF16, got '",
                                             tensors[0]->datatype(), "'"));
  }
  for (int i = 1; i < 3; ++i) {
    if (tensors[i]->datatype() != tensors[0]->datatype()) {
      return Invalid(
          absl::StrCat("input '", names[i], "'"),
          absl::StrCat("datatype ", tensors[i]->datatype(),
                       " differs from Q's ", tensors[0]->datatype()));
    }
  }
  h.set_dtype(wire::DTypeToProto(dtype));
  // Shapes: [batch, heads, seq, dim] each, K and V agreeing with Q.
  int64_t dims[3][4];
  for (int i = 0; i < 3; ++i) {
    const auto& shape = tensors[i]->shape();
    const std::string what = absl::StrCat("input '", names[i], "'");
    if (shape.size() != 4) {
      return Invalid(what, absl::StrCat("shape ", ShapeText(shape),
                                        " must be [batch, heads, seq, dim]"));
    }
    for (int j = 0; j < 4; ++j) {
      if (shape[j] < 0 || shape[j] > std::numeric_limits<uint32_t>::max()) {
        return Invalid(what, absl::StrCat("shape ", ShapeText(shape),
                                          ": dimensions must be in [0, 2^32)"));
      }
      dims[i][j] = shape[j];
    }
  }
  const auto& q = dims[0];
  const auto& k = dims[1];
  const auto& v = dims[2];
  if (k[0] != q[0] || k[1] != q[1] || k[3] != q[3]) {
    return Invalid(
        "input 'K'",
        absl::StrCat("shape ", ShapeText(tensors[1]->shape()),
                     " must match Q's ", ShapeText(tensors[0]->shape()),
                     " in batch, heads and dim"));
  }
  if (v[0] != k[0] || v[1] != k[1] || v[2] != k[2]) {
    return Invalid(
        "input 'V'",
        absl::StrCat("shape ", ShapeText(tensors[2]->shape()),
                     " must match K's ", ShapeText(tensors[1]->shape()),
                     " in batch, heads and seq"));
  }
  v1::Shape* s = h.mutable_shape();
  s->set_batch(static_cast<uint32_t>(q[0]));
  s->set_heads(static_cast<uint32_t>(q[1]));
  s->set_seq_q(static_cast<uint32_t>(q[2]));
  s->set_seq_k(static_cast<uint32_t>(k[2]));
  s->set_dim(static_cast<uint32_t>(q[3]));
  s->set_dim_v(static_cast<uint32_t>(v[3]));
  if (const auto* kl = tensors[3]; kl != nullptr) {
    if (kl->datatype() != "INT32") {
      return Invalid(
          "input 'KEY_LENGTHS'",
          absl::StrCat("datatype must be INT32, got '", kl->datatype(), "'"));
    }
    if (kl->shape().size() != 1 || kl->shape(0) != q[0]) {
      return Invalid("input 'KEY_LENGTHS'",
                     absl::StrCat("shape ", ShapeText(kl->shape()),
                                  " must be [batch] = [", q[0], "]"));
    }
    if (lengths_bytes.size() != sizeof(int32_t) * q[0]) {
      return Invalid("input 'KEY_LENGTHS'",
                     absl::StrCat(lengths_bytes.size(), " bytes, expected ",
                                  sizeof(int32_t) * q[0]));
    }
    for (int64_t b = 0; b < q[0]; ++b) {
      int32_t n;
      std::memcpy(&n, lengths_bytes.data() + sizeof(int32_t) * b, sizeof(n));
      h.add_key_lengths(n);
    }
  }
  for (const auto& o : request.outputs()) {
    const std::string what = absl::StrCat("output '", o.name(), "'");
    if (o.name() != kOut) {
      return Invalid(what, absl::StrCat("unknown; model '", out->model,
                                        "' has the output OUT"));
    }
    absl::StatusOr<std::optional<ShmSpan>> span =
        SharedMemoryOf(o.parameters(), shm, owner, what);
    if (!span.ok()) return span.status();
    out->out_shm = *std::move(span);
    out->out_params = o.parameters();
  }
  return absl::OkStatus();
}

absl::Status WithKServeNames(const absl::Status& st) {
  const absl::string_view msg = st.message();
  const size_t colon = msg.find(": ");
  if (colon == absl::string_view::npos || !absl::StartsWith(msg, "header")) {
    return st;
  }
  const absl::string_view path = msg.substr(0, colon);
  const absl::string_view rest = msg.substr(colon + 2);
  std::string what;
  if (absl::StartsWith(path, "header.settings.")) {
    what = ParamName(path.substr(sizeof("header.settings.") - 1));
  } else if (absl::StartsWith(path, "header.shape.")) {
    const absl::string_view field = path.substr(sizeof("header.shape.") - 1);
    const char* input = field == "seq_k" ? kK : field == "dim_v" ? kV : kQ;
    what = absl::StrCat("input '", input, "' shape (", field, ")");
  } else if (absl::StartsWith(path, "header.key_lengths")) {
    what = absl::StrCat("input 'KEY_LENGTHS'",
                        path.substr(sizeof("header.key_lengths") - 1));
  } else if (path == "header.request_id") {
    what = "id";
  } else if (path == "header.output_dtype") {
    what = ParamName("output_dtype");
  } else if (path == "header.shape") {
    what = "input shapes";
  } else {
    what = std::string(path.substr(path.find('.') + 1));
  }
  return absl::Status(st.code(), absl::StrCat(what, ": ", rest));
}

absl::Status CheckOutputRoom(const InferInputs& in, const RequestSpec& spec) {
  if (!in.out_shm.has_value()) return absl::OkStatus();
  if (in.out_shm->size < static_cast<uint64_t>(spec.out_bytes)) {
    return Invalid(
        "output 'OUT'",
        absl::StrCat(kRegionBytes, " ", in.out_shm->size,
                     " is less than the output's ", spec.out_bytes, " bytes"));
  }
  return absl::OkStatus();
}

void FillInferResponse(const InferInputs& in, const RequestSpec& spec,
                       JobResult& result, inference::ModelInferResponse* out) {
  out->set_model_name(in.model);
  out->set_model_version("1");
  out->set_id(in.id);
  auto* o = out->add_outputs();
  o->set_name(kOut);
  o->set_datatype(KServeName(spec.output_dtype));
  const AttentionShape shape = spec.shape();
  for (int64_t d : {shape.batch, shape.heads, shape.seq_q, shape.dim_v}) {
    o->add_shape(d);
  }
  char* dst;
  if (in.out_shm.has_value()) {
    *o->mutable_parameters() = in.out_params;
    dst = in.out_shm->data;
    // Computed in place (the job's output was a view of the region).
    if (static_cast<void*>(dst) == result.out.raw()) {
      result.out.Release();
      dst = nullptr;
    }
  } else {
    std::string* raw = out->add_raw_output_contents();
    raw->resize(static_cast<size_t>(spec.out_bytes));
    dst = raw->data();
  }
  if (dst != nullptr) {
    EncodeFromFloat(spec.output_dtype, result.out.data(), spec.out_elements,
                    dst);
  }
  result.out.Release();
  auto& params = *out->mutable_parameters();
  const RequestStats& stats = result.stats;
  params["queue_ns"].set_int64_param(
      static_cast<int64_t>(stats.queue_seconds * 1e9));
  params["compute_ns"].set_int64_param(
      static_cast<int64_t>(stats.compute_seconds * 1e9));
  params["batch_size"].set_int64_param(stats.batch_size);
  if (stats.estimated_relative_error.has_value()) {
    params["estimated_relative_error"].set_double_param(
        *stats.estimated_relative_error);
  }
}

}  // namespace kserve
}  // namespace server
}  // namespace scatterbrain
