"""HTML report: self-contained, one gallery image per candidate, fast, works with no candidates."""
from __future__ import annotations

import re
import time

import numpy as np
import pytest
from scipy import ndimage

from cmbdetect.models.detection import Detection
from cmbdetect.physics.forward import forward_field, voxel_offsets_mm
from cmbdetect.physics.geometry import b0_direction, voxel_sizes
from cmbdetect.physics.maps import PhysicsMaps
from cmbdetect.pipeline.candidates import candidates_from_detections
from cmbdetect.pipeline.report import display_windows, render_candidate_tile, write_report

LESIONS = [  # (centre voxel, chi ppm, radius mm, label)
    ((20.0, 30.0, 24.0), 0.8, 1.6, "microbleed"),
    ((42.0, 26.0, 20.0), -0.6, 1.8, "calcification"),
    ((32.0, 40.0, 30.0), 0.5, 1.2, "microbleed"),
]


def synthetic_maps(affine, shape=(64, 64, 48), seed=0) -> PhysicsMaps:
    """A tiny head: ellipsoidal brain, spherical sources, a vein along axis 1, forward-modelled field."""
    rng = np.random.default_rng(seed)
    ijk = np.indices(shape, dtype=float)
    centre = (np.array(shape) - 1) / 2.0
    mask = (((ijk - centre[:, None, None, None]) / (np.array(shape) * 0.42)[:, None, None, None]) ** 2
            ).sum(0) <= 1.0
    chi = np.zeros(shape, np.float32)
    for c, value, radius, _ in LESIONS:
        chi[np.linalg.norm(voxel_offsets_mm(shape, affine, c), axis=-1) <= radius] = value
    chi[30:33, 10:54, 14:16] = 0.3  # a vein
    field = forward_field(chi, voxel_sizes(affine), b0_direction(affine)) * mask
    mag = (mask * (1.0 + 0.05 * rng.standard_normal(shape)) * (1.0 - 0.7 * (np.abs(chi) > 0.1))).astype(np.float32)
    swi = mag * (1.0 - np.clip(field / 0.05, 0.0, 1.0)) ** 4
    mip = ndimage.minimum_filter1d(swi, 6, axis=2)
    return PhysicsMaps(mask=mask, magnitude=mag, field_ppm=field, local_field_ppm=field, chi_ppm=chi,
                       chi_pos=np.clip(chi, 0, None), chi_neg=np.clip(-chi, 0, None), swi=swi, mip=mip,
                       affine=affine, b0=3.0)


def synthetic_candidates(affine, mask):
    dets = [Detection(centre_vox=c, score=0.9 - 0.1 * n, label=label, diameter_mm=2 * r,
                      probabilities={"microbleed": 0.8 - 0.1 * n if label == "microbleed" else 0.05,
                                     "calcification": 0.9 if label == "calcification" else 0.05,
                                     "vein": 0.1, "other": 0.05},
                      features={"mean_chi_ppm": chi}, uncertainty=0.1 * n)
            for n, (c, chi, r, label) in enumerate(LESIONS)]
    return candidates_from_detections(dets, affine=affine, mask=mask)


@pytest.fixture
def maps(oblique_affine):
    return synthetic_maps(oblique_affine((64, 64, 48), (1.0, 1.0, 1.2), angles_deg=(10.0, 0.0, 5.0)))


def _check_self_contained(text):
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert "<script" not in text.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", text, re.I)
    assert "<link" not in text.lower()


def test_report_one_image_per_candidate(maps, tmp_path):
    cands = synthetic_candidates(maps.affine, maps.mask)
    path = write_report(tmp_path / "report.html", maps=maps, candidates=cands,
                        settings={"inversion": "default", "prevalence": 0.01},
                        warnings=["phase sign convention assumed (+1)"],
                        model_info={"name": "tiny", "version": "0", "sha256": "ab" * 32})
    text = path.read_text()
    _check_self_contained(text)
    ids = re.findall(r'<img data-candidate="(\d+)"', text)
    assert sorted(map(int, ids)) == [c.id for c in cands]
    assert "phase sign convention assumed" in text and "ab" * 32 in text
    assert text.count("<img") == len(cands) + 1  # + the overview
    assert "region unknown: brain mask is" in text  # the tiny test brain is too small for regions


def test_report_without_candidates_and_gallery_cap(maps, tmp_path):
    text = write_report(tmp_path / "empty.html", maps=maps, candidates=[], settings={}, warnings=[],
                        model_info={}).read_text()
    _check_self_contained(text)
    assert "data-candidate" not in text and "No candidates" in text
    cands = synthetic_candidates(maps.affine, maps.mask)
    text = write_report(tmp_path / "cap.html", maps=maps, candidates=cands, settings={}, warnings=[],
                        model_info={}, max_gallery=2).read_text()
    assert len(re.findall(r"<img data-candidate=", text)) == 2 and "limited to 2 of" in text


def test_report_from_a_minimal_table(maps, tmp_path):
    """A table with only label, probability and x y z (no voxel indices) still gives a full report."""
    from cmbdetect.pipeline.candidates import read_candidates_tsv

    c = synthetic_candidates(maps.affine, maps.mask)[0]
    table = tmp_path / "min.tsv"
    table.write_text(f"label\tprobability\tx\ty\tz\n{c.label}\t{c.probability}\t{c.x}\t{c.y}\t{c.z}\n")
    text = write_report(tmp_path / "r.html", maps=maps, candidates=read_candidates_tsv(table), settings={},
                        warnings=[], model_info={}).read_text()
    assert len(re.findall(r"<img data-candidate=", text)) == 1


def test_tile_is_fast_and_shows_the_lesion(maps):
    cands = synthetic_candidates(maps.affine, maps.mask)
    windows = display_windows(maps)
    start = time.perf_counter()
    tiles = [render_candidate_tile(maps, c, windows=windows) for c in cands]
    per_tile = (time.perf_counter() - start) / len(cands)
    assert per_tile < 0.3
    tile = tiles[0]
    assert tile.dtype == np.uint8 and tile.ndim == 3 and tile.shape[2] == 3
    # the chi panel (third column) of the axial row is bright at the centre of a paramagnetic candidate
    mb = next(n for n, c in enumerate(cands) if c.label == "microbleed")
    label_w, head_h, title_h, panel, gap = 58, 20, 14, 96, 2
    x0, y0 = label_w + 2 * (panel + gap), head_h + title_h
    centre = tiles[mb][y0 + 46:y0 + 50, x0 + 46:x0 + 50, 0]
    assert centre.mean() > 200
