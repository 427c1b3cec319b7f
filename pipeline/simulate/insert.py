"""Lesion insertion into acquired data: spherical microbleeds and calcifications added to a real multi-echo GRE.

A test of the whole tool on real anatomy, real noise, real veins and a real background field, with a known
answer.  Each lesion is a uniformly magnetised sphere of susceptibility ``chi_ppm`` relative to the tissue
around it (> 0 microbleed, < 0 calcification).  Its field is the closed-form sphere field
(:func:`cmbdetect.physics.forward.sphere_field`, Lorentz corrected, ppm of B0, B0 along scanner z as the
project assumes) and the acquired complex signal of every voxel near it is re-integrated over
``subsamples**3`` points of the voxel:

    S_new(v) = S(v) * mean_points [ outside(r) * exp(i * phi(r)) ],   phi = 2*pi*gamma_bar*B0*TE*field_ppm*1e-6

so the sphere's interior gives no signal (hemosiderin and calcium: very short T2*) and the dephasing of its
field across each voxel makes the blooming void grow with the echo time, as in a scan.  Further out (beyond
``near_radii`` radii) the voxel-centre field is used.  The sign convention is the project's
(:mod:`cmbdetect.physics.phase`): a paramagnetic sphere raises the phase along B0.
:func:`acquire_coarser` then re-acquires the result with a smaller k-space matrix (coarser voxels), so lesions
are inserted at the fine resolution and blurred by the acquisition, as in a scan.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from cmbdetect.physics.forward import sphere_field, subvoxel_offsets, voxel_offsets_mm
from cmbdetect.physics.geometry import voxel_sizes, voxel_to_world
from cmbdetect.physics.phase import rad_per_ppm, wrap_phase
from cmbdetect.pipeline.io.truth import Lesion


def insert_spheres(mag: np.ndarray, phase: np.ndarray, *, te, b0: float, affine: np.ndarray,
                   lesions: list[Lesion], subsamples: int = 5, near_radii: float = 4.0,
                   reach_ppm: float = 1e-4) -> tuple[np.ndarray, np.ndarray]:
    """Magnitude and wrapped phase ``[E, X, Y, Z]`` (radians, project sign) with ``lesions`` added.

    ``te`` echo times (s), ``b0`` tesla, ``affine`` voxel -> scanner RAS mm.  Each lesion's field is applied
    where it exceeds ``reach_ppm`` (a box around the sphere); within ``near_radii`` radii of the centre the
    signal is integrated over ``subsamples**3`` points per voxel.  Lesions must not overlap."""
    mag = np.asarray(mag, np.float32)
    phase = np.asarray(phase, np.float32)
    te = np.atleast_1d(np.asarray(te, float))
    if mag.shape != phase.shape or mag.ndim != 4 or mag.shape[0] != len(te):
        raise ValueError("mag and phase must be [E, X, Y, Z] with one echo time per echo")
    signal = mag.astype(np.complex64) * np.exp(1j * phase).astype(np.complex64)
    k_ppm = rad_per_ppm(te, b0)  # radians per ppm, one per echo
    vs = voxel_sizes(affine)
    shape = np.array(mag.shape[1:])
    pts = subvoxel_offsets(subsamples)
    for les in lesions:
        a = les.diameter_mm / 2.0
        reach = a * (abs(les.chi_ppm) / (3 * reach_ppm)) ** (1 / 3)  # |field| <= chi/3 (a/r)^3 * 2
        c = np.asarray(les.centre_vox, float)
        lo = np.maximum(np.floor(c - reach / vs).astype(int), 0)
        hi = np.minimum(np.ceil(c + reach / vs).astype(int) + 1, shape)
        if np.any(hi <= lo):
            continue
        box = tuple(slice(int(l), int(h)) for l, h in zip(lo, hi))
        sub_shape = tuple(int(h - l) for l, h in zip(lo, hi))
        off = voxel_offsets_mm(sub_shape, affine, c - lo)
        factor = np.exp(1j * k_ppm[:, None, None, None] * sphere_field(les.chi_ppm, a, off)[None])
        near = np.linalg.norm(off, axis=-1) <= near_radii * a + 2 * vs.max()
        idx = np.argwhere(near)
        acc = np.zeros((len(te), len(idx)), np.complex128)
        rel = idx + lo - c  # voxel index offsets of the near voxels from the centre
        for p in pts:  # sub-voxel integration near the sphere
            o = (rel + p) @ np.asarray(affine, float)[:3, :3].T
            inside = np.linalg.norm(o, axis=-1) <= a
            f = sphere_field(les.chi_ppm, a, o)
            acc += np.where(inside[None], 0.0, np.exp(1j * k_ppm[:, None] * f[None]))
        factor[:, idx[:, 0], idx[:, 1], idx[:, 2]] = acc / len(pts)
        signal[(slice(None),) + box] *= factor.astype(np.complex64)
    return np.abs(signal).astype(np.float32), wrap_phase(np.angle(signal))


def draw_insertion_sites(mask: np.ndarray, affine: np.ndarray, rng: np.random.Generator, *,
                         kinds: list[str], diameter_mm=(2.0, 5.0), chi_ppm=(0.5, 1.5), margin_mm: float = 4.0,
                         min_separation_mm: float = 10.0) -> list[Lesion]:
    """Random lesions for :func:`insert_spheres`: centres at least ``margin_mm`` + radius inside ``mask`` and
    ``min_separation_mm`` apart, diameters and |chi| uniform in the given ranges; the sign of chi follows the
    kind (microbleed > 0, calcification < 0).  Fewer lesions than ``kinds`` when the mask has no room."""
    vs = voxel_sizes(affine)
    depth = ndimage.distance_transform_edt(np.asarray(mask, bool), sampling=vs)
    out: list[Lesion] = []
    for kind in kinds:
        d = float(rng.uniform(*diameter_mm))
        ok = np.argwhere(depth >= margin_mm + d / 2)
        for _ in range(200):
            if len(ok) == 0:
                break
            c = ok[rng.integers(len(ok))] + rng.uniform(-0.5, 0.5, 3)
            if all(np.linalg.norm((c - np.asarray(o.centre_vox)) * vs) >= min_separation_mm for o in out):
                chi = float(rng.uniform(*chi_ppm)) * (1.0 if kind == "microbleed" else -1.0)
                out.append(Lesion(kind=kind, centre_vox=tuple(float(v) for v in c),
                                  centre_ras=tuple(float(v) for v in voxel_to_world(affine, c)),
                                  diameter_mm=d, chi_ppm=chi, region="inserted"))
                break
    return out


def acquire_coarser(mag: np.ndarray, phase: np.ndarray, affine: np.ndarray,
                    new_shape) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same object acquired with a smaller matrix over the same field of view: the central ``new_shape`` of
    k-space of each echo's complex signal is kept (a scanner's lower resolution: sinc point-spread function,
    Gibbs ringing; intensities preserved).  Voxel ``i`` of the new grid samples the old index ``i * old/new``
    (the DFT's sample positions), so the affine's columns are scaled by ``old/new`` and its origin kept, and a
    lesion at old voxel ``c`` lies at ``c * new/old``.  Returns ``(mag, wrapped phase, affine)``."""
    mag = np.asarray(mag, np.float32)
    old = np.array(mag.shape[1:])
    new = np.array(new_shape, int)
    if new.shape != (3,) or np.any(new < 1) or np.any(new > old):
        raise ValueError(f"new_shape {tuple(new_shape)} must be 3 sizes between 1 and {tuple(old)}")
    axes = (1, 2, 3)
    k = np.fft.fftshift(np.fft.fftn(mag * np.exp(1j * np.asarray(phase, np.float64)), axes=axes), axes=axes)
    lo = old // 2 - new // 2
    k = k[:, lo[0]:lo[0] + new[0], lo[1]:lo[1] + new[1], lo[2]:lo[2] + new[2]]
    s = np.fft.ifftn(np.fft.ifftshift(k, axes=axes), axes=axes) * (np.prod(new) / np.prod(old))
    aff = np.array(affine, float)
    aff[:3, :3] = aff[:3, :3] * (old / new)
    return np.abs(s).astype(np.float32), wrap_phase(np.angle(s)), aff
