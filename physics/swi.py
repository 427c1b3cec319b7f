"""Susceptibility-weighted imaging (Haacke et al. 2004) and minimum-intensity projection.

SWI = magnitude x (phase mask)^n, with the phase high-pass filtered by complex division of the image
by a low-pass (k-space Hanning window) copy of itself ("homodyne" filtering), which removes the slowly
varying background phase and wraps without unwrapping.

Sign (project convention: ``phase = +2 pi gamma_bar B0 field TE``): paramagnetic sources (veins,
blood products) raise the local frequency, so the phase at their positive-field lobes (inside a vein
parallel to B0, at the poles of a bleed) is *positive*.  The mask must darken them, so here it
attenuates POSITIVE phase: ``mask = (pi - phi) / pi`` for ``phi > 0``, 1 otherwise.  This is
Haacke's "negative phase mask" written for the opposite (left-handed) convention in which veins have
negative phase; with ``--phase-sign`` applied at reading the data are always in our convention.
A diamagnetic sphere (calcium) has the opposite pattern: negative field at its poles (not darkened)
and positive field in its equatorial belt (darkened), the expected weaker, different SWI appearance.
"""
from __future__ import annotations

import numpy as np
import scipy.fft as sfft
from scipy import ndimage

from .checks import finite_array
from .errors import InputError


def _hanning_window(shape, voxel_size, cutoff_mm: float) -> np.ndarray:
    """Separable k-space Hanning window (FFT layout): ``0.5 (1 + cos(pi k / kc))`` for ``|k| < kc``
    per axis, ``kc = 1 / cutoff_mm`` cycles/mm (axes with fewer than 4 samples are not filtered)."""
    w = np.ones(shape, dtype=np.float32)
    kc = 1.0 / float(cutoff_mm)
    for a, (n, d) in enumerate(zip(shape, voxel_size)):
        if n < 4:
            continue
        k = np.abs(np.fft.fftfreq(n, d=float(d)))
        wa = np.where(k < kc, 0.5 * (1 + np.cos(np.pi * k / kc)), 0.0).astype(np.float32)
        sh = [1, 1, 1]
        sh[a] = n
        w = w * wa.reshape(sh)
    return w


def highpass_phase(mag3d, phase3d_wrapped, voxel_size, *, cutoff_mm: float = 8.0) -> np.ndarray:
    """Homodyne high-pass phase (rad, in (-pi, pi]): ``angle(z / LP(z))``, ``z = mag exp(i phase)``,
    ``LP`` = k-space Hanning window of half-width ``1/cutoff_mm`` cycles/mm (Haacke's 64 of a 512
    matrix at 0.5 mm is ``cutoff_mm = 8``).  Input phase in radians (wrapped is fine)."""
    mag = np.asarray(mag3d, dtype=np.float32)
    ph = np.asarray(phase3d_wrapped, dtype=np.float32)
    z = (mag * np.exp(1j * ph)).astype(np.complex64)
    w = _hanning_window(z.shape, voxel_size, cutoff_mm)
    lp = sfft.ifftn(sfft.fftn(z, workers=-1) * w, workers=-1)
    return np.angle(z * np.conj(lp)).astype(np.float32)


def swi_from_phase(
    mag3d,
    phase3d_wrapped,
    *,
    n: int = 4,
    voxel_size=(1.0, 1.0, 1.0),
    cutoff_mm: float = 8.0,
) -> np.ndarray:
    """SWI image (same units as the magnitude): ``mag * mask^n`` where ``mask = (pi - phi)/pi`` for
    high-pass phase ``phi > 0`` (paramagnetic, see module docstring) and 1 otherwise.

    ``mag3d``, ``phase3d_wrapped``: 3D magnitude and phase (rad, project sign convention) of one echo;
    ``n``: number of mask multiplications (4 is Haacke's choice for contrast vs noise);
    ``voxel_size`` (mm) and ``cutoff_mm`` define the homodyne filter.
    """
    mag = np.asarray(mag3d, dtype=np.float32)
    ph = np.asarray(phase3d_wrapped, dtype=np.float32)
    if mag.ndim != 3 or mag.shape != ph.shape:
        raise InputError(f"SWI needs 3D magnitude and phase of the same shape, got {mag.shape} and {ph.shape}")
    if n < 1:
        raise InputError(f"SWI mask power n must be >= 1, got {n}")
    finite_array(mag, "magnitude")
    finite_array(ph, "phase")
    hp = highpass_phase(mag, ph, voxel_size, cutoff_mm=cutoff_mm)
    mask = np.where(hp > 0, (np.pi - hp) / np.pi, 1.0).astype(np.float32)
    return (mag * mask**n).astype(np.float32)


def through_slice_axis(voxel_size, b0_dir=None) -> int:
    """The axis a projection runs along: the thickest voxel edge when voxels are anisotropic (the
    slice direction), else the axis closest to B0 when ``b0_dir`` is given, else the last axis."""
    vs = np.asarray(voxel_size, dtype=float)
    if vs.max() > 1.05 * np.min(vs) and np.sum(vs >= 0.999 * vs.max()) == 1:
        return int(np.argmax(vs))
    if b0_dir is not None:
        return int(np.argmax(np.abs(np.asarray(b0_dir, dtype=float))))
    return 2


def minimum_intensity_projection(img, voxel_size, *, slab_mm: float = 8.0, axis: int | None = None, b0_dir=None) -> np.ndarray:
    """Sliding-slab minimum-intensity projection, same shape as ``img``.

    Each voxel gets the minimum over a slab of ``slab_mm`` (rounded to an odd number of slices, at
    least 1) centred on it along ``axis`` (default :func:`through_slice_axis`); slabs are truncated
    at the volume edges.  ``voxel_size`` in mm.
    """
    a = np.asarray(img, dtype=np.float32)
    if a.ndim != 3:
        raise InputError(f"minimum-intensity projection needs a 3D image, got shape {a.shape}")
    if slab_mm <= 0:
        raise InputError(f"slab thickness must be positive, got {slab_mm} mm")
    ax = through_slice_axis(voxel_size, b0_dir) if axis is None else int(axis)
    if ax not in (0, 1, 2):
        raise InputError(f"projection axis must be 0, 1 or 2, got {axis}")
    n = max(1, int(round(slab_mm / float(np.asarray(voxel_size, dtype=float)[ax]))))
    if n % 2 == 0:
        n += 1
    return ndimage.minimum_filter1d(a, size=n, axis=ax, mode="nearest")
