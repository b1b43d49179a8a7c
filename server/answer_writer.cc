// scatterbrain/server/answer_writer.cc — see answer_writer.h.
#include "server/answer_writer.h"

#include <algorithm>

#include "server/proto_convert.h"

namespace scatterbrain {
namespace server {

std::unique_ptr<Answer> ErrorAnswer(const std::string& request_id,
                                    const absl::Status& error,
                                    const std::string& method, bool accepted,
                                    int64_t start_us) {
  auto a = std::make_unique<Answer>();
  a->request_id = request_id;
  a->method = method;
  a->accepted = accepted;
  a->start_us = start_us;
  a->error = error;
  return a;
}

bool NextMessage(Answer& a, int64_t chunk_bytes, v1::AttendResponse* msg) {
  msg->Clear();
  msg->set_request_id(a.request_id);
  if (!a.error.ok()) {
    v1::RequestError* e = msg->mutable_error();
    e->set_code(static_cast<int>(a.error.code()));
    e->set_message(std::string(a.error.message()));
    msg->set_last(true);
    return true;
  }
  const RequestSpec& spec = a.job->spec;
  if (a.sent_bytes < 0) {
    FillResponseHeader(spec, a.result.stats, msg->mutable_header());
    a.sent_bytes = 0;
    msg->set_last(false);
    return false;
  }
  const int elem = DTypeBytes(spec.output_dtype);
  const int64_t chunk_elems = std::max<int64_t>(chunk_bytes / elem, 1);
  const int64_t first = a.sent_bytes / elem;
  const int64_t n = std::min(chunk_elems, spec.out_elements - first);
  v1::TensorChunk* c = msg->mutable_chunk();
  c->set_request_id(a.request_id);
  c->set_tensor(v1::TENSOR_NAME_OUTPUT);
  c->set_offset(static_cast<uint64_t>(a.sent_bytes));
  std::string* data = c->mutable_data();
  data->resize(static_cast<size_t>(n * elem));
  // The output's one copy: float32 straight into the message's bytes.
  EncodeFromFloat(spec.output_dtype, a.result.out.data() + first, n,
                  data->data());
  a.sent_bytes += n * elem;
  const bool last = first + n == spec.out_elements;
  if (last) a.result.out.Release();
  msg->set_last(last);
  return last;
}

void FillUnaryResponse(const RequestSpec& spec, JobResult& result,
                       v1::AttendUnaryResponse* response) {
  FillResponseHeader(spec, result.stats, response->mutable_header());
  std::string* out = response->mutable_output();
  out->resize(static_cast<size_t>(spec.out_bytes));
  EncodeFromFloat(spec.output_dtype, result.out.data(), spec.out_elements,
                  out->data());
  result.out.Release();
}

}  // namespace server
}  // namespace scatterbrain
