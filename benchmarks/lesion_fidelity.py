"""Lesion fidelity of the dipole inversions: sign and magnetic moment of 2-8 mm spheres in a head-like phantom.

Phantom (per acquisition setting): an ellipsoidal brain (semi-axes 42/50/36 mm) with in-vivo-like tissue
susceptibility (cortical grey matter +0.02, white matter -0.03, globus pallidus +0.18, putamen +0.10, caudate
+0.08, thalamus +0.03 ppm, substantia nigra / red nuclei +0.14 ppm, eight 1.5-2.5 mm veins +0.35 ppm, smooth
texture of 0.01 ppm) and 40 spheres of 2-8 mm diameter (16 of 2-3, 14 of 3-5, 10 of 5-8 mm), +-0.3..1.6 ppm, sign independent of size; 8 of them
with their surface 0.3-2 mm from the brain surface.  The tissue field is the FFT forward model with the image-space kernel
(:func:`cmbdetect.physics.forward.dipole_kernel_image_space`, not the kernel the inversions invert) on cubic
voxels, the sampled continuous kernel on anisotropic ones (where the image-space one is wrong); each sphere's
field is the closed form :func:`cmbdetect.physics.forward.sphere_field` averaged over 2x2x2 points per voxel, so
neither the lesions nor the tissue are an inverse crime.  Gaussian field noise from the magnitude SNR
(35 at 1 mm^3, 3 T, TE 0, scaled by voxel volume and B0) and the echo times (noise-weighted multi-echo field
fit: sd = 1 / (2 pi gamma B0 SNR sqrt(sum TE^2 S(TE)^2)) per voxel, S the decaying magnitude with the lesions'
R2* = R2* tissue + 137 Hz/ppm * B0/3 * |chi|).  The magnitude given to the inversions is the echo-combined one.

Per lesion: the sign of chi at its centre voxel, the sign and relative error of its integrated moment
(``lesion_features`` on the >= 50 % partial-volume region, dilated by max(2 mm, 1.5 voxel edges)) and of the
converged-ball moment (:func:`cmbdetect.physics.moment.converged_moment`, in brackets); per size bin: centre-sign
rate, moment-sign rate, median |moment error|; NRMSE of chi against the truth in the brain (both mean 0), and time.
Second opinion, when the qsm-ci package (MIT, offline) is installed: its challenge NRMSE, detrended NRMSE, HFEN and
calcification moment deviation (relative; its adaptive threshold, made for the challenge head, reads 100 % when no
voxel passes it) / streaking of the largest diamagnetic lesion.

``--background``: V-SHARP vs LBV vs PDF on the local field plus an air/tissue background (head in air, sinus, ear
canals): surface lesions kept in the valid mask, local-field error, their centre sign / moment after the weighted TV
and their field-fit moment.

Field fit (printed under the first method): :func:`cmbdetect.physics.moment.field_moment` on the local field, no
inversion at all.

Run: ``python benchmarks/lesion_fidelity.py [--quick] [--methods tkd,tv,medi] [--seed 1] [--background]``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from cmbdetect.physics.constants import GAMMA_BAR_HZ_PER_T  # noqa: E402
from cmbdetect.physics.forward import forward_field, sphere_field, subvoxel_offsets  # noqa: E402
from cmbdetect.physics.geometry import b0_direction, oblique_affine, voxel_sizes  # noqa: E402

#: Acquisition settings: (name, voxel mm, B0 T, echo times s, oblique angles deg).
SETTINGS = [
    ("1x1x2 3T 1echo", (1.0, 1.0, 2.0), 3.0, (0.020,), (0, 0, 0)),
    ("1x1x2 3T 4echo", (1.0, 1.0, 2.0), 3.0, (0.005, 0.010, 0.015, 0.020), (0, 0, 0)),
    ("1x1x2 3T obl15", (1.0, 1.0, 2.0), 3.0, (0.020,), (15, 0, 0)),
    ("1x1x2 1.5T 1echo", (1.0, 1.0, 2.0), 1.5, (0.030,), (0, 0, 0)),
    (".5x.5x2 3T 1echo", (0.5, 0.5, 2.0), 3.0, (0.020,), (0, 0, 0)),
    ("1mm 3T 1echo", (1.0, 1.0, 1.0), 3.0, (0.020,), (0, 0, 0)),
    ("1mm 7T 4echo obl", (1.0, 1.0, 1.0), 7.0, (0.004, 0.008, 0.012, 0.016), (10, 5, 0)),
    ("1mm 1.5T 1echo", (1.0, 1.0, 1.0), 1.5, (0.030,), (0, 0, 0)),
]
QUICK = [SETTINGS[0], SETTINGS[5]]
SIZE_BINS = [(2.0, 3.0), (3.0, 5.0), (5.0, 8.01)]
FOV_MM = np.array([100.0, 116.0, 88.0])
BRAIN_SEMI_MM = np.array([42.0, 50.0, 36.0])
R2S_TISSUE = {1.5: 15.0, 3.0: 22.0, 7.0: 40.0}


@dataclass
class Lesion:
    centre_vox: np.ndarray
    diameter_mm: float
    chi_ppm: float
    surface: bool
    tissue_ppm: float  # the tissue chi the lesion displaces (the moment is relative to it)

    @property
    def moment(self) -> float:
        return (self.chi_ppm - self.tissue_ppm) * np.pi / 6 * self.diameter_mm**3


def _ellipsoid(shape, vs, c_mm, semi, rot=None):
    idx = np.indices(shape, dtype=np.float32)
    x = [idx[n] * vs[n] - c_mm[n] for n in range(3)]
    if rot is not None:
        x = [sum(rot[i, j] * x[j] for j in range(3)) for i in range(3)]
    return sum((x[n] / semi[n]) ** 2 for n in range(3)) <= 1.0


def _tube(shape, vs, p0, p1, radius):
    idx = np.indices(shape, dtype=np.float32)
    x = np.stack([idx[n] * vs[n] for n in range(3)], -1)
    d = p1 - p0
    t = np.clip(((x - p0) @ d) / (d @ d), 0, 1)
    dist = np.linalg.norm(x - p0 - t[..., None] * d, axis=-1)
    return dist <= radius


def make_phantom(seed, voxel_size, b0, te, angles):
    from phantoms import _sphere_pv

    rng = np.random.default_rng(seed)
    vs = np.asarray(voxel_size, float)
    shape = tuple(int(round(f / v)) for f, v in zip(FOV_MM, vs))
    aff = oblique_affine(shape, tuple(vs), angles_deg=tuple(float(a) for a in angles))
    b0_dir = b0_direction(aff)
    c = FOV_MM / 2 - vs / 2
    brain = _ellipsoid(shape, vs, c, BRAIN_SEMI_MM)
    dist_in = ndimage.distance_transform_edt(brain, sampling=vs)
    wm = _ellipsoid(shape, vs, c, BRAIN_SEMI_MM - 4.0)
    tissue = np.where(brain, 0.02, 0.0).astype(np.float32)
    tissue[wm] = -0.03
    mag0 = np.where(brain, 0.85, 0.0).astype(np.float32)
    mag0[wm] = 1.0
    nuclei = [  # (offset mm, semi-axes mm, chi ppm, magnitude)
        ((15, 2, -2), (3, 8, 4), 0.18, 0.7), ((-15, 2, -2), (3, 8, 4), 0.18, 0.7),
        ((20, 4, 0), (4, 11, 6), 0.10, 0.8), ((-20, 4, 0), (4, 11, 6), 0.10, 0.8),
        ((11, 16, 6), (3, 7, 5), 0.08, 0.85), ((-11, 16, 6), (3, 7, 5), 0.08, 0.85),
        ((7, -8, 2), (6, 9, 6), 0.03, 0.9), ((-7, -8, 2), (6, 9, 6), 0.03, 0.9),
        ((5, -6, -14), (2.5, 4, 2.5), 0.14, 0.7), ((-5, -6, -14), (2.5, 4, 2.5), 0.14, 0.7),
    ]
    for off, semi, chi, mg in nuclei:
        e = _ellipsoid(shape, vs, c + np.array(off, float), np.array(semi, float))
        tissue[e] = chi
        mag0[e] = mg
    veins = np.zeros(shape, bool)
    for _ in range(8):
        p0 = c + rng.uniform(-1, 1, 3) * (BRAIN_SEMI_MM - 8)
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        veins |= _tube(shape, vs, p0, p0 + 30 * d, rng.uniform(0.75, 1.25)) & brain
    tissue[veins] = 0.35
    mag0[veins] = 0.5
    tex = ndimage.gaussian_filter(rng.normal(size=shape).astype(np.float32), 3.0 / vs)
    tissue += 0.01 * tex / max(float(tex[brain].std()), 1e-9)
    tissue = np.where(brain, ndimage.gaussian_filter(tissue, 0.5 / vs), 0.0).astype(np.float32)
    # Lesions: 32 deep (surface >= 6 mm inside the brain surface) + 8 near it (surface 0.3-2 mm inside).
    lesions: list[Lesion] = []
    # sizes as in microbleed cohorts (mostly 2-5 mm): 16 of 2-3 mm, 14 of 3-5 mm, 10 of 5-8 mm
    diams = np.sort(np.concatenate([rng.uniform(2.0, 3.0, 16), rng.uniform(3.0, 5.0, 14), rng.uniform(5.0, 8.0, 10)]))[::-1]
    surface_ids = set(rng.choice(40, 8, replace=False).tolist())
    placed: list[tuple[np.ndarray, float]] = []
    for n, dmt in enumerate(diams):
        for _ in range(20000):
            p = c + rng.uniform(-1, 1, 3) * BRAIN_SEMI_MM
            vox = p / vs
            ijk = tuple(int(round(v)) for v in vox)
            if not all(0 <= i < s for i, s in zip(ijk, shape)) or not brain[ijk]:
                continue
            depth = dist_in[ijk]
            if n in surface_ids:
                if not dmt / 2 + 0.3 <= depth <= dmt / 2 + 2.0:
                    continue
            elif depth < dmt / 2 + 6.0 or veins[ijk]:
                continue
            if all(np.linalg.norm(p - q) >= (dmt + dq) / 2 + 4.0 for q, dq in placed):
                placed.append((p, dmt))
                chi = rng.uniform(0.3, 1.6) * rng.choice([-1.0, 1.0])
                lesions.append(Lesion(vox, float(dmt), float(chi), n in surface_ids, float(tissue[ijk])))
                break
    chi_true = tissue.copy()
    r2s = np.full(shape, R2S_TISSUE[b0], np.float32)
    pvs = []
    for les in lesions:
        pv = _sphere_pv(shape, vs, les.centre_vox, les.diameter_mm / 2)
        pvs.append(pv)
        chi_true = chi_true * (1 - pv) + les.chi_ppm * pv
        r2s += pv * 137.0 * b0 / 3.0 * abs(les.chi_ppm) * 1.5
    chi_true = np.where(brain, chi_true, 0.0).astype(np.float32)
    # fields: tissue by FFT (image-space kernel), lesions closed form (voxel-averaged)
    tissue_only = np.where(brain, tissue, 0.0)
    for pv in pvs:
        tissue_only = tissue_only * (1 - pv)  # the lesion replaces the tissue it sits in
    # the image-space kernel is exact for cubic voxels only (a thin-slab voxel is no point dipole to its
    # 0.5 mm neighbour): anisotropic grids take the sampled continuous kernel for the (smooth) tissue
    kernel = "image" if np.allclose(vs, vs[0]) else "kspace"
    field = forward_field(tissue_only, vs, b0_dir, kernel=kernel).astype(np.float64)
    sub = subvoxel_offsets(2)
    for les in lesions:
        reach = 4 * les.diameter_mm + 8.0  # beyond it the field is < 1e-3 dchi, far below the noise
        lo = [max(int(np.floor(cc - reach / v)), 0) for cc, v in zip(les.centre_vox, vs)]
        hi = [min(int(np.ceil(cc + reach / v)) + 1, s) for cc, v, s in zip(les.centre_vox, vs, shape)]
        sl = tuple(slice(a, z) for a, z in zip(lo, hi))
        idx = np.indices([z - a for a, z in zip(lo, hi)], dtype=float).reshape(3, -1).T + np.array(lo)
        acc = np.zeros(len(idx))
        for d in sub:
            acc += sphere_field(les.chi_ppm, les.diameter_mm / 2, (idx + d - les.centre_vox) * vs, b0_dir)
        field[sl] += (acc / len(sub)).reshape([z - a for a, z in zip(lo, hi)])
    # noise, magnitude
    te = np.asarray(te, float)
    snr = 35.0 * np.prod(vs) * b0 / 3.0
    s_te = mag0[None] * np.exp(-te[:, None, None, None] * r2s[None])
    w = np.sqrt((te[:, None, None, None] ** 2 * s_te**2).sum(0))
    sd = 1.0 / (2 * np.pi * GAMMA_BAR_HZ_PER_T * b0 * 1e-6 * snr * np.maximum(w, 1e-4))
    sd = np.minimum(sd, 0.5)
    field = field + rng.normal(size=shape) * sd
    mag = np.sqrt((s_te**2).sum(0)) + rng.normal(size=shape) / snr * 0.5
    field = np.where(brain, field, 0.0).astype(np.float32)
    return dict(field=field, mask=brain, chi=chi_true, mag=np.abs(mag).astype(np.float32), vs=vs, b0_dir=b0_dir,
                lesions=lesions, pvs=pvs, affine=aff)


def evaluate(ph, chi):
    from cmbdetect.physics.moment import converged_moment, field_moment
    from cmbdetect.physics.sources import lesion_features

    m, vs = ph["mask"], ph["vs"]
    est = chi - chi[m].mean()
    tru = ph["chi"] - ph["chi"][m].mean()
    nrmse = 100 * np.linalg.norm((est - tru)[m]) / np.linalg.norm(tru[m])
    rows = []
    for les, pv in zip(ph["lesions"], ph["pvs"]):
        ijk = tuple(int(round(v)) for v in les.centre_vox)
        region = pv >= 0.5
        if not region.any():
            region = np.zeros_like(region)
            region[ijk] = True
        f = lesion_features(chi_ppm=est, local_field_ppm=ph["field"], magnitude=None, region_mask=region,
                            voxel_size=vs, b0_dir=ph["b0_dir"])
        cm = converged_moment(est, les.centre_vox, vs, mask=m, start_mm=les.diameter_mm / 2 + 0.5 * vs.max())
        key = ("fit", tuple(les.centre_vox))  # the same for every inversion: fitted once per phantom
        if key not in ph:
            ph[key] = field_moment(ph["field"], les.centre_vox, vs, ph["b0_dir"], radius_mm=les.diameter_mm / 2, mask=m)
        fm = ph[key]
        rows.append(dict(d=les.diameter_mm, chi=les.chi_ppm, surface=les.surface,
                         centre=float(est[ijk]), moment=f["integrated_chi_ppm_mm3"], truth=les.moment,
                         ball=cm["moment_ppm_mm3"], ball_sd=cm["moment_sd_ppm_mm3"],
                         fit=fm["moment_ppm_mm3"], fit_sd=fm["moment_sd_ppm_mm3"],
                         big=les.diameter_mm >= 3 * vs.max()))
    return nrmse, rows


def qsm_ci_metrics(ph, chi) -> str:
    """Second opinion from the QSM-CI scorer (the qsm-ci package, MIT, offline; optional): challenge NRMSE,
    detrended NRMSE, HFEN and the calcification moment deviation / streaking of the largest diamagnetic
    lesion (its >= 50 % partial-volume region as label 16)."""
    try:
        from qsm_ci import qsm_eval
    except ImportError:
        return "qsm-ci not installed"
    m = ph["mask"]
    chi = np.where(m, chi - chi[m].mean(), 0.0)
    tru = np.where(m, ph["chi"] - ph["chi"][m].mean(), 0.0)
    nrmse, nrmse_dt = qsm_eval.nrmse_challenge(chi, tru, m)
    hf = qsm_eval.hfen(chi, tru, m)
    dia = [(les.diameter_mm, pv) for les, pv in zip(ph["lesions"], ph["pvs"]) if les.chi_ppm < 0]
    seg = np.zeros(m.shape, np.int16)
    seg[max(dia, key=lambda t: t[0])[1] >= 0.5] = 16
    dev, streak = qsm_eval.calcification_metrics(chi, tru, seg)
    rel = dev / abs(float(tru[seg == 16].sum()))  # 1.0: its adaptive threshold found no calcification voxel
    return (f"qsm-ci: NRMSE {nrmse:.1f} detrended {nrmse_dt:.1f} HFEN {hf:.1f} calc moment dev {rel:.1%} "
            f"streak {streak:.3f}")


def summarise(rows):
    out = {}
    for lo, hi in SIZE_BINS:
        sel = [r for r in rows if lo <= r["d"] < hi]
        if not sel:
            continue
        out[f"{lo:g}-{hi:.0f}"] = dict(
            n=len(sel),
            centre=np.mean([np.sign(r["centre"]) == np.sign(r["chi"]) for r in sel]),
            msign=np.mean([np.sign(r["moment"]) == np.sign(r["chi"]) for r in sel]),
            merr=np.median([abs(r["moment"] / r["truth"] - 1) for r in sel]),
            berr=np.median([abs(r["ball"] / r["truth"] - 1) for r in sel]),
            ferr=np.median([abs(r["fit"] / r["truth"] - 1) for r in sel]))
    big = [r for r in rows if r["big"]]
    out["big"] = {k: (np.median([abs(r[key] / r["truth"] - 1) for r in big]) if big else np.nan)
                  for k, key in (("merr", "moment"), ("berr", "ball"), ("ferr", "fit"))}
    out["big"]["n"] = len(big)
    return out


def run_method(name, ph):
    from cmbdetect.physics.inversion import invert_dipole

    t0 = time.perf_counter()
    mag = ph["mag"] if name in ("medi",) else None
    if name == "medi-nomag":
        name = "medi"
    chi = invert_dipole(ph["field"], ph["mask"], ph["vs"], ph["b0_dir"], method=name, magnitude=mag)
    return chi, time.perf_counter() - t0


def background_field(ph, seed):
    """Field (ppm) inside the brain of the tissue/air boundary around it: a head (brain + 7 mm of skull and scalp,
    tissue at -9.4 ppm relative to air, partial-volume edges) in air, with a frontal sinus and two ear canals; the
    FFT forward model with zero (air) padding.  Harmonic inside the brain."""
    from cmbdetect.physics.constants import CHI_AIR_VS_TISSUE_PPM

    vs, m = ph["vs"], ph["mask"]
    shape = m.shape
    c = FOV_MM / 2 - vs / 2
    head = _ellipsoid(shape, vs, c, BRAIN_SEMI_MM + 7.0)
    sinus = _ellipsoid(shape, vs, c + np.array([0.0, 0.7 * BRAIN_SEMI_MM[1], -0.75 * BRAIN_SEMI_MM[2] - 6]),
                       np.array([12.0, 6.0, 5.0])) & ~m
    ears = [_ellipsoid(shape, vs, c + np.array([s * (BRAIN_SEMI_MM[0] + 3.5), 0.0, -0.3 * BRAIN_SEMI_MM[2]]),
                       np.array([2.5, 4.0, 4.0])) & ~m for s in (-1, 1)]
    air = ~head | sinus | ears[0] | ears[1]
    tissue = ndimage.gaussian_filter((~air).astype(np.float32), sigma=1.0 / vs)
    bg = forward_field(-CHI_AIR_VS_TISSUE_PPM * np.where(m, 1.0, tissue), vs, ph["b0_dir"])
    return np.where(m, bg, 0.0).astype(np.float32)


def background_study(ph, seed) -> None:
    """V-SHARP (chain default), LBV and PDF on local + air/tissue background: surface lesions kept in the valid mask,
    local-field error (RMS vs the true local field, ppm) on V-SHARP's eroded mask (the region all keep) and on the rim
    V-SHARP drops, and the surface lesions' centre sign / chi-ball moment after the weighted-TV inversion and their
    field-fit moment (:func:`cmbdetect.physics.moment.field_moment` on each method's local field)."""
    from cmbdetect.physics import background as bg
    from cmbdetect.physics.inversion import invert_dipole
    from cmbdetect.physics.moment import converged_moment, field_moment

    m, vs = ph["mask"], ph["vs"]
    total = ph["field"] + background_field(ph, seed)
    runs = {}
    for name, fn in (("V-SHARP", lambda: bg.vsharp(total, m, vs)), ("LBV", lambda: bg.lbv(total, m, vs)),
                     ("PDF", lambda: (bg.pdf(total, m, vs, ph["b0_dir"]), m))):
        t0 = time.perf_counter()
        loc, valid = fn()
        runs[name] = (loc, valid, time.perf_counter() - t0)
    valid_v = runs["V-SHARP"][1]
    rim = m & ~valid_v
    for name, (loc, valid, dt) in runs.items():
        d = loc - ph["field"]
        d = d - d[valid_v].mean()  # the local field is defined up to a constant
        e_in = float(np.std(d[valid_v]))
        r = rim & valid
        e_rim = float(np.sqrt(np.mean(d[r] ** 2))) if r.any() else float("nan")
        chi = invert_dipole(loc, valid, vs, ph["b0_dir"], method="medi", magnitude=ph["mag"])
        chi[valid] -= chi[valid].mean()
        kept = signs = 0
        errs, ferrs = [], []
        surf = [les for les in ph["lesions"] if les.surface]
        for les in surf:
            ijk = tuple(int(round(v)) for v in les.centre_vox)
            if not valid[ijk]:
                continue
            kept += 1
            signs += int(np.sign(chi[ijk]) == np.sign(les.chi_ppm))
            mo = converged_moment(chi, les.centre_vox, vs, mask=valid, start_mm=les.diameter_mm / 2 + 0.5 * vs.max())
            errs.append(abs(mo["moment_ppm_mm3"] / les.moment - 1))
            fm = field_moment(loc, les.centre_vox, vs, ph["b0_dir"], radius_mm=les.diameter_mm / 2, mask=valid)
            ferrs.append(fm["moment_ppm_mm3"] / les.moment - 1)
        fsign = sum(e > -1 for e in ferrs)
        print(f"  {name:<8} {dt:6.1f} s  local-field error RMS {e_in:.4f} ppm (V-SHARP mask) {e_rim:.4f} (rim)  "
              f"surface lesions kept {kept}/{len(surf)}, centre sign right {signs}/{kept}, median |moment err| "
              f"ball {np.median(errs) if errs else float('nan'):.1%}, field fit "
              f"{np.median(np.abs(ferrs)) if ferrs else float('nan'):.1%} (sign right {fsign}/{kept})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="two settings only")
    ap.add_argument("--methods", default="tkd,tv,medi,medi-nomag")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--background", action="store_true",
                    help="also compare V-SHARP, LBV and PDF background removal on surface lesions")
    args = ap.parse_args()
    methods = args.methods.split(",")
    settings = QUICK if args.quick else SETTINGS
    print(f"cpus {os.cpu_count()}, load {os.getloadavg()[0]:.1f}; methods {methods}; seed {args.seed}")
    allrows = {m: [] for m in methods}
    for name, vox, b0, te, ang in settings:
        t0 = time.perf_counter()
        ph = make_phantom(args.seed, vox, b0, te, ang)
        print(f"\n== {name}: shape {ph['field'].shape}, {len(ph['lesions'])} lesions "
              f"(phantom {time.perf_counter() - t0:.1f} s)")
        print(f"{'method':<11}{'NRMSE%':>7}{'time s':>7} | per size bin (mm): n centre-sign moment-sign "
              "median|moment err| [ball]")
        for meth in methods:
            chi, dt = run_method(meth, ph)
            nrmse, rows = evaluate(ph, chi)
            allrows[meth] += rows
            s = summarise(rows)
            bins = "  ".join(f"{k}: {v['n']} {v['centre']:.2f} {v['msign']:.2f} {v['merr']:.1%} [{v['berr']:.1%}]"
                             for k, v in s.items() if k != "big")
            print(f"{meth:<11}{nrmse:>7.1f}{dt:>7.1f} | {bins} | >=3vox {s['big']['n']}: {s['big']['merr']:.1%} "
                  f"[{s['big']['berr']:.1%}]")
            if meth == methods[0]:
                fits = "  ".join(f"{k}: {v['ferr']:.1%}" for k, v in s.items() if k != "big")
                print(f"{'field fit':<11}(no inversion) median |moment err| {fits} | >=3vox {s['big']['ferr']:.1%}, "
                      f"sign {np.mean([np.sign(r['fit']) == np.sign(r['chi']) for r in rows]):.3f}")
            print(f"{'':<11}{qsm_ci_metrics(ph, chi)}")
        if args.background:
            print("background removal (local field + air/tissue background; weighted-TV inversion):")
            background_study(ph, args.seed)
    print("\n== all settings")
    for meth in methods:
        rows = allrows[meth]
        s = summarise(rows)
        ge2 = [r for r in rows if r["d"] >= 2.0]
        surf = [r for r in rows if r["surface"]]
        print(f"{meth:<11} centre sign >=2mm {np.mean([np.sign(r['centre']) == np.sign(r['chi']) for r in ge2]):.3f}"
              f"  moment sign {np.mean([np.sign(r['moment']) == np.sign(r['chi']) for r in ge2]):.3f}"
              f"  ball-moment sign {np.mean([np.sign(r['ball']) == np.sign(r['chi']) for r in ge2]):.3f}"
              f"  median |moment err| >=3 vox {s['big']['merr']:.1%} (ball {s['big']['berr']:.1%}, n {s['big']['n']})"
              f"  surface-lesion centre sign {np.mean([np.sign(r['centre']) == np.sign(r['chi']) for r in surf]):.2f}")
        if meth == methods[0]:
            z = [abs(r["fit"] - r["truth"]) / r["fit_sd"] for r in ge2]
            print(f"{'field fit':<11} moment sign {np.mean([np.sign(r['fit']) == np.sign(r['chi']) for r in ge2]):.3f}"
                  f"  median |moment err| >=3 vox {s['big']['ferr']:.1%}  surface lesions "
                  f"{np.median([abs(r['fit'] / r['truth'] - 1) for r in surf]):.1%}; |err| / sd median "
                  f"{np.median(z):.2f}, within 2 sd {np.mean(np.array(z) <= 2):.2f}")
        for k, v in s.items():
            if k != "big":
                print(f"{'':<11} {k} mm: n {v['n']}, centre {v['centre']:.3f}, moment sign {v['msign']:.3f}, "
                      f"median |err| {v['merr']:.1%} (ball {v['berr']:.1%}, field fit {v['ferr']:.1%})")


if __name__ == "__main__":
    main()
