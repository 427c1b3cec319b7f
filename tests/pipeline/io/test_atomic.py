"""Atomic outputs: complete or absent, never half-written; existing outputs replaced safely."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from cmbdetect.physics.errors import InputError
from cmbdetect.pipeline.io.atomic import atomic_directory, save_nifti, write_json, write_text
from cmbdetect.pipeline.io.output_folder import MANIFEST_NAME, claim_output_folder


def test_atomic_directory_appears_complete(tmp_path):
    final = tmp_path / "out"
    with atomic_directory(final) as tmp:
        assert tmp.parent == final.parent and tmp != final
        (tmp / "a.txt").write_text("A")
        assert not final.exists()
    assert (final / "a.txt").read_text() == "A"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary left beside it


def _earlier_result(final):
    with atomic_directory(final) as tmp:
        (tmp / "old.txt").write_text("old")
    return claim_output_folder(final, overwrite=True)


def test_atomic_directory_removed_on_error_and_old_output_kept(tmp_path):
    final = tmp_path / "out"
    claim = _earlier_result(final)
    with pytest.raises(RuntimeError):
        with atomic_directory(final, claim=claim) as tmp:
            (tmp / "new.txt").write_text("new")
            raise RuntimeError("boom")
    assert sorted(p.name for p in final.iterdir()) == [MANIFEST_NAME, "old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_directory_replaces_an_earlier_result(tmp_path):
    final = tmp_path / "out"
    claim = _earlier_result(final)
    with atomic_directory(final, claim=claim) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == [MANIFEST_NAME, "new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_directory_never_replaces_an_unclaimed_folder(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "user.txt").write_text("mine")
    with pytest.raises(InputError):
        with atomic_directory(final) as tmp:
            (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == ["user.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_directory_refuses_a_file(tmp_path):
    f = tmp_path / "out"
    f.write_text("x")
    with pytest.raises(InputError):
        with atomic_directory(f):
            pass


def test_save_nifti_round_trip_and_no_temporaries(tmp_path, oblique_affine):
    aff = oblique_affine((5, 6, 7))
    arr = np.arange(5 * 6 * 7, dtype=np.float64).reshape(5, 6, 7)
    path = save_nifti(arr, aff, tmp_path / "x.nii.gz")
    img = nib.load(str(path))
    assert img.get_data_dtype() == np.float32
    np.testing.assert_allclose(img.get_fdata(), arr)
    np.testing.assert_allclose(img.affine, aff, atol=1e-5)
    assert img.header["sform_code"] == 1 and img.header["qform_code"] == 1
    mask = save_nifti(arr > 100, aff, tmp_path / "m.nii")
    assert nib.load(str(mask)).get_data_dtype() == np.uint8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.nii", "x.nii.gz"]


def test_save_nifti_failure_keeps_previous_file(tmp_path):
    path = tmp_path / "x.nii.gz"
    save_nifti(np.zeros((3, 3, 3)), np.eye(4), path)
    before = path.read_bytes()
    with pytest.raises(Exception):
        save_nifti(np.zeros((3, 3, 3), dtype=object), np.eye(4), path, dtype=object)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["x.nii.gz"]


def test_write_json_and_text(tmp_path):
    p = write_json({"a": np.float32(1.5), "b": np.arange(3), "c": tmp_path}, tmp_path / "d" / "x.json")
    assert json.loads(p.read_text()) == {"a": 1.5, "b": [0, 1, 2], "c": str(tmp_path)}
    t = write_text("hello\n", tmp_path / "t.txt")
    assert t.read_text() == "hello\n"


def test_copy_file_and_replace_if_changed(tmp_path):
    import os

    from cmbdetect.pipeline.io.atomic import copy_file, replace_if_changed

    src = tmp_path / "a.txt"
    src.write_text("one")
    dst = copy_file(src, tmp_path / "sub" / "b.txt")
    assert dst.read_text() == "one"
    os.utime(dst, (1_000_000, 1_000_000))
    replace_if_changed(dst, lambda p: p.write_text("one"))
    assert dst.stat().st_mtime == 1_000_000  # same bytes: left untouched (the cache key keeps)
    replace_if_changed(dst, lambda p: p.write_text("two"))
    assert dst.read_text() == "two" and dst.stat().st_mtime != 1_000_000
    assert sorted(p.name for p in dst.parent.iterdir()) == ["b.txt"]  # no temporary file left
