#!/usr/bin/env bash
# deploy/docker/collect-runtime-libs.sh — copy binaries and the shared
# libraries they load into a self-contained prefix, for the Dockerfile's
# runtime stage (which then needs no -dev or runtime packages of its own).
#
#   collect-runtime-libs.sh PREFIX BINARY...
#
# Writes PREFIX/bin/<binary> and PREFIX/lib/<soname> (symlinks resolved).
# Not copied, because the runtime image must bring its own:
#   - glibc and the compiler runtime (libc, libm, ld-linux, libstdc++,
#     libgcc_s ...): same Ubuntu release in both stages;
#   - the CUDA toolkit libraries under /usr/local/cuda (cudart, cuBLAS): the
#     nvidia/cuda runtime image of the same CUDA version has them;
#   - the driver (libcuda, libnvidia-*): injected by the NVIDIA container
#     toolkit at run time; a copy would shadow the host's driver.
# Fails when a binary has an unresolved library other than the driver.
set -euo pipefail

if [[ $# -lt 2 ]]; then
  echo "usage: $0 PREFIX BINARY..." >&2
  exit 2
fi
prefix="$1"
shift
mkdir -p "${prefix}/bin" "${prefix}/lib"

# Basenames (up to ".so") that are never copied.
skip_re='^(ld-linux.*|libc|libm|libdl|libpthread|librt|libresolv|libutil|libanl|libnsl|libnss_.*|libmvec|libstdc\+\+|libgcc_s|libcuda|libnvidia-.*)\.so'

status=0
for bin in "$@"; do
  if [[ ! -x "${bin}" ]]; then
    echo "collect-runtime-libs: ${bin}: not an executable" >&2
    exit 1
  fi
  cp -L "${bin}" "${prefix}/bin/"
  # ldd prints "name => /path (addr)", "name => not found" or "/path (addr)".
  while read -r name arrow path _; do
    if [[ "${arrow}" != "=>" ]]; then
      continue
    fi
    if [[ "${path}" == "not" ]]; then
      if [[ ! "${name}" =~ ${skip_re} ]]; then
        echo "collect-runtime-libs: ${bin}: ${name} not found" >&2
        status=1
      fi
      continue
    fi
    if [[ "$(basename "${path}")" =~ ${skip_re} || "${path}" == /usr/local/cuda* ]]; then
      continue
    fi
    # Keep the name the loader asks for (the soname), not the file's.
    cp -L "${path}" "${prefix}/lib/${name}"
  done < <(ldd "${bin}")
done
exit "${status}"
