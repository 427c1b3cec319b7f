"""DICOM series -> :class:`Acquisition` (magnitude + phase, one or more echoes, any vendor).

Reading (:func:`read_dicom_series`, :func:`load_dicom_acquisition`):

* every file under the given folders is read with pydicom (non-DICOM files and objects without pixel
  data are skipped); classic single-frame and enhanced multi-frame MR images are expanded to frames
  (per-frame functional groups: position, orientation, pixel measures, echo time, frame type, rescale);
* what each image is (magnitude, phase, real, imaginary, a field map in Hz) and how phase becomes
  radians follow the vendor rules of :mod:`cmbdetect.pipeline.io.dicom_vendors` (Siemens, Philips private
  scaling, GE milliradians and B0map split); ``phase_units`` (``--phase-units``) overrides the scaling
  and applies to the values after RescaleSlope/Intercept;
* echoes are grouped by ``EchoTime`` (ms in DICOM -> s); slices are sorted along the slice normal
  (row x column direction cosines) by the projection of ``ImagePositionPatient``;
* forms besides per-echo magnitude + phase (:mod:`cmbdetect.pipeline.io.input_forms`): real/imaginary pairs
  are combined to complex (phase = angle, magnitude = the magnitude images or ``|z|``); a phase-difference
  map (magnitude at TE1 and TE2, one phase image labelled TE2, or TE1) is read as one echo with
  TE = TE2 - TE1; a field map in
  Hz, magnitude only or phase only is refused with one line naming the data and what would work;
* the affine maps NIfTI voxel order ``[i=column, j=row, k=slice]`` to scanner RAS mm (DICOM LPS with x, y
  negated);
* B0 from ``MagneticFieldStrength`` (T; values > 100 are taken as gauss, as some old GE headers do).

``acq.source["dicom"]`` (JSON-able) keeps what a DICOM SR/SC writer needs to reference the input: study,
series, SOP instance and frame-of-reference UIDs, the patient/study modules, and ``reference_frames`` /
``reference_files`` (SOP instance UID and 1-based frame number / file of slice ``k`` of the first
magnitude echo).  ``acq.source["dicom_datasets"]`` holds those reference pydicom datasets (without pixel
data; one per slice for classic series, one for an enhanced file) for writers that take datasets.
``acq.source["form"]`` is ``per-echo``, ``phase-difference`` or ``real-imaginary``; ``notes`` are lines
for stderr.  The scanner-style writers live in :mod:`cmbdetect.pipeline.simulate.dicom`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from cmbdetect.physics.errors import InputError
from cmbdetect.physics.phase import apply_phase_sign, rescale_phase
from cmbdetect.pipeline.io.acquisition import Acquisition
from cmbdetect.pipeline.io.dicom_vendors import (GE_B0MAP_FLAG, KIND_NAMES, frame_kind, philips_fp_divisor,
                                              phase_units as vendor_phase_units, private_value, split_ge_b0map)
from cmbdetect.pipeline.io.input_forms import (field_map_hz_message, phase_difference_note,
                                            phase_difference_record)
from cmbdetect.pipeline.io.nifti import check_echo_times_seconds

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_PATIENT_KEYS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge")
_STUDY_KEYS = ("StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
               "StudyDescription")


@dataclass
class _Frame:
    kind: str                # "M", "P", "R", "I" or "HZ" (see dicom_vendors.frame_kind)
    echo_key: float          # echo time in ms (or -EchoNumbers when EchoTime is missing)
    position: np.ndarray     # ImagePositionPatient, LPS mm
    orientation: np.ndarray  # ImageOrientationPatient (row cosines, column cosines)
    spacing: tuple[float, float]  # PixelSpacing: (between rows, between columns) mm
    thickness: float | None
    pixels: np.ndarray       # float32 [rows, cols] after RescaleSlope/Intercept (real-world values)
    rescale: tuple[float, float]
    fp_divisor: float | None  # Philips RS*SS: pixels / fp_divisor is the floating-point value (radians)
    ge_flag: int | None      # GE (0043,1030)
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
    except Exception as exc:  # pydicom's messages span lines; one line, with the transfer syntax
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", str(syntax))
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(":")
        raise InputError(f"cannot decode the pixel data of DICOM file {path} (transfer syntax {name}): {reason}; "
                         "decompress the series first (e.g. gdcmconv --raw or dcmdjpeg) or install a pydicom "
                         "decoder plugin for it") from exc
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    enhanced = "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds
    pixels = pixels.reshape((n_frames,) + pixels.shape[-2:])
    del ds.PixelData  # the arrays are extracted; the dataset is kept as a reference (UIDs, modules)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    frames = []
    for f in range(n_frames):
        if enhanced:
            frame_item = per_frame[f] if per_frame is not None and len(per_frame) > f else None
            items = {n: _group_item(ds, f, n) for n in ("PlanePositionSequence", "PlaneOrientationSequence",
                                                        "PixelMeasuresSequence", "MREchoSequence",
                                                        "PixelValueTransformationSequence")}
            pos_src, ori_src, pix_src = (items["PlanePositionSequence"], items["PlaneOrientationSequence"],
                                         items["PixelMeasuresSequence"])
            te = items["MREchoSequence"].get("EffectiveEchoTime") if items["MREchoSequence"] else None
            rescale_src = items["PixelValueTransformationSequence"] or ds
        else:
            frame_item = None
            pos_src = ori_src = pix_src = rescale_src = ds
            te = ds.get("EchoTime")
        kind = frame_kind(ds, frame_item)
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
        flag = private_value(ds, GE_B0MAP_FLAG)
        frames.append(_Frame(kind, echo_key, position, orientation, spacing,
                             float(thickness) if thickness is not None else None,
                             pixels[f] * np.float32(slope) + np.float32(intercept), (slope, intercept),
                             philips_fp_divisor(ds, frame_item, slope),
                             int(flag) if isinstance(flag, (int, np.integer)) else None, ds, f + 1, path))
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
    kinds = split_ge_b0map([fr.kind for fr in frames], [fr.ge_flag for fr in frames],
                           [float(fr.pixels.min()) for fr in frames])
    for fr, kind in zip(frames, kinds):
        fr.kind = kind
    return frames, ignored


def _keys(frames: list[_Frame]) -> list[float]:
    return sorted({fr.echo_key for fr in frames}, key=abs)


def _ms(keys: list[float]) -> str:
    return ", ".join(f"{k:g}" for k in keys) + " ms"


def _refuse_form(by_kind: dict[str, list[_Frame]], where: str, n_ignored: int) -> None:
    """One-line refusal of data that is not magnitude + phase (or real + imaginary) per echo."""
    n = {k: len(v) for k, v in by_kind.items()}
    if n["HZ"]:
        ge = any(fr.ge_flag is not None for fr in by_kind["HZ"])
        how = "GE B0map, told from magnitude by (0043,1030) and pixel sign" if ge else "ImageType/FrameType"
        raise InputError(field_map_hz_message(where, f"{n['HZ']} field and {n['M']} magnitude images, {how}"))
    if n["R"] or n["I"]:
        missing = "imaginary" if n["R"] else "real"
        raise InputError(f"found {n['R']} real and {n['I']} imaginary DICOM images in {where}; both parts of "
                         f"each echo are needed: add the {missing} images (or give magnitude + phase series)")
    if n["M"] and not n["P"]:
        echoes = len(_keys(by_kind["M"]))
        raise InputError(f"found {n['M']} magnitude DICOM images ({echoes} echo{'es' if echoes > 1 else ''}, "
                         f"TE {_ms(_keys(by_kind['M']))}) and no phase in {where}: a magnitude-only series; "
                         "cmbdetect needs the phase too: reconstruct/export the phase images (ImageType P) "
                         "and give both series (--dicom MAG --dicom PHASE)")
    if n["P"] and not n["M"]:
        keys = _keys(by_kind["P"])
        what = ("a phase (or phase-difference field map) series alone" if len(keys) == 1 else
                f"phase of {len(keys)} echoes alone")
        raise InputError(f"found {n['P']} phase DICOM images (TE {_ms(keys)}) and no magnitude in {where}: "
                         f"{what}; give the magnitude series too (--dicom MAG --dicom PHASE; for a "
                         "phase-difference map, the series holding both magnitude echoes)")
    raise InputError(f"found no magnitude, phase, real/imaginary or field-map MR images in {where} "
                     f"({n_ignored} file{'s' if n_ignored != 1 else ''} skipped: not DICOM, no pixel data, "
                     "or projections such as MIP/SWI)")


def _stack(frames: list[_Frame], normal: np.ndarray, what: str) -> list[_Frame]:
    """Frames of one kind and echo sorted along ``normal`` (checked: distinct positions, one size)."""
    frames = sorted(frames, key=lambda fr: float(fr.position @ normal))
    proj = np.array([fr.position @ normal for fr in frames])
    if len(proj) > 1 and np.min(np.diff(proj)) < 1e-3:
        series = sorted({f"{fr.dataset.get('SeriesNumber', '?')} {fr.dataset.get('SeriesDescription', '')}".strip()
                         for fr in frames})
        held = f"series {', '.join(series)}" if len(series) > 1 else "more than one acquisition"
        raise InputError(f"{what} has two images at the same slice position; the folders hold {held}: give the "
                         "magnitude and phase series of one acquisition (one --dicom per series folder)")
    if len({fr.pixels.shape for fr in frames}) > 1:
        raise InputError(f"{what} mixes images of different sizes")
    return frames


def _volume(frames: list[_Frame], values=None) -> np.ndarray:
    """``[i=col, j=row, k]`` volume of sorted frames (``values(frame)`` -> 2D array; default pixels)."""
    return np.stack([(fr.pixels if values is None else values(fr)).T for fr in frames], axis=-1)


def _philips_radians(fr: _Frame) -> np.ndarray:
    return fr.pixels / np.float32(fr.fp_divisor)


def _phase_radians(frames: list[list[_Frame]], phase_units: str) -> tuple[np.ndarray, str, str]:
    """Phase echoes in radians (wrapped), the units used and where they came from."""
    flat = [fr for echo in frames for fr in echo]
    if phase_units not in (None, "", "auto"):
        raw = np.stack([_volume(echo) for echo in frames])
        return rescale_phase(raw, units=phase_units), phase_units, "--phase-units"
    if all(fr.fp_divisor is not None for fr in flat):
        fp = np.stack([_volume(echo, _philips_radians) for echo in frames])
        if np.abs(fp).max() <= np.pi * 1.01:
            return rescale_phase(fp, units="rad"), "rad", "Philips private scale (2005,100E)"
    raw = np.stack([_volume(echo) for echo in frames])
    units = vendor_phase_units(str(flat[0].dataset.get("Manufacturer", "")), {fr.rescale[1] for fr in flat},
                               float(raw.min()), float(raw.max()))
    return rescale_phase(raw, units=units), units, "headers"


def read_dicom_series(series_dirs: str | os.PathLike | Sequence[str | os.PathLike], *,
                      te: Sequence[float] | None = None, b0: float | None = None,
                      phase_sign: int = 1, phase_units: str = "auto") -> DicomSeries:
    """Read and sort magnitude + phase DICOM images from folders (or files); no 3D requirement.

    ``te`` (s, one per echo in increasing order) overrides ``EchoTime``; ``b0`` (T) overrides
    ``MagneticFieldStrength``; ``phase_sign`` -1 flips the phase once; ``phase_units`` (see
    :func:`cmbdetect.physics.phase.rescale_phase`) overrides the vendor phase scaling.  See the module
    docstring for the rules; inconsistent geometry or data that is not magnitude + phase per echo raise
    :class:`InputError` (one line).
    """
    dirs = [series_dirs] if isinstance(series_dirs, (str, os.PathLike)) else list(series_dirs)
    apply_phase_sign(np.zeros(1), phase_sign)
    if phase_units not in (None, "", "auto"):
        rescale_phase(np.zeros(1), units=phase_units)  # validates --phase-units before any file is read
    frames, ignored = _read_frames(dirs)
    where = ", ".join(str(d) for d in dirs)
    by_kind = {k: [fr for fr in frames if fr.kind == k] for k in KIND_NAMES}
    notes: list[str] = []
    m_keys, p_keys = _keys(by_kind["M"]), _keys(by_kind["P"])
    if by_kind["HZ"]:
        if not (by_kind["M"] and by_kind["P"]):
            _refuse_form(by_kind, where, len(ignored))
        notes.append(f"{where}: {len(by_kind['HZ'])} field-map (Hz) images left aside; magnitude + phase used")
    if by_kind["M"] and by_kind["P"]:
        form, keys = "per-echo", m_keys
        if p_keys != m_keys:
            if len(p_keys) == 1 and len(m_keys) == 2 and p_keys[0] in m_keys and m_keys[0] > 0:
                form, keys = "phase-difference", m_keys[:1]
                notes.append(phase_difference_note(m_keys[0] / 1000, m_keys[1] / 1000, origin=where))
            else:
                raise InputError(f"magnitude DICOM images in {where} have echo times {_ms(m_keys)} but phase "
                                 f"images {_ms(p_keys)}: not one acquisition's echoes (give the magnitude and "
                                 "phase series of one scan), nor a phase-difference map (magnitude at TE1 "
                                 "and TE2, one phase image labelled TE1 or TE2)")
        plan = [("M", k) for k in keys] + [("P", k) for k in p_keys]
    elif by_kind["R"] and by_kind["I"] and not by_kind["P"]:
        keys = _keys(by_kind["R"])
        if _keys(by_kind["I"]) != keys:
            raise InputError(f"real DICOM images in {where} have echo times {_ms(keys)} but imaginary images "
                             f"{_ms(_keys(by_kind['I']))}; give the real and imaginary series of one scan")
        form = "real-imaginary"
        with_mag = m_keys == keys
        plan = ([("M", k) for k in keys] if with_mag else []) + [("R", k) for k in keys] + [("I", k) for k in keys]
        notes.append(f"{where}: real and imaginary images combined to complex (phase = angle, magnitude "
                     f"{'from the magnitude images' if with_mag else '= |real + i imaginary|'})")
    else:
        _refuse_form(by_kind, where, len(ignored))
    used = [fr for kind, key in plan for fr in by_kind[kind] if fr.echo_key == key]
    ref = used[0]
    for fr in used:
        if not np.allclose(fr.orientation, ref.orientation, atol=1e-4) or \
                not np.allclose(fr.spacing, ref.spacing, atol=1e-4):
            raise InputError(f"DICOM images in {where} have different orientations or pixel spacings "
                             f"({fr.path}); give one acquisition")
    row_cos, col_cos = ref.orientation[:3], ref.orientation[3:]
    normal = np.cross(row_cos, col_cos)
    stacks: dict[str, list[list[_Frame]]] = {k: [] for k in KIND_NAMES}
    ref_positions = ref_shape = None
    for kind, key in plan:
        what = f"{KIND_NAMES[kind]} echo {key:g} ms in {where}"
        fr_sorted = _stack([fr for fr in by_kind[kind] if fr.echo_key == key], normal, what)
        positions, shape = np.array([fr.position for fr in fr_sorted]), fr_sorted[0].pixels.shape
        if ref_positions is None:
            ref_positions, ref_shape = positions, shape
        elif positions.shape != ref_positions.shape or not np.allclose(positions, ref_positions, atol=1e-3):
            raise InputError(f"{what} does not cover the same slices as the first {KIND_NAMES[plan[0][0]]} echo "
                             f"({len(positions)} and {len(ref_positions)} slices)")
        elif shape != ref_shape:
            raise InputError(f"{what} has images of {shape[1]}x{shape[0]} pixels, the first echo "
                             f"{ref_shape[1]}x{ref_shape[0]}")
        stacks[kind].append(fr_sorted)
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
        if te_s.size != len(keys):
            raise InputError(f"{te_s.size} echo times given (--te) for {len(keys)} DICOM echoes")
    elif any(k < 0 for k in keys + p_keys):
        raise InputError(f"DICOM images in {where} have no EchoTime; give --te in seconds")
    elif form == "phase-difference":
        te_s = np.array([round((m_keys[1] - m_keys[0]) / 1000.0, 9)])
    else:
        te_s = np.asarray(keys, dtype=float) / 1000.0
    ref_ds = ref.dataset
    if b0 is None:
        if ref_ds.get("MagneticFieldStrength") is None:
            raise InputError(f"DICOM images in {where} have no MagneticFieldStrength; give --b0 in tesla")
        b0 = float(ref_ds.MagneticFieldStrength)
        b0 = b0 / 10000.0 if b0 > 100 else b0

    if form == "real-imaginary":
        z = np.stack([_volume(e) for e in stacks["R"]]).astype(np.complex64)
        z += 1j * np.stack([_volume(e) for e in stacks["I"]])
        mag = np.stack([_volume(e) for e in stacks["M"]]) if stacks["M"] else np.abs(z)
        raw_phase, units, units_from = np.angle(z).astype(np.float32), "rad", "real/imaginary"
    else:
        mag = np.stack([_volume(e) for e in stacks["M"]])
        raw_phase, units, units_from = _phase_radians(stacks["P"], phase_units)
    phase = apply_phase_sign(raw_phase, phase_sign)
    first = (stacks["M"] or stacks["R"])[0]
    sop = {k: [str(fr.dataset.get("SOPInstanceUID", "")) for echo in stacks[k] for fr in echo]
           for k in ("M", "P", "R", "I") if stacks[k]}
    source = {
        "format": "dicom",
        "folders": [str(d) for d in dirs],
        "ignored_files": ignored,
        "form": form,
        "phase_units": units,
        "phase_units_from": units_from,
        "phase_sign": int(phase_sign),
        "te_from": "argument" if te is not None else
                   "EchoTime2 - EchoTime1" if form == "phase-difference" else "EchoTime",
        "notes": notes,
        "dicom": {
            "study_instance_uid": str(ref_ds.get("StudyInstanceUID", "")),
            "frame_of_reference_uid": str(ref_ds.get("FrameOfReferenceUID", "")),
            "series_instance_uids": {k: sorted({str(fr.dataset.get("SeriesInstanceUID", "")) for e in stacks[k]
                                                for fr in e}) for k in sop},
            "sop_instance_uids": sop,
            "sop_class_uid": str(ref_ds.get("SOPClassUID", "")),
            "reference_frames": [(str(fr.dataset.get("SOPInstanceUID", "")), fr.frame_number) for fr in first],
            "patient": {k: str(ref_ds.get(k, "")) for k in _PATIENT_KEYS},
            "study": {k: str(ref_ds.get(k, "")) for k in _STUDY_KEYS},
            "manufacturer": str(ref_ds.get("Manufacturer", "")),
            "reference_files": [str(fr.path) for fr in first],
        },
        "dicom_datasets": list({id(fr.dataset): fr.dataset for fr in first}.values()),
    }
    if form == "phase-difference":
        source["phase_difference"] = phase_difference_record(m_keys[0] / 1000, m_keys[1] / 1000)
    return DicomSeries(mag=mag, phase=phase, te=te_s, b0=float(b0), affine=_LPS_TO_RAS @ affine_lps, source=source)


def load_dicom_acquisition(series_dirs: str | os.PathLike | Sequence[str | os.PathLike], *,
                           te: Sequence[float] | None = None, b0: float | None = None,
                           phase_sign: int = 1, phase_units: str = "auto") -> Acquisition:
    """DICOM folders -> :class:`Acquisition` (see :func:`read_dicom_series`).

    A series with fewer than 3 slices raises :class:`InputError`: the pipeline needs a 3D volume.
    """
    s = read_dicom_series(series_dirs, te=te, b0=b0, phase_sign=phase_sign, phase_units=phase_units)
    n_slices = s.mag.shape[-1]
    if n_slices < 3:
        raise InputError(f"the DICOM series has {n_slices} slice{'s' if n_slices > 1 else ''} "
                         f"({s.mag.shape[1]}x{s.mag.shape[2]} pixels, {s.mag.shape[0]} echoes); "
                         "cmbdetect needs a 3D volume of at least 3 slices")
    return Acquisition(mag=s.mag, phase=s.phase, te=s.te, b0=s.b0, affine=s.affine, source=s.source)
