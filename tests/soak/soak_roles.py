"""The soak test's client processes: `python3 soak_roles.py ROLE CONFIG OUT`.

ROLE is load (the well-formed load, soak_load.py), abuse (every
misbehaving client of soak_abuse.py, one thread each) or scrape (GET
/metrics every interval_s, timed). CONFIG is a JSON object of the role's
arguments; the role writes its result as JSON to the file OUT.

Each role is a process of its own so that one's Python threads never hold
up another's clocks: the scraper's latencies are the server's, not this
interpreter's. The load role computes its expected answers first, prints
READY, and starts when a line arrives on its stdin.
"""

from __future__ import annotations

import json
import pathlib
import re
import sys
import threading
import time
import urllib.request
from typing import Any, Dict

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] /
                       "client" / "python"))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import scatterbrain_client as sb  # noqa: E402

import soak_abuse  # noqa: E402
import soak_load  # noqa: E402


def load(cfg: Dict[str, Any]) -> Dict[str, Any]:
    cases = soak_load.make_cases()
    with sb.Client(cfg["target"]) as client:
        soak_load.record_first_answers(client, cases, cfg["timeout_s"])
    print("READY", flush=True)
    sys.stdin.readline()
    return soak_load.run_load(cfg["target"], cases, cfg["threads"],
                              cfg["seconds"], cfg["timeout_s"])


def abuse(cfg: Dict[str, Any]) -> Dict[str, Any]:
    stop = threading.Event()
    tally = soak_abuse.Tally()
    target, metrics = cfg["target"], cfg["metrics"]
    jobs = [
        (soak_abuse.half_uploads, (target, stop, tally)),
        (soak_abuse.never_reading, (target, stop, tally)),
        (soak_abuse.idle_tcp, (target, stop, tally, "idle_grpc_tcp", 100)),
        # Sent the HTTP/2 preface, then nothing (SETTINGS never come).
        (soak_abuse.idle_tcp, (target, stop, tally, "preface_only_tcp", 10,
                               soak_abuse.PREFACE)),
        (soak_abuse.idle_tcp, (metrics, stop, tally, "idle_metrics_tcp", 50)),
        (soak_abuse.oversized, (target, stop, tally,
                                cfg["max_message_bytes"])),
        (soak_abuse.garbage, (target, stop, tally)),
        (soak_abuse.cancelling, (target, stop, tally)),
        (soak_abuse.http_garbage, (metrics, stop, tally)),
    ]
    errors = []

    def guard(fn, args):
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 (an abuser that broke)
            errors.append(f"{fn.__name__}: {type(e).__name__}: {e}")
            stop.set()

    threads = [threading.Thread(target=guard, args=job, daemon=True)
               for job in jobs]
    for t in threads:
        t.start()
    stop.wait(cfg["seconds"])
    stop.set()
    # Every loop checks `stop` at least every 30 s (its longest call).
    for t in threads:
        t.join(timeout=60)
    stuck = [job[0].__name__ for job, t in zip(jobs, threads) if t.is_alive()]
    return dict(counts=dict(tally.counts), unexpected=tally.unexpected,
                errors=errors + [f"{n}: did not stop" for n in stuck])


_RESERVED = re.compile(rb"^scatterbrain_memory_reserved_bytes (\S+)$", re.M)


def scrape(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Also keeps the largest memory reservation seen (the budget's use)."""
    url = f"http://{cfg['metrics']}/metrics"
    latencies, failures, reserved = [], [], 0.0
    stop = time.monotonic() + cfg["seconds"]
    while time.monotonic() < stop:
        started = time.monotonic()
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = r.read()
            m = _RESERVED.search(body)
            if r.status != 200 or m is None:
                failures.append(f"status {r.status}, {len(body)} bytes")
            else:
                reserved = max(reserved, float(m.group(1)))
        except OSError as e:
            failures.append(f"{type(e).__name__}: {e}")
        took = time.monotonic() - started
        latencies.append(took)
        time.sleep(max(0.0, cfg["interval_s"] - took))
    return dict(latencies_s=latencies, failures=failures[:20],
                failed=len(failures), max_reserved_bytes=reserved)


ROLES = {"load": load, "abuse": abuse, "scrape": scrape}

if __name__ == "__main__":
    role, config, out = sys.argv[1:4]
    result = ROLES[role](json.loads(config))
    pathlib.Path(out).write_text(json.dumps(result))
