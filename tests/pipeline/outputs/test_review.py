"""Reader decisions: the decisions TSV, the 3D Slicer read-back, review import -> training labels, and the
round trip from a real run's output to the training label loader and the ranking."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from cmbdetect.models.detection import Detection
from cmbdetect.physics.errors import InputError
from cmbdetect.physics.geometry import ras_to_lps
from cmbdetect.pipeline.outputs.candidates import (candidates_from_detections, read_candidates_tsv, reader_candidates,
                                           write_candidates)
from cmbdetect.pipeline.cli.main import main
from cmbdetect.pipeline.outputs.slicer import write_slicer_markups
from cmbdetect.pipeline.outputs.review import (DECISION_COLUMNS, Decision, decisions_from_markups, labels_from_decisions,
                                       read_decisions, write_decisions)


def _det(ijk, label, p_mb, p_calc=0.0, p_vein=0.0):
    p = {"microbleed": p_mb, "calcification": p_calc, "vein": p_vein, "other": max(0.0, 1 - p_mb - p_calc - p_vein)}
    return Detection(centre_vox=ijk, score=0.5, probabilities=p, label=label, diameter_mm=3.0,
                     features={"mean_chi_ppm": 0.2})


@pytest.fixture
def run_rows(oblique_affine):
    dets = [_det((5, 5, 5), "microbleed", 0.9), _det((10, 12, 8), "possible_microbleed", 0.3),
            _det((20, 8, 6), "calcification", 0.01, p_calc=0.9), _det((15, 20, 10), "vein", 0.1, p_vein=0.8),
            _det((25, 25, 12), "other", 0.001)]
    return candidates_from_detections(dets, affine=oblique_affine(), mask=None)


def test_decisions_tsv_round_trip_and_bad_rows(tmp_path):
    rows = [Decision(1, "accept", "microbleed", 1.0, 2.0, 3.0, reader="A. Reader", time="2026-01-01T10:00:00Z"),
            Decision(2, "relabel", "vein", 4.0, 5.0, 6.0), Decision(None, "add", "microbleed", 7.0, 8.0, 9.0)]
    path = write_decisions(rows, tmp_path / "d.tsv")
    assert path.read_text().splitlines()[0].split("\t") == list(DECISION_COLUMNS)
    back = read_decisions(path)
    assert back == [Decision(1, "accept", "microbleed", 1.0, 2.0, 3.0, "A. Reader", "2026-01-01T10:00:00Z"),
                    Decision(2, "relabel", "vein", 4.0, 5.0, 6.0), Decision(None, "add", "microbleed", 7.0, 8.0, 9.0)]
    bad = tmp_path / "bad.tsv"
    bad.write_text("\t".join(DECISION_COLUMNS) + "\n1\tmaybe\tmicrobleed\t1\t2\t3\t\t\n")
    with pytest.raises(InputError, match="line 2.*maybe"):
        read_decisions(bad)
    bad.write_text("\t".join(DECISION_COLUMNS) + "\n1\trelabel\tpossible_microbleed\t1\t2\t3\t\t\n")
    with pytest.raises(InputError, match="relabel label"):
        read_decisions(bad)


def test_labels_from_decisions_kinds_and_wrong_run(run_rows):
    by = {c.label: c for c in run_rows}
    mb, pos, calc = by["microbleed"], by["possible_microbleed"], by["calcification"]
    decisions = [Decision(mb.id, "reject", mb.label, *mb.ras), Decision(mb.id, "accept", mb.label, *mb.ras),
                 Decision(pos.id, "accept", pos.label, *pos.ras), Decision(calc.id, "relabel", "microbleed", *calc.ras),
                 Decision(by["vein"].id, "reject", "vein", *by["vein"].ras),
                 Decision(None, "add", "microbleed", 1.0, 2.0, 3.0)]
    rows = labels_from_decisions(decisions, run_rows)
    assert [(r["id"], r["kind"]) for r in rows] == [(str(mb.id), "microbleed"), (str(pos.id), "microbleed"),
                                                     (str(calc.id), "microbleed"), (str(by["vein"].id), "other"),
                                                     ("n/a", "microbleed")]  # the later decision on mb wins
    assert np.allclose([rows[0]["x"], rows[0]["y"], rows[0]["z"]], mb.ras)
    with pytest.raises(InputError, match="another run or patient"):
        labels_from_decisions([Decision(mb.id, "accept", mb.label, *(mb.ras + [20.0, 0, 0]))], run_rows)
    with pytest.raises(InputError, match="does not have"):
        labels_from_decisions([Decision(99, "accept", "microbleed", *mb.ras)], run_rows)
    with pytest.raises(InputError, match="labels it"):
        labels_from_decisions([Decision(calc.id, "accept", "microbleed", *calc.ras)], run_rows)


def test_slicer_markups_edited_read_back(run_rows, tmp_path):
    """Accept / relabel by editing labels, reject by deleting, a moved point keeps its new place, an added
    point is an added lesion; positions come back in RAS whatever the file's coordinate system."""
    listed = reader_candidates(run_rows)
    assert [c.label for c in listed] == ["microbleed", "possible_microbleed", "calcification", "vein"]
    path = write_slicer_markups(listed, tmp_path / "candidates.mrk.json")
    doc = json.loads(path.read_text())
    pts = doc["markups"][0]["controlPoints"]
    pts[0]["label"] = "1 accept"
    pts[0]["position"] = list(ras_to_lps(listed[0].ras + [1.0, 0.0, 0.0]))  # nudged by the reader
    pts[1]["description"] = "yes, bleed"  # label untouched, description says accept
    pts[2]["label"] = "3 vein"  # relabel
    del pts[3]  # deleted: reject
    pts.append({"id": "17", "label": "F-5", "position": [-1.0, -2.0, 3.0], "positionStatus": "defined"})
    path.write_text(json.dumps(doc))
    got = decisions_from_markups(path, listed, reader="R")
    assert [(d.id, d.decision, d.label) for d in got] == [
        (1, "accept", "microbleed"), (2, "accept", "possible_microbleed"), (3, "relabel", "vein"),
        (None, "add", "microbleed"), (4, "reject", "vein")]
    assert np.allclose(got[0].ras, listed[0].ras + [1.0, 0.0, 0.0]) and np.allclose(got[3].ras, [1.0, 2.0, 3.0])
    assert all(d.reader == "R" for d in got)
    doc["markups"][0]["controlPoints"][0]["label"] = "1 perhaps"
    path.write_text(json.dumps(doc))
    with pytest.raises(InputError, match="names no decision"):
        decisions_from_markups(path, listed)
    untouched = write_slicer_markups(listed, tmp_path / "untouched.mrk.json")
    assert decisions_from_markups(untouched, listed) == []  # nothing edited, nothing decided


def test_review_import_merges_and_refuses_bad_input(run_rows, tmp_path, capsys):
    run = tmp_path / "run"
    write_candidates(run_rows, run)
    mb = run_rows[0]
    d1 = write_decisions([Decision(mb.id, "accept", mb.label, *mb.ras)], tmp_path / "d1.tsv")
    out = tmp_path / "labels"
    args = ["review", "import", "--run", str(run), "--out", str(out), "--subject", "07"]
    assert main([*args, "--decisions", str(d1), "--reader", "Dr A"]) == 0
    labels = out / "sub-07_desc-reviewed_labels.tsv"
    first = labels.read_text().splitlines()
    assert len(first) == 2 and "\tmicrobleed\t" in first[1] and "Dr A" in first[1]
    side = json.loads((out / "sub-07_desc-reviewed_labels.json").read_text())
    assert side["complete"] is False and side["reader_list_size"] == 4
    # a second import adds to the first (and a new decision on the same candidate replaces the old one)
    d2 = write_decisions([Decision(mb.id, "relabel", "vein", *mb.ras),
                          Decision(run_rows[1].id, "reject", run_rows[1].label, *run_rows[1].ras)], tmp_path / "d2.tsv")
    assert main([*args, "--decisions", str(d2)]) == 0
    rows = labels.read_text().splitlines()[1:]
    assert sorted(r.split("\t")[3] for r in rows) == ["other", "vein"]
    capsys.readouterr()
    assert main(["review", "import", "--run", str(run), "--out", str(out)]) == 2  # nothing to import
    assert main([*args, "--decisions", str(tmp_path / "absent.tsv")]) == 2
    assert main(["review", "import", "--run", str(tmp_path / "nothing"), "--out", str(out),
                 "--decisions", str(d1), "--subject", "07"]) == 2
    err = capsys.readouterr().err
    assert err.count("cmbdetect: error:") == 3 and "Traceback" not in err


@pytest.fixture(scope="module")
def simulated_run(tmp_path_factory):
    """A tiny simulated BIDS subject and the output of ``cmbdetect run`` on it (random model)."""
    from cmbdetect.models.registry import create_random_model
    from cmbdetect.pipeline.io.bids_dataset import find_bids_subjects, load_bids_acquisition
    from cmbdetect.pipeline.simulate.subject import simulate_dataset

    root = tmp_path_factory.mktemp("roundtrip")
    bids = root / "bids"
    simulate_dataset(bids, subjects=1, seed=5, shape=(48, 56, 32), voxel_size=(1.0, 1.0, 1.5), echoes=1,
                     n_microbleeds=3)
    (subject,) = find_bids_subjects(bids)
    acq = load_bids_acquisition(subject)
    model = str(create_random_model(root / "random", seed=0))
    run = root / "run"
    assert main(["run", "--mag", str(subject.mag[0]), "--phase", str(subject.phase[0]), "--te", str(float(acq.te[0])),
                 "--b0", str(float(acq.b0)), "--out", str(run), "--model", model]) == 0
    return {"bids": bids, "subject": subject, "acq": acq, "model": model, "run": run, "root": root}


def test_round_trip_run_to_training_labels_and_rank(simulated_run, tmp_path):
    """Run output -> decisions (report TSV and Slicer markups) -> review import -> the train label loader reads the
    accepted microbleeds at their RAS positions; rank skips the reviewed subject."""
    from cmbdetect.models.training_data import read_labels
    from cmbdetect.physics.geometry import voxel_to_world
    from cmbdetect.pipeline.io.truth import read_truth

    run, acq, subject = simulated_run["run"], simulated_run["acq"], simulated_run["subject"]
    listed = read_candidates_tsv(run / "candidates.tsv")
    everything = read_candidates_tsv(run / "candidates_all.tsv")
    assert (run / "candidates_all.json").is_file() and len(everything) >= len(listed)
    assert [c.id for c in listed] == list(range(1, len(listed) + 1))
    report = (run / "report.html").read_text()
    ident = report[report.index('id="identity"'):report.index('id="summary"')]
    assert Path(subject.mag[0]).name in ident and "Echo times (s)" in ident and "Subject" in ident
    truth = read_truth(simulated_run["bids"] / "derivatives" / "groundtruth", subject.subject)
    true_mb = [voxel_to_world(acq.affine, np.asarray(l.centre_vox, float)) for l in truth.lesions
               if l.kind == "microbleed"]
    assert true_mb
    # the reader: in the report accepts the first unlisted-or-listed candidate as a microbleed (relabel), rejects
    # another; in Slicer adds the true microbleed the tool missed
    pick = everything[0]
    decisions = [Decision(pick.id, "relabel" if pick.label not in ("microbleed", "possible_microbleed") else "accept",
                          "microbleed" if pick.label not in ("microbleed", "possible_microbleed") else pick.label,
                          *pick.ras, reader="R", time="2026-01-01T00:00:00Z")]
    if len(everything) > 1:
        decisions.append(Decision(everything[1].id, "reject", everything[1].label, *everything[1].ras))
    tsv = write_decisions(decisions, tmp_path / "decisions.tsv")
    markups = tmp_path / "edited.mrk.json"
    shutil.copyfile(run / "candidates.mrk.json", markups)
    doc = json.loads(markups.read_text())
    doc["markups"][0]["controlPoints"].append(
        {"id": "new1", "label": "missed microbleed", "position": list(ras_to_lps(true_mb[0])), "positionStatus": "defined"})
    markups.write_text(json.dumps(doc))
    labels = tmp_path / "labels"
    assert main(["review", "import", "--run", str(run), "--decisions", str(tsv), "--markups", str(markups),
                 "--out", str(labels), "--subject", subject.subject]) == 0
    vox, kinds, diam, lab = read_labels(subject.subject, acq.affine, acq.shape, bids_dir=simulated_run["bids"],
                                        labels=labels)
    assert lab is None and len(kinds) == len(vox) == len(diam)
    ras = voxel_to_world(acq.affine, vox)
    mb = ras[[k == "microbleed" for k in kinds]]
    assert any(np.linalg.norm(mb - pick.ras, axis=1) < 1e-2)  # the accepted / relabelled candidate
    assert any(np.linalg.norm(mb - true_mb[0], axis=1) < 1e-2)  # the one added in Slicer
    assert len(kinds) == len(decisions) + 1 and kinds.count("other") == len(decisions) - 1  # the rejected one
    # rank: the reviewed subject is skipped
    out = tmp_path / "rank.tsv"
    assert main(["rank", "--bids-dir", str(simulated_run["bids"]), "--out", str(out), "--model",
                 simulated_run["model"], "--reviewed", str(labels)]) == 0
    assert out.read_text().splitlines()[1:] == []
    out2 = tmp_path / "rank_all.tsv"
    assert main(["rank", "--bids-dir", str(simulated_run["bids"]), "--out", str(out2), "--model",
                 simulated_run["model"]]) == 0
    assert len(out2.read_text().splitlines()) == 2


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_chromium() is None, reason="no Chromium to run the report's script (apt-get install chromium)")
def test_report_buttons_save_decisions_review_import_reads(simulated_run, tmp_path):
    """The report's own script in a real browser: click accept / relabel on tiles, take the TSV the Save button
    would download, and import it."""
    report = (simulated_run["run"] / "report.html").read_text()
    listed = reader_candidates(read_candidates_tsv(simulated_run["run"] / "candidates.tsv"))
    if len(listed) < 2:
        pytest.skip("the random model listed fewer than 2 candidates")
    a, b = listed[0].id, listed[1].id
    probe = (f"<script>document.getElementById('reader').value='Dr\\tB';"
             f"document.querySelector('input[name=d{a}][value=accept]').click();"
             f"var s=document.querySelector('select[name=l{b}]');s.value='vein';s.dispatchEvent(new Event('change'));"
             "var pre=document.createElement('pre');pre.id='out';pre.textContent=window.cmbDecisionsTSV();"
             "document.body.appendChild(pre);</script></body>")
    page = tmp_path / "probe.html"
    page.write_text(report.replace("</body>", probe))
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    import html as _html
    import re

    text = _html.unescape(re.search(r'<pre id="out">(.*?)</pre>', dom, re.S).group(1))
    tsv = tmp_path / "decisions.tsv"
    tsv.write_text(text)
    got = read_decisions(tsv)
    assert [(d.id, d.decision, d.label, d.reader) for d in got] == [
        (a, "accept", listed[0].label, "Dr B"), (b, "relabel", "vein", "Dr B")]
    assert np.allclose(got[0].ras, listed[0].ras, atol=1e-3) and got[0].time.endswith("Z")
    assert main(["review", "import", "--run", str(simulated_run["run"]), "--decisions", str(tsv),
                 "--out", str(tmp_path / "labels"), "--subject", "01"]) == 0


def test_label_files_match_the_whole_subject_label(tmp_path):
    """``sub-01``'s labels are never read from ``sub-010``'s file (the label ends at ``_`` or ``.``)."""
    from cmbdetect.models.training_data import read_labels

    affine = np.eye(4)
    (tmp_path / "sub-010_labels.tsv").write_text("x\ty\tz\n1\t2\t3\n")
    with pytest.raises(InputError, match="no labels for sub-01"):
        read_labels("01", affine, (8, 8, 8), bids_dir=tmp_path, labels=tmp_path)
    (tmp_path / "sub-01.tsv").write_text("x\ty\tz\n4\t5\t6\n4\t4\t4\n")
    vox, kinds, diam, lab = read_labels("01", affine, (8, 8, 8), bids_dir=tmp_path, labels=tmp_path)
    assert lab is None and kinds == ["microbleed", "microbleed"] and np.allclose(vox[0], [4, 5, 6])
