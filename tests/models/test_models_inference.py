"""detect() with the tiny random model on a small synthetic subject; the physics gate; channels."""
import copy
from pathlib import Path

import numpy as np
import pytest

from cmbdetect.models.channels import ALL_CHANNELS, physics_channels
from cmbdetect.models.classifier import physics_gate
from cmbdetect.models.detection import CLASSES, READER_LABELS, Detection, LabelPolicy, merge_duplicates
from cmbdetect.models.inference import detect, model_grid
from cmbdetect.physics.domain import detection_domain
from cmbdetect.models.registry import create_random_model
from cmbdetect.physics.errors import InputError
from cmbdetect.physics.forward import forward_field
from cmbdetect.physics.geometry import b0_direction, voxel_sizes
from cmbdetect.physics.maps import PhysicsMaps


def tiny_maps(affine, shape=(32, 32, 24), seed=0):
    """Ellipsoidal brain with one paramagnetic and one diamagnetic sphere, maps consistent with physics."""
    rng = np.random.default_rng(seed)
    vs = voxel_sizes(affine)
    idx = np.indices(shape).astype(float)
    c = (np.array(shape) - 1) / 2
    r2 = sum(((idx[a] - c[a]) / (0.45 * shape[a])) ** 2 for a in range(3))
    mask = r2 <= 1
    chi = np.zeros(shape, np.float32)
    for centre, value in (((12, 14, 10), 0.8), ((20, 18, 13), -0.6)):
        d2 = sum(((idx[a] - centre[a]) * vs[a]) ** 2 for a in range(3))
        chi[d2 <= 2.0**2] = value
    chi += rng.normal(0, 0.005, shape).astype(np.float32)
    chi *= mask
    field = forward_field(chi, vs, b0_direction(affine)) * mask
    mag = (100 + rng.normal(0, 2, shape)).astype(np.float32) * mask
    mag[np.abs(chi) > 0.3] *= 0.3
    return PhysicsMaps(mask=mask, magnitude=mag, field_ppm=field, local_field_ppm=field, chi_ppm=chi,
                       chi_pos=np.clip(chi, 0, None), chi_neg=np.clip(-chi, 0, None), swi=mag, mip=mag,
                       affine=affine, b0=3.0)


def test_detect_random_model_well_formed(tiny_random_model, oblique_affine):
    maps = tiny_maps(oblique_affine((32, 32, 24), (1.0, 1.0, 1.5)))
    dets = detect(maps, model=str(tiny_random_model))
    assert 1 <= len(dets) <= 10
    probs_mb = [d.probabilities["microbleed"] for d in dets]
    assert probs_mb == sorted(probs_mb, reverse=True)
    for d in dets:
        assert isinstance(d, Detection) and d.label in READER_LABELS
        assert set(d.probabilities) == set(CLASSES)
        assert abs(sum(d.probabilities.values()) - 1) < 1e-6
        assert d.label == LabelPolicy().label(d.probabilities)  # the random model has the default thresholds
        assert all(0 <= v < s for v, s in zip(d.centre_vox, maps.shape))
        assert maps.mask[tuple(int(round(v)) for v in d.centre_vox)]
        assert 0.0 <= d.uncertainty <= 1.0 and d.diameter_mm > 0
        assert {"integrated_chi_ppm_mm3", "dipole_sign", "stage1_score"} <= set(d.features)
        if d.features["integrated_chi_ppm_mm3"] < 0 and d.features["dipole_sign"] < 0:
            assert d.probabilities["microbleed"] == 0.0
    withheld = detect(maps, model=str(tiny_random_model), calls_withheld="test: acquisition outside the validated range")
    assert [d.probabilities for d in withheld] == [d.probabilities for d in dets]
    assert not any(d.label in ("microbleed", "possible_microbleed") for d in withheld)
    # prevalence re-weighting moves microbleed probabilities monotonically
    low = detect(maps, model=str(tiny_random_model), prevalence=0.01)
    high = detect(maps, model=str(tiny_random_model), prevalence=0.99)
    assert len(low) == len(dets) == len(high)
    key = {d.centre_vox: d.probabilities["microbleed"] for d in low}
    for d in high:
        assert d.probabilities["microbleed"] >= key[d.centre_vox] - 1e-12
    with pytest.raises(InputError):
        detect(maps, model=str(tiny_random_model), prevalence=1.5)


def test_detect_resamples_to_model_spacing(tiny_random_model, tmp_path):
    import json
    meta_path = Path(tiny_random_model) / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["spacing"] = [0.5, 0.5, 0.75]           # native grid is twice as coarse
    other = tmp_path / "fine"
    other.mkdir()
    for f in ("detector.pt", "classifier.pt"):
        (other / f).write_bytes((Path(tiny_random_model) / f).read_bytes())
    (other / "metadata.json").write_text(json.dumps(meta))
    maps = tiny_maps(np.diag([1.0, 1.0, 1.5, 1.0]))
    dets = detect(maps, model=str(other))
    assert dets and all(0 <= v <= s - 1 for d in dets for v, s in zip(d.centre_vox, maps.shape))


def test_physics_gate_moves_diamagnetic_to_calcification():
    p = np.array([[0.7, 0.1, 0.1, 0.1], [0.7, 0.1, 0.1, 0.1], [0.7, 0.1, 0.1, 0.1]])
    feats = [{"integrated_chi_ppm_mm3": -3.0, "dipole_sign": -1.0},
             {"integrated_chi_ppm_mm3": -3.0, "dipole_sign": 1.0},      # conflicting signs: not gated
             {"integrated_chi_ppm_mm3": 2.0, "dipole_sign": 1.0}]
    out, gated = physics_gate(p, feats)
    assert gated.tolist() == [True, False, False]
    assert np.allclose(out[0], [0.0, 0.8, 0.1, 0.1])
    assert np.allclose(out[1:], p[1:])
    committee, _ = physics_gate(np.stack([p, p], axis=1), feats)
    assert np.allclose(committee[0, :, 0], 0.0)


def test_physics_gate_moves_an_impossible_moment_to_other():
    """A paramagnetic source stronger than any microbleed can be (a 10 mm sphere at 10 ppm: about 5236
    ppm mm^3) is not called microbleed; one just below the bound is left alone."""
    from cmbdetect.physics.constants import MICROBLEED_MAX_MOMENT_PPM_MM3 as bound

    assert np.isclose(bound, np.pi / 6 * 10.0 ** 3 * 10.0)
    p = np.array([[0.7, 0.1, 0.1, 0.1], [0.7, 0.1, 0.1, 0.1]])
    feats = [{"integrated_chi_ppm_mm3": 31000.0, "dipole_sign": 1.0},
             {"integrated_chi_ppm_mm3": 0.99 * bound, "dipole_sign": 1.0}]
    out, gated = physics_gate(p, feats)
    assert gated.tolist() == [True, False]
    assert np.allclose(out[0], [0.0, 0.1, 0.1, 0.8]) and np.allclose(out[1], p[1])
    committee, gated = physics_gate(np.stack([p, p], axis=1), feats)
    assert np.allclose(committee[0, :, 3], 0.8) and gated.tolist() == [True, False]


def test_channels_normalised_inside_mask(oblique_affine):
    maps = tiny_maps(oblique_affine((32, 32, 24), (1.0, 1.0, 1.5)))
    x, stats = physics_channels(maps, ALL_CHANNELS)
    assert x.shape == (5, 32, 32, 24) and x.dtype == np.float32
    assert np.all(x[:, ~maps.mask] == 0)
    inside = x[2][maps.mask]
    assert abs(np.median(inside)) < 0.2
    # chi_pos / chi_neg keep their sign split and share the chi scale
    assert stats["chi_pos"]["scale"] == stats["chi"]["scale"]
    assert x[3].min() >= 0 and x[4].min() >= 0 and x[3].max() > 5
    with pytest.raises(InputError):
        physics_channels(maps, ("nonsense",))


def test_candidate_region_never_empty_on_coarse_grids():
    """A centre between coarse voxels (no voxel within 1.5 mm) still gets a region (the nearest voxel)."""
    from cmbdetect.physics.domain import candidate_region

    chi = np.zeros((5, 5, 5), np.float32)
    region = candidate_region(chi, np.array([2.5, 2.5, 2.5]), (4.5, 4.5, 5.0), chi_scale=0.01)
    assert region.sum() >= 1


def test_stage2_test_time_augmentation_is_the_mean_over_flips():
    """tta=True: logits are the mean over the 8 axis flips; a patch symmetric under every flip gets the plain
    logits; without tta, one pass."""
    import torch

    from cmbdetect.models.classifier import TTA_FLIPS, committee_logits
    from cmbdetect.models.networks import PatchClassifier

    torch.manual_seed(0)
    net = PatchClassifier(in_channels=5, n_features=9, n_classes=4, base=4, n_heads=3).eval()
    rng = np.random.default_rng(1)
    patches = rng.normal(size=(3, 5, 16, 16, 16)).astype(np.float32)
    feats = rng.normal(size=(3, 9)).astype(np.float32)
    plain = committee_logits(net, patches, feats)
    tta = committee_logits(net, patches, feats, tta=True)
    with torch.inference_mode():
        x, f = torch.from_numpy(patches), torch.from_numpy(feats)
        manual = np.mean([net(torch.flip(x, dims=d) if d else x, f).numpy() for d in TTA_FLIPS], axis=0)
    assert len(set(TTA_FLIPS)) == 8
    assert np.allclose(tta, manual, atol=1e-6)
    assert not np.allclose(tta, plain, atol=1e-4)
    sym = patches[:1] + np.flip(patches[:1], axis=(2,))
    sym = sym + np.flip(sym, axis=(3,))
    sym = np.ascontiguousarray(sym + np.flip(sym, axis=(4,)))
    assert np.allclose(committee_logits(net, sym, feats[:1], tta=True), committee_logits(net, sym, feats[:1]),
                       atol=1e-5)


def _det(centre, p_mb, label, diameter):
    probs = {c: 0.0 for c in CLASSES}
    probs["microbleed"] = p_mb
    probs[label] = max(probs[label], 1.0 - p_mb if label != "microbleed" else p_mb)
    return Detection(centre_vox=centre, score=0.5, probabilities=probs, label=label, diameter_mm=diameter)


def test_low_rank_prior_lowers_only_the_candidates_beyond_the_fitted_budget(tiny_random_model):
    """Five candidates in stage-1 order, two heads, stage 2 fitted on the best 3: ranks 3 and 4 get the
    microbleed odds times 0.01 (p 0.8 -> odds 4 -> 0.04 -> p 0.04/1.04), the rest of their probability shared in
    proportion; ranks 0-2 and a model without the key are unchanged; nothing is modified in place."""
    from cmbdetect.models.inference import _scale_rows, prior_odds_ratios
    from cmbdetect.models.registry import load_model

    base = load_model(str(tiny_random_model))
    meta = copy.deepcopy(base.metadata)
    meta["thresholds"]["max_candidates"] = 3
    meta["inference"]["low_rank_prior"] = {"odds_ratio": 0.01}
    m = base.with_metadata(meta)
    p = np.tile(np.array([0.8, 0.1, 0.05, 0.05]), (5, 2, 1))
    out = _scale_rows(p, prior_odds_ratios(m, 5, prevalence=None)[0])
    assert np.array_equal(out[:3], p[:3]) and np.allclose(out.sum(axis=-1), 1.0)
    assert np.allclose(out[3:, :, 0], 0.04 / 1.04)
    assert np.allclose(out[3:, :, 1:] / out[3:, :, 1:].sum(axis=-1, keepdims=True), [0.5, 0.25, 0.25])
    assert np.array_equal(p[3:, :, 0], np.full((2, 2), 0.8))
    assert np.array_equal(_scale_rows(p, prior_odds_ratios(base, 5, prevalence=None)[0]), p)
    assert np.array_equal(_scale_rows(p[:3], prior_odds_ratios(m, 3, prevalence=None)[0]), p[:3])


def test_merge_duplicates_keeps_one_entry_per_large_lesion():
    """Voxels 1 x 1 x 2 mm.  A 9 mm bleed at (20, 20, 10) found twice (second peak 4 mm away along k): the weaker
    peak goes.  A 3 mm bleed 6 mm from it stays (outside the 4.5 mm claim); so does a bleed 2 mm from a vein,
    which claims nothing; the claim is capped at 10 mm for huge regions."""
    dets = [
        _det((20.0, 20.0, 12.0), 0.4, "microbleed", 3.0),     # second peak of the big bleed, 4 mm away
        _det((20.0, 20.0, 10.0), 0.9, "microbleed", 9.0),     # the big bleed
        _det((26.0, 20.0, 10.0), 0.7, "microbleed", 3.0),     # a separate bleed, 6 mm away
        _det((40.0, 40.0, 10.0), 0.3, "vein", 30.0),          # a vein
        _det((42.0, 40.0, 10.0), 0.6, "microbleed", 3.0),     # a bleed 2 mm from the vein
        _det((60.0, 60.0, 10.0), 0.5, "calcification", 40.0),  # huge region: claim capped at 5 mm
        _det((60.0, 66.0, 10.0), 0.45, "microbleed", 3.0),    # 6 mm away: kept
    ]
    kept = merge_duplicates(dets, (1.0, 1.0, 2.0))
    centres = [d.centre_vox for d in kept]
    assert (20.0, 20.0, 12.0) not in centres
    assert len(kept) == len(dets) - 1
    assert [d.probabilities["microbleed"] for d in kept] == sorted((d.probabilities["microbleed"] for d in kept),
                                                                   reverse=True)
    # anisotropy matters: 4 mm along k is 2 voxels; along i 2 voxels is 2 mm, also inside the claim
    assert len(merge_duplicates([dets[1], _det((22.0, 20.0, 10.0), 0.3, "microbleed", 3.0)], (1, 1, 2))) == 1
    assert len(merge_duplicates([dets[1], _det((20.0, 20.0, 13.0), 0.3, "microbleed", 3.0)], (1, 1, 2))) == 2


def test_brain_domain_keeps_the_rim_on_the_magnitude_only(oblique_affine):
    """The chi mask is the brain eroded by 3 voxels (as after V-SHARP).  Domain "brain" puts the rim back for
    the magnitude channel (normalised with the statistics inside the chi mask) and keeps field/chi zero there;
    "mask", a supplied mask and placeholder magnitudes keep the chi mask; unknown kinds are refused."""
    from scipy import ndimage

    maps = tiny_maps(oblique_affine((32, 32, 24), (1.0, 1.0, 1.5)))
    brain = maps.mask.copy()
    maps.mask = ndimage.binary_erosion(brain, iterations=3)
    rim = brain & ~maps.mask
    dom = detection_domain(maps, "brain")
    inner_rim = ndimage.binary_erosion(brain, iterations=1) & ~maps.mask  # brain_mask trims a 1 mm noisy edge
    assert (dom >= maps.mask).all() and dom[inner_rim].mean() > 0.95
    assert not dom[~ndimage.binary_dilation(brain, iterations=2)].any()
    assert (detection_domain(maps, "mask") == maps.mask).all()
    x, _ = physics_channels(maps, ALL_CHANNELS, domain=dom)
    x_plain, _ = physics_channels(maps, ALL_CHANNELS)
    assert np.abs(x[0][rim & dom]).max() > 0 and (x_plain[0][rim] == 0).all()
    assert (x[1:][:, rim] == 0).all()
    np.testing.assert_array_equal(x[:, maps.mask], x_plain[:, maps.mask])
    model_meta = {"channels": list(ALL_CHANNELS), "normalisation": {"clip": 12.0}, "spacing": None,
                  "inference": {"domain": "brain"}}
    _, grid_mask, _, resampled = model_grid(maps, model_meta)
    assert not resampled and (grid_mask == dom).all()
    maps.meta = {"mask": "supplied"}
    assert (detection_domain(maps, "brain") == maps.mask).all()
    maps.meta = {"placeholders": ["magnitude", "swi", "mip"]}
    assert (detection_domain(maps, "brain") == maps.mask).all()
    with pytest.raises(InputError):
        detection_domain(maps, "everywhere")


def test_brain_domain_closing_is_passed_through_from_the_metadata(oblique_affine):
    """``close_mm`` closes the "brain" domain (:func:`close_surface_notches`, tested in test_mask), metadata
    ``inference.domain_close_mm`` reaches it, and domain "mask" ignores it."""
    from cmbdetect.physics.mask import close_surface_notches

    shape, vs = (40, 40, 28), (1.0, 1.0, 1.5)
    maps = tiny_maps(oblique_affine(shape, vs), shape=shape)
    idx = np.indices(shape).astype(float)
    notch = (np.abs(idx[1] - 20) <= 2) & (np.abs(idx[2] - 14) <= 1) & (idx[0] >= 28)
    maps.magnitude = np.where(notch, 0.0, maps.magnitude).astype(np.float32)
    maps.mask = maps.mask & ~notch
    plain = detection_domain(maps, "brain")
    closed = detection_domain(maps, "brain", close_mm=6.0)
    assert (closed == close_surface_notches(plain, 6.0, vs)).all()
    assert closed.sum() > plain.sum() and (closed >= plain).all()
    assert (detection_domain(maps, "mask", close_mm=6.0) == maps.mask).all()
    meta = {"channels": list(ALL_CHANNELS), "normalisation": {"clip": 12.0}, "spacing": None,
            "inference": {"domain": "brain", "domain_close_mm": 6.0}}
    assert (model_grid(maps, meta)[1] == closed).all()


def test_detect_folds_in_the_stage1_score_when_the_model_has_stacking(tiny_random_model, oblique_affine):
    """Identity stacking weights change nothing; weights that trust only the stage-1 score make the microbleed
    probability a function of that score (before the physics gate)."""
    from cmbdetect.models.registry import load_model

    maps = tiny_maps(oblique_affine((32, 32, 24), (1.0, 1.0, 1.5)))
    m = load_model(str(tiny_random_model))
    plain = {d.centre_vox: d.probabilities["microbleed"] for d in detect(maps, model=m)}
    m.metadata["calibration"]["stacking"] = {"a": 1.0, "b": 0.0, "c": 0.0}
    m = m.with_metadata(m.metadata)
    same = {d.centre_vox: d.probabilities["microbleed"] for d in detect(maps, model=m)}
    assert same.keys() == plain.keys() and all(abs(same[k] - plain[k]) < 1e-5 for k in plain)
    m.metadata["calibration"]["stacking"] = {"a": 0.0, "b": 1.0, "c": 0.0}
    m = m.with_metadata(m.metadata)
    for d in detect(maps, model=m):
        if not d.features["physics_gate"]:
            assert d.probabilities["microbleed"] == pytest.approx(d.score, abs=1e-5)


def test_stage2_screen_runs_the_flip_pass_only_where_it_can_matter(tiny_random_model, oblique_affine):
    """With ``inference.stage2_screen.floor`` every candidate gets a plain pass and the flip-averaged pass is kept
    for those whose plain microbleed/calcification probability reaches the floor: floor 0 reproduces the full
    pass for all, floor 1 the plain pass for all, and a floor in between mixes the two exactly per
    candidate (prevalence re-weighting included)."""
    from cmbdetect.models.classifier import extract_patches
    from cmbdetect.models.features import candidate_features
    from cmbdetect.models.inference import committee_probabilities, stage1_candidates
    from cmbdetect.models.registry import load_model

    maps = tiny_maps(oblique_affine((32, 32, 24), (1.0, 1.0, 1.5)))
    base = load_model(str(tiny_random_model))
    meta = copy.deepcopy(base.metadata)
    meta["thresholds"].update(heatmap=0.0, max_candidates=12)
    m = base.with_metadata(meta)
    x, mask, vs, _ = model_grid(maps, m.spec)
    centres, scores, _ = stage1_candidates(m, x, mask, vs)
    assert len(centres) >= 6
    patches = extract_patches(x, centres, m.spec.patch_size)
    feats = candidate_features(maps, centres)

    def probs(prevalence=0.2, **inference):
        mm = copy.deepcopy(meta)
        mm["inference"].update(inference)
        return committee_probabilities(base.with_metadata(mm), patches, feats, scores, prevalence=prevalence)

    plain, full = probs(stage2_tta=False), probs(stage2_tta=True)
    assert not np.allclose(plain, full, atol=1e-4)
    for screen, expect in (({"floor": 0.0}, full), ({"floor": 1.0}, plain)):
        assert np.allclose(probs(stage2_tta=True, stage2_screen=screen), expect, atol=1e-6)
    at_prior = probs(None, stage2_tta=True, stage2_screen={"floor": 1.0})  # the screen reads this prior
    mb_calc = at_prior[..., [CLASSES.index("microbleed"), CLASSES.index("calcification")]].max(axis=(1, 2))
    floor = float(np.median(mb_calc))
    mixed = probs(stage2_tta=True, stage2_screen={"floor": floor})
    flipped = mb_calc >= floor
    assert 0 < flipped.sum() < len(patches)
    assert np.allclose(mixed[flipped], full[flipped], atol=1e-6)
    assert np.allclose(mixed[~flipped], plain[~flipped], atol=1e-6)


def test_brain_domain_leaves_out_a_scalp_patch_that_the_chi_mask_kept(oblique_affine):
    """A bright scalp patch bridged to the brain on thick slices is too small for the physics chain's scalp guard
    (it cuts only a whole shell), so the chi mask keeps it; the detection domain leaves it out, and keeps the brain
    and the centre of a 9 mm microbleed void at the surface."""
    from phantoms import coarse_head
    from scipy import ndimage

    from cmbdetect.physics.mask import brain_mask

    vs = (2.3, 2.3, 3.2)
    mag, brain, scalp, lesion = coarse_head(np.random.default_rng(0), voxel_size=vs, scalp_above_mm=35.0)
    chi_mask = brain_mask(mag, vs)
    assert (chi_mask & scalp).sum() > 0.9 * scalp.sum()
    maps = tiny_maps(oblique_affine(mag.shape, vs), shape=mag.shape)
    maps.magnitude, maps.mask = mag, chi_mask
    domain = detection_domain(maps, "brain")
    assert not (domain & scalp).any()
    assert (domain & brain).sum() > 0.97 * brain.sum()
    assert domain[tuple(int(round(x)) for x in ndimage.center_of_mass(lesion))]
    # nothing to cut: the domain is the brain mask together with the chi mask, as before
    small = tiny_maps(oblique_affine((32, 32, 24), (1.0, 1.0, 1.5)))
    assert (detection_domain(small, "brain") == (brain_mask(small.magnitude, (1.0, 1.0, 1.5)) | small.mask)).all()


def test_brain_domain_takes_the_chains_brain_masks_when_the_maps_carry_them(oblique_affine):
    """Maps from the physics chain carry its two brain masks; the domain then uses them instead of computing them
    again (the same result when they are the masks of this magnitude), and follows them when they differ."""
    from cmbdetect.physics.mask import brain_masks

    vs = (1.0, 1.0, 1.5)
    maps = tiny_maps(oblique_affine((32, 32, 24), vs))
    assert maps.brain_plain is None and maps.brain_guarded is None
    computed = detection_domain(maps, "brain")
    maps.brain_plain, maps.brain_guarded = brain_masks(maps.magnitude, vs)
    assert (detection_domain(maps, "brain") == computed).all()
    box = np.zeros(maps.shape, bool)
    box[8:24, 8:24, 6:18] = True
    maps.brain_plain, maps.brain_guarded = box | maps.mask, box
    assert (detection_domain(maps, "brain") == box).all()  # the chi mask beyond the guarded cut stays out
