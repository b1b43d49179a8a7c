# syntax=docker/dockerfile:1
# Build stage: the CUDA devel image has nvcc at /usr/local/cuda/bin/nvcc;
# scripts/build installs the Debian/Ubuntu packages and builds build/bin.
FROM nvidia/cuda:13.0.0-devel-ubuntu24.04 AS build
ENV DEBIAN_FRONTEND=noninteractive
WORKDIR /src
COPY . .
RUN SB_CMAKE_ARGS="-DSB_BUILD_TESTS=OFF" bash scripts/build

# Runtime stage: only the binaries and the shared libraries they load
# (Abseil and OpenBLAS are shared on Ubuntu; cudart/cuBLAS come with the image).
FROM nvidia/cuda:13.0.0-runtime-ubuntu24.04
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libopenblas0-pthread libabsl20220623t64 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/build/bin/ /opt/scatterbrain/bin/
ENV PATH=/opt/scatterbrain/bin:${PATH}
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin scatterbrain
USER scatterbrain
WORKDIR /tmp
ENTRYPOINT ["scatterbrain_cli"]
CMD ["info"]
