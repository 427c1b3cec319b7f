"""NIfTI magnitude + phase (one file per echo, or one 4D file with echoes last) -> :class:`Acquisition`.

This module holds the one path by which images become an :class:`Acquisition`: the BIDS reader and the
simulator's files read back go through :func:`acquisition_from_nifti_files`; the DICOM reader builds the
arrays itself but validates through the same :class:`Acquisition`.

Units: echo times in seconds (BIDS ``EchoTime``), B0 in tesla (``MagneticFieldStrength``), phase in
radians after :func:`cmbdetect.physics.phase.rescale_phase`, multiplied once by ``phase_sign``.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from cmbdetect.physics.errors import InputError
from cmbdetect.physics.phase import apply_phase_sign, detect_phase_units, rescale_phase
from cmbdetect.pipeline.io.acquisition import Acquisition
from cmbdetect.pipeline.io.input_forms import field_map_hz_message, phase_difference_note, phase_difference_record

PathLike = str | os.PathLike
#: Largest |difference| (mm, per affine entry) tolerated between the affines of files of one acquisition.
AFFINE_ATOL_MM = 1e-3


def _as_path_list(paths: PathLike | Sequence[PathLike] | None) -> list[Path]:
    if paths is None:
        return []
    if isinstance(paths, (str, os.PathLike)):
        return [Path(paths)]
    return [Path(p) for p in paths]


def sidecar_path(nifti_path: PathLike) -> Path:
    """The BIDS JSON sidecar beside a NIfTI file (``x.nii.gz`` -> ``x.json``)."""
    p = Path(nifti_path)
    name = p.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return p.with_name(name[: -len(ext)] + ".json")
    return p.with_suffix(".json")


def read_sidecar(nifti_path: PathLike) -> dict:
    """Metadata of the JSON sidecar beside ``nifti_path`` (empty dict if there is none)."""
    side = sidecar_path(nifti_path)
    if not side.is_file():
        return {}
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read JSON sidecar {side}: {exc}") from exc
    if not isinstance(meta, dict):
        raise InputError(f"JSON sidecar {side} does not hold an object")
    return meta


def read_nifti_volume(path: PathLike, *, what: str = "image") -> tuple[np.ndarray, np.ndarray]:
    """Data (float32, voxel order) and affine (voxel -> scanner RAS mm) of a NIfTI file.

    Any read failure (missing, not NIfTI, truncated/corrupt) raises :class:`InputError` naming the file.
    """
    data, affine, _ = _read_nifti(path, what=what)
    return data, affine


def _read_nifti(path: PathLike, *, what: str) -> tuple[np.ndarray, np.ndarray, bool]:
    """As :func:`read_nifti_volume`, plus whether the header holds an orientation (sform or qform code > 0;
    without one nibabel falls back to a diagonal affine from the voxel sizes)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what} file {p} does not exist")
    try:
        img = nib.load(str(p))
        data = np.asarray(img.dataobj, dtype=np.float32)
        affine = np.asarray(img.affine, dtype=float)
        header = img.header
        oriented = not (isinstance(img, (nib.Nifti1Image, nib.Nifti2Image))
                        and int(header["sform_code"]) == 0 and int(header["qform_code"]) == 0)
    except Exception as exc:  # nibabel raises many types for corrupt files (EOFError, zlib.error, ...)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"cannot read {what} file {p}: {reason}") from exc
    # trailing singleton dimensions beyond the fourth (e.g. [X,Y,Z,1,E] from some converters)
    while data.ndim > 4 and data.shape[3] == 1:
        data = data.reshape(data.shape[:3] + data.shape[4:])
    return data, affine, oriented


def _volumes_of(path: Path, *, what: str) -> tuple[list[np.ndarray], np.ndarray, bool]:
    """3D volumes (one per echo) held in one file, its affine, and whether the header is oriented."""
    data, affine, oriented = _read_nifti(path, what=what)
    if data.ndim < 3 or (data.ndim >= 3 and min(data.shape[:3]) < 3):
        raise InputError(f"{what} file {path} is 2D (shape {data.shape}); a 3D volume of at least "
                         "3 slices is needed")
    if data.ndim > 4:
        extra = " x ".join(str(n) for n in data.shape[4:])
        raise InputError(f"{what} file {path} has {data.ndim} dimensions (shape {'x'.join(map(str, data.shape))}): "
                         f"axis 4 ({data.shape[3]}) would be echoes and axis 5 ({extra}) looks like receive "
                         "coils (or complex parts); cmbdetect needs coil-combined magnitude and phase, "
                         "3D or 4D with echoes last: combine the coils first")
    if not np.any(np.isfinite(data)):
        raise InputError(f"{what} file {path} holds no finite value (all NaN or infinite)")
    if data.ndim == 3:
        return [data], affine, oriented
    return [data[..., e] for e in range(data.shape[3])], affine, oriented


def _plain(value) -> str:
    """A value for a message: numbers as ``%g``, sequences as comma lists (never a numpy repr)."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return "[" + ", ".join(_plain(v) for v in np.asarray(value, dtype=object).ravel()) + "]"
    if isinstance(value, (float, np.floating, int, np.integer)) and not isinstance(value, bool):
        return f"{float(value):g}"
    return repr(value) if isinstance(value, str) else str(value)


def check_echo_times_seconds(te: Sequence[float], *, origin: str) -> np.ndarray:
    """Echo times as a float array in seconds; a value > 1 (surely milliseconds) or <= 0 is an error."""
    try:
        arr = np.atleast_1d(np.asarray(te, dtype=float))
    except (TypeError, ValueError) as exc:
        raise InputError(f"echo times from {origin} are not numbers: {_plain(te)}") from exc
    if arr.ndim != 1 or not np.all(np.isfinite(arr)):
        raise InputError(f"echo times from {origin} are not a list of numbers: {_plain(te)}")
    if np.any(arr > 1.0):
        raise InputError(f"echo time {arr.max():g} from {origin} looks like milliseconds; "
                         f"echo times must be in seconds (e.g. {arr.max() / 1000:g})")
    if np.any(arr <= 0):
        raise InputError(f"echo times from {origin} must be positive seconds, got {arr.tolist()}")
    return arr


def _echo_times_from_meta(metas: list[dict], counts: list[int], paths: list[Path]) -> np.ndarray | None:
    """Echo times (s) from per-file metadata; ``None`` when any file lacks ``EchoTime``."""
    out: list[float] = []
    for meta, n, path in zip(metas, counts, paths):
        value = meta.get("EchoTime")
        if value is None:
            return None
        values = value if isinstance(value, list) else [value]
        if len(values) != n:
            raise InputError(f"sidecar of {path} gives {len(values)} EchoTime values for {n} echoes")
        out.extend(check_echo_times_seconds(values, origin=f"the sidecar of {path}").tolist())
    return np.asarray(out, dtype=float)


def _field_strength_from_meta(metas: list[dict], paths: list[Path]) -> float | None:
    for meta, path in zip(metas, paths):
        value = meta.get("MagneticFieldStrength")
        if value is not None:
            try:
                return float(value)
            except (TypeError, ValueError) as exc:
                raise InputError(f"MagneticFieldStrength {value!r} in the sidecar of {path} is not a number") from exc
    return None


def _refuse_sidecar_form(meta: dict, path: Path) -> None:
    """Refuse (one line) a ``--phase`` file whose sidecar says it is a field map in Hz or a real or
    imaginary part image rather than phase."""
    image_type = meta.get("ImageType") or []
    types = {str(t).upper() for t in (image_type if isinstance(image_type, list) else [image_type])}
    if str(meta.get("Units", "")).strip().lower() == "hz" or "FIELDMAPHZ" in types:
        raise InputError(field_map_hz_message(f"phase file {path}", "its sidecar: Units Hz / ImageType FIELDMAPHZ"))
    part = ("real" if types & {"REAL", "R"} else "imaginary" if types & {"IMAGINARY", "I"} else None)
    if types & {"MAGNITUDE", "M"} and not types & {"PHASE", "P"}:
        raise InputError(f"phase file {path} is a magnitude image (sidecar ImageType {'/'.join(sorted(types))}); "
                         "give the phase image as --phase (and this one as --mag)")
    if part is not None and not types & {"PHASE", "P"}:
        raise InputError(f"phase file {path} is a {part}-part image (sidecar ImageType {'/'.join(sorted(types))}); "
                         "cmbdetect needs phase: give the phase image, or the DICOM series (--dicom), whose "
                         "real and imaginary images are combined to complex")


def _phase_difference_times(phase_meta: list[dict], n_phase: int, paths: list[Path]) -> tuple[float, float] | None:
    """(EchoTime1, EchoTime2) in s when the one phase volume is a phase difference (BIDS/dcm2niix
    ``EchoTime1``/``EchoTime2`` in its sidecar), else ``None``."""
    if n_phase != 1 or not phase_meta or "EchoTime1" not in phase_meta[0] or "EchoTime2" not in phase_meta[0]:
        return None
    te1, te2 = check_echo_times_seconds([phase_meta[0]["EchoTime1"], phase_meta[0]["EchoTime2"]],
                                        origin=f"the sidecar of {paths[0]} (EchoTime1/EchoTime2)")
    if te2 <= te1:
        raise InputError(f"the sidecar of {paths[0]} gives EchoTime2 {te2 * 1000:.4g} ms not after EchoTime1 "
                         f"{te1 * 1000:.4g} ms; a phase-difference map needs TE2 > TE1")
    return float(te1), float(te2)


def _phase_to_radians(phase: np.ndarray, *, units: str, sign: int) -> np.ndarray:
    """Vendor units -> radians in [-pi, pi) (physics owns the unit rules), then the sign flip."""
    return apply_phase_sign(rescale_phase(phase, units=units), sign)


def acquisition_from_nifti_files(
    mags: Sequence[Path], phases: Sequence[Path], *, mag_meta: Sequence[dict], phase_meta: Sequence[dict],
    te: Sequence[float] | None, b0: float | None, phase_sign: int, phase_units: str, source: dict | None = None,
) -> Acquisition:
    """Build an :class:`Acquisition` from NIfTI files and their (already gathered) JSON metadata.

    The shared core of :func:`load_nifti_acquisition` and the BIDS reader (which gathers metadata with
    the BIDS inheritance principle).  Explicit ``te``/``b0`` win over metadata.  Echoes are sorted by
    echo time.  See :func:`load_nifti_acquisition` for the checks.
    """
    mags, phases = list(mags), list(phases)
    if not mags or not phases:
        raise InputError("both magnitude and phase images are needed (--mag and --phase)")
    for meta, path in zip(phase_meta, phases):
        _refuse_sidecar_form(meta, path)
    apply_phase_sign(np.zeros(1), phase_sign)  # validates --phase-sign before any file is read
    mag_vols: list[np.ndarray] = []
    phase_vols: list[np.ndarray] = []
    mag_counts: list[int] = []
    phase_counts: list[int] = []
    ref_affine = ref_path = ref_shape = None
    warnings: list[str] = []
    for kind, paths, vols, counts in (("magnitude", mags, mag_vols, mag_counts),
                                      ("phase", phases, phase_vols, phase_counts)):
        for path in paths:
            v, affine, oriented = _volumes_of(path, what=kind)
            if not oriented:
                warnings.append(f"{kind} file {path.name} has no orientation in its header (sform/qform code 0); "
                                "the B0 direction is assumed along the third voxel axis")
            if ref_affine is None:
                ref_affine, ref_path, ref_shape = affine, path, v[0].shape
            elif not np.allclose(affine, ref_affine, rtol=0, atol=AFFINE_ATOL_MM):
                worst = float(np.abs(affine - ref_affine).max())
                raise InputError(f"{kind} file {path} has a different affine (orientation/position) than "
                                 f"{ref_path} (max difference {worst:.3g} mm); the images must share one grid")
            if v[0].shape != ref_shape:
                raise InputError(f"{kind} file {path} has shape {v[0].shape}, but {ref_path} has "
                                 f"{ref_shape}; magnitude and phase must share one grid")
            vols.extend(v)
            counts.append(len(v))
    notes: list[str] = []
    difference = _phase_difference_times(list(phase_meta), len(phase_vols), phases)
    if difference is not None:
        mag_tes = _echo_times_from_meta(list(mag_meta), mag_counts, mags)
        pick = int(np.argmin(np.abs(mag_tes - difference[0]))) if mag_tes is not None else 0
        mag_vols, mag_meta, mag_counts = [mag_vols[pick]], [{**(list(mag_meta)[0] if mag_meta else {}),
                                                             "EchoTime": difference[0]}], [1]
        notes.append(phase_difference_note(*difference, origin=f"phase file {phases[0].name}"))
    if len(mag_vols) != len(phase_vols):
        raise InputError(f"{len(mag_vols)} magnitude echoes but {len(phase_vols)} phase echoes")
    n_echoes = len(mag_vols)

    te_origin = "argument"
    if te is not None:
        te_arr = check_echo_times_seconds(te, origin="--te")
        if te_arr.size != n_echoes:
            raise InputError(f"{te_arr.size} echo times given (--te) for {n_echoes} echoes")
    elif difference is not None:
        te_arr, te_origin = np.array([round(difference[1] - difference[0], 9)]), "EchoTime2 - EchoTime1"
    else:
        te_arr = _echo_times_from_meta(list(mag_meta), mag_counts, mags)
        te_phase = _echo_times_from_meta(list(phase_meta), phase_counts, phases)
        te_origin = "sidecar"
        if te_arr is None:
            te_arr, te_origin = te_phase, "phase sidecar"
        elif te_phase is not None and not np.allclose(te_arr, te_phase, rtol=0, atol=1e-6):
            raise InputError(f"echo times differ between magnitude {te_arr.tolist()} and phase "
                             f"{te_phase.tolist()} sidecars")
        if te_arr is None:
            raise InputError("echo time unknown: no EchoTime in JSON sidecars; give --te in seconds")

    b0_origin = "argument"
    if b0 is None:
        b0 = _field_strength_from_meta(list(mag_meta) + list(phase_meta), mags + phases)
        b0_origin = "sidecar"
        if b0 is None:
            raise InputError("field strength unknown: no MagneticFieldStrength in JSON sidecars; give --b0 in tesla")

    if phase_units == "auto" and phase_meta and all(str(m.get("Units", "")).lower() == "rad" for m in phase_meta):
        phase_units = "rad"  # BIDS part-phase metadata: Units "rad" (or "arbitrary")
    order = np.argsort(te_arr, kind="stable")
    mag = np.stack([mag_vols[i] for i in order])
    raw_phase = np.stack([phase_vols[i] for i in order])
    bad = ~np.all(np.isfinite(mag), axis=0) | ~np.all(np.isfinite(raw_phase), axis=0)
    if bad.any():  # e.g. the NaN background of a skull-stripped image: zero magnitude reads as background
        mag[:, bad], raw_phase[:, bad] = 0.0, 0.0
        warnings.append(f"{int(bad.sum())} voxels with NaN or infinite magnitude/phase set to 0 (treated as "
                        "background)")
    if phase_units == "auto":
        phase_units = detect_phase_units(raw_phase)  # recorded as resolved
    phase = _phase_to_radians(raw_phase, units=phase_units, sign=phase_sign)
    src = {
        "format": "nifti",
        "mag": [str(p) for p in mags],
        "phase": [str(p) for p in phases],
        "echo_order": order.tolist(),
        "te_from": te_origin,
        "b0_from": b0_origin,
        "phase_units": phase_units,
        "phase_sign": int(phase_sign),
        "warnings": sorted(set(warnings)),
        "notes": notes,
        "nonfinite_voxels": int(bad.sum()),
    }
    if difference is not None:
        src["phase_difference"] = phase_difference_record(*difference)
    if mag_meta and mag_meta[0]:
        src["sidecar"] = dict(mag_meta[0])
    src.update(source or {})
    return Acquisition(mag=mag, phase=phase, te=te_arr[order], b0=float(b0), affine=ref_affine, source=src)


def load_nifti_acquisition(
    mags: PathLike | Sequence[PathLike], phases: PathLike | Sequence[PathLike], *,
    te: Sequence[float] | float | None = None, b0: float | None = None, phase_sign: int = 1,
    phase_units: str = "auto",
) -> Acquisition:
    """Read magnitude and phase NIfTI files into an :class:`Acquisition`.

    Parameters
    ----------
    mags, phases : one file per echo (3D) or one 4D file with echoes last (or a mix); same grid.
    te : echo times in seconds, one per echo in the order the files/volumes are given; overrides the
        sidecars' ``EchoTime`` (s).  A value > 1 is taken to be milliseconds and rejected.
    b0 : field strength in tesla; overrides the sidecars' ``MagneticFieldStrength``.
    phase_sign : +1, or -1 for data whose phase falls for a paramagnetic source (flipped once, here).
    phase_units : ``"auto" | "rad" | "siemens" | "uint12" | "scale:<max>"`` (see ``physics.phase``);
        ``"auto"`` becomes ``"rad"`` when every phase sidecar says ``"Units": "rad"`` (BIDS).

    Echoes are sorted by echo time.  A single phase file whose sidecar has ``EchoTime1``/``EchoTime2``
    is a phase difference: read as one echo with TE = EchoTime2 - EchoTime1 and the magnitude at
    EchoTime1 (``source["phase_difference"]``, ``source["notes"]``).  A phase sidecar with ``Units: Hz``
    or ImageType FIELDMAPHZ (a field map), or a real/imaginary ImageType, is refused.  NaN/infinite
    voxels are set to 0 (magnitude and phase, all echoes) and counted (``source["nonfinite_voxels"]``).
    Shape or affine mismatch, 2D data, 5D (per-coil) data, missing echo time or field
    strength, and unreadable files raise :class:`InputError` with a one-line message.
    ``acq.source`` records the files, where TE/B0 came from, the phase units and sign.
    """
    mag_paths, phase_paths = _as_path_list(mags), _as_path_list(phases)
    if te is not None and np.isscalar(te):
        te = [float(te)]
    return acquisition_from_nifti_files(
        mag_paths, phase_paths,
        mag_meta=[read_sidecar(p) for p in mag_paths], phase_meta=[read_sidecar(p) for p in phase_paths],
        te=te, b0=b0, phase_sign=phase_sign, phase_units=phase_units)
