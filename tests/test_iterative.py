"""Iterative pruning: steps towards a budget stated against the original model, re-scored on the current
weights, with one plan relative to the original at the end."""
import pytest
import torch
from torch import nn

import fxprune
from fxprune.models import get_model
from passes.budget import conv_linear_macs
from conftest import n_params, randomize

X = torch.randn(2, 3, 32, 32)


@pytest.fixture(scope="module")
def model():
    return randomize(get_model("resnet20")).eval()


def _widths(m):
    return {name: mod.out_channels for name, mod in m.named_modules() if isinstance(mod, nn.Conv2d)}


def test_steps_reach_the_one_shot_widths_and_the_composed_plan_is_the_originals(model):
    seen = []
    small = fxprune.prune_iteratively(model, X, steps=3, ratio=0.5,
                                      finetune=lambda compact, step: seen.append((step, n_params(compact))))
    assert [s for s, _ in seen] == [1, 2, 3] and seen[0][1] > seen[1][1] > seen[2][1] == n_params(small)
    assert _widths(small) == _widths(fxprune.prune(model, X, criterion="l1", ratio=0.5))
    assert len(small.meta["fxprune.steps"]) == 3
    assert fxprune.verify(model, small, X) <= 1e-5  # the composed plan indexes the original's channels
    rebuilt = fxprune.apply(model, small.meta["fxprune.plan"].to_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt(X), small(X))


def test_a_ratio_dict_reaches_the_one_shot_widths_group_by_group(model):
    """Per-layer ratios (a sensitivity scan's, a paper's config): each group's own ratio, in steps."""
    ratios = {"layer1.*.conv1": 0.5, "layer3.*.conv1": 0.75, "layer2.0.conv2": 0.25}
    small = fxprune.prune_iteratively(model, X, ratio=ratios, steps=2)
    assert _widths(small) == _widths(fxprune.prune(model, X, criterion="l1", ratio=ratios))
    assert _widths(small) != _widths(model) and fxprune.verify(model, small, X) <= 1e-5


def test_later_steps_score_the_weights_fine_tuning_left(model):
    """A step scores the current weights: filters the 'fine-tuning' zeroed go next."""
    layer = "layer1.0.conv1"  # its output channels are its own group (conv1 -> bn1 -> relu1 -> conv2)

    def zero_two_filters(compact, step):
        if step == 1:
            with torch.no_grad():
                compact.get_submodule(layer).weight[[1, 4]] = 0.0

    small = fxprune.prune_iteratively(model, X, ratio=[0.25, 0.5], finetune=zero_two_filters)
    first, second = small.meta["fxprune.steps"]
    dropped = set(range(len(first.modules[layer]["out"]))) - set(second.modules[layer]["out"])
    assert {1, 4} <= dropped


def test_a_flops_budget_in_steps_lands_on_the_original_target(model):
    small = fxprune.prune_iteratively(model, X, flops_reduction=[0.3, 0.5])
    before = conv_linear_macs(fxprune.analyze(model, X), {})
    after = conv_linear_macs(fxprune.analyze(small, X), {})
    assert abs((1 - after / before) - 0.5) <= 0.02
    assert fxprune.verify(model, small, X) <= 1e-5


@pytest.mark.parametrize("kwargs, message", [
    ({"steps": 2}, "give one budget"),
    ({"steps": 2, "ratio": 0.5, "flops_reduction": 0.5}, "give one budget"),
    ({"ratio": 0.5}, "steps must be a positive int"),
    ({"steps": 0, "ratio": 0.5}, "steps must be a positive int"),
    ({"ratio": [0.3, 0.2]}, "increasing"),
    ({"steps": 3, "ratio": [0.2, 0.4]}, "steps=3 but 2"),
    ({"steps": 2, "flops_reduction": {"conv1": 0.5}}, "not a dict"),
    ({"steps": 2, "ratio": {"no_such_layer": 0.5}}, "matches no module"),
    ({"steps": 2, "flops_reduction": 1.5}, "flops_reduction must be a fraction"),
    ({"steps": 2, "ratio": 1.0}, "ratio"),
])
def test_bad_budgets_are_named(model, kwargs, message):
    with pytest.raises(fxprune.PlanError, match=message):
        fxprune.prune_iteratively(model, X, **kwargs)
