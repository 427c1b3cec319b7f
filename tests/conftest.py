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
    from cmbdetect.pipeline.io_nifti import load_nifti_acquisition

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
