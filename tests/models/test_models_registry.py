"""Model I/O: save/load round trip with weights_only=True, stable sha256, registry by name."""
import json

import pytest
import torch

from cmbdetect.models import registry
from cmbdetect.physics.errors import InputError


def test_random_model_round_trip(tmp_path):
    path = registry.create_random_model(tmp_path / "m", seed=3)
    assert sorted(p.name for p in path.iterdir()) == ["classifier.pt", "detector.pt", "metadata.json"]
    m = registry.load_model(path)
    meta = json.loads((path / "metadata.json").read_text())
    for key in ("version", "channels", "spacing", "normalisation", "thresholds", "training", "metrics",
                "calibration", "architecture"):
        assert key in meta
    assert m.metadata == meta and len(m.sha256) == 64
    # weights are plain tensors: loadable with weights_only=True, identical after a save/load cycle
    sd = torch.load(path / "detector.pt", weights_only=True)
    for k, v in m.detector.state_dict().items():
        assert torch.equal(v, sd[k])
    again = registry.save_model(tmp_path / "copy", detector=m.detector, classifier=m.classifier, metadata=m.metadata)
    assert registry.load_model(again).sha256 == m.sha256
    # same seed -> same model; another seed -> another hash
    assert registry.load_model(registry.create_random_model(tmp_path / "m2", seed=3)).sha256 == m.sha256
    assert registry.load_model(registry.create_random_model(tmp_path / "m3", seed=4)).sha256 != m.sha256


def test_unknown_model_is_input_error(tmp_path):
    with pytest.raises(InputError, match="not found"):
        registry.load_model(tmp_path / "nothing")
    with pytest.raises(InputError):
        registry.load_model("no-such-name")


def test_corrupt_weights_are_input_error(tmp_path):
    path = registry.create_random_model(tmp_path / "m")
    (path / "detector.pt").write_bytes(b"not a torch file")
    with pytest.raises(InputError, match="cannot be loaded"):
        registry.load_model(path)


def test_registry_is_a_fixed_dict():
    assert registry.REGISTRY["default"] == "default"
