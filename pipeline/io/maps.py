"""PhysicsMaps <-> files: a folder of NIfTI files (for users, viewers, and for resuming a run), and the one-file
``.npz`` bundle the workflow nodes exchange (:func:`save_maps_bundle`).  The array names are the
:class:`~cmbdetect.physics.maps.PhysicsMaps` fields (:data:`MAP_ARRAYS`).

File names (all on the input grid, with the input affine):

=====================  ===================================================  =====
file                   content                                              units
=====================  ===================================================  =====
chimap.nii.gz          susceptibility ``chi_ppm``                           ppm
localfield.nii.gz      tissue field after background removal                ppm
brainmask.nii.gz       brain mask                                           0/1
swi.nii.gz             susceptibility-weighted image                        a.u.
mip.nii.gz             minimum-intensity projection of the SWI              a.u.
r2star.nii.gz          R2* (multi-echo only)                                1/s
chipos.nii.gz          paramagnetic part of chi (>= 0)                      ppm
chineg.nii.gz          diamagnetic part of chi (magnitude, >= 0)            ppm
magnitude.nii.gz       (echo-combined) magnitude                            a.u.
totalfield.nii.gz      total field before background removal                ppm
physics_maps.json      B0 (T), the files written and ``maps.meta``
=====================  ===================================================  =====
"""
from __future__ import annotations

import json
import os
from dataclasses import fields
from pathlib import Path

import numpy as np

from cmbdetect.physics.errors import InputError
from cmbdetect.physics.maps import PhysicsMaps
from cmbdetect.pipeline.io.atomic import atomic_file, save_nifti, write_json
from cmbdetect.pipeline.io.nifti import AFFINE_ATOL_MM, read_nifti_volume

#: The array fields of :class:`PhysicsMaps` (all but ``affine``, ``b0``, ``meta``), in field order.
MAP_ARRAYS: tuple[str, ...] = tuple(f.name for f in fields(PhysicsMaps) if f.name not in ("affine", "b0", "meta"))

#: PhysicsMaps attribute -> file name (``r2star`` only when present).
MAP_FILES: dict[str, str] = {
    "chi_ppm": "chimap.nii.gz",
    "local_field_ppm": "localfield.nii.gz",
    "mask": "brainmask.nii.gz",
    "swi": "swi.nii.gz",
    "mip": "mip.nii.gz",
    "r2star": "r2star.nii.gz",
    "chi_pos": "chipos.nii.gz",
    "chi_neg": "chineg.nii.gz",
    "magnitude": "magnitude.nii.gz",
    "field_ppm": "totalfield.nii.gz",
}
META_FILE = "physics_maps.json"


def write_physics_maps(maps: PhysicsMaps, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write every map of ``maps`` into ``out_dir`` (created if needed), each file atomically.

    Maps are float32 (mask uint8) with ``maps.affine``; ``r2star.nii.gz`` only for multi-echo data.
    Returns ``{attribute: path}``.  Callers wanting the whole folder atomic write into
    :func:`cmbdetect.pipeline.io.atomic.atomic_directory`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for attr, name in MAP_FILES.items():
        value = getattr(maps, attr)
        if value is None:
            continue
        arr = np.asarray(value)
        if arr.shape != maps.shape:
            raise ValueError(f"PhysicsMaps.{attr} has shape {arr.shape}, the mask {maps.shape}")
        written[attr] = save_nifti(arr.astype(bool) if attr == "mask" else arr, maps.affine, out / name)
    write_json({"b0_t": float(maps.b0), "files": {a: p.name for a, p in written.items()}, "meta": maps.meta},
               out / META_FILE)
    return written


def read_physics_maps(maps_dir: str | os.PathLike, *, b0: float | None = None) -> PhysicsMaps:
    """Read a folder written by :func:`write_physics_maps` back into :class:`PhysicsMaps`.

    ``b0`` (T) is taken from ``physics_maps.json`` unless given.  Missing required maps, grids that
    disagree, or an unknown field strength raise :class:`InputError`.
    """
    folder = Path(maps_dir)
    if not folder.is_dir():
        raise InputError(f"physics maps folder {folder} does not exist")
    info: dict = {}
    if (folder / META_FILE).is_file():
        try:
            info = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read {folder / META_FILE}: {exc}") from exc
    if b0 is None:
        b0 = info.get("b0_t")
    if b0 is None:
        raise InputError(f"field strength unknown for the maps in {folder}; give --b0 in tesla")
    arrays: dict[str, np.ndarray | None] = {}
    affine = None
    for attr, name in MAP_FILES.items():
        path = folder / name
        if not path.is_file():
            if attr == "r2star":
                arrays[attr] = None
                continue
            raise InputError(f"{folder} lacks {name}; it is not a complete physics-maps folder")
        data, aff = read_nifti_volume(path, what=name)
        if affine is None:
            affine = aff
        elif not np.allclose(aff, affine, rtol=0, atol=AFFINE_ATOL_MM) or data.shape != arrays["chi_ppm"].shape:
            raise InputError(f"{path} is not on the same grid as {folder / MAP_FILES['chi_ppm']}")
        arrays[attr] = data > 0.5 if attr == "mask" else data
    return PhysicsMaps(affine=affine, b0=float(b0), meta=dict(info.get("meta") or {}), **arrays)


def save_maps_bundle(maps: PhysicsMaps, path: Path) -> Path:
    """All arrays of ``maps`` (:data:`MAP_ARRAYS`, + affine, B0, JSON meta) in one uncompressed ``.npz``
    (the physics bundle the workflow nodes exchange), written atomically."""
    arrays = {k: getattr(maps, k) for k in MAP_ARRAYS if getattr(maps, k) is not None}
    meta = json.dumps(maps.meta, default=str)
    with atomic_file(path) as tmp:
        np.savez(tmp, affine=np.asarray(maps.affine, float), b0=np.float64(maps.b0), meta=np.array(meta), **arrays)
    return Path(path)


def load_maps_meta(path: str) -> dict:
    """Only the ``meta`` record of a maps bundle (methods, parameters, timings, warnings)."""
    with np.load(path, allow_pickle=False) as z:
        return json.loads(str(z["meta"]))


def load_maps_bundle(path: str) -> PhysicsMaps:
    """Inverse of :func:`save_maps_bundle`."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in MAP_ARRAYS if k in z.files}
        return PhysicsMaps(affine=z["affine"], b0=float(z["b0"]), meta=json.loads(str(z["meta"])),
                           **arrays)
