"""Container for the physics outputs of one subject, all on the acquisition grid."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class PhysicsMaps:
    """Physics maps of one subject on the acquisition grid ``[i, j, k]``.

    Attributes
    ----------
    mask : bool brain mask.
    magnitude : float32 first-echo (or echo-combined) magnitude, arbitrary units.
    field_ppm : total field (unwrapped / fitted across echoes), ppm of B0.
    local_field_ppm : tissue field after background removal, ppm of B0 (zero outside ``mask``).
    chi_ppm : susceptibility, ppm (mean inside the mask referenced to 0).
    chi_pos, chi_neg : paramagnetic (>= 0) and diamagnetic (>= 0, magnitude of the negative part)
        susceptibility, ppm.
    swi : susceptibility-weighted image (magnitude x phase mask^n), same units as magnitude.
    mip : minimum-intensity projection of ``swi`` over a sliding slab along the through-slice axis.
    r2star : R2* in 1/s (multi-echo only; ``None`` for single echo).
    brain_plain, brain_guarded : the automatic brain masks of ``magnitude`` without and with the scalp guard
        (:func:`cmbdetect.physics.mask.brain_masks`), as the chain computed them on the way to ``mask``, so that the
        detection domain need not compute them again; ``None`` when the mask was supplied or the maps come from
        elsewhere (a cache, a direct construction): the domain then computes them.
    brain_domain : the "brain" detection domain the chain derived from those masks and ``mask``
        (:func:`cmbdetect.physics.domain.brain_domain`); ``None`` where they are.
    affine : 4x4 voxel -> scanner RAS (mm).
    b0 : field strength (T).
    meta : free-form provenance of the processing (methods, parameters, warnings).
    """

    mask: np.ndarray
    magnitude: np.ndarray
    field_ppm: np.ndarray
    local_field_ppm: np.ndarray
    chi_ppm: np.ndarray
    chi_pos: np.ndarray
    chi_neg: np.ndarray
    swi: np.ndarray
    mip: np.ndarray
    affine: np.ndarray
    b0: float
    r2star: np.ndarray | None = None
    brain_plain: np.ndarray | None = None
    brain_guarded: np.ndarray | None = None
    brain_domain: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.mask.shape)
