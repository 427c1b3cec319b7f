"""``cmbdetect train --config``: the TOML recipe parsed into frozen dataclasses, bad configs refused in one
line, the plan of the shipped recipe, and a tiny recipe run end to end with its lineage."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from cmbdetect.models.train_config import load_config, parse_config, plan
from cmbdetect.physics.errors import InputError
from cmbdetect.pipeline.cli.main import main

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "weights" / "default" / "training.toml"

TINY = """
[run]
seed = 0
threads = 1

[[cohort]]
name = "tiny-train"
role = "train"
simulate = "--subjects 3 --seed 3 --shape 40,44,28 --voxel-size 1,1,1.5 --microbleeds 3 --b0 3 --echoes 1"

[[cohort]]
name = "tiny-val"
role = "validation"
simulate = "--subjects 1 --seed 4 --shape 40,44,28 --voxel-size 1,1,1.5 --microbleeds 3 --b0 3 --echoes 1"

[[train]]
steps = 2
epochs = 1
spacing = "1,1,1.5"

[[train]]
steps = 0
epochs = 1
options = ["--new-classifier"]

[operating_point]
target = 0.5
budget_step = 10
"""


def test_shipped_recipe_parses_and_plans_every_step(tmp_path):
    cfg = load_config(SHIPPED)
    assert len(cfg.cohorts_of("train")) == 7 and len(cfg.cohorts_of("validation")) == 7
    steps = plan(cfg, out=tmp_path / "out", work=tmp_path / "w")
    assert [s["step"] for s in steps] == ["simulate"] * 14 + ["train"] * 3 + ["operating_point"]
    first, last = steps[14]["argv"], steps[16]["argv"]
    assert first[first.index("--steps") + 1] == "1200" and first[first.index("--spacing") + 1] == "1,1,1.5"
    assert "--init" in last and last[last.index("--out") + 1] == str(tmp_path / "out")
    assert last[-2:] == ["--stage2-resolution-augment", "0.5"]


@pytest.mark.parametrize("edit, needle", [
    (lambda t: t.replace("steps = 2", "steps = -1"), "train[0].steps"),
    (lambda t: t.replace("epochs = 1\nspacing", "epochs = 1\nlr = 3\nspacing"), "train[0].lr"),
    (lambda t: t.replace('role = "validation"', 'role = "test"'), "cohort[1].role"),
    (lambda t: t + "\n[extra]\n", "top level.extra"),
    (lambda t: t.replace("seed = 0", "seed = 'zero'"), "run.seed"),
    (lambda t: t + "\n[vein_model]\ncohorts = ['nowhere']\n", "vein_model.cohorts"),
])
def test_bad_configs_are_refused(edit, needle, tmp_path):
    import tomllib

    with pytest.raises(InputError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        parse_config(tomllib.loads(edit(TINY)), source="t.toml")


def test_cli_refuses_config_mixed_with_flags_and_bad_files(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(TINY)
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "o"), "--steps", "5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "drop --steps" in err[0]
    cfg.write_text("[run\n")
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "o")]) == 2
    assert "not valid TOML" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_tiny_recipe_end_to_end_records_its_lineage(tmp_path):
    from cmbdetect.models.registry import load_model

    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY)
    out = tmp_path / "model"
    assert main(["train", "--config", str(cfg), "--out", str(out), "--work-dir", str(tmp_path / "w")]) == 0
    meta = json.loads((out / "metadata.json").read_text())
    lineage = meta["training"]["lineage"]
    assert [s["step"] for s in lineage] == ["simulate", "simulate", "train", "train", "operating_point"]
    assert "--steps 2" in lineage[2]["command"] and "--init" in lineage[3]["command"]
    assert meta["training"]["config"] == TINY
    m = load_model(out)
    assert m.spec.spacing == (1.0, 1.0, 1.5)
    # --resume: every step is complete, nothing runs again and the model stays the same
    before = (out / "detector.pt").read_bytes()
    assert main(["train", "--config", str(cfg), "--out", str(out), "--work-dir", str(tmp_path / "w"),
                 "--resume"]) == 0
    assert (out / "detector.pt").read_bytes() == before
