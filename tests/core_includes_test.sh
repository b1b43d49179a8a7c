#!/usr/bin/env bash
# tests/core_includes_test.sh — the numerical core and the server below its
# transport (kernels/, common/, server/{executor,batcher,request,
# tensor_assembler,stream_requests,metrics,clock}*) include no protobuf or
# gRPC header, generated or not. The link of executor_test proves the same
# for what is linked; this also catches a header-only include.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
files=$(ls kernels/*.h kernels/*.cc kernels/cpu/* kernels/cuda/* common/* \
  server/executor* server/batcher* server/request* server/tensor_assembler* \
  server/stream_requests* server/metrics* server/clock* server/http_exposer* \
  server/backend_select* server/shm_registry* \
  2>/dev/null)
bad=$(grep -lE '#include ["<](scatterbrain/v1/|grpcpp/|grpc/|google/protobuf/|server/(proto_convert|service|answer_writer|attend_reactor|unary_reactor|server)\.h|proto/convert/)' $files || true)
if [[ -n "${bad}" ]]; then
  echo "transport headers included by the core:"
  grep -nE '#include ["<](scatterbrain/v1/|grpcpp/|grpc/|google/protobuf/|server/(proto_convert|service|answer_writer|attend_reactor|unary_reactor|server)\.h|proto/convert/)' ${bad}
  exit 1
fi
echo "core includes: $(echo "${files}" | wc -w) files checked, none includes protobuf or gRPC"
