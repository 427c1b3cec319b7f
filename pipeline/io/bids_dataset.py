"""BIDS discovery of GRE/SWI magnitude + phase images and their reading into :class:`Acquisition`.

Accepted images: ``sub-<label>[/ses-<label>]/anat/*_part-mag_<suffix>.nii[.gz]`` with a matching
``part-phase`` file, ``<suffix>`` one of ``T2starw``, ``MEGRE`` or the not-yet-official ``swi``; the
``echo`` entity is optional.  Files that share all entities except ``echo`` and ``part`` form one
acquisition (one :class:`BidsSubject`).  Metadata (``EchoTime`` s, ``MagneticFieldStrength`` T) follow
the BIDS inheritance principle (JSON files higher up with a subset of the entities apply, the most
specific wins).  Reading goes through :func:`cmbdetect.pipeline.io.nifti.acquisition_from_nifti_files`.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cmbdetect.physics.errors import InputError
from cmbdetect.pipeline.io.acquisition import Acquisition
from cmbdetect.pipeline.io.bids import ENTITY_ORDER, parse_entities
from cmbdetect.pipeline.io.nifti import acquisition_from_nifti_files

#: Suffixes of GRE images with magnitude and phase (``swi`` is a BIDS extension proposal).
GRE_SUFFIXES: tuple[str, ...] = ("T2starw", "MEGRE", "swi")
_NIFTI_EXTENSIONS = (".nii.gz", ".nii")


@dataclass
class BidsSubject:
    """One magnitude + phase acquisition of one subject (and session) in a BIDS dataset.

    ``mag``/``phase`` are paths in the same echo order (``echo`` entity, when present);
    ``entities`` holds the entities shared by the files (without ``echo`` and ``part``).
    """

    root: Path
    subject: str
    session: str | None
    suffix: str
    mag: list[Path]
    phase: list[Path]
    entities: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """``sub-01[_ses-1][_acq-x][_run-1]``: a name for outputs of this acquisition."""
        keys = [k for k in ENTITY_ORDER if k in self.entities]
        return "_".join(f"{k}-{self.entities[k]}" for k in keys)


def _normalise_labels(participant_label: str | Sequence[str] | None) -> set[str] | None:
    if participant_label is None:
        return None
    labels = [participant_label] if isinstance(participant_label, str) else list(participant_label)
    out = {str(lab).removeprefix("sub-") for lab in labels}
    return out or None


def _is_nifti(path: Path) -> bool:
    return path.is_file() and path.name.endswith(_NIFTI_EXTENSIONS)


def _anat_dirs(subject_dir: Path) -> list[tuple[str | None, Path]]:
    sessions = sorted(p for p in subject_dir.glob("ses-*") if p.is_dir())
    if sessions:
        return [(s.name.removeprefix("ses-"), s / "anat") for s in sessions]
    return [(None, subject_dir / "anat")]


def find_bids_subjects(bids_dir: str | os.PathLike, *,
                       participant_label: str | Sequence[str] | None = None) -> list[BidsSubject]:
    """All magnitude + phase GRE acquisitions of a BIDS dataset (optionally only some participants).

    ``participant_label``: a label or list of labels, with or without ``sub-``.  A folder without
    ``dataset_description.json``, a requested participant that is absent, magnitude and phase with
    different echoes, or a dataset with no usable acquisition raise :class:`InputError`.
    """
    root = Path(bids_dir)
    if not root.is_dir():
        raise InputError(f"BIDS folder {root} does not exist")
    if not (root / "dataset_description.json").is_file():
        raise InputError(f"{root} is not a BIDS dataset (no dataset_description.json)")
    wanted = _normalise_labels(participant_label)
    subject_dirs = sorted(p for p in root.glob("sub-*") if p.is_dir())
    present = {p.name.removeprefix("sub-") for p in subject_dirs}
    if wanted is not None and wanted - present:
        raise InputError(f"participant(s) {', '.join(sorted(wanted - present))} not found in {root}")
    found: list[BidsSubject] = []
    for sdir in subject_dirs:
        sub = sdir.name.removeprefix("sub-")
        if wanted is not None and sub not in wanted:
            continue
        for ses, anat in _anat_dirs(sdir):
            found.extend(_acquisitions_in(root, sub, ses, anat))
    if not found:
        who = f" for participant(s) {', '.join(sorted(wanted))}" if wanted else ""
        raise InputError(f"no magnitude+phase GRE images (part-mag/part-phase, suffix {'/'.join(GRE_SUFFIXES)}) "
                         f"found in {root}{who}")
    return found


def _acquisitions_in(root: Path, sub: str, ses: str | None, anat: Path) -> list[BidsSubject]:
    if not anat.is_dir():
        return []
    groups: dict[tuple, dict[str, dict[int | None, Path]]] = {}
    for f in sorted(anat.iterdir()):
        if not _is_nifti(f):
            continue
        ent = parse_entities(f)
        if ent.get("suffix") not in GRE_SUFFIXES or ent.get("part") not in ("mag", "phase") \
                or ent.get("sub") != sub:
            continue
        shared = {k: v for k, v in ent.items() if k not in ("echo", "part", "extension")}
        key = tuple(sorted(shared.items()))
        try:
            echo = int(ent["echo"]) if "echo" in ent else None
        except ValueError:
            raise InputError(f"BIDS file {f} has a non-numeric echo entity") from None
        slot = groups.setdefault(key, {"mag": {}, "phase": {}})[ent["part"]]
        if echo in slot:
            raise InputError(f"BIDS files {slot[echo].name} and {f.name} are the same image in two formats")
        slot[echo] = f
    out = []
    for key, parts in groups.items():
        if not parts["mag"] or not parts["phase"]:
            continue  # magnitude-only (or phase-only) images are not usable for QSM
        if set(parts["mag"]) != set(parts["phase"]):
            raise InputError(f"BIDS magnitude and phase of sub-{sub} ({dict(key)['suffix']}) have different "
                             f"echoes: {sorted(parts['mag'], key=str)} vs {sorted(parts['phase'], key=str)}")
        echoes = sorted(parts["mag"], key=lambda e: -1 if e is None else e)
        shared = dict(key)
        suffix = shared.pop("suffix")
        out.append(BidsSubject(root=root, subject=sub, session=ses, suffix=suffix,
                               mag=[parts["mag"][e] for e in echoes], phase=[parts["phase"][e] for e in echoes],
                               entities=shared))
    return out


def inherited_metadata(nifti_path: Path, root: Path) -> dict:
    """JSON metadata of a BIDS image by the inheritance principle (top level first, most specific last)."""
    ent = parse_entities(nifti_path)
    file_entities = {k: v for k, v in ent.items() if k not in ("suffix", "extension")}
    levels = [root]
    rel = nifti_path.parent.relative_to(root)
    for part in rel.parts:
        levels.append(levels[-1] / part)
    meta: dict = {}
    for level in levels:
        candidates = []
        for j in level.glob("*.json"):
            if j.name == "dataset_description.json":
                continue
            je = parse_entities(j)
            if je.get("suffix") != ent.get("suffix"):
                continue
            keys = {k: v for k, v in je.items() if k not in ("suffix", "extension")}
            if all(file_entities.get(k) == v for k, v in keys.items()):
                candidates.append((len(keys), j))
        for _, j in sorted(candidates):
            try:
                data = json.loads(j.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise InputError(f"cannot read BIDS sidecar {j}: {exc}") from exc
            if isinstance(data, dict):
                meta.update(data)
    return meta


def load_bids_acquisition(subject: BidsSubject, *, te: Sequence[float] | None = None, b0: float | None = None,
                          phase_sign: int = 1, phase_units: str = "auto") -> Acquisition:
    """Read one :class:`BidsSubject` into an :class:`Acquisition` (echoes sorted by ``EchoTime``).

    Options as :func:`cmbdetect.pipeline.io.nifti.load_nifti_acquisition` (explicit ``te`` s / ``b0`` T
    win over the sidecars).  ``acq.source`` also records the BIDS root and the acquisition label.
    """
    root = Path(subject.root)
    return acquisition_from_nifti_files(
        subject.mag, subject.phase,
        mag_meta=[inherited_metadata(Path(p), root) for p in subject.mag],
        phase_meta=[inherited_metadata(Path(p), root) for p in subject.phase],
        te=te, b0=b0, phase_sign=phase_sign, phase_units=phase_units,
        source={"format": "bids", "bids_dir": str(root), "bids_label": subject.label,
                "subject": subject.subject, "session": subject.session})
