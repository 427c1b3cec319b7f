"""Acquisition fitness: can this acquisition (and its maps) carry a microbleed call?

:func:`assess_fitness` measures what decides it -- voxel size (in-plane and slice), B0 x longest TE (the phase a
microbleed's field accrues), number of echoes, brain coverage, and the field contrast-to-noise ratio of a
reference microbleed -- and compares them with the validated range (``FITNESS_*`` in
:mod:`cmbdetect.physics.constants`).  Outside it the maps are still computed and written, but no candidate may
be labelled microbleed: each :attr:`Fitness.reasons` entry says why in one plain sentence.

Pure numpy on arrays and voxel geometry.  Units: voxel sizes and extents mm, B0 T, TE s, fields ppm of B0.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .constants import (FITNESS_MAX_INPLANE_MM, FITNESS_MAX_SLICE_MM, FITNESS_MIN_B0_TE_T_S,
                        FITNESS_MIN_BRAIN_EXTENT_MM, FITNESS_MIN_FIELD_CNR,
                        FITNESS_REFERENCE_MICROBLEED_CHI_PPM, FITNESS_REFERENCE_MICROBLEED_DIAMETER_MM)


@dataclass(frozen=True)
class Fitness:
    """Whether an acquisition can carry a microbleed call.

    ``ok``: every measure lies in the validated range.  ``reasons``: one sentence per measure outside it (empty
    when ``ok``).  ``measures``: the measured values (JSON-able; ``None`` where not measurable).  ``limits``: the
    validated range they were compared with.
    """

    ok: bool
    reasons: tuple[str, ...]
    measures: dict = field(default_factory=dict)
    limits: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        """JSON-able record (maps meta, provenance)."""
        return {"ok": self.ok, "reasons": list(self.reasons), "measures": dict(self.measures),
                "limits": dict(self.limits)}


def fitness_limits() -> dict:
    """The validated range (from :mod:`cmbdetect.physics.constants`), as recorded with each assessment."""
    return {"max_inplane_voxel_mm": FITNESS_MAX_INPLANE_MM, "max_slice_mm": FITNESS_MAX_SLICE_MM,
            "min_b0_te_t_s": FITNESS_MIN_B0_TE_T_S, "min_brain_extent_mm": FITNESS_MIN_BRAIN_EXTENT_MM,
            "min_field_cnr": FITNESS_MIN_FIELD_CNR,
            "reference_microbleed": {"diameter_mm": FITNESS_REFERENCE_MICROBLEED_DIAMETER_MM,
                                     "chi_ppm": FITNESS_REFERENCE_MICROBLEED_CHI_PPM}}


def field_noise_ppm(local_field_ppm: np.ndarray, mask: np.ndarray) -> float | None:
    """Voxel-scale noise (ppm) of a local field: robust standard deviation (1.4826 x MAD) of each voxel's
    difference from the mean of its 6 face neighbours, over voxels whose neighbours all lie in ``mask``,
    divided by sqrt(7/6) (the gain of that difference on white noise).  Smooth tissue contrast cancels; veins and
    lesions are outliers the MAD ignores.  ``None`` when fewer than 100 such voxels exist."""
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        return None
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(m))  # the mask's bounding box only
    m = m[box]
    f = np.asarray(local_field_ppm)[box].astype(np.float32)
    inner = ndimage.binary_erosion(m, structure=ndimage.generate_binary_structure(3, 1), border_value=0)
    if inner.sum() < 100:
        return None
    neighbours = np.zeros_like(f)
    for a in range(3):
        for shift in (1, -1):
            neighbours += np.roll(f, shift, axis=a)
    r = (f - neighbours / np.float32(6.0))[inner].astype(np.float64)
    mad = float(np.median(np.abs(r - np.median(r))))
    return float(1.4826 * mad / np.sqrt(7.0 / 6.0))


def reference_microbleed_peak_ppm(voxel_size_mm, affine=None) -> float:
    """Largest |field| (ppm) that a voxel grid measures of the reference microbleed
    (:data:`~cmbdetect.physics.constants.FITNESS_REFERENCE_MICROBLEED_DIAMETER_MM`, ``..._CHI_PPM``) centred on a
    voxel: the closed-form sphere field averaged over each voxel (partial volume), B0 along scanner z.  Coarse
    voxels average a small lesion's dipole field away."""
    from .forward import voxel_averaged_sphere_field

    vs = np.asarray(voxel_size_mm, dtype=float).reshape(3)
    a = np.diag([*vs, 1.0]) if affine is None else np.array(affine, dtype=float)
    a[:3, 3] = 0.0
    radius = FITNESS_REFERENCE_MICROBLEED_DIAMETER_MM / 2.0
    half = np.ceil(3.0 * radius / vs).astype(int) + 1
    shape = tuple(int(2 * h + 1) for h in half)
    f = voxel_averaged_sphere_field(FITNESS_REFERENCE_MICROBLEED_CHI_PPM, radius, shape, a, half.astype(float))
    return float(np.abs(f).max())


def _brain_extents_mm(mask: np.ndarray, vs: np.ndarray, affine) -> tuple[list[float], float | None]:
    """Extent (mm) of the mask along each voxel axis (occupied planes x voxel edge) and along scanner z."""
    m = np.asarray(mask, dtype=bool)
    per_axis = [float(np.count_nonzero(m.any(axis=tuple(b for b in range(3) if b != a))) * vs[a])
                for a in range(3)]
    if affine is None or not m.any():
        return per_axis, None
    aff = np.asarray(affine, dtype=float)
    z_of_plane = [np.nonzero(m.any(axis=tuple(b for b in range(3) if b != a)))[0] for a in range(3)]
    lo = aff[2, 3] + sum(min(aff[2, a] * z_of_plane[a][0], aff[2, a] * z_of_plane[a][-1]) for a in range(3))
    hi = aff[2, 3] + sum(max(aff[2, a] * z_of_plane[a][0], aff[2, a] * z_of_plane[a][-1]) for a in range(3))
    return per_axis, float(hi - lo + np.abs(aff[2, :3]).max())


def assess_fitness(*, voxel_size_mm, b0_t: float, te_s, mask, local_field_ppm=None, affine=None) -> Fitness:
    """Whether this acquisition can carry a microbleed call, and why not.

    Parameters
    ----------
    voxel_size_mm : three voxel edges (mm).  The coarsest is the slice thickness, the finer two are "in-plane"
        (orientation-agnostic: a sagittal 3D acquisition is judged like an axial one).
    b0_t : field strength (T).  te_s : echo times (s).
    mask : bool brain mask where the local field is valid (coverage; noise).
    local_field_ppm : local field (ppm) for the field CNR; ``None`` skips that measure.
    affine : optional 4x4 voxel -> scanner RAS (mm): B0 direction of the reference field, extent along z.

    Reasons fire when in-plane > :data:`FITNESS_MAX_INPLANE_MM`, slice > :data:`FITNESS_MAX_SLICE_MM`,
    B0 x TE_max < :data:`FITNESS_MIN_B0_TE_T_S`, the brain is thinner than :data:`FITNESS_MIN_BRAIN_EXTENT_MM`
    along a voxel axis, or the field CNR is below :data:`FITNESS_MIN_FIELD_CNR` (limits themselves pass).
    """
    vs = np.asarray(voxel_size_mm, dtype=float).reshape(3)
    te = np.atleast_1d(np.asarray(te_s, dtype=float))
    m = np.asarray(mask, dtype=bool)
    ordered = np.sort(vs)
    inplane, slice_mm = float(ordered[1]), float(ordered[2])
    b0_te = float(b0_t) * float(te.max())
    extents, z_extent = _brain_extents_mm(m, vs, affine)
    measures: dict = {"voxel_size_mm": [round(float(v), 4) for v in vs], "inplane_voxel_mm": round(inplane, 4),
                      "slice_mm": round(slice_mm, 4), "b0_t": float(b0_t), "te_max_s": float(te.max()),
                      "b0_te_max_t_s": round(b0_te, 5), "n_echoes": int(te.size),
                      "brain_volume_ml": round(float(m.sum() * np.prod(vs)) / 1000.0, 2),
                      "brain_extent_mm": [round(e, 1) for e in extents],
                      "brain_extent_scanner_z_mm": None if z_extent is None else round(z_extent, 1),
                      "field_noise_ppm": None, "reference_microbleed_peak_ppm": None, "field_cnr": None}
    reasons = []
    if inplane > FITNESS_MAX_INPLANE_MM + 1e-6 or slice_mm > FITNESS_MAX_SLICE_MM + 1e-6:
        reasons.append(f"voxels {' x '.join(f'{v:.2g}' for v in vs)} mm are coarser than the validated "
                       f"{FITNESS_MAX_INPLANE_MM:g} mm in-plane / {FITNESS_MAX_SLICE_MM:g} mm slice: small microbleeds "
                       "are averaged away and the detector was not trained on such voxels")
    if b0_te < FITNESS_MIN_B0_TE_T_S - 1e-9:
        reasons.append(f"B0 x longest TE is {b0_te:.3f} T*s ({float(b0_t):g} T, TE {1000 * te.max():.1f} ms), below the "
                       f"validated {FITNESS_MIN_B0_TE_T_S:g} T*s (TE {1000 * FITNESS_MIN_B0_TE_T_S / float(b0_t):.0f} ms "
                       "at this field): too little phase contrast and blooming for a microbleed call")
    if m.any() and min(extents) < FITNESS_MIN_BRAIN_EXTENT_MM - 1e-6:
        reasons.append(f"the brain mask is only {min(extents):.0f} mm thick along a voxel axis (at least "
                       f"{FITNESS_MIN_BRAIN_EXTENT_MM:g} mm are needed): background field removal has no room")
    if local_field_ppm is not None:
        noise = field_noise_ppm(local_field_ppm, m)
        peak = reference_microbleed_peak_ppm(vs, affine)
        measures["reference_microbleed_peak_ppm"] = round(peak, 5)
        if noise is not None and noise > 0:
            cnr = peak / noise
            measures.update(field_noise_ppm=round(float(noise), 5), field_cnr=round(float(cnr), 2))
            if cnr < FITNESS_MIN_FIELD_CNR:
                reasons.append(f"the field of a {FITNESS_REFERENCE_MICROBLEED_DIAMETER_MM:g} mm microbleed "
                               f"({peak:.3f} ppm) is only {cnr:.1f} times the field noise ({noise:.3f} ppm; at least "
                               f"{FITNESS_MIN_FIELD_CNR:g} is needed): the phase is too noisy for a microbleed call")
    return Fitness(ok=not reasons, reasons=tuple(reasons), measures=measures, limits=fitness_limits())


def calls_withheld_reason(fitness: Fitness | dict | None, chi_quality_warning: str | None = None) -> str | None:
    """The reason no microbleed may be called on these maps (the fitness reasons and a failed chi quality check,
    joined by "; "), or ``None`` when calls are allowed."""
    reasons = list(fitness.reasons if isinstance(fitness, Fitness) else (fitness or {}).get("reasons", []))
    if chi_quality_warning:
        reasons.append(str(chi_quality_warning))
    return "; ".join(reasons) or None
