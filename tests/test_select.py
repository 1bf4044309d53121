"""Budgets: ratio dicts reproduce published pruned architectures; kept counts; round_to; ignore."""
import pytest
import torch

import fxprune
from fxprune.models import get_model
from passes.criteria import graph as graph_criterion
from passes.select import kept_count
from conftest import conv_linear_counts, prune_and_check, randomize

X32 = torch.randn(2, 3, 32, 32)


def _hrank_vgg_config(rates):
    """HRank's VGG list: one rate per conv, 12 given, the 13th conv never pruned (spec §4.6)."""
    convs = [f"features.conv{i}" for i in (0, 1, 3, 4, 6, 7, 8, 10, 11, 12, 14, 15, 16)]
    return dict(zip(convs, rates + [0.0]))


@pytest.mark.parametrize("rates, macs, params", [
    ([0.21] * 7 + [0.75] * 5, 130.57e6, 2.761e6),
    ([0.3] * 7 + [0.75] * 5, 104.24e6, 2.501e6),
    ([0.45] * 7 + [0.78] * 5, 66.52e6, 1.897e6),
])
def test_vgg16_hrank_configs(rates, macs, params):
    model = randomize(get_model("vgg16_bn"))
    small, _ = prune_and_check(model, X32, criterion="l1", ratio=_hrank_vgg_config(rates))
    m, p = conv_linear_counts(small, X32)
    assert abs(m - macs) < 0.005e6 and abs(p - params) < 0.0005e6, (m, p)


def test_densenet40_config():
    """[0.]+[0.2]*12+[0.]+[0.2]*12+[0.]+[0.2]*12: every dense layer keeps 9 of its 12 new channels, and
    (HRank's rule) a transition with rate 0 outputs as many channels as its pruned input has."""
    model = randomize(get_model("densenet40"))
    trans1_in, trans2_in = 24 + 12 * 9, 24 + 12 * 9 + 12 * 9
    cfg = {"dense*.conv1": 0.2, "trans1.conv1": 1 - (trans1_in + 0.5) / 168, "trans2.conv1": 1 - (trans2_in + 0.5) / 312}
    small, _ = prune_and_check(model, X32, criterion="l1", ratio=cfg)
    m, p = conv_linear_counts(small, X32)
    assert abs(m - 169.58e6) < 0.005e6 and abs(p - 0.608e6) < 0.0005e6, (m, p)


def test_googlenet_config():
    """[0.3]+[0.6]*2+[0.7]*5+[0.8]*2: each inception's 3x3 output and both '5x5' convs; b5 only the middle one."""
    rates = [0.6] * 2 + [0.7] * 5 + [0.8] * 2
    names = ["a3", "b3", "a4", "b4", "c4", "d4", "e4", "a5", "b5"]
    cfg = {}
    for name, r in zip(names, rates):
        convs = ["branch5x5.3"] if name == "b5" else ["branch3x3.3", "branch5x5.3", "branch5x5.6"]
        cfg.update({f"{name}.{c}": r for c in convs})
    model = randomize(get_model("googlenet"))
    small, _ = prune_and_check(model, X32, criterion="l1", ratio=cfg)
    m, p = conv_linear_counts(small, X32)
    macs_no_bias = m  # the hand counter counts no bias adds
    assert abs(macs_no_bias - 643.80e6) < 0.01e6 and abs(p - 2.847e6) < 0.001e6, (m, p)


def test_mobilenetv2_config():
    """[0.]+[0.1]+[0.25]*2+[0.25]*2+[0.3]*2 on stage outputs; each expansion follows t x its pruned input."""
    model = randomize(get_model("mobilenetv2"))
    rows = [(1, 16, 1), (6, 24, 2), (6, 32, 3), (6, 64, 4), (6, 96, 3), (6, 160, 3), (6, 320, 1)]
    rates = [0.1, 0.25, 0.25, 0.25, 0.25, 0.3, 0.3]
    cfg, block, prev, prev_kept = {}, 1, 32, 32
    for (t, c, n), r in zip(rows, rates):
        kept = int(c * (1 - r))
        for i in range(n):
            cfg["features.%d.conv.%d" % (block, 3 if t == 1 else 6)] = r
            if t != 1:
                c_orig, c_kept = (prev, prev_kept) if i == 0 else (c, kept)
                cfg[f"features.{block}.conv.0"] = max(0.0, 1 - (t * c_kept + 0.5) / (t * c_orig))
            block += 1
        prev, prev_kept = c, kept
    small, _ = prune_and_check(model, X32, criterion="l1", ratio=cfg)
    m, p = conv_linear_counts(small, X32)
    assert abs(m - 51.45e6) < 0.01e6 and abs(p - 1.232e6) < 0.001e6, (m, p)


def test_resnet56_l1_pruned_a():
    """Li et al.'s ResNet-56-A: conv1 of every block by 10% except layer1.7, layer2.0, layer3.0, layer3.8."""
    model = randomize(get_model("hrank_resnet56"))
    skip = {"layer1.7", "layer2.0", "layer3.0", "layer3.8"}
    cfg = {f"layer{s}.{b}.conv1": 0.0 if f"layer{s}.{b}" in skip else 0.1 for s in (1, 2, 3) for b in range(9)}
    small, _ = prune_and_check(model, X32, criterion="l1", ratio=cfg)
    m, p = conv_linear_counts(small, X32)
    # hand count: stage widths 16/32/64, inner widths int(0.9 c) = 14/28/57 where pruned
    expected = 16 * 3 * 9 * 32 * 32 + 64 * 10
    for s, (c, hw) in enumerate([(16, 32 * 32), (32, 16 * 16), (64, 8 * 8)], start=1):
        for b in range(9):
            inner = c if f"layer{s}.{b}" in skip else int(c * 0.9)
            c_in = c // 2 if b == 0 and s > 1 else c
            expected += (c_in * inner + inner * c) * 9 * hw
    assert m == expected
    reduction = 1 - m / 125.49e6
    assert reduction == pytest.approx(0.104, abs=0.01)  # Li et al. report 10.4% fewer FLOPs


def test_resnet56_rgd_block_inner_widths():
    model = randomize(get_model("resnet56"))
    small, _ = prune_and_check(model, X32, criterion="l1", ratio={"layer*.conv1": 0.5})
    assert all(small.get_submodule(f"layer{s}.{b}.conv1").out_channels == 8 * 2 ** (s - 1)
               for s in (1, 2, 3) for b in range(9))


def test_kept_count_rule():
    assert kept_count(64, 0.3) == 44 and kept_count(12, 0.2) == 9 and kept_count(3, 0.99) == 1
    assert kept_count(64, 0.3, round_to=8) == 48 and kept_count(10, 0.5, round_to=16) == 10


def test_round_to_and_ignore():
    model = randomize(get_model("resnet20"))
    small, _ = prune_and_check(model, X32, criterion="l1", ratio=0.5, round_to=4, ignore=["layer3.*"])
    for name, mod in small.named_modules():
        if isinstance(mod, torch.nn.Conv2d) and name.startswith(("layer1", "layer2")):
            assert mod.out_channels % 4 == 0
        if name.startswith("layer3") and isinstance(mod, torch.nn.Conv2d):
            assert mod.weight.shape == model.get_submodule(name).weight.shape


def test_conflicting_ratio_keys_name_both():
    model = get_model("resnet20")
    with pytest.raises(fxprune.PlanError, match=r"layer1\.0\.conv2.*layer1\.1\.conv2|layer1\.1\.conv2.*layer1\.0\.conv2"):
        fxprune.plan(model, X32, criterion="l1", ratio={"layer1.0.conv2": 0.3, "layer1.1.conv2": 0.5})


def test_unmatched_modules_are_not_pruned():
    model = randomize(get_model("resnet20"))
    plan = fxprune.plan(model, X32, criterion="l1", ratio={"layer2.1.conv1": 0.5})
    assert set(plan.modules) == {"layer2.1.conv1", "layer2.1.bn1", "layer2.1.conv2"}


def test_round_to_counts_channels_not_conv_groups():
    """A grouped conv's class holds several channels (a whole group of 16, or one position in each of 2-10
    groups): round_to=8 counts channels, not classes."""
    import torchvision

    model = randomize(torchvision.models.regnet_x_400mf())
    x = torch.randn(1, 3, 64, 64)
    small, _ = prune_and_check(model, x, criterion="l1", ratio=0.5, round_to=8)
    grouped = [m for m in small.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    original = {m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1}
    assert grouped and all(m.out_channels % 8 == 0 for m in grouped)
    assert all(m.out_channels < max(original) for m in grouped if m.out_channels >= 8)
    assert sum(m.out_channels for m in grouped) < 0.6 * sum(
        m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1)


class ReadsTwoGroups(torch.nn.Module):
    """conv ``c`` reads one channel of each of two independent groups (a and b)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(3, 4, 3)
        self.c, self.head = torch.nn.Conv2d(2, 4, 1), torch.nn.Linear(12, 5)

    def forward(self, x):
        a, b = self.a(x), self.b(x)
        y = self.c(torch.cat([a[:, :1], b[:, :1]], 1))
        return self.head(torch.cat([t.mean((2, 3)) for t in (a, b, y)], 1))


@pytest.mark.parametrize("budget", [{"ratio": 0.5}, {"ratio": 0.5, "global_ratio": True}])
def test_a_layer_reading_several_groups_keeps_a_channel_when_each_group_drops_its_part(budget):
    model = randomize(ReadsTwoGroups())
    with torch.no_grad():  # the channel each group gives c is its weakest
        model.a.weight[0].mul_(0.01)
        model.b.weight[0].mul_(0.02)
    x = torch.randn(2, 3, 8, 8)
    small, _ = prune_and_check(model, x, criterion="l1", **budget)
    assert small.c.in_channels >= 1
    if not budget.get("global_ratio"):  # each group keeps 2 of 4; each range a[:, :1], b[:, :1] gets its channel back
        assert (small.a.out_channels, small.b.out_channels, small.c.in_channels) == (3, 3, 2)


class _RangeReader(torch.nn.Module):
    """conv a (16 channels) feeds a head and, through the range a[:, 0:2], a second conv."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.d = torch.nn.Conv2d(2, 4, 1)
        self.head = torch.nn.Linear(20, 5)
        with torch.no_grad():
            self.a.weight[:2] *= 1e-3  # the range's two channels score lowest

    def forward(self, x):
        y = self.a(x)
        return self.head(torch.cat([self.d(y[:, 0:2]), y], dim=1).mean((2, 3)))


def test_round_to_holds_after_a_range_gets_a_channel_back():
    """ratio 0.5, round_to=4: the range's channels both go, one comes back (9 kept); rounding makes it 12."""
    model = _RangeReader()
    small, _ = prune_and_check(model, X32, criterion="l1", ratio={"a": 0.5}, round_to=4)
    kept = small.meta["fxprune.plan"].modules["a"]["out"]
    assert len(kept) == 12 and small.d.in_channels >= 1


def test_round_to_applies_to_threshold_decisions():
    """The graph criterion decides its kept counts by threshold; round_to still rounds them."""
    model = randomize(get_model("resnet20"))
    small, _ = prune_and_check(model, X32, criterion="graph", threshold=0.5, round_to=4, data=[(X32,)])
    pruned = [m for n, m in small.named_modules() if isinstance(m, torch.nn.Conv2d)
              and m.out_channels != model.get_submodule(n).out_channels]
    assert pruned and all(m.out_channels % 4 == 0 for m in pruned)


def test_rounding_a_threshold_decision_decomposes_each_group_once(monkeypatch):
    """round_to asks the graph criterion to decide and then to score each group: one decomposition serves both."""
    calls = []
    real = graph_criterion.monotone_keep
    monkeypatch.setattr(graph_criterion, "monotone_keep", lambda *a: calls.append(1) or real(*a))
    model = randomize(get_model("resnet20"))
    plan = fxprune.plan(model, X32, criterion="graph", threshold=0.5, round_to=4, data=[(X32,)])
    assert len(calls) == len(plan.groups) > 0


class _GroupedAfterStem(torch.nn.Module):
    """A grouped conv (2 inputs, 1 output per group) shares a class with two stem channels: the stem writes
    2 channels per class, the grouped conv 1."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.g = torch.nn.Conv2d(8, 4, 3, padding=1, groups=4)
        self.head = torch.nn.Linear(12, 6)

    def forward(self, x):
        s = self.stem(x)
        return self.head(torch.cat([s.mean((2, 3)), self.g(s).mean((2, 3))], 1))


def test_round_to_holds_for_every_producer_of_a_group():
    small, _ = prune_and_check(_GroupedAfterStem(), X32, criterion="l1", ratio=0.6, round_to=2)
    assert small.stem.out_channels % 2 == 0 and small.g.out_channels % 2 == 0
    assert small.g.out_channels < 4
