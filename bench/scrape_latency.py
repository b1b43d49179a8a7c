#!/usr/bin/env python3
"""bench/scrape_latency.py — how long a /metrics scrape takes while other
clients hold idle or slow (slow-loris) connections to the metrics port.

Starts the server binary (--server_bin) on free loopback ports with the CPU
backend, then for each --idle count: opens that many TCP connections that
send nothing (plus --slow clients sending one byte of a request every
100 ms), scrapes /metrics once on a fresh connection, and closes them all;
--trials times each. Prints one line per count (median and max seconds, or
"timeout" past --timeout_s, Prometheus's default scrape timeout being 10 s)
and, with --json, writes the figures there.

  python3 bench/scrape_latency.py --server_bin=build/bin/scatterbrain_server \\
      --idle=0,1,4,64 --slow=0
"""

import argparse
import json
import socket
import statistics
import subprocess
import sys
import threading
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port, timeout_s):
    """Seconds for one GET /metrics on a new connection; None on timeout."""
    start = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port),
                                      timeout=timeout_s) as s:
            s.settimeout(max(0.01, timeout_s - (time.monotonic() - start)))
            s.sendall(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except (socket.timeout, OSError):
        return None
    if b" 200 " not in data.split(b"\r\n", 1)[0]:
        return None
    return time.monotonic() - start


def slow_loris(port, stop):
    """Sends a request one byte every 100 ms, forever (until `stop`)."""
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=1)
    except OSError:
        return
    req = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 10000
    i = 0
    while not stop.is_set():
        try:
            s.send(req[i % len(req):i % len(req) + 1])
        except OSError:
            # Closed by the server: reconnect and go on being slow.
            s.close()
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=1)
            except OSError:
                return
        i += 1
        stop.wait(0.1)
    s.close()


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server_bin", default="build/bin/scatterbrain_server")
    ap.add_argument("--idle", default="0,1,4,64")
    ap.add_argument("--slow", type=int, default=0)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--timeout_s", type=float, default=10.0)
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)

    port, mport = free_port(), free_port()
    server = subprocess.Popen(
        [args.server_bin, f"--port={port}", f"--metrics_port={mport}",
         "--backend=cpu", "--host=127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = {}
    try:
        deadline = time.monotonic() + 30
        while scrape(mport, 1.0) is None:
            if time.monotonic() > deadline or server.poll() is not None:
                sys.exit("server did not serve /metrics")
            time.sleep(0.1)
        stop = threading.Event()
        slow = [threading.Thread(target=slow_loris, args=(mport, stop))
                for _ in range(args.slow)]
        for t in slow:
            t.start()
        time.sleep(0.3)
        for n in (int(x) for x in args.idle.split(",")):
            times = []
            for _ in range(args.trials):
                idle = [socket.create_connection(("127.0.0.1", mport))
                        for _ in range(n)]
                time.sleep(0.05)  # accepted (or queued) before the scrape
                times.append(scrape(mport, args.timeout_s))
                for s in idle:
                    s.close()
                time.sleep(0.2)
            ok = [t for t in times if t is not None]
            results[n] = times
            line = f"idle={n:3d} slow={args.slow}: "
            if ok:
                line += (f"median {statistics.median(ok) * 1000:8.1f} ms, "
                         f"max {max(ok) * 1000:8.1f} ms")
            if len(ok) < len(times):
                line += f"  {len(times) - len(ok)}/{len(times)} timed out"
            print(line, flush=True)
        stop.set()
        for t in slow:
            t.join()
    finally:
        server.terminate()
        server.wait(timeout=30)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"slow": args.slow, "seconds": results}, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])
