"""Same candidate tables as the reference run: ``cmbdetect demo`` on its simulated subject and ``cmbdetect run``
on two small simulated subjects (committed as NIfTI, so a change to the simulator does not move them), all with
the tiny seeded random model of ``conftest.tiny_random_model``.

The references in ``tests/data/same_tables/`` were written by this file's ``--regenerate`` mode on the code
before the pipeline/ re-layout (issue 22); a refactor that claims "behaviour unchanged" must keep them.
Regenerate only for an intended change of the results (and say why in the commit)::

    python tests/test_same_tables.py --regenerate
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parent / "data" / "same_tables"
TABLES = ("candidates.tsv", "candidates_all.tsv")
#: ``demo`` options (its own simulated subject) and the ``run`` input options of the committed subjects.
DEMO_ARGS = ["--shape", "40", "44", "28", "--seed", "0"]
SUBJECTS = {
    "sim-a": dict(seed=21, shape=(32, 36, 24), n_microbleeds=3, voxel_size=(1.4, 1.4, 2.5), snr=80.0),
    "sim-b": dict(seed=22, shape=(32, 32, 20), te=(0.01, 0.02), n_microbleeds=3, oblique_deg=12.0),
}
SUBJECT_TE = {"sim-a": "0.02", "sim-b": "0.01,0.02"}
#: Numeric columns agree to this (float32 maps; the tables print 3-6 significant digits).
RTOL, ATOL = 1e-4, 1.5e-3


def _run_args(name: str) -> list[str]:
    d = DATA / name
    return ["--mag", str(d / "mag.nii.gz"), "--phase", str(d / "phase.nii.gz"), "--te", SUBJECT_TE[name],
            "--b0", "3", "--phase-units", "rad"]


def _detect(case: str, out: Path, model: str) -> Path:
    """Run the case through the CLI into ``out`` (one thread: the reference's); returns ``out``."""
    from cmbdetect.pipeline.cli.main import main

    common = ["--model", str(model), "--nprocs", "1"]
    argv = ["demo", str(out), *DEMO_ARGS, *common] if case == "demo" else \
        ["run", *_run_args(case), "--out", str(out), *common]
    assert main(argv) == 0, case
    return out


def _read(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    return rows[0], rows[1:]


def _as_float(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def assert_same_table(got: Path, want: Path) -> None:
    """Same columns, rows and text cells; numeric cells within :data:`RTOL`/:data:`ATOL`."""
    got_head, got_rows = _read(got)
    want_head, want_rows = _read(want)
    assert got_head == want_head, f"{got.name}: columns differ"
    assert len(got_rows) == len(want_rows), f"{got.name}: {len(got_rows)} rows, reference {len(want_rows)}"
    for n, (g_row, w_row) in enumerate(zip(got_rows, want_rows), start=1):
        for column, g, w in zip(want_head, g_row, w_row):
            gf, wf = _as_float(g), _as_float(w)
            if gf is None or wf is None:
                assert g == w, f"{got.name} row {n} {column}: {g!r} != reference {w!r}"
            else:
                assert np.isclose(gf, wf, rtol=RTOL, atol=ATOL), \
                    f"{got.name} row {n} {column}: {g} != reference {w}"


@pytest.mark.parametrize("case", ["demo", *SUBJECTS])
def test_same_candidate_tables(case, tmp_path, tiny_random_model):
    out = _detect(case, tmp_path / "out", tiny_random_model)
    for table in TABLES:
        assert_same_table(out / table, DATA / case / table)


def test_reference_tables_are_not_trivial():
    """The references hold candidates of several labels (a comparison of empty tables would prove nothing)."""
    labels = set()
    for case in ["demo", *SUBJECTS]:
        head, rows = _read(DATA / case / "candidates_all.tsv")
        assert len(rows) >= 5, case
        labels |= {row[head.index("label")] for row in rows}
    assert len(labels) >= 2


def _regenerate() -> None:  # pragma: no cover - run by hand, see the module docstring
    import shutil
    import tempfile

    from cmbdetect.models.registry import create_random_model
    from cmbdetect.pipeline.io.atomic import save_nifti
    from cmbdetect.pipeline.simulate.subject import simulate_subject

    with tempfile.TemporaryDirectory() as tmp:
        model = create_random_model(Path(tmp) / "model", seed=0)  # as conftest.tiny_random_model
        for name, kwargs in SUBJECTS.items():
            (DATA / name).mkdir(parents=True, exist_ok=True)
            if not (DATA / name / "mag.nii.gz").is_file():
                acq = simulate_subject(**kwargs).acq
                save_nifti(np.moveaxis(acq.mag, 0, -1).astype(np.float32), acq.affine, DATA / name / "mag.nii.gz")
                save_nifti(np.moveaxis(acq.phase, 0, -1).astype(np.float32), acq.affine,
                           DATA / name / "phase.nii.gz")
        for case in ["demo", *SUBJECTS]:
            out = _detect(case, Path(tmp) / case, model)
            (DATA / case).mkdir(parents=True, exist_ok=True)
            for table in TABLES:
                shutil.copyfile(out / table, DATA / case / table)


if __name__ == "__main__" and "--regenerate" in sys.argv[1:]:
    _regenerate()
