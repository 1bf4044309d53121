"""Property: plan -> apply -> verify holds on randomly generated networks.

``FXPRUNE_FUZZ_EXAMPLES=2000`` runs a longer search than CI's.
"""
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from conftest import fuzz_examples, prune_and_check, randomize, rejecting_vacuous_examples

BLOCKS = ["conv", "grouped", "depthwise", "bn", "relu", "add", "cat", "pad", "pool", "se"]


class RandomNet(nn.Module):
    """A chain of blocks drawn by hypothesis, ending in pool -> flatten -> linear -> linear."""

    def __init__(self, blocks, widths):
        super().__init__()
        self.kinds = []
        self.layers = nn.ModuleList()
        c, size = 3, 16
        for kind, w in zip(blocks, widths):
            layer, c = self._make(kind, c, w)
            if kind == "pool":
                kind = "maxpool" if size >= 4 else "avgpool"
                size = size // 2 if size >= 4 else size
            self.kinds.append(kind)
            self.layers.append(layer)
        self.head = nn.Linear(c * 4, 12)
        self.out = nn.Linear(12, 5)

    @staticmethod
    def _make(kind, c, w):
        if kind == "conv":
            return nn.Conv2d(c, w, 3, padding=1), w
        if kind == "grouped":
            g = 2 if c % 2 == 0 else 1
            return nn.Conv2d(c, 2 * g * max(1, w // 4), 3, padding=1, groups=g), 2 * g * max(1, w // 4)
        if kind == "depthwise":
            return nn.Conv2d(c, 2 * c, 3, padding=1, groups=c), 2 * c
        if kind == "bn":
            return nn.BatchNorm2d(c), c
        if kind == "add":
            return nn.Conv2d(c, c, 1), c
        if kind == "cat":
            return nn.Conv2d(c, w, 1), c + w
        if kind == "pad":
            return nn.Identity(), c + 3
        if kind == "se":
            return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, 4, 1), nn.ReLU(), nn.Conv2d(4, c, 1)), c
        return nn.Identity(), c

    def forward(self, x):
        for kind, layer in zip(self.kinds, self.layers):
            if kind == "relu":
                x = F.relu(x)
            elif kind == "add":
                x = x + layer(x)
            elif kind == "cat":
                x = torch.cat([x, layer(x)], 1)
            elif kind == "pad":
                x = F.pad(x, (0, 0, 0, 0, 1, 2))
            elif kind == "maxpool":
                x = F.max_pool2d(x, 2)
            elif kind == "avgpool":
                x = F.avg_pool2d(x, 1)
            elif kind == "se":
                x = x * torch.sigmoid(layer(x))
            else:
                x = layer(x)
        x = F.adaptive_avg_pool2d(x, 2)
        return self.out(F.relu(self.head(torch.flatten(x, 1))))


@settings(max_examples=fuzz_examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    blocks=st.lists(st.sampled_from(BLOCKS), min_size=1, max_size=8),
    widths=st.lists(st.integers(2, 12), min_size=8, max_size=8),
    ratio=st.floats(0.0, 0.8),
    seed=st.integers(0, 1000),
    grouped_convs=st.sampled_from(["whole", "within", "auto"]),
)
def test_plan_apply_verify_on_random_networks(blocks, widths, ratio, seed, grouped_convs):
    net = randomize(RandomNet(["conv"] + blocks, [6] + widths), seed)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
    with rejecting_vacuous_examples():
        small, _ = prune_and_check(net, x, criterion="l1", ratio=ratio, grouped_convs=grouped_convs)
    assert small(x).shape == (2, 5)
