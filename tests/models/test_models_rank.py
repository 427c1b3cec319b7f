"""``cmbdetect rank``: ranking table and a run on a tiny simulated BIDS dataset with the random model."""
import argparse

import pytest

from cmbdetect.physics.errors import InputError


def test_rank_table_orders_by_summed_uncertainty():
    from cmbdetect.models.detection import Detection
    from cmbdetect.pipeline.cli.rank import format_ranking, subject_row

    def det(u, label="microbleed"):
        return Detection((1.0, 2.0, 3.0), 0.5, {"microbleed": 0.5}, label, 3.0, {"committee_disagreement": 0.1}, u)

    rows = {"sub-a": subject_row([det(0.2), det(0.3, "vein")]), "sub-b": subject_row([det(0.9)]),
            "sub-c": subject_row([])}
    lines = format_ranking(rows).splitlines()
    assert lines[0].split("\t")[:3] == ["rank", "subject", "summed_uncertainty"]
    assert [l.split("\t")[1] for l in lines[1:]] == ["sub-b", "sub-a", "sub-c"]
    assert lines[2].split("\t")[4:6] == ["2", "1"]


def test_rank_run_on_tiny_bids(tmp_path):
    from cmbdetect.models.registry import create_random_model
    from cmbdetect.pipeline.cli import rank as cli_rank
    from cmbdetect.pipeline.simulate.subject import simulate_dataset

    bids = tmp_path / "bids"
    simulate_dataset(bids, subjects=2, seed=3, shape=(40, 40, 32), voxel_size=(1.0, 1.0, 1.5), echoes=1)
    model = create_random_model(tmp_path / "random")
    parser = argparse.ArgumentParser()
    cli_rank.add_parser(parser.add_subparsers())
    out = tmp_path / "ranking.tsv"
    args = parser.parse_args(["rank", "--bids-dir", str(bids), "--out", str(out), "--model", str(model)])
    assert cli_rank.run(args) == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 3 and {l.split("\t")[1] for l in lines[1:]} == {"sub-01", "sub-02"}
    vals = [float(l.split("\t")[2]) for l in lines[1:]]
    assert vals == sorted(vals, reverse=True)
    args = parser.parse_args(["rank", "--bids-dir", str(tmp_path / "none"), "--out", str(out), "--model", str(model)])
    with pytest.raises(InputError):
        cli_rank.run(args)
