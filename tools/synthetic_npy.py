#!/usr/bin/env python3
"""tools/synthetic_npy.py — writes synthetic attention inputs as .npy layers
that `scatterbrain_accuracy --npy_dir` reads, for studies at lengths the
real MiniLM data (N = 512) does not reach, e.g. the error target at N = 2048.

Families follow tests/testutil/reference.h's descriptions (numpy's generator,
so the values differ from the C++ ones):
  layer0: smooth    x_t = 0.98 x_{t-1} + sqrt(1 - 0.98^2) e_t (unit variance),
                    q = 1.5 x + 0.3 noise, k = 1.5 x + 0.3 noise
  layer1: clustered max(4, N / 64) centres, random unit directions times
                    3 d^0.25; each q and k token picks one, + N(0, 0.5^2)
  layer2: gaussian  q, k iid N(0, 1) (logit std 1 at scale 1/sqrt(d))
V is iid N(0, 1) everywhere. Shape [B, H, N, d], float32.

  python3 tools/synthetic_npy.py OUT_DIR [--n=2048] [--heads=8] [--dim=64]
"""
import argparse
import os

import numpy as np


def smooth(rng, h, n, d):
    x = np.empty((h, n, d))
    x[:, 0] = rng.standard_normal((h, d))
    a = 0.98
    for t in range(1, n):
        x[:, t] = a * x[:, t - 1] + np.sqrt(1 - a * a) * rng.standard_normal((h, d))
    q = 1.5 * x + 0.3 * rng.standard_normal((h, n, d))
    k = 1.5 * x + 0.3 * rng.standard_normal((h, n, d))
    return q, k


def clustered(rng, h, n, d):
    c = max(4, n // 64)
    cent = rng.standard_normal((h, c, d))
    cent *= 3 * d ** 0.25 / np.linalg.norm(cent, axis=-1, keepdims=True)
    pick = lambda: np.take_along_axis(
        cent, rng.integers(0, c, (h, n))[..., None], axis=1)
    q = pick() + 0.5 * rng.standard_normal((h, n, d))
    k = pick() + 0.5 * rng.standard_normal((h, n, d))
    return q, k


def gaussian(rng, h, n, d):
    return rng.standard_normal((h, n, d)), rng.standard_normal((h, n, d))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    rng = np.random.default_rng(a.seed)
    for layer, fam in enumerate((smooth, clustered, gaussian)):
        q, k = fam(rng, a.heads, a.n, a.dim)
        v = rng.standard_normal((a.heads, a.n, a.dim))
        for name, t in (("q", q), ("k", k), ("v", v)):
            np.save(os.path.join(a.out, f"layer{layer}_{name}.npy"),
                    t[None].astype(np.float32))


if __name__ == "__main__":
    main()
