"""Vendor rules of MR DICOM: what an image is (magnitude, phase, real, imaginary, field map in Hz) and
how its stored phase becomes radians.

Image kind (first rule that applies; enhanced files per frame):

1. a B0 field map in Hz: ImageType/FrameType ``FIELDMAPHZ``, ``FIELD_MAP``, ``B0 MAP``, ``B0MAP``, the
   Philips private type (2005,1011) ``B0``, RescaleType or Real World Value units ``Hz``; GE B0map series, whose
   magnitude and field images share ImageType OTHER and (0043,102F) = 0, are split afterwards by
   (0043,1030) and the pixel sign (:func:`split_ge_b0map`);
2. ``ComplexImageComponent`` MAGNITUDE / PHASE / REAL / IMAGINARY (enhanced: per frame);
3. ImageType (enhanced: the frame's FrameType) values ``M``/``MAGNITUDE``, ``P``/``PHASE``, ``R``/``REAL``,
   ``I``/``IMAGINARY``; projections (MIP/MinIP/SWI) are not used;
4. the Philips private image type (2005,1011) M/P/R/I, then GE (0043,102F) 0 M, 1 P, 2 R, 3 I.

Phase scaling (values after RescaleSlope/Intercept, the "real-world" values; :func:`phase_units`):

* Siemens: -4096..4095 (RescaleSlope 2, RescaleIntercept -4096, or signed pixels) -> x*pi/4096;
  0..4095 without rescale -> 12-bit unsigned;
* Philips: the private floating-point scaling FP = (PV*RS + RI) / (RS*SS) with SS = (2005,100E) gives
  radians (the scanner's own definition; (2005,100D) = 2047.5 is the matching scale intercept);
  without it the real-world values are milliradians (+-3142) or radians by their range;
* GE: integer phase in milliradians (+-3142 -> x/1000); real/imaginary pairs are combined to complex
  by the reader;
* any vendor: real-world values within +-pi are radians; ``--phase-units`` (``phase_units`` argument)
  overrides every rule and applies to the real-world values.

Sign: none of these rules changes the sign of the phase.  cmbdetect takes each vendor's phase as stored
and expects the project convention (a paramagnetic source raises the phase,
``phase = +2*pi*gamma_bar*B0*dB*TE``).  Vendors differ here by product and software version (the
handedness of the phase of Philips and of GE real/imaginary data has been reported both ways), so no
vendor flip is guessed: ``--phase-sign -1`` flips once at reading, and ``acq.source["phase_sign"]``
records it.  GE 3D real/imaginary data may also carry a pi offset between alternate slices (slice
"chopping"); the multi-echo fit cancels a per-slice constant, a single echo does not.
"""
from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset

KIND_NAMES = {"M": "magnitude", "P": "phase", "R": "real", "I": "imaginary", "HZ": "field map (Hz)"}
_HZ_TYPES = {"FIELDMAPHZ", "FIELD_MAP", "FIELDMAP", "B0 MAP", "B0MAP"}
_IGNORED_TYPES = {"MIP", "MNIP", "MINIP", "SWI", "PROJECTION IMAGE"}
_TYPE_TOKENS = {"M": "M", "MAGNITUDE": "M", "P": "P", "PHASE": "P", "R": "R", "REAL": "R", "I": "I",
                "IMAGINARY": "I"}
_COMPONENT = {"MAGNITUDE": "M", "PHASE": "P", "REAL": "R", "IMAGINARY": "I"}
PHILIPS_SCALE_SLOPE = (0x2005, 0x100E)
PHILIPS_SCALE_INTERCEPT = (0x2005, 0x100D)
PHILIPS_IMAGE_TYPE = (0x2005, 0x1011)
PHILIPS_FRAME_PRIVATE = (0x2005, 0x140F)
GE_COMPLEX_TYPE = (0x0043, 0x102F)
GE_B0MAP_FLAG = (0x0043, 0x1030)


def private_value(ds: Dataset | None, tag: tuple[int, int]):
    """Value of a (private) tag as a Python scalar/str; implicit-VR bytes decoded as little-endian SS
    (2 bytes) or FL (4 bytes); ``None`` when absent or undecodable."""
    if ds is None or tag not in ds:
        return None
    value = ds[tag].value
    if isinstance(value, bytes):
        if len(value) == 2:
            return int.from_bytes(value, "little", signed=True)
        if len(value) == 4 and tag in (PHILIPS_SCALE_SLOPE, PHILIPS_SCALE_INTERCEPT):
            return float(np.frombuffer(value, "<f4")[0])
        try:
            return value.decode("ascii").strip("\x00 ")
        except UnicodeDecodeError:
            return None
    if isinstance(value, (list, tuple)) or hasattr(value, "__len__") and not isinstance(value, str):
        value = value[0] if len(value) else None
    return value


def philips_private_item(frame_item: Dataset | None) -> Dataset | None:
    """The per-frame Philips private item (2005,140F) of an enhanced frame, if present."""
    if frame_item is None or PHILIPS_FRAME_PRIVATE not in frame_item:
        return None
    seq = frame_item[PHILIPS_FRAME_PRIVATE].value
    return seq[0] if seq else None


def _tokens(values) -> set[str]:
    if values is None:
        return set()
    if isinstance(values, str):
        values = values.split("\\")
    return {str(v).strip().upper() for v in values}


def frame_kind(ds: Dataset, frame_item: Dataset | None = None) -> str | None:
    """``"M"``, ``"P"``, ``"R"``, ``"I"``, ``"HZ"`` or ``None`` (not usable) for a classic dataset, or
    one frame of an enhanced dataset (``frame_item``: its per-frame functional groups item)."""
    frame_type = None
    if frame_item is not None and frame_item.get("MRImageFrameTypeSequence"):
        frame_type = frame_item.MRImageFrameTypeSequence[0]
    private = philips_private_item(frame_item) or ds
    # an enhanced frame is described by its FrameType; the file's ImageType may summarise all frames
    types = _tokens(frame_type.get("FrameType")) if frame_type is not None else _tokens(ds.get("ImageType"))
    philips_type = str(private_value(private, PHILIPS_IMAGE_TYPE) or "").strip().upper()
    units = {str(src.get("RescaleType", "")).strip().lower() for src in (ds, private)}
    rwv = frame_item.get("RealWorldValueMappingSequence") if frame_item is not None else None
    rwv = rwv or ds.get("RealWorldValueMappingSequence")
    if rwv and rwv[0].get("MeasurementUnitsCodeSequence"):
        units.add(str(rwv[0].MeasurementUnitsCodeSequence[0].get("CodeValue", "")).strip().lower())
    if (types | _tokens(ds.get("ImageType"))) & _HZ_TYPES or philips_type in ("B0", "B0 MAP") or "hz" in units:
        return "HZ"
    if types & _IGNORED_TYPES:
        return None
    comp = frame_type.get("ComplexImageComponent") if frame_type is not None else None
    comp = str(comp or ds.get("ComplexImageComponent") or "").upper()
    if comp in _COMPONENT:
        return _COMPONENT[comp]
    for token in ("P", "PHASE", "R", "REAL", "I", "IMAGINARY", "M", "MAGNITUDE"):
        if token in types:
            return _TYPE_TOKENS[token]
    if philips_type in _TYPE_TOKENS:
        return _TYPE_TOKENS[philips_type]
    ge = private_value(ds, GE_COMPLEX_TYPE)
    try:
        return {0: "M", 1: "P", 2: "R", 3: "I"}.get(int(ge)) if ge is not None else None
    except (TypeError, ValueError):
        return None


def philips_fp_divisor(ds: Dataset, frame_item: Dataset | None, slope: float) -> float | None:
    """``RS * SS`` of the Philips floating-point value FP = (PV*RS + RI) / (RS*SS), or ``None`` when the
    image has no usable private scale slope (2005,100E)."""
    if "PHILIPS" not in str(ds.get("Manufacturer", "")).upper():
        return None
    ss = private_value(philips_private_item(frame_item) or ds, PHILIPS_SCALE_SLOPE)
    try:
        ss = float(ss)
    except (TypeError, ValueError):
        return None
    return slope * ss if np.isfinite(ss) and ss > 0 and slope > 0 else None


def split_ge_b0map(kinds: list[str], flags: list, minima: list[float]) -> list[str]:
    """GE B0map series: magnitude and field (Hz) images both look like magnitude ((0043,102F) = 0,
    ImageType OTHER); only (0043,1030) and the pixel sign tell them apart.  Given the kind, the
    (0043,1030) value and the minimum real-world value of each GE image, relabel as ``"HZ"`` the
    (0043,1030) group that holds negative values when the magnitude images fall into two or more
    such groups and exactly one has negative values."""
    groups: dict = {}
    for i, (k, flag) in enumerate(zip(kinds, flags)):
        if k == "M" and flag is not None:
            groups.setdefault(flag, []).append(i)
    if len(groups) < 2:
        return kinds
    negative = [f for f, idx in groups.items() if min(minima[i] for i in idx) < 0]
    if len(negative) != 1:
        return kinds
    out = list(kinds)
    for i in groups[negative[0]]:
        out[i] = "HZ"
    return out


def phase_units(manufacturer: str, intercepts: set[float], lo: float, hi: float) -> str:
    """The :func:`cmbdetect.physics.phase.rescale_phase` units of real-world phase values ``lo..hi``
    from a series of this ``manufacturer`` with these RescaleIntercepts (see the module docstring)."""
    maker = manufacturer.upper()
    amax = max(abs(lo), abs(hi))
    if amax <= np.pi * 1.001:
        return "rad"
    if any(abs(i + 4096) < 0.5 for i in intercepts) or ("SIEMENS" in maker and lo < 0):
        return "siemens"
    if "SIEMENS" in maker and lo >= 0 and hi <= 4095:
        return "uint12"
    mrad_intercept = any(abs(i + 1000 * np.pi) < 1.0 for i in intercepts)
    if (maker.startswith("GE") or "PHILIPS" in maker or mrad_intercept) and amax <= 1000 * np.pi * 1.01:
        return "mrad"
    return "auto"
