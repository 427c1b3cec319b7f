"""The one check of user arrays: dimensionality and finiteness, with a one-line :class:`InputError`."""
from __future__ import annotations

import numpy as np

from cmbdetect.physics.errors import InputError


def finite_array(a, name: str, *, ndim: int | None = None, dtype=np.float32,
                 what: str | None = None) -> np.ndarray:
    """``a`` as a ``dtype`` array (``None``: its own dtype), checked: ``ndim`` dimensions (when given; else ``what`` names what was
    needed, e.g. "phase unwrapping needs a 3D phase volume") and no NaN or infinite value.  Raises
    :class:`InputError` ("<name> contains NaN or infinite values")."""
    x = np.asarray(a, dtype=dtype)
    if ndim is not None and x.ndim != ndim:
        need = what or f"{name} must be {ndim}D"
        raise InputError(f"{need}, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise InputError(f"{name} contains NaN or infinite values")
    return x
