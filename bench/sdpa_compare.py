#!/usr/bin/env python3
"""bench/sdpa_compare.py — PyTorch's scaled_dot_product_attention on the
shapes of scatterbrain_gpu_bench (B=1, H=8, d=64, N = 1024 ... 65536), in
float32 and bfloat16, so the GPU check sets our kernels beside the
framework's fused attention on the same device.

Timing: tensors made on the device once per configuration; warm-up calls;
then each call between two CUDA events, until --repeats or
--max_config_seconds; the median is reported. peak_bytes is the most device
memory PyTorch's allocator held during the calls beyond the inputs (the
output included). Configurations past --max_seconds are listed as skipped;
one that runs out of memory is listed with that error and the rest go on.

Runs where PyTorch with CUDA is installed (the GPU host's python3); here it
is only compiled (scripts/gpu-check --self-test). Exit codes: 0 every
configuration ran or was skipped for time; 1 a configuration failed;
3 no PyTorch or no CUDA device (the JSON says which).
"""

import argparse
import json
import statistics
import sys
import time


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1024,4096,16384,65536")
    ap.add_argument("--precisions", default="float32,bfloat16")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--max_config_seconds", type=float, default=4.0)
    ap.add_argument("--max_seconds", type=float, default=40.0)
    ap.add_argument("--json", default="", help="write the results here")
    return ap.parse_args(argv)


def measure(torch, n, precision, args):
    """One configuration: (median ms, min ms, calls, peak bytes)."""
    F = torch.nn.functional
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16,
             "float16": torch.float16}[precision]
    gen = torch.Generator(device="cuda").manual_seed(n)
    shape = (args.batch, args.heads, n, args.dim)
    q, k, v = (torch.randn(shape, device="cuda", dtype=dtype, generator=gen)
               for _ in range(3))
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    for _ in range(max(1, args.warmup)):
        t0 = time.perf_counter()
        out = F.scaled_dot_product_attention(q, k, v)
        torch.cuda.synchronize()
        del out
        if time.perf_counter() - t0 > args.max_config_seconds:
            break
    times = []
    begin = time.perf_counter()
    while len(times) < args.repeats:
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        out = F.scaled_dot_product_attention(q, k, v)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
        del out
        if time.perf_counter() - begin > args.max_config_seconds:
            break
    peak = torch.cuda.max_memory_allocated() - base
    del q, k, v
    return statistics.median(times), min(times), len(times), peak


def main(argv):
    args = parse_args(argv)
    report = {"tool": "sdpa_compare", "device": None, "torch": None,
              "error": None, "results": []}

    def finish(code):
        if args.json:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=1)
        return code

    try:
        import torch
    except Exception as e:  # ImportError, or a broken install
        report["error"] = "no torch: %s" % e
        print("sdpa_compare: " + report["error"])
        return finish(3)
    report["torch"] = torch.__version__
    if not torch.cuda.is_available():
        report["error"] = "no device: torch.cuda.is_available() is False"
        print("sdpa_compare: " + report["error"])
        return finish(3)
    report["device"] = torch.cuda.get_device_name(0)
    print("sdpa_compare: torch %s on %s, B=%d H=%d d=%d" %
          (torch.__version__, report["device"], args.batch, args.heads,
           args.dim))
    started = time.perf_counter()
    failed = False
    for n in [int(x) for x in args.sizes.split(",")]:
        for precision in args.precisions.split(","):
            row = {"N": n, "method": "sdpa", "precision": precision,
                   "ms": None, "min_ms": None, "repeats": 0,
                   "peak_bytes": None, "status": "ok"}
            if time.perf_counter() - started > args.max_seconds:
                row["status"] = "skipped: time budget"
            else:
                try:
                    ms, min_ms, calls, peak = measure(torch, n, precision, args)
                    row.update(ms=ms, min_ms=min_ms, repeats=calls,
                               peak_bytes=peak)
                except torch.cuda.OutOfMemoryError:
                    row["status"] = "error: out of memory"
                    failed = True
                except RuntimeError as e:
                    row["status"] = "error: %s" % str(e).splitlines()[0]
                    failed = True
                torch.cuda.empty_cache()
            report["results"].append(row)
            print("  N=%d %s: %s" % (n, precision, "%.3f ms" % row["ms"]
                                     if row["ms"] is not None
                                     else row["status"]))
            sys.stdout.flush()
    print("\n| N | precision | median ms | min ms | calls | peak MiB |")
    print("|---|---|---|---|---|---|")
    for r in report["results"]:
        if r["ms"] is None:
            print("| %d | %s | %s | | | |" % (r["N"], r["precision"],
                                              r["status"]))
        else:
            print("| %d | %s | %.3f | %.3f | %d | %.1f |" %
                  (r["N"], r["precision"], r["ms"], r["min_ms"],
                   r["repeats"], r["peak_bytes"] / 1048576.0))
    return finish(1 if failed else 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
