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


def test_seed_l1_single_layer_keeps_largest_filters():
    """Seed 001: an uncoupled layer keeps exactly its int(N*(1-r)) largest-Σ|w| filters."""
    model = randomize(get_model("vgg16_bn"))
    small = fxprune.prune(model, torch.randn(1, 3, 32, 32), criterion="l1", ratio={"features.conv0": 0.5})
    l1 = model.features.conv0.weight.detach().abs().sum((1, 2, 3))
    expected = sorted(torch.argsort(l1, descending=True)[:32].tolist())
    assert small.meta["fxprune.plan"].modules["features.conv0"]["out"] == expected
