"""Stage-2 patch classifier: centre pooling makes it see where the candidate is."""
import numpy as np
import torch

from cmbdetect.models.networks import PatchClassifier, centre_crop


def test_centre_crop_takes_the_central_cube():
    z = torch.arange(6 * 5 * 7, dtype=torch.float32).reshape(1, 1, 6, 5, 7)
    c = centre_crop(z, 2)
    assert c.shape == (1, 1, 2, 2, 2)
    assert torch.equal(c, z[:, :, 2:4, 1:3, 2:4])
    assert centre_crop(z, 9).shape == z.shape  # wider than the map: the whole axis


def _spot(at: int, size: int = 64) -> torch.Tensor:
    x = torch.zeros(1, 2, size, size, size)
    x[0, :, at - 1:at + 2, 30:33, 30:33] = 3.0
    return x


def test_global_pooling_cannot_tell_where_the_spot_is_but_centre_pooling_can():
    """The same spot 8 voxels off the centre (far from the patch border): global mean and max pooling give the
    same logits (translation equivariance of the convolutions), the centre-pooled classifier does not."""
    feats = torch.zeros(1, 3)
    centred, shifted = _spot(32), _spot(24)
    torch.manual_seed(0)
    plain = PatchClassifier(2, 3, base=4, n_heads=2).eval()
    torch.manual_seed(0)
    centre = PatchClassifier(2, 3, base=4, n_heads=2, centre=2).eval()
    with torch.no_grad():
        assert np.allclose(plain(centred, feats).numpy(), plain(shifted, feats).numpy(), atol=1e-5)
        a, b = centre(centred, feats).numpy(), centre(shifted, feats).numpy()
    assert a.shape == (1, 2, 4)
    assert not np.allclose(a, b, atol=1e-3)
