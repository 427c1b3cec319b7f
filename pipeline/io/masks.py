"""A user's brain mask (NIfTI, nonzero = brain) checked against the acquisition grid: ``--mask`` of the CLI and
the ``mask_file`` of the workflow read by one rule."""
from __future__ import annotations

import os

import numpy as np

from cmbdetect.physics.errors import InputError
from cmbdetect.physics.mask import validate_mask
from cmbdetect.pipeline.io.acquisition import Acquisition
from cmbdetect.pipeline.io.nifti import AFFINE_ATOL_MM, read_nifti_volume


def load_user_mask(path: str | os.PathLike, acq_or_affine: Acquisition | np.ndarray,
                   shape: tuple[int, int, int] | None = None) -> np.ndarray:
    """A user brain mask (NIfTI, nonzero = brain) as bool ``[i, j, k]``, checked against the grid of
    ``acq_or_affine`` (an :class:`Acquisition`, or an affine plus ``shape``).  A different shape or
    affine, NaNs, or an empty mask raise :class:`InputError` naming the file."""
    if isinstance(acq_or_affine, Acquisition):
        affine, shape = acq_or_affine.affine, acq_or_affine.shape
    else:
        affine = np.asarray(acq_or_affine, dtype=float)
        if shape is None:
            raise ValueError("load_user_mask needs the grid shape with a bare affine")
    data, mask_affine = read_nifti_volume(path, what="mask")
    try:
        mask = validate_mask(data, shape)
    except InputError as exc:
        raise InputError(f"mask {path}: {exc}") from exc
    if not np.allclose(mask_affine, affine, rtol=0, atol=AFFINE_ATOL_MM):
        raise InputError(f"mask {path} has a different affine (orientation/position) than the images")
    return mask
