"""DICOM magnitude + phase series -> :class:`Acquisition`, and a writer of classic MR series for tests.

Reading (:func:`read_dicom_series`, :func:`load_dicom_acquisition`):

* every file under the given folders is read with pydicom (non-DICOM files and objects without pixel
  data are skipped); classic single-frame and enhanced multi-frame MR images are expanded to frames;
* magnitude / phase: ``ComplexImageComponent`` (enhanced), else ``ImageType`` containing ``M``/``MAGNITUDE``
  or ``P``/``PHASE``, else the Philips private image type (2005,1011) or GE (0043,102F) 0/1; projections
  (MIP/MNIP/SWI) and real/imaginary images are ignored;
* echoes are grouped by ``EchoTime`` (ms in DICOM -> s); slices are sorted along the slice normal
  (row x column direction cosines) by the projection of ``ImagePositionPatient``;
* the affine maps NIfTI voxel order ``[i=column, j=row, k=slice]`` to scanner RAS mm (DICOM LPS with x, y
  negated);
* phase to radians after ``RescaleSlope``/``RescaleIntercept``: Siemens (or any series with intercept
  -4096) -4096..4094 -> -pi..pi (x*pi/4096); Siemens without rescale 0..4095 -> 12-bit; GE integer phase
  in milliradians (+-3142 -> x/1000); Philips real-world values are radians; otherwise the automatic
  rules of :func:`cmbdetect.physics.phase.rescale_phase`;
* B0 from ``MagneticFieldStrength`` (T; values > 100 are taken as gauss, as some old GE headers do).

``acq.source["dicom"]`` (JSON-able) keeps what a DICOM SR/SC writer needs to reference the input: study,
series, SOP instance and frame-of-reference UIDs, the patient/study modules, and ``reference_frames`` /
``reference_files`` (SOP instance UID and 1-based frame number / file of slice ``k`` of the first
magnitude echo).  ``acq.source["dicom_datasets"]`` holds those reference pydicom datasets (without pixel
data; one per slice for classic series, one for an enhanced file) for writers that take datasets.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, PYDICOM_IMPLEMENTATION_UID, generate_uid
from pydicom.valuerep import DSfloat

from cmbdetect.physics.errors import InputError
from cmbdetect.physics.phase import apply_phase_sign, rescale_phase, wrap_phase
from cmbdetect.pipeline.acquisition import Acquisition
from cmbdetect.pipeline.io_nifti import check_echo_times_seconds

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_IGNORED_TYPES = {"MIP", "MNIP", "MINIP", "SWI", "PROJECTION IMAGE", "R", "I", "REAL", "IMAGINARY"}
_PATIENT_KEYS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge")
_STUDY_KEYS = ("StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
               "StudyDescription")


@dataclass
class _Frame:
    kind: str                # "M" or "P"
    echo_key: float          # echo time in ms (or -EchoNumbers when EchoTime is missing)
    position: np.ndarray     # ImagePositionPatient, LPS mm
    orientation: np.ndarray  # ImageOrientationPatient (row cosines, column cosines)
    spacing: tuple[float, float]  # PixelSpacing: (between rows, between columns) mm
    thickness: float | None
    pixels: np.ndarray       # float32 [rows, cols] after RescaleSlope/Intercept
    rescale: tuple[float, float]
    dataset: Dataset         # the file's dataset without pixel data
    frame_number: int        # 1-based frame in the file (1 for classic)
    path: Path


@dataclass
class DicomSeries:
    """Magnitude and phase volumes read from DICOM, before the 3D check (see :func:`read_dicom_series`).

    ``mag``/``phase`` float32 ``[E, i, j, k]`` (phase radians, project sign), ``te`` s, ``b0`` T,
    ``affine`` voxel -> RAS mm, ``source`` as in ``Acquisition.source``."""

    mag: np.ndarray
    phase: np.ndarray
    te: np.ndarray
    b0: float
    affine: np.ndarray
    source: dict


def _kind_of(ds: Dataset, frame_type: Dataset | None) -> str | None:
    """"M", "P" or None (not usable) for a dataset, or one frame of it (its MR Image Frame Type item)."""
    comp = frame_type.get("ComplexImageComponent") if frame_type is not None else None
    comp = comp or ds.get("ComplexImageComponent")
    if comp:
        return {"MAGNITUDE": "M", "PHASE": "P"}.get(str(comp).upper())
    image_type = {str(v).upper() for v in (ds.get("ImageType") or [])}
    if frame_type is not None:
        image_type |= {str(v).upper() for v in frame_type.get("FrameType", [])}
    if image_type & _IGNORED_TYPES:
        return None
    if image_type & {"P", "PHASE"}:
        return "P"
    if image_type & {"M", "MAGNITUDE"}:
        return "M"
    philips = ds.get((0x2005, 0x1011))
    if philips is not None and str(philips.value).strip().upper() in ("M", "P"):
        return str(philips.value).strip().upper()
    ge = ds.get((0x0043, 0x102F))
    if ge is not None:
        value = ge.value
        try:
            if isinstance(value, bytes):  # implicit VR: the raw little-endian SS
                value = int.from_bytes(value[:2], "little", signed=True)
            return {0: "M", 1: "P"}.get(int(value))
        except (TypeError, ValueError):
            return None
    return None


def _group_item(ds: Dataset, index: int, name: str) -> Dataset | None:
    """Functional-group macro ``name`` of frame ``index`` (per-frame, else shared), or ``None``."""
    for seq_name, i in (("PerFrameFunctionalGroupsSequence", index), ("SharedFunctionalGroupsSequence", 0)):
        seq = ds.get(seq_name)
        if seq is not None and len(seq) > i:
            inner = seq[i].get(name)
            if inner is not None and len(inner):
                return inner[0]
    return None


def _frames_of(ds: Dataset, path: Path) -> list[_Frame]:
    try:
        pixels = np.asarray(ds.pixel_array, dtype=np.float32)
    except Exception as exc:
        raise InputError(f"cannot decode the pixel data of DICOM file {path}: {exc}") from exc
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    enhanced = "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds
    pixels = pixels.reshape((n_frames,) + pixels.shape[-2:])
    del ds.PixelData  # the arrays are extracted; the dataset is kept as a reference (UIDs, modules)
    meta = ds
    frames = []
    for f in range(n_frames):
        if enhanced:
            items = {n: _group_item(ds, f, n) for n in ("PlanePositionSequence", "PlaneOrientationSequence",
                                                        "PixelMeasuresSequence", "MREchoSequence",
                                                        "PixelValueTransformationSequence",
                                                        "MRImageFrameTypeSequence")}
            frame_type = items["MRImageFrameTypeSequence"]
            pos_src, ori_src, pix_src = (items["PlanePositionSequence"], items["PlaneOrientationSequence"],
                                         items["PixelMeasuresSequence"])
            te = items["MREchoSequence"].get("EffectiveEchoTime") if items["MREchoSequence"] else None
            rescale_src = items["PixelValueTransformationSequence"] or ds
        else:
            frame_type = None
            pos_src = ori_src = pix_src = rescale_src = ds
            te = ds.get("EchoTime")
        kind = _kind_of(ds, frame_type)
        if kind is None:
            continue
        try:
            position = np.asarray(pos_src.ImagePositionPatient, dtype=float)
            orientation = np.asarray(ori_src.ImageOrientationPatient, dtype=float)
            spacing = tuple(float(v) for v in pix_src.PixelSpacing)
        except (AttributeError, TypeError, ValueError) as exc:
            raise InputError(f"DICOM file {path} lacks image geometry (position/orientation/spacing)") from exc
        if te is None:
            if ds.get("EchoNumbers") is None:
                raise InputError(f"DICOM file {path} has neither EchoTime nor EchoNumbers")
            echo_key = -float(ds.EchoNumbers)
        else:
            echo_key = round(float(te), 4)
        slope = float(rescale_src.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(rescale_src.get("RescaleIntercept", 0.0) or 0.0)
        thickness = pix_src.get("SliceThickness") if pix_src is not None else None
        frames.append(_Frame(kind, echo_key, position, orientation, spacing,
                             float(thickness) if thickness is not None else None,
                             pixels[f] * np.float32(slope) + np.float32(intercept), (slope, intercept),
                             meta, f + 1, path))
    return frames


def _read_frames(series_dirs: Sequence[str | os.PathLike]) -> tuple[list[_Frame], list[str]]:
    files: list[Path] = []
    for d in series_dirs:
        p = Path(d)
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            files.extend(sorted(q for q in p.rglob("*") if q.is_file() and not q.name.startswith(".")))
        else:
            raise InputError(f"DICOM folder {p} does not exist")
    frames: list[_Frame] = []
    ignored: list[str] = []
    for f in files:
        try:
            ds = pydicom.dcmread(f)
        except (InvalidDicomError, EOFError, OSError):
            ignored.append(str(f))
            continue
        if "PixelData" not in ds:
            ignored.append(str(f))
            continue
        got = _frames_of(ds, f)
        if not got:
            ignored.append(str(f))
        frames.extend(got)
    return frames, ignored


def _phase_units(frames: list[_Frame], lo: float, hi: float) -> str:
    """The ``rescale_phase`` units for these phase frames (values after Rescale Slope/Intercept)."""
    manufacturer = str(frames[0].dataset.get("Manufacturer", "")).upper()
    slope, intercept = frames[0].rescale
    if max(abs(lo), abs(hi)) <= np.pi * 1.001:
        return "rad"
    if abs(intercept + 4096) < 0.5 or ("SIEMENS" in manufacturer and lo < 0):
        return "siemens"
    if "SIEMENS" in manufacturer and lo >= 0 and hi <= 4095:
        return "uint12"
    if manufacturer.startswith("GE") and max(abs(lo), abs(hi)) <= 1000 * np.pi * 1.01:
        return f"scale:{1000 * np.pi}"
    return "auto"


def _stack(frames: list[_Frame], normal: np.ndarray, what: str) -> tuple[np.ndarray, list[_Frame], np.ndarray]:
    """Frames of one kind and echo sorted along ``normal``: volume ``[i=col, j=row, k]``, frames, positions."""
    frames = sorted(frames, key=lambda fr: float(fr.position @ normal))
    proj = np.array([fr.position @ normal for fr in frames])
    if len(proj) > 1 and np.min(np.diff(proj)) < 1e-3:
        raise InputError(f"{what} has two images at the same slice position; the folders seem to hold more "
                         "than one acquisition (give one series per --dicom)")
    if len({fr.pixels.shape for fr in frames}) > 1:
        raise InputError(f"{what} mixes images of different sizes")
    vol = np.stack([fr.pixels.T for fr in frames], axis=-1)
    return vol, frames, np.array([fr.position for fr in frames])


def read_dicom_series(series_dirs: str | os.PathLike | Sequence[str | os.PathLike], *,
                      te: Sequence[float] | None = None, b0: float | None = None,
                      phase_sign: int = 1) -> DicomSeries:
    """Read and sort magnitude + phase DICOM images from folders (or files); no 3D requirement.

    ``te`` (s, one per echo in increasing order) overrides ``EchoTime``; ``b0`` (T) overrides
    ``MagneticFieldStrength``; ``phase_sign`` -1 flips the phase once.  See the module docstring for the
    rules; inconsistent geometry or missing magnitude/phase raises :class:`InputError`.
    """
    dirs = [series_dirs] if isinstance(series_dirs, (str, os.PathLike)) else list(series_dirs)
    apply_phase_sign(np.zeros(1), phase_sign)
    frames, ignored = _read_frames(dirs)
    where = ", ".join(str(d) for d in dirs)
    by_kind = {k: [fr for fr in frames if fr.kind == k] for k in ("M", "P")}
    if not by_kind["M"] or not by_kind["P"]:
        raise InputError(f"found {len(by_kind['M'])} magnitude and {len(by_kind['P'])} phase DICOM images in "
                         f"{where}; both are needed (ImageType M and P)")
    ref = by_kind["M"][0]
    for fr in frames:
        if not np.allclose(fr.orientation, ref.orientation, atol=1e-4) or \
                not np.allclose(fr.spacing, ref.spacing, atol=1e-4):
            raise InputError(f"DICOM images in {where} have different orientations or pixel spacings "
                             f"({fr.path}); give one acquisition")
    row_cos, col_cos = ref.orientation[:3], ref.orientation[3:]
    normal = np.cross(row_cos, col_cos)
    echo_keys = sorted({fr.echo_key for fr in by_kind["M"]}, key=abs)
    if sorted({fr.echo_key for fr in by_kind["P"]}, key=abs) != echo_keys:
        raise InputError(f"magnitude and phase DICOM images in {where} have different echo times")
    vols: dict[str, list[np.ndarray]] = {"M": [], "P": []}
    ref_positions = ref_shape = None
    sorted_frames: dict[str, list[list[_Frame]]] = {"M": [], "P": []}
    for kind in ("M", "P"):
        for key in echo_keys:
            what = f"{'magnitude' if kind == 'M' else 'phase'} echo {key:g} ms in {where}"
            vol, fr_sorted, positions = _stack([fr for fr in by_kind[kind] if fr.echo_key == key], normal, what)
            if ref_positions is None:
                ref_positions, ref_shape = positions, vol.shape
            elif positions.shape != ref_positions.shape or not np.allclose(positions, ref_positions, atol=1e-3):
                raise InputError(f"{what} does not cover the same slices as the first magnitude echo")
            elif vol.shape != ref_shape:
                raise InputError(f"{what} has images of {vol.shape[1]}x{vol.shape[0]} pixels, the first "
                                 f"magnitude echo {ref_shape[1]}x{ref_shape[0]}")
            vols[kind].append(vol)
            sorted_frames[kind].append(fr_sorted)
    n = len(ref_positions)
    if n > 1:
        steps = np.diff(ref_positions @ normal)
        if np.max(steps) - np.min(steps) > max(1e-2, 1e-3 * np.median(steps)):
            raise InputError(f"slices in {where} are unevenly spaced ({np.min(steps):.3g}-{np.max(steps):.3g} mm); "
                             "cannot build a regular 3D grid")
        slice_vec = (ref_positions[-1] - ref_positions[0]) / (n - 1)
    else:
        step = ref.dataset.get("SpacingBetweenSlices") or ref.thickness or 1.0
        slice_vec = normal * float(step)
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row_cos * ref.spacing[1]
    affine_lps[:3, 1] = col_cos * ref.spacing[0]
    affine_lps[:3, 2] = slice_vec
    affine_lps[:3, 3] = ref_positions[0]

    if te is not None:
        te_s = check_echo_times_seconds(te, origin="--te")
        if te_s.size != len(echo_keys):
            raise InputError(f"{te_s.size} echo times given (--te) for {len(echo_keys)} DICOM echoes")
    elif any(k < 0 for k in echo_keys):
        raise InputError(f"DICOM images in {where} have no EchoTime; give --te in seconds")
    else:
        te_s = np.asarray(echo_keys, dtype=float) / 1000.0
    ref_ds = ref.dataset
    if b0 is None:
        if ref_ds.get("MagneticFieldStrength") is None:
            raise InputError(f"DICOM images in {where} have no MagneticFieldStrength; give --b0 in tesla")
        b0 = float(ref_ds.MagneticFieldStrength)
        b0 = b0 / 10000.0 if b0 > 100 else b0

    raw_phase = np.stack(vols["P"])
    units = _phase_units(by_kind["P"], float(raw_phase.min()), float(raw_phase.max()))
    phase = apply_phase_sign(rescale_phase(raw_phase, units=units), phase_sign)
    first_mag = sorted_frames["M"][0]
    source = {
        "format": "dicom",
        "folders": [str(d) for d in dirs],
        "ignored_files": ignored,
        "phase_units": units,
        "phase_sign": int(phase_sign),
        "te_from": "argument" if te is not None else "EchoTime",
        "dicom": {
            "study_instance_uid": str(ref_ds.get("StudyInstanceUID", "")),
            "frame_of_reference_uid": str(ref_ds.get("FrameOfReferenceUID", "")),
            "series_instance_uids": {k: sorted({str(fr.dataset.get("SeriesInstanceUID", "")) for fr in by_kind[k]})
                                     for k in ("M", "P")},
            "sop_instance_uids": {k: [str(fr.dataset.get("SOPInstanceUID", "")) for echo in sorted_frames[k]
                                      for fr in echo] for k in ("M", "P")},
            "sop_class_uid": str(ref_ds.get("SOPClassUID", "")),
            "reference_frames": [(str(fr.dataset.get("SOPInstanceUID", "")), fr.frame_number) for fr in first_mag],
            "patient": {k: str(ref_ds.get(k, "")) for k in _PATIENT_KEYS},
            "study": {k: str(ref_ds.get(k, "")) for k in _STUDY_KEYS},
            "manufacturer": str(ref_ds.get("Manufacturer", "")),
            "reference_files": [str(fr.path) for fr in first_mag],
        },
        "dicom_datasets": list({id(fr.dataset): fr.dataset for fr in first_mag}.values()),
    }
    return DicomSeries(mag=np.stack(vols["M"]), phase=phase, te=te_s, b0=float(b0),
                       affine=_LPS_TO_RAS @ affine_lps, source=source)


def load_dicom_acquisition(series_dirs: str | os.PathLike | Sequence[str | os.PathLike], *,
                           te: Sequence[float] | None = None, b0: float | None = None,
                           phase_sign: int = 1) -> Acquisition:
    """Magnitude + phase DICOM folders -> :class:`Acquisition` (see :func:`read_dicom_series`).

    A series with fewer than 3 slices raises :class:`InputError`: the pipeline needs a 3D volume.
    """
    s = read_dicom_series(series_dirs, te=te, b0=b0, phase_sign=phase_sign)
    n_slices = s.mag.shape[-1]
    if n_slices < 3:
        raise InputError(f"the DICOM series has {n_slices} slice{'s' if n_slices > 1 else ''} "
                         f"({s.mag.shape[1]}x{s.mag.shape[2]} pixels, {s.mag.shape[0]} echoes); "
                         "cmbdetect needs a 3D volume of at least 3 slices")
    return Acquisition(mag=s.mag, phase=s.phase, te=s.te, b0=s.b0, affine=s.affine, source=s.source)


def _ds(value: float) -> DSfloat:
    return DSfloat(float(value), auto_format=True)


def write_dicom_series(volume: np.ndarray, affine: np.ndarray, out_dir: str | os.PathLike, *,
                       kind: str = "M", echo_time_s: float, b0: float, series_number: int,
                       study_uid: str | None = None, series_uid: str | None = None,
                       frame_of_reference_uid: str | None = None, echo_number: int = 1,
                       patient_id: str = "SIMULATED", patient_name: str = "Simulated^Subject",
                       series_description: str | None = None, repetition_time_s: float = 0.04) -> list[Path]:
    """Write a 3D ``volume`` ``[i, j, k]`` as a classic single-frame MR Image Storage series.

    ``kind="M"``: magnitude, stored as uint16 with RescaleSlope/Intercept (quantisation step
    ``range/65535``).  ``kind="P"``: phase in radians, wrapped and stored the Siemens way (0..4095 with
    RescaleSlope 2, RescaleIntercept -4096, i.e. -4096..4094 <-> -pi..pi; step pi/2048 rad).
    Geometry: column index = ``i``, row index = ``j``, one file per slice ``k``; positions and
    orientation from ``affine`` (RAS, converted to LPS).  Echoes of one series: call once per echo with
    the same ``series_uid`` and ``echo_number`` 1, 2, ...  Returns the file paths.
    """
    vol = np.asarray(volume, dtype=np.float64)
    if vol.ndim != 3:
        raise ValueError(f"write_dicom_series needs a 3D volume, got shape {vol.shape}")
    if kind not in ("M", "P"):
        raise ValueError(f"kind must be 'M' or 'P', got {kind!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    a_lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, dtype=float)
    sizes = np.linalg.norm(a_lps[:3, :3], axis=0)
    row_cos, col_cos = a_lps[:3, 0] / sizes[0], a_lps[:3, 1] / sizes[1]
    if kind == "M":
        intercept = min(0.0, float(vol.min()))
        span = float(vol.max()) - intercept
        slope = span / 65535.0 if span > 0 else 1.0
        stored = np.round((vol - intercept) / slope).astype(np.uint16)
        bits = 16
    else:
        slope, intercept = 2.0, -4096.0
        stored = np.mod(np.round((wrap_phase(vol).astype(np.float64) * 4096.0 / np.pi + 4096.0) / 2.0),
                        4096).astype(np.uint16)
        bits = 12
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_of_reference_uid = frame_of_reference_uid or generate_uid()
    normal = np.cross(row_cos, col_cos)
    paths = []
    for k in range(vol.shape[2]):
        sop_uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, sop_uid
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_of_reference_uid, ""
        ds.Modality, ds.Manufacturer = "MR", "cmbdetect"
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient_name, patient_id, "", ""
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20000101", "000000", "1", ""
        ds.ReferringPhysicianName = ""
        ds.SeriesNumber, ds.InstanceNumber = int(series_number), k + 1 + (echo_number - 1) * vol.shape[2]
        ds.SeriesDescription = series_description or f"GRE {'magnitude' if kind == 'M' else 'phase'}"
        ds.ImageType = ["ORIGINAL", "PRIMARY", kind, "ND"]
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "GR", "SP", "", "3D"
        ds.EchoTime, ds.RepetitionTime = _ds(echo_time_s * 1000.0), _ds(repetition_time_s * 1000.0)
        ds.EchoNumbers, ds.EchoTrainLength = int(echo_number), 1
        ds.MagneticFieldStrength, ds.PatientPosition = _ds(b0), "HFS"
        ds.SliceThickness, ds.SpacingBetweenSlices = _ds(sizes[2]), _ds(sizes[2])
        ds.PixelSpacing = [_ds(sizes[1]), _ds(sizes[0])]
        ds.ImageOrientationPatient = [_ds(v) for v in np.concatenate([row_cos, col_cos])]
        position = a_lps[:3, :3] @ np.array([0.0, 0.0, float(k)]) + a_lps[:3, 3]
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.SliceLocation = _ds(position @ normal)
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = vol.shape[1], vol.shape[0]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = _ds(slope), _ds(intercept), "US"
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        path = out / f"{kind}_e{echo_number:02d}_{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
