"""Ground-truth files: lesion table and maps round-trip; malformed tables are input errors."""
from __future__ import annotations

import numpy as np
import pytest

from cmbdetect.physics.errors import InputError
from cmbdetect.pipeline.io.truth import (LABELS, TABLE_COLUMNS, Lesion, Truth, read_lesion_table, read_truth,
                                      subject_folder, write_lesion_table, write_truth)


def _truth(oblique_affine, rng) -> Truth:
    shape = (20, 18, 12)
    labels = np.zeros(shape, np.uint8)
    labels[5, 6, 7] = LABELS["microbleed"]
    labels[10, 10, 3] = LABELS["calcification"]
    labels[2:4, 2, 2] = LABELS["vein"]
    lesions = [Lesion("microbleed", (5.0, 6.25, 7.5), (1.5, -2.25, 3.125), 4.5, 1.2, "lobar"),
               Lesion("calcification", (10.0, 10.0, 3.0), (-4.0, 0.5, -8.0), 3.0, -0.8, "deep")]
    return Truth(lesions=lesions, labels=labels, chi_ppm=rng.normal(size=shape).astype(np.float32),
                 local_field_ppm=rng.normal(size=shape).astype(np.float32), affine=oblique_affine(shape))


def test_truth_round_trip(tmp_path, oblique_affine, rng):
    truth = _truth(oblique_affine, rng)
    folder = write_truth(truth, tmp_path / "groundtruth", "07")
    assert folder == subject_folder(tmp_path / "groundtruth", "07")
    assert (folder / "sub-07_desc-lesions_table.tsv").is_file()
    back = read_truth(tmp_path / "groundtruth", "07")
    assert back.labels.dtype == np.uint8 and np.array_equal(back.labels, truth.labels)
    np.testing.assert_array_equal(back.chi_ppm, truth.chi_ppm)
    np.testing.assert_array_equal(back.local_field_ppm, truth.local_field_ppm)
    np.testing.assert_allclose(back.affine, truth.affine, atol=1e-5)
    assert [le.kind for le in back.lesions] == ["microbleed", "calcification"]
    for a, b in zip(back.lesions, truth.lesions):
        np.testing.assert_allclose(a.centre_vox, b.centre_vox, atol=1e-3)
        np.testing.assert_allclose(a.centre_ras, b.centre_ras, atol=1e-3)
        assert a.diameter_mm == pytest.approx(b.diameter_mm, abs=1e-3)
        assert a.chi_ppm == pytest.approx(b.chi_ppm, abs=1e-4)
        assert a.region == b.region
    assert len(back.of_kind("microbleed")) == 1


def test_lesion_table_columns_and_empty(tmp_path):
    p = write_lesion_table([], tmp_path / "t.tsv")
    assert p.read_text().strip().split("\t") == list(TABLE_COLUMNS)
    assert read_lesion_table(p) == []


_HEADER = "\t".join(TABLE_COLUMNS)


@pytest.mark.parametrize("text", ["kind\ti\tj\n", _HEADER + "\nmicrobleed\t1\t2\tx\t4\t5\t6\t3\t1\tlobar\n",
                                  _HEADER + "\nmicrobleed\t1\t2\n"])
def test_malformed_table_is_input_error(tmp_path, text):
    p = tmp_path / "bad.tsv"
    p.write_text(text)
    with pytest.raises(InputError):
        read_lesion_table(p)


def test_missing_truth_is_input_error(tmp_path):
    with pytest.raises(InputError):
        read_truth(tmp_path, "01")
