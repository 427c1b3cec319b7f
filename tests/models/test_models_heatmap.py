"""Heatmap targets and NMS on hand-made peaks with anisotropic voxels."""
import numpy as np

from cmbdetect.models.heatmap import gaussian_targets, nms_peaks


def test_gaussian_targets_mm_sigma_anisotropic():
    heat, size, peak = gaussian_targets((20, 20, 10), [[10, 10, 5]], (1.0, 1.0, 2.0), diameters_mm=[4.0],
                                        sigma_mm=2.0)
    assert heat[10, 10, 5] == 1.0 and peak.sum() == 1 and peak[10, 10, 5]
    # one voxel along k is 2 mm: exp(-4/8); one voxel along i is 1 mm: exp(-1/8)
    assert abs(heat[10, 10, 6] - np.exp(-0.5)) < 1e-6
    assert abs(heat[11, 10, 5] - np.exp(-1 / 8)) < 1e-6
    assert size[10, 10, 5] == 4.0 and size[0, 0, 0] == 0.0


def test_gaussian_targets_overlap_keeps_max_and_skips_outside():
    heat, _, peak = gaussian_targets((20, 8, 8), [[5, 4, 4], [8, 4, 4], [50, 4, 4]], (1, 1, 1), sigma_mm=1.5)
    assert peak.sum() == 2
    assert heat[5, 4, 4] == 1.0 and heat[8, 4, 4] == 1.0
    assert heat.max() == 1.0


def test_nms_distance_in_mm():
    h = np.zeros((30, 30, 12), np.float32)
    h[10, 10, 5] = 0.9
    h[10, 10, 7] = 0.8     # 4 mm away along k (2-mm slices): suppressed at 5 mm
    h[20, 10, 5] = 0.7     # 10 mm away: kept
    h[25, 25, 5] = 0.2     # below threshold
    c, s = nms_peaks(h, (1.0, 1.0, 2.0), threshold=0.3, min_distance_mm=5.0)
    assert np.allclose(s, [0.9, 0.7])
    assert np.allclose(c, [[10, 10, 5], [20, 10, 5]])
    c2, s2 = nms_peaks(h, (1.0, 1.0, 2.0), threshold=0.3, min_distance_mm=3.0)
    assert len(s2) == 3


def test_nms_subvoxel_refinement_and_empty():
    h = np.zeros((10, 10, 10), np.float32)
    h[5, 5, 5] = 1.0
    h[6, 5, 5] = 1.0 - 1e-6
    c, _ = nms_peaks(h, (1, 1, 1), threshold=0.5, min_distance_mm=2)
    assert len(c) == 1 and 5.4 < c[0, 0] < 5.6
    c, s = nms_peaks(np.zeros((5, 5, 5)), (1, 1, 1), threshold=0.5)
    assert c.shape == (0, 3) and s.shape == (0,)


def test_stage1_test_time_flips_are_aligned_with_the_stride_grid(monkeypatch, rng):
    """A stride-2 'network' that reads input voxel 2*o at output o is exactly flip-equivariant; with the
    mirrored passes of predict_volume (odd and even sizes) the averaged heatmap equals the plain pass."""
    import cmbdetect.models.detector as det

    class Stride2:
        stride = 2

    def fake_once(net, channels, *, tile, overlap):
        n = -(-np.array(channels.shape[1:]) // 2)
        h = channels[0, ::2, ::2, ::2][: n[0], : n[1], : n[2]]
        return h.copy(), 2 * h.copy()

    monkeypatch.setattr(det, "_predict_once", fake_once)
    x = rng.random((2, 17, 12, 9)).astype(np.float32)
    plain, _ = det.predict_volume(Stride2(), x)
    for flips in (((0,),), ((1,),), ((2,),), ((), (0,), (1,), (0, 1)), ((0, 1, 2),)):
        heat, size = det.predict_volume(Stride2(), x, flips=flips)
        assert heat.shape == plain.shape == (9, 6, 5)
        assert np.allclose(heat, plain) and np.allclose(size, 2 * plain), flips


def test_gaussian_targets_size_adaptive_sigma():
    """sigma = max(sigma_mm, size_fraction * diameter): a 10 mm lesion gets a wider peak, a 2 mm one keeps sigma_mm."""
    shape, vs = (41, 41, 41), np.ones(3)
    c = np.array([[20.0, 20.0, 20.0]])
    fixed, _, _ = gaussian_targets(shape, c, vs, diameters_mm=[10.0], sigma_mm=2.0)
    wide, _, _ = gaussian_targets(shape, c, vs, diameters_mm=[10.0], sigma_mm=2.0, size_fraction=0.4)
    small, _, _ = gaussian_targets(shape, c, vs, diameters_mm=[2.0], sigma_mm=2.0, size_fraction=0.4)
    assert np.isclose(fixed[24, 20, 20], np.exp(-16 / 8), atol=1e-6)
    assert np.isclose(wide[24, 20, 20], np.exp(-16 / 32), atol=1e-6)
    assert np.array_equal(small, fixed) and wide[20, 20, 20] == 1.0


def test_greedy_suppression_matches_brute_force():
    """The cell-hashed suppression keeps exactly what the all-pairs greedy rule keeps, points on cell borders
    and at exactly the minimum distance included."""
    from cmbdetect.models.heatmap import _greedy_suppression

    rng = np.random.default_rng(3)
    pts = np.vstack([rng.uniform(-20, 20, (400, 3)), rng.integers(-6, 6, (200, 3)) * 1.5,
                     [[0, 0, 0], [3, 0, 0], [2.999, 0, 0], [0, 0, -3]]])
    for d, cap in ((3.0, 10_000), (1.5, 10_000), (3.0, 25)):
        kept: list[int] = []
        for n, p in enumerate(pts):
            if kept and np.min(np.sum((pts[kept] - p) ** 2, axis=1)) < d**2:
                continue
            kept.append(n)
            if len(kept) >= cap:
                break
        assert _greedy_suppression(pts, d, cap) == kept
    assert len(_greedy_suppression(pts, 3.0, 10_000)) < len(pts)
