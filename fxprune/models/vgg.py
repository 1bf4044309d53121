"""CIFAR VGG-16-BN of the HRank and RGD papers (spec §6.1, §6.2).

Same topology in both families: 13 3x3 convs **with bias** + BN + ReLU, only
four max-pools (the last three convs run at 2x2), AvgPool2d(2) and a
Linear-BN1d-ReLU-Linear classifier. The pool is a registered module here (HRank
builds it inside forward, which fx cannot trace); it has no parameters or MACs.
"""
from collections import OrderedDict

import torch.nn as nn

CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)


def _features(cfg):
    """``features.conv{i}/norm{i}/relu{i}/pool{i}``, i = index in ``cfg``."""
    layers, cin = OrderedDict(), 3
    for i, v in enumerate(cfg):
        if v == "M":
            layers[f"pool{i}"] = nn.MaxPool2d(2, 2)
            continue
        layers[f"conv{i}"] = nn.Conv2d(cin, v, 3, padding=1, bias=True)
        layers[f"norm{i}"] = nn.BatchNorm2d(v)
        layers[f"relu{i}"] = nn.ReLU()
        cin = v
    return nn.Sequential(layers), cin


class VGG(nn.Module):
    """VGG-BN for 32x32 inputs; classifier names ``linear1/norm1/relu1/linear2``."""

    def __init__(self, cfg=CFG, num_classes=10):
        super().__init__()
        self.features, cout = _features(cfg)
        self.avgpool = nn.AvgPool2d(2)
        self.classifier = nn.Sequential(OrderedDict(
            linear1=nn.Linear(cout, 512),
            norm1=nn.BatchNorm1d(512),
            relu1=nn.ReLU(),
            linear2=nn.Linear(512, num_classes),
        ))

    def forward(self, x):
        x = self.avgpool(self.features(x))
        return self.classifier(x.flatten(1))


def vgg16_bn(num_classes=10):
    """HRank/RGD CIFAR VGG-16-BN (conv bias, 4 pools, 512-512 classifier)."""
    return VGG(CFG, num_classes)
