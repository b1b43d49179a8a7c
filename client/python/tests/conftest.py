"""Starts a real scatterbrain_server process for the Python client tests.

The binary is SB_SERVER_BIN (ctest sets it), else build/bin/ of this
checkout. It listens on free loopback ports; the fixture waits (bounded)
until its health check says SERVING and stops it with SIGTERM at the end.
"""

import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "client" / "python"))

import scatterbrain_client as sb  # noqa: E402


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_bin() -> pathlib.Path:
    env = os.environ.get("SB_SERVER_BIN")
    return pathlib.Path(env) if env else REPO / "build" / "bin" / "scatterbrain_server"


class ServerProcess:
    # port / metrics_port: None = a free one (a restart test passes the
    # port of the server it replaces).
    def __init__(self, binary, extra_args=(), port=None, metrics_port=None):
        self.port = port or _free_port()
        self.metrics_port = metrics_port or _free_port()
        self.target = f"127.0.0.1:{self.port}"
        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [str(binary), f"--port={self.port}",
             f"--metrics_port={self.metrics_port}", *extra_args],
            stdout=self._log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-4000:]

    def wait_serving(self, timeout=30.0, **client_kwargs):
        """client_kwargs: the probe's TLS options for a TLS server."""
        deadline = time.monotonic() + timeout
        with sb.Client(self.target, **client_kwargs) as c:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"server exited with {self.proc.returncode}:\n{self.log()}")
                try:
                    if c.health(timeout=1.0) == "SERVING":
                        return
                except Exception:
                    pass
                time.sleep(0.1)
        raise RuntimeError(f"server not SERVING after {timeout} s:\n{self.log()}")

    def stop(self, timeout=20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@pytest.fixture(scope="session")
def server():
    binary = _server_bin()
    if not binary.is_file():
        pytest.skip(f"no server binary at {binary} (set SB_SERVER_BIN)")
    s = ServerProcess(binary)
    try:
        s.wait_serving()
    except Exception:
        s.stop()
        raise
    yield s
    s.stop()


@pytest.fixture()
def client(server):
    with sb.Client(server.target) as c:
        yield c
