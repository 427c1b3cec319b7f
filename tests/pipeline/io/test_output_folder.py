"""Outputs never destroy a user's files: new/empty folders, earlier cmbdetect results only with --overwrite and only
their own files replaced, inputs never touched; Ctrl-C exits 130 and cleans up."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cmbdetect.physics.errors import InputError
from cmbdetect.pipeline.io.atomic import atomic_directory
from cmbdetect.pipeline.cli.main import main
from cmbdetect.pipeline.io.output_folder import MANIFEST_NAME, claim_output_folder, read_manifest


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_claim_rules(tmp_path):
    assert claim_output_folder(tmp_path / "new", overwrite=False).previous is False
    (tmp_path / "empty").mkdir()
    assert claim_output_folder(tmp_path / "empty", overwrite=False).previous is False
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="did not write.*'notes.txt'"):
        claim_output_folder(user, overwrite=True)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        claim_output_folder(tmp_path / "afile", overwrite=True)
    # inputs: the output may not be, contain or lie inside one
    data = tmp_path / "data"
    (data / "anat").mkdir(parents=True)
    img = data / "anat" / "mag.nii.gz"
    img.write_bytes(b"x")
    for out in (data / "anat", data, data / "anat" / "results"):
        with pytest.raises(InputError, match="input"):
            claim_output_folder(out, overwrite=True, inputs=[img, data / "anat"])
    assert claim_output_folder(tmp_path / "results", overwrite=False, inputs=[img]).path == tmp_path / "results"
    # BIDS: the dataset's own derivatives/ is allowed, the dataset itself is not
    assert claim_output_folder(data / "derivatives" / "cmbdetect", overwrite=False, inputs=[data],
                               derivatives_of=data)
    with pytest.raises(InputError):
        claim_output_folder(data / "derivatives", overwrite=False, inputs=[data], derivatives_of=data)
    with pytest.raises(InputError):
        claim_output_folder(data / "sub-01", overwrite=False, inputs=[data], derivatives_of=data)


def test_replacing_an_earlier_result_keeps_everything_else(tmp_path):
    out = tmp_path / "out"
    with atomic_directory(out, claim=claim_output_folder(out, overwrite=False)) as tmp:
        (tmp / "a.txt").write_text("first")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.txt").write_text("first")
    assert read_manifest(out) == {"a.txt", "sub/b.txt", MANIFEST_NAME}
    (out / "my_notes.txt").write_text("reader's notes")           # the user's own files, added afterwards
    (out / "sub" / "mine.nii").write_bytes(b"user")
    with pytest.raises(InputError, match="--overwrite"):
        claim_output_folder(out, overwrite=False)
    claim = claim_output_folder(out, overwrite=True)
    with atomic_directory(out, claim=claim) as tmp:
        (tmp / "a.txt").write_text("second")
    files = _snapshot(out)
    assert files["a.txt"] == b"second" and "sub/b.txt" not in files        # own files replaced / removed
    assert files["my_notes.txt"] == b"reader's notes" and files["sub/mine.nii"] == b"user"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # nothing left beside
    # an unclaimed non-empty folder is never replaced
    with pytest.raises(InputError, match="not empty"):
        with atomic_directory(out) as tmp:
            pass
    assert _snapshot(out) == files


def test_run_refuses_a_user_folder_and_the_input_folder(tmp_path, tiny_subject_files, tiny_random_model, capsys):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "thesis.docx").write_bytes(b"precious")
    before_inputs = _snapshot(tiny_subject_files["dir"])
    for out in (user, tiny_subject_files["dir"]):
        rc = main(["run", *tiny_subject_files["args"], "--out", str(out), "--model", tiny_random_model,
                   "--overwrite"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and err[0].startswith("cmbdetect: error:"), err
    assert _snapshot(user) == {"thesis.docx": b"precious"}
    assert _snapshot(tiny_subject_files["dir"]) == before_inputs


def test_run_overwrite_replaces_only_its_own_files(tmp_path, tiny_subject_files, tiny_random_model, capsys):
    out = tmp_path / "result"
    args = ["run", *tiny_subject_files["args"], "--out", str(out), "--model", tiny_random_model]
    assert main(args) == 0
    own = read_manifest(out)
    assert {"candidates.tsv", "provenance.json", "report.html"} <= own
    (out / "reader_notes.txt").write_text("seen by Dr X")
    capsys.readouterr()
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err   # refused without --overwrite
    assert (out / "reader_notes.txt").is_file()
    assert main([*args, "--overwrite"]) == 0
    assert (out / "reader_notes.txt").read_text() == "seen by Dr X"
    assert read_manifest(out) == own and (out / "candidates.tsv").is_file()


def test_simulate_and_train_refuse_user_folders(tmp_path, capsys):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "data.csv").write_text("1,2")
    assert main(["simulate", str(user), "--subjects", "1", "--shape", "24,24,16"]) == 2
    assert main(["train", "--bids-dir", str(tmp_path / "nowhere"), "--out", str(user)]) == 2
    assert _snapshot(user) == {"data.csv": b"1,2"}
    sim = tmp_path / "sim"
    assert main(["simulate", str(sim), "--subjects", "1", "--shape", "24,24,16"]) == 0
    assert read_manifest(sim) and (sim / "dataset_description.json").is_file()
    (sim / "code").mkdir()
    (sim / "code" / "my_script.py").write_text("print(1)")
    capsys.readouterr()
    assert main(["simulate", str(sim), "--subjects", "1", "--shape", "24,24,16"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["simulate", str(sim), "--subjects", "1", "--shape", "24,24,16", "--seed", "3", "--overwrite"]) == 0
    assert (sim / "code" / "my_script.py").read_text() == "print(1)"
    assert json.loads((sim / "dataset_description.json").read_text())["SimulationSeed"] == 3
    # the training output may not lie inside its training data
    assert main(["train", "--bids-dir", str(sim), "--out", str(sim / "derivatives" / "model")]) == 2


def test_bids_app_refuses_foreign_out_dir_and_keeps_earlier_participants(tmp_path, tiny_random_model, capsys):
    bids = tmp_path / "bids"
    assert main(["simulate", str(bids), "--subjects", "1", "--shape", "32,32,20"]) == 0
    user = tmp_path / "mine"
    user.mkdir()
    (user / "keep.txt").write_text("k")
    capsys.readouterr()
    assert main([str(bids), str(user), "participant", "--model", tiny_random_model]) == 2
    assert _snapshot(user) == {"keep.txt": b"k"}
    assert main([str(bids), str(bids), "participant", "--model", tiny_random_model]) == 2
    assert main([str(bids), str(bids / "sub-01"), "participant", "--model", tiny_random_model]) == 2
    out = bids / "derivatives" / "cmbdetect"
    assert main([str(bids), str(out), "participant", "--model", tiny_random_model, "--nprocs", "1"]) == 0
    tsv = next(out.glob("sub-*/anat/*_candidates.tsv"))
    stamp = tsv.stat().st_mtime_ns
    capsys.readouterr()
    # a rerun without --overwrite reports the participant and leaves its results alone
    assert main([str(bids), str(out), "participant", "--model", tiny_random_model, "--nprocs", "1"]) == 1
    assert "--overwrite" in capsys.readouterr().err and tsv.stat().st_mtime_ns == stamp
    assert main([str(bids), str(out), "participant", "--model", tiny_random_model, "--nprocs", "1",
                 "--overwrite"]) == 0
    assert tsv.stat().st_mtime_ns != stamp


def _interrupted_cli(args: list[str], tmpdir: Path, *, delay_s: float) -> tuple[int, str]:
    """Run ``cmbdetect ARGS`` in a real process (TMPDIR=tmpdir), send it SIGINT ``delay_s`` after it starts
    computing physics maps; returns (exit status, stderr)."""
    env = {**os.environ, "TMPDIR": str(tmpdir), "NIPYPE_NO_ET": "1"}
    cmd = [sys.executable, "-c", "import sys; from cmbdetect.pipeline.cli.main import main; sys.exit(main())", *args]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    seen = []
    while True:
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        if "computing physics maps" in line:
            time.sleep(delay_s)
            proc.send_signal(signal.SIGINT)
            break
    err = "".join(seen) + proc.communicate(timeout=120)[1]
    return proc.returncode, err


def test_ctrl_c_exits_130_with_one_line_and_no_leftovers(tmp_path, tiny_subject_files, tiny_random_model):
    """A real SIGINT to a real ``cmbdetect run`` process while it computes: exit 130, one line, no traceback, no
    output folder, no temporary work folder."""
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    out = tmp_path / "out"
    rc, err = _interrupted_cli(["run", *tiny_subject_files["args"], "--out", str(out), "--model", tiny_random_model],
                               tmpdir, delay_s=0.1)
    assert rc == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert err.strip().splitlines()[-1].startswith("cmbdetect: interrupted")
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    assert not list(tmpdir.iterdir()), list(tmpdir.iterdir())


def test_ctrl_c_in_a_parallel_bids_run_stops_the_workers_quietly(tmp_path, tiny_random_model):
    """MultiProc workers ignore SIGINT (the main process stops them): no worker traceback, exit 130."""
    bids = tmp_path / "bids"
    assert main(["simulate", str(bids), "--subjects", "2", "--shape", "40,40,24"]) == 0
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    rc, err = _interrupted_cli([str(bids), str(tmp_path / "out"), "participant", "--model", tiny_random_model,
                                "--nprocs", "2"], tmpdir, delay_s=1.0)
    assert rc == 130, err
    assert "Traceback" not in err and "INFO" not in err, err
    assert not list(tmpdir.iterdir())


def test_single_output_files_replace_only_their_own_kind(tmp_path):
    from cmbdetect.pipeline.io.output_folder import claim_output_file

    header = "rank\tsubject"
    assert claim_output_file(tmp_path / "r.tsv", overwrite=False, first_line=header) == tmp_path / "r.tsv"
    (tmp_path / "r.tsv").write_text(header + "\n1\tsub-01\n")
    with pytest.raises(InputError, match="--overwrite"):
        claim_output_file(tmp_path / "r.tsv", overwrite=False, first_line=header)
    assert claim_output_file(tmp_path / "r.tsv", overwrite=True, first_line=header)
    (tmp_path / "user.tsv").write_text("my own table\n")
    with pytest.raises(InputError, match="not a file cmbdetect wrote"):
        claim_output_file(tmp_path / "user.tsv", overwrite=True, first_line=header)
    with pytest.raises(InputError, match="folder"):
        claim_output_file(tmp_path, overwrite=True, first_line=header)
