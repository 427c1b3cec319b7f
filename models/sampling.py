"""Balanced patch sampling with importance weights, and hard-negative mining for stage 2.

The training population is a finite set of patches: every subject's volume tiled by patch origins on a
regular grid (:func:`patch_origins`).  Uniform sampling almost never shows a lesion, so
:class:`BalancedPatchSampler` draws from the mixture

    p_s(i) = (1 - q) / N + q * [i positive] / N_pos

(``q`` = ``positive_fraction``; positive = the patch contains a lesion centre).  Each drawn patch carries
the importance weight ``w_i = p_u(i) / p_s(i)`` with ``p_u = 1/N``, so ``mean(w_i * L_i)`` over a batch is
an unbiased estimate of the full-data mean loss ``(1/N) sum_i L_i`` (``E_s[w L] = sum_i p_s (p_u/p_s) L``).
"""
from __future__ import annotations

import numpy as np

from cmbdetect.models.detection import CLASSES


def patch_origins(shape, patch, stride) -> np.ndarray:
    """Origins ``(M, 3)`` of patches of size ``patch`` tiling ``shape`` with ``stride`` (the last origin
    on each axis is clamped so the volume's far edge is covered).  Shapes smaller than the patch give
    origin 0 on that axis (the caller pads)."""
    axes = []
    for s, p, st in zip(shape, np.broadcast_to(patch, 3), np.broadcast_to(stride, 3)):
        last = max(int(s) - int(p), 0)
        o = list(range(0, last + 1, int(st)))
        if o[-1] != last:
            o.append(last)
        axes.append(o)
    return np.array(np.meshgrid(*axes, indexing="ij")).reshape(3, -1).T


def patches_containing(origins: np.ndarray, patch, centres_vox, *, margin: int = 2) -> np.ndarray:
    """Bool ``(M,)``: patch contains at least one centre at least ``margin`` voxels from its border."""
    o = np.asarray(origins)[:, None, :]
    c = np.asarray(centres_vox, dtype=float).reshape(1, -1, 3)
    p = np.broadcast_to(np.asarray(patch), 3)
    if c.shape[1] == 0:
        return np.zeros(len(origins), dtype=bool)
    inside = (c >= o + margin) & (c <= o + p - 1 - margin)
    return inside.all(axis=2).any(axis=1)


class BalancedPatchSampler:
    """Draws patch indices with a guaranteed share of positives and returns importance weights.

    ``positive``: bool ``(N,)`` over the whole patch population (all subjects).  ``positive_fraction=None``
    gives uniform sampling (weights all 1) - the "no balancing" baseline.
    """

    def __init__(self, positive, *, positive_fraction: float | None = 0.5, seed: int = 0):
        self.positive = np.asarray(positive, dtype=bool)
        n = self.positive.size
        if n == 0:
            raise ValueError("the patch population is empty")
        n_pos = int(self.positive.sum())
        p_u = np.full(n, 1.0 / n)
        if positive_fraction is None or n_pos == 0 or n_pos == n:
            self.p_sampling = p_u
        else:
            q = float(positive_fraction)
            self.p_sampling = (1 - q) / n + q * self.positive / n_pos
        self.weights = p_u / self.p_sampling
        self.rng = np.random.default_rng(seed)

    def sample(self, size: int, *, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``size`` indices (with replacement) and their importance weights (``rng`` overrides the
        sampler's own generator, e.g. one seeded per training step for exact resumption)."""
        idx = (rng or self.rng).choice(self.positive.size, size=size, p=self.p_sampling)
        return idx, self.weights[idx]


def label_candidates(candidates_vox, voxel_size, lesion_vox, lesion_kinds, *, hit_mm: float = 5.0,
                     label_map: np.ndarray | None = None, lesion_diameters_mm=None) -> np.ndarray:
    """Stage-2 class index (into :data:`CLASSES`) for each candidate: the kind of the nearest lesion
    within ``hit_mm`` (mm, anisotropic voxels), or within its radius when ``lesion_diameters_mm`` is given and
    the radius is larger (a candidate on the rim of a 10 mm bleed is on the bleed, not a hard negative); else
    ``vein`` if ``label_map`` (codes 0/1/2/3) is 3 at the candidate voxel; else ``other``.  Unmatched
    candidates are the hard negatives of stage 1."""
    cand = np.asarray(candidates_vox, dtype=float).reshape(-1, 3)
    les = np.asarray(lesion_vox, dtype=float).reshape(-1, 3)
    vs = np.asarray(voxel_size, dtype=float)
    reach = np.full(len(les), float(hit_mm))
    if lesion_diameters_mm is not None:
        reach = np.maximum(reach, 0.5 * np.nan_to_num(np.asarray(lesion_diameters_mm, dtype=float).reshape(-1)))
    out = np.full(len(cand), CLASSES.index("other"), dtype=np.int64)
    for n, c in enumerate(cand):
        if len(les):
            d = np.sqrt((((les - c) * vs) ** 2).sum(axis=1))
            j = int(np.argmin(d / reach))
            if d[j] <= reach[j] and lesion_kinds[j] in CLASSES:
                out[n] = CLASSES.index(lesion_kinds[j])
                continue
        if label_map is not None:
            ijk = np.clip(np.rint(c).astype(int), 0, np.array(label_map.shape) - 1)
            if label_map[tuple(ijk)] == 3:
                out[n] = CLASSES.index("vein")
    return out


def vein_points(label_map: np.ndarray, *, n: int, seed: int = 0, voxel_size=(1.0, 1.0, 1.0),
                min_distance_mm: float = 6.0) -> np.ndarray:
    """Up to ``n`` voxels on veins (label 3), at least ``min_distance_mm`` apart: vein examples for stage 2
    even when stage 1 does not (yet) fire on veins."""
    pts = np.argwhere(np.asarray(label_map) == 3)
    if len(pts) == 0:
        return np.zeros((0, 3))
    rng = np.random.default_rng(seed)
    pts = pts[rng.permutation(len(pts))]
    vs = np.asarray(voxel_size, dtype=float)
    kept: list[np.ndarray] = []
    for p in pts:
        if all(np.sum(((p - k) * vs) ** 2) >= min_distance_mm**2 for k in kept):
            kept.append(p)
            if len(kept) >= n:
                break
    return np.array(kept, dtype=float)
