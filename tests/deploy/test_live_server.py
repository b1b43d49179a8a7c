"""The deployment's assumptions, checked against the real binaries on
loopback: the server accepts the Deployment's flags, the image's HEALTHCHECK
command (scatterbrain_cli health) reports SERVING, /metrics serves the
metric names and types the rules and dashboard use, and SIGTERM drains and
exits 0 well within the grace period. Skipped where the binaries are not
built.
"""

import re
import signal
import socket
import subprocess
import time
import urllib.request

import pytest

from deploy_common import BIN_DIR, K8S, METRICS, container_args, find
import kustomize_lite

SERVER = BIN_DIR / "scatterbrain_server"
CLI = BIN_DIR / "scatterbrain_cli"


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deployment_args(overlay):
    res = kustomize_lite.build(K8S / "overlays" / overlay)
    dep = find(res, "Deployment", "scatterbrain")
    return container_args(dep["spec"]["template"]["spec"]["containers"][0])


def health(port, timeout_s=5):
    return subprocess.run(
        [str(CLI), "health", f"--server=127.0.0.1:{port}", f"--timeout_s={timeout_s}"],
        capture_output=True, text=True, timeout=timeout_s + 30)


@pytest.fixture
def server(tmp_path):
    if not SERVER.exists() or not CLI.exists():
        pytest.skip(f"{SERVER} or {CLI} not built")
    args = deployment_args("cpu")
    args.update(host="127.0.0.1", port=str(free_port()),
                metrics_port=str(free_port()))
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([str(SERVER)] + [f"--{k}={v}" for k, v in args.items()],
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            log.close()
            pytest.fail(f"server exited {proc.returncode} at startup: "
                        f"{(tmp_path / 'server.log').read_text()}")
        if health(args["port"], timeout_s=2).returncode == 0:
            break
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("server not SERVING after 30 s")
        time.sleep(0.2)
    yield proc, args, tmp_path / "server.log"
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=30)
    log.close()


def test_deployment_flags_accepted_and_healthcheck_serving(server):
    proc, args, _ = server
    out = health(args["port"])
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SERVING" in out.stdout
    assert proc.poll() is None


def test_metrics_endpoint_serves_the_known_metrics(server):
    proc, args, log = server
    url = f"http://127.0.0.1:{args['metrics_port']}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200
            text = response.read().decode()
    except OSError as e:
        time.sleep(0.5)
        pytest.fail(f"GET {url} failed ({e}); server exit code {proc.poll()}; "
                    f"log: {log.read_text()}")
    types = dict(re.findall(r"^# TYPE (scatterbrain_\w+) (\w+)$", text, flags=re.MULTILINE))
    expected = {name: kind for name, (kind, _) in METRICS.items()}
    unknown = {n: t for n, t in types.items() if expected.get(n) != t}
    assert not unknown, f"not in deploy_common.METRICS (or another type): {unknown}"
    # Families without labels exist from the start.
    for name, (_, labels) in METRICS.items():
        if not labels:
            assert name in types, name
    assert proc.poll() is None, "server died serving /metrics"


def test_sigterm_drains_and_exits_zero(server):
    proc, args, log = server
    drain = float(args["drain_timeout_s"])
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=drain + 10)
    assert rc == 0, log.read_text()
    # Idle: nothing to drain, so it stops at once, far inside the grace period.
    assert time.monotonic() - started < 10
