"""Stage 1: memory-bounded tiled inference of the centre heatmap and candidate extraction.

The volume is cut into overlapping cubic tiles (``tile`` voxels, ``overlap`` voxels shared with each
neighbour); each tile's output is kept only in its core (the outer ``overlap/2`` is discarded except at the
volume border), so with batch norm in eval mode the result does not depend on the tiling and peak memory is
that of one tile, not of the volume.
"""
from __future__ import annotations

import numpy as np
import torch

from cmbdetect.models.heatmap import nms_peaks
from cmbdetect.models.networks import CentreNet3D
from cmbdetect.models.sampling import patch_origins


def _pad_to(array: np.ndarray, shape) -> np.ndarray:
    pad = [(0, 0)] + [(0, int(t) - int(s)) for s, t in zip(array.shape[1:], shape)]
    return np.pad(array, pad)


def tile_sizes(shape, *, tile: int, overlap: int, multiple: int) -> np.ndarray:
    """Per-axis tile size: the fewest tiles of at most ``tile`` voxels that cover each axis with
    ``overlap``, each made as small as possible (multiple of ``multiple``) to limit recomputation."""
    out = []
    for n_vox in shape:
        if n_vox <= tile:
            out.append(int(n_vox))
            continue
        n = int(np.ceil((n_vox - overlap) / (tile - overlap)))
        size = int(np.ceil((n_vox + (n - 1) * overlap) / n))
        out.append(min(int(-(-size // multiple) * multiple), int(n_vox)))
    return np.array(out)


def _mirror(a: np.ndarray, axis: int, shift: int) -> np.ndarray:
    """``b[i] = a[n - 1 - shift - i]`` along ``axis`` (zero where that falls outside).  With ``shift = s - 1``
    it maps the output grid of a stride-``s`` network onto itself (output ``o`` <-> ``n/s - 1 - o``)."""
    b = np.roll(np.flip(a, axis=axis), -shift, axis=axis)
    idx = [slice(None)] * a.ndim
    idx[axis] = slice(a.shape[axis] - shift, None)
    b[tuple(idx)] = 0
    return b


def predict_volume(net: CentreNet3D, channels: np.ndarray, *, tile: int = 160, overlap: int = 16,
                   flips=((),)) -> tuple[np.ndarray, np.ndarray]:
    """Heatmap probabilities and diameters (mm) on the output grid (input grid / ``net.stride``).

    ``channels``: float32 ``[C, X, Y, Z]``.  Returns two float32 arrays of shape
    ``ceil(X / stride), ...``; output voxel ``o`` is centred on input voxel ``stride * o``.  Tiles are at
    most ``tile`` voxels per axis (peak memory is that of one tile).  ``flips``: test-time augmentation, a
    sequence of spatial axis sets (0-2) to mirror; the result is the mean over those passes (``((),)``:
    one plain pass).  Mirrors are aligned exactly with the stride-``s`` output grid (input mirrored about
    voxel ``(n - s) / 2``, with ``n`` padded to a multiple of ``s``).
    """
    s = net.stride
    n = np.array(channels.shape[1:])
    out_n = -(-n // s)
    if tuple(map(tuple, flips)) == ((),):
        return _predict_once(net, channels, tile=tile, overlap=overlap)
    x = _pad_to(channels.astype(np.float32, copy=False), out_n * s)
    heat = np.zeros(tuple(out_n), np.float32)
    size = np.zeros(tuple(out_n), np.float32)
    for axes in flips:
        xf = x
        for a in axes:
            xf = _mirror(xf, a + 1, s - 1)
        h, z = _predict_once(net, np.ascontiguousarray(xf), tile=tile, overlap=overlap)
        for a in axes:
            h, z = np.flip(h, a), np.flip(z, a)
        heat += h
        size += z
    return heat / len(flips), size / len(flips)


def _predict_once(net: CentreNet3D, channels: np.ndarray, *, tile: int, overlap: int) -> tuple[np.ndarray, np.ndarray]:
    m = net.multiple
    s = net.stride
    tile = max(m, int(tile) // m * m)
    overlap = int(overlap) // m * m
    in_shape = np.array(channels.shape[1:])
    padded = np.maximum(-(-in_shape // m) * m, 0)
    tiles = tile_sizes(padded, tile=tile, overlap=overlap, multiple=m)
    x = _pad_to(channels.astype(np.float32, copy=False), padded)
    out_shape = tuple(int(v) for v in padded // s)
    heat = np.zeros(out_shape, dtype=np.float32)
    size = np.zeros(out_shape, dtype=np.float32)
    steps = np.maximum(tiles - overlap, m)
    crop = overlap // (2 * s) if overlap else 0
    net.eval()
    with torch.inference_mode():
        for o in patch_origins(padded, tiles, steps):
            sl = (slice(None),) + tuple(slice(int(a), int(a + t)) for a, t in zip(o, tiles))
            y = net(torch.from_numpy(np.ascontiguousarray(x[sl]))[None])[0].numpy()
            lo = [0 if a == 0 else crop for a in o]
            hi = [t // s if a + t >= p else t // s - crop for a, t, p in zip(o, tiles, padded)]
            src = tuple(slice(a, b) for a, b in zip(lo, hi))
            dst = tuple(slice(int(a // s + l), int(a // s + h)) for a, l, h in zip(o, lo, hi))
            heat[dst] = 1.0 / (1.0 + np.exp(-y[0][src]))
            size[dst] = y[1][src]
    keep = tuple(slice(0, int(-(-n // s))) for n in in_shape)
    return heat[keep], size[keep]


def find_candidates(heat: np.ndarray, size: np.ndarray, *, voxel_size, stride: int, threshold: float,
                    min_distance_mm: float = 3.0, max_candidates: int = 200,
                    mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Peaks of ``heat`` -> ``(centres_vox (K,3) on the input grid, scores (K,), diameters_mm (K,))``.

    ``voxel_size`` is the *input* grid's (mm); distances for NMS are measured in mm on the output grid
    (voxel size ``stride * voxel_size``).  Candidates whose nearest input voxel is outside ``mask`` are
    dropped.
    """
    out_vs = np.asarray(voxel_size, dtype=float) * stride
    centres, scores = nms_peaks(heat, out_vs, threshold=threshold, min_distance_mm=min_distance_mm,
                                max_peaks=4 * max_candidates)
    diam = np.array([size[tuple(np.clip(np.rint(c).astype(int), 0, np.array(size.shape) - 1))] for c in centres])
    centres = centres * stride
    if mask is not None and len(centres):
        ijk = np.clip(np.rint(centres).astype(int), 0, np.array(mask.shape) - 1)
        inside = mask[tuple(ijk.T)]
        centres, scores, diam = centres[inside], scores[inside], diam[inside]
    k = min(len(scores), int(max_candidates))
    return centres[:k].reshape(-1, 3), scores[:k], diam[:k].astype(float)
