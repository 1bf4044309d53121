"""Branches on shapes, and numbers computed from shapes (passes/branches.py): traced the way the example
input goes, guarded in the graph.

Also the layers such models are made of: a conv subclass that pads itself and calls ``F.conv2d`` (timm's
``Conv2dSame``), a linear subclass that calls ``F.linear``.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxprune
from conftest import n_params, prune_and_check, randomize


class _PadToEven(nn.Module):
    """Pads odd feature maps to an even size: a branch on a spatial size."""

    def __init__(self):
        super().__init__()
        self.c1, self.bn, self.c2 = nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.Conv2d(16, 8, 3)

    def forward(self, x):
        x = torch.relu(self.bn(self.c1(x)))
        if x.shape[-1] % 2:
            x = F.pad(x, (0, 1, 0, 1))
        return self.c2(x)


def test_a_branch_on_a_spatial_size_follows_the_example_and_prunes():
    model = randomize(_PadToEven())
    x = torch.randn(2, 3, 33, 33)  # 31x31 after c1: the pad branch
    small, _ = prune_and_check(model, x, criterion="l1", ratio=0.5)
    assert small.c1.out_channels == 8
    assert small(x).shape == model(x).shape == (2, 8, 30, 30)


def test_an_input_that_takes_the_other_branch_is_stopped_by_the_guard():
    model = randomize(_PadToEven())
    small = fxprune.prune(model, torch.randn(1, 3, 33, 33), criterion="l1", ratio=0.5)
    small(torch.randn(4, 3, 33, 33))  # another batch size takes the same branch
    with pytest.raises(AssertionError, match=r"another branch at .*test_branches\.py:\d+ \(`if x\.shape\[-1\] % 2:`\)"):
        small(torch.randn(1, 3, 34, 34))


class _ChannelCheck(nn.Module):
    """Doubles its features when there are 16 of them: a branch on a channel count."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 16, 3), nn.Conv2d(16, 12, 3), nn.Conv2d(12, 4, 1)

    def forward(self, x):
        x = self.c1(x)
        if x.size(1) == 16:
            x = x * 2
        return self.c3(torch.relu(self.c2(x)))


def test_a_branch_on_a_channel_count_freezes_those_channels_only():
    model = randomize(_ChannelCheck())
    x = torch.randn(1, 3, 16, 16)
    analysis = fxprune.analyze(model, x)
    guarded = next(g for g in analysis.groups if ("c1", "out") in g.members)
    assert guarded.frozen and any("branch taken or a number fixed while tracing" in str(r) for r in guarded.reasons)
    small, _ = prune_and_check(model, x, criterion="l1", ratio=0.5)
    assert small.c1.out_channels == 16 and small.c2.out_channels == 6


class _BranchOnDevice(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        x = self.conv(x)
        if x.device.type != "cpu":
            x = x.float()
        return x


def test_a_branch_on_the_device_is_refused_with_the_reason():
    with pytest.raises(fxprune.UntraceableModelError, match="depends on a tensor's device"):
        fxprune.prune(_BranchOnDevice(), torch.randn(1, 3, 8, 8), criterion="l1", ratio=0.5)


class _TokensToGrid(nn.Module):
    """Folds a token sequence back into a square grid, its side computed with ``int(math.sqrt(T))``
    (timm's NesT), and scales by one over the channel count with ``float``."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 12, 1), nn.Conv2d(12, 4, 1)

    def forward(self, x):
        tokens = self.c1(x).flatten(2)  # B, C, T
        side = int(math.sqrt(tokens.shape[-1]))
        x = torch.relu(tokens.reshape(tokens.shape[0], tokens.shape[1], side, side))
        x = self.c2(x)
        x = x / float(x.size(1))
        return self.c3(torch.relu(x))


def test_int_and_float_of_sizes_take_the_example_number_and_guard_it():
    model = randomize(_TokensToGrid())
    x = torch.randn(2, 3, 8, 8)
    analysis = fxprune.analyze(model, x)
    scaled = next(g for g in analysis.groups if ("c2", "out") in g.members)
    assert scaled.frozen and any("number fixed while tracing" in str(r) for r in scaled.reasons)  # float(C) reads c2's count
    small, _ = prune_and_check(model, x, criterion="l1", ratio=0.5)
    assert small.c1.out_channels == 8 and small.c2.out_channels == 12
    small(torch.randn(3, 3, 8, 8))  # another batch size gives the same side
    with pytest.raises(AssertionError, match=r"gives another number at .*test_branches\.py:\d+ .*\(8\)"):
        small(torch.randn(1, 3, 9, 9))


def test_int_of_a_tensor_value_stays_untraceable():
    class ValueCount(nn.Module):
        def forward(self, x):
            return x[:, : int(x.sum())]

    with pytest.raises(fxprune.UntraceableModelError, match="tensor values"):
        fxprune.analyze(ValueCount(), torch.randn(1, 3, 8, 8))


class _SameConv(nn.Conv2d):
    """TensorFlow's 'SAME' padding worked out per input, as timm's Conv2dSame does: max() and
    math.ceil on sizes, a branch, then ``F.conv2d`` on the layer's own parameters."""

    def forward(self, x):
        pads = []
        for size, k, s in zip(x.shape[-2:], self.kernel_size, self.stride):
            pads.append(max((math.ceil(size / s) - 1) * s + k - size, 0))
        pad_h, pad_w = pads
        if pad_h > 0 or pad_w > 0:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class _Head(nn.Linear):
    """A linear layer with its own forward (timm's Linear): traced through, to ``F.linear``."""

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class _SameNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.bn1 = _SameConv(3, 16, 3, stride=2), nn.BatchNorm2d(16)
        self.dw, self.bn2 = _SameConv(16, 16, 3, groups=16, bias=False), nn.BatchNorm2d(16)
        self.pw, self.bn3 = _SameConv(16, 24, 1), nn.BatchNorm2d(24)
        self.fc1, self.fc2 = _Head(24, 32), _Head(32, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.stem(x)))
        x = torch.relu(self.bn2(self.dw(x)))
        x = torch.relu(self.bn3(self.pw(x))).mean((2, 3))
        return self.fc2(torch.relu(self.fc1(x)))


def test_same_padding_convs_and_functional_linears_are_pruned_like_their_layers():
    model = randomize(_SameNet())
    x = torch.randn(2, 3, 15, 15)
    analysis = fxprune.analyze(model, x)
    assert {n for g in analysis.groups if not g.frozen for n, _ in g.members} >= {"stem", "dw", "pw", "fc1"}
    small, _ = prune_and_check(model, x, criterion="l1", ratio=0.5)
    # the depthwise conv lost whole groups: its weight keeps one input channel per group
    assert small.dw.weight.shape == (8, 1, 3, 3) and small.pw.weight.shape == (12, 8, 1, 1)
    assert small.fc1.weight.shape == (16, 12) and small.fc2.weight.shape == (10, 16)
    assert n_params(small) < 0.5 * n_params(model)


def test_a_guarded_graph_exports(tmp_path):
    model = randomize(_SameNet())
    x = torch.randn(1, 3, 15, 15)
    small = fxprune.prune(model, x, criterion="l1", ratio=0.5)
    path = fxprune.export(small, tmp_path / "small.pt", format="torchscript", example_inputs=x)
    loaded = torch.jit.load(str(path))
    assert torch.allclose(loaded(x), small(x), atol=1e-6)
