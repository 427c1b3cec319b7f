"""Accuracy of the physics chain on a simulated cohort, against the simulator's truth.

For every subject of a simulated BIDS dataset (``--bids-dir``; simulated with ``--subjects``/``--seed`` if
absent, 96x112x64 at 1x1x1.5 mm like the detection benchmark) the chain runs in each configuration below and
the script prints, per configuration: the local-field error (standard deviation of estimate - truth inside the
chain's mask, ppm; median over subjects, split single-/multi-echo, and the worst subject), the same for chi
(ppm), and how many true microbleed centres fall outside the mask (where no chain-based detector can see
them).  Configurations: ``default``; ``no-reliability`` (``min_coherence=0``: the whole brain mask, as before
the multi-echo reliability mask); ``all-echo-coherence`` (the reliability coherence over every echo, as
before the ``B0 * TE <= 0.2 T*s`` limit); ``no-closing`` (``brain_mask(close_mm=0)``); ``spatial-0.3`` (the opt-in
single-echo spatial coherence threshold); ``previous`` (neither closing nor reliability mask: the chain of
the first release); ``faces-median`` (the brain-mask background level read as the plain median of the volume's
faces, as before the slab fix: tissue on a slab's faces raised it); ``fixed-vsharp-radii`` (V-SHARP radii 6/4/2 mm at
every voxel size, as before they were scaled beyond 1.5 mm voxels).

Usage: ``python benchmarks/physics_cohort.py --bids-dir /tmp/cmb-test [--only default,no-reliability]``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np

os.environ.setdefault("NIPYPE_NO_ET", "1")

CONFIGS = {
    "default": ({}, {}),
    "no-reliability": ({}, {"min_coherence": 0.0}),
    "all-echo-coherence": ({}, {"coherence_max_b0_te": float("inf")}),
    "no-closing": ({"close_mm": 0.0}, {}),
    "spatial-0.3": ({}, {"min_spatial_coherence": 0.3}),
    "previous": ({"close_mm": 0.0}, {"min_coherence": 0.0}),
    "faces-median": ({"faces_median_background": True}, {}),
    "fixed-vsharp-radii": ({}, {"vsharp_radii_mm": (6.0, 4.0, 2.0)}),
}


def faces_median_threshold(mag: np.ndarray, voxel_size, smooth_mm: float = 1.0) -> float:
    """The brain-mask threshold as it was before the slab fix: the background level is the plain median of
    the six faces of the smoothed magnitude (tissue on a slab's faces included)."""
    from scipy import ndimage

    from cmbdetect.physics.mask import _auto_threshold

    sm = ndimage.gaussian_filter(np.asarray(mag, np.float32), sigma=smooth_mm / np.asarray(voxel_size, float),
                                 mode="nearest")
    return _auto_threshold(sm, all_faces=True)


def run_config(acq, mask_kw: dict, chain_kw: dict):
    """The chain on ``acq`` with the brain-mask options ``mask_kw`` (keywords of
    :func:`cmbdetect.physics.mask.brain_masks`, the function the chain calls, its stricter retry included) and the
    chain options ``chain_kw``."""
    from cmbdetect.physics import mask as mask_module
    from cmbdetect.physics.chain import compute_physics_maps

    original = mask_module.brain_masks

    def patched(mag3d, voxel_size, **k):
        kw = {**k, **mask_kw}
        if kw.pop("faces_median_background", False):
            kw["threshold"] = faces_median_threshold(mag3d, voxel_size) * kw.pop("threshold_scale", 1.0)
        return original(mag3d, voxel_size, **kw)

    with mock.patch.object(mask_module, "brain_masks", patched):
        return compute_physics_maps(mag=acq.mag, phase=acq.phase, te=acq.te, b0=acq.b0, affine=acq.affine,
                                    **chain_kw)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bids-dir", default="/tmp/cmb-test")
    ap.add_argument("--subjects", type=int, default=20)
    ap.add_argument("--seed", type=int, default=101)
    ap.add_argument("--only", default=",".join(CONFIGS), help="comma-separated configurations")
    a = ap.parse_args(argv)
    from cmbdetect.pipeline.io.bids_dataset import find_bids_subjects, load_bids_acquisition
    from cmbdetect.pipeline.simulate.subject import simulate_dataset
    from cmbdetect.pipeline.io.truth import read_truth

    bids = Path(a.bids_dir)
    if not bids.exists():
        print(f"simulating {a.subjects} subjects (seed {a.seed}) into {bids}", flush=True)
        simulate_dataset(bids, subjects=a.subjects, seed=a.seed, shape=(96, 112, 64), voxel_size=(1.0, 1.0, 1.5))
    names = [n for n in a.only.split(",") if n]
    rows = {n: [] for n in names}
    lost = {n: 0 for n in names}
    n_mb = 0
    t0 = time.perf_counter()
    for subj in find_bids_subjects(bids):
        acq = load_bids_acquisition(subj)
        truth = read_truth(bids / "derivatives" / "groundtruth", subj.subject)
        centres = [tuple(int(round(c)) for c in les.centre_vox) for les in truth.of_kind("microbleed")]
        n_mb += len(centres)
        for name in names:
            maps = run_config(acq, *CONFIGS[name])
            m = maps.mask
            d = maps.local_field_ppm[m] - truth.local_field_ppm[m]
            e = maps.chi_ppm[m] - truth.chi_ppm[m]
            rows[name].append((float(np.std(d)), float(np.std(e)), len(acq.te)))
            lost[name] += sum(not m[c] for c in centres)
    print(f"{len(rows[names[0]])} subjects, {n_mb} microbleeds, {time.perf_counter() - t0:.0f} s\n")
    print("| configuration | local-field error median (1 echo / multi-echo) | worst | chi error median | worst |"
          " microbleed centres outside the mask |\n|---|---|---|---|---|---|")
    for name in names:
        r = np.array(rows[name])
        multi = r[:, 2] > 1
        split = " / ".join(f"{np.median(r[sel, 0]):.4f}" if sel.any() else "-" for sel in (~multi, multi))
        print(f"| {name} | {np.median(r[:, 0]):.4f} ({split}) | {r[:, 0].max():.4f} | {np.median(r[:, 1]):.3f} |"
              f" {r[:, 1].max():.3f} | {lost[name]}/{n_mb} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
