"""In-vivo-like accuracy of the dipole inversions on a realistic head phantom family (issue 23, in-vivo target).

Phantom (per seed; 1.06 mm isotropic, 3 T, single echo TE 20 ms, like the in-vivo COSMOS reference data): a label map
of an ellipsoidal brain (semi-axes 68/82/60 mm with a bumpy cortex), cortical grey matter (3 mm, +0.02 ppm), white
matter (-0.03 ppm), lateral ventricles and a cortical CSF rim (0 ppm), deep grey matter with iron (globus pallidus
+0.15, putamen +0.09, caudate +0.07, thalamus +0.05, substantia nigra / red nuclei +0.13 ppm; each +-20 % per seed),
twelve veins (1-2 mm, +0.35..0.5 ppm), two calcifications (-0.4..-0.6 ppm, 2.5-4 mm) and three bleeds
(+0.6..1.2 ppm, 2-4 mm); GRE magnitude contrast: white matter 1.0, grey 0.85, CSF 1.1, deep grey 0.7, veins 0.4.
Inside each tissue the chi varies smoothly (a low-frequency texture of 0.01 ppm, and a 0.01 ppm/100 mm
anterior-posterior trend in white matter).  Field: the FFT forward model with the image-space kernel
(:func:`cmbdetect.physics.forward.dipole_kernel_image_space`, not the kernel the inversions invert) of the
partial-volume chi, plus Gaussian noise of the magnitude SNR 40 at this voxel (sd 1 / (2 pi gamma B0 TE SNR)).

Per method: NRMSE (%, chi against the truth inside the brain, both mean 0) and HFEN (%, Laplacian-of-Gaussian sigma
1.5 voxels), the calcification moment error, and time; mean over seeds.  With qsm-ci installed (MIT, offline) its
challenge NRMSE / HFEN are printed as a second opinion.

Run: ``python benchmarks/head_phantom.py [--seeds 3] [--methods tkd,tv,medi] [--sweep]``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from lesion_fidelity import _ellipsoid, _tube  # noqa: E402

from cmbdetect.physics.constants import GAMMA_BAR_HZ_PER_T  # noqa: E402
from cmbdetect.physics.forward import forward_field  # noqa: E402

VOXEL_MM = 1.06
B0_T = 3.0
TE_S = 0.020
FOV_MM = np.array([160.0, 190.0, 140.0])
BRAIN_SEMI_MM = np.array([68.0, 82.0, 60.0])
SNR = 40.0
#: Deep grey matter: (centre offset mm, semi-axes mm, chi ppm), mirrored left/right.
DEEP_GM = [((17, 2, -2), (4, 10, 5), 0.15), ((24, 4, 0), (5, 14, 8), 0.09), ((13, 18, 8), (4, 9, 6), 0.07),
           ((9, -10, 2), (8, 12, 8), 0.05), ((6, -8, -16), (3, 5, 3), 0.13)]


def make_head(seed: int):
    from phantoms import _sphere_pv

    rng = np.random.default_rng(seed)
    vs = np.full(3, VOXEL_MM)
    shape = tuple(int(round(f / VOXEL_MM)) for f in FOV_MM)
    c = FOV_MM / 2
    idx = np.indices(shape, dtype=np.float32)
    x = [idx[n] * vs[n] - c[n] for n in range(3)]
    bumps = ndimage.gaussian_filter(rng.normal(size=shape).astype(np.float32), 6.0 / VOXEL_MM)
    bumps /= bumps.std()
    rho = np.sqrt(sum((x[n] / BRAIN_SEMI_MM[n]) ** 2 for n in range(3)))
    brain = rho <= 1.0 + 0.03 * bumps
    depth = ndimage.distance_transform_edt(brain, sampling=vs)
    chi = np.zeros(shape, np.float32)
    chi[brain] = 0.02  # cortical grey matter
    wm = brain & (depth > 3.5)
    chi[wm] = -0.03 + 0.01 * x[1][wm] / 100.0
    csf = brain & (depth <= 0.8 + 0.6 * (bumps > 1.0))  # CSF in the sulci at the surface
    for s in (-1, 1):  # lateral ventricles
        csf |= _ellipsoid(shape, vs, c + np.array([s * 8.0, 5.0, 10.0]), np.array([5.0, 22.0, 7.0]))
        for off, semi, val in DEEP_GM:
            e = _ellipsoid(shape, vs, c + np.array([s * off[0], off[1], off[2]], float), np.array(semi, float))
            chi[e] = val * rng.uniform(0.8, 1.2)
    chi[csf] = 0.0
    tex = ndimage.gaussian_filter(rng.normal(size=shape).astype(np.float32), 4.0 / VOXEL_MM)
    chi += np.where(brain & ~csf, 0.01 * tex / tex[brain].std(), 0.0)
    veins = np.zeros(shape, bool)
    for _ in range(12):
        p0 = c + rng.uniform(-0.8, 0.8, 3) * BRAIN_SEMI_MM
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        v = _tube(shape, vs, p0, p0 + rng.uniform(25, 50) * d, rng.uniform(0.5, 1.0)) & brain
        veins |= v
        chi[v] = rng.uniform(0.35, 0.5)
    chi = np.where(brain, ndimage.gaussian_filter(chi, 0.4), 0.0).astype(np.float32)
    lesions = []
    for n in range(5):  # two calcifications, three bleeds, deep in the white matter
        for _ in range(10000):
            p = c + rng.uniform(-0.6, 0.6, 3) * BRAIN_SEMI_MM
            ijk = tuple(int(round(v)) for v in p / vs)
            if wm[ijk] and depth[ijk] > 10 and not veins[ijk] and all(np.linalg.norm(p - q) > 15 for q, *_ in lesions):
                break
        dchi = rng.uniform(-0.6, -0.4) if n < 2 else rng.uniform(0.6, 1.2)
        d = rng.uniform(2.5, 4.0) if n < 2 else rng.uniform(2.0, 4.0)
        pv = _sphere_pv(shape, vs, p / vs, d / 2)
        tissue = float(chi[ijk])
        chi = chi * (1 - pv) + dchi * pv
        lesions.append((p, d, dchi - tissue, pv))
    field = forward_field(chi, vs, (0.0, 0.0, 1.0), kernel="image")
    sd = 1.0 / (2 * np.pi * GAMMA_BAR_HZ_PER_T * B0_T * 1e-6 * TE_S * SNR)
    field = np.where(brain, field + rng.normal(size=shape) * sd, 0.0).astype(np.float32)
    # GRE magnitude at TE 20 ms: white matter 1.0, grey 0.85, CSF 1.1 (long T2*), iron-rich deep grey 0.7, veins 0.4
    mag = np.where(wm, 1.0, 0.85).astype(np.float32)
    mag[chi > 0.05] = 0.7
    mag[csf] = 1.1
    mag[veins] = 0.4
    mag = np.where(brain, ndimage.gaussian_filter(mag, 0.5), 0.0).astype(np.float32)
    mag = np.abs(mag + rng.normal(size=shape).astype(np.float32) / SNR)
    return dict(field=field, chi=chi, mask=brain, mag=mag, vs=vs, lesions=lesions)


def scores(ph, est):
    m = ph["mask"]
    e = np.where(m, est - est[m].mean(), 0.0)
    t = np.where(m, ph["chi"] - ph["chi"][m].mean(), 0.0)
    nrmse = 100 * np.linalg.norm((e - t)[m]) / np.linalg.norm(t[m])
    le, lt = (ndimage.gaussian_laplace(a, 1.5) for a in (e, t))
    hfen = 100 * np.linalg.norm((le - lt)[m]) / np.linalg.norm(lt[m])
    calc = []
    for p, d, dm, pv in ph["lesions"][:2]:
        from cmbdetect.physics.moment import converged_moment

        mo = converged_moment(e, p / ph["vs"], ph["vs"], mask=m, start_mm=d / 2 + 0.5 * VOXEL_MM)["moment_ppm_mm3"]
        calc.append(mo / (dm * np.pi / 6 * d**3) - 1)
    out = dict(nrmse=nrmse, hfen=hfen, calc=float(np.mean(np.abs(calc))))
    try:
        from qsm_ci import qsm_eval

        out["qsmci_nrmse"] = qsm_eval.nrmse_challenge(e, t, m)[0]
        out["qsmci_hfen"] = qsm_eval.hfen(e, t, m)
    except ImportError:
        pass
    return out


def sweep() -> None:
    """TV and medi weights on seed 0 (NRMSE / HFEN / calcification moment error)."""
    from cmbdetect.physics.inversion import tv_admm
    from cmbdetect.physics.inversion_weighted import medi_admm

    ph = make_head(0)
    a = (ph["field"], ph["mask"], ph["vs"], (0.0, 0.0, 1.0))
    runs = [("tv lam 1.5e-4", lambda: tv_admm(*a, lam=1.5e-4)), ("tv lam 3e-4", lambda: tv_admm(*a, lam=3e-4)),
            ("tv lam 6e-4", lambda: tv_admm(*a, lam=6e-4)),
            ("medi lam 1e-3", lambda: medi_admm(*a, magnitude=ph["mag"], lam=1e-3)),
            ("medi lam 5e-4", lambda: medi_admm(*a, magnitude=ph["mag"], lam=5e-4)),
            ("medi lam 1e-3 edge 0.3", lambda: medi_admm(*a, magnitude=ph["mag"], lam=1e-3, edge_fraction=0.3))]
    for name, fn in runs:
        s = scores(ph, fn())
        print(f"{name:<24}" + "  ".join(f"{k} {v:.3g}" for k, v in s.items()), flush=True)


def main() -> None:
    from cmbdetect.physics.inversion import invert_dipole

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--methods", default="tkd,tv,medi")
    ap.add_argument("--sweep", action="store_true", help="regularisation sweep of TV and medi on seed 0 instead")
    args = ap.parse_args()
    if args.sweep:
        sweep()
        return
    methods = args.methods.split(",")
    print(f"cpus {os.cpu_count()}, load {os.getloadavg()[0]:.1f}; {VOXEL_MM} mm, {B0_T} T, TE {TE_S} s, SNR {SNR}")
    res = {k: [] for k in methods}
    for seed in range(args.seeds):
        ph = make_head(seed)
        for meth in methods:
            t0 = time.perf_counter()
            chi = invert_dipole(ph["field"], ph["mask"], ph["vs"], (0.0, 0.0, 1.0), method=meth,
                                magnitude=ph["mag"] if meth == "medi" else None)
            s = scores(ph, chi)
            s["time"] = time.perf_counter() - t0
            res[meth].append(s)
            print(f"seed {seed} {meth:<5} " + "  ".join(f"{k} {v:.3g}" for k, v in s.items()), flush=True)
    print("\nmean over seeds")
    for meth in methods:
        keys = res[meth][0].keys()
        print(f"{meth:<5} " + "  ".join(f"{k} {np.mean([r[k] for r in res[meth]]):.3g}" for k in keys))


if __name__ == "__main__":
    main()
