"""Grouped (not depthwise) convs: pruned by whole groups, or by the same positions within every group.

``grouped_convs="whole"`` removes conv groups (a group's inputs and outputs are one class), ``"within"``
keeps every group and removes the same positions in each (inputs and outputs apart, as Torch-Pruning
does; ``tests/test_tp_crosscheck.py`` compares that mode with it on regnet_y_400mf), ``"auto"`` picks per
conv whichever offers more classes. "whole" is the default (``bench/grouped_convs.py``).
"""
from __future__ import annotations

import json

import pytest
import torch
import torchvision
from torch import nn

import fxprune
from passes.errors import PlanError
from passes.op_rules import grouped_conv_mode

torch.manual_seed(0)
X = torch.randn(2, 3, 64, 64)


def _randomized(model: nn.Module) -> nn.Module:
    """Random BatchNorm statistics and affine terms, so a wrongly sliced norm shows in the outputs."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def regnet():
    torch.manual_seed(0)
    return _randomized(torchvision.models.regnet_x_400mf())


def _grouped(model: nn.Module) -> dict[str, nn.Conv2d]:
    return {n: m for n, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and 1 < m.groups < m.in_channels}


def test_auto_rule():
    assert grouped_conv_mode("auto", 2, 32, 32) == "within"  # 2 groups of 16
    assert grouped_conv_mode("auto", 32, 128, 128) == "whole"  # ResNeXt: 32 groups of 4
    assert grouped_conv_mode("auto", 16, 256, 256) == "whole"  # 16 groups of 16: as many either way
    assert grouped_conv_mode("auto", 4, 64, 8) == "whole"  # outputs: 4 groups of 2
    assert grouped_conv_mode("whole", 2, 32, 32) == "whole"
    assert grouped_conv_mode("within", 32, 128, 128) == "within"
    assert grouped_conv_mode("within", 32, 32, 64) == "whole"  # depthwise (x2): one position is the layer


def test_depthwise_stays_whole_when_within_is_asked():
    model = torchvision.models.mobilenet_v2().eval()
    analysis = fxprune.analyze(model, X, grouped_convs="within")
    assert analysis.grouped_modes and set(analysis.grouped_modes.values()) == {"whole"}
    small = fxprune.prune(model, X, criterion="l1", ratio=0.3, grouped_convs="within")
    assert fxprune.verify(model, small, X) <= 1e-5
    assert small.get_submodule("features.2.conv.1.0").out_channels < 96


@pytest.mark.parametrize("mode", ["whole", "within", "auto"])
def test_modes_verify_and_keep_their_shape(regnet, mode):
    small = fxprune.prune(regnet, X, criterion="l1", ratio=0.3, grouped_convs=mode)
    assert fxprune.verify(regnet, small, X) <= 1e-5
    chosen = fxprune.analyze(regnet, X, grouped_convs=mode).grouped_modes
    before, after = _grouped(regnet), dict(small.named_modules())
    assert set(chosen) == set(before)
    for name, conv in before.items():
        new = after[name]
        rule = grouped_conv_mode(mode, conv.groups, conv.in_channels, conv.out_channels)
        assert chosen[name] == rule
        if rule == "within":  # every group stays, narrower
            assert new.groups == conv.groups and new.in_channels < conv.in_channels
        else:  # fewer groups, each as wide as before
            assert new.groups < conv.groups
            assert new.in_channels // new.groups == conv.in_channels // conv.groups
    if mode == "auto":  # regnet_x_400mf: 2, 4 and 10 groups of 16 within, 25 groups of 16 whole
        assert set(chosen.values()) == {"whole", "within"}
    within = sum(m == "within" for m in chosen.values())
    assert f"grouped convs: {len(chosen) - within} lose whole groups, {within} the same positions" in str(
        fxprune.analyze(regnet, X, grouped_convs=mode))


def test_within_slices_the_same_positions_of_every_group(regnet):
    """The weights are the original's: per output row, its group's kept inputs (the plan's "in" indexes
    the conv's full input channels)."""
    small = fxprune.prune(regnet, X, criterion="l1", ratio=0.3, grouped_convs="within")
    modules = small.meta["fxprune.plan"].to_dict()["modules"]
    after = dict(small.named_modules())
    checked = 0
    for name, conv in _grouped(regnet).items():
        io = modules[name]
        keep_in, keep_out = torch.tensor(io["in"]), torch.tensor(io["out"])
        per_group_in, per_group_out = conv.in_channels // conv.groups, conv.out_channels // conv.groups
        local = [keep_in[(keep_in // per_group_in) == g] % per_group_in for g in range(conv.groups)]
        assert all(torch.equal(p, local[0]) for p in local)
        rows = [conv.weight[o, local[int(o) // per_group_out]] for o in keep_out]
        assert torch.equal(after[name].weight, torch.stack(rows))
        checked += 1
    assert checked == len(_grouped(regnet))


def test_plan_round_trip_and_old_plans(regnet):
    """A plan records its mode, so apply re-analyzes alike; a plan without one (written before the option)
    was made by whole groups."""
    p = fxprune.plan(regnet, X, criterion="l1", ratio=0.3, grouped_convs="within")
    again = fxprune.apply(regnet, json.loads(json.dumps(p.to_dict())))
    small = fxprune.apply(regnet, p)
    assert torch.allclose(again(X), small(X), atol=1e-6)

    old = fxprune.plan(regnet, X, criterion="l1", ratio=0.3, grouped_convs="whole").to_dict()
    del old["options"]["grouped_convs"]
    assert fxprune.verify(regnet, fxprune.apply(regnet, old), X) <= 1e-5


def test_per_conv_modes_and_bad_values(regnet):
    names = list(_grouped(regnet))
    asked = {names[0]: "whole", names[-1]: "within"}
    a = fxprune.analyze(regnet, X, grouped_convs=asked)
    assert a.grouped_modes[names[0]] == "whole" and a.grouped_modes[names[-1]] == "within"
    assert a.grouped_modes[names[1]] == "whole"  # not named: the default
    with pytest.raises(PlanError, match="grouped_convs must be one of"):
        fxprune.analyze(regnet, X, grouped_convs="channels")
    with pytest.raises(PlanError, match="'stem.0'"):
        fxprune.analyze(regnet, X, grouped_convs={"stem.0": "within"})


def test_iterative_keeps_each_convs_mode(regnet):
    """auto decides on the original: a within-pruned conv narrower than its group count stays within."""
    small = fxprune.prune_iteratively(regnet, X, steps=3, ratio=0.6, criterion="l1", grouped_convs="auto")
    one_shot = fxprune.prune(regnet, X, criterion="l1", ratio=0.6, grouped_convs="auto")
    assert fxprune.verify(regnet, small, X) <= 1e-5
    widths = {n: (m.groups, m.in_channels) for n, m in _grouped(one_shot).items()}
    assert {n: (m.groups, m.in_channels) for n, m in dict(small.named_modules()).items() if n in widths} == widths


def test_resnext_within():
    torch.manual_seed(1)
    model = _randomized(torchvision.models.resnext50_32x4d())
    small = fxprune.prune(model, X, criterion="l1", ratio=0.5, grouped_convs="within")
    assert fxprune.verify(model, small, X) <= 1e-5
    assert {m.in_channels // m.groups for m in _grouped(small).values()} == {2, 4, 8, 16}
