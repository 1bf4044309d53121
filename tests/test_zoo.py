"""Every torchvision classification model (``torchvision.models.list_models(module=torchvision.models)``,
80 in torchvision 0.29) prunes: random weights (``weights=None``, see tests/zoo_models.py), eval mode,
``l1`` at ratio 0.3, on the smallest input the architecture accepts.

Per model: the pruned GraphModule lints and runs, its output shape is unchanged and finite, and it has
fewer parameters. Then the masked-original oracle:

* if no pruned group is ``mixing`` (every pruned channel passes only per-channel ops),
  ``fxprune.verify`` must hold (relative error <= 1e-5);
* otherwise (LayerNorm over the channels in ConvNeXt/Swin/ViT/MaxViT, q·k over attention head dims)
  verify cannot hold by construction; the model is pruned again with ``strict=True``, which freezes
  exactly those channels, and that model must still be smaller and pass verify.

Float32 and conditioning: a few deep random networks (EfficientNet-V2-M/L) end in a BatchNorm that
subtracts a large mean from a large activation, where float32 rounding alone reaches ~1e-4 relative
error at the output (the same graphs agree to ~1e-14 in float64). When the float32 check fails, the
same verify is rerun in float64, where it must hold to 1e-9: the compact model is then provably the
masked original, and the float32 gap is the network's conditioning, not the pruning.

Nothing is skipped: every model runs here on CPU. Auxiliary heads (GoogLeNet, Inception v3) exist
only in training mode; the models are traced in eval mode, so the heads are not in the graph and are
not pruned (they are dropped from the compact GraphModule); a train-mode GoogLeNet keeps and prunes
them (the last test).
"""
import copy
import gc

import pytest
import torch
import torchvision

import fxprune
from fxprune import VerificationError
from passes.plan import kept_from_plan
from conftest import n_params
from zoo_models import MODELS, build, example_input, init_random, skip_default_init

RTOL = 1e-5


def verify_model(model, small, x) -> tuple[float, str]:
    """fxprune.verify in float32; on failure, in float64 to 1e-9 (see module doc)."""
    try:
        return fxprune.verify(model, small, x, rtol=RTOL), "float32"
    except VerificationError:
        model64, small64 = copy.deepcopy(model).double(), copy.deepcopy(small).double()
        err = fxprune.verify(model64, small64, x.double(), rtol=1e-9)
        del model64, small64
        return err, "float64"


def pruned_mixing(analysis, small) -> list[int]:
    """The mixing groups of the analyzed model that ``small``'s plan prunes (its plan is detached from its trace)."""
    return [gi for gi in kept_from_plan(analysis, small.meta["fxprune.plan"]) if analysis.groups[gi].mixing]


def test_the_zoo_is_every_classification_model():
    assert MODELS == sorted(torchvision.models.list_models(module=torchvision.models))
    assert len(MODELS) >= 80


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_zoo_model_prunes(name):
    model = build(name)
    x = example_input(name)
    before = n_params(model)
    small = fxprune.prune(model, x, criterion="l1", ratio=0.3)
    small.graph.lint()
    with torch.no_grad():
        y = small(x)
    assert y.shape == (1, 1000) and torch.isfinite(y).all()
    assert n_params(small) < before
    analysis = fxprune.analyze(model, x)
    if not pruned_mixing(analysis, small):
        err, _ = verify_model(model, small, x)
        assert err <= RTOL
        return
    del small
    gc.collect()
    strict = fxprune.prune(model, x, criterion="l1", ratio=0.3, strict=True)
    assert not pruned_mixing(analysis, strict)
    assert n_params(strict) < before
    err, _ = verify_model(model, strict, x)
    assert err <= RTOL


@pytest.mark.parametrize("name", ["googlenet", "inception_v3"])
def test_transform_input_variants(name):
    """transform_input=True: channel-wise ops on the (frozen) input channels keep the rest prunable."""
    with skip_default_init():
        model = torchvision.models.get_model(name, weights=None, transform_input=True, aux_logits=False,
                                             init_weights=False)
    x = example_input(name)
    init_random(model, torch.randn(2, *x.shape[1:]))
    small = fxprune.prune(model, x, criterion="l1", ratio=0.3)
    assert n_params(small) < n_params(model)
    assert verify_model(model, small, x)[0] <= RTOL


def test_a_model_in_training_mode_keeps_its_training_graph():
    """The graph is traced in the mode the model is in: a train-mode GoogLeNet keeps its auxiliary heads
    (pruned with the rest, trainable with their losses) and returns GoogLeNetOutputs in either mode; its
    logits equal the masked original's."""
    with skip_default_init():
        model = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=False)
    x = example_input("googlenet", batch=2)
    init_random(model, x).train()
    small = fxprune.prune(model, x, criterion="l1", ratio=0.3)
    assert small.training and model.training
    pruned = small.meta["fxprune.plan"].modules
    assert any(name.startswith("aux1.") for name in pruned) and any(name.startswith("aux2.") for name in pruned)
    assert n_params(small) < n_params(model)
    assert verify_model(model, small, x)[0] <= RTOL
    out = small(x)  # train mode: the heads' losses reach their weights
    (out.logits.sum() + 0.3 * (out.aux_logits1.sum() + out.aux_logits2.sum())).backward()
    assert small.get_submodule("aux1.fc2").weight.grad is not None
    assert type(small.eval()(x)).__name__ == "GoogLeNetOutputs"
