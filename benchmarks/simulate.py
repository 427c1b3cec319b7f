"""Benchmark: simulate one 192x224x96 subject; print wall time and peak RSS, and the time of one complex64
FFT of the padded grid the field computation uses (the peer figure: the simulator costs a few such FFTs).

Run: ``python benchmarks/simulate.py [--shape 192,224,96] [--b0 3] [--echoes 1] [--seed 0]``.
Targets: <= 30 s and <= 4 GB per subject.
"""
from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import scipy.fft as sfft


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="192,224,96")
    ap.add_argument("--b0", type=float, default=3.0)
    ap.add_argument("--echoes", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    te = (0.02,) if args.echoes == 1 else tuple(0.005 + 0.007 * e for e in range(args.echoes))

    from cmbdetect.pipeline.simulate.subject import simulate_subject

    t0 = time.perf_counter()
    sub = simulate_subject(seed=args.seed, shape=shape, b0=args.b0, te=te, oblique_deg=12.0)
    wall = time.perf_counter() - t0
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # Linux: kB
    print(f"simulate_subject {shape} B0 {args.b0} T, {len(te)} echo(es), "
          f"{sub.params['n_microbleeds']} microbleeds, {sub.params['n_calcifications']} calcifications: "
          f"wall {wall:.2f} s, peak RSS {rss_gb:.2f} GB (targets 30 s, 4 GB)")

    import tempfile

    from cmbdetect.pipeline.simulate.subject import simulate_dataset

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        simulate_dataset(f"{tmp}/ds", subjects=1, seed=args.seed, b0=[args.b0],
                         echoes=list(te) if len(te) > 1 else 1, shape=shape)
        wall_ds = time.perf_counter() - t0
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    print(f"simulate_dataset, 1 subject written as BIDS (NIfTI gz + truth): wall {wall_ds:.2f} s, "
          f"peak RSS so far {rss_gb:.2f} GB")

    padded = [sfft.next_fast_len(int(s + 2 * np.ceil(0.25 * s))) for s in shape]
    buf = np.random.default_rng(0).standard_normal(padded).astype(np.complex64)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        sfft.fftn(buf, workers=-1)
        times.append(time.perf_counter() - t0)
    print(f"peer: one complex64 FFT of the padded grid {tuple(padded)}: {min(times):.2f} s "
          f"(simulation = {wall / min(times):.0f} FFTs)")


if __name__ == "__main__":
    main()
