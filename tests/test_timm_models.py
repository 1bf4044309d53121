"""timm models (the other model zoo our users prune): each prunes to the masked original, with most of its
channel groups prunable. timm builds its layers its own way (``BatchNormAct2d``: a BatchNorm2d whose forward
calls ``F.batch_norm`` and an activation; GhostNet's channel ranges; ReXNet's partial residual; MixNet's
split kernels; DeiT's packed q, k, v through ``unbind`` and ``F.scaled_dot_product_attention``; the
TensorFlow ports' ``Conv2dSame`` and MobileViT branching on feature-map sizes; PoolFormer's one-group
``F.group_norm``; NesT's ``int(math.sqrt(T))`` on a size), so these
check the general rules on code nobody wrote for fxprune.

Random weights (``pretrained=False``: nothing is downloaded), BN statistics made non-trivial by
``randomize``, eval mode, ``l1`` at ratio 0.3 on a 1x3x64x64 input. ``strict=True`` where a model has
channel-mixing groups (LayerNorm over channels), so that verify must hold exactly.
"""
import pytest
import torch

import fxprune
from conftest import n_params, prune_and_check, randomize

timm = pytest.importorskip("timm")

# name: the least fraction of its channel groups that must be prunable (the rest: the input, the logits,
# and what a model's own ops tie to them)
MODELS = {
    "resnet26d": 0.9, "efficientnet_b0": 0.9, "mobilenetv3_large_100": 0.9, "regnety_016": 0.9,
    "densenet121": 0.9, "ghostnet_100": 0.9, "rexnet_100": 0.9, "mixnet_s": 0.9, "cspdarknet53": 0.9,
    "dla34": 0.9, "hrnet_w18_small": 0.9, "repvgg_a0": 0.7, "res2net50_26w_4s": 0.9, "fastvit_t8": 0.8,
    "convnext_atto": 0.85, "deit_tiny_patch16_224": 0.9, "tf_efficientnet_b0": 0.9, "mobilevit_xxs": 0.9,
    "poolformer_s12": 0.6, "nest_tiny": 0.9,
}
BUILD = {"deit_tiny_patch16_224": {"img_size": 64}, "nest_tiny": {"img_size": 64}}  # position tables are sized for one input


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODELS))
def test_timm_model_prunes_to_the_masked_original(name):
    model = randomize(timm.create_model(name, pretrained=False, num_classes=10, **BUILD.get(name, {})))
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    analysis = fxprune.analyze(model, x)
    prunable = [g for g in analysis.groups if not g.frozen]
    assert len(prunable) >= MODELS[name] * len(analysis.groups), str(analysis)
    mixing = any(g.mixing for g in prunable)
    small, _ = prune_and_check(model, x, criterion="l1", ratio=0.3, strict=mixing)
    assert n_params(small) < 0.9 * n_params(model)


#: models whose attention groups (mixing: q·k) are pruned by the default prune, with their sizes
#: split into heads, chunked and restored from shapes computed in the graph
ATTENTION = ["maxvit_nano_rw_256", "coatnet_nano_rw_224", "levit_128s"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ATTENTION)
def test_default_prune_of_timm_attention_runs(name):
    """Not strict: the mixing groups are pruned too, so the compact model only approximates the masked
    original; it must still build, run at another batch size and be smaller."""
    model = randomize(timm.create_model(name, pretrained=False, num_classes=10, img_size=64))
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    small = fxprune.prune(model, x, criterion="l1", ratio=0.3)
    assert any(g["mixing"] for g in small.meta["fxprune.plan"].to_dict()["groups"])
    small.graph.lint()
    with torch.no_grad():
        out = small(torch.randn(3, 3, 64, 64))
    assert out.shape == (3, 10) and torch.isfinite(out).all()
    assert n_params(small) < 0.9 * n_params(model)
