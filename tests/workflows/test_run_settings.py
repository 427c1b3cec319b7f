"""One definition of the physics settings (CLI choices and workflow defaults from ``physics.settings``), and cache
keys that ignore what does not change a result (subject label, thread counts)."""
from __future__ import annotations

import pytest

from cmbdetect.physics.chain import BACKGROUND_METHODS
from cmbdetect.physics.inversion import METHODS
from cmbdetect.physics.settings import DEFAULT_PHYSICS, PhysicsSettings
from cmbdetect.pipeline.cli import main as cli
from cmbdetect.workflows.interfaces_detect import DetectCandidates
from cmbdetect.workflows.interfaces_physics import ComputeMaps
from cmbdetect.workflows.interfaces_report import ExportReport


def _hash(interface) -> str:
    return interface.inputs.get_hashval()[1]


def test_cli_choices_and_defaults_come_from_physics():
    parser = cli.build_parser(["run"])
    run = parser._subparsers._group_actions[0].choices["run"]
    actions = {a.dest: a for a in run._actions}
    assert tuple(actions["background"].choices) == tuple(BACKGROUND_METHODS)
    assert tuple(actions["inversion"].choices) == tuple(METHODS)
    for name in ("unwrap", "background", "inversion"):
        assert actions[name].default == getattr(DEFAULT_PHYSICS, name)
        assert ComputeMaps().inputs.trait(name).default == getattr(DEFAULT_PHYSICS, name)


def test_unknown_method_fails_before_reading(tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["run", "--mag", str(tmp_path / "absent.nii"), "--phase", str(tmp_path / "absent.nii"),
                     "--out", str(out), "--background", "foo"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'foo'" in err and "absent" not in err and "Traceback" not in err
    assert not out.exists()
    with pytest.raises(ValueError, match="background 'foo'"):
        PhysicsSettings(background="foo")


def test_label_and_threads_are_not_in_the_cache_key(tmp_path):
    maps = tmp_path / "maps.npz"
    maps.write_bytes(b"x")
    a = DetectCandidates(maps_bundle=str(maps), model="m", label="sub-01", num_threads=1)
    b = DetectCandidates(maps_bundle=str(maps), model="m", label="sub-renamed", num_threads=8)
    assert _hash(a) == _hash(b)
    assert _hash(a) != _hash(DetectCandidates(maps_bundle=str(maps), model="other", label="sub-01"))
    assert _hash(ComputeMaps(label="a")) == _hash(ComputeMaps(label="b"))
    assert _hash(ComputeMaps(label="a")) != _hash(ComputeMaps(label="a", background="pdf"))
    assert _hash(ExportReport(label="a")) == _hash(ExportReport(label="b"))
