"""The forms in which scanners store field-mapping data that is not per-echo magnitude + phase, and the
one-line messages and provenance notes both readers (DICOM and NIfTI + JSON) give for them.

* Phase difference (Siemens ``gre_field_mapping``: two magnitude echoes at TE1 < TE2 and one phase image
  holding phase(TE2) - phase(TE1); BIDS ``EchoTime1``/``EchoTime2``): read as a single "echo" whose
  echo time is the spacing dTE = TE2 - TE1 (the field is phase / (2*pi*gamma_bar*B0*dTE)), with the
  first magnitude echo; :func:`phase_difference_note` says so on stderr and in ``acq.source``.
* A B0 field map in Hz (GE B0map, Philips B0 map, ImageType FIELDMAPHZ, BIDS ``Units: Hz``): refused
  (:func:`field_map_hz_message`).  Such maps are low resolution, smoothed by the scanner and hold the
  total field including the background; turning them into a pseudo-phase at an invented echo time would
  give the detector data it was never meant for.  The message says how to use one for QSM instead.
"""
from __future__ import annotations

from cmbdetect.physics.constants import GAMMA_BAR_MHZ_PER_T


def field_map_hz_message(where: str, detail: str) -> str:
    """One line: ``where`` holds a B0 field map in Hz (``detail``: what was seen), what would work."""
    return (f"{where} is a B0 field map in Hz ({detail}), not per-echo phase; cmbdetect needs the "
            "magnitude and phase images of a GRE/SWI scan (one or more echoes, --dicom or --mag/--phase); "
            f"for QSM of this field, convert it to ppm (Hz / ({GAMMA_BAR_MHZ_PER_T:.3f} x B0 in T)), remove "
            "the background field and give it to 'cmbdetect qsm --local-field'")


def phase_difference_note(te1_s: float, te2_s: float, *, origin: str) -> str:
    """The stderr/provenance note of a phase-difference map read with the echo spacing as its TE."""
    return (f"{origin} is a phase-difference field map (TE1 {te1_s * 1000:.3g} ms, TE2 {te2_s * 1000:.3g} ms): "
            f"read as one echo with TE = TE2 - TE1 = {(te2_s - te1_s) * 1000:.3g} ms and the TE1 magnitude")


def phase_difference_record(te1_s: float, te2_s: float) -> dict:
    """``acq.source["phase_difference"]``: the two echo times and the spacing used as TE (s)."""
    return {"echo_time1_s": round(float(te1_s), 9), "echo_time2_s": round(float(te2_s), 9),
            "delta_te_s": round(float(te2_s - te1_s), 9)}
