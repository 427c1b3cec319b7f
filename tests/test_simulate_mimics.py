"""Mimics of the simulator (off by default) and the per-subject acquisition randomisation."""
from __future__ import annotations

import hashlib

import numpy as np

from cmbdetect.pipeline.simulate import simulate_subject

#: sha256 of the default output (below) computed on main before the radial family and the mimics were added:
#: labels, true chi (rounded to 0.001 ppm) and the magnitude (relative to its median, rounded to 0.01), so
#: that a change of the last float bit in an FFT library does not count, a change of what is drawn does.
DEFAULT_DIGEST = "4ce0110d194403a84e36c7935e88c5a254993031de1639f8838ecbd940a886a5"
DEFAULT_KW = dict(shape=(48, 48, 24), voxel_size=(3.0, 3.0, 4.0), b0=3.0, te=(0.005, 0.02), oblique_deg=10.0,
                  n_microbleeds=3, n_calcifications=1, snr=40.0)


def _digest(sub) -> str:
    h = hashlib.sha256()
    h.update(sub.truth.labels.tobytes())
    h.update(np.round(sub.truth.chi_ppm, 3).astype(np.float32).tobytes())
    m = sub.acq.mag
    h.update(np.round(m / np.median(m[m > 0]), 2).astype(np.float32).tobytes())
    return h.hexdigest()


def test_default_output_is_unchanged_vs_main():
    assert _digest(simulate_subject(seed=11, **DEFAULT_KW)) == DEFAULT_DIGEST
