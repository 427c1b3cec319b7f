"""``cmbdetect demo``: simulate, run the whole pipeline, report found vs simulated microbleeds."""
from __future__ import annotations

import re

import pytest

from cmbdetect.pipeline.cli.main import main


def test_demo_small(tmp_path, capsys):
    from cmbdetect.models.registry import create_random_model

    model = create_random_model(tmp_path / "model", seed=1)
    out = tmp_path / "demo"
    assert main(["demo", str(out), "--shape", "48", "56", "32", "--seed", "2", "--model", str(model)]) == 0
    captured = capsys.readouterr()
    assert f"report: {out / 'report.html'}" in captured.out
    found = re.search(r"microbleeds: (\d+) found, (\d+) simulated, (\d+) of them detected", captured.out)
    assert found
    assert "simulating" in captured.err and "computing physics maps" in captured.err
    assert (out / "report.html").is_file() and (out / "provenance.json").is_file()
    truth = (out / "truth_lesions.tsv").read_text().splitlines()
    assert truth[0].startswith("kind\t") and \
        sum(ln.startswith("microbleed\t") for ln in truth) == int(found.group(2))
    # the printed counts are those of the written tables: every microbleed row of candidates.tsv, matched one to
    # one within the default 5 mm to the truth table's microbleeds (an independent assignment here)
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    from cmbdetect.pipeline.outputs.candidates import read_candidates_tsv
    from cmbdetect.pipeline.cli.evaluate import read_truth_points

    listed = [c for c in read_candidates_tsv(out / "candidates.tsv") if c.label == "microbleed"]
    assert len(listed) == int(found.group(1))
    true_pts = np.array(read_truth_points(out / "truth_lesions.tsv")).reshape(-1, 3)
    hits = 0
    if listed and len(true_pts):
        d = np.linalg.norm(np.array([[c.x, c.y, c.z] for c in listed])[:, None] - true_pts[None], axis=-1)
        rows, cols = linear_sum_assignment(np.where(d <= 5.0, d, 1e6))
        hits = int((d[rows, cols] <= 5.0).sum())
    assert int(found.group(3)) == hits
    assert f"{len(listed) - hits} false positives" in captured.out


def test_demo_rejects_tiny_shape(tmp_path, capsys):
    assert main(["demo", str(tmp_path / "d"), "--shape", "8", "8", "8"]) == 2
    assert capsys.readouterr().err.startswith("cmbdetect: error: --shape")
    assert not (tmp_path / "d").exists()


@pytest.mark.slow
def test_demo_default_model_default_shape(tmp_path, capsys):
    assert main(["demo", str(tmp_path / "demo")]) == 0
    assert "microbleeds:" in capsys.readouterr().out
