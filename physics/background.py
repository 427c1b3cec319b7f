"""Background field removal: total field (ppm) inside a brain mask -> local (tissue) field (ppm).

The *background* field is the part of the measured field produced by sources outside the mask (air
in sinuses and outside the head, bone, shim residuals); inside the mask it is harmonic.  The *local*
field is the part produced by susceptibility inside the mask (veins, bleeds, calcifications, iron).

* :func:`vsharp` - variable-radius sophisticated harmonic artefact reduction (Li et al. 2011,
  Wu et al. 2012): the spherical mean value (SMV) of a harmonic function equals its value, so
  ``(delta - S_r) * f`` removes the background; several radii (largest first) keep the large
  kernel deep inside the brain and smaller kernels near its boundary; a truncated (TSVD)
  deconvolution with the largest kernel restores the local field.
* :func:`lbv` - Laplacian boundary value (Zhou et al. 2014): the local field solves ``lap L = lap f`` in the mask
  with ``L = 0`` on its one-voxel boundary layer (conjugate gradients, sine-transform preconditioner); erodes one
  voxel only.
* :func:`pdf` - projection onto dipole fields (Liu et al. 2011): fits the field inside the mask by
  dipoles located *outside* it (least squares, conjugate gradients) and subtracts that fit.  Needs
  the B0 direction in voxel axes (oblique slabs).

All fields are ppm of B0; lengths mm; returned arrays float32, zero outside the (returned) mask.
Sign convention: paramagnetic sources give a positive local field along B0.
"""
from __future__ import annotations

import numpy as np
import scipy.fft as sfft

from .errors import InputError
from .forward import dipole_kernel
from .geometry import ball_kernel

#: Default V-SHARP radii (mm), largest first.  Filtered to those >= the largest voxel edge.
#: Measured on the test head phantom (tests/phantoms.py, 1 mm, sinus/ear/neck background of RMS
#: 0.19 ppm; three phantoms, 3 refinement steps): background suppression (RMS true background /
#: RMS local-field error) 62-77x and worst sphere-moment error after TV inversion 8% with (6, 4, 2);
#: 51-68x / 11% with (6, 3, 2); 40-58x / 18% with (6, 2); without refinement (classic V-SHARP)
#: (12..2) mm gave 26x / 42% and (8..2) mm 39x / 28%.
DEFAULT_VSHARP_RADII_MM: tuple[float, ...] = (6.0, 4.0, 2.0)
#: Up to this in-plane voxel edge (mm; the middle of the three edges) :func:`vsharp_radii_mm` keeps
#: :data:`DEFAULT_VSHARP_RADII_MM`; beyond it the radii grow in proportion, so the spheres keep the shape in voxels
#: they have at 1.5 mm (4, 2.7 and 1.3 voxels): at 3 mm isotropic the fixed radii are 2, 1.3 and 1 voxel, cubes and
#: crosses rather than spheres.  Measured (benchmarks/physics_cohort.py, config fixed-vsharp-radii): 8 subjects at
#: 3 mm isotropic, local-field error median 0.0234 -> 0.0203 ppm, worst 0.129 -> 0.116, chi error 0.086 -> 0.074;
#: scaling with the coarsest edge instead hurt thick slices (5 subjects at 0.8 x 0.8 x 2.4 mm: 0.0149 -> 0.0202),
#: so thick slices with fine in-plane voxels keep the fixed radii.
VSHARP_REFERENCE_VOXEL_MM: float = 1.5


def vsharp_radii_mm(voxel_size, radii_mm=DEFAULT_VSHARP_RADII_MM) -> tuple[float, ...]:
    """The V-SHARP radii (mm, largest first) for this voxel size: ``radii_mm`` while the in-plane voxel edge (the
    middle of the three) is at most :data:`VSHARP_REFERENCE_VOXEL_MM`, else ``radii_mm`` scaled by
    ``in-plane edge / 1.5 mm``."""
    inplane = float(np.sort(np.asarray(voxel_size, dtype=float).reshape(3))[1])
    scale = max(1.0, inplane / VSHARP_REFERENCE_VOXEL_MM)
    return tuple(sorted((round(float(r) * scale, 4) for r in radii_mm), reverse=True))


def _check(total_field_ppm: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(total_field_ppm, dtype=np.float32)
    m = np.asarray(mask).astype(bool)
    if f.ndim != 3 or m.shape != f.shape:
        raise InputError(f"field {f.shape} and mask {m.shape} must be the same 3D shape")
    if not m.any():
        raise InputError("brain mask is empty: cannot remove the background field")
    if not np.isfinite(f[m]).all():
        raise InputError("total field has NaN/inf values inside the mask")
    return np.where(m, f, 0.0).astype(np.float32), m


def _padded_shape(shape, pad_vox) -> tuple[int, ...]:
    return tuple(sfft.next_fast_len(int(s + 2 * p), real=True) for s, p in zip(shape, pad_vox))


def _embed(a: np.ndarray, big_shape) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Place ``a`` at the start offset (big - small)//2 of a zero array of ``big_shape``."""
    off = [(b - s) // 2 for b, s in zip(big_shape, a.shape)]
    sl = tuple(slice(o, o + s) for o, s in zip(off, a.shape))
    out = np.zeros(big_shape, dtype=a.dtype)
    out[sl] = a
    return out, sl


def smv_voxel_count(voxel_size, radius_mm: float) -> int:
    """Number of voxel centres within ``radius_mm`` of a voxel centre (the SMV kernel's support)."""
    return int(ball_kernel(radius_mm, voxel_size).sum())


def smv_kernel_rfft(shape, voxel_size, radius_mm: float) -> np.ndarray:
    """Real FFT (``scipy.fft.rfftn`` layout) of a normalised spherical-mean-value kernel.

    The kernel is the set of voxel centres within ``radius_mm`` of the origin (true voxel sizes,
    periodic grid), divided by its voxel count, so its DC value is exactly 1.  The kernel is
    point-symmetric, so its FFT is real.
    """
    ball = ball_kernel(radius_mm, voxel_size).astype(np.float32)
    half = [b // 2 for b in ball.shape]
    ball /= ball.sum()
    if any(b > s for b, s in zip(ball.shape, shape)):
        raise InputError(f"SMV radius {radius_mm} mm does not fit in the grid {tuple(shape)}")
    k = np.zeros(shape, dtype=np.float32)
    k[: ball.shape[0], : ball.shape[1], : ball.shape[2]] = ball
    k = np.roll(k, shift=[-h for h in half], axis=(0, 1, 2))
    return sfft.rfftn(k, workers=-1).real.astype(np.float32)


def vsharp(
    total_field_ppm: np.ndarray,
    mask: np.ndarray,
    voxel_size,
    *,
    radii_mm=DEFAULT_VSHARP_RADII_MM,
    threshold: float = 0.05,
    refine_iter: int = 3,
) -> tuple[np.ndarray, np.ndarray]:
    """V-SHARP background removal.

    Parameters
    ----------
    total_field_ppm : (X, Y, Z) unwrapped total field, ppm (paramagnetic -> positive).
    mask : bool brain mask where the field is reliable.
    voxel_size : voxel edges (mm); kernels are spheres in mm, so anisotropic voxels are exact.
    radii_mm : SMV radii in mm; sorted largest first; radii smaller than the largest voxel edge are
        dropped (a kernel must reach the neighbours along every axis) and, when some were dropped,
        the largest voxel edge itself becomes the smallest radius.  Each voxel takes the
        high-pass ``(delta - S_r) * f`` of the largest radius whose sphere fits in the mask.
    threshold : TSVD threshold on ``|1 - S(k)|`` of the largest kernel for the deconvolution.
    refine_iter : conjugate-gradient iterations that refine the TSVD deconvolution into the
        least-squares local field ``L`` (supported in the eroded mask) consistent with *every*
        radius where it was used: ``min sum_r ||W_r ((delta - S_r) * L - hp_r)||^2``.  Classic
        V-SHARP (``refine_iter=0``) deconvolves all shells with the largest kernel, which
        under-estimates the local field near the mask boundary; on the test phantom the refinement
        lowers the worst integrated-moment error of spheres 6-8 mm from the edge from 28% to 7%.
        Each iteration costs ``2 * len(radii) + 2`` real FFTs.

    Returns
    -------
    (local_field_ppm, eroded_mask) : local field (float32, 0 outside, mean 0 inside) and the mask
        eroded by the smallest radius (voxels whose smallest sphere lies wholly inside ``mask``).
    """
    f, m = _check(total_field_ppm, mask)
    vs = np.asarray(voxel_size, dtype=float)
    radii = sorted({float(r) for r in radii_mm if float(r) >= vs.max() - 1e-6}, reverse=True)
    if not radii:
        raise InputError(f"V-SHARP radii {tuple(radii_mm)} mm are all below the voxel size {tuple(vs)} mm")
    if len(radii) < len(set(radii_mm)) and radii[-1] > vs.max() + 1e-6:
        radii.append(float(vs.max()))  # thick slices: the smallest usable sphere keeps the erosion small
    # Work on the mask's bounding box plus the largest radius (the field is zero outside the mask).
    crop = _bbox(m)
    pad = [int(np.ceil(radii[0] / d)) + 1 for d in vs]
    big = _padded_shape(f[crop].shape, pad)
    fp, sl = _embed(f[crop], big)
    mp, _ = _embed(m[crop].astype(np.float32), big)
    m_k = sfft.rfftn(mp, workers=-1)
    f_k = sfft.rfftn(fp, workers=-1)
    del mp
    local_hp = np.zeros(big, dtype=np.float32)
    which = np.full(big, -1, dtype=np.int8)  # index of the radius used at each voxel
    hp_kernels = []  # 1 - S_r(k) for the radii actually used
    inside = None
    for r in radii:
        s_k = smv_kernel_rfft(big, vs, r)
        # A sphere of radius r centred here lies wholly inside the mask (SMV of the mask == 1).
        inside = sfft.irfftn(m_k * s_k, s=big, workers=-1) > 1.0 - 0.5 / smv_voxel_count(vs, r)
        one_minus = (1.0 - s_k).astype(np.float32)
        del s_k
        if not hp_kernels and r == radii[0]:
            big_kernel = one_minus
        region = inside & (which < 0)
        if region.any():
            hp = sfft.irfftn(f_k * one_minus, s=big, workers=-1).astype(np.float32)
            local_hp[region] = hp[region]
            which[region] = len(hp_kernels)
            hp_kernels.append(one_minus)
            del hp
    del f_k, fp, m_k
    eroded = inside
    if not eroded.any():
        raise InputError("brain mask is too small for V-SHARP (empty after erosion by the smallest radius)")
    inv_large = np.where(np.abs(big_kernel) > threshold, 1.0 / np.where(big_kernel == 0, 1, big_kernel), 0.0)
    local = sfft.irfftn(sfft.rfftn(local_hp, workers=-1) * inv_large.astype(np.float32), s=big, workers=-1)
    local = np.where(eroded, local, 0.0).astype(np.float32)
    del inv_large
    if refine_iter > 0 and hp_kernels:
        local = _refine_multi_kernel(local, local_hp, which, hp_kernels, eroded, big, refine_iter)
    out = np.zeros(m.shape, dtype=np.float32)
    e = np.zeros(m.shape, dtype=bool)
    out[crop] = local[sl]
    e[crop] = eroded[sl]
    out[~e] = 0.0
    out[e] -= out[e].mean()
    return out, e


def _bbox(m: np.ndarray) -> tuple[slice, ...]:
    idx = np.nonzero(m)
    return tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)


def _refine_multi_kernel(x0, hp, which, kernels, support, big, n_iter) -> np.ndarray:
    """CG on the normal equations of ``min sum_r ||W_r (K_r * L - hp)||^2`` over ``L`` supported
    in ``support`` (``W_r``: voxels with ``which == r``; ``K_r``: high-pass kernels in rfft layout)."""
    sel = [np.flatnonzero(which == n) for n in range(len(kernels))]
    sup = support.astype(np.float32)

    def forward(x):  # A x: each voxel gets the high-pass of its own radius
        xk = sfft.rfftn(x * sup, workers=-1)
        out = np.zeros(big, dtype=np.float32)
        flat = out.reshape(-1)
        for idx, k in zip(sel, kernels):
            flat[idx] = sfft.irfftn(xk * k, s=big, workers=-1).reshape(-1)[idx]
        return out

    def adjoint(y):  # A^T y
        acc = None
        yflat = y.reshape(-1)
        for idx, k in zip(sel, kernels):
            part = np.zeros(big, dtype=np.float32)
            part.reshape(-1)[idx] = yflat[idx]
            t = sfft.rfftn(part, workers=-1)
            t *= k
            acc = t if acc is None else acc + t
        return sfft.irfftn(acc, s=big, workers=-1).astype(np.float32) * sup

    x = x0.astype(np.float32)
    r = adjoint(hp - forward(x))
    p = r.copy()
    rs = float(np.vdot(r, r))
    for _ in range(n_iter):
        if rs == 0:
            break
        ap = adjoint(forward(p))
        alpha = rs / max(float(np.vdot(p, ap)), 1e-30)
        x += np.float32(alpha) * p
        r -= np.float32(alpha) * ap
        rs_new = float(np.vdot(r, r))
        p = r + np.float32(rs_new / rs) * p
        rs = rs_new
    return x


def _cg(apply_a, b: np.ndarray, *, max_iter: int, tol: float) -> tuple[np.ndarray, int]:
    """Conjugate gradients for a symmetric positive semi-definite operator (float64 scalars)."""
    x = np.zeros_like(b)
    r = b.copy()
    p = r.copy()
    rs = float(np.vdot(r, r))
    b_norm = np.sqrt(float(np.vdot(b, b))) or 1.0
    it = 0
    for it in range(1, max_iter + 1):
        ap = apply_a(p)
        alpha = rs / max(float(np.vdot(p, ap)), 1e-30)
        x += alpha * p
        r -= alpha * ap
        rs_new = float(np.vdot(r, r))
        if np.sqrt(rs_new) / b_norm < tol:
            break
        p = r + (rs_new / rs) * p
        rs = rs_new
    return x, it


def pdf(
    total_field_ppm: np.ndarray,
    mask: np.ndarray,
    voxel_size,
    b0_dir,
    *,
    weights: np.ndarray | None = None,
    pad_mm: float = 20.0,
    max_iter: int = 60,
    tol: float = 1e-3,
) -> np.ndarray:
    """Projection onto dipole fields (Liu et al. 2011) background removal.

    Finds the susceptibility ``chi_b`` supported outside ``mask`` (including a zero-padded margin of
    ``pad_mm``, where the sources outside the field of view are represented) whose dipole field best
    fits the total field inside the mask, ``min ||W (f - M D chi_b)||^2``, by conjugate gradients on
    the normal equations, and returns ``f - D chi_b`` inside the mask.

    Parameters
    ----------
    total_field_ppm : unwrapped total field (ppm).  mask : bool brain mask.  voxel_size : mm.
    b0_dir : unit B0 direction in voxel axes (:func:`cmbdetect.physics.geometry.b0_direction`).
    weights : optional non-negative reliability weights (e.g. magnitude, SNR), same shape.
    Returns the local field (ppm, float32, zero outside ``mask``, mean 0 inside).
    """
    f, m = _check(total_field_ppm, mask)
    vs = np.asarray(voxel_size, dtype=float)
    w = np.ones_like(f) if weights is None else np.asarray(weights, dtype=np.float32)
    if w.shape != f.shape:
        raise InputError("PDF weights must have the field's shape")
    w = np.where(m, w / max(float(w[m].max()), 1e-12), 0.0).astype(np.float32)
    pad = [int(np.ceil(pad_mm / d)) for d in vs]
    big = _padded_shape(f.shape, pad)
    fp, sl = _embed(f, big)
    mp, _ = _embed(m, big)
    wp, _ = _embed(w, big)
    w2 = (wp * wp).astype(np.float64)
    d = dipole_kernel(big, vs, b0_dir)[..., : big[2] // 2 + 1].astype(np.float32)
    outside = ~mp

    def conv(x):
        return sfft.irfftn(sfft.rfftn(x, workers=-1) * d, s=big, workers=-1)

    def normal(x):
        return np.where(outside, conv(w2 * conv(np.where(outside, x, 0.0))), 0.0)

    rhs = np.where(outside, conv(w2 * fp), 0.0)
    chi_b, _ = _cg(normal, rhs, max_iter=max_iter, tol=tol)
    local = np.where(mp, fp - conv(chi_b), 0.0)[sl].astype(np.float32)
    local[m] -= local[m].mean()
    return local


#: LBV (:func:`lbv`) stops when the preconditioned residual falls below this fraction of the right-hand side's, or
#: after ``LBV_MAX_ITER`` conjugate-gradient iterations.
LBV_TOLERANCE: float = 1e-3
LBV_MAX_ITER: int = 200


def _laplacian(x: np.ndarray, inv_h2) -> np.ndarray:
    """7-point discrete Laplacian (mm^-2 units) of ``x`` with zero values beyond the array's faces."""
    out = np.zeros_like(x)
    for ax, w in enumerate(inv_h2):
        w = np.float32(w)
        out -= 2 * w * x
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[ax], hi[ax] = slice(0, -1), slice(1, None)
        out[tuple(lo)] += w * x[tuple(hi)]
        out[tuple(hi)] += w * x[tuple(lo)]
    return out


def _dst_poisson_inverse(shape, inv_h2) -> np.ndarray:
    """``1 / eigenvalues`` of the negative 7-point Laplacian on a box of ``shape`` with zero (Dirichlet) values just
    beyond its faces, in the DST-I basis."""
    lam = np.zeros(shape, dtype=np.float64)
    for ax, (n, w) in enumerate(zip(shape, inv_h2)):
        k = np.arange(1, n + 1)
        e = 2.0 * w * (1.0 - np.cos(np.pi * k / (n + 1)))
        sh = [1, 1, 1]
        sh[ax] = n
        lam = lam + e.reshape(sh)
    return (1.0 / lam).astype(np.float32)


def lbv(
    total_field_ppm: np.ndarray,
    mask: np.ndarray,
    voxel_size,
    *,
    tol: float = LBV_TOLERANCE,
    max_iter: int = LBV_MAX_ITER,
) -> tuple[np.ndarray, np.ndarray]:
    """Laplacian boundary value background removal (after Zhou et al. 2014, NMR Biomed 27:312).

    Inside the mask the background field is harmonic, so the local field ``L`` satisfies ``lap L = lap f`` there.
    Taking ``L = 0`` on the mask's one-voxel boundary layer (the voxels with a face neighbour outside the mask) makes
    this a Dirichlet problem for ``L`` on the interior: solved by conjugate gradients on the 7-point Laplacian (true
    voxel sizes), preconditioned by the exact inverse of the Laplacian of the interior's bounding box (discrete sine
    transform).  The background is then ``f - L``: the harmonic function equal to ``f`` on the boundary layer.

    Only the boundary layer is lost (V-SHARP loses the smallest radius, 2 mm or more), so lesions near the brain
    surface stay in the valid mask.  The price is the boundary condition: a source's own field on the boundary is
    taken for background (its harmonic extension is removed), which matters only for sources within a few of their
    radii of the surface.

    Parameters: ``total_field_ppm`` unwrapped total field (ppm); ``mask`` bool brain mask; ``voxel_size`` mm;
    ``tol`` relative residual; ``max_iter`` CG iterations.
    Returns ``(local_field_ppm, interior_mask)``: the local field (float32 ppm, 0 outside the interior, mean 0 inside)
    and the interior (the mask less its boundary layer).
    """
    f, m = _check(total_field_ppm, mask)
    vs = np.asarray(voxel_size, dtype=float)
    inner = m.copy()
    for ax in range(3):  # interior: the mask voxel and both face neighbours along every axis are in the mask
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[ax], hi[ax] = slice(0, -1), slice(1, None)
        nb = np.zeros_like(m)
        nb[tuple(lo)] = m[tuple(hi)]
        inner &= nb
        nb = np.zeros_like(m)
        nb[tuple(hi)] = m[tuple(lo)]
        inner &= nb
    if not inner.any():
        raise InputError("brain mask is too thin for LBV (no voxel with all its neighbours inside)")
    crop = _bbox(inner)
    crop = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(crop, m.shape))
    fc, ic = f[crop], inner[crop]
    inv_h2 = [1.0 / d**2 for d in vs]
    box = _bbox(ic)  # the interior's box inside the crop (one voxel in from the crop's faces)
    pinv = _dst_poisson_inverse(fc[box].shape, inv_h2)

    def apply_a(x):  # -lap of x (zero outside the interior), on the interior
        return np.where(ic, -_laplacian(np.where(ic, x, 0.0).astype(np.float32), inv_h2), 0.0).astype(np.float32)

    def precond(r):
        out = np.zeros_like(r)
        out[box] = sfft.idstn(sfft.dstn(np.where(ic, r, 0.0)[box], type=1, workers=-1) * pinv, type=1, workers=-1)
        return np.where(ic, out, 0.0).astype(np.float32)

    b = np.where(ic, -_laplacian(fc, inv_h2), 0.0).astype(np.float32)  # uses f on the boundary layer
    x = np.zeros_like(b)
    r = b.copy()
    z = precond(r)
    p = z.copy()
    rz = float(np.vdot(r, z))
    b_norm = np.sqrt(max(float(np.vdot(b, precond(b))), 1e-30))
    for _ in range(max_iter):
        if np.sqrt(max(rz, 0.0)) <= tol * b_norm:
            break
        ap = apply_a(p)
        alpha = rz / max(float(np.vdot(p, ap)), 1e-30)
        x += np.float32(alpha) * p
        r -= np.float32(alpha) * ap
        z = precond(r)
        rz_new = float(np.vdot(r, z))
        p = z + np.float32(rz_new / max(rz, 1e-30)) * p
        rz = rz_new
    out = np.zeros(m.shape, dtype=np.float32)
    out[crop] = np.where(ic, x, 0.0)
    out[inner] -= out[inner].mean()
    return out, inner


def background_rms_ppm(total_field_ppm: np.ndarray, local_field_ppm: np.ndarray, mask: np.ndarray) -> float:
    """RMS (ppm) of the removed background ``total - local`` inside ``mask`` after removing its mean
    (a measure of how strong the background field was; used for warnings)."""
    m = np.asarray(mask, dtype=bool)
    bg = (np.asarray(total_field_ppm, dtype=np.float64) - local_field_ppm)[m]
    return float(np.sqrt(np.mean((bg - bg.mean()) ** 2))) if bg.size else 0.0
