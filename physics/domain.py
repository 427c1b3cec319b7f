"""Where detection looks, and the region of one candidate's source: rules on the physics maps.

* :func:`brain_domain` / :func:`detection_domain`: the voxels the detector may place candidates in (the chi mask,
  or with ``"brain"`` the magnitude brain mask as well), on the acquisition grid.
* :func:`candidate_region`: the connected source region around a candidate centre, from the sign and strength of
  chi (ppm), on which the lesion features (:func:`cmbdetect.physics.sources.lesion_features`) are measured.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from cmbdetect.physics.errors import InputError
from cmbdetect.physics.geometry import voxel_sizes
from cmbdetect.physics.maps import PhysicsMaps
from cmbdetect.physics.mask import brain_masks, close_surface_notches


def brain_domain(mask: np.ndarray, plain: np.ndarray, guarded: np.ndarray) -> np.ndarray:
    """The "brain" detection domain from the chi ``mask`` and the magnitude brain masks without (``plain``) and
    with (``guarded``) the scalp guard (:func:`cmbdetect.physics.mask.brain_masks`): the guarded brain mask plus
    the chi mask where it reaches beyond the plain one, never into what the guard cut (bool)."""
    m = np.asarray(mask, bool)
    return np.asarray(guarded, bool) | (m & ~np.asarray(plain, bool))


#: Detection domains (metadata ``inference.domain``; a model without the key uses "mask").
DOMAINS = ("mask", "brain")


def detection_domain(maps: PhysicsMaps, kind: str = "mask", *, close_mm: float = 0.0) -> np.ndarray:
    """Where the models look for lesions, on the native grid.

    ``"mask"``: the chi mask (``maps.mask``).  ``"brain"``: that mask plus the automatic brain mask of the
    magnitude (:func:`cmbdetect.physics.mask.brain_mask`, the one the physics chain starts from): the rim that
    V-SHARP erodes and surface zones dropped for an unreliable field, where a juxtacortical bleed is still
    visible on the magnitude.  ``close_mm`` > 0 (with "brain"): surface notches narrower than about
    ``2 * close_mm`` are filled (:func:`cmbdetect.physics.mask.close_surface_notches`): the blooming void of a
    cortical bleed that reaches the brain surface is dark like the background, so the magnitude threshold cuts
    it out of the brain mask.  What the brain mask's scalp guard would cut
    (:func:`cmbdetect.physics.mask.brain_masks`) is left out of the domain even where the physics chain keeps it
    (the chain only cuts a whole scalp shell, so as not to move its field-reliability mask): patches of bright
    scalp are no place to look for microbleeds.  A supplied mask (``meta["mask"] == "supplied"``) or placeholder
    magnitude (a local field given directly) keeps ``maps.mask``.  The "brain" domain is ``maps.brain_domain`` when the chain computed it
    (:func:`brain_domain`), else it is computed here from the maps' (or the magnitude's) brain masks."""
    mask = np.asarray(maps.mask, dtype=bool)
    if kind not in DOMAINS:
        raise InputError(f"unknown detection domain {kind!r}; use one of {', '.join(DOMAINS)}")
    meta = maps.meta or {}
    if kind == "mask" or meta.get("mask") == "supplied" or "magnitude" in meta.get("placeholders", ()):
        return mask
    vs = voxel_sizes(maps.affine)
    brain = maps.brain_domain  # the chain's, when it computed it
    if brain is None:
        plain, guarded = maps.brain_plain, maps.brain_guarded
        if plain is None or guarded is None:
            try:
                plain, guarded = brain_masks(maps.magnitude, vs)
            except InputError:
                return mask
        brain = brain_domain(mask, plain, guarded)
    return close_surface_notches(np.asarray(brain, bool), close_mm, vs)  # close_mm <= 0: the domain as it is


def candidate_region(chi_ppm: np.ndarray, centre, voxel_size, *, chi_scale: float,
                     search_mm: float = 2.0) -> np.ndarray:
    """Bool region of the source around ``centre`` (voxel coords) inside ``chi_ppm`` (a crop).

    The strongest |chi| voxel within ``search_mm`` gives the sign ``s``; the region is the connected set
    of voxels with ``s * chi > max(3 * chi_scale, 0.3 * peak)`` containing it (else a 1.5 mm ball, or the nearest voxel
    on coarse grids).
    Its shape (elongation, sphericity) is what separates veins from round bleeds.
    """
    vs = np.asarray(voxel_size, dtype=float)
    idx = np.indices(chi_ppm.shape, dtype=float)
    d2 = sum(((idx[a] - centre[a]) * vs[a]) ** 2 for a in range(3))
    near = d2 <= search_mm**2
    if not near.any():
        near = d2 <= d2.min()
    vals = np.where(near, np.abs(chi_ppm), -1.0)
    peak_idx = np.unravel_index(int(np.argmax(vals)), chi_ppm.shape)
    sign = 1.0 if chi_ppm[peak_idx] >= 0 else -1.0
    peak = abs(float(chi_ppm[peak_idx]))
    above = sign * chi_ppm > max(3.0 * chi_scale, 0.3 * peak)
    if above[peak_idx]:
        lab, _ = ndimage.label(above)
        region = lab == lab[peak_idx]
        if region.sum() >= 1:
            return region
    return d2 <= max(1.5**2, float(d2.min()))  # never empty: at least the voxel nearest the centre
