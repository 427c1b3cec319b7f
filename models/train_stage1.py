"""Stage-1 training: centre-heatmap detector on balanced, importance-weighted patches.

Volumes are the normalised channels on the model grid (:func:`cmbdetect.models.inference.model_grid`);
positives are microbleeds *and* calcifications (both are focal spots; stage 2 tells them apart by
physics).  Each step draws ``batch`` patches with :class:`BalancedPatchSampler`, applies random flips,
builds the heatmap target of the patch from the lesion centres (Gaussian, sigma in mm, on the stride-2
output grid) and minimises ``mean(w_i * L_i)`` (+ diameter L1 at centres).  Every step is seeded by
``(seed, step)``, so a resumed run continues exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cmbdetect.models.augment import IntensityAugmentation, ResolutionAugmentation, swap_xy
from cmbdetect.models.detector import find_candidates, predict_volume
from cmbdetect.models.heatmap import gaussian_targets
from cmbdetect.models.losses import heatmap_loss, size_l1_loss, weighted_mean
from cmbdetect.models.networks import CentreNet3D
from cmbdetect.models.sampling import BalancedPatchSampler, patch_origins, patches_containing

FOCAL_KINDS = ("microbleed", "calcification")


@dataclass
class Stage1Volume:
    """Channels ``[C, X, Y, Z]`` on the model grid (padded to the patch), mask, voxel size (mm) and the focal
    lesions (centres in model-grid voxels, diameters mm, kinds)."""

    x: np.ndarray
    mask: np.ndarray
    voxel_size: np.ndarray
    centres: np.ndarray
    diameters: np.ndarray
    kinds: list[str]


def pad_volume(x: np.ndarray, mask: np.ndarray, *, patch: int, multiple: int) -> tuple[np.ndarray, np.ndarray]:
    """Zero-pad channels and mask at the far end to at least ``patch`` and a multiple of ``multiple``."""
    target = [max(patch, -(-s // multiple) * multiple) for s in mask.shape]
    pad = [(0, t - s) for s, t in zip(mask.shape, target)]
    return np.pad(x, [(0, 0)] + pad), np.pad(mask, pad)


def _flip(a: np.ndarray, axes) -> np.ndarray:
    return np.ascontiguousarray(np.flip(a, axis=axes)) if axes else a


def make_batch(vols: list[Stage1Volume], picks, *, patch: int, stride: int, sigma_mm: float,
               rng: np.random.Generator, sigma_size_fraction: float = 0.0,
               augment: IntensityAugmentation | None = None, channels=(),
               resolution: ResolutionAugmentation | None = None):
    """Input patches ``[B, C, p, p, p]``, heatmap and size targets ``[B, 1, p/s, p/s, p/s]``.

    Random flips always; with ``resolution`` the coarser-acquisition blur of the patch (on the volume's voxel
    size; the lesion centres, hence the targets, stay where they are); with ``augment`` (and the ``channels``
    names) also the intensity augmentation and, where the two in-plane voxel sizes agree within 2 %, a random
    in-plane axis swap."""
    xs, hs, ss = [], [], []
    out = patch // stride
    for v_idx, origin in picks:
        v = vols[v_idx]
        o = np.asarray(origin)
        x = v.x[:, o[0]:o[0] + patch, o[1]:o[1] + patch, o[2]:o[2] + patch]
        c = v.centres - o
        flips = [a for a in range(3) if rng.random() < 0.5]
        for a in flips:
            c[:, a] = (patch - 1) - c[:, a]
        x = _flip(x, [a + 1 for a in flips])
        vs = v.voxel_size
        if resolution is not None:
            x = resolution.apply(x, vs, rng)
        if augment is not None:
            if abs(vs[0] - vs[1]) <= 0.02 * vs[0] and rng.random() < 0.5:
                x = swap_xy(x, first_spatial_axis=1)
                c = c[:, [1, 0, 2]]
            x = augment.apply(x, channels, rng)
        inside = np.all((c >= -2) & (c <= patch + 1), axis=1)
        h, s, _ = gaussian_targets((out,) * 3, c[inside] / stride, vs * stride,
                                   diameters_mm=v.diameters[inside], sigma_mm=sigma_mm,
                                   size_fraction=sigma_size_fraction)
        xs.append(x)
        hs.append(h)
        ss.append(s)
    return (torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(hs))[:, None],
            torch.from_numpy(np.stack(ss))[:, None])


def patch_population(vols: list[Stage1Volume], *, patch: int, stride: int) -> tuple[list, np.ndarray]:
    """All (volume index, origin) patches and whether each contains a focal lesion centre."""
    picks, positive = [], []
    for n, v in enumerate(vols):
        origins = patch_origins(v.mask.shape, patch, stride)
        inside_brain = [v.mask[o[0]:o[0] + patch, o[1]:o[1] + patch, o[2]:o[2] + patch].any() for o in origins]
        origins = origins[np.array(inside_brain, dtype=bool)]
        picks.extend((n, tuple(o)) for o in origins)
        positive.append(patches_containing(origins, patch, v.centres, margin=4))
    return picks, np.concatenate(positive)


def cosine_lr(base_lr: float, step: int, steps: int, *, final_fraction: float = 0.02) -> float:
    """Cosine-decayed learning rate of ``step`` (0-based) out of ``steps``: ``base_lr`` at the start, falling to
    ``final_fraction * base_lr`` at the end.  A function of the step alone, so a resumed run is unchanged, and
    the last weights are not a noisy snapshot of a constant-rate random walk."""
    t = min(max(step / max(steps - 1, 1), 0.0), 1.0)
    return float(base_lr * (final_fraction + (1.0 - final_fraction) * 0.5 * (1.0 + np.cos(np.pi * t))))


def train_detector(net: CentreNet3D, vols: list[Stage1Volume], *, steps: int, start_step: int = 0,
                   optimizer: torch.optim.Optimizer, patch: int = 40, batch: int = 4, loss: str = "focal",
                   balanced: bool = True, sigma_mm: float = 2.0, sigma_size_fraction: float = 0.0, seed: int = 0,
                   lr_schedule: str = "constant",
                   augment: IntensityAugmentation | None = None, channels=(),
                   resolution: ResolutionAugmentation | None = None, checkpoint=None, log=print) -> None:
    """Run steps ``start_step .. steps-1``; ``checkpoint(step)`` is called every 50 steps and at the end.
    ``lr_schedule``: "constant" (the optimizer's rate) or "cosine" (:func:`cosine_lr` from that rate).
    ``augment``/``channels``/``resolution``: augmentation of the patches (see :func:`make_batch`)."""
    if lr_schedule not in ("constant", "cosine"):
        raise ValueError(f"unknown learning-rate schedule {lr_schedule!r}")
    base_lrs = [g.get("initial_lr", g["lr"]) for g in optimizer.param_groups]
    for g, lr in zip(optimizer.param_groups, base_lrs):
        g["initial_lr"] = lr
    picks, positive = patch_population(vols, patch=patch, stride=patch // 2)
    sampler = BalancedPatchSampler(positive, positive_fraction=0.5 if balanced else None, seed=seed)
    log(f"[stage 1] {len(picks)} patches, {int(positive.sum())} with lesions; loss={loss}, balanced={balanced}")
    net.train()
    running = []
    for step in range(start_step, steps):
        rng = np.random.default_rng([seed, step])
        torch.manual_seed(seed * 1_000_003 + step)
        if lr_schedule == "cosine":
            for g, lr in zip(optimizer.param_groups, base_lrs):
                g["lr"] = cosine_lr(lr, step, steps)
        idx, w = sampler.sample(batch, rng=rng)
        x, h, s = make_batch(vols, [picks[i] for i in idx], patch=patch, stride=net.stride, sigma_mm=sigma_mm,
                             rng=rng, sigma_size_fraction=sigma_size_fraction, augment=augment, channels=channels,
                             resolution=resolution)
        y = net(x)
        per = heatmap_loss(loss, y[:, :1], h) + 0.1 * size_l1_loss(y[:, 1:], s)
        total = weighted_mean(per, torch.from_numpy(w).float())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        running.append(total.item())
        if (step + 1) % 25 == 0 or step + 1 == steps:
            log(f"[stage 1] step {step + 1}/{steps} loss {np.mean(running):.4f}")
            running = []
        if checkpoint is not None and ((step + 1) % 50 == 0 or step + 1 == steps):
            checkpoint(step + 1)
    net.eval()


def volume_candidates(net: CentreNet3D, v: Stage1Volume, *, threshold: float, min_distance_mm: float,
                      max_candidates: int = 400, flips=((),)):
    """Stage-1 candidates of a training volume: ``(centres, scores, diameters)`` on the model grid, with the
    test-time ``flips`` that inference will use (so thresholds and hard negatives match inference)."""
    heat, size = predict_volume(net, v.x, flips=flips)
    return find_candidates(heat, size, voxel_size=v.voxel_size, stride=net.stride, threshold=threshold,
                           min_distance_mm=min_distance_mm, max_candidates=max_candidates, mask=v.mask)


def lesion_best_scores(centres, scores, v: Stage1Volume, *, hit_mm: float = 5.0) -> np.ndarray:
    """For each focal lesion, the highest score of a candidate within ``hit_mm`` (0 if none)."""
    out = np.zeros(len(v.centres))
    for n, c in enumerate(v.centres):
        if len(centres):
            d = np.sqrt((((centres - c) * v.voxel_size) ** 2).sum(axis=1))
            near = d <= hit_mm
            if near.any():
                out[n] = scores[near].max()
    return out


def recall_threshold(best_scores: np.ndarray, *, target_recall: float = 0.98, floor: float = 0.02,
                     ceiling: float = 0.5) -> float:
    """Highest threshold keeping ``target_recall`` of the lesions (clamped to ``[floor, ceiling]``)."""
    s = np.sort(np.asarray(best_scores, dtype=float))
    if s.size == 0:
        return floor
    k = int(np.floor((1.0 - target_recall) * s.size + 1e-9))
    return float(np.clip(s[k], floor, ceiling))
