#!/usr/bin/env python3
"""Load generator for the server's KServe v2 / Triton endpoint, with and
without system shared memory, through tritonclient's gRPC client.

perf_analyzer is what the Triton world would use, but it cannot be installed
here (PyPI's perf-analyzer is an empty placeholder and the real one ships in
Triton's SDK container), so this does the part of its job we need: N
concurrent clients, each with its own connection and one request in flight,
for a fixed duration, on inputs generated once; it reports throughput,
client latency percentiles and, from ModelStatistics deltas taken before
and after the run, the server's own queue and compute time per request.

With --shm=system the inputs are written once into one shared-memory region
(every client reads it) and each client has its own output region, so
neither the tensors nor the answer cross the gRPC connection: what is left
is the request's metadata and the server's compute.

  bench/kserve_load.py --url=localhost:50051 --model=local \\
      --shape=1,8,16384,64 --param=window=2 --concurrency=2 --duration_s=20
  bench/kserve_load.py ... --shm=system

Prints a summary and, with --json=PATH, writes it as JSON. Exit status 0
when every request succeeded, 1 when any failed, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from typing import Dict, List, Optional

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.utils.shared_memory as shm

_NP_DTYPE = {"FP32": np.float32, "FP16": np.float16}


def _parse_param(text: str):
    """'name=value' -> (name, int | float | bool | str)."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--param wants name=value: {text!r}")
    for conv in (int, float):
        try:
            return name, conv(value)
        except ValueError:
            pass
    if value.lower() in ("true", "false"):
        return name, value.lower() == "true"
    return name, value


def _parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="localhost:50051", help="host:port")
    p.add_argument("--model", default="local")
    p.add_argument("--shape", default="1,8,1024,64",
                   help="batch,heads,seq,dim of Q, K and V")
    p.add_argument("--dtype", default="FP32", choices=sorted(_NP_DTYPE))
    p.add_argument("--param", action="append", type=_parse_param, default=[],
                   help="a request parameter name=value (repeatable)")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--duration_s", type=float, default=10.0)
    p.add_argument("--warmup_requests", type=int, default=1,
                   help="requests per client before the clock starts")
    p.add_argument("--shm", default="none", choices=["none", "system"])
    p.add_argument("--timeout_s", type=float, default=120.0,
                   help="deadline of one request")
    p.add_argument("--token", default="",
                   help="bearer token (servers with --auth_token_file)")
    p.add_argument("--json", default="", help="write the summary here")
    args = p.parse_args(argv)
    try:
        args.shape = [int(x) for x in args.shape.split(",")]
    except ValueError:
        p.error(f"--shape wants 4 integers: {args.shape!r}")
    if len(args.shape) != 4 or min(args.shape) < 1:
        p.error(f"--shape wants 4 positive integers: {args.shape}")
    if args.concurrency < 1 or args.duration_s <= 0:
        p.error("--concurrency and --duration_s must be positive")
    return args


class _ShmSetup:
    """The run's regions: one input region holding Q, K, V back to back
    (written once, read by every client) and one output region per client.
    Unregistered and unlinked by close()."""

    def __init__(self, client, tensors: Dict[str, np.ndarray],
                 out_bytes: int, clients: int, headers):
        self._client = client
        self._headers = headers
        self._handles = []
        self._names = []
        tag = f"kload_{os.getpid()}"
        self.input_offsets = {}
        offset = 0
        for name, a in tensors.items():
            self.input_offsets[name] = (offset, a.nbytes)
            offset += a.nbytes
        self.input_region = f"{tag}_in"
        h = self._create(self.input_region, f"/{tag}_in", offset)
        for name, a in tensors.items():
            shm.set_shared_memory_region(h, [a],
                                         offset=self.input_offsets[name][0])
        self.output_regions = []
        for i in range(clients):
            name = f"{tag}_out{i}"
            self._create(name, f"/{tag}_out{i}", out_bytes)
            self.output_regions.append(name)
        self.out_bytes = out_bytes

    def _create(self, name: str, key: str, size: int):
        h = shm.create_shared_memory_region(name, key, size)
        self._handles.append(h)
        self._client.register_system_shared_memory(name, key, size,
                                                   headers=self._headers)
        self._names.append(name)
        return h

    def close(self) -> None:
        for name in self._names:
            try:
                self._client.unregister_system_shared_memory(
                    name, headers=self._headers)
            except Exception:  # the server may be gone; unlink regardless
                pass
        for h in self._handles:
            shm.destroy_shared_memory_region(h)


def _stats(client, model: str, headers) -> Dict[str, int]:
    """Cumulative counts and nanoseconds of the model's inference stats."""
    r = client.get_inference_statistics(model_name=model, headers=headers)
    s = r.model_stats[0].inference_stats
    return {
        "success": s.success.count, "fail": s.fail.count,
        "request_ns": s.success.ns,
        "queue_ns": s.queue.ns, "compute_input_ns": s.compute_input.ns,
        "compute_infer_ns": s.compute_infer.ns,
        "compute_output_ns": s.compute_output.ns,
    }


def run(args: argparse.Namespace) -> dict:
    b, h, n, d = args.shape
    dtype = _NP_DTYPE[args.dtype]
    rng = np.random.default_rng(0)
    tensors = {name: rng.standard_normal((b, h, n, d)).astype(dtype)
               for name in ("Q", "K", "V")}
    out_bytes = b * h * n * d * 4  # OUT is FP32
    params = dict(args.param)
    headers = {"authorization": f"Bearer {args.token}"} if args.token else None

    control = grpcclient.InferenceServerClient(args.url)
    setup = None
    if args.shm == "system":
        setup = _ShmSetup(control, tensors, out_bytes, args.concurrency,
                          headers)
    try:
        return _run_clients(args, tensors, params, headers, control, setup)
    finally:
        if setup is not None:
            setup.close()
        control.close()


def _request(tensors, setup: Optional[_ShmSetup], worker: int, dtype: str):
    inputs, outputs = [], [grpcclient.InferRequestedOutput("OUT")]
    for name, a in tensors.items():
        i = grpcclient.InferInput(name, list(a.shape), dtype)
        if setup is None:
            i.set_data_from_numpy(a)
        else:
            off, size = setup.input_offsets[name]
            i.set_shared_memory(setup.input_region, size, offset=off)
        inputs.append(i)
    if setup is not None:
        outputs[0].set_shared_memory(setup.output_regions[worker],
                                     setup.out_bytes)
    return inputs, outputs


def _run_clients(args, tensors, params, headers, control, setup) -> dict:
    latencies: List[List[float]] = [[] for _ in range(args.concurrency)]
    errors = [0] * args.concurrency
    first_error: List[str] = []
    before: Dict[str, int] = {}
    clock = {"start": 0.0, "deadline": 0.0}

    def begin() -> None:
        # Once every client has warmed up: the statistics' baseline, then
        # the clock, so warm-up requests count in neither.
        before.update(_stats(control, args.model, headers))
        clock["start"] = time.monotonic()
        clock["deadline"] = clock["start"] + args.duration_s

    start = threading.Barrier(args.concurrency + 1, action=begin)

    def worker(w: int) -> None:
        try:
            client = grpcclient.InferenceServerClient(args.url)
            inputs, outputs = _request(tensors, setup, w, args.dtype)
        except Exception as e:
            first_error.append(f"client {w}: {e}")
            start.abort()  # the others and main stop waiting
            return

        def once() -> bool:
            try:
                client.infer(args.model, inputs, outputs=outputs,
                             parameters=params, headers=headers,
                             client_timeout=args.timeout_s)
                return True
            except Exception as e:  # counted, the first one reported
                errors[w] += 1
                if not first_error:
                    first_error.append(str(e))
                return False

        try:
            for _ in range(args.warmup_requests):
                once()
            try:
                start.wait()
            except threading.BrokenBarrierError:
                return
            while time.monotonic() < clock["deadline"]:
                t0 = time.perf_counter()
                if once():
                    latencies[w].append(time.perf_counter() - t0)
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(w,))
               for w in range(args.concurrency)]
    for t in threads:
        t.start()
    try:
        start.wait()
    except threading.BrokenBarrierError:
        for t in threads:
            t.join()
        raise RuntimeError(f"a client could not start: {first_error}")
    for t in threads:
        t.join()
    elapsed = time.monotonic() - clock["start"]
    after = _stats(control, args.model, headers)

    lat = np.array([x for w in latencies for x in w]) * 1e3
    delta = {k: after[k] - before[k] for k in after}
    served = max(delta["success"], 1)
    # Triton's breakdown: queue + compute_input + compute_infer +
    # compute_output; "request" (success.ns) is each request's whole time
    # in the server, from its arrival to its answer.
    per_req = {k[:-3] + "_ms": delta[k] / served / 1e6
               for k in delta if k.endswith("_ns") and k != "request_ns"}
    server_ms = sum(per_req.values())
    per_req["request_ms"] = delta["request_ns"] / served / 1e6
    return {
        "model": args.model, "shape": args.shape, "dtype": args.dtype,
        "parameters": params, "shm": args.shm,
        "concurrency": args.concurrency, "duration_s": round(elapsed, 3),
        "requests": int(lat.size), "errors": sum(errors),
        "first_error": first_error[0] if first_error else "",
        "throughput_rps": lat.size / elapsed if elapsed > 0 else 0.0,
        "latency_ms": {
            "mean": float(lat.mean()) if lat.size else 0.0,
            **{f"p{q}": float(np.percentile(lat, q)) if lat.size else 0.0
               for q in (50, 90, 99)},
        },
        "server": {"requests": delta["success"], "failed": delta["fail"],
                   **per_req, "total_ms": server_ms},
        "wire_bytes_per_request": 0 if args.shm == "system" else
        sum(a.nbytes for a in tensors.values()) + tensors["Q"].size * 4,
    }


def _print(r: dict) -> None:
    lat, s = r["latency_ms"], r["server"]
    print(f"model={r['model']} shape={r['shape']} dtype={r['dtype']} "
          f"params={r['parameters']} shm={r['shm']} "
          f"concurrency={r['concurrency']}")
    print(f"requests={r['requests']} errors={r['errors']} "
          f"in {r['duration_s']:.1f} s: {r['throughput_rps']:.2f} req/s, "
          f"{r['wire_bytes_per_request'] / 2**20:.1f} MiB of tensors on the "
          f"wire per request")
    print(f"latency ms: mean={lat['mean']:.2f} p50={lat['p50']:.2f} "
          f"p90={lat['p90']:.2f} p99={lat['p99']:.2f}")
    print(f"server ms/request (ModelStatistics): queue={s['queue_ms']:.2f} "
          f"compute_input={s['compute_input_ms']:.2f} "
          f"compute_infer={s['compute_infer_ms']:.2f} "
          f"compute_output={s['compute_output_ms']:.2f} "
          f"sum={s['total_ms']:.2f}; whole request in the server="
          f"{s['request_ms']:.2f}")
    if r["first_error"]:
        print(f"first error: {r['first_error']}")


def main(argv: Optional[List[str]] = None) -> int:
    args = _parse_args(argv)
    r = run(args)
    _print(r)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
    return 0 if r["errors"] == 0 and r["requests"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
