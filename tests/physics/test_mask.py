"""Brain mask: synthetic head with scalp and background noise, real crop, user masks."""
from __future__ import annotations

import numpy as np
import pytest

from cmbdetect.physics.errors import InputError
from cmbdetect.physics.mask import brain_mask, brain_masks, validate_mask
from phantoms import coarse_head


def synthetic_head(rng, shape=(56, 60, 40), voxel_size=(1.0, 1.0, 1.5)):
    """Bright brain ellipsoid with dark 'veins', a dark skull gap, a bright thin scalp shell,
    Rician noise everywhere.  Returns (magnitude, brain, scalp)."""
    vs = np.asarray(voxel_size)
    c = (np.asarray(shape) - 1) / 2.0
    idx = np.indices(shape).astype(float)
    x, y, z = [(idx[n] - c[n]) * vs[n] for n in range(3)]
    r = np.sqrt((x / 19.0) ** 2 + (y / 21.0) ** 2 + (z / 22.0) ** 2)  # 1 at the brain surface
    brain = r <= 1.0
    scalp = (r >= 1.22) & (r <= 1.32)
    signal = np.zeros(shape)
    signal[brain] = 1.0 + 0.15 * np.sin(x[brain] / 4.0)  # smooth bias
    signal[scalp] = 1.3  # fat is brighter than brain
    vein = (np.abs(x - 3) < 1.2) & (np.abs(z) < 1.6) & (np.abs(y) < 14)
    signal[vein & brain] = 0.2
    sigma = 0.06
    noisy = np.abs(signal + sigma * rng.standard_normal(shape) + 1j * sigma * rng.standard_normal(shape))
    return noisy.astype(np.float32), brain, scalp


def test_synthetic_head_mask(rng):
    vs = (1.0, 1.0, 1.5)
    mag, brain, scalp = synthetic_head(rng, voxel_size=vs)
    m = brain_mask(mag, vs, erode_mm=1.0)
    assert m.dtype == bool and m.shape == mag.shape
    covered = (m & brain).sum() / brain.sum()
    assert covered > 0.8, covered          # brain covered (minus the eroded rim)
    assert not (m & scalp).any()           # scalp excluded
    assert (m & ~brain).sum() < 0.01 * brain.sum()  # background / skull excluded
    # the dark vein inside the brain is kept (hole filling)
    vein_core = (np.abs(np.indices(mag.shape)[0] - 30.5) < 1)
    assert m[vein_core & brain].mean() > 0.9


def test_erosion_is_in_mm(rng):
    vs = (1.0, 1.0, 1.5)
    mag, brain, _ = synthetic_head(rng, voxel_size=vs)
    m0 = brain_mask(mag, vs, erode_mm=0.0)
    m3 = brain_mask(mag, vs, erode_mm=3.0)
    assert m3.sum() < m0.sum() and (m3 <= m0).all()
    # eroding 3 mm of an ~20 mm ellipsoid removes roughly 1-(17/20)^3 ~ 39 % of it
    assert 0.25 < 1 - m3.sum() / m0.sum() < 0.55


def test_explicit_threshold_and_empty(rng):
    mag, brain, _ = synthetic_head(rng)
    m = brain_mask(mag, (1, 1, 1.5), threshold=0.5)
    assert (m & brain).sum() / brain.sum() > 0.8
    with pytest.raises(InputError, match="empty"):
        brain_mask(mag, (1, 1, 1.5), threshold=1e6)
    with pytest.raises(InputError, match="empty"):
        brain_mask(np.zeros((8, 8, 8)), (1, 1, 1))
    with pytest.raises(InputError):
        brain_mask(np.ones((8, 8)), (1, 1, 1))


def test_validate_user_mask():
    m = np.zeros((5, 6, 7), np.uint8)
    m[2, 3, 4] = 3
    out = validate_mask(m, (5, 6, 7))
    assert out.dtype == bool and out.sum() == 1
    with pytest.raises(InputError, match="shape"):
        validate_mask(m, (5, 6, 8))
    with pytest.raises(InputError, match="empty"):
        validate_mask(np.zeros((5, 6, 7)), (5, 6, 7))


def test_real_crop_mask_plausible(shared_data):
    import nibabel as nib

    path = shared_data / "real" / "gre-3echo-crop" / "Mag.nii.gz"
    if not path.exists():
        pytest.skip(f"{path} missing")
    img = nib.load(str(path))
    mag = np.asarray(img.dataobj, dtype=np.float32)[..., 0]
    vs = img.header.get_zooms()[:3]
    m = brain_mask(mag, vs)
    frac = m.mean()
    assert frac > 0.8, frac  # the crop lies inside the brain: nearly all of it is brain
    # masked voxels are brighter on average than unmasked ones
    if (~m).any():
        assert mag[m].mean() > mag[~m].mean()


def test_skull_stripped_input_keeps_the_whole_brain(rng):
    """Zeros outside the brain (a skull-stripped image): darker tissue must not be cut away."""
    vs = (1.0, 1.0, 1.5)
    mag, brain, _ = synthetic_head(rng, voxel_size=vs)
    x = np.indices(mag.shape)[0]
    stripped = np.where(brain, mag * np.where(x < 28, 0.6, 1.0), 0.0).astype(np.float32)  # darker half
    m = brain_mask(stripped, vs, erode_mm=0.0)
    assert (m & brain).sum() / brain.sum() > 0.9  # (cut at Otsu between the halves: ~0.5)
    assert (m & ~brain).sum() < 0.05 * brain.sum()  # at most a partial-volume shell (no erosion)


@pytest.mark.parametrize("case", ["low_snr", "bias", "slab"])
def test_mask_robust_to_noise_bias_and_slab(rng, case):
    """SNR ~4 (a bright Rician noise floor), a strong receive bias (dark centre) and a slab that
    cuts the head at top and bottom: brain covered, scalp and background excluded."""
    vs = (1.0, 1.0, 1.5)
    mag, brain, scalp = synthetic_head(rng, voxel_size=vs)
    if case == "low_snr":
        s = 0.25
        mag = np.abs(mag + s * rng.standard_normal(mag.shape) + 1j * s * rng.standard_normal(mag.shape))
    elif case == "bias":
        idx = np.indices(mag.shape).astype(float)
        c = (np.asarray(mag.shape) - 1) / 2
        r = np.sqrt(sum(((idx[n] - c[n]) * vs[n]) ** 2 for n in range(3)))
        mag = mag * (0.35 + 0.65 * (r / 28) ** 2)
    else:
        mag, brain, scalp = mag[:, :, 8:32], brain[:, :, 8:32], scalp[:, :, 8:32]
    m = brain_mask(mag.astype(np.float32), vs)
    assert (m & brain).sum() / brain.sum() > 0.85
    assert not (m & scalp).any()
    assert (m & ~brain).sum() < 0.01 * brain.sum()


def test_surface_microbleed_void_stays_in_the_mask(rng):
    """A juxtacortical microbleed's signal void opens onto the dark skull gap; the closing keeps it (and
    the lesion centre) inside the mask, while the outside is not grown by more than a thin shell."""
    vs = (1.0, 1.0, 1.5)
    mag, brain, scalp = synthetic_head(rng, voxel_size=vs)
    shape = mag.shape
    c = (np.asarray(shape) - 1) / 2.0
    surface = np.array([19.0, 21.0, 0.0]) * np.sqrt(0.5)  # a surface point between the x and y axes (mm)
    normal = surface / np.array([19.0, 21.0, 22.0]) ** 2
    normal /= np.linalg.norm(normal)
    idx = np.indices(shape).astype(float)
    lesion = surface - 2.5 * normal  # a juxtacortical lesion 2.5 mm deep (mm from the centre)
    d = np.sqrt(sum(((idx[n] - c[n]) * vs[n] - lesion[n]) ** 2 for n in range(3)))
    clean, _, _ = synthetic_head(np.random.default_rng(1), voxel_size=vs)
    mag = np.where(d <= 3.0, 0.05 * clean, mag).astype(np.float32)  # a 6 mm void opening onto the skull gap
    centre = c + lesion / np.asarray(vs)
    at = tuple(int(round(v)) for v in centre)
    closed = brain_mask(mag, vs, erode_mm=0.0)
    opened = brain_mask(mag, vs, erode_mm=0.0, close_mm=0.0)
    assert not opened[at]  # without the closing the lesion is cut out with its void
    assert closed[at]
    assert not (closed & scalp).any()
    assert (closed & ~brain).sum() < 0.02 * brain.sum()


def test_ball_morphology_matches_distance_transform(rng):
    """FFT ball erosion/dilation == Euclidean distance-transform erosion/dilation (anisotropic voxels, masks
    touching the array edge, where the edge must not erode)."""
    from scipy import ndimage

    from cmbdetect.physics.mask import _dilate, _erode

    for n in range(12):
        shape = tuple(int(v) for v in rng.integers(18, 40, 3))
        vs = rng.uniform(0.6, 2.2, 3)
        r = float(rng.uniform(1.0, 5.0))
        m = ndimage.gaussian_filter(rng.random(shape), 2.5) > 0.5
        if n % 3 == 0:
            m[:, :, :4] = True
        edt_eroded = ndimage.distance_transform_edt(m, sampling=vs) > r
        edt_dilated = ndimage.distance_transform_edt(~m, sampling=vs) <= r
        assert np.array_equal(_erode(m, r, vs), edt_eroded)
        assert np.array_equal(_dilate(m, r, vs), edt_dilated)


def test_close_surface_notches_fills_a_narrow_notch_and_little_else():
    """A sphere (radius 15 mm, 1 x 1 x 1.5 mm voxels) with a notch 5 mm wide and 7 mm deep cut into its
    surface: a 6 mm closing fills the notch (all of its inner part) and adds under 2 % outside the original
    sphere; 0 mm is a copy."""
    from cmbdetect.physics.mask import close_surface_notches

    vs = np.array([1.0, 1.0, 1.5])
    shape = (44, 44, 30)
    idx = np.indices(shape).astype(float)
    c = (np.array(shape) - 1) / 2
    r = np.sqrt(sum(((idx[a] - c[a]) * vs[a]) ** 2 for a in range(3)))
    sphere = r <= 15.0
    notch = sphere & (np.abs(idx[1] - c[1]) <= 2.5) & (np.abs((idx[2] - c[2]) * vs[2]) <= 2.5) & \
        ((idx[0] - c[0]) >= 8.0)
    cut = sphere & ~notch
    closed = close_surface_notches(cut, 6.0, vs)
    assert (closed >= cut).all()
    deep = notch & ((idx[0] - c[0]) <= 12.0)  # the inner part; near the curved surface the ball fills less
    assert closed[deep].all() and closed[notch].mean() > 0.8
    assert (closed & ~sphere).sum() < 0.02 * sphere.sum()
    same = close_surface_notches(cut, 0.0, vs)
    assert (same == cut).all() and same is not cut


def test_slab_with_tissue_on_its_faces_keeps_dimmer_tissue(rng):
    """A slab through the middle of the head, its field of view tight around the brain, has brain on about
    half of its faces; those tissue voxels must not raise the background level.  A dimmer third of the brain
    (60 % of the tissue signal, like a shaded cerebellum or brainstem at the skull base) stays in the mask
    (with the faces' plain median as the background level, 3 % of it did)."""
    vs = (1.0, 1.0, 1.5)
    mag, brain, scalp = synthetic_head(rng, voxel_size=vs)
    crop = (slice(6, 50), slice(6, 54), slice(14, 26))
    mag, brain, scalp = mag[crop], brain[crop], scalp[crop]
    dim = brain & (np.indices(mag.shape)[1] < mag.shape[1] // 3)
    mag = np.where(dim, 0.6 * mag, mag).astype(np.float32)
    m = brain_mask(mag, vs)
    assert (m & dim).sum() / dim.sum() > 0.7  # the rest is the eroded rim (a third of the brain's surface)
    assert (m & brain).sum() / brain.sum() > 0.85
    assert not (m & scalp).any()
    assert (m & ~brain).sum() < 0.01 * brain.sum()


@pytest.mark.parametrize("seed", [0, 1])
def test_scalp_bridged_across_a_thin_skull_on_thick_slices_is_cut_off(seed):
    """Thick slices + bright scalp: without the scalp guard the closing seals the skull gap and the whole
    scalp joins the mask (background removal then fails); with it the scalp goes, the brain and the void of
    a surface microbleed stay.  The margin matters: the large opening alone cuts the lesion void open."""
    vs = (2.3, 2.3, 3.2)
    mag, brain, scalp, lesion = coarse_head(np.random.default_rng(seed), voxel_size=vs)
    unguarded = brain_mask(mag, vs, scalp_open_mm=0.0)
    assert (unguarded & scalp).sum() > 0.5 * scalp.sum()
    m = brain_mask(mag, vs)
    assert not (m & scalp).any()
    assert (m & brain).sum() > 0.97 * brain.sum()
    assert m[lesion].all()
    assert m[lesion].mean() > brain_mask(mag, vs, scalp_margin_mm=0.0)[lesion].mean() + 0.2


def test_a_scalp_patch_is_cut_only_when_asked():
    """A bright scalp patch (11 % of the mask) stays in the default mask (the guard cuts only a whole shell) and
    goes with ``scalp_leak_fraction=0``; :func:`brain_masks` returns both, the guarded one inside the plain one."""
    vs = (2.3, 2.3, 3.2)
    mag, brain, scalp, _ = coarse_head(np.random.default_rng(0), voxel_size=vs, scalp_above_mm=35.0)
    plain, guarded = brain_masks(mag, vs)
    assert (guarded <= plain).all() and 0.05 < 1 - guarded.sum() / plain.sum() < 0.2
    assert (brain_mask(mag, vs) == plain).all() and (plain & scalp).sum() > 0.9 * scalp.sum()
    cut = brain_mask(mag, vs, scalp_leak_fraction=0.0)
    assert (cut == guarded).all() and not (cut & scalp).any() and (cut & brain).sum() > 0.97 * brain.sum()
    off_plain, off_guarded = brain_masks(mag, vs, scalp_open_mm=0.0)
    assert (off_plain == off_guarded).all() and (off_plain == plain).all()
