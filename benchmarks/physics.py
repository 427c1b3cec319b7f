"""Benchmark of the physics chain on a 256x256x128 synthetic head (single echo and 4 echoes).

Prints, per stage (mask, unwrap, echo fit, background, inversion, SWI+minIP), the wall time and the
peak of traced (numpy) memory, then the whole ``compute_physics_maps`` call, and - in the same run,
as peers - one complex64 FFT of the volume, LBV background removal, every dipole inversion method (TKD, TV-ADMM, weighted TV "medi") on
the same local field, and ``skimage.restoration.unwrap_phase`` of one echo.
Targets: whole single-echo physics stage <= 15 s and <= 2 GB; faster than skimage unwrapping alone.

Run: ``python benchmarks/physics.py [--skip-skimage]`` (the machine load is printed: it is shared).
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

SHAPE = (256, 256, 128)
VOXEL = (0.9, 0.9, 1.2)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _stage(rows, name, fn, *args, **kwargs):
    tracemalloc.start()
    t0, c0 = time.perf_counter(), _cpu()
    out = fn(*args, **kwargs)
    dt, dc = time.perf_counter() - t0, _cpu() - c0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rows.append((name, dt, dc, peak / 2**20))
    return out


def _print(title, rows):
    print(f"\n{title}  (cpu s = user+sys of this process; peak MiB = traced numpy memory)")
    print(f"{'stage':<42}{'wall s':>8}{'cpu s':>8}{'peak MiB':>10}")
    for name, dt, dc, mib in rows:
        print(f"{name:<42}{dt:>8.2f}{dc:>8.2f}{mib:>10.0f}")


def chain_only(npz: str) -> None:
    """Fresh process: load the saved acquisition, run the whole chain, print wall/CPU time and the
    process peak RSS (resident memory, including Python/numpy/scipy themselves)."""
    from cmbdetect.physics.chain import compute_physics_maps

    def hwm_mib() -> float:  # VmHWM: this process's peak resident memory (reset at exec, unlike ru_maxrss)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10

    d = np.load(npz)
    base = hwm_mib()
    t0, c0 = time.perf_counter(), _cpu()
    compute_physics_maps(mag=d["mag"], phase=d["phase"], te=d["te"], b0=float(d["b0"]), affine=d["affine"])
    dt, dc = time.perf_counter() - t0, _cpu() - c0
    peak = hwm_mib()
    print(f"fresh process, whole chain: wall {dt:.2f} s, cpu {dc:.2f} s, peak RSS {peak:.0f} MiB "
          f"(after loading the inputs: {base:.0f} MiB); load avg {os.getloadavg()[0]:.1f}")


def run(te, *, skimage: bool) -> None:
    from phantoms import make_head_phantom

    from cmbdetect.physics.background import vsharp
    from cmbdetect.physics.chain import compute_physics_maps
    from cmbdetect.physics.echoes import fit_multi_echo
    from cmbdetect.physics.geometry import b0_direction, voxel_sizes
    from cmbdetect.physics.inversion import DEFAULT_METHOD, invert_dipole
    from cmbdetect.physics.mask import brain_mask
    from cmbdetect.physics.swi import minimum_intensity_projection, swi_from_phase
    from cmbdetect.physics.unwrap import unwrap_laplacian

    t0 = time.perf_counter()
    p = make_head_phantom(seed=0, shape=SHAPE, voxel_size=VOXEL, te=te, b0=3.0)
    print(f"\n=== {len(te)} echo(s), TE {list(te)} s, shape {SHAPE}, voxel {VOXEL} mm "
          f"(phantom built in {time.perf_counter() - t0:.1f} s; load avg {os.getloadavg()[0]:.1f})")
    vs = voxel_sizes(p.affine)
    b0_dir = b0_direction(p.affine)
    mag, phase = p.mag, p.phase
    rows: list = []
    combined = np.sqrt((mag**2).sum(0))
    mask = _stage(rows, "mask (brain_mask)", brain_mask, combined, vs)
    _stage(rows, "unwrap (Laplacian, echo 1)", unwrap_laplacian, phase[0], vs, mask=mask)
    fit = _stage(rows, "echo fit (incl. unwrapping)", fit_multi_echo, mag, phase, p.te, p.b0, mask=mask, voxel_size=vs)
    local, valid = _stage(rows, "background (V-SHARP)", vsharp, fit.field_ppm, mask, vs)
    _stage(rows, f"inversion ({DEFAULT_METHOD})", invert_dipole, local, valid, vs, b0_dir)
    e = int(np.argmin(np.abs(p.te - 0.02)))

    def swi_mip():
        s = swi_from_phase(mag[e], phase[e], voxel_size=vs)
        return minimum_intensity_projection(s, vs, b0_dir=b0_dir)

    _stage(rows, "SWI + minIP", swi_mip)
    stage_sum = sum(r[1] for r in rows if not r[0].startswith("unwrap"))
    cpu_sum = sum(r[2] for r in rows if not r[0].startswith("unwrap"))
    rows.append(("sum of chain stages (no extra unwrap)", stage_sum, cpu_sum, max(r[3] for r in rows)))
    maps = _stage(rows, "compute_physics_maps (whole chain)", compute_physics_maps, mag=mag, phase=phase, te=p.te,
                  b0=p.b0, affine=p.affine)
    vol = (combined * 0).astype(np.complex64) + np.complex64(1 + 1j) * phase[0]
    import scipy.fft as sfft

    _stage(rows, "peer: complex64 FFT (scipy, workers=-1)", sfft.fftn, vol, workers=-1)
    from cmbdetect.physics.inversion import METHODS

    from cmbdetect.physics.background import lbv

    _stage(rows, "peer: background LBV", lbv, fit.field_ppm, mask, vs)
    for name in METHODS[1:]:  # every inversion on the same local field (peers: TKD, TV-ADMM)
        _stage(rows, f"peer: inversion {name}", invert_dipole, local, valid, vs, b0_dir, method=name,
               magnitude=fit.magnitude)
    if skimage:
        from skimage.restoration import unwrap_phase

        _stage(rows, "peer: skimage unwrap_phase (3D, 1 echo)", unwrap_phase, phase[0])
    _print(f"{len(te)}-echo results", rows)
    print("chain stage timings (meta):", maps.meta["timings_s"])
    print("warnings:", maps.meta["warnings"])
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        npz = str(Path(tmp) / "acq.npz")
        np.savez(npz, mag=mag, phase=phase, te=p.te, b0=p.b0, affine=p.affine)
        subprocess.run([sys.executable, __file__, "--chain-only", npz], check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-skimage", action="store_true", help="do not time skimage unwrap_phase")
    ap.add_argument("--chain-only", metavar="NPZ", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.chain_only:
        chain_only(args.chain_only)
        return
    print(f"cpus: {os.cpu_count()}, load average at start: {os.getloadavg()}")
    run((0.020,), skimage=not args.skip_skimage)
    run((0.005, 0.010, 0.015, 0.020), skimage=False)


if __name__ == "__main__":
    main()
