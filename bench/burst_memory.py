#!/usr/bin/env python3
"""bench/burst_memory.py — the server's resident memory across bursts of
large requests: does what a burst allocated go back to the OS afterwards?

Starts the server binary (--server_bin, CPU backend, loopback), reads its
resident memory (VmRSS) at rest, then runs --bursts bursts, each
`scatterbrain_cli bench` with --clients concurrent clients sending one
request each of [1, --heads, --seq, 64] float32 q, k, v (8 x 16384 x 64:
32 MiB a tensor, 128 MiB with the output) with method local (cheap to
compute: the run measures buffers, not kernels). It samples VmRSS every
20 ms for the peak and reports it --settle_s after each burst. --env
KEY=VALUE (repeatable) sets the server's environment (MALLOC_CONF=...,
LD_PRELOAD=..., GLIBC_TUNABLES=...).

  python3 bench/burst_memory.py --server_bin=build/bin/scatterbrain_server \\
      --cli_bin=build/bin/scatterbrain_cli
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_bytes(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return -1


def mb(n):
    return f"{n / 1e6:8.1f} MB"


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server_bin", default="build/bin/scatterbrain_server")
    ap.add_argument("--cli_bin", default="build/bin/scatterbrain_cli")
    ap.add_argument("--bursts", type=int, default=3)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--seq", type=int, default=16384)
    ap.add_argument("--settle_s", type=float, default=2.0)
    ap.add_argument("--env", action="append", default=[])
    ap.add_argument("--server_args", default="")
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)

    env = dict(os.environ)
    for kv in args.env:
        k, _, v = kv.partition("=")
        env[k] = v
    port = free_port()
    server = subprocess.Popen(
        [args.server_bin, f"--port={port}", "--metrics_port=0",
         "--backend=cpu", "--host=127.0.0.1", *args.server_args.split()],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    target = f"127.0.0.1:{port}"
    report = {"env": args.env, "bursts": []}
    try:
        deadline = time.monotonic() + 60
        while subprocess.run([args.cli_bin, "health", f"--server={target}",
                              "--timeout_s=1"], capture_output=True
                             ).returncode != 0:
            if time.monotonic() > deadline or server.poll() is not None:
                sys.exit("server not SERVING")
            time.sleep(0.2)
        time.sleep(0.5)
        report["baseline"] = base = rss_bytes(server.pid)
        print(f"baseline            {mb(base)}", flush=True)
        for b in range(args.bursts):
            peak = [0]
            stop = threading.Event()

            def sample():
                while not stop.is_set():
                    peak[0] = max(peak[0], rss_bytes(server.pid))
                    stop.wait(0.02)
            t = threading.Thread(target=sample)
            t.start()
            start = time.monotonic()
            r = subprocess.run(
                [args.cli_bin, "bench", f"--server={target}",
                 f"--clients={args.clients}", f"--requests={args.clients}",
                 "--batch=1", f"--heads={args.heads}", f"--seq={args.seq}",
                 "--dim=64", "--method=local", "--window=8"],
                capture_output=True, text=True)
            seconds = time.monotonic() - start
            if r.returncode != 0:
                sys.exit(f"bench failed:\n{r.stdout}\n{r.stderr}")
            end_rss = rss_bytes(server.pid)
            time.sleep(args.settle_s)
            stop.set()
            t.join()
            settled = rss_bytes(server.pid)
            report["bursts"].append({"peak": peak[0], "at_end": end_rss,
                                     "settled": settled, "seconds": seconds})
            print(f"burst {b + 1}: peak {mb(peak[0])}, at end {mb(end_rss)}, "
                  f"after {args.settle_s:g} s {mb(settled)}  ({seconds:.1f} s)",
                  flush=True)
    finally:
        server.terminate()
        server.wait(timeout=60)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])
