"""Write magnitude/phase volumes (or a simulated :class:`Acquisition`) as scanner-style MR DICOM.

So that tests and users can exercise the DICOM reader end to end, each vendor's way of storing phase
is reproduced (the reader's rules are in :mod:`cmbdetect.pipeline.io.dicom_vendors`):

``siemens``
    classic single-frame; phase 0..4095 with RescaleSlope 2, RescaleIntercept -4096 (-4096..4094 <->
    -pi..pi), ImageType ``...\\P\\ND``.
``siemens-signed``
    classic; phase stored signed -4096..4095 without rescale (older software).
``philips``
    classic; phase 0..4095 with RescaleSlope 2*pi*1000/4095 and RescaleIntercept -3142 (real-world
    values in milliradians) and the private radian scaling (2005,100E) = 4095/(2*pi) (scale slope) and
    (2005,100D) = 2047.5 (scale intercept), ``FP = (PV - 2047.5) / 651.74``; (2005,1011) M/P.
``philips-enhanced``
    one Enhanced MR Image Storage file holding every echo's magnitude and phase frames (per-frame
    functional groups: position, echo time, ComplexImageComponent, pixel value transformation, the
    Philips private scaling in (2005,140F)), scaled as ``philips``.
``ge``
    classic; phase int16 in milliradians (x1000), (0043,102F) = 0 magnitude / 1 phase, ImageType OTHER.
``ge-complex``
    classic; real and imaginary images (int16, (0043,102F) = 2/3, ImageType R/I) instead of magnitude
    and phase.

Besides magnitude ``"M"`` and phase ``"P"`` (radians), :func:`write_dicom_series` writes real ``"R"``,
imaginary ``"I"`` and a B0 field map in Hz ``"HZ"`` (Siemens/Philips ImageType ``B0 MAP``, GE B0map
(0043,102F) = 0 with (0043,1030) = 0 and signed pixels beside magnitude (0043,1030) = 2).

Geometry: column index = ``i``, row index = ``j``, one file (or frame) per slice ``k``; positions and
orientation from the RAS ``affine`` converted to DICOM LPS.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, PYDICOM_IMPLEMENTATION_UID, generate_uid
from pydicom.valuerep import DSfloat

from cmbdetect.physics.errors import InputError
from cmbdetect.physics.phase import wrap_phase

#: ``simulate --dicom`` styles (see the module docstring).
DICOM_STYLES = ("siemens", "siemens-signed", "philips", "philips-enhanced", "ge", "ge-complex")
ENHANCED_MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
_PHILIPS_CREATOR = "Philips MR Imaging DD 001"
_PHILIPS_SS = 4095.0 / (2 * np.pi)      # (2005,100E): stored value per radian (651.74)
_PHILIPS_SI = 2047.5                      # (2005,100D): stored value of 0 rad
_PHILIPS_RS = 2 * np.pi * 1000.0 / 4095  # RescaleSlope: milliradians per stored value (1.53435)
_PHILIPS_RI = -3142.0                     # RescaleIntercept (mrad), as the scanners write it
_KIND_TOKENS = {"M": "M", "P": "P", "R": "R", "I": "I", "HZ": "B0 MAP"}
_GE_COMPLEX = {"M": 0, "P": 1, "R": 2, "I": 3, "HZ": 0}


def _ds(value: float) -> DSfloat:
    return DSfloat(float(value), auto_format=True)


def _lps_geometry(affine: np.ndarray):
    a_lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, dtype=float)
    sizes = np.linalg.norm(a_lps[:3, :3], axis=0)
    return a_lps, sizes, a_lps[:3, 0] / sizes[0], a_lps[:3, 1] / sizes[1]


def _encode(vol: np.ndarray, kind: str, style: str) -> tuple[np.ndarray, int, int, float, float]:
    """Stored pixels ``[i, j, k]`` and (BitsStored, PixelRepresentation, RescaleSlope, RescaleIntercept)."""
    vendor = style.split("-")[0]
    if kind == "P":
        phase = wrap_phase(vol).astype(np.float64)
        if style == "siemens":
            return np.mod(np.round((phase * 4096.0 / np.pi + 4096.0) / 2.0), 4096).astype(np.uint16), 12, 0, 2.0, -4096.0
        if style == "siemens-signed":
            return np.clip(np.round(phase * 4096.0 / np.pi), -4096, 4095).astype(np.int16), 13, 1, 1.0, 0.0
        if vendor == "philips":
            pv = np.clip(np.round(phase * _PHILIPS_SS + _PHILIPS_SI), 0, 4095).astype(np.uint16)
            return pv, 12, 0, _PHILIPS_RS, _PHILIPS_RI
        if vendor == "ge":
            return np.round(phase * 1000.0).astype(np.int16), 16, 1, 1.0, 0.0
    if kind == "HZ" or vendor == "ge" and kind in ("R", "I"):
        if kind == "HZ" and vendor == "philips":
            pv = np.clip(np.round((vol + 500.0) * 4095 / 1000.0), 0, 4095).astype(np.uint16)
            return pv, 12, 0, 1000.0 / 4095, -500.0
        return np.round(np.clip(vol, -32768, 32767)).astype(np.int16), 16, 1, 1.0, 0.0  # as given: Hz, raw
    if kind in ("R", "I"):  # Siemens/Philips style: offset unsigned with a negative intercept
        span = max(float(np.abs(vol).max()), 1e-12)
        slope = span / 32767.0
        return np.round(vol / slope + 32768).astype(np.uint16), 16, 0, slope, -32768 * slope
    intercept = min(0.0, float(vol.min()))  # magnitude
    span = float(vol.max()) - intercept
    slope = span / 65535.0 if span > 0 else 1.0
    return np.round((vol - intercept) / slope).astype(np.uint16), 16, 0, slope, intercept


def _base_dataset(sop_class: str, *, study_uid: str, series_uid: str, frame_uid: str, series_number: int,
                  manufacturer: str, b0: float, patient_id: str, patient_name: str, description: str,
                  repetition_time_s: float) -> Dataset:
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, sop_uid
    meta.TransferSyntaxUID, meta.ImplementationClassUID = ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_uid, ""
    ds.Modality, ds.Manufacturer = "MR", manufacturer
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient_name, patient_id, "", ""
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20000101", "000000", "1", ""
    ds.ReferringPhysicianName = ""
    ds.SeriesNumber, ds.SeriesDescription = int(series_number), description
    ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "GR", "SP", "", "3D"
    ds.RepetitionTime = _ds(repetition_time_s * 1000.0)
    ds.MagneticFieldStrength, ds.PatientPosition = _ds(b0), "HFS"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    return ds


def _manufacturer(style: str) -> str:
    return {"siemens": "SIEMENS", "philips": "Philips Medical Systems", "ge": "GE MEDICAL SYSTEMS"}.get(
        style.split("-")[0], "cmbdetect")


def _add_private(target: Dataset, style: str, kind: str, slope: float) -> None:
    """Vendor private tags of one image (classic file, or the Philips per-frame private item)."""
    vendor = style.split("-")[0]
    if vendor == "philips":
        target.add_new((0x2005, 0x0010), "LO", _PHILIPS_CREATOR)
        target.add_new((0x2005, 0x1011), "CS", {"HZ": "B0"}.get(kind, kind))
        if kind == "P":
            ss, si = _PHILIPS_SS, _PHILIPS_SI
        elif kind == "HZ":
            ss, si = 4.095, 2047.5
        else:
            ss, si = 1.0 / slope, 0.0
        target.add_new((0x2005, 0x100E), "FL", float(ss))
        target.add_new((0x2005, 0x100D), "FL", float(si))
    elif vendor == "ge":
        target.add_new((0x0043, 0x0010), "LO", "GEMS_PARM_01")
        target.add_new((0x0043, 0x102F), "SS", _GE_COMPLEX[kind])
        if kind == "HZ" or style == "ge-b0map":
            target.add_new((0x0043, 0x1030), "SS", 0 if kind == "HZ" else 2)


def write_dicom_series(volume: np.ndarray, affine: np.ndarray, out_dir: str | os.PathLike, *,
                       kind: str = "M", echo_time_s: float, b0: float, series_number: int,
                       study_uid: str | None = None, series_uid: str | None = None,
                       frame_of_reference_uid: str | None = None, echo_number: int = 1,
                       patient_id: str = "SIMULATED", patient_name: str = "Simulated^Subject",
                       series_description: str | None = None, repetition_time_s: float = 0.04,
                       style: str = "siemens", ge_b0map: bool = False) -> list[Path]:
    """Write a 3D ``volume`` ``[i, j, k]`` as a classic single-frame MR Image Storage series.

    ``kind``: ``"M"`` magnitude (uint16 with RescaleSlope/Intercept), ``"P"`` phase in radians (wrapped,
    stored the ``style``'s way, see the module docstring), ``"R"``/``"I"`` real/imaginary parts, ``"HZ"``
    a B0 field map in Hz.  ``style`` one of :data:`DICOM_STYLES` except ``philips-enhanced`` (see
    :func:`write_enhanced_dicom`); ``ge_b0map`` marks a GE magnitude as the B0map companion
    ((0043,1030) = 2).  Echoes of one series: call once per echo with the same ``series_uid`` and
    ``echo_number`` 1, 2, ...  Returns the file paths.
    """
    vol = np.asarray(volume, dtype=np.float64)
    if vol.ndim != 3:
        raise ValueError(f"write_dicom_series needs a 3D volume, got shape {vol.shape}")
    if kind not in _KIND_TOKENS:
        raise ValueError(f"kind must be one of {sorted(_KIND_TOKENS)}, got {kind!r}")
    if style not in DICOM_STYLES or style == "philips-enhanced":
        raise ValueError(f"classic style must be one of {[s for s in DICOM_STYLES if 'enhanced' not in s]}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    a_lps, sizes, row_cos, col_cos = _lps_geometry(affine)
    stored, bits, signed, slope, intercept = _encode(vol, kind, style)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_uid = frame_of_reference_uid or generate_uid()
    normal = np.cross(row_cos, col_cos)
    vendor = style.split("-")[0]
    image_type = ["ORIGINAL", "PRIMARY", "OTHER"] if vendor == "ge" else \
        ["ORIGINAL", "PRIMARY", _KIND_TOKENS[kind], "ND"]
    if vendor == "philips" and kind in ("M", "P"):
        image_type = ["ORIGINAL", "PRIMARY", f"{kind}_FFE", kind, "FFE"]
    paths = []
    for k in range(vol.shape[2]):
        ds = _base_dataset(MRImageStorage, study_uid=study_uid, series_uid=series_uid, frame_uid=frame_uid,
                           series_number=series_number, manufacturer=_manufacturer(style), b0=b0,
                           patient_id=patient_id, patient_name=patient_name,
                           description=series_description or f"GRE {kind}", repetition_time_s=repetition_time_s)
        ds.InstanceNumber = k + 1 + (echo_number - 1) * vol.shape[2]
        ds.ImageType = image_type
        ds.EchoTime, ds.EchoNumbers, ds.EchoTrainLength = _ds(echo_time_s * 1000.0), int(echo_number), 1
        ds.SliceThickness, ds.SpacingBetweenSlices = _ds(sizes[2]), _ds(sizes[2])
        ds.PixelSpacing = [_ds(sizes[1]), _ds(sizes[0])]
        ds.ImageOrientationPatient = [_ds(v) for v in np.concatenate([row_cos, col_cos])]
        position = a_lps[:3, :3] @ np.array([0.0, 0.0, float(k)]) + a_lps[:3, 3]
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.SliceLocation = _ds(position @ normal)
        ds.Rows, ds.Columns = vol.shape[1], vol.shape[0]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, signed
        if slope != 1.0 or intercept != 0.0:
            ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = _ds(slope), _ds(intercept), "US"
        _add_private(ds, "ge-b0map" if ge_b0map else style, kind, slope)
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        path = out / f"{kind}_e{echo_number:02d}_{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_enhanced_dicom(path: str | os.PathLike, *, mag: np.ndarray, phase: np.ndarray, te, b0: float,
                         affine: np.ndarray, series_number: int = 1, study_uid: str | None = None,
                         patient_id: str = "SIMULATED", patient_name: str = "Simulated^Subject",
                         repetition_time_s: float = 0.04, frame_order: np.ndarray | None = None) -> Path:
    """Write every echo of ``mag``/``phase`` ``[E, i, j, k]`` (phase radians) into one Philips-style
    Enhanced MR Image Storage file: per-frame position, EffectiveEchoTime, ComplexImageComponent,
    Pixel Value Transformation (milliradians for phase) and the private (2005,100E)/(2005,100D)
    radian scaling in (2005,140F); shared orientation and pixel measures.  ``frame_order`` permutes the
    frames (readers must sort by position and echo, not by frame number).  Returns the path."""
    mag, phase = np.asarray(mag, dtype=np.float64), np.asarray(phase, dtype=np.float64)
    if mag.ndim == 3:
        mag, phase = mag[None], phase[None]
    te = np.atleast_1d(np.asarray(te, dtype=float))
    a_lps, sizes, row_cos, col_cos = _lps_geometry(affine)
    ds = _base_dataset(ENHANCED_MR_STORAGE, study_uid=study_uid or generate_uid(), series_uid=generate_uid(),
                       frame_uid=generate_uid(), series_number=series_number, manufacturer=_manufacturer("philips"),
                       b0=b0, patient_id=patient_id, patient_name=patient_name, description="GRE enhanced",
                       repetition_time_s=repetition_time_s)
    ds.ImageType, ds.ComplexImageComponent = ["ORIGINAL", "PRIMARY", "T2_STAR", "MIXED"], "MIXED"
    ds.InstanceNumber, ds.Rows, ds.Columns = 1, mag.shape[2], mag.shape[1]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    shared = Dataset()
    shared.PlaneOrientationSequence = Sequence([Dataset()])
    shared.PlaneOrientationSequence[0].ImageOrientationPatient = [_ds(v) for v in np.concatenate([row_cos, col_cos])]
    shared.PixelMeasuresSequence = Sequence([Dataset()])
    pm = shared.PixelMeasuresSequence[0]
    pm.PixelSpacing, pm.SliceThickness, pm.SpacingBetweenSlices = [_ds(sizes[1]), _ds(sizes[0])], _ds(sizes[2]), _ds(sizes[2])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    organisation = generate_uid()
    ds.DimensionOrganizationSequence = Sequence([Dataset()])
    ds.DimensionOrganizationSequence[0].DimensionOrganizationUID = organisation
    dims = []
    for pointer, group, label in (((0x0020, 0x9056), (0x0020, 0x9111), "Stack ID"),
                                  ((0x0020, 0x9057), (0x0020, 0x9111), "In-Stack Position Number"),
                                  ((0x0018, 0x9082), (0x0018, 0x9114), "Effective Echo Time"),
                                  ((0x0008, 0x9208), (0x0018, 0x9226), "Complex Image Component")):
        d = Dataset()
        d.DimensionOrganizationUID = organisation
        d.DimensionIndexPointer, d.FunctionalGroupPointer, d.DimensionDescriptionLabel = pointer, group, label
        dims.append(d)
    ds.DimensionIndexSequence = Sequence(dims)
    frames, pixels = [], []
    for kind, data in (("M", mag), ("P", phase)):
        for e in range(data.shape[0]):
            stored, _, _, slope, intercept = _encode(data[e], kind, "philips")
            for k in range(data.shape[3]):
                item = Dataset()
                item.PlanePositionSequence = Sequence([Dataset()])
                pos = a_lps[:3, :3] @ np.array([0.0, 0.0, float(k)]) + a_lps[:3, 3]
                item.PlanePositionSequence[0].ImagePositionPatient = [_ds(v) for v in pos]
                item.MREchoSequence = Sequence([Dataset()])
                item.MREchoSequence[0].EffectiveEchoTime = float(te[e] * 1000.0)
                item.MRImageFrameTypeSequence = Sequence([Dataset()])
                ft = item.MRImageFrameTypeSequence[0]
                ft.FrameType = ["ORIGINAL", "PRIMARY", "T2_STAR", kind]
                ft.ComplexImageComponent = "MAGNITUDE" if kind == "M" else "PHASE"
                item.PixelValueTransformationSequence = Sequence([Dataset()])
                pvt = item.PixelValueTransformationSequence[0]
                pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = _ds(slope), _ds(intercept), "US"
                item.FrameContentSequence = Sequence([Dataset()])
                fc = item.FrameContentSequence[0]
                fc.StackID, fc.InStackPositionNumber, fc.TemporalPositionIndex = "1", k + 1, 1
                fc.DimensionIndexValues = [1, k + 1, e + 1, 1 if kind == "M" else 2]
                private = Dataset()  # as Philips scanners repeat them per frame: image type, echo, scaling
                private.ImageType = ["ORIGINAL", "PRIMARY", f"{kind}_FFE", kind, "FFE"]
                private.EchoTime, private.EchoNumbers = _ds(te[e] * 1000.0), e + 1
                _add_private(private, "philips", kind, slope)
                item.add_new((0x2005, 0x0014), "LO", "Philips MR Imaging DD 005")
                item.add_new((0x2005, 0x140F), "SQ", Sequence([private]))
                frames.append(item)
                pixels.append(np.ascontiguousarray(stored[:, :, k].T.astype(np.uint16)))
    order = np.arange(len(frames)) if frame_order is None else np.asarray(frame_order)
    ds.NumberOfFrames = len(frames)
    ds.PerFrameFunctionalGroupsSequence = Sequence([frames[i] for i in order])
    ds.PixelData = b"".join(pixels[i].tobytes() for i in order)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out, enforce_file_format=True)
    return out


def write_acquisition_dicom(acq, out_dir: str | os.PathLike, *, style: str = "siemens",
                            patient_id: str = "SIMULATED") -> list[Path]:
    """Write an :class:`Acquisition`'s echoes as DICOM in ``style`` (see :data:`DICOM_STYLES`) under
    ``out_dir``: ``mag/`` and ``phase/`` series (``real/`` and ``imag/`` for ``ge-complex``), or one
    ``enhanced.dcm``.  Returns the written files."""
    if style not in DICOM_STYLES:
        raise InputError(f"--dicom style {style!r} is not one of {', '.join(DICOM_STYLES)}")
    out = Path(out_dir)
    if style == "philips-enhanced":
        return [write_enhanced_dicom(out / "enhanced.dcm", mag=acq.mag, phase=acq.phase, te=acq.te, b0=acq.b0,
                                     affine=acq.affine, patient_id=patient_id)]
    if style == "ge-complex":
        z = acq.mag * np.exp(1j * acq.phase.astype(np.float64))
        z *= 30000.0 / max(float(np.abs(z).max()), 1e-12)  # GE stores the parts as int16, one scale
        series = (("R", "real", z.real), ("I", "imag", z.imag))
    else:
        series = (("M", "mag", acq.mag), ("P", "phase", acq.phase))
    study, frame = generate_uid(), generate_uid()
    paths: list[Path] = []
    for number, (kind, folder, data) in enumerate(series, start=1):
        uid = generate_uid()
        for e, te in enumerate(acq.te):
            paths += write_dicom_series(data[e], acq.affine, out / folder, kind=kind, echo_time_s=float(te),
                                        b0=acq.b0, series_number=number, study_uid=study, series_uid=uid,
                                        frame_of_reference_uid=frame, echo_number=e + 1, style=style,
                                        patient_id=patient_id, series_description=f"GRE {folder}")
    return paths
