"""Atomic output: a file or a directory appears complete or not at all.

Every output of cmbdetect is written to a temporary name beside its final place and renamed into place
only when it is complete (``os.replace`` / ``os.rename`` within one file system are atomic), so an
interrupted or failed run never leaves a half-written file or directory under the final name.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import nibabel as nib
import numpy as np

from cmbdetect.physics.errors import InputError

if TYPE_CHECKING:
    from cmbdetect.pipeline.io.output_folder import OutputClaim


def _umask_mode(mode: int) -> int:
    """``mode`` restricted by the process umask (what a plain ``mkdir``/``open`` would give)."""
    current = os.umask(0)
    os.umask(current)
    return mode & ~current


def _temp_path_beside(path: Path, *, kind: str) -> Path:
    """A fresh hidden name in the same folder as ``path`` (same file system, so renames are atomic)."""
    return path.parent / f".{path.name}.{kind}-{uuid.uuid4().hex[:12]}"


@contextmanager
def atomic_directory(final_dir: str | os.PathLike, *, claim: "OutputClaim | None" = None,
                     kind: str = "run") -> Iterator[Path]:
    """Yield an empty temporary directory beside ``final_dir``; move it to ``final_dir`` on success.

    On an exception inside the ``with`` block the temporary directory is removed and ``final_dir`` is
    left exactly as it was (absent, or the previous complete output).  On success the folder gets its manifest
    (:func:`cmbdetect.pipeline.io.output_folder.write_manifest`, ``kind`` = the command).  An existing
    non-empty ``final_dir`` is replaced only when ``claim`` (from
    :func:`~cmbdetect.pipeline.io.output_folder.claim_output_folder`) says it holds an earlier cmbdetect result,
    and then only that result's own files go: the old folder is renamed aside, the new one renamed into place,
    every file the old result did not list as its own is moved back into it, and only then is the rest of the
    old one deleted.  A ``final_dir`` that exists as a file, or holds files not claimed, raises
    :class:`InputError` before anything is written.
    """
    from cmbdetect.pipeline.io.output_folder import write_manifest

    final = Path(final_dir).absolute()
    if final.exists() and not final.is_dir():
        raise InputError(f"output path {final} exists and is not a directory")
    if final.is_dir() and any(final.iterdir()) and not (claim is not None and claim.previous):
        raise InputError(f"output folder {final} is not empty; it is replaced only when it holds an earlier "
                         f"cmbdetect result and --overwrite is given")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    except OSError as exc:
        raise InputError(f"cannot create output directory beside {final}: {exc.strerror or exc}") from exc
    os.chmod(tmp, _umask_mode(0o777))
    try:
        yield tmp
        write_manifest(tmp, kind=kind)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        if final.exists():
            old = _temp_path_beside(final, kind="old")
            os.rename(final, old)
            try:
                os.rename(tmp, final)
            except BaseException:
                os.rename(old, final)
                raise
            _move_foreign_files(old, final, own=claim.own_files if claim is not None else frozenset())
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _move_foreign_files(old: Path, new: Path, *, own: frozenset[str]) -> None:
    """Move every file of ``old`` that is not listed in ``own`` (relative paths) to the same place in ``new``;
    one whose name the new result also uses is kept beside it as ``NAME.kept-<id>``."""
    for path in sorted(p for p in old.rglob("*") if p.is_file() or p.is_symlink()):
        rel = path.relative_to(old)
        if str(rel) in own:
            continue
        dst = new / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.exists() or dst.is_symlink():
            dst = dst.with_name(f"{dst.name}.kept-{uuid.uuid4().hex[:8]}")
        os.rename(path, dst)


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffixes); ``os.replace`` it onto ``path`` on success."""
    final = Path(path).absolute()
    final.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(final.suffixes[-2:]) if final.name.endswith(".nii.gz") else final.suffix
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:12]}{suffix}"
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def copy_file(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy the file ``src`` to ``dst`` atomically; returns ``dst``."""
    with atomic_file(dst) as tmp:
        shutil.copyfile(src, tmp)
    return Path(dst)


def replace_if_changed(path: str | os.PathLike, write) -> Path:
    """``write(tmp)`` to a temporary file beside ``path``; rename it onto ``path`` only if the bytes differ
    (an unchanged file keeps its modification time, so Nipype's timestamp hashing reuses its cache)."""
    import filecmp

    final = Path(path).absolute()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".new-{uuid.uuid4().hex[:12]}-{final.name}"  # same suffixes: writers go by them
    try:
        write(tmp)
        if final.is_file() and filecmp.cmp(tmp, final, shallow=False):
            tmp.unlink()
        else:
            os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final


def save_nifti(array: np.ndarray, affine: np.ndarray, path: str | os.PathLike, *,
               dtype: Any = None) -> Path:
    """Write ``array`` (voxel order ``[i, j, k]`` or ``[i, j, k, t]``) with ``affine`` (voxel -> scanner
    RAS mm) to ``path`` (``.nii`` or ``.nii.gz``) atomically.

    Booleans are stored as uint8; other arrays as ``dtype`` (default float32).  The affine is stored as
    both sform and qform with code 1 (scanner), spatial units mm.  Returns the final path.
    """
    arr = np.asarray(array)
    if dtype is None:
        dtype = np.uint8 if arr.dtype == bool else np.float32
    img = nib.Nifti1Image(arr.astype(dtype, copy=False), np.asarray(affine, dtype=float))
    img.set_sform(img.affine, code=1)
    img.set_qform(img.affine, code=1)
    img.header.set_xyzt_units(xyz="mm", t="sec")
    with atomic_file(path) as tmp:
        nib.save(img, str(tmp))
    return Path(path)


def write_text(text: str, path: str | os.PathLike) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def _json_default(obj: Any) -> Any:
    """JSON form of numpy scalars/arrays and paths (anything else: its ``str``)."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return str(obj)


def write_json(obj: Any, path: str | os.PathLike, *, indent: int = 2) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically (numpy values and paths converted); returns the path."""
    return write_text(json.dumps(obj, indent=indent, default=_json_default) + "\n", path)
