"""Shared test fixtures: tiny synthetic geometry and the optional real data beside the checkout."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("NIPYPE_NO_ET", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

#: ``../shared/data`` beside the checkout (absent in a user's fresh clone).
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """Path of ``../shared/data``; skips the test with a clear reason when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA} (only present beside the team's checkout)")
    return SHARED_DATA


@pytest.fixture
def real_crop(shared_data):
    """The real 3-echo GRE crop of ``../shared`` read by the project's NIfTI reader (TE 4/8/12 ms and 3 T as its
    source project's tests use; phase scaled to +-0.0036744): an :class:`Acquisition`, phase in radians."""
    from cmbdetect.pipeline.io.nifti import load_nifti_acquisition

    d = shared_data / "real" / "gre-3echo-crop"
    return load_nifti_acquisition(d / "Mag.nii.gz", d / "Phase.nii.gz", te=[0.004, 0.008, 0.012], b0=3.0,
                                  phase_units="scale:0.0036744")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def oblique_affine():
    """A 15-degree oblique, anisotropic affine factory: ``oblique_affine(shape, voxel_size)``."""
    from cmbdetect.physics.geometry import oblique_affine as make

    def _make(shape=(32, 32, 24), voxel_size=(1.0, 1.0, 1.5), angles_deg=(15.0, 0.0, 10.0)):
        return make(shape, voxel_size, angles_deg=angles_deg)

    return _make


@pytest.fixture(scope="session")
def tiny_random_model(tmp_path_factory) -> str:
    """A tiny random two-stage model folder (untrained: for end-to-end plumbing, not for detection quality)."""
    from cmbdetect.models.registry import create_random_model

    return str(create_random_model(tmp_path_factory.mktemp("model") / "random", seed=0))


@pytest.fixture(scope="session")
def tiny_subject_files(tmp_path_factory) -> dict:
    """A simulated single-echo 40 x 44 x 28 subject as NIfTI magnitude + phase (radians) in its own folder:
    ``{"dir", "mag", "phase", "args"}`` (``args``: the input options of ``cmbdetect run``/``qsm``)."""
    from cmbdetect.pipeline.io.atomic import save_nifti
    from cmbdetect.pipeline.simulate.subject import simulate_subject

    sim = simulate_subject(seed=5, shape=(40, 44, 28), n_microbleeds=2)
    folder = tmp_path_factory.mktemp("tiny-subject")
    mag = save_nifti(sim.acq.mag[0], sim.acq.affine, folder / "mag.nii.gz")
    phase = save_nifti(sim.acq.phase[0], sim.acq.affine, folder / "phase.nii.gz")
    return {"dir": folder, "mag": mag, "phase": phase,
            "args": ["--mag", str(mag), "--phase", str(phase), "--te", str(float(sim.acq.te[0])),
                     "--b0", str(float(sim.acq.b0)), "--phase-units", "rad"]}
