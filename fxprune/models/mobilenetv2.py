"""CIFAR MobileNetV2 of CORING (spec §6.1), HRankPlus module naming.

Stem stride 1 and the 24-channel stage at stride 1 (total downsampling 8, 4x4
final maps). ``features.0`` is the stem, ``features.1..17`` the inverted
residuals (``features.{i}.conv.{j}``), ``features.18`` the 1x1 320->1280 conv.
"""
import torch.nn as nn

# (expand t, out channels c, repeats n, first stride s)
ROWS = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def conv_bn(cin, cout, k, stride=1, groups=1, act=True):
    """Conv (no bias) + BN (+ ReLU6): flattened into the caller's Sequential."""
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return layers + [nn.ReLU6()] if act else layers


class InvertedResidual(nn.Module):
    """[1x1 expand] -> 3x3 depthwise -> 1x1 linear project; add input if shapes match."""

    def __init__(self, cin, cout, stride, t):
        super().__init__()
        hidden = cin * t
        self.use_res = stride == 1 and cin == cout
        layers = conv_bn(cin, hidden, 1) if t != 1 else []
        layers += conv_bn(hidden, hidden, 3, stride, groups=hidden)
        layers += conv_bn(hidden, cout, 1, act=False)
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        if self.use_res:  # construction-time constant, fx-safe
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """CORING CIFAR MobileNetV2: global mean, Dropout(0.2) + Linear(1280)."""

    def __init__(self, num_classes=10):
        super().__init__()
        cin = 32
        feats = [nn.Sequential(*conv_bn(3, cin, 3))]
        for t, c, n, s in ROWS:
            for i in range(n):
                feats.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        feats.append(nn.Sequential(*conv_bn(cin, 1280, 1)))
        self.features = nn.Sequential(*feats)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x):
        x = self.features(x)
        return self.classifier(x.mean(3).mean(2))


def mobilenetv2(num_classes=10):
    """CORING CIFAR MobileNetV2 (stride-1 stem and 24-stage)."""
    return MobileNetV2(num_classes)
