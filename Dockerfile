# syntax=docker/dockerfile:1
# scatterbrain-serve container image: the gRPC attention server (and the CLI,
# for the health check and ad-hoc calls).
#
#   docker build -t scatterbrain-serve:0.1.0 .
#   docker run --gpus all --stop-timeout 40 -p 50051:50051 -p 9464:9464 \
#       scatterbrain-serve:0.1.0
#
# Build args: CUDA_VERSION (both stages use the same CUDA release, so the
# toolkit libraries the binaries were linked against are the runtime image's),
# CUDA_ARCHITECTURES (CMake list; 100 adds Blackwell, 120 RTX Blackwell).
# The CPU backend works in the same image without a GPU (--backend=cpu, or
# --backend=auto on a machine without one).
ARG CUDA_VERSION=13.0.2
ARG UBUNTU_VERSION=24.04

# ---------------------------------------------------------------------------
# Build stage: the project's own scripts/build (the one recipe CI and
# developers use) installs the Debian/Ubuntu packages and builds build/bin.
# nvcc is at /usr/local/cuda/bin/nvcc, where CMakeLists.txt looks for it.
# ---------------------------------------------------------------------------
FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu${UBUNTU_VERSION} AS build
ARG CUDA_ARCHITECTURES="80;90"
ENV DEBIAN_FRONTEND=noninteractive
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src

# Packages first (only the script), so a source change keeps this layer.
COPY scripts/build scripts/build
RUN source scripts/build && sb_install_deps

COPY . .
# Tests stay off in the image (CI runs them); every runnable lands in build/bin.
RUN SB_CMAKE_ARGS="-DSB_BUILD_TESTS=OFF -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHITECTURES}" \
      bash scripts/build \
 && bash deploy/docker/collect-runtime-libs.sh /opt/scatterbrain \
      build/bin/scatterbrain_server build/bin/scatterbrain_cli

# ---------------------------------------------------------------------------
# Runtime stage: the CUDA runtime image of the same release (cudart, cuBLAS),
# the two binaries and the shared libraries they load (gRPC, protobuf, Abseil,
# OpenBLAS, prometheus-cpp ...) copied from the build stage by
# deploy/docker/collect-runtime-libs.sh. The GPU driver comes from the host
# through the NVIDIA container toolkit (docker --gpus, Kubernetes device plugin).
# ---------------------------------------------------------------------------
FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu${UBUNTU_VERSION}
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

COPY --from=build /opt/scatterbrain/ /opt/scatterbrain/
# Register the copied libraries and fail the build, not the first start, when
# one is missing (libcuda.so.1 is the host driver's and is absent here).
RUN echo /opt/scatterbrain/lib > /etc/ld.so.conf.d/scatterbrain.conf \
 && ldconfig \
 && missing="$(ldd /opt/scatterbrain/bin/* | grep 'not found' | grep -v -E 'libcuda\.so|libnvidia-' || true)" \
 && if [[ -n "${missing}" ]]; then echo "unresolved libraries: ${missing}" >&2; exit 1; fi \
 && useradd --system --no-log-init --uid 10001 --user-group --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin scatterbrain

ENV PATH=/opt/scatterbrain/bin:${PATH}
USER 10001:10001
WORKDIR /tmp

# 50051: gRPC (scatterbrain.v1, grpc.health.v1, reflection); 9464: /metrics.
EXPOSE 50051 9464

# The server drains on SIGTERM (health NOT_SERVING, in-flight work finishes)
# for up to --drain_timeout_s (30 s): stop with a longer timeout than that
# (docker run --stop-timeout 40 / docker stop -t 40; Kubernetes: the
# Deployment's terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["scatterbrain_cli", "health", "--server=127.0.0.1:50051"]

# Flags after the image name replace CMD (all of it): keep --port=50051 there,
# or the HEALTHCHECK above probes the wrong port.
ENTRYPOINT ["scatterbrain_server"]
CMD ["--port=50051", "--metrics_port=9464", "--backend=auto", "--drain_timeout_s=30"]
