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
    assert found and int(found.group(3)) <= min(int(found.group(1)), int(found.group(2)))
    assert "simulating" in captured.err and "computing physics maps" in captured.err
    assert (out / "report.html").is_file() and (out / "provenance.json").is_file()
    truth = (out / "truth_lesions.tsv").read_text().splitlines()
    assert truth[0].startswith("kind\t") and \
        sum(ln.startswith("microbleed\t") for ln in truth) == int(found.group(2))


def test_demo_rejects_tiny_shape(tmp_path, capsys):
    assert main(["demo", str(tmp_path / "d"), "--shape", "8", "8", "8"]) == 2
    assert capsys.readouterr().err.startswith("cmbdetect: error: --shape")
    assert not (tmp_path / "d").exists()


@pytest.mark.slow
def test_demo_default_model_default_shape(tmp_path, capsys):
    assert main(["demo", str(tmp_path / "demo")]) == 0
    assert "microbleeds:" in capsys.readouterr().out
