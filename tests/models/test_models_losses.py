"""Imbalance losses: hand-computed values and gradient signs."""
import math

import torch

from cmbdetect.models import losses


def test_centre_focal_loss_hand_values():
    # one positive voxel (p = 0.8) and one negative voxel with soft target 0.5 (p = 0.2)
    logits = torch.logit(torch.tensor([[0.8, 0.2]]))
    target = torch.tensor([[1.0, 0.5]])
    expected = -(0.2**2) * math.log(0.8) - (0.5**4) * (0.2**2) * math.log(0.8)
    got = losses.centre_focal_loss(logits, target)
    assert got.shape == (1,)
    assert abs(float(got[0]) - expected) < 1e-6


def test_centre_focal_loss_normalised_by_positives_and_empty_patch():
    logits = torch.zeros(2, 4)
    target = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    got = losses.centre_focal_loss(logits, target)
    pos = -(0.5**2) * math.log(0.5)
    neg = -(0.5**2) * math.log(0.5)
    assert abs(float(got[0]) - (2 * pos + 2 * neg) / 2) < 1e-6
    assert abs(float(got[1]) - 4 * neg) < 1e-6      # no positive: divided by 1


def test_focal_gradients_push_the_right_way():
    logits = torch.zeros(1, 3, requires_grad=True)
    target = torch.tensor([[1.0, 0.0, 0.9]])
    losses.centre_focal_loss(logits, target).sum().backward()
    g = logits.grad[0]
    assert torch.isfinite(g).all()
    assert g[0] < 0          # positive: raise the logit
    assert g[1] > 0          # negative: lower it
    assert 0 < g[2] < g[1]   # near-centre negative is penalised less


def test_bce_and_dice():
    logits = torch.tensor([[0.0, 0.0]])
    target = torch.tensor([[1.0, 0.0]])
    assert abs(float(losses.bce_heatmap_loss(logits, target)[0]) - math.log(2)) < 1e-6
    probs = torch.tensor([[1.0, 0.0, 0.5]])
    t = torch.tensor([[1.0, 0.0, 1.0]])
    dice = 1 - (2 * 1.5 + 1) / (1.5 + 2 + 1)
    assert abs(float(losses.soft_dice_loss(probs, t)[0]) - dice) < 1e-6
    lg = torch.zeros(1, 2, requires_grad=True)
    losses.dice_bce_loss(lg, torch.tensor([[1.0, 0.2]])).sum().backward()
    assert lg.grad[0, 0] < 0 and lg.grad[0, 1] > 0
    # an empty patch (no core voxel) gets BCE only, unless dice_on_empty: then + sum p / (sum p + 1)
    empty_lg, empty_t = torch.zeros(1, 4), torch.full((1, 4), 0.2)
    assert abs(float(losses.dice_bce_loss(empty_lg, empty_t)[0]) - float(losses.bce_heatmap_loss(
        empty_lg, torch.zeros(1, 4))[0])) < 1e-6
    both = float(losses.dice_bce_loss(empty_lg, empty_t, dice_on_empty=True)[0])
    assert abs(both - (math.log(2) + 2.0 / 3.0)) < 1e-6


def test_weighted_cross_entropy_and_focal_ce():
    logits = torch.tensor([[2.0, 0.0, 0.0, 0.0]])
    lab = torch.tensor([1])
    lse = math.log(math.exp(2) + 3)
    w = torch.tensor([1.0, 3.0, 1.0, 1.0])
    assert abs(float(losses.weighted_cross_entropy(logits, lab)[0]) - lse) < 1e-5
    assert abs(float(losses.weighted_cross_entropy(logits, lab, w)[0]) - 3 * lse) < 1e-5
    p = math.exp(-lse)
    foc = -((1 - p) ** 2) * math.log(p)
    assert abs(float(losses.focal_cross_entropy(logits, lab)[0]) - foc) < 1e-5
    # committee logits [N, H, C]: mean over heads
    com = torch.stack([logits, logits], dim=1)
    assert abs(float(losses.weighted_cross_entropy(com, lab)[0]) - lse) < 1e-5


def test_inverse_frequency_weights_and_weighted_mean():
    w = losses.inverse_frequency_weights([0, 0, 0, 1], 4)
    assert abs(float(w[1]) - 3 * float(w[0])) < 1e-5
    assert float(w[2]) == 0.0
    assert abs(float(w[torch.tensor([0, 0, 0, 1])].mean()) - 1.0) < 1e-6
    per = torch.tensor([1.0, 3.0])
    assert float(losses.weighted_mean(per, torch.tensor([2.0, 0.0]))) == 1.0


def test_size_l1_only_where_defined():
    pred = torch.tensor([[3.0, 9.0]])
    tgt = torch.tensor([[4.0, 0.0]])
    assert float(losses.size_l1_loss(pred, tgt)[0]) == 1.0
