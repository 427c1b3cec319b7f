"""Acquisition fitness (physics.fitness): each reason fires past its limit and not at it; the measures."""
from __future__ import annotations

import numpy as np
import pytest

from cmbdetect.physics import constants as C
from cmbdetect.physics.fitness import (assess_fitness, calls_withheld_reason, field_noise_ppm,
                                       reference_microbleed_peak_ppm)

SHAPE = (28, 28, 20)


def _mask(shape=SHAPE):
    m = np.zeros(shape, bool)
    m[2:-2, 2:-2, 2:-2] = True
    return m


def _assess(vs=(1.0, 1.0, 1.5), b0=3.0, te=(0.02,), mask=None, field=None):
    return assess_fitness(voxel_size_mm=vs, b0_t=b0, te_s=te, mask=_mask() if mask is None else mask,
                          local_field_ppm=field)


def test_fine_long_te_acquisition_is_fit_and_measured():
    f = _assess()
    assert f.ok and f.reasons == ()
    m = f.measures
    assert m["inplane_voxel_mm"] == 1.0 and m["slice_mm"] == 1.5 and m["n_echoes"] == 1
    assert m["b0_te_max_t_s"] == pytest.approx(0.06)
    assert m["brain_extent_mm"] == [24.0, 24.0, 24.0]
    assert m["brain_volume_ml"] == pytest.approx(24 * 24 * 16 * 1.5 / 1000, abs=0.01)
    assert f.limits["max_inplane_voxel_mm"] == C.FITNESS_MAX_INPLANE_MM
    assert f.as_dict()["ok"] is True


@pytest.mark.parametrize("vs, fires", [
    ((1.5, 1.5, 3.0), False),                 # exactly at both limits
    ((1.51, 1.0, 2.0), True),                 # in-plane just over (the two finer edges are "in-plane")
    ((1.0, 1.0, 3.01), True),                 # slice just over
    ((3.0, 3.0, 3.0), True),                  # the healthy-volunteer case of issue 21
    ((1.0, 3.0, 1.0), False),                 # sagittal 3 mm slices: the coarsest edge is the slice
])
def test_voxel_size_reason_fires_past_the_limit_only(vs, fires):
    f = _assess(vs=vs, mask=np.ones((40, 40, 40), bool))
    assert any("voxels" in r for r in f.reasons) is fires
    assert f.ok is not fires


def test_b0_te_reason_fires_below_the_limit_only():
    at = C.FITNESS_MIN_B0_TE_T_S / 3.0
    assert _assess(te=(0.002, at)).ok                          # the longest echo counts
    f = _assess(te=(0.0023, 0.0046))                           # Philips 2-echo of issue 21: 0.0138 T*s
    assert not f.ok and len(f.reasons) == 1 and "B0 x longest TE is 0.014 T*s" in f.reasons[0]
    assert not _assess(b0=1.5, te=(0.019,)).ok and _assess(b0=1.5, te=(0.020,)).ok


def test_coverage_reason_fires_below_the_limit_only():
    limit_vox = int(C.FITNESS_MIN_BRAIN_EXTENT_MM)             # 1 mm voxels
    m = np.zeros((40, 40, 40), bool)
    m[5:35, 5:35, 5:5 + limit_vox] = True
    assert _assess(vs=(1.0, 1.0, 1.0), mask=m).ok
    m[:, :, 5 + limit_vox - 1] = False
    f = _assess(vs=(1.0, 1.0, 1.0), mask=m)
    assert not f.ok and "mm thick" in f.reasons[0]


def test_field_noise_estimate_recovers_white_noise_and_ignores_smooth_contrast(rng):
    sigma = 0.02
    x = np.linspace(-1, 1, 40)
    smooth = 0.05 * np.sin(2 * x)[:, None, None] * np.cos(x)[None, :, None] * np.ones((40, 40, 40))
    field = smooth + rng.normal(0, sigma, (40, 40, 40))
    m = np.ones((40, 40, 40), bool)
    assert field_noise_ppm(field, m) == pytest.approx(sigma, rel=0.05)
    assert field_noise_ppm(field, np.zeros_like(m)) is None


def test_field_cnr_reason_fires_below_the_limit_only(rng):
    vs = (1.0, 1.0, 1.0)
    peak = reference_microbleed_peak_ppm(vs)
    assert 0.05 < peak < 2 * C.FITNESS_REFERENCE_MICROBLEED_CHI_PPM / 3 + 1e-9  # below the sphere's pole value
    assert reference_microbleed_peak_ppm((3.0, 3.0, 3.0)) < 0.5 * peak          # coarse voxels average it away
    m = np.ones((40, 40, 40), bool)
    unit = rng.normal(0, 1.0, (40, 40, 40))
    unit /= field_noise_ppm(unit, m)                          # noise estimate exactly 1
    noise_at_limit = peak / C.FITNESS_MIN_FIELD_CNR
    ok = assess_fitness(voxel_size_mm=vs, b0_t=3, te_s=[0.02], mask=m, local_field_ppm=0.999 * noise_at_limit * unit)
    bad = assess_fitness(voxel_size_mm=vs, b0_t=3, te_s=[0.02], mask=m, local_field_ppm=1.01 * noise_at_limit * unit)
    assert ok.ok and ok.measures["field_cnr"] >= C.FITNESS_MIN_FIELD_CNR
    assert not bad.ok and "field noise" in bad.reasons[0] and bad.measures["field_cnr"] < C.FITNESS_MIN_FIELD_CNR


def test_calls_withheld_reason_joins_fitness_and_chi_quality():
    fit, unfit = _assess(), _assess(vs=(3.0, 3.0, 3.0), mask=np.ones((40, 40, 40), bool))
    assert calls_withheld_reason(fit) is None and calls_withheld_reason(None) is None
    assert calls_withheld_reason(fit, "susceptibility map implausible") == "susceptibility map implausible"
    joined = calls_withheld_reason(unfit.as_dict(), "chi failed")
    assert joined.startswith("voxels 3 x 3 x 3 mm") and joined.endswith("; chi failed")


def test_healthy_volunteer_short_te_coarse_chain_withholds_calls_and_retries_the_mask():
    """Issue 21's healthy volunteer, simulated: 3 mm isotropic, TE 2.3/4.6 ms at 3 T, no lesions.  The automatic
    mask takes in a third of non-brain tissue and fails the chi check; the stricter-threshold retry keeps a
    plausible map with almost no scalp; the fitness names both the voxel size and B0 x TE, so the maps withhold
    every microbleed call, and each reason is a warning line."""
    from cmbdetect.physics.chain import compute_physics_maps
    from cmbdetect.pipeline.simulate.subject import simulate_subject

    sim = simulate_subject(seed=1, shape=(64, 75, 50), voxel_size=(3.0, 3.0, 3.0), te=(0.0023, 0.0046), b0=3.0,
                           n_microbleeds=0, n_calcifications=0)
    maps = compute_physics_maps(mag=sim.acq.mag, phase=sim.acq.phase, te=sim.acq.te, b0=sim.acq.b0,
                                affine=sim.acq.affine)
    intracranial = sim.truth.local_field_ppm != 0
    retries = maps.meta["mask_retries"]
    assert retries[0]["chi_abs_median_ppm"] > 0.4 and "after a failed chi map" in maps.meta["mask"]
    assert maps.meta["quality"]["chi_abs_median_ppm"] <= 0.4
    assert (maps.mask & ~intracranial).sum() < 0.05 * maps.mask.sum()
    fitness = maps.meta["fitness"]
    assert not fitness["ok"] and len(fitness["reasons"]) >= 2
    assert fitness["measures"]["b0_te_max_t_s"] == pytest.approx(0.0138)
    assert maps.meta["calls_withheld"].startswith("voxels 3 x 3 x 3 mm")
    assert sum(w.startswith("no microbleed calls: ") for w in maps.meta["warnings"]) == len(fitness["reasons"])
    assert maps.meta["background"]["radii_mm"] == [12.0, 8.0, 4.0]  # 4, 2.7, 1.3 voxels as at 1.5 mm
