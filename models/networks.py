"""Compact 3D networks: a small U-Net for the stage-1 centre heatmap and a patch CNN for stage 2.

Both are plain ``torch.nn.Module`` s whose constructor arguments are JSON-serialisable, so the registry
rebuilds them from ``metadata.json`` and loads ``state_dict`` s with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm3d(cout), nn.LeakyReLU(0.1),
        nn.Conv3d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm3d(cout), nn.LeakyReLU(0.1),
    )


class CentreNet3D(nn.Module):
    """Small 3D U-Net with output stride 2 (CenterNet-style) and two heads.

    A stride-2 stem (3x3x3, ``in_channels`` -> ``base``) feeds a U-Net of ``depth`` poolings on the
    half-resolution grid (``base`` channels doubling per level).  Output ``[N, 2, X/2, Y/2, Z/2]``:
    channel 0 = centre-heatmap logit, channel 1 = lesion diameter in mm (softplus).  Output voxel ``o``
    is centred on input voxel ``2*o``.  Batch norm (not instance norm) so that tiled inference does not
    depend on the tile's content.  Input sizes must be divisible by ``2**(depth+1)``
    (:func:`cmbdetect.models.detector.predict_volume` pads).
    """

    stride: int = 2

    def __init__(self, in_channels: int, *, base: int = 16, depth: int = 1, prior: float = 0.01):
        super().__init__()
        self.depth = depth
        chans = [base * 2**d for d in range(depth + 1)]
        self.stem = nn.Sequential(nn.Conv3d(in_channels, base, 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm3d(base), nn.LeakyReLU(0.1))
        self.down = nn.ModuleList()
        cin = base
        for c in chans:
            self.down.append(_block(cin, c))
            cin = c
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for d in range(depth, 0, -1):
            self.up.append(nn.ConvTranspose3d(chans[d], chans[d - 1], 2, stride=2))
            self.merge.append(_block(2 * chans[d - 1], chans[d - 1]))
        self.heat = nn.Conv3d(chans[0], 1, 1)
        self.size = nn.Conv3d(chans[0], 1, 1)
        # CenterNet initialisation: the heatmap starts at the (low) prior, so early focal-loss steps are sane.
        nn.init.constant_(self.heat.bias, float(torch.logit(torch.tensor(prior))))

    @property
    def multiple(self) -> int:
        """Input sizes must be multiples of this."""
        return self.stride * 2**self.depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        skips = []
        for d, block in enumerate(self.down):
            x = block(x)
            if d < self.depth:
                skips.append(x)
                x = F.max_pool3d(x, 2)
        for up, merge in zip(self.up, self.merge):
            x = up(x)
            x = merge(torch.cat([x, skips.pop()], dim=1))
        return torch.cat([self.heat(x), F.softplus(self.size(x))], dim=1)


class PatchClassifier(nn.Module):
    """Stage-2 classifier: 3D CNN on a multi-channel patch + physics features -> class logits.

    The CNN embedding (global average + max pooled) is concatenated with the (standardised) physics
    feature vector before the heads.  With ``centre > 0`` the average and maximum over the central
    ``centre``-wide cube of the last feature map are added: global pooling alone cannot tell the candidate
    at the patch centre from a stronger vein or lesion elsewhere in the patch (with a 24-voxel patch and
    ``centre=2`` that cube covers the central 8 voxels of the input).  ``n_heads`` independent linear heads form
    a small committee (query-by-committee): the mean of their softmaxes is the prediction, their disagreement the
    epistemic part of the uncertainty.  Output ``[N, n_heads, n_classes]`` logits.
    """

    def __init__(self, in_channels: int, n_features: int, n_classes: int = 4, *, base: int = 8,
                 n_heads: int = 3, dropout: float = 0.2, centre: int = 0):
        super().__init__()
        self.n_features = n_features
        self.centre = int(centre)
        self.conv = nn.Sequential(
            nn.Conv3d(in_channels, base, 3, padding=1), nn.LeakyReLU(0.1), nn.MaxPool3d(2),
            nn.Conv3d(base, 2 * base, 3, padding=1), nn.LeakyReLU(0.1), nn.MaxPool3d(2),
            nn.Conv3d(2 * base, 2 * base, 3, padding=1), nn.LeakyReLU(0.1),
        )
        hidden = (8 if self.centre > 0 else 4) * base + n_features
        self.trunk = nn.Sequential(nn.Linear(hidden, 32), nn.LeakyReLU(0.1), nn.Dropout(dropout))
        self.heads = nn.ModuleList([nn.Linear(32, n_classes) for _ in range(n_heads)])

    def forward(self, patch: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        z = self.conv(patch)
        pooled = [z.mean(dim=(2, 3, 4)), z.amax(dim=(2, 3, 4))]
        if self.centre > 0:
            c = centre_crop(z, self.centre)
            pooled += [c.mean(dim=(2, 3, 4)), c.amax(dim=(2, 3, 4))]
        z = torch.cat([*pooled, features], dim=1)
        z = self.trunk(z)
        return torch.stack([h(z) for h in self.heads], dim=1)


def centre_crop(z: torch.Tensor, width: int) -> torch.Tensor:
    """The central ``width``-wide cube of a ``[N, C, X, Y, Z]`` feature map (the whole axis where it is
    narrower; for odd/even mismatches the extra voxel is taken on the low side)."""
    sl = [slice(None), slice(None)]
    for n in z.shape[2:]:
        w = min(int(width), int(n))
        lo = (int(n) - w) // 2
        sl.append(slice(lo, lo + w))
    return z[tuple(sl)]
