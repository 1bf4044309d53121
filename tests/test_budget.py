"""Network-wide budgets: FLOPs targets and global ranking (passes/budget.py)."""
import numpy as np
import pytest
import torch
import torchvision

import fxprune
from fxprune.models import get_model
from fxprune.report import count
from passes.budget import conv_linear_macs
from conftest import conv_linear_counts, prune_and_check, randomize


def test_flops_reduction_half_on_resnet50():
    model = randomize(torchvision.models.resnet50())
    x = torch.randn(1, 3, 224, 224)
    small, _ = prune_and_check(model, x, criterion="l1", flops_reduction=0.5)
    before, after = count(model, x).macs_conv_linear, count(small, x).macs_conv_linear
    assert 0.48 <= 1 - after / before <= 0.52


@pytest.mark.parametrize("criterion", ["l1", "graph"])
def test_flops_reduction_global_on_seed_resnet(criterion):
    model = randomize(get_model("resnet56"))
    x = torch.randn(2, 3, 32, 32)
    small, _ = prune_and_check(model, x, criterion=criterion, flops_reduction=0.3, global_ratio=True)
    before, after = conv_linear_counts(model, x)[0], conv_linear_counts(small, x)[0]
    assert 0.28 <= 1 - after / before <= 0.32


def test_analytic_macs_match_a_hand_count():
    model = randomize(get_model("resnet20"))
    x = torch.randn(1, 3, 32, 32)
    analysis = fxprune.analyze(model, x)
    assert conv_linear_macs(analysis, {}) == conv_linear_counts(model, x)[0]
    small = fxprune.prune(model, x, criterion="l1", ratio=0.4)
    plan = fxprune.plan(model, x, criterion="l1", ratio=0.4)
    from passes.plan import kept_from_plan

    assert conv_linear_macs(analysis, kept_from_plan(analysis, plan)) == conv_linear_counts(small, x)[0]


@pytest.mark.parametrize("kind, rnn_args", [("LSTM", {"num_layers": 2, "bidirectional": True}), ("GRU", {})])
def test_a_recurrent_layer_counts_in_the_flops_budget(kind, rnn_args):
    """A CRNN's recurrent gates are in the analytic count as fxprune.report counts them, so a FLOPs target
    is met as the report measures it."""
    from test_op_rules import CRNN

    _check_analytic_macs(randomize(CRNN(kind, **rnn_args)), torch.randn(1, 1, 16, 24))


def test_attention_counts_in_the_flops_budget():
    """nn.MultiheadAttention's projections and products are in the analytic count as report counts them
    (a ViT's FLOPs target would otherwise land 5 points short)."""
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                               hidden_dim=16, mlp_dim=32, num_classes=10)
    _check_analytic_macs(randomize(vit), torch.randn(1, 3, 32, 32))


def _check_analytic_macs(model, x):
    from passes.plan import kept_from_plan

    analysis = fxprune.analyze(model, x)
    assert conv_linear_macs(analysis, {}) == count(model, x).macs_conv_linear
    plan = fxprune.plan(model, x, criterion="l1", ratio=0.5)
    small = fxprune.apply(model, plan)
    assert count(small, x).params < count(model, x).params
    assert conv_linear_macs(analysis, kept_from_plan(analysis, plan)) == count(small, x).macs_conv_linear


def test_global_ratio_prunes_unevenly_but_keeps_every_group_alive():
    model = randomize(get_model("vgg16_bn"))
    with torch.no_grad():  # one layer where all but 10 filters are nearly dead
        model.features.conv3.weight[10:].mul_(0.01)
    x = torch.randn(1, 3, 32, 32)
    small, _ = prune_and_check(model, x, criterion="l1", ratio=0.3, global_ratio=True)
    widths = {n: m.out_channels for n, m in small.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert min(widths.values()) >= 1
    assert widths["features.conv3"] <= 12  # its near-dead filters rank lowest network-wide
    assert widths["features.conv1"] > 64 * 0.5


@pytest.mark.parametrize("kwargs, message", [
    ({"flops_reduction": 1.2}, "flops_reduction must be a fraction"),
    ({"flops_reduction": 0.5, "ratio": 0.3}, "either ratio= or flops_reduction="),
    ({"global_ratio": True, "ratio": {"conv1": 0.3}}, "single float"),
    ({"global_ratio": True, "ratio": 1.5}, r"must be a number in \[0, 1\)"),
])
def test_budget_errors(kwargs, message):
    with pytest.raises(fxprune.PlanError, match=message):
        fxprune.plan(get_model("resnet20"), torch.randn(1, 3, 32, 32), criterion="l1", **kwargs)


def test_an_unreachable_flops_target_says_why():
    # two convs of 4 channels: each kept channel more or less moves the MACs by a large step
    model = randomize(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3)))
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(fxprune.PlanError, match=r"the channel counts step from \d+\.\d% to \d+\.\d%"):
        fxprune.plan(model, x, criterion="l1", flops_reduction=0.4)
    # the last conv's output is the model's: only the first conv's 4 channels can go
    with pytest.raises(fxprune.PlanError, match=r"one channel removes \d+\.\d%; unfreeze groups"):
        fxprune.plan(model, x, criterion="l1", flops_reduction=0.9)


class _DroppedPiece(torch.nn.Module):
    """A split whose one-channel piece is discarded: when the kept piece loses all, the keep-alive pass
    gives it a channel back after the budget chose the kept sets."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.conv = torch.nn.Conv2d(8, 15, 3, padding=1)
        self.dense = torch.nn.Linear(8 * 8 * 8, 16)
        self.head = torch.nn.Linear(8 + 14 + 16, 6)

    def forward(self, x):
        s = self.stem(x)
        piece = torch.split(self.conv(s), [1, 14], 1)[1]
        return self.head(torch.cat([s.mean((2, 3)), piece.mean((2, 3)), self.dense(s.flatten(1))], 1))


@pytest.mark.parametrize("target", [0.3, 0.415, 0.5])
def test_flops_target_is_measured_after_the_keep_alive_pass(target):
    """The MACs of the plan returned land within 2% (they were measured before channels came back)."""
    torch.manual_seed(0)
    net, x = _DroppedPiece().eval(), torch.randn(2, 3, 8, 8)
    plan = fxprune.plan(net, x, criterion="random", flops_reduction=target, global_ratio=True)
    reduction = 1 - conv_linear_macs(plan.analysis, plan.kept) / conv_linear_macs(plan.analysis, {})
    assert abs(reduction - target) <= 0.02, reduction
