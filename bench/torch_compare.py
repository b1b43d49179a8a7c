#!/usr/bin/env python3
"""bench/torch_compare.py — PyTorch's dense attention on the CPU, on the
inputs scatterbrain_bench --compare wrote, so our times and the framework's
come from one run on one machine.

Reads q, k, v for each N from DIR/{q,k,v}N.f32 (raw little-endian float32,
[1, heads, N, dim]) and times, with --threads intra-op threads:
  dense: softmax(q k^T / sqrt(d)) v, all heads in one batched matmul and
         one head at a time (the N x N scores of all heads at once take
         8.6 GB at N = 16384: per head only there); the faster form counts
  sdpa:  torch.nn.functional.scaled_dot_product_attention on all heads,
         where this torch has it (2.0 and later)
One warm-up call, then --repeats calls (fewer when a call takes over
--max_seconds / repeats); the median wall time is printed.

Output (stdout), parsed by bench_modes.cc: "# torch VERSION ..." first, then
one line per N: "N dense_ms sdpa_ms" ("nan" where not measured); other
"# ..." lines are notes. Exit 0, or 3 when torch cannot be imported.
"""

import argparse
import statistics
import sys
import time


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", required=True)
    ap.add_argument("--sizes", default="1024,4096,16384")
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--max_seconds", type=float, default=30.0,
                    help="time budget per (N, method)")
    args = ap.parse_args(argv)
    try:
        import numpy as np
        import torch
    except ImportError as e:
        print(f"# cannot import torch: {e}")
        return 3
    torch.set_num_threads(args.threads)
    fn = getattr(torch.nn.functional, "scaled_dot_product_attention", None)
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"sdpa {'yes' if fn else 'not in this version'}")
    if fn is None:
        print("# scaled_dot_product_attention needs torch >= 2.0: "
              "sdpa not measured")
    sys.stdout.flush()

    def load(name, n):
        a = np.fromfile(f"{args.dir}/{name}{n}.f32", dtype=np.float32)
        return torch.from_numpy(a.reshape(1, args.heads, n, args.dim))

    def timed(call, n_calls_hint):
        call()  # warm-up (allocator, first-touch pages)
        times = []
        start = time.perf_counter()
        for _ in range(n_calls_hint):
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
            if time.perf_counter() - start > args.max_seconds:
                break
        return 1e3 * statistics.median(times)

    for n in (int(x) for x in args.sizes.split(",")):
        q, k, v = load("q", n), load("k", n), load("v", n)
        scale = 1.0 / args.dim ** 0.5

        def per_head():
            with torch.no_grad():
                out = torch.empty_like(q)
                for h in range(args.heads):
                    s = torch.matmul(q[0, h], k[0, h].transpose(0, 1)) * scale
                    out[0, h] = torch.matmul(torch.softmax(s, dim=-1), v[0, h])
                return out

        def batched():
            with torch.no_grad():
                s = torch.matmul(q, k.transpose(-1, -2)) * scale
                return torch.matmul(torch.softmax(s, dim=-1), v)

        def sdpa():
            with torch.no_grad():
                return fn(q, k, v)

        dense_ms = timed(per_head, args.repeats)
        if n <= 8192:
            dense_ms = min(dense_ms, timed(batched, args.repeats))
        sdpa_ms = timed(sdpa, args.repeats) if fn else float("nan")
        print(f"{n} {dense_ms:.3f} {sdpa_ms:.3f}")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
