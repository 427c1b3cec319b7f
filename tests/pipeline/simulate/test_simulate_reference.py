"""The simulator's outputs stay what they were: a tiny oblique subject (and lesions inserted into it) against
arrays stored in ``tests/data/simulate_reference.npz``.

The reference was written by the simulator before its physics moved to :mod:`cmbdetect.physics` (its own float32
dipole kernel, sphere field, sub-voxel offsets and phase per ppm); the physics-module versions agree to float32
rounding.  Regenerate (only after a deliberate change of the simulator): ``python tests/test_simulate_reference.py``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from cmbdetect.pipeline.simulate.subject import simulate_subject
from cmbdetect.pipeline.simulate.insert import draw_insertion_sites, insert_spheres

REFERENCE = Path(__file__).resolve().parents[2] / "data" / "simulate_reference.npz"


def reference_arrays() -> dict[str, np.ndarray]:
    """Magnitude, wrapped phase (rad), total field (ppm), chi (ppm) and labels of a seeded 20x20x16 subject
    (oblique slab and head tilt, two echoes at 3 T) and magnitude/phase after inserting two spheres into it."""
    s = simulate_subject(seed=11, shape=(20, 20, 16), voxel_size=(2.4, 2.6, 3.0), b0=3.0, te=(0.012, 0.024),
                         oblique_deg=(12.0, -6.0, 9.0), head_tilt_deg=8.0, n_microbleeds=2, n_calcifications=1,
                         snr=50.0)
    lesions = draw_insertion_sites(s.truth.labels >= 0, s.acq.affine, np.random.default_rng(3),
                                   kinds=["microbleed", "calcification"], margin_mm=1.0, min_separation_mm=6.0)
    mag, phase = insert_spheres(s.acq.mag, s.acq.phase, te=s.acq.te, b0=s.acq.b0, affine=s.acq.affine,
                                lesions=lesions, subsamples=3)
    return {"mag": s.acq.mag, "phase": s.acq.phase, "total_field_ppm": s.total_field_ppm, "chi_ppm": s.truth.chi_ppm,
            "labels": s.truth.labels, "inserted_mag": mag, "inserted_phase": phase,
            "n_inserted": np.array(len(lesions))}


def _phase_diff(a, b) -> np.ndarray:
    return np.abs(np.angle(np.exp(1j * (a.astype(np.float64) - b))))


def test_simulated_subject_equals_the_stored_reference():
    ref = np.load(REFERENCE)
    got = reference_arrays()
    assert set(got) == set(ref.files)
    assert int(got["n_inserted"]) == int(ref["n_inserted"]) == 2
    np.testing.assert_array_equal(got["labels"], ref["labels"])
    np.testing.assert_array_equal(got["chi_ppm"], ref["chi_ppm"])
    f = ref["total_field_ppm"]
    np.testing.assert_allclose(got["total_field_ppm"], f, rtol=0, atol=1e-6 * max(1.0, float(np.abs(f).max())))
    for m, p in (("mag", "phase"), ("inserted_mag", "inserted_phase")):
        scale = float(ref[m].max())
        np.testing.assert_allclose(got[m], ref[m], rtol=0, atol=1e-5 * scale)
        signal = ref[m] > 0.05 * scale  # the phase of a voxel without signal is noise
        assert _phase_diff(got[p], ref[p])[signal].max() < 1e-4
        # and the complex signal everywhere
        diff = np.abs(got[m] * np.exp(1j * got[p]) - ref[m] * np.exp(1j * ref[p]))
        assert diff.max() < 1e-4 * scale


if __name__ == "__main__":
    REFERENCE.parent.mkdir(exist_ok=True)
    np.savez_compressed(REFERENCE, **reference_arrays())
    print(f"wrote {REFERENCE}")
