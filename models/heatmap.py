"""Centre-heatmap targets and peak extraction (CenterNet-style), with distances in mm.

Targets: each lesion centre gets an anisotropic-voxel Gaussian ``exp(-d_mm^2 / (2 sigma_mm^2))``; where
Gaussians overlap the maximum is kept.  The voxel nearest each centre is exactly 1 (the positive the
focal loss counts).  The size target holds the diameter (mm) within the Gaussian core.

Peaks: max-pool non-maximum suppression (a voxel is a peak when it equals the maximum of a box whose
half-width is ``min_distance_mm`` converted to voxels per axis) above ``threshold``, then greedy distance
suppression in mm (highest score first), then a sub-voxel centroid refinement over the 3x3x3 neighbourhood.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def gaussian_targets(shape, centres_vox, voxel_size, *, diameters_mm=None,
                     sigma_mm: float = 1.5,
                     size_fraction: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Heatmap, size and positive-mask targets on a grid of ``shape`` with ``voxel_size`` (mm).

    ``centres_vox``: ``(N, 3)`` continuous voxel coordinates on this grid.  ``diameters_mm``: ``(N,)``
    or None.  Each lesion's Gaussian has ``sigma = max(sigma_mm, size_fraction * diameter)`` mm
    (size-adaptive, as in CenterNet: the centre of a large lesion is less sharply defined).  Returns float32
    heatmap in [0, 1], float32 diameter map (mm, 0 where undefined), and a bool map of the voxels nearest each
    centre (heatmap == 1 there).
    """
    shape = tuple(int(s) for s in shape)
    vs = np.asarray(voxel_size, dtype=float)
    heat = np.zeros(shape, dtype=np.float32)
    size = np.zeros(shape, dtype=np.float32)
    peak = np.zeros(shape, dtype=bool)
    centres = np.asarray(centres_vox, dtype=float).reshape(-1, 3)
    diam = np.zeros(len(centres)) if diameters_mm is None else np.asarray(diameters_mm, dtype=float)
    for c, d in zip(centres, diam):
        sigma = max(float(sigma_mm), float(size_fraction) * float(d))
        half = np.ceil(3.0 * sigma / vs).astype(int)
        nearest = np.rint(c).astype(int)
        if np.any(nearest < 0) or np.any(nearest >= shape):
            continue
        lo = np.maximum(nearest - half, 0)
        hi = np.minimum(nearest + half + 1, shape)
        axes = [(np.arange(lo[a], hi[a]) - c[a]) * vs[a] for a in range(3)]
        d2 = axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2
        g = np.exp(-d2 / (2.0 * sigma**2)).astype(np.float32)
        sl = tuple(slice(lo[a], hi[a]) for a in range(3))
        np.maximum(heat[sl], g, out=heat[sl])
        core = g >= np.exp(-0.5)
        size[sl][core] = d
        heat[tuple(nearest)] = 1.0
        size[tuple(nearest)] = d
        peak[tuple(nearest)] = True
    return heat, size, peak


def nms_peaks(heatmap: np.ndarray, voxel_size, *, threshold: float, min_distance_mm: float = 3.0,
              max_peaks: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Local maxima of ``heatmap`` (probabilities) above ``threshold``, at least ``min_distance_mm`` apart.

    Returns ``(centres_vox (K, 3) float, scores (K,))`` sorted by decreasing score; centres are refined
    to sub-voxel precision by the heatmap-weighted centroid of the 3x3x3 neighbourhood.
    """
    h = np.asarray(heatmap, dtype=np.float32)
    vs = np.asarray(voxel_size, dtype=float)
    half = np.maximum(np.floor(min_distance_mm / vs).astype(int), 1)
    t = torch.from_numpy(h)[None, None]
    pooled = F.max_pool3d(t, kernel_size=tuple(int(2 * q + 1) for q in half), stride=1,
                          padding=tuple(int(q) for q in half))[0, 0].numpy()
    cand = np.argwhere((h >= pooled) & (h >= threshold))
    if len(cand) == 0:
        return np.zeros((0, 3)), np.zeros(0)
    scores = h[tuple(cand.T)]
    order = np.argsort(-scores, kind="stable")
    cand, scores = cand[order], scores[order]
    kept = _greedy_suppression(cand * vs, min_distance_mm, max_peaks)
    cand, scores = cand[kept], scores[kept]
    return np.array([_refine(h, c) for c in cand], dtype=float).reshape(-1, 3), scores.astype(float)


def _greedy_suppression(points_mm: np.ndarray, min_distance_mm: float, max_keep: int) -> list[int]:
    """Indices of ``points_mm`` (sorted best first) kept by greedy suppression: a point is dropped when a kept
    one lies closer than ``min_distance_mm``; at most ``max_keep``.  Kept points are hashed into cubic cells of
    side ``min_distance_mm``, so each point is compared with the kept points of its 27 neighbouring cells only
    (linear time; the uncapped candidate lists of the recall benchmarks hold tens of thousands of peaks)."""
    kept: list[int] = []
    if min_distance_mm <= 0:
        return list(range(min(len(points_mm), int(max_keep))))
    cells: dict[tuple[int, int, int], list[np.ndarray]] = {}
    keys = np.floor(points_mm / min_distance_mm).astype(int)
    offsets = [(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)]
    limit = min_distance_mm**2
    for n, (p, key) in enumerate(zip(points_mm, map(tuple, keys))):
        near = [q for o in offsets for q in cells.get((key[0] + o[0], key[1] + o[1], key[2] + o[2]), ())]
        if near and np.min(np.sum((np.array(near) - p) ** 2, axis=1)) < limit:
            continue
        kept.append(n)
        cells.setdefault(key, []).append(p)
        if len(kept) >= max_keep:
            break
    return kept


def _refine(h: np.ndarray, c: np.ndarray) -> np.ndarray:
    lo = np.maximum(c - 1, 0)
    hi = np.minimum(c + 2, h.shape)
    patch = h[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].astype(float)
    w = np.clip(patch - 0.5 * patch.max(), 0, None)
    if w.sum() <= 0:
        return c.astype(float)
    idx = np.indices(patch.shape).reshape(3, -1).T + lo
    return (idx * w.reshape(-1, 1)).sum(0) / w.sum()
