"""BIDS file names from entities (never by string concatenation at call sites).

Entities are written in the BIDS order; ``None`` values are omitted.
"""
from __future__ import annotations

import re
from pathlib import Path

#: BIDS entity order (the specification's entity table; subset relevant to GRE/SWI and derivatives):
#: ``label`` comes before ``desc``, which is always last.
ENTITY_ORDER: tuple[str, ...] = ("sub", "ses", "task", "acq", "ce", "rec", "run", "echo", "part", "space",
                                 "res", "label", "desc")

_VALUE = re.compile(r"^[A-Za-z0-9]+$")


def bids_name(*, suffix: str, extension: str, **entities) -> str:
    """File name such as ``sub-01_echo-2_part-phase_T2starw.nii.gz``.

    Unknown entity keys or values with characters other than letters and digits raise ``ValueError``.
    """
    parts = []
    unknown = set(entities) - set(ENTITY_ORDER)
    if unknown:
        raise ValueError(f"unknown BIDS entities: {sorted(unknown)}")
    for key in ENTITY_ORDER:
        value = entities.get(key)
        if value is None:
            continue
        value = str(value)
        if not _VALUE.match(value):
            raise ValueError(f"BIDS entity {key} has an invalid value {value!r}")
        parts.append(f"{key}-{value}")
    parts.append(suffix)
    ext = extension if extension.startswith(".") else "." + extension
    return "_".join(parts) + ext


def bids_path(root: Path | str, *, datatype: str = "anat", suffix: str, extension: str, **entities) -> Path:
    """Full path ``root/sub-X[/ses-Y]/datatype/<bids_name>``."""
    sub = entities.get("sub")
    if sub is None:
        raise ValueError("a BIDS path needs a subject")
    folder = Path(root) / f"sub-{sub}"
    if entities.get("ses") is not None:
        folder = folder / f"ses-{entities['ses']}"
    if datatype:
        folder = folder / datatype
    return folder / bids_name(suffix=suffix, extension=extension, **entities)


def parse_entities(filename: str | Path) -> dict[str, str]:
    """Entities, suffix and extension of a BIDS file name (``{'sub': '01', ..., 'suffix': 'T2starw',
    'extension': '.nii.gz'}``)."""
    name = Path(filename).name
    stem, dot, ext = name.partition(".")
    pieces = stem.split("_")
    out: dict[str, str] = {"suffix": pieces[-1], "extension": dot + ext}
    for p in pieces[:-1]:
        k, _, v = p.partition("-")
        out[k] = v
    return out
