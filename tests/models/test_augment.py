"""Training augmentation: intensity gains/noise keep signs, zeros outside the mask, the chi group's ratios,
the clip, and are reproducible; the in-plane swap moves the heatmap target with the image."""
from __future__ import annotations

import numpy as np
import pytest

from cmbdetect.models.augment import IntensityAugmentation, ResolutionAugmentation, swap_xy
from cmbdetect.models.channels import ALL_CHANNELS

CH = ALL_CHANNELS  # magnitude, local_field, chi, chi_pos, chi_neg


def _patch(rng, n=10):
    x = rng.normal(size=(5, n, n, n)).astype(np.float32)
    x[3] = np.maximum(x[2], 0)
    x[4] = np.maximum(-x[2], 0)
    x[:, :2] = 0.0  # outside the mask
    return x


def test_gains_keep_sign_zero_and_chi_split(rng):
    aug = IntensityAugmentation(max_gain=2.0, noise_sd=0.0)
    x = _patch(rng)
    for k in range(20):
        y = aug.apply(x, CH, np.random.default_rng(k))
        assert np.all(np.sign(y) == np.sign(x))
        assert np.all(y[:, :2] == 0)
        g = y[2][x[2] != 0] / x[2][x[2] != 0]
        assert np.allclose(g, g[0], rtol=1e-5) and 0.5 - 1e-6 <= g[0] <= 2.0 + 1e-6
        # chi_pos / chi_neg get the chi gain: the sign split of the augmented chi is still exact
        assert np.allclose(y[3], np.maximum(y[2], 0), atol=1e-6)
        assert np.allclose(y[4], np.maximum(-y[2], 0), atol=1e-6)


def test_gains_differ_between_groups_and_draws():
    aug = IntensityAugmentation(max_gain=1.6, noise_sd=0.0)
    x = np.ones((5, 4, 4, 4), np.float32)
    gains = np.array([aug.apply(x, CH, np.random.default_rng(k))[:, 0, 0, 0] for k in range(200)])
    assert gains[:, 0].std() > 0.1 and gains[:, 1].std() > 0.1
    assert abs(np.corrcoef(gains[:, 0], gains[:, 1])[0, 1]) < 0.3  # independent groups
    assert np.allclose(np.log(gains[:, 0]).mean(), 0.0, atol=0.06)  # log-uniform, centred on 1
    assert gains.min() >= 1 / 1.6 - 1e-6 and gains.max() <= 1.6 + 1e-6


def test_noise_inside_only_clip_and_reproducible(rng):
    aug = IntensityAugmentation(max_gain=1.0, noise_sd=0.5, clip=3.0)
    x = _patch(rng) * 10
    a = aug.apply(x, CH, np.random.default_rng(7))
    b = aug.apply(x, CH, np.random.default_rng(7))
    assert np.array_equal(a, b)
    assert np.all(a[:, :2] == 0) and np.abs(a).max() <= 3.0
    assert not np.array_equal(a[:, 2:], np.clip(x[:, 2:], -3, 3))


def test_bad_settings_and_channel_count():
    with pytest.raises(ValueError):
        IntensityAugmentation(max_gain=0.5)
    with pytest.raises(ValueError):
        IntensityAugmentation().apply(np.zeros((2, 3, 3, 3), np.float32), CH, np.random.default_rng(0))


def test_swap_xy_moves_the_heatmap_target_with_the_patch(rng):
    from cmbdetect.models.train_stage1 import Stage1Volume, make_batch

    x = np.zeros((5, 40, 40, 40), np.float32)
    x[:, 10, 25, 20] = 5.0
    vol = Stage1Volume(x=x, mask=np.ones((40, 40, 40), bool), voxel_size=np.array([1.0, 1.0, 1.5]),
                       centres=np.array([[10.0, 25.0, 20.0]]), diameters=np.array([3.0]), kinds=["microbleed"])
    aug = IntensityAugmentation(max_gain=1.0, noise_sd=0.0)
    for k in range(12):
        xb, hb, _ = make_batch([vol], [(0, (0, 0, 0))], patch=40, stride=2, sigma_mm=2.0,
                               rng=np.random.default_rng(k), augment=aug, channels=CH)
        img_peak = np.unravel_index(np.argmax(xb[0, 0].numpy()), (40, 40, 40))
        heat_peak = np.unravel_index(np.argmax(hb[0, 0].numpy()), (20, 20, 20))
        assert np.all(np.abs(np.array(img_peak) / 2 - np.array(heat_peak)) <= 1), (k, img_peak, heat_peak)
    assert swap_xy(x, first_spatial_axis=1)[0, 25, 10, 20] == 5.0


def test_resolution_blur_widens_a_spike_keeps_sign_and_outside():
    """A paramagnetic spike (and its diamagnetic twin in another channel) blurred as a 3 mm acquisition on a
    1 x 1 x 1.5 mm grid: wider (same width along the two in-plane axes), lower peak, signs kept, the outside
    still 0; probability 0 is the identity; reproducible with the seed."""
    x = np.zeros((2, 17, 17, 17), np.float32)
    x[0, 8, 8, 8], x[1, 8, 8, 8] = 5.0, -5.0
    x[:, :, :, :2] = 0.0
    x[:, :, :, 2:] += np.float32(1e-6)  # inside the mask: everything from slice 2 on
    aug = ResolutionAugmentation(probability=1.0, max_voxel_mm=3.0)
    out = aug.apply(x, (1.0, 1.0, 1.5), np.random.default_rng(4))
    again = aug.apply(x, (1.0, 1.0, 1.5), np.random.default_rng(4))
    np.testing.assert_array_equal(out, again)
    assert out[0].min() >= 0 and out[1].max() <= 1e-6 and 0 < out[0].max() < 5.0
    assert np.all(out[:, :, :, :2] == 0)
    prof = out[0].sum(axis=2)
    var = [float((prof.sum(axis=1 - a) * (np.arange(17) - 8) ** 2).sum() / prof.sum()) for a in (0, 1)]
    assert var[0] > 0.2 and abs(var[0] - var[1]) < 1e-3 * var[0]
    np.testing.assert_array_equal(ResolutionAugmentation(probability=0.0).apply(x, (1, 1, 1.5),
                                                                               np.random.default_rng(0)), x)
    with pytest.raises(ValueError):
        ResolutionAugmentation(probability=1.5)


def test_stage1_resolution_blur_keeps_the_heatmap_target_and_is_off_at_zero():
    """Stage-1 patches blurred as a coarser acquisition: the input spike is lower and wider, the heatmap target
    stays on the lesion centre (same target as without blur), and probability 0 leaves the batch unchanged."""
    from cmbdetect.models.train_stage1 import Stage1Volume, make_batch

    x = np.zeros((5, 40, 40, 40), np.float32)
    x[:, 12, 22, 18] = 5.0
    x[:, 4:36, 4:36, 4:36] += np.float32(1e-6)
    vol = Stage1Volume(x=x, mask=np.ones((40, 40, 40), bool), voxel_size=np.array([1.0, 1.0, 1.5]),
                       centres=np.array([[12.0, 22.0, 18.0]]), diameters=np.array([3.0]), kinds=["microbleed"])
    kw = dict(patch=40, stride=2, sigma_mm=2.0)
    plain = make_batch([vol], [(0, (0, 0, 0))], rng=np.random.default_rng(3), **kw)
    blurred = make_batch([vol], [(0, (0, 0, 0))], rng=np.random.default_rng(3),
                         resolution=ResolutionAugmentation(probability=1.0), **kw)
    off = make_batch([vol], [(0, (0, 0, 0))], rng=np.random.default_rng(3),
                     resolution=ResolutionAugmentation(probability=0.0), **kw)
    assert 0 < blurred[0].max() < 0.99 * plain[0].max()
    assert (blurred[0] > 0.01).sum() > (plain[0] > 0.01).sum()
    np.testing.assert_array_equal(np.argwhere(blurred[0][0, 0].numpy() == blurred[0][0, 0].numpy().max())[0],
                                  np.argwhere(plain[0][0, 0].numpy() > 1.0)[0])
    np.testing.assert_array_equal(blurred[1].numpy(), plain[1].numpy())
    for a, b in zip(off, plain):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
