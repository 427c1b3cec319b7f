"""Balanced sampler unbiasedness and hard-negative labelling."""
import numpy as np

from cmbdetect.models.detection import CLASSES
from cmbdetect.models.sampling import (BalancedPatchSampler, label_candidates, patch_origins,
                                       patches_containing)


def test_importance_weighted_mean_is_unbiased():
    rng = np.random.default_rng(0)
    n = 500
    positive = np.zeros(n, dtype=bool)
    positive[rng.choice(n, 7, replace=False)] = True
    loss = np.where(positive, 5.0 + rng.random(n), 0.1 * rng.random(n))
    full = loss.mean()
    s = BalancedPatchSampler(positive, positive_fraction=0.5, seed=3)
    est = []
    for _ in range(4000):
        idx, w = s.sample(8)
        est.append(np.mean(w * loss[idx]))
    est = np.array(est)
    assert abs(est.mean() - full) < 4 * est.std() / np.sqrt(len(est))
    assert abs(est.mean() - full) / full < 0.03
    # balancing actually shows positives about half the time
    idx, _ = s.sample(4000)
    assert 0.45 < positive[idx].mean() < 0.55
    # sampling probabilities sum to one, weights = p_u / p_s
    assert abs(s.p_sampling.sum() - 1) < 1e-12
    assert np.allclose(s.weights * s.p_sampling, 1.0 / n)


def test_uniform_baseline_has_unit_weights():
    s = BalancedPatchSampler(np.array([True, False, False]), positive_fraction=None)
    _, w = s.sample(10)
    assert np.all(w == 1.0)


def test_patch_origins_cover_volume_and_positive_flags():
    o = patch_origins((40, 20, 10), 16, 12)
    assert o[:, 0].max() == 24 and o[:, 1].max() == 4 and set(o[:, 2]) == {0}
    pos = patches_containing(o, 16, [[30.0, 10.0, 5.0]], margin=2)
    assert pos.any() and not pos.all()
    for org in o[pos]:
        assert org[0] + 2 <= 30 <= org[0] + 13


def test_label_candidates_hits_and_hard_negatives():
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[15, 15, :] = 3
    cands = [[5, 5, 5], [10, 10, 14], [15, 15, 3], [1, 1, 1]]
    out = label_candidates(cands, (1.0, 1.0, 2.0), [[5, 5, 6], [10, 10, 10]], ["microbleed", "calcification"],
                           hit_mm=5.0, label_map=labels)
    # (10,10,14) is 8 mm from (10,10,10) with 2-mm slices: no hit -> other
    assert [CLASSES[i] for i in out] == ["microbleed", "other", "vein", "other"]


def test_label_candidates_reach_a_large_lesions_rim():
    """With the lesion diameters, a candidate inside a large lesion but beyond ``hit_mm`` of its centre is that
    lesion (not a hard negative); small lesions keep ``hit_mm``."""
    cands = [[10, 10, 14], [3, 5, 8], [1, 1, 1]]
    les, kinds = [[5, 5, 6], [10, 10, 10]], ["microbleed", "calcification"]
    plain = label_candidates(cands, (1.0, 1.0, 2.0), les, kinds, hit_mm=3.0)
    sized = label_candidates(cands, (1.0, 1.0, 2.0), les, kinds, hit_mm=3.0, lesion_diameters_mm=[2.0, 18.0])
    assert [CLASSES[i] for i in plain] == ["other", "other", "other"]  # 8 mm and 4.5 mm away
    assert [CLASSES[i] for i in sized] == ["calcification", "other", "other"]  # 8 mm < radius 9; 4.5 mm > 3 and 9.5 mm > 9
