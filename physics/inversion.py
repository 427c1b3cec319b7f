"""Dipole inversion: local field (ppm) -> susceptibility chi (ppm).

Forward model (see :mod:`cmbdetect.physics.forward`): ``f = F^-1 D F chi`` with the unit dipole kernel
``D(k) = 1/3 - (k.b0)^2/|k|^2`` built on the (cropped, padded) voxel grid with the true voxel sizes
and the B0 direction in voxel axes, so oblique slabs and anisotropic voxels are handled exactly.
Sign: a positive local field (paramagnetic pattern) gives chi > 0.

* :func:`tkd` - thresholded k-space division (Shmueli et al. 2009): ``1/D`` where ``|D| > t`` and
  ``sign(D)/t`` otherwise.  Fast; under-estimates chi and streaks along the magic-angle cone.
* :func:`tv_admm` - total-variation regularised inversion, ADMM with closed-form k-space updates
  (Bilgic et al. 2014): ``min_chi 1/2 ||D chi - f||^2 + lam ||grad chi||_1``.  Suppresses streaks.
* ``"medi"`` - morphology-weighted TV (:mod:`cmbdetect.physics.inversion_weighted`): no TV penalty on
  the magnitude's (or a TKD estimate's) edges, so small lesions keep their contrast and sign.
* :func:`invert_dipole` - the method chosen by measured accuracy (``method="default"``).

Computation runs on the bounding box of the mask plus ``pad_mm`` of zeros, padded to a fast FFT
size; results are float32 on the input grid, zero outside the mask.  The mean of chi inside the mask
is *not* referenced here (:func:`cmbdetect.physics.chain.compute_physics_maps` does it).
"""
from __future__ import annotations

import numpy as np
import scipy.fft as sfft

from .errors import InputError
from .forward import dipole_kernel, kspace_grid

#: TV-ADMM defaults, tuned on tests/phantoms.py (1 mm, 3 T, SNR 60, V-SHARP local field; see
#: DEFAULT_METHOD).  lam multiplies ||grad chi||_1 with the gradient in ppm/mm and the field in ppm.
TV_LAMBDA = 3e-4
TV_ITERATIONS = 10

#: Methods :func:`invert_dipole` accepts.
METHODS = ("default", "tkd", "tv", "medi")

#: The default method, chosen by measured accuracy.  Test head phantom (tests/phantoms.py: 96x96x80
#: at 1 mm, 40 spheres of 2-8 mm, +-0.3..1.5 ppm; noisy wrapped phase -> Laplacian unwrapping ->
#: V-SHARP), integrated moment (2 mm dilated region) of the 33 spheres >= 3 voxels across,
#: |relative error| median / worst (signs were right for all 40 spheres with both methods):
#:   3 T axial:           TKD 15.4% / 48.5%    TV-ADMM 2.3% / 8.1%
#:   3 T 15 deg oblique:  TKD 17.0% / 65.5%    TV-ADMM 1.8% / 6.1%
#:   1.5 T (TE 20 ms):    TKD 15.5% / 48.7%    TV-ADMM 2.3% / 9.1%
#:   7 T (TE 5 ms):       TKD 16.6% / 45.8%    TV-ADMM 2.2% / 10.4%
#: TV lam 1e-4 / 1e-3 gave 2.2-5.4% / 8.7-18.8% and 4.6-6.3% / 14-15% (3e-4 is the best compromise);
#: 10-30 iterations change the moments by < 1% (10 is the default, for speed).
#: Kept at "tv" although "medi" (morphology-weighted TV, physics/inversion_weighted.py) is better on every lesion
#: figure of benchmarks/lesion_fidelity.py (and halves the NRMSE): the shipped detector was trained on TV-ADMM maps,
#: and its 15 iterations cost about 1.5x TV-ADMM's 10 on the chain's largest stage budget (256x256x128 single echo
#: was already 13.7 s in-process / 15.2 s fresh with TV); see docs/qsm_lesion_fidelity.md.  Use
#: ``--inversion medi`` for quantitative susceptibility maps.
DEFAULT_METHOD = "tv"


def _prepare(local_field_ppm, mask, voxel_size, b0_dir, pad_mm):
    f = np.asarray(local_field_ppm, dtype=np.float32)
    m = np.asarray(mask).astype(bool)
    if f.ndim != 3 or m.shape != f.shape:
        raise InputError(f"local field {f.shape} and mask {m.shape} must be the same 3D shape")
    if not m.any():
        raise InputError("mask is empty: nothing to invert")
    if not np.isfinite(f[m]).all():
        raise InputError("local field has NaN/inf values inside the mask")
    vs = np.asarray(voxel_size, dtype=float)
    b = np.asarray(b0_dir, dtype=float)
    if b.shape != (3,) or not np.isfinite(b).all() or np.linalg.norm(b) == 0:
        raise InputError("B0 direction must be a non-zero 3-vector")
    idx = np.nonzero(m)
    lo = [int(i.min()) for i in idx]
    hi = [int(i.max()) + 1 for i in idx]
    crop = tuple(slice(a, z) for a, z in zip(lo, hi))
    small = np.where(m, f, 0.0)[crop].astype(np.float32)
    pad = [int(np.ceil(pad_mm / d)) for d in vs]
    big = tuple(sfft.next_fast_len(s + 2 * p, real=True) for s, p in zip(small.shape, pad))
    off = [(bb - s) // 2 for bb, s in zip(big, small.shape)]
    inner = tuple(slice(o, o + s) for o, s in zip(off, small.shape))
    fp = np.zeros(big, dtype=np.float32)
    fp[inner] = small
    d = dipole_kernel(big, vs, b / np.linalg.norm(b))[..., : big[2] // 2 + 1]
    return fp, d, m, crop, inner, vs, big


def _unpad(chi_big, m, crop, inner) -> np.ndarray:
    out = np.zeros(m.shape, dtype=np.float32)
    out[crop] = chi_big[inner]
    out[~m] = 0.0
    return out


def tkd(local_field_ppm, mask, voxel_size, b0_dir, *, threshold: float = 0.19, pad_mm: float = 8.0) -> np.ndarray:
    """Thresholded k-space division.

    Parameters: local field (ppm), bool mask, voxel size (mm), B0 direction in voxel axes,
    ``threshold`` on ``|D|`` (0.19 is the common choice; smaller = sharper but more streaks).
    Returns chi (ppm, float32, 0 outside the mask).
    """
    if not 0 < threshold < 2 / 3:
        raise InputError(f"TKD threshold must be in (0, 2/3), got {threshold}")
    fp, d, m, crop, inner, _, big = _prepare(local_field_ppm, mask, voxel_size, b0_dir, pad_mm)
    inv = np.where(np.abs(d) > threshold, 1.0 / np.where(d == 0, 1.0, d), np.sign(d) / threshold)
    inv[0, 0, 0] = 0.0
    chi = sfft.irfftn(sfft.rfftn(fp, workers=-1) * inv.astype(np.float32), s=big, workers=-1)
    return _unpad(chi.astype(np.float32), m, crop, inner)


def _grad(x, vs, out):
    """Forward differences with periodic wrap, per mm; ``out`` is (3, ...) preallocated."""
    for a in range(3):
        o = out[a]
        sl_lo = [slice(None)] * 3
        sl_hi = [slice(None)] * 3
        sl_lo[a], sl_hi[a] = slice(0, -1), slice(1, None)
        np.subtract(x[tuple(sl_hi)], x[tuple(sl_lo)], out=o[tuple(sl_lo)])
        last = [slice(None)] * 3
        first = [slice(None)] * 3
        last[a], first[a] = slice(-1, None), slice(0, 1)
        np.subtract(x[tuple(first)], x[tuple(last)], out=o[tuple(last)])
        o *= np.float32(1.0 / vs[a])
    return out


def _grad_adjoint(g, vs, out):
    """Adjoint of :func:`_grad` (negative backward divergence), written into ``out``."""
    out[...] = 0.0
    for a in range(3):
        ga = g[a]
        s = np.float32(1.0 / vs[a])
        sl_lo = [slice(None)] * 3
        sl_hi = [slice(None)] * 3
        sl_lo[a], sl_hi[a] = slice(0, -1), slice(1, None)
        # (G^T g)[n] = (g[n-1] - g[n]) / d
        out[tuple(sl_hi)] += s * ga[tuple(sl_lo)]
        first = [slice(None)] * 3
        last = [slice(None)] * 3
        first[a], last[a] = slice(0, 1), slice(-1, None)
        out[tuple(first)] += s * ga[tuple(last)]
        out -= s * ga
    return out


def tv_admm(
    local_field_ppm,
    mask,
    voxel_size,
    b0_dir,
    *,
    lam: float | None = None,
    rho: float | None = None,
    n_iter: int | None = None,
    pad_mm: float = 8.0,
) -> np.ndarray:
    """Total-variation regularised dipole inversion by ADMM (closed-form k-space chi update).

    Solves ``min 1/2 ||D chi - f||^2 + lam ||grad chi||_1`` (gradient in ppm/mm; the field is taken
    as 0 outside the mask) with splitting ``z = grad chi``; each iteration costs one real FFT pair.
    ``lam`` (ppm field per ppm/mm of chi gradient) and ``n_iter`` default to :data:`TV_LAMBDA`
    and :data:`TV_ITERATIONS`; ``rho`` defaults to ``100 * lam`` (Bilgic et al. 2014).  Returns chi (ppm, float32).
    """
    lam = TV_LAMBDA if lam is None else float(lam)
    n_iter = TV_ITERATIONS if n_iter is None else int(n_iter)
    if lam <= 0 or n_iter < 1:
        raise InputError("TV inversion needs lam > 0 and n_iter >= 1")
    rho = 100.0 * lam if rho is None else float(rho)
    fp, d, m, crop, inner, vs, big = _prepare(local_field_ppm, mask, voxel_size, b0_dir, pad_mm)
    df, inv_denom = tv_kspace_terms(fp, d, vs=vs, shape=big, rho=rho)
    chi = tv_admm_iterations(df, inv_denom, np.float32(lam / rho), vs=vs, shape=big, rho=rho, n_iter=n_iter)
    return _unpad(chi, m, crop, inner)


def tv_kspace_terms(fp, d, *, vs, shape, rho: float) -> tuple[np.ndarray, np.ndarray]:
    """The k-space terms of the TV-ADMM chi update on the padded grid ``shape``: ``df`` = D * F(field) and
    ``inv_denom`` = 1 / (D^2 + rho * |grad|^2) (finite-difference Laplacian in mm), 0 at k = 0."""
    ks = kspace_grid(shape, vs)
    lap = sum((2.0 - 2.0 * np.cos(2 * np.pi * k * dd)) / dd**2 for k, dd in zip(ks, vs))
    lap = lap[..., : shape[2] // 2 + 1]
    denom = (d.astype(np.float64) ** 2 + rho * lap).astype(np.float32)
    denom[0, 0, 0] = 1.0
    inv_denom = (1.0 / denom).astype(np.float32)
    inv_denom[0, 0, 0] = 0.0
    return sfft.rfftn(fp, workers=-1) * d, inv_denom


def tv_admm_iterations(df, inv_denom, thr, *, vs, shape, rho: float, n_iter: int) -> np.ndarray:
    """The ADMM iterations of a (weighted) TV dipole inversion on the padded grid ``shape``: ``df`` the k-space
    data term D*F(field), ``inv_denom`` 1 / (D^2 + rho * |grad|^2) in k-space, ``thr`` the soft threshold
    lambda / rho (a scalar, or one value per voxel for a weighted TV).  Returns chi (ppm) on the padded grid."""
    z = np.zeros((3, *shape), dtype=np.float32)
    u = np.zeros_like(z)
    g = np.zeros_like(z)
    rhs = np.zeros(shape, dtype=np.float32)
    chi = np.zeros(shape, dtype=np.float32)
    for _ in range(n_iter):
        np.subtract(z, u, out=g)
        _grad_adjoint(g, vs, rhs)
        k = sfft.rfftn(rhs, workers=-1)
        k *= np.float32(rho)
        k += df
        k *= inv_denom
        chi = sfft.irfftn(k, s=shape, workers=-1).astype(np.float32, copy=False)
        _grad(chi, vs, g)
        g += u  # v = grad chi + u
        # z = soft(v, thr); u = v - z = clip(v, -thr, thr)
        np.clip(g, -thr, thr, out=u)
        np.subtract(g, u, out=z)
    return chi


def invert_dipole(
    local_field_ppm,
    mask,
    voxel_size,
    b0_dir,
    *,
    method: str = "default",
    magnitude: np.ndarray | None = None,
) -> np.ndarray:
    """Dipole inversion with the named method (``"default"`` = :data:`DEFAULT_METHOD`).

    ``method``: "default" | "tkd" | "tv" | "medi" (morphology-weighted TV,
    :func:`cmbdetect.physics.inversion_weighted.medi_admm`).  ``magnitude`` (same shape) is the edge prior
    of "medi" (without it, the edges of a TKD estimate); the other methods check its shape only.  Units as :func:`tkd`.
    """
    if magnitude is not None and np.shape(magnitude) != np.shape(local_field_ppm):
        raise InputError("magnitude must have the local field's shape")
    name = DEFAULT_METHOD if method == "default" else method
    if name == "tkd":
        return tkd(local_field_ppm, mask, voxel_size, b0_dir)
    if name == "tv":
        return tv_admm(local_field_ppm, mask, voxel_size, b0_dir)
    if name == "medi":
        from .inversion_weighted import medi_admm

        return medi_admm(local_field_ppm, mask, voxel_size, b0_dir, magnitude=magnitude)
    raise InputError(f"unknown dipole inversion method {method!r}; choose one of {', '.join(METHODS)}")
