"""CIFAR DenseNet-40 of the HRank and RGD papers (spec §6.1).

Growth 12, three dense blocks of 12 BN-ReLU-conv3x3 layers (no bottleneck),
compression 1 (transitions keep every channel). Concatenation is ``torch.cat``
on dim 1 and the transition pool is functional, exactly as in the seeds, so the
traced graph shows the concat offsets a pruner must follow.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class DenseLayer(nn.Module):
    """BN -> ReLU -> conv3x3 (cin -> growth), then concat [x, new]."""

    def __init__(self, cin, growth):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU()
        self.conv1 = nn.Conv2d(cin, growth, 3, padding=1, bias=False)

    def forward(self, x):
        out = self.conv1(self.relu(self.bn1(x)))
        return torch.cat((x, out), 1)


class Transition(nn.Module):
    """BN -> ReLU -> conv1x1 (cin -> cout) -> functional avg_pool2d(2)."""

    def __init__(self, cin, cout):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU()
        self.conv1 = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x):
        return F.avg_pool2d(self.conv1(self.relu(self.bn1(x))), 2)


class DenseNet(nn.Module):
    """DenseNet-(3n+4) BasicBlock variant; names ``dense{k}``/``trans{k}``."""

    def __init__(self, depth=40, growth=12, stem=24, num_classes=10):
        super().__init__()
        n = (depth - 4) // 3
        self.conv1 = nn.Conv2d(3, stem, 3, padding=1, bias=False)
        c = stem
        for k in (1, 2, 3):
            self.add_module(f"dense{k}", nn.Sequential(*[DenseLayer(c + i * growth, growth) for i in range(n)]))
            c += n * growth
            if k < 3:
                self.add_module(f"trans{k}", Transition(c, c))
        self.bn = nn.BatchNorm2d(c)
        self.relu = nn.ReLU()
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(c, num_classes)
        self._init()

    def _init(self):
        """Seed init: conv N(0, sqrt(2 / (k*k*out))), BN gamma 1 beta 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.conv1(x)
        x = self.trans1(self.dense1(x))
        x = self.trans2(self.dense2(x))
        x = self.relu(self.bn(self.dense3(x)))
        return self.fc(self.avgpool(x).flatten(1))


def densenet40(num_classes=10):
    """HRank/RGD DenseNet-40 (stem 24, growth 12, 456 final channels)."""
    return DenseNet(40, 12, 24, num_classes)
