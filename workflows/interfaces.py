"""Common parts of the cmbdetect Nipype interfaces: error capture, progress lines, file bundles.

The interfaces themselves live in ``interfaces_physics`` (maps), ``interfaces_detect`` (models) and
``interfaces_report`` (exports, derivatives sink).

Nodes exchange *files*, never large arrays in traits: the acquisition travels as two 4D NIfTI files
(echoes last) plus a JSON description (echo times in s, B0 in T), the physics maps as one uncompressed
``.npz`` bundle (arrays in ppm / input units, see :class:`~cmbdetect.physics.maps.PhysicsMaps`).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("NIPYPE_NO_ET", "1")

import numpy as np  # noqa: E402
from nipype.interfaces.base import SimpleInterface  # noqa: E402

from cmbdetect.physics.errors import InputError  # noqa: E402
from cmbdetect.pipeline.io.acquisition import Acquisition  # noqa: E402
from cmbdetect.pipeline.io.atomic import replace_if_changed, save_nifti, write_json  # noqa: E402
from cmbdetect.pipeline.io.masks import load_user_mask  # noqa: E402

#: Name of the file a failing node leaves in its own folder (read back by the CLI for a one-line error).
ERROR_FILE = "cmbdetect_error.json"



def progress(label: str, message: str) -> None:
    """One progress line on stderr (``cmbdetect: [sub-01] computing physics maps``)."""
    prefix = f"[{label}] " if label else ""
    print(f"cmbdetect: {prefix}{message}", file=sys.stderr, flush=True)


class CmbInterface(SimpleInterface):
    """A SimpleInterface whose failures leave ``cmbdetect_error.json`` (type, one-line message) in the
    node folder, so the CLI can report user errors (:class:`InputError`) as one clear line."""

    def _run_interface(self, runtime):
        try:
            self._run(Path(runtime.cwd))
        except Exception as exc:  # recorded, then re-raised for Nipype's crash handling
            message = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            record = {"type": "InputError" if isinstance(exc, InputError) else type(exc).__name__,
                      "message": message}
            Path(runtime.cwd, ERROR_FILE).write_text(json.dumps(record))
            raise
        return runtime

    def _run(self, cwd: Path) -> None:  # pragma: no cover - every interface overrides it
        raise NotImplementedError


def save_acquisition(acq: Acquisition, out_dir: Path) -> dict[str, Path]:
    """Write ``acq`` as ``mag.nii`` and ``phase.nii`` (4D, echoes last, phase in radians, project sign
    convention) and ``acquisition.json`` (``te`` s, ``b0`` T, JSON-able ``source`` entries) in
    ``out_dir``; returns absolute paths.  A file whose content is unchanged is left untouched (same
    modification time), so Nipype's timestamp hashing reuses the cache when a run is repeated."""
    out_dir = Path(out_dir).absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"mag_file": out_dir / "mag.nii", "phase_file": out_dir / "phase.nii",
             "acq_json": out_dir / "acquisition.json"}
    source = {k: v for k, v in acq.source.items() if _jsonable(v)}
    writers = {
        "mag_file": lambda p: save_nifti(np.moveaxis(acq.mag, 0, -1), acq.affine, p),
        "phase_file": lambda p: save_nifti(np.moveaxis(acq.phase, 0, -1), acq.affine, p),
        "acq_json": lambda p: write_json({"te": [float(t) for t in acq.te], "b0": float(acq.b0),
                                          "source": source}, p),
    }
    for key, write in writers.items():
        replace_if_changed(paths[key], write)
    return paths


def _jsonable(value) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def load_acquisition(mag_file: str, phase_file: str, acq_json: str) -> Acquisition:
    """Read back what :func:`save_acquisition` wrote, through the project's one NIfTI reader
    (:func:`cmbdetect.pipeline.io.nifti.load_nifti_acquisition`: same shape/affine checks as user
    input); phase is already radians in the project convention, so it is read as ``rad``, sign +1."""
    from cmbdetect.pipeline.io.nifti import load_nifti_acquisition

    meta = json.loads(Path(acq_json).read_text())
    acq = load_nifti_acquisition([mag_file], [phase_file], te=meta["te"], b0=meta["b0"], phase_sign=1,
                                 phase_units="rad")
    acq.source = meta.get("source", {})  # the original reader's provenance, not the node's temp files
    return acq


def load_mask(mask_file: str, *, shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """A brain mask as bool; its grid must be the acquisition's (shape and affine), else InputError
    (the same rules as the CLI's ``--mask``: ``pipeline.io.masks.load_user_mask``)."""
    return load_user_mask(mask_file, affine, shape=tuple(shape))
