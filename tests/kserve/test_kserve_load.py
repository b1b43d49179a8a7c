"""A bounded run of bench/kserve_load.py (the stand-in for perf_analyzer,
which cannot be installed here) against a real server, over the network
and with system shared memory: it completes with zero errors, the server's
ModelStatistics count exactly the requests it timed, and it leaves no
region registered nor shared-memory object behind. Timings are printed,
never asserted: on a loaded 2-core machine they say nothing reliable.
"""

import glob
import importlib.util
import json
import os

import pytest
import tritonclient.grpc as grpcclient

import kserve_server

_spec = importlib.util.spec_from_file_location(
    "kserve_load", kserve_server.REPO / "bench" / "kserve_load.py")
kserve_load = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kserve_load)


@pytest.fixture(scope="module")
def server():
    s = kserve_server.start()
    yield s
    s.stop()


@pytest.mark.parametrize("mode", ["none", "system"])
def test_bounded_load_run(server, mode, tmp_path, capsys):
    out = tmp_path / "load.json"
    rc = kserve_load.main([
        f"--url={server.target}", "--model=local", "--shape=1,2,256,32",
        "--param=window=2", "--concurrency=2", "--duration_s=2",
        f"--shm={mode}", f"--json={out}"])
    print(capsys.readouterr().out)
    r = json.loads(out.read_text())
    assert rc == 0, r["first_error"]
    assert r["errors"] == 0 and r["requests"] > 0
    assert r["shm"] == mode
    # Warm-up requests are outside both the count and the statistics'
    # window; every timed request finished before the second snapshot.
    assert r["server"]["requests"] == r["requests"]
    assert r["server"]["failed"] == 0
    assert r["server"]["compute_infer_ms"] > 0

    c = grpcclient.InferenceServerClient(server.target)
    try:
        assert len(c.get_system_shared_memory_status().regions) == 0
    finally:
        c.close()
    assert not glob.glob(f"/dev/shm/kload_{os.getpid()}_*")


def test_bad_arguments_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        kserve_load.main(["--shape=1,2,3"])
    assert e.value.code == 2
    assert "--shape" in capsys.readouterr().err
