"""CIFAR GoogLeNet (spec §6.1 HRank, §6.2 RGD).

The two families share the channel plan; HRank's convs have a bias, RGD's do
not, hence the ``bias`` flag (``googlenet()`` = HRank, ``googlenet(bias=False)``
= RGD). The "5x5" branch is two 3x3 convs. Branches are joined by ``torch.cat``.
"""
import torch
import torch.nn as nn

# name: (in, n1x1, n3x3red, n3x3, n5x5red, n5x5, pool_proj)
PLAN = (
    ("a3", (192, 64, 96, 128, 16, 32, 32)),
    ("b3", (256, 128, 128, 192, 32, 96, 64)),
    ("a4", (480, 192, 96, 208, 16, 48, 64)),
    ("b4", (512, 160, 112, 224, 24, 64, 64)),
    ("c4", (512, 128, 128, 256, 24, 64, 64)),
    ("d4", (512, 112, 144, 288, 32, 64, 64)),
    ("e4", (528, 256, 160, 320, 32, 128, 128)),
    ("a5", (832, 256, 160, 320, 32, 128, 128)),
    ("b5", (832, 384, 192, 384, 48, 128, 128)),
)


def conv_bn_relu(cin, cout, k, bias):
    """Conv (same padding) + BN + ReLU, the unit of every branch."""
    return [nn.Conv2d(cin, cout, k, padding=k // 2, bias=bias), nn.BatchNorm2d(cout), nn.ReLU()]


class Inception(nn.Module):
    """Four parallel branches concatenated on channels (1x1, 3x3, 2x3x3, pool)."""

    def __init__(self, cin, n1x1, n3x3red, n3x3, n5x5red, n5x5, pool_proj, bias=True):
        super().__init__()
        self.branch1x1 = nn.Sequential(*conv_bn_relu(cin, n1x1, 1, bias))
        self.branch3x3 = nn.Sequential(*conv_bn_relu(cin, n3x3red, 1, bias), *conv_bn_relu(n3x3red, n3x3, 3, bias))
        self.branch5x5 = nn.Sequential(
            *conv_bn_relu(cin, n5x5red, 1, bias),
            *conv_bn_relu(n5x5red, n5x5, 3, bias),
            *conv_bn_relu(n5x5, n5x5, 3, bias),
        )
        self.branch_pool = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), *conv_bn_relu(cin, pool_proj, 1, bias))

    def forward(self, x):
        outs = [self.branch1x1(x), self.branch3x3(x), self.branch5x5(x), self.branch_pool(x)]
        return torch.cat(outs, 1)


class GoogLeNet(nn.Module):
    """pre_layers -> a3 b3 -> pool -> a4..e4 -> pool -> a5 b5 -> AvgPool(8) -> linear."""

    def __init__(self, num_classes=10, bias=True):
        super().__init__()
        self.pre_layers = nn.Sequential(*conv_bn_relu(3, 192, 3, bias))
        for name, cfg in PLAN:
            self.add_module(name, Inception(*cfg, bias=bias))
        self.maxpool1 = nn.MaxPool2d(3, stride=2, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, padding=1)
        self.avgpool = nn.AvgPool2d(8, stride=1)
        self.linear = nn.Linear(1024, num_classes)

    def forward(self, x):
        x = self.b3(self.a3(self.pre_layers(x)))
        x = self.maxpool1(x)
        x = self.e4(self.d4(self.c4(self.b4(self.a4(x)))))
        x = self.maxpool2(x)
        x = self.b5(self.a5(x))
        return self.linear(self.avgpool(x).flatten(1))


def googlenet(num_classes=10, bias=True):
    """CIFAR GoogLeNet; ``bias=True`` is HRank's, ``bias=False`` RGD's."""
    return GoogLeNet(num_classes, bias)
