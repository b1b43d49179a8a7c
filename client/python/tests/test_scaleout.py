"""Scale-out of the Python client: three servers behind one Client
("host:port,host:port,host:port", round robin); one is SIGKILLed while an
attend_many stream is on it, and every request still gets exactly one
answer, equal to the one it got while all servers were up."""

import re
import time
import urllib.request

import numpy as np
import pytest

import scatterbrain_client as sb
from conftest import ServerProcess, _server_bin

SETTINGS = dict(num_features=16, bucket_size=8)


def ok_requests(metrics_port: int) -> float:
    text = urllib.request.urlopen(
        f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    return sum(float(m.group(1)) for m in re.finditer(
        r'^scatterbrain_requests_total\{[^}]*code="OK"[^}]*\} (\S+)$', text,
        re.M))


@pytest.fixture()
def servers():
    binary = _server_bin()
    if not binary.is_file():
        pytest.skip(f"no server binary at {binary} (set SB_SERVER_BIN)")
    procs = [ServerProcess(binary, ["--backend=cpu"]) for _ in range(3)]
    try:
        for p in procs:
            p.wait_serving()
        yield procs
    finally:
        for p in procs:
            if p.proc.poll() is None:
                p.proc.kill()
            p.stop()


def requests(n):
    out = []
    for i in range(n):
        rng = np.random.default_rng(100 + i)
        q, k, v = (rng.standard_normal((1, 2, 64, 16)).astype(np.float32)
                   for _ in range(3))
        out.append(sb.Request.of(q, k, v, "scatterbrain", seed=i,
                                 request_id=f"q{i}", **SETTINGS))
    return out


def test_multi_endpoint_survives_a_killed_server(servers):
    target = ",".join(s.target for s in servers)
    reqs = requests(40)
    with sb.Client(target, timeout=20) as c:
        # All up: blocking calls spread over the three servers.
        expected = {}
        for r in reqs:
            expected[r.request_id] = c.attend(r.q, r.k, r.v, r.method,
                                              **r.settings)
        assert all(ok_requests(s.metrics_port) > 0 for s in servers)

        # One stream: kill the server it runs on after its first answer.
        time.sleep(0.2)  # let the counters of the last answers move
        before = [ok_requests(s.metrics_port) for s in servers]
        answers = {}
        killed = None
        for res in c.attend_many(reqs, max_in_flight=4):
            assert res.request_id not in answers, "answered twice"
            answers[res.request_id] = res
            if killed is None:
                # The counter moves just after the answer: poll (bounded).
                for _ in range(500):
                    after = [ok_requests(s.metrics_port) for s in servers]
                    moved = [i for i in range(3) if after[i] > before[i]]
                    if moved:
                        break
                    time.sleep(0.01)
                killed = moved[0]
                servers[killed].proc.kill()
                servers[killed].proc.wait()
        assert sorted(answers) == sorted(expected)
        for rid, res in answers.items():
            assert res.ok, res.error
            np.testing.assert_array_equal(res.output, expected[rid])

        # Blocking calls keep working on the two left.
        for r in reqs[:6]:
            for unary in (False, True):
                out = c.attend(r.q, r.k, r.v, r.method, unary=unary,
                               **r.settings)
                np.testing.assert_array_equal(out, expected[r.request_id])
