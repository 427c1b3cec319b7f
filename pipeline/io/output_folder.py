"""Output folders that never destroy a user's files.

Every command that writes a folder (``run``, ``qsm``, ``demo``, ``simulate``, ``train``, the BIDS-App) first
*claims* it with :func:`claim_output_folder`:

- a folder that does not exist yet, or is empty, is taken;
- a folder that holds an earlier cmbdetect result is taken only with ``--overwrite``, and then only the files
  that result listed as its own are replaced: anything else in it (a user's notes, their own images) stays;
- any other non-empty folder is refused, and so is an output folder that is, contains or lies inside an
  input (the one exception: a BIDS dataset's own ``derivatives/`` folder, where BIDS puts derived data).

An earlier result is recognised by the manifest every cmbdetect output folder carries,
:data:`MANIFEST_NAME` (a hidden JSON file listing the files cmbdetect wrote there, relative paths), or, for
results of versions before the manifest, by ``provenance.json`` of ``cmbdetect run`` and the ``outputs`` it
lists.  A refusal is an :class:`InputError` whose one line says what is there and what would work.
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from cmbdetect.physics.errors import InputError

#: Hidden file in each output folder that lists the files cmbdetect wrote there (see the module doc).
MANIFEST_NAME = ".cmbdetect-outputs.json"

#: The ``generated_by`` value of the manifest and of ``provenance.json``.
GENERATOR = "cmbdetect"


@dataclass(frozen=True)
class OutputClaim:
    """A claimed output folder: ``path`` (absolute), ``previous`` True when it holds an earlier cmbdetect result
    (being replaced), and ``own_files`` the relative paths of that result's files (the only ones that may be
    replaced or removed)."""

    path: Path
    previous: bool = False
    own_files: frozenset[str] = field(default_factory=frozenset)


def read_manifest(folder: Path) -> frozenset[str] | None:
    """The files (relative paths) an earlier cmbdetect result in ``folder`` lists as its own, or None when the
    folder holds no recognisable cmbdetect result."""
    manifest = folder / MANIFEST_NAME
    try:
        record = json.loads(manifest.read_text())
        if record.get("generated_by") == GENERATOR and isinstance(record.get("files"), list):
            return frozenset(str(f) for f in record["files"]) | {MANIFEST_NAME}
    except (OSError, ValueError, AttributeError):
        pass
    provenance = folder / "provenance.json"  # `cmbdetect run` results written before the manifest
    try:
        record = json.loads(provenance.read_text())
        if (record.get("generated_by") or {}).get("name") == GENERATOR and isinstance(record.get("outputs"), list):
            return frozenset(str(f) for f in record["outputs"]) | {"provenance.json"}
    except (OSError, ValueError, AttributeError):
        pass
    return None


def write_manifest(folder: Path, *, kind: str, files: Iterable[str] | None = None) -> Path:
    """Write the manifest of ``folder`` (atomically): ``files`` (relative paths), by default every file now in
    it.  ``kind`` names the command (``run``, ``simulate``, ...)."""
    from cmbdetect.pipeline.io.atomic import write_json

    if files is None:
        files = (str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_NAME)
    return write_json({"generated_by": GENERATOR, "kind": kind, "files": sorted(set(files))},
                      folder / MANIFEST_NAME)


def add_overwrite_argument(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--overwrite``: replace an earlier cmbdetect result in the output folder (only its own files)."""
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier cmbdetect result in the output folder (only the files it wrote "
                             "are replaced; anything else there is kept)")
    return parser


def add_to_manifest(folder: Path, *, kind: str, files: Iterable[str]) -> Path:
    """Add ``files`` (relative paths) to the manifest of ``folder`` (created when missing): for folders that
    cmbdetect fills piece by piece, such as a BIDS derivatives folder over several participant runs."""
    return write_manifest(folder, kind=kind, files=set(read_manifest(folder) or ()) - {MANIFEST_NAME} | set(files))


def claim_output_file(path: str | os.PathLike, *, overwrite: bool, first_line: str,
                      option: str = "--out") -> Path:
    """Check that the single output file ``path`` may be written: absent, or a file cmbdetect wrote before
    (recognised by its ``first_line``, e.g. a table header) and ``overwrite`` given.  Returns the absolute
    path; InputError otherwise."""
    out = Path(path).expanduser().absolute()
    if out.is_dir():
        raise InputError(f"{option} {out} is a folder; give a file name")
    if not out.exists():
        return out
    try:
        with open(out, encoding="utf-8", errors="replace") as f:
            ours = f.readline().rstrip("\n") == first_line
    except OSError:
        ours = False
    if not ours:
        raise InputError(f"{option} {out} exists and is not a file cmbdetect wrote; give a new file name")
    if not overwrite:
        raise InputError(f"{option} {out} holds an earlier cmbdetect result; add --overwrite to replace it")
    return out


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_clear_of_inputs(out: str | os.PathLike, inputs: Iterable[str | os.PathLike], *, option: str = "--out",
                          derivatives_of: str | os.PathLike | None = None) -> None:
    """InputError when the output folder ``out`` is, contains or lies inside one of ``inputs`` (files or
    folders); sub-folders of ``derivatives_of/derivatives`` (a BIDS dataset's own) are allowed."""
    out = Path(out).expanduser().resolve()
    derivatives_of = Path(derivatives_of).expanduser().resolve() if derivatives_of is not None else None
    for given in inputs:
        src = Path(given).expanduser().resolve()
        if derivatives_of is not None and src == derivatives_of and _within(out, src / "derivatives") \
                and out != src / "derivatives":
            continue  # BIDS: derived data belongs in the dataset's own derivatives/ folder
        if _within(src, out):
            raise InputError(f"{option} {out} contains the input {src}: outputs must not go where the input "
                             f"lies; give a new folder outside it")
        if _within(out, src):
            raise InputError(f"{option} {out} lies inside the input {src}; give a new folder outside it"
                             + (" (or under its derivatives/ folder)" if derivatives_of is not None else ""))


def claim_output_folder(path: str | os.PathLike, *, overwrite: bool, inputs: Iterable[str | os.PathLike] = (),
                        option: str = "--out", derivatives_of: str | os.PathLike | None = None) -> OutputClaim:
    """Check that ``path`` may receive cmbdetect's outputs (rules in the module doc); returns the claim.

    ``inputs``: files or folders the command reads (the output must not be, contain or lie inside any);
    ``option``: how the user named the folder, for messages; ``derivatives_of``: a BIDS dataset among the
    inputs whose ``derivatives/`` sub-folders are allowed.  Nothing is created or changed here."""
    out = Path(path).expanduser().absolute()
    check_clear_of_inputs(out, inputs, option=option, derivatives_of=derivatives_of)
    if out.exists() and not out.is_dir():
        raise InputError(f"{option} {out} exists and is not a folder; give a new folder name")
    if not out.exists():
        return OutputClaim(path=out)
    try:
        entries = sorted(p.name for p in out.iterdir())
    except OSError as exc:
        raise InputError(f"{option} {out} cannot be read: {exc.strerror or exc}") from None
    if not entries:
        return OutputClaim(path=out)
    own = read_manifest(out)
    if own is None:
        shown = ", ".join(repr(e) for e in entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise InputError(f"{option} {out} is not empty and holds files cmbdetect did not write ({shown}); "
                         f"give a new or empty folder")
    if not overwrite:
        raise InputError(f"{option} {out} holds an earlier cmbdetect result; add --overwrite to replace it "
                         f"(only cmbdetect's own files are replaced), or give a new folder")
    return OutputClaim(path=out, previous=True, own_files=own)
