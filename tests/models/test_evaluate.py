"""VALDO-style metrics on hand-made cases with known answers."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cmbdetect.models.evaluate import evaluate_detections, match_count, roc_auc, write_evaluation


def _reject(name):
    raise AssertionError(f"non-standard JSON constant {name}")


@pytest.fixture
def case():
    truth = {"A": [(0, 0, 0), (20, 0, 0), (40, 0, 0)], "B": [], "C": [(0, 0, 0)]}
    pred = {
        "A": [((1, 0, 0), 0.9, "microbleed"),     # hit lesion 1
              ((0, 2, 0), 0.8, "microbleed"),     # second prediction on lesion 1: FP
              ((20, 4.9, 0), 0.7, "microbleed"),  # hit lesion 2 (4.9 < 5 mm)
              ((40, 5, 0), 0.6, "microbleed"),    # exactly 5 mm: not a hit -> FP, lesion 3 missed
              ((100, 0, 0), 0.3, "vein")],        # not a microbleed call: FROC/AUC only
        "B": [((0, 0, 0), 0.85, "microbleed")],   # subject without lesions: FP
    }                                             # C: no predictions: its lesion is missed
    return pred, truth


def test_operating_point(case):
    r = evaluate_detections(*case)
    assert (r.n_subjects, r.n_true, r.n_predicted) == (3, 4, 5)
    assert (r.tp, r.fp, r.fn) == (2, 3, 2)
    assert r.sensitivity == pytest.approx(0.5)
    assert r.precision == pytest.approx(0.4)
    assert r.f1 == pytest.approx(4 / 9)
    assert r.fp_per_subject == pytest.approx(1.0)
    assert r.count_error == pytest.approx(1.0)  # |4-3|, |1-0|, |0-1|
    assert r.mean_subject_f1 == pytest.approx((4 / 7 + 0 + 0) / 3)
    assert [p["tp"] for p in r.per_subject] == [2, 0, 0]


def test_froc_and_auc(case):
    r = evaluate_detections(*case)
    assert r.froc_threshold[1:] == [0.9, 0.85, 0.8, 0.7, 0.6, 0.3]
    assert r.froc_sensitivity == pytest.approx([0, 0.25, 0.25, 0.25, 0.5, 0.5, 0.5])
    assert r.froc_fp_per_subject == pytest.approx([0, 0, 1 / 3, 2 / 3, 2 / 3, 1, 4 / 3])
    assert r.sensitivity_at_fp == pytest.approx({"0.5": 0.25, "1": 0.5, "2": 0.5, "4": 0.5})
    # true candidates (within 5 mm of a lesion): 0.9, 0.8, 0.7; false: 0.85, 0.6, 0.3 -> 7 of 9 pairs
    assert r.stage2_auc == pytest.approx(7 / 9)


def test_one_to_one_is_maximum_matching():
    # A lies between two lesions and is nearer the first; only B can reach the first.
    # Greedy (A takes its nearest lesion) would find 1 hit; the maximum matching finds 2.
    truth = [(0, 0, 0), (6, 0, 0)]
    preds = [((2.5, 0, 0), 0.9, "microbleed"), ((-1, 0, 0), 0.5, "microbleed")]
    r = evaluate_detections({"s": preds}, {"s": truth})
    assert (r.tp, r.fp, r.fn) == (2, 0, 0)
    assert match_count([(0, 0, 1), (0, 1, 0)], [(0, 0, 0)]) == 1  # two on one lesion: 1 TP


def test_ties_are_one_threshold():
    preds = [((0, 0, 0), 0.5, "microbleed"), ((50, 0, 0), 0.5, "microbleed")]
    r = evaluate_detections({"s": preds}, {"s": [(0, 0, 0)]})
    assert r.froc_threshold == [float("inf"), 0.5]
    assert r.froc_sensitivity == [0.0, 1.0] and r.froc_fp_per_subject == [0.0, 1.0]
    assert roc_auc([0.5, 0.5], [True, False]) == pytest.approx(0.5)
    assert roc_auc([0.1, 0.2], [True, True]) is None


def test_bad_subjects():
    with pytest.raises(ValueError, match="without ground truth"):
        evaluate_detections({"x": []}, {"y": []})
    with pytest.raises(ValueError):
        evaluate_detections({}, {})
    with pytest.raises(ValueError, match="hit_mm"):
        evaluate_detections({}, {"a": []}, hit_mm=0.0)


def test_write_evaluation(case, tmp_path):
    paths = write_evaluation(evaluate_detections(*case), tmp_path / "ev")
    metrics = json.loads(paths["metrics"].read_text(), parse_constant=_reject)  # strict JSON (inf threshold -> null)
    assert metrics["tp"] == 2 and metrics["froc_threshold"][0] is None
    assert "one-to-one" in metrics["definitions"]["hit"]
    rows = paths["froc_tsv"].read_text().splitlines()
    assert rows[0] == "threshold\tsensitivity\tfp_per_subject" and len(rows) == 8
    assert paths["froc_png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert np.isclose(float(rows[-1].split("\t")[2]), 4 / 3, atol=1e-5)


# --- the `cmbdetect evaluate` subcommand --------------------------------------------------------------

def _run_cli(argv):
    import argparse

    from cmbdetect.pipeline.cli import evaluate as cli_evaluate

    parser = argparse.ArgumentParser(prog="cmbdetect")
    cli_evaluate.add_parser(parser.add_subparsers(dest="command"))
    return cli_evaluate.run(parser.parse_args(["evaluate", *argv]))


def _truth_table(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["kind\ti\tj\tk\tx\ty\tz\tdiameter_mm\tchi_ppm\tregion"]
    lines += [f"{kind}\t0\t0\t0\t{x}\t{y}\t{z}\t3\t0.5\tlobar" for kind, (x, y, z) in rows]
    path.write_text("\n".join(lines) + "\n")


def _pred_table(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["id\tlabel\tprobability\tx\ty\tz\tp_microbleed"]
    lines += [f"{n}\t{label}\t{p}\t{x}\t{y}\t{z}\t{pmb}" for n, (label, p, pmb, (x, y, z)) in
              enumerate(rows, start=1)]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def dataset(tmp_path):
    gt = tmp_path / "bids" / "derivatives" / "groundtruth"
    _truth_table(gt / "sub-01" / "sub-01_desc-lesions_table.tsv",
                 [("microbleed", (10, 0, 0)), ("calcification", (30, 0, 0)), ("microbleed", (-20, 5, 5))])
    _truth_table(gt / "sub-02" / "sub-02_desc-lesions_table.tsv", [("microbleed", (0, 0, 0))])
    runs = tmp_path / "runs"
    _pred_table(runs / "sub-01" / "candidates.tsv",
                [("microbleed", 0.9, 0.9, (11, 0, 0)),         # hit
                 ("calcification", 0.8, 0.1, (30, 0, 0)),      # right call on the calcification
                 ("microbleed", 0.6, "n/a", (60, 0, 0))])     # FP, score from probability
    _pred_table(runs / "sub-02" / "out" / "sub-02_candidates.tsv", [("vein", 0.7, 0.2, (0, 1, 0))])
    return tmp_path


def test_cli_evaluate_end_to_end(dataset, capsys):
    out = dataset / "eval"
    assert _run_cli(["--pred", str(dataset / "runs"), "--truth", str(dataset / "bids"), "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert (m["n_subjects"], m["n_true"], m["tp"], m["fp"], m["fn"]) == (2, 3, 1, 1, 2)
    assert m["stage2_auc"] == pytest.approx(3 / 4)  # true: 0.9, 0.2; false: 0.6, 0.1
    assert (out / "froc.png").is_file() and (out / "froc.tsv").is_file()
    assert "2 subjects, 3 microbleeds" in capsys.readouterr().out


def test_cli_evaluate_bad_input_writes_nothing(dataset):
    from cmbdetect.physics.errors import InputError

    out = dataset / "eval"
    with pytest.raises(InputError, match="does not exist"):
        _run_cli(["--pred", str(dataset / "runs"), "--truth", str(dataset / "nope"), "--out", str(out)])
    _pred_table(dataset / "runs" / "sub-07" / "candidates.tsv", [])
    with pytest.raises(InputError, match="without ground truth: 07"):
        _run_cli(["--pred", str(dataset / "runs"), "--truth", str(dataset / "bids"), "--out", str(out)])
    with pytest.raises(InputError, match="cannot tell the subject"):
        _pred_table(dataset / "loose.tsv", [])
        _run_cli(["--pred", str(dataset / "loose.tsv"), "--truth", str(dataset / "bids"), "--out", str(out)])
    assert not out.exists()
    out.write_text("not a folder")
    with pytest.raises(InputError, match="not a folder"):
        _run_cli(["--pred", str(dataset / "runs"), "--truth", str(dataset / "bids"), "--out", str(out)])
    with pytest.raises(InputError, match="hit-mm"):
        _run_cli(["--pred", str(dataset / "runs"), "--truth", str(dataset / "bids"), "--out", str(out),
                  "--hit-mm", "-1"])


def test_cli_evaluate_single_subject_run_folder(dataset):
    """A plain run output (no sub- in its path) is matched to the only ground-truth subject."""
    truth = dataset / "bids" / "derivatives" / "groundtruth" / "sub-02" / "sub-02_desc-lesions_table.tsv"
    run_dir = dataset / "one_run"
    _pred_table(run_dir / "candidates.tsv", [("microbleed", 0.9, 0.9, (0.5, 0, 0))])
    out = dataset / "eval1"
    assert _run_cli(["--pred", str(run_dir), "--truth", str(truth), "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert (m["n_subjects"], m["tp"], m["fp"]) == (1, 1, 0)
    assert m["per_subject"][0]["subject"] == "02"


def test_cli_evaluate_reads_the_audit_table_beside_the_readers_list(dataset):
    """A run folder (or BIDS derivatives) with the reader's list and candidates_all: the FROC ranks all candidates."""
    deriv = dataset / "deriv" / "sub-02" / "anat"
    _pred_table(deriv / "sub-02_desc-cmb_candidates.tsv", [("microbleed", 0.9, 0.9, (50, 0, 0))])
    _pred_table(deriv / "sub-02_desc-cmball_candidates.tsv", [("microbleed", 0.9, 0.9, (50, 0, 0)),
                                                              ("other", 0.9, 0.01, (0.5, 0, 0))])
    truth = dataset / "bids" / "derivatives" / "groundtruth" / "sub-02" / "sub-02_desc-lesions_table.tsv"
    out = dataset / "eval2"
    assert _run_cli(["--pred", str(dataset / "deriv"), "--truth", str(truth), "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert (m["tp"], m["fp"], m["n_predicted"]) == (0, 1, 1) and m["stage2_auc"] == pytest.approx(0.0)
    assert m["froc_sensitivity"][-1] == pytest.approx(1.0)  # the unlisted candidate is in the FROC

