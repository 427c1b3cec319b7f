"""PhysicsMaps -> normalised multi-channel float32 array ``[C, X, Y, Z]`` for the networks.

Channels (names used in model metadata):

- ``magnitude``: echo-combined magnitude divided by its median inside the mask, minus 1 (so tissue is ~0
  and hypointense blooming is negative), scaled by a robust spread.
- ``swi``: the same for the SWI image.
- ``local_field``: local field (ppm), robustly standardised inside the mask (median, 1.4826*MAD).
- ``chi``: susceptibility (ppm), robustly standardised inside the mask.
- ``chi_pos`` / ``chi_neg``: paramagnetic / diamagnetic parts (ppm, both >= 0) divided by the *chi*
  channel's robust scale (no centring, so zero stays zero and the sign split stays physical).

Every channel is zero outside the mask and clipped to ``[-clip, clip]``; with a ``domain`` (the magnitude
brain mask, a superset of the chi mask) the appearance channels (magnitude, swi) are kept in the domain, still
normalised with the statistics inside the mask, while the field/chi channels stay zero outside the mask.  The normalisation is computed
per subject (robust to scanner gain, B0, inversion method); the method and its constants are part of the
model metadata (:func:`normalisation_spec`), and the per-subject centre/scale values are returned so a
caller can record them.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from cmbdetect.physics.errors import InputError
from cmbdetect.physics.geometry import voxel_sizes
from cmbdetect.physics.maps import PhysicsMaps

#: All channels this module knows, in the default order.
ALL_CHANNELS: tuple[str, ...] = ("magnitude", "local_field", "chi", "chi_pos", "chi_neg")
#: Channels of the "no physics" ablation (what a magnitude/SWI-only detector sees).
APPEARANCE_CHANNELS: tuple[str, ...] = ("magnitude", "swi")
#: Clip limit of every normalised channel (in robust-spread units).
DEFAULT_CLIP: float = 12.0
_MAD_TO_SD = 1.4826


def normalisation_spec(*, clip: float = DEFAULT_CLIP) -> dict:
    """Description of the normalisation, stored in ``metadata.json`` under ``normalisation``."""
    return {
        "method": "robust-per-subject",
        "centre": "median inside mask (magnitude/swi: divide by median, then subtract 1)",
        "scale": "1.4826*MAD inside mask; chi_pos/chi_neg use the chi scale, no centring",
        "clip": float(clip),
        "outside_mask": 0.0,
    }


def robust_centre_scale(values: np.ndarray) -> tuple[float, float]:
    """Median and 1.4826*MAD of ``values`` (a regular subsample above 1e6 values; the standard deviation,
    or 1, when the MAD is 0)."""
    if values.size > 1_000_000:  # a regular subsample is plenty for a median / MAD and 4-8x faster
        values = values[:: values.size // 500_000]
    med = float(np.median(values))
    mad = float(np.median(np.abs(values - med))) * _MAD_TO_SD
    if not np.isfinite(mad) or mad <= 1e-12:
        mad = float(np.std(values)) or 1.0
    return med, mad


def _raw(maps: PhysicsMaps, name: str) -> np.ndarray:
    table = {
        "magnitude": maps.magnitude, "swi": maps.swi, "local_field": maps.local_field_ppm,
        "chi": maps.chi_ppm,
        # the sign split of chi, always: the maps' chi_pos/chi_neg come from chi-separation (R2') for
        # multi-echo data, which would give the network differently defined inputs per protocol
        "chi_pos": np.maximum(maps.chi_ppm, 0.0), "chi_neg": np.maximum(-maps.chi_ppm, 0.0),
    }
    if name not in table:
        raise InputError(f"unknown model channel {name!r}; known: {', '.join(table)}")
    arr = table[name]
    if arr is None or np.shape(arr) != maps.shape:
        raise InputError(f"physics map {name!r} is missing or not on the mask grid")
    return np.asarray(arr, dtype=np.float32)


def physics_channels(maps: PhysicsMaps, channels=ALL_CHANNELS, *,
                     clip: float = DEFAULT_CLIP, domain: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """Stack and normalise ``channels`` of ``maps``; ``domain`` (bool, optional): where the appearance channels
    are kept (default: the mask).

    Returns ``(array, stats)``: float32 ``[C, X, Y, Z]`` and ``{channel: {"centre": c, "scale": s}}`` in
    the channel's physical units (ppm for field/chi, image units for magnitude/swi).
    """
    mask = np.asarray(maps.mask, dtype=bool)
    if mask.sum() < 8:
        raise InputError("the brain mask is empty (fewer than 8 voxels); cannot build model inputs")
    keep = mask if domain is None else (np.asarray(domain, dtype=bool) | mask)
    out = np.zeros((len(channels), *mask.shape), dtype=np.float32)
    stats: dict[str, dict[str, float]] = {}
    chi_scale = None
    for c, name in enumerate(channels):
        raw = _raw(maps, name)
        inside = raw[mask]
        if name in ("magnitude", "swi"):
            med, _ = robust_centre_scale(inside)
            if med <= 0:
                med = float(np.mean(np.abs(inside))) or 1.0
            rel = raw / med - 1.0
            _, scale = robust_centre_scale(rel[mask])
            norm = rel / scale
            stats[name] = {"centre": med, "scale": scale * med}
        elif name in ("chi_pos", "chi_neg"):
            if chi_scale is None:
                _, chi_scale = robust_centre_scale(_raw(maps, "chi")[mask])
            norm = raw / chi_scale
            stats[name] = {"centre": 0.0, "scale": chi_scale}
        else:
            centre, scale = robust_centre_scale(inside)
            if name == "chi":
                chi_scale = scale
            norm = (raw - centre) / scale
            stats[name] = {"centre": centre, "scale": scale}
        np.clip(norm, -clip, clip, out=norm)
        norm[~(keep if name in APPEARANCE_CHANNELS else mask)] = 0.0
        out[c] = norm
    return out, stats


def resample_factors(affine: np.ndarray, target_spacing) -> np.ndarray | None:
    """Zoom factors (native/target voxel size per axis) to bring the grid to ``target_spacing`` mm,
    or ``None`` when every axis is within 10 % of it (work on the native grid then)."""
    if target_spacing is None:
        return None
    native = voxel_sizes(affine)
    factors = native / np.asarray(target_spacing, dtype=float)
    if np.all(np.abs(factors - 1.0) <= 0.10):
        return None
    return factors


def resample_channels(array: np.ndarray, factors) -> np.ndarray:
    """Linear resampling of ``[C, X, Y, Z]`` by per-axis zoom ``factors`` (new = old * factor).
    Voxel centre ``i`` of the input maps to ``i * (n_out - 1) / (n_in - 1)`` (``ndimage.zoom`` grid)."""
    return np.stack([ndimage.zoom(ch, factors, order=1, grid_mode=False) for ch in array]).astype(np.float32)


def map_back(centres_resampled: np.ndarray, in_shape, out_shape) -> np.ndarray:
    """Voxel coordinates on a resampled grid (``out_shape``) -> the native grid (``in_shape``)."""
    c = np.asarray(centres_resampled, dtype=float).reshape(-1, 3)
    ratio = (np.asarray(in_shape, float) - 1) / np.maximum(np.asarray(out_shape, float) - 1, 1)
    return c * ratio
