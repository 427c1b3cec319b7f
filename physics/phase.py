"""Phase units, sign and the phase <-> field conversion.

Project convention (one place): phase in radians, a paramagnetic source raises the local frequency,

    phase = +2*pi * gamma_bar * B0 * (field_ppm * 1e-6) * TE

with ``gamma_bar = constants.GAMMA_BAR_HZ_PER_T`` (Hz/T), B0 in tesla, TE in seconds.  Vendor phase
is rescaled to radians here (:func:`rescale_phase`); a dataset with the opposite sign convention is
flipped once at reading (:func:`apply_phase_sign`), never later.

Vendor units (values after any DICOM RescaleSlope/Intercept): Siemens -4096..4095 (or 0..4095 unsigned,
``uint12``) for -pi..pi; Philips and GE milliradians (+-3142, ``mrad``) or radians; the DICOM reader
chooses among these from the headers (:mod:`cmbdetect.pipeline.io.dicom_vendors`).  No unit rule changes
the sign: whether a vendor's stored phase rises or falls for a paramagnetic source is a matter of
``--phase-sign`` (see :func:`apply_phase_sign`).
"""
from __future__ import annotations

import numpy as np

from cmbdetect.physics.checks import finite_array
from cmbdetect.physics.constants import GAMMA_BAR_HZ_PER_T
from cmbdetect.physics.errors import InputError

#: Units accepted by :func:`rescale_phase` (besides ``"scale:<max>"``).
PHASE_UNITS = ("auto", "rad", "mrad", "siemens", "uint12")

_PI_TOL = np.pi * (1.0 + 1e-3)


def wrap_phase(phase) -> np.ndarray:
    """Wrap radians to [-pi, pi) (float32)."""
    p = np.asarray(phase, dtype=np.float64)
    w = (np.mod(p + np.pi, 2 * np.pi) - np.pi).astype(np.float32)
    w[w >= np.pi] = -np.float32(np.pi)  # float32 rounding can land on +pi
    return w


def _is_integer_valued(a: np.ndarray) -> bool:
    if np.issubdtype(a.dtype, np.integer):
        return True
    sample = a.ravel()[:: max(1, a.size // 200_000)]
    return bool(np.all(np.abs(sample - np.round(sample)) < 1e-3))


def _parse_scale(units: str) -> float:
    try:
        value = float(units.split(":", 1)[1])
    except (IndexError, ValueError):
        raise InputError(f"--phase-units {units!r}: expected scale:<max>, e.g. scale:0.0036744") from None
    if not np.isfinite(value) or value <= 0:
        raise InputError(f"--phase-units {units!r}: the scale maximum must be a positive number")
    return value


def detect_phase_units(phase) -> str:
    """Guess the units of a raw phase array: ``"rad"``, ``"siemens"`` or ``"uint12"``.

    Rules: values within [-pi, pi] reaching at least 0.05*pi (or within [0, 2*pi]) -> radians, except
    a range of exactly +-1 (phase normalised to +-1 is common and would be read pi times too small);
    non-integer values reaching +-2830..3173 -> milliradians (Philips phase after RescaleSlope/Intercept);
    integer-valued data within -4096..4095 with negative values -> Siemens (x*pi/4096), unless the
    extreme is 3100..3142 (milliradians? refused as ambiguous); integer-valued
    data within 0..4095 -> 12-bit unsigned (x*2*pi/4096 - pi).  Anything else (e.g. a tiny range
    such as +-0.0037, or 0..65535) raises :class:`InputError` naming ``--phase-units``.
    """
    a = np.asarray(phase)
    if a.size == 0:
        raise InputError("phase image is empty")
    finite_array(a, "phase", dtype=None)
    lo, hi = float(a.min()), float(a.max())
    amax = max(abs(lo), abs(hi))
    if amax == 0.0:
        return "rad"
    if 0.995 <= amax <= 1.0 + 1e-6:
        raise InputError(f"phase values {lo:.6g}..{hi:.6g} look normalised to +-1; give --phase-units "
                         "(scale:1 if +-1 means +-pi, or rad)")
    if amax <= _PI_TOL and amax >= 0.05 * np.pi:
        return "rad"
    if lo >= 0.0 and hi <= 2 * _PI_TOL and hi >= 0.4 * np.pi:
        return "rad"
    if not _is_integer_valued(a) and lo < 0 and 0.9 * 1000 * np.pi <= amax <= 1000 * np.pi * 1.01:
        return "mrad"  # real-world values +-3142 that are not integers: milliradians (Philips rescaled)
    if _is_integer_valued(a) and hi > 2 * _PI_TOL:
        if lo < 0 and 3100 <= amax <= 1000 * np.pi + 0.6:
            raise InputError(f"phase values {lo:.6g}..{hi:.6g} look like milliradians (+-3142, e.g. Philips) "
                             "or a partial Siemens range; give --phase-units (mrad or siemens)")
        if lo >= -4096 and hi <= 4095 and lo < 0:
            return "siemens"
        if lo >= 0 and hi <= 4095:
            return "uint12"
    raise InputError(f"phase values {lo:.6g}..{hi:.6g} are not radians or a known vendor range; "
                     "give --phase-units (rad, mrad, siemens, uint12 or scale:<max>)")


def rescale_phase(phase, *, units: str = "auto") -> np.ndarray:
    """Phase in radians, wrapped to [-pi, pi), float32.

    ``units``: ``"auto"`` (see :func:`detect_phase_units`), ``"rad"``, ``"mrad"`` (milliradians, x/1000:
    Philips/GE +-3142), ``"siemens"`` (-4096..4095 ->
    x*pi/4096), ``"uint12"`` (0..4095 -> x*2*pi/4096 - pi) or ``"scale:<max>"`` (+-max -> +-pi, e.g.
    ``scale:0.0036744``).  The sign is not changed (see :func:`apply_phase_sign`).  Unknown units or
    values outside the declared range raise :class:`InputError` naming ``--phase-units``.
    """
    a = np.asarray(phase)
    if not isinstance(units, str):
        raise InputError(f"--phase-units must be a string, got {units!r}")
    u = units.strip().lower()
    if u == "auto":
        u = detect_phase_units(a)
    finite_array(a, "phase", dtype=None)
    x = a.astype(np.float64)
    lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
    if u == "rad":
        return wrap_phase(x)
    if u == "mrad":
        if max(abs(lo), abs(hi)) > 1000 * np.pi * 1.01:
            raise InputError(f"phase values {lo:.6g}..{hi:.6g} exceed the milliradian range +-3142; "
                             "check --phase-units")
        return wrap_phase(x / 1000.0)
    if u == "siemens":
        if lo < -4096.5 or hi > 4096.5:
            raise InputError(f"phase values {lo:.6g}..{hi:.6g} exceed the Siemens range -4096..4095; "
                             "check --phase-units")
        return wrap_phase(x * (np.pi / 4096.0))
    if u == "uint12":
        if lo < -0.5 or hi > 4095.5:
            raise InputError(f"phase values {lo:.6g}..{hi:.6g} exceed the 12-bit range 0..4095; check --phase-units")
        return wrap_phase(x * (2 * np.pi / 4096.0) - np.pi)
    if u.startswith("scale:"):
        m = _parse_scale(u)
        if max(abs(lo), abs(hi)) > m * 1.01:
            raise InputError(f"phase values {lo:.6g}..{hi:.6g} exceed --phase-units scale:{m:g}")
        return wrap_phase(x * (np.pi / m))
    raise InputError(f"unknown --phase-units {units!r}; use auto, rad, mrad, siemens, uint12 or scale:<max>")


def apply_phase_sign(phase, sign: int) -> np.ndarray:
    """Return ``sign * phase`` (float32) with ``sign`` +1 (project convention) or -1 (opposite
    convention, e.g. a vendor whose paramagnetic sources lower the phase).  Other values raise
    :class:`InputError` naming ``--phase-sign``."""
    try:
        s = int(sign)
    except (TypeError, ValueError):
        raise InputError(f"--phase-sign must be +1 or -1, got {sign}") from None
    if s not in (1, -1) or s != sign:
        raise InputError(f"--phase-sign must be +1 or -1, got {sign}")
    return (np.asarray(phase, dtype=np.float32) * np.float32(s)).astype(np.float32)


def _te_broadcast(te, ndim: int, first_dim: int | None) -> np.ndarray:
    t = np.asarray(te, dtype=np.float64)
    if t.ndim == 1 and t.size > 1:
        if first_dim != t.size:
            raise InputError(f"{t.size} echo times for data with leading dimension {first_dim}")
        return t.reshape((-1,) + (1,) * (ndim - 1))
    return t.reshape(()) if t.size == 1 else t


def _check_te_b0(te: np.ndarray, b0: float) -> None:
    if np.any(~np.isfinite(te)) or np.any(te <= 0):
        raise InputError(f"echo times must be positive seconds, got {np.ravel(te).tolist()}")
    if not (np.isfinite(b0) and b0 > 0):
        raise InputError(f"field strength must be positive tesla, got {b0}")


def rad_per_ppm(te, b0: float):
    """Phase (radians) per ppm of field at echo time(s) ``te`` (s) and ``b0`` (T):
    ``2*pi*gamma_bar*B0*1e-6*TE`` (a float for one TE, a float64 array for several)."""
    t = np.asarray(te, dtype=np.float64)
    _check_te_b0(t, float(b0))
    k = 2 * np.pi * GAMMA_BAR_HZ_PER_T * float(b0) * 1e-6 * t
    return float(k) if k.ndim == 0 else k


def phase_to_field_ppm(phase, te, b0: float) -> np.ndarray:
    """Field offset in ppm of B0 from (unwrapped) phase in radians:
    ``field_ppm = phase / (2*pi*gamma_bar*B0*TE) * 1e6``.

    ``te`` (s) is a scalar, or one value per echo along the first axis of ``phase`` ``[E, ...]``;
    ``b0`` in tesla.  Positive field = paramagnetic (project sign convention).  float32.
    """
    p = np.asarray(phase, dtype=np.float64)
    t = _te_broadcast(te, p.ndim, p.shape[0] if p.ndim else None)
    _check_te_b0(t, float(b0))
    return (p / (2 * np.pi * GAMMA_BAR_HZ_PER_T * float(b0) * t) * 1e6).astype(np.float32)


def field_ppm_to_phase(field_ppm, te, b0: float) -> np.ndarray:
    """Phase in radians (not wrapped) of a field offset in ppm of B0 at echo time(s) ``te`` (s) and
    ``b0`` (T): ``phase = 2*pi*gamma_bar*B0*field_ppm*1e-6*TE``.

    ``te`` scalar -> same shape as ``field_ppm``; ``te`` a sequence of E values -> ``[E, ...]``.
    float32.
    """
    f = np.asarray(field_ppm, dtype=np.float64)
    t = np.asarray(te, dtype=np.float64)
    if t.ndim == 1 and t.size > 1:
        t = t.reshape((-1,) + (1,) * f.ndim)
    elif t.size == 1:
        t = t.reshape(())
    _check_te_b0(t, float(b0))
    return (2 * np.pi * GAMMA_BAR_HZ_PER_T * float(b0) * f * 1e-6 * t).astype(np.float32)
