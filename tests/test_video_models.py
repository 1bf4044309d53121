"""torchvision's video classification models (3-D convs, (2+1)-D convs, S3D, video Swin, MViT) prune to the
masked original: every one of ``torchvision.models.list_models(module=torchvision.models.video)``.

Random weights (BN statistics made non-trivial by ``randomize``), eval mode, ``l1`` at ratio 0.3, on the
smallest clip each architecture accepts (S3D and MViT fix their spatial size and clip length).
"""
import pytest
import torch
import torchvision

import fxprune
from conftest import n_params, prune_and_check, randomize

CLIPS = {  # (frames, height = width)
    "r3d_18": (4, 32), "mc3_18": (4, 32), "r2plus1d_18": (4, 32), "s3d": (16, 224),
    "swin3d_t": (4, 64), "swin3d_s": (4, 64), "swin3d_b": (4, 64),
    "mvit_v1_b": (16, 224), "mvit_v2_s": (16, 224),
}


def test_every_video_model_is_covered():
    assert sorted(CLIPS) == sorted(torchvision.models.list_models(module=torchvision.models.video))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CLIPS))
def test_video_model_prunes_to_the_masked_original(name):
    model = randomize(torchvision.models.get_model(name, weights=None))
    frames, size = CLIPS[name]
    x = torch.randn(1, 3, frames, size, size, generator=torch.Generator().manual_seed(1))
    mixing = [g for g in fxprune.analyze(model, x).groups if g.mixing and not g.frozen]
    small, _ = prune_and_check(model, x, criterion="l1", ratio=0.3, strict=bool(mixing))
    assert n_params(small) < 0.9 * n_params(model)
    assert small(x).shape == (1, 400)
