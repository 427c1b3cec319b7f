"""Tube or blob?  Shape measures in mm of the structure under a candidate, for telling veins from bleeds.

A microbleed is an isolated round void (and a round positive chi spot); a vein is a tube that goes on through
the neighbouring slices.  Three measures, all in mm on anisotropic (and, through the affine, oblique) grids;
the image is "bright" where the structure is (chi+ as it is; the magnitude void as ``1 - magnitude / local
median``, :func:`void_image`):

- :func:`hessian_shape`: eigenvalues of the scale-normalised Hessian (Gaussian derivatives, sigma in mm) at the
  structure's peak, several scales: ``blob_ratio = |l1| / sqrt(|l2 l3|)`` (|l1| <= |l2| <= |l3|; about 1 for a
  ball, about 0 for a tube), Frangi's vesselness, and the tube axis (eigenvector of l1);
- :func:`continuation_mm`: how far the structure goes on from the candidate both ways along that axis, by a
  ridge tracker that follows a tortuous vessel (each step the brightest direction within a cone);
- :func:`cross_width_mm`: full width at half maximum of the profile across the axis (the calibre of a tube,
  the diameter of a ball).

Pure functions of arrays + voxel sizes; vectors in the orthonormal voxel-axis frame (mm).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .errors import InputError


def void_image(magnitude: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Darkness ``1 - magnitude / median(magnitude in mask)``, clipped to [0, 1] (1 = signal void)."""
    m = np.asarray(magnitude, np.float32)
    ref = float(np.median(m[mask])) if mask is not None and np.any(mask) else float(np.median(m))
    if ref <= 0:
        return np.zeros_like(m)
    return np.clip(1.0 - m / np.float32(ref), 0.0, 1.0)


def peak_near(image: np.ndarray, centre_vox, voxel_size, search_mm: float) -> np.ndarray:
    """Voxel index (int array) of the largest value of ``image`` within ``search_mm`` of ``centre_vox``."""
    vs = np.asarray(voxel_size, float)
    c = np.asarray(centre_vox, float)
    lo = np.maximum(np.floor(c - search_mm / vs).astype(int), 0)
    hi = np.minimum(np.ceil(c + search_mm / vs).astype(int) + 1, image.shape)
    sub = image[tuple(slice(a, b) for a, b in zip(lo, hi))]
    idx = np.indices(sub.shape).reshape(3, -1).T + lo
    d2 = (((idx - c) * vs) ** 2).sum(1)
    vals = np.where(d2 <= max(search_mm ** 2, float(d2.min())), sub.reshape(-1), -np.inf)
    return idx[int(np.argmax(vals))]


def hessian_at(image: np.ndarray, point_vox, voxel_size, sigma_mm: float) -> np.ndarray:
    """Scale-normalised Hessian (``sigma^2 d2I/dxi dxj``, mm, voxel-axis frame) of ``image`` at ``point_vox``,
    from Gaussian derivatives of width ``sigma_mm``.  The neighbourhood is first resampled (trilinear) onto an
    isotropic grid of the finest voxel size, so thick slices get the same mm scale as the in-plane axes; the
    Hessian is taken at the brightest point of the smoothed image within 1.5 of those fine voxels (the ridge
    of a tube that passes between voxel centres)."""
    vs = np.asarray(voxel_size, float)
    h = float(vs.min())
    half = int(np.ceil(4 * sigma_mm / h)) + 1
    t = np.arange(-half, half + 1) * h
    mm = np.stack(np.meshgrid(t, t, t, indexing="ij"), 0)
    pts = mm / vs[:, None, None, None] + np.asarray(point_vox, float)[:, None, None, None]
    box = ndimage.map_coordinates(np.asarray(image, np.float64), pts.reshape(3, -1), order=1, mode="nearest")
    box = box.reshape(mm.shape[1:])
    s = sigma_mm / h
    sm = ndimage.gaussian_filter(box, s, mode="nearest")
    near = (np.indices(box.shape) - half) ** 2
    near = near.sum(0) <= 2.25
    q = np.unravel_index(int(np.argmax(np.where(near, sm, -np.inf))), box.shape)
    hm = np.zeros((3, 3))
    for i in range(3):
        for j in range(i, 3):
            order = [0, 0, 0]
            order[i] += 1
            order[j] += 1
            v = ndimage.gaussian_filter(box, s, order=order, mode="nearest")[q]
            hm[i, j] = hm[j, i] = v * sigma_mm ** 2 / (h * h)
    return hm


@dataclass
class HessianShape:
    """Shape of a bright structure at its most tube-like responding scale (see :func:`hessian_shape`)."""

    blob_ratio: float  # |l1| / sqrt(|l2 l3|): ~1 ball, ~0 tube
    vesselness: float  # Frangi (alpha = beta = 0.5, c = half the strongest norm over the scales); 0 unless l2, l3 < 0
    axis: np.ndarray  # unit vector along the tube (eigenvector of the smallest |eigenvalue|)
    scale_mm: float
    strength: float  # Frobenius norm of the scale-normalised Hessian at that scale


def hessian_shape(image: np.ndarray, point_vox, voxel_size, *, scales_mm=(0.75, 1.25, 2.0)) -> HessianShape:
    """Multi-scale Hessian shape of the bright structure at ``point_vox`` (see :class:`HessianShape`)."""
    if np.ndim(image) != 3:
        raise InputError("Hessian shape needs a 3D image")
    rows = []
    for s in scales_mm:
        w, v = np.linalg.eigh(hessian_at(image, point_vox, voxel_size, float(s)))
        o = np.argsort(np.abs(w))
        rows.append((float(s), w[o], v[:, o]))
    norms = [float(np.sqrt((w ** 2).sum())) for _, w, _ in rows]
    top = max(norms)

    def blob(w):
        return min(abs(w[0]) / max(np.sqrt(abs(w[1] * w[2])), 1e-12), 1.0) if w[0] < 0 else 0.0
    # the most tube-like of the scales that respond (norm >= half the strongest): on thick slices an oblique
    # tube is beaded at the finest scale and only the next one sees it whole
    k = min((n for n in range(len(rows)) if norms[n] >= 0.5 * top), key=lambda n: blob(rows[n][1]))
    s, w, v = rows[k]
    c = 0.5 * max(top, 1e-12)
    l1, l2, l3 = w
    if l2 >= 0 or l3 >= 0:
        ves = 0.0
    else:
        ra, rb = abs(l2) / abs(l3), abs(l1) / np.sqrt(abs(l2 * l3))
        ves = float((1 - np.exp(-ra ** 2 / 0.5)) * np.exp(-rb ** 2 / 0.5) * (1 - np.exp(-norms[k] ** 2 / (2 * c * c))))
    return HessianShape(blob_ratio=float(blob(w)), vesselness=ves, axis=v[:, 0] / np.linalg.norm(v[:, 0]),
                        scale_mm=s, strength=norms[k])


def _cone(axis: np.ndarray, half_angle_deg: float, n_ring: int = 8) -> np.ndarray:
    """Unit directions: ``axis`` and two rings around it (half and full ``half_angle_deg``)."""
    a = axis / np.linalg.norm(axis)
    e1 = np.cross(a, [1.0, 0, 0] if abs(a[0]) < 0.9 else [0, 1.0, 0])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(a, e1)
    out = [a]
    for frac in (0.5, 1.0):
        t = np.radians(half_angle_deg * frac)
        for ph in np.linspace(0, 2 * np.pi, n_ring, endpoint=False):
            out.append(np.cos(t) * a + np.sin(t) * (np.cos(ph) * e1 + np.sin(ph) * e2))
    return np.array(out)


def _sample(image, pts_vox):
    return ndimage.map_coordinates(image, np.asarray(pts_vox, float).T, order=1, mode="constant", cval=0.0)


def continuation_mm(image: np.ndarray, start_vox, voxel_size, axis, *, threshold: float, step_mm: float = 0.5,
                    max_mm: float = 20.0, cone_deg: float = 35.0, gap_mm: float | None = None) -> tuple[float, float]:
    """How far (mm, path length) the bright structure at ``start_vox`` goes on along ``+axis`` and ``-axis``:
    a ridge tracker steps ``step_mm`` at a time towards the brightest of a cone of directions around its
    current heading (twice as wide over the first mm, for a rough starting axis; so it follows a tortuous
    vessel) and stops where the image stays below ``threshold`` for
    more than ``gap_mm`` (default the largest voxel size: on thick slices an oblique thin vessel is beaded,
    dimmer between slice centres) or leaves the grid, or at ``max_mm``; the length is that of the last step
    above ``threshold``.  Returns ``(longer, shorter)`` of the two directions."""
    img = np.asarray(image, np.float32)
    vs = np.asarray(voxel_size, float)
    ax = np.asarray(axis, float) / np.linalg.norm(axis)
    gap = float(vs.max()) if gap_mm is None else float(gap_mm)
    out = []
    for sign in (1.0, -1.0):
        p = np.asarray(start_vox, float) * vs  # mm
        d = sign * ax
        length = good = 0.0
        while length < max_mm:
            dirs = _cone(d, cone_deg if length >= 1.0 else min(2 * cone_deg, 70.0))  # wide first mm: rough axis
            cand = p + dirs * step_mm
            inside = np.all((cand / vs >= 0) & (cand / vs <= np.asarray(img.shape) - 1), axis=1)
            if not inside.any():
                break
            vals = np.where(inside, _sample(img, cand / vs), -np.inf)
            k = int(np.argmax(vals))
            d = 0.5 * d + 0.5 * dirs[k]
            d /= np.linalg.norm(d)
            p = cand[k]
            length += step_mm
            if vals[k] >= threshold:
                good = length
            elif length - good > gap:
                break
        out.append(min(good, max_mm))
    return max(out), min(out)


def cross_width_mm(image: np.ndarray, point_vox, voxel_size, axis, *, baseline: float = 0.0,
                   reach_mm: float = 8.0, step_mm: float = 0.25) -> float:
    """Full width at half maximum (mm) of the profile through ``point_vox`` across ``axis`` (mean over four
    directions perpendicular to it), relative to ``baseline``."""
    vs = np.asarray(voxel_size, float)
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    p = np.asarray(point_vox, float) * vs
    e1 = np.cross(a, [1.0, 0, 0] if abs(a[0]) < 0.9 else [0, 1.0, 0])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(a, e1)
    t = np.arange(0.0, reach_mm + step_mm / 2, step_mm)
    peak = float(_sample(np.asarray(image, np.float32), (p / vs)[None])[0]) - baseline
    if peak <= 0:
        return 0.0
    widths = []
    for e in (e1, e2, (e1 + e2) / np.sqrt(2), (e1 - e2) / np.sqrt(2)):
        half = []
        for sgn in (1, -1):
            prof = _sample(np.asarray(image, np.float32), (p + sgn * t[:, None] * e) / vs) - baseline
            below = np.flatnonzero(prof < 0.5 * peak)
            half.append(t[below[0]] if below.size else reach_mm)
        widths.append(sum(half))
    return float(np.mean(widths))
