"""HTML report: self-contained, one gallery image per candidate, fast, works with no candidates."""
from __future__ import annotations

import re

import numpy as np
import pytest
from scipy import ndimage

from cmbdetect.models.detection import Detection
from cmbdetect.physics.forward import forward_field, voxel_offsets_mm
from cmbdetect.physics.geometry import b0_direction, voxel_sizes
from cmbdetect.physics.maps import PhysicsMaps
from cmbdetect.pipeline.outputs.candidates import MIMIC_LIST_FLOOR_P_MICROBLEED, candidates_from_detections
from cmbdetect.pipeline.outputs.report import display_windows, render_candidate_tile, write_report

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
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", text, re.S | re.I)
    assert len(scripts) == 1 and scripts[0][0] == ""  # one inline script, no src
    for word in ("http", "fetch(", "XMLHttpRequest", "import(", "WebSocket", "sendBeacon"):
        assert word not in scripts[0][1]  # nothing leaves the page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", text, re.I)
    assert "<link" not in text.lower()


def _report(maps, tmp_path, cands, **kw):
    args = {"settings": {"inversion": "default", "prevalence": 0.01}, "warnings": [], "model_info": {}, **kw}
    return write_report(tmp_path / "report.html", maps=maps, candidates=cands, **args).read_text()


def test_report_one_tile_per_listed_candidate_linked_from_the_table(maps, tmp_path):
    cands = synthetic_candidates(maps.affine, maps.mask)
    text = _report(maps, tmp_path, cands, warnings=["phase sign convention assumed (+1)"],
                   model_info={"name": "tiny", "version": "0", "sha256": "ab" * 32,
                               "metadata": {"thresholds": {"microbleed_call": 0.5, "microbleed_borderline": 0.2},
                                            "training": {"steps": 300, "cohort": list(range(200))}}})
    _check_self_contained(text)
    ids = re.findall(r'<img data-candidate="(\d+)"', text)
    assert sorted(map(int, ids)) == [c.id for c in cands]
    assert text.count("<img") == len(cands) + 1  # + the overview
    table = text[text.index('<table id="candidates">'):]
    table = table[:table.index("</table>")]
    for c in cands:
        assert f'href="#cand-{c.id}"' in table and f'<figure id="cand-{c.id}"' in text
    assert "phase sign convention assumed" in text and "ab" * 32 in text
    assert "region unknown: brain mask is" in text.lower()  # the tiny test brain is too small for regions
    # each tile says the microbleed probability, size, chi and slice
    mb = cands[0]
    fig = text[text.index(f'<figure id="cand-{mb.id}"'):]
    caption = fig[fig.index("<figcaption>"):fig.index("</figcaption>")]
    assert f"P(microbleed) {mb.p_microbleed:.2f}" in caption and f"Ø {mb.diameter_mm:.1f} mm" in caption
    assert f"χ {mb.susceptibility_ppm:+.2f} ppm" in caption and f"slice {round(mb.k) + 1}" in caption
    assert 'value="accept"' in fig and 'value="reject"' in fig and "relabel" in fig
    # model and settings as tables; the full records only in the collapsed provenance
    model = text[text.index("<h2>Model</h2>"):text.index("<details>")]
    assert "<th class=\"t\">sha256</th>" in model and "microbleed_call" in model and '"cohort"' not in model
    assert text.index("<details>") > text.index('id="settings"')


def test_report_reads_top_down_like_a_radiologist(maps, tmp_path):
    """Identity first, then the fitness banner, summary (MARS, BOMBS), table, legend, gallery, settings."""
    from dataclasses import replace

    cands = synthetic_candidates(maps.affine, maps.mask)
    cands += [replace(cands[-1], id=9, label="other", p_microbleed=0.001, probability=0.99, review_order=0,
                      x=cands[-1].x + 10.0)]
    maps.meta = {"fitness": {"ok": False, "reasons": ["echo time too short for chi"]},
                 "calls_withheld": "acquisition outside the validated range"}
    identity = {"Patient name": "DOE^JANE", "Patient ID": "P-1234", "Study date": "2024-01-31",
                "Series": "SWI_Images (7)"}
    text = _report(maps, tmp_path, cands, identity=identity, n_all=1000)
    body = text[text.index("<body>"):]
    order = [body.index(k) for k in ('id="identity"', "DOE^JANE", "P-1234", "2024-01-31", 'id="fitness"',
                                     'id="summary"', ">MARS<", ">BOMBS<", 'id="candidates"', 'id="legend"',
                                     'id="gallery"', '<h2 id="settings">Settings</h2>')]
    assert order == sorted(order)
    banner = body[body.index('id="fitness"'):body.index('id="summary"')]
    assert "echo time too short for chi" in banner and "outside the validated range" in banner
    assert 'data-calls-withheld="1"' in banner
    assert "listed for review of 1000 stage-1 candidates" in text
    assert 'id="cand-9"' not in text and 'href="#cand-9"' not in text  # an "other" below the floor is not listed
    legend = text[text.index('id="legend"'):text.index('id="gallery"')]
    assert "read first" in legend and f"{MIMIC_LIST_FLOOR_P_MICROBLEED:g}" in legend
    assert "uncert." in legend and "P(mb)" in legend
    assert 'id="con"' in text and 'id="bri"' in text  # contrast control on the page


def test_no_banner_when_fit(maps, tmp_path):
    maps.meta = {"fitness": {"ok": True, "reasons": []}}
    assert 'id="fitness"' not in _report(maps, tmp_path, synthetic_candidates(maps.affine, maps.mask))


def test_mars_and_bombs_counts(oblique_affine):
    from dataclasses import replace

    from cmbdetect.pipeline.outputs.report_summary import bombs_rows, mars_rows

    base = synthetic_candidates(oblique_affine((64, 64, 48), (1.0, 1.0, 1.2)), None)[0]
    rows = [replace(base, id=1, label="microbleed", region="lobar", lobe="frontal", side="right", diameter_mm=3.0),
            replace(base, id=2, label="microbleed", region="lobar", lobe="frontal", side="right", diameter_mm=7.0),
            replace(base, id=3, label="possible_microbleed", region="deep", side="left", diameter_mm=4.0),
            replace(base, id=4, label="microbleed", region="infratentorial", side="midline", diameter_mm=12.0),
            replace(base, id=5, label="calcification", region="deep", side="left", diameter_mm=3.0),
            replace(base, id=6, label="vein", region="lobar", lobe="occipital", side="left", diameter_mm=3.0)]
    mars = dict(mars_rows(rows))
    assert mars["lobar: frontal"] == {("right", "definite"): [1, 2]}
    assert mars["deep"] == {("left", "possible"): [3]} and mars["infratentorial"] == {("midline", "definite"): [4]}
    assert mars["lobar: occipital"] == {} and "region unknown" not in mars  # mimics are not counted
    bombs = dict(bombs_rows(rows))
    assert bombs["certain"] == {"< 5 mm": [1], "5-10 mm": [2], "> 10 mm (not a microbleed by size)": [4]}
    assert bombs["uncertain"] == {"< 5 mm": [3]}


def test_identity_from_dicom_and_nifti_sources(tmp_path):
    import pydicom
    from pydicom.dataset import FileMetaDataset

    from cmbdetect.pipeline.outputs.report_identity import report_identity

    ds = pydicom.Dataset()
    ds.PatientName, ds.PatientID, ds.StudyDate = "DOE^JOHN", "ID42", "20240131"
    ds.SeriesDescription, ds.SeriesNumber = "SWI_Images", 7
    ds.SOPClassUID, ds.SOPInstanceUID = pydicom.uid.MRImageStorage, pydicom.uid.generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ref = tmp_path / "ref.dcm"
    ds.save_as(ref, enforce_file_format=True)
    got = report_identity({"format": "dicom", "folders": ["/data/dicom"]}, reference_files=[ref],
                          acquisition={"B0 (T)": 3.0, "Echo times (s)": np.array([0.004, 0.008]), "Matrix": [160, 192, 72]})
    assert got["Patient name"] == "DOE^JOHN" and got["Patient ID"] == "ID42" and got["Study date"] == "2024-01-31"
    assert got["Series"] == "SWI_Images" and got["Series number"] == "7" and got["B0 (T)"] == "3"
    assert got["Echo times (s)"] == "0.004, 0.008" and got["Matrix"] == "160 x 192 x 72"
    anon = report_identity({"format": "dicom", "dicom": {"patient": {"PatientName": ""}, "study": {}}})
    assert anon["Patient name"].startswith("(not in the DICOM")  # said, not silently absent
    bids = report_identity({"format": "nifti", "bids_label": "sub-07_ses-1", "mag": ["/d/sub-07_part-mag_T2starw.nii.gz"],
                            "phase": ["/d/sub-07_part-phase_T2starw.nii.gz"], "sidecar": {"SeriesDescription": "GRE"}})
    assert bids["Subject"] == "sub-07_ses-1" and bids["Magnitude"] == "sub-07_part-mag_T2starw.nii.gz"
    assert bids["Series"] == "GRE"
    assert "not given" in report_identity({"format": "nifti", "mag": ["m.nii"]})["Subject"]


def test_report_without_candidates_and_gallery_cap(maps, tmp_path):
    text = write_report(tmp_path / "empty.html", maps=maps, candidates=[], settings={}, warnings=[],
                        model_info={}).read_text()
    _check_self_contained(text)
    assert "data-candidate" not in text and "No candidate to review" in text
    cands = synthetic_candidates(maps.affine, maps.mask)
    text = write_report(tmp_path / "cap.html", maps=maps, candidates=cands, settings={}, warnings=[],
                        model_info={}, max_gallery=2).read_text()
    assert len(re.findall(r"<img data-candidate=", text)) == 2 and "limited to the first 2 of 3" in text


def test_report_from_a_minimal_table(maps, tmp_path):
    """A table with only label, probability and x y z (no voxel indices) still gives a full report."""
    from cmbdetect.pipeline.outputs.candidates import read_candidates_tsv

    c = synthetic_candidates(maps.affine, maps.mask)[0]
    table = tmp_path / "min.tsv"
    table.write_text(f"label\tprobability\tx\ty\tz\n{c.label}\t{c.probability}\t{c.x}\t{c.y}\t{c.z}\n")
    text = write_report(tmp_path / "r.html", maps=maps, candidates=read_candidates_tsv(table), settings={},
                        warnings=[], model_info={}).read_text()
    assert len(re.findall(r"<img data-candidate=", text)) == 1


def test_tile_shows_the_lesion(maps):
    """(Tile rendering time is measured by a benchmark, not asserted here.)"""
    cands = synthetic_candidates(maps.affine, maps.mask)
    windows = display_windows(maps)
    tiles = [render_candidate_tile(maps, c, windows=windows) for c in cands]
    tile = tiles[0]
    assert tile.dtype == np.uint8 and tile.ndim == 3 and tile.shape[2] == 3
    # the chi panel (third column) of the axial row is bright at the centre of a paramagnetic candidate
    mb = next(n for n, c in enumerate(cands) if c.label == "microbleed")
    label_w, head_h, title_h, panel, gap = 58, 20, 14, 96, 2
    x0, y0 = label_w + 2 * (panel + gap), head_h + title_h
    centre = tiles[mb][y0 + 46:y0 + 50, x0 + 46:x0 + 50, 0]
    assert centre.mean() > 200
    # side letters inside every panel's edges: R on the left and L on the right of the axial magnitude panel
    x0m, y0m = label_w, head_h + title_h
    letter = np.all(np.abs(tiles[0].astype(int) - (120, 200, 255)) < 40, axis=-1)
    assert letter[y0m + 40:y0m + 56, x0m:x0m + 12].any() and letter[y0m + 40:y0m + 56, x0m + panel - 12:x0m + panel].any()
    assert letter[y0m:y0m + 14, x0m + 40:x0m + 56].any() and letter[y0m + panel - 14:y0m + panel, x0m + 40:x0m + 56].any()
