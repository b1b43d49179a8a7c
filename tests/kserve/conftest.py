"""Servers for the KServe v2 tests: the real scatterbrain_server process,
started by the Python client tests' ServerProcess (one definition; loaded
from client/python/tests/conftest.py under another module name so that
pytest's own conftest of this folder does not collide with it)."""

import importlib.util
import pathlib
import time

import pytest
import tritonclient.grpc as grpcclient

REPO = pathlib.Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "sb_client_conftest", REPO / "client" / "python" / "tests" / "conftest.py")
_client_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_client_conftest)
ServerProcess = _client_conftest.ServerProcess
server_bin = _client_conftest._server_bin


def start(extra_args=(), **client_kwargs):
    """A server, SERVING (bounded wait, see ServerProcess.wait_serving)."""
    s = ServerProcess(server_bin(), extra_args)
    try:
        s.wait_serving(**client_kwargs)
    except Exception:
        s.stop()
        raise
    return s


@pytest.fixture(scope="module")
def server():
    s = start()
    yield s
    s.stop()


@pytest.fixture
def client(server):
    c = grpcclient.InferenceServerClient(server.target)
    yield c
    c.close()
