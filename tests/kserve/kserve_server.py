"""A real scatterbrain_server for the KServe v2 tests, started through the
Python client tests' ServerProcess (client/python/tests/conftest.py: free
loopback ports, bounded wait for SERVING, SIGTERM at the end), loaded by
path under its own module name so that it never shadows a conftest here.
"""

import importlib.util
import os
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]

_spec = importlib.util.spec_from_file_location(
    "sb_python_client_conftest",
    REPO / "client" / "python" / "tests" / "conftest.py")
_conftest = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _conftest
_spec.loader.exec_module(_conftest)


def start(extra_args=()):
    """A started ServerProcess (stop() it), or pytest.skip without a binary."""
    binary = pathlib.Path(os.environ.get(
        "SB_SERVER_BIN", REPO / "build" / "bin" / "scatterbrain_server"))
    if not binary.is_file():
        pytest.skip(f"no server binary at {binary} (set SB_SERVER_BIN)")
    s = _conftest.ServerProcess(binary, extra_args)
    try:
        s.wait_serving()
    except Exception:
        s.stop()
        raise
    return s
