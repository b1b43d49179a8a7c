"""Soak and abuse test (issue 9): the real scatterbrain_server on loopback,
well-formed load while misbehaving clients do their worst, then the server
must be as it was.

For SB_SOAK_SECONDS (default 30) three client processes run at once
(soak_roles.py): the well-formed load (4 threads, every method and wire
dtype, streamed, unary and several per stream; every answer checked,
soak_load.py), the abusers (soak_abuse.py: half uploads, never-reading
streams, 160 idle TCP connections, oversized messages, garbage bytes,
unknown methods, clients cancelling at every stage, junk at /metrics) and
a scraper of /metrics every 100 ms. Then:

  * every well-formed request got its right answer, with no retry and no
    failure at all (the 1 GiB memory budget holds the abusers'
    reservations, at most ~480 MiB seen, with room to spare);
  * every abuser got the answer it must (DEADLINE_EXCEEDED at the upload
    timeout, CANCELLED at the send timeout, RESOURCE_EXHAUSTED for an
    oversized message, ...); protocol_errors_total counts each timeout
    kind, and exactly what was sent of the kinds a client controls;
  * every scrape succeeded, the slowest within SCRAPE_MAX_S (1 s: ten times
    the ~100 ms target, so a loaded 2-core CI machine does not flake;
    p50/p99/max are printed);
  * within RECOVER_S (15 s) of the abusers closing their connections:
    resident memory within RSS_SLACK_MB of the baseline, open fds within
    FD_SLACK, threads within THREAD_SLACK, nothing reserved or in flight;
  * the server is healthy, answers the whole catalog right, and exits 0 on
    SIGTERM.

The baseline is taken after a warm-up (the catalog once, then 4 threads
at once), so the thread pools, jemalloc's background threads and the
allocator's steady arenas are in it.

Run by hand: SB_SERVER_BIN=build/bin/scatterbrain_server python3 -m pytest
-s tests/soak (-s prints the summary; SB_SOAK_SECONDS=600 for a long soak).
"""

from __future__ import annotations

import collections
import importlib.util
import json
import os
import pathlib
import re
import select
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(REPO / "client" / "python"))
sys.path.insert(0, str(HERE))

import scatterbrain_client as sb  # noqa: E402

import soak_load  # noqa: E402

# The Python client tests' server launcher, reused (a conftest is not
# importable by name from here).
_spec = importlib.util.spec_from_file_location(
    "sb_client_tests_conftest", REPO / "client/python/tests/conftest.py")
_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_conftest)

# At least 20 s: a never-reading client holds its stream 10 s before it
# looks, and every kind of abuse must have had its answer.
SECONDS = max(20.0, float(os.environ.get("SB_SOAK_SECONDS", "30")))
MAX_MESSAGE_BYTES = 4 << 20
MAX_MEMORY_BYTES = 1 << 30
SERVER_FLAGS = [
    "--host=127.0.0.1",
    f"--max_memory_bytes={MAX_MEMORY_BYTES}",
    f"--max_message_bytes={MAX_MESSAGE_BYTES}",
    "--upload_timeout_s=2",
    "--stream_idle_timeout_s=4",
    "--send_timeout_s=2",
    "--handshake_timeout_s=1",
]
# Bounds, generous for a loaded 2-core machine (see the docstring).
SCRAPE_MAX_S = 1.0
RECOVER_S = 15.0
# Above the baseline after recovery. Measured on a 2-core machine: baseline
# ~27 MB, peak 270-330 MB (outputs held for never-reading clients, uploads,
# oversized messages in gRPC's buffers), after 33-52 MB (jemalloc keeps
# dirty pages for its 1 s decay and some arena metadata). 150 MB is three
# times that margin, yet below what leaking the abusers' buffers would hold
# (never-reading outputs alone: 48 MiB per stream, 12 streams a run).
RSS_SLACK_MB = 150
FD_SLACK = 8      # a connection or two still closing, an accept in flight
# gRPC's timer manager starts a thread or two more under load and keeps
# them a while (measured: +2 grpc_global_timer, also after 120 s). A thread
# per connection or stream kept would be thousands here.
THREAD_SLACK = 6


def thread_names(pid: int) -> dict:
    """{thread name: count} of process `pid` (what a thread leak is)."""
    names = collections.Counter()
    for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
        try:
            names[(task / "comm").read_text().strip()] += 1
        except OSError:
            pass  # ended meanwhile
    return dict(names)


def proc_stats(pid: int) -> dict:
    """Resident MB, open fds and threads of process `pid`."""
    status = pathlib.Path(f"/proc/{pid}/status").read_text()
    rss_kb = int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1))
    threads = int(re.search(r"^Threads:\s+(\d+)", status, re.M).group(1))
    return dict(rss_mb=rss_kb / 1024, fds=len(os.listdir(f"/proc/{pid}/fd")),
                threads=threads)


class Monitor:
    """Samples proc_stats every 100 ms; keeps the peaks."""

    def __init__(self, pid: int):
        self.pid = pid
        self.peak = proc_stats(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.1):
            try:
                s = proc_stats(self.pid)
            except (OSError, AttributeError):
                return  # the server is gone; the test says so elsewhere
            self.peak = {k: max(v, s[k]) for k, v in self.peak.items()}

    def stop(self):
        self._stop.set()
        self._thread.join()


def metrics_text(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as r:
        return r.read().decode()


def metric_values(text: str, name: str) -> dict:
    """{labels string: value} of one metric family's samples."""
    out = {}
    for labels, value in re.findall(
            rf"^{name}(?:\{{(.*?)\}})? (\S+)$", text, flags=re.M):
        out[labels] = float(value)
    return out


def start_role(role: str, config: dict, workdir: pathlib.Path):
    out = workdir / f"{role}.json"
    log = open(workdir / f"{role}.log", "w")
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "soak_roles.py"), role, json.dumps(config),
         str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        if role == "load" else log, stderr=log, text=True)
    return proc, out, log


def wait_ready(proc, out: pathlib.Path, log) -> None:
    """Until the load role has its expected answers (READY), 300 s at most:
    it computes them on a server that may share its cores with CI."""
    ready, _, _ = select.select([proc.stdout], [], [], 300)
    line = proc.stdout.readline().strip() if ready else ""
    if line != "READY":
        proc.kill()
        proc.wait()
        log.close()
        pytest.fail(f"load role not ready ({line!r}):\n"
                    f"{pathlib.Path(log.name).read_text()[-3000:]}")


def finish_role(proc, out: pathlib.Path, log, timeout: float) -> dict:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()
    text = pathlib.Path(log.name).read_text()[-3000:]
    assert proc.returncode == 0 and out.is_file(), (
        f"{out.stem} role exited {proc.returncode}:\n{text}")
    return json.loads(out.read_text())


def percentile(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(p / 100 * len(v)))] if v else float("nan")


def wait_recovered(pid: int, baseline: dict, metrics: str):
    """Polls until the server is back near its baseline (or RECOVER_S);
    (seconds taken or None, last stats, last gauges)."""
    started = time.monotonic()
    while True:
        s = proc_stats(pid)
        text = metrics_text(metrics)
        gauges = {n: sum(metric_values(text, n).values()) for n in (
            "scatterbrain_memory_reserved_bytes",
            "scatterbrain_inflight_requests")}
        took = time.monotonic() - started
        if (s["rss_mb"] <= baseline["rss_mb"] + RSS_SLACK_MB
                and s["fds"] <= baseline["fds"] + FD_SLACK
                and s["threads"] <= baseline["threads"] + THREAD_SLACK
                and not any(gauges.values())):
            return took, s, gauges
        if took > RECOVER_S:
            return None, s, gauges
        time.sleep(0.25)


def warm_up(target: str, cases) -> None:
    with sb.Client(target) as client:
        soak_load.record_first_answers(client, cases, 120)
        assert soak_load.verify_all(client, cases, 120) == []
    result = soak_load.run_load(target, cases, threads=4, seconds=3,
                                timeout=120)
    assert result["failures"] == [], result


def test_soak(tmp_path):
    binary = _conftest._server_bin()
    if not binary.is_file():
        pytest.skip(f"no server binary at {binary} (set SB_SERVER_BIN)")
    server = _conftest.ServerProcess(binary, SERVER_FLAGS)
    metrics = f"127.0.0.1:{server.metrics_port}"
    try:
        server.wait_serving()
        _soak(server, metrics, tmp_path)
    except BaseException:
        print(f"server log (tail):\n{server.log()}")
        raise
    finally:
        rc = server.stop(timeout=60)
    assert rc == 0, f"server exited {rc} on SIGTERM"


def _soak(server, metrics: str, workdir: pathlib.Path) -> None:
    pid = server.proc.pid
    cases = soak_load.make_cases()
    warm_up(server.target, cases)
    time.sleep(2)  # past jemalloc's 1 s decay: a settled baseline
    baseline = proc_stats(pid)
    baseline_threads = thread_names(pid)
    monitor = Monitor(pid)

    load = start_role("load", dict(target=server.target, threads=4,
                                   seconds=SECONDS, timeout_s=120), workdir)
    wait_ready(*load)
    abuse = start_role("abuse", dict(target=server.target, metrics=metrics,
                                     seconds=SECONDS,
                                     max_message_bytes=MAX_MESSAGE_BYTES),
                       workdir)
    scrape = start_role("scrape", dict(metrics=metrics, seconds=SECONDS,
                                       interval_s=0.1), workdir)
    load[0].stdin.write("GO\n")
    load[0].stdin.flush()
    # Each role stops on its own after SECONDS; the margin covers a slow
    # machine finishing its last calls (at most 120 s each).
    results = {name: finish_role(*role, timeout=SECONDS + 240)
               for name, role in (("scrape", scrape), ("abuse", abuse),
                                  ("load", load))}
    # The abusers' sockets are closed now: the server must let go.
    recovered_s, after, gauges = wait_recovered(pid, baseline, metrics)
    monitor.stop()
    now_threads = thread_names(pid)
    added = {n: c - baseline_threads.get(n, 0) for n, c in now_threads.items()
             if c != baseline_threads.get(n, 0)}

    with sb.Client(server.target) as client:
        healthy = client.health(timeout=10)
        final_failures = soak_load.verify_all(client, cases, 120)
    text = metrics_text(metrics)
    kinds = {re.search(r'kind="(\w+)"', k).group(1): v for k, v in
             metric_values(text, "scatterbrain_protocol_errors_total").items()}
    served_ok = sum(v for k, v in metric_values(
        text, "scatterbrain_requests_total").items() if 'code="OK"' in k)

    load_r, abuse_r, scrape_r = results["load"], results["abuse"], \
        results["scrape"]
    lat = scrape_r["latencies_s"]
    print(summary(load_r, abuse_r, scrape_r, baseline, monitor.peak, after,
                  recovered_s, kinds, added))

    assert load_r["requests_failed"] == 0, (
        f"{load_r['requests_failed']} well-formed requests failed:\n"
        + "\n".join(load_r["failures"]))
    assert min(load_r["by_case"].values()) > 0, load_r["by_case"]
    assert served_ok >= load_r["requests_ok"]
    assert not abuse_r["errors"], "abusers broke:\n" + "\n".join(
        abuse_r["errors"])
    assert not abuse_r["unexpected"], "unexpected answers:\n" + "\n".join(
        abuse_r["unexpected"])
    counts = abuse_r["counts"]
    for key in ("half_upload_request:DEADLINE_EXCEEDED",
                "half_upload_stream:UNAVAILABLE", "half_uploads_cancelled",
                "never_reading_stream:CANCELLED",
                "idle_grpc_tcp_closed_by_server",
                "preface_only_tcp_closed_by_server",
                "idle_metrics_tcp_closed_by_server",
                "oversized_unary:RESOURCE_EXHAUSTED",
                "oversized_chunk:RESOURCE_EXHAUSTED",
                "garbage_tcp_closed_by_server",
                "http_garbage_bytes_closed_by_server",
                "http_unknown_path_closed_by_server",
                "http_long_head_closed_by_server",
                "garbage_unary:INVALID_ARGUMENT",
                "garbage_stream:INVALID_ARGUMENT",
                "empty_and_unknown_id_stream:OK",
                "unknown_method:UNIMPLEMENTED", "cancel_after_send",
                "cancel_after_first_answer",
                "cancel_request_answer:CANCELLED",
                "unary_deadline:DEADLINE_EXCEEDED"):
        assert counts.get(key, 0) > 0, f"never seen: {key}"
    for kind in ("upload_timeout", "idle_timeout", "send_timeout"):
        assert kinds.get(kind, 0) > 0, f"protocol_errors_total: no {kind}"
    # Exactly what was sent: nothing else (a cancelled call, an oversized
    # message) may count as one of these.
    sent = {"unparseable_message": counts.get("garbage_unary:INVALID_ARGUMENT",
                                              0)
            + counts.get("garbage_stream:INVALID_ARGUMENT", 0),
            "empty_message": counts.get("empty_and_unknown_id_stream:OK", 0),
            "unknown_request_id": counts.get("empty_and_unknown_id_stream:OK",
                                             0),
            "unknown_method": counts.get("unknown_method:UNIMPLEMENTED", 0)}
    for kind, n in sent.items():
        assert kinds.get(kind, 0) == n, (
            f"protocol_errors_total{{kind={kind}}}: {kinds.get(kind)}, "
            f"{n} sent")
    assert scrape_r["failed"] == 0, scrape_r["failures"]
    assert max(lat) < SCRAPE_MAX_S, f"slowest scrape {max(lat):.3f} s"
    assert recovered_s is not None, (
        f"not back to baseline within {RECOVER_S} s: baseline {baseline}, "
        f"after {after}, gauges {gauges}")
    assert healthy == "SERVING"
    assert final_failures == []
    assert server.proc.poll() is None


def summary(load_r, abuse_r, scrape_r, baseline, peak, after, recovered_s,
            kinds, added_threads):
    c, lat = abuse_r["counts"], scrape_r["latencies_s"]
    ms = lambda x: f"{x * 1000:.0f}"  # noqa: E731
    rec = "never" if recovered_s is None else f"{recovered_s:.1f} s"
    rows = [
        ("duration", f"{SECONDS:.0f} s, {os.cpu_count()} cores"),
        ("well-formed requests ok / failed",
         f"{load_r['requests_ok']} / {load_r['requests_failed']}"),
        ("half uploads (cancelled by us)",
         f"{c.get('half_uploads', 0)} ({c.get('half_uploads_cancelled', 0)})"),
        ("never-reading streams (cancelled by server)",
         f"{c.get('never_reading_streams', 0)} "
         f"({c.get('never_reading_stream:CANCELLED', 0)})"),
        ("idle TCP opened / closed by server (grpc, preface, metrics)",
         " ".join(f"{c.get(w + '_opened', 0)}/"
                  f"{c.get(w + '_closed_by_server', 0)}"
                  for w in ("idle_grpc_tcp", "preface_only_tcp",
                            "idle_metrics_tcp"))),
        ("idle gRPC TCP held ms (median / max)",
         f"{c.get('idle_grpc_tcp_held_ms_median', 0)} / "
         f"{c.get('idle_grpc_tcp_held_ms_max', 0)}"),
        ("oversized unary / chunk",
         f"{c.get('oversized_unary:RESOURCE_EXHAUSTED', 0)} / "
         f"{c.get('oversized_chunk:RESOURCE_EXHAUSTED', 0)}"),
        ("garbage tcp / unary / stream / unknown method",
         f"{c.get('garbage_tcp_closed_by_server', 0)} / "
         f"{c.get('garbage_unary:INVALID_ARGUMENT', 0)} / "
         f"{c.get('garbage_stream:INVALID_ARGUMENT', 0)} / "
         f"{c.get('unknown_method:UNIMPLEMENTED', 0)}"),
        ("cancelled: after send / first answer / CancelRequest / deadline",
         f"{c.get('cancel_after_send', 0)} / "
         f"{c.get('cancel_after_first_answer', 0)} / "
         f"{c.get('cancel_request_answer:CANCELLED', 0)} / "
         f"{c.get('unary_deadline:DEADLINE_EXCEEDED', 0)}"),
        ("/metrics garbage / unknown path / long head, closed",
         " / ".join(str(c.get(f"http_{w}_closed_by_server", 0))
                    for w in ("garbage_bytes", "unknown_path", "long_head"))),
        ("RSS MB baseline / peak / after",
         f"{baseline['rss_mb']:.0f} / {peak['rss_mb']:.0f} / "
         f"{after['rss_mb']:.0f} (recovered in {rec})"),
        ("memory reserved, most seen (MiB of the budget)",
         f"{scrape_r['max_reserved_bytes'] / 2**20:.0f} of "
         f"{MAX_MEMORY_BYTES >> 20}"),
        ("fds baseline / peak / after",
         f"{baseline['fds']} / {peak['fds']} / {after['fds']}"),
        ("threads baseline / peak / after",
         f"{baseline['threads']} / {peak['threads']} / {after['threads']}"),
        ("threads not in the baseline (name: count)",
         ", ".join(f"{n}: {c:+d}" for n, c in sorted(added_threads.items()))
         or "none"),
        ("/metrics scrapes, p50 / p99 / max ms",
         f"{len(lat)}, {ms(percentile(lat, 50))} / {ms(percentile(lat, 99))}"
         f" / {ms(max(lat))} (target ~100, bound {ms(SCRAPE_MAX_S)})"),
        ("protocol_errors_total",
         ", ".join(f"{k}={v:.0f}" for k, v in sorted(kinds.items()))),
    ]
    width = max(len(k) for k, _ in rows)
    return "\nsoak summary\n" + "\n".join(
        f"  {k:<{width}}  {v}" for k, v in rows)
