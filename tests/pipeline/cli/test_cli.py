"""CLI mechanics: subcommand loading, BIDS-App detection, error handling and exit codes."""
from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

from cmbdetect.pipeline.cli import main as cli
from cmbdetect.pipeline.io.atomic import save_nifti


def test_build_parser_lists_subcommands_and_survives_a_broken_one(monkeypatch, capsys):
    parser = cli.build_parser(["run", "doesnotexist"])
    assert parser.parse_args(["run", "--mag", "m", "--phase", "p", "--out", "o"]).command == "run"
    assert cli.main(["--help"]) == 0
    assert "run" in capsys.readouterr().out
    # a subcommand whose module is missing is listed as unavailable and fails with one line
    monkeypatch.setattr(cli, "SUBCOMMANDS", (*cli.SUBCOMMANDS, "doesnotexist"))
    assert cli.main(["doesnotexist", "x"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unavailable" in err[0] and "Traceback" not in err[0]


def test_no_arguments_and_usage_errors(capsys):
    assert cli.main([]) == 2
    assert "COMMAND" in capsys.readouterr().err
    assert cli.main(["run", "--bogus"]) == 2
    assert cli.main(["--version"]) == 0
    assert "cmbdetect" in capsys.readouterr().out


def test_run_bad_input_one_line_no_output(tmp_path, capsys, oblique_affine, tiny_random_model):
    out = tmp_path / "out"
    aff = oblique_affine((12, 12, 8))
    save_nifti(np.ones((12, 12, 8)), aff, tmp_path / "mag.nii.gz")
    # phase missing
    assert cli.main(["run", "--mag", str(tmp_path / "mag.nii.gz"), "--out", str(out),
                     "--model", tiny_random_model]) == 2
    assert "phase" in capsys.readouterr().err
    # phase on another grid
    save_nifti(np.zeros((12, 12, 9)), oblique_affine((12, 12, 9)), tmp_path / "phase.nii.gz")
    code = cli.main(["run", "--mag", str(tmp_path / "mag.nii.gz"), "--phase", str(tmp_path / "phase.nii.gz"),
                     "--te", "0.02", "--b0", "3", "--out", str(out), "--model", tiny_random_model])
    captured = capsys.readouterr()
    assert code == 2 and "Traceback" not in captured.err
    lines = captured.err.strip().splitlines()
    assert lines[-1].startswith("cmbdetect: error: ") and len([ln for ln in lines if "error" in ln]) == 1
    assert not out.exists() and not list(tmp_path.glob(".out*"))
    # bad option values are input errors too
    for extra in (["--nprocs", "0"], ["--prevalence", "2"], ["--plugin", "nope"], ["--plugin-args", "[1]"],
                  ["--model", str(tmp_path / "nomodel")]):
        assert cli.main(["run", "--mag", "m.nii", "--phase", "p.nii", "--out", str(out),
                         "--model", tiny_random_model, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("cmbdetect: error: "), (extra, err)


def test_unexpected_error_one_line_and_traceback_with_verbose(monkeypatch, capsys):
    from cmbdetect.pipeline.cli import run as cli_run

    def boom(args):
        raise ZeroDivisionError("boom happened\nsecond line")

    monkeypatch.setattr(cli_run, "run", boom)
    assert cli.main(["run", "--mag", "m", "--phase", "p", "--out", "o"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "cmbdetect: error: ZeroDivisionError: boom happened"
    assert cli.main(["run", "--mag", "m", "--phase", "p", "--out", "o", "-v"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_bids_app_form_is_detected(tmp_path, capsys):
    assert cli.main([str(tmp_path / "nobids"), str(tmp_path / "out"), "participant"]) == 2
    assert "BIDS_DIR" in capsys.readouterr().err
    assert cli.main([str(tmp_path), str(tmp_path / "out"), "group"]) == 2
    assert "participant level first" in capsys.readouterr().err
    assert cli.main([str(tmp_path), str(tmp_path / "out"), "sideways"]) == 2
    capsys.readouterr()
    assert cli.main(["rnu", "--mag", "m"]) == 2  # a mistyped subcommand is named as such
    assert capsys.readouterr().err.strip() == ("cmbdetect: error: unknown command 'rnu': choose one of "
                                               f"{', '.join(cli.SUBCOMMANDS)}, or BIDS_DIR OUT_DIR "
                                               "participant|group")
    assert cli.main([str(tmp_path), str(tmp_path / "out"), "participant", "--help"]) == 0
    assert "--participant-label" in capsys.readouterr().out


def test_console_script_subprocess(tmp_path, tiny_random_model):
    exe = shutil.which("cmbdetect")
    cmd = [exe] if exe else [sys.executable, "-m", "cmbdetect.pipeline.cli.main"]
    proc = subprocess.run([*cmd, "run", "--mag", str(tmp_path / "missing.nii.gz"), "--phase",
                           str(tmp_path / "missing2.nii.gz"), "--out", str(tmp_path / "o"),
                           "--model", tiny_random_model],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == ["cmbdetect: reading input", lines[-1]] and "Traceback" not in proc.stderr
    assert lines[-1].startswith("cmbdetect: error: magnitude file") and "missing.nii.gz" in lines[-1]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv", [["demo", "--help"], ["run", "--help"]])
def test_subcommand_help(argv, capsys):
    assert cli.main(argv) == 0
    assert "--model" in capsys.readouterr().out
