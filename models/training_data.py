"""Training subjects: images via the one BIDS reader, physics via the one chain, labels, and a cache.

Images are read only with :func:`cmbdetect.pipeline.io.bids_dataset.load_bids_acquisition` and turned into
physics maps only with :func:`cmbdetect.physics.chain.compute_physics_maps`; the maps and labels of each
subject are cached as ``<cache_dir>/<subject label>.npz`` (written atomically, tagged with a fingerprint of the
physics code and recomputed when that code or the images change) so later epochs and
re-runs are cheap.  Labels come from the simulator's ground truth (``<bids>/derivatives/groundtruth``),
or from ``--labels``: a folder of per-subject files named ``sub-<label>*`` - a TSV with columns
``x y z`` (scanner RAS mm) and optionally ``kind`` (default microbleed) and ``diameter_mm`` (default 5),
or a NIfTI label map on the image grid (0 background, 1 microbleed, 2 calcification, 3 vein).
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from cmbdetect.physics.errors import InputError
from cmbdetect.physics.geometry import voxel_sizes, world_to_voxel
from cmbdetect.physics.maps import PhysicsMaps

_MAP_FIELDS = ("mask", "magnitude", "field_ppm", "local_field_ppm", "chi_ppm", "chi_pos", "chi_neg", "swi", "mip")
_KIND_CODES = {1: "microbleed", 2: "calcification"}


@dataclass
class TrainingSubject:
    """Physics maps and labels of one subject on its native grid (lesion centres in voxel coordinates)."""

    label: str
    maps: PhysicsMaps
    lesion_vox: np.ndarray
    lesion_kinds: list[str]
    lesion_diameters_mm: np.ndarray
    label_map: np.ndarray | None


def lesions_from_label_map(labels: np.ndarray, voxel_size) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Connected components of codes 1 and 2 -> centroids (voxels), kinds and equivalent diameters (mm)."""
    centres, kinds, diam = [], [], []
    vv = float(np.prod(voxel_size))
    for code, kind in _KIND_CODES.items():
        comp, n = ndimage.label(labels == code)
        for k in range(1, n + 1):
            sel = comp == k
            centres.append(ndimage.center_of_mass(sel))
            kinds.append(kind)
            diam.append(2.0 * (3 * sel.sum() * vv / (4 * np.pi)) ** (1 / 3))
    return np.array(centres, dtype=float).reshape(-1, 3), kinds, np.array(diam, dtype=float)


def _read_user_tsv(path: Path, affine: np.ndarray):
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    if rows and not {"x", "y", "z"} <= set(rows[0]):
        raise InputError(f"label table {path} needs the columns x y z (scanner RAS mm)")
    try:
        ras = np.array([[float(r["x"]), float(r["y"]), float(r["z"])] for r in rows], dtype=float).reshape(-1, 3)
        diam = np.array([float(r.get("diameter_mm") or 5.0) for r in rows], dtype=float)
    except ValueError:
        raise InputError(f"label table {path} has non-numeric coordinates or diameters") from None
    kinds = [(r.get("kind") or "microbleed").strip() for r in rows]
    return world_to_voxel(affine, ras).reshape(-1, 3), kinds, diam


def _is_subject_file(name: str, subject: str) -> bool:
    """Whether file ``name`` belongs to ``sub-<subject>`` (the label ends at ``_`` or ``.``: ``sub-01`` is not
    ``sub-010``)."""
    stem = f"sub-{subject}"
    return name.startswith(stem) and name[len(stem):len(stem) + 1] in ("_", ".")


def read_labels(subject: str, affine: np.ndarray, shape, *, bids_dir: Path, labels: Path | None):
    """``(lesion_vox, kinds, diameters_mm, label_map or None)`` of ``subject`` (label without ``sub-``)."""
    if labels is None:
        from cmbdetect.pipeline.io.truth import read_truth

        truth = read_truth(Path(bids_dir) / "derivatives" / "groundtruth", subject)
        les = truth.lesions
        return (np.array([l.centre_vox for l in les], dtype=float).reshape(-1, 3), [l.kind for l in les],
                np.array([l.diameter_mm for l in les], dtype=float), np.asarray(truth.labels))
    files = sorted(p for p in Path(labels).glob(f"sub-{subject}*") if p.is_file() and _is_subject_file(p.name, subject))
    tsv = [p for p in files if p.name.endswith(".tsv")]
    nii = [p for p in files if p.name.endswith((".nii", ".nii.gz"))]
    if tsv:
        return (*_read_user_tsv(tsv[0], affine), None)
    if nii:
        import nibabel as nib

        lab = np.asarray(nib.load(str(nii[0])).dataobj).astype(np.uint8)
        if lab.shape != tuple(shape):
            raise InputError(f"label map {nii[0]} has shape {lab.shape}, the images {tuple(shape)}")
        return (*lesions_from_label_map(lab, voxel_sizes(affine)), lab)
    raise InputError(f"no labels for sub-{subject} in {labels} (expected sub-{subject}*.tsv or .nii.gz)")


def _physics_code() -> str:
    """Fingerprint of the physics code that made the cached maps (a cache from other code is recomputed)."""
    from cmbdetect.pipeline.io.provenance import code_fingerprint

    return code_fingerprint(("physics",))[:16]


def _save_cache(path: Path, subj: TrainingSubject) -> None:
    arrays = {f: np.asarray(getattr(subj.maps, f)) for f in _MAP_FIELDS}
    arrays["physics_code"] = np.array(_physics_code())
    arrays.update(affine=subj.maps.affine, b0=np.array(subj.maps.b0), lesion_vox=subj.lesion_vox,
                  lesion_kinds=np.array(subj.lesion_kinds, dtype=str), lesion_diam=subj.lesion_diameters_mm)
    if subj.label_map is not None:
        arrays["label_map"] = subj.label_map
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)


def _cache_is_current(path: Path) -> bool:
    with np.load(path, allow_pickle=False) as z:
        return "physics_code" in z.files and str(z["physics_code"]) == _physics_code()


def _load_cache(path: Path, label: str) -> TrainingSubject:
    z = np.load(path, allow_pickle=False)
    maps = PhysicsMaps(**{f: z[f] for f in _MAP_FIELDS}, affine=z["affine"], b0=float(z["b0"]))
    return TrainingSubject(label, maps, z["lesion_vox"], [str(k) for k in z["lesion_kinds"]], z["lesion_diam"],
                           z["label_map"] if "label_map" in z.files else None)


def load_training_subjects(bids_dirs, *, cache_dir: str | Path, labels: str | Path | None = None,
                           log=print) -> list[TrainingSubject]:
    """All subjects of one or more BIDS datasets with their maps (computed once, then cached as
    ``<cache_dir>/<dataset folder name>_<subject label>.npz``) and labels."""
    from cmbdetect.pipeline.io.bids_dataset import find_bids_subjects, load_bids_acquisition

    dirs = [Path(bids_dirs)] if isinstance(bids_dirs, (str, Path)) else [Path(d) for d in bids_dirs]
    found = []
    for d in dirs:
        subs = find_bids_subjects(d)
        if not subs:
            raise InputError(f"no GRE/SWI magnitude+phase images found in {d}")
        found.extend((d, s) for s in subs)
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    out = []
    for n, (bids_dir, s) in enumerate(found, start=1):
        name = f"{bids_dir.resolve().name}_{s.label}"
        path = cache / f"{name}.npz"
        newest = max(p.stat().st_mtime for p in (*s.mag, *s.phase))
        if path.is_file() and path.stat().st_mtime >= newest and _cache_is_current(path):
            out.append(_load_cache(path, name))
            continue
        from cmbdetect.physics.chain import compute_physics_maps

        acq = load_bids_acquisition(s)
        maps = compute_physics_maps(mag=acq.mag, phase=acq.phase, te=acq.te, b0=acq.b0, affine=acq.affine)
        vox, kinds, diam, lab = read_labels(s.subject, acq.affine, acq.shape, bids_dir=bids_dir,
                                            labels=None if labels is None else Path(labels))
        subj = TrainingSubject(name, maps, vox, kinds, diam, lab)
        _save_cache(path, subj)
        log(f"[maps {n}/{len(found)}] {name}: {len(kinds)} lesions, cached")
        out.append(subj)
    return out
