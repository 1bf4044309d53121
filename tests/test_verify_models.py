"""Masked-equivalence on real architectures: torchvision models and the bundled seed architectures."""
import pytest
import torch
import torchvision

import fxprune
from fxprune.models import get_model
from conftest import n_params, prune_and_check, randomize

TORCHVISION = ["resnet18", "resnet50", "vgg16_bn", "densenet121", "googlenet", "mobilenet_v2"]
SEEDS = ["resnet20", "resnet56", "hrank_resnet56", "vgg16_bn", "densenet40", "googlenet", "mobilenetv2"]


@pytest.mark.parametrize("ratio", [0.3, 0.6])
@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_l1(name, ratio):
    model = randomize(torchvision.models.get_model(name, weights=None, num_classes=10))
    x = torch.randn(2, 3, 64, 64)
    small, err = prune_and_check(model, x, criterion="l1", ratio=ratio)
    assert n_params(small) < n_params(model) * (1 - ratio / 2)
    assert small(x).shape == (2, 10)


@pytest.mark.parametrize("ratio", [0.3, 0.6])
@pytest.mark.parametrize("name", SEEDS)
def test_seed_architectures_l1(name, ratio):
    model = randomize(get_model(name))
    x = torch.randn(2, 3, 32, 32)
    small, _ = prune_and_check(model, x, criterion="l1", ratio=ratio)
    assert n_params(small) < n_params(model)


@pytest.mark.parametrize("criterion", ["graph", "l1", "l2", "bn", "coring", "taylor", "random"])
def test_every_criterion_prunes_a_bfloat16_model(criterion):
    """Feature maps and weights of a half-precision model reach numpy (which has no bfloat16) as float32; the
    float32 batches of a data loader are run in the model's dtype."""
    model = randomize(get_model("resnet20")).to(torch.bfloat16)
    x = torch.randn(4, 3, 32, 32, dtype=torch.bfloat16)
    budget = {"threshold": 0.7} if criterion == "graph" else {"ratio": 0.3}
    data = [(x.float(), torch.randint(0, 10, (4,)))]
    small, _ = prune_and_check(model, x, criterion=criterion, data=data, **budget)
    assert n_params(small) < n_params(model)
    assert {p.dtype for p in small.parameters()} == {torch.bfloat16}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("criterion", ["graph", "taylor", "l1"])
def test_a_model_on_the_gpu_prunes_with_calibration_batches_on_the_cpu(criterion):
    model = randomize(torchvision.models.resnet18(num_classes=10)).cuda()
    x = torch.randn(4, 3, 64, 64)
    budget = {"threshold": 0.7} if criterion == "graph" else {"ratio": 0.3}
    small = fxprune.prune(model, x, criterion=criterion, data=[(x, torch.randint(0, 10, (4,)))], **budget)
    assert next(small.parameters()).is_cuda and n_params(small) < n_params(model)
    assert fxprune.verify(model, small, x.cuda()) <= 1e-5
    assert fxprune.verify(model, small) <= 1e-5  # default inputs on the model's device


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_vit_on_the_gpu_prunes_its_attention_and_verify_locates_an_error():
    from passes.attention_rules import PrunedMultiheadAttention

    model = randomize(torchvision.models.vit_b_32(image_size=128, num_classes=10)).cuda()
    x = torch.randn(2, 3, 128, 128, device="cuda")
    small = fxprune.prune(model, x, criterion="l1", ratio=0.3)  # its attention modules are sliced on the GPU
    assert any(isinstance(m, PrunedMultiheadAttention) for m in small.modules()) and small(x).shape == (2, 10)
    strict = fxprune.prune(model, x, criterion="l1", ratio=0.3, strict=True)
    assert n_params(strict) < n_params(model) and fxprune.verify(model, strict, x) <= 1e-5
    with torch.no_grad():
        strict.get_submodule("heads.head").bias[0] += 1.0
    with pytest.raises(fxprune.VerificationError, match="heads.head"):
        fxprune.verify(model, strict, x)


def test_seed_l1_single_layer_keeps_largest_filters():
    """Seed 001: an uncoupled layer keeps exactly its int(N*(1-r)) largest-Σ|w| filters."""
    model = randomize(get_model("vgg16_bn"))
    small = fxprune.prune(model, torch.randn(1, 3, 32, 32), criterion="l1", ratio={"features.conv0": 0.5})
    l1 = model.features.conv0.weight.detach().abs().sum((1, 2, 3))
    expected = sorted(torch.argsort(l1, descending=True)[:32].tolist())
    assert small.meta["fxprune.plan"].modules["features.conv0"]["out"] == expected


def test_verify_checks_in_true_float32_and_puts_the_tf32_settings_back():
    """cuDNN convolves float32 in TF32 by default on recent GPUs: ~5e-4 gaps that are no pruning error."""
    model = randomize(get_model("resnet20"))
    x = torch.randn(2, 3, 32, 32)
    small = fxprune.prune(model, x, criterion="l1", ratio=0.3)
    seen = []
    small.register_forward_pre_hook(
        lambda *_: seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)))
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        assert fxprune.verify(model, small, x) <= 1e-5
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (True, True)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    assert seen and set(seen) == {(False, False)}
