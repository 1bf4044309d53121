"""CIFAR ResNets (BasicBlock, widths 16/32/64) in the two published flavours.

* RGD family (spec §6.2): the first block of stages 2 and 3 has a *projection*
  shortcut ``downsample`` = 3x3 stride-2 conv (no bias) + BN; AvgPool2d(8); ``fc``.
* HRank family (spec §6.1, also HRankPlus/CORING/FP-FMC): parameter-free
  *option A* shortcut (subsample by slicing, symmetric zero channel padding);
  AdaptiveAvgPool2d(1); FC named ``fc`` (ResNet-56) or ``linear`` (ResNet-110).

Both are plain modules that ``torch.fx.symbolic_trace`` traces end to end.
ReLUs are not in-place so feature-map hooks see the tensors they were given.
"""
import torch.nn as nn
import torch.nn.functional as F

WIDTHS = (16, 32, 64)


def conv3x3(cin, cout, stride=1):
    """3x3 conv, pad 1, no bias (BN follows every conv in these nets)."""
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _init(model):
    """Kaiming-normal convs, unit BN: the usual CIFAR ResNet start."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class _BasicBlock(nn.Module):
    """conv-bn-relu-conv-bn, the residual branch both families share; the subclass adds its shortcut."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU()

    def residual(self, x):
        return self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))


# ----------------------------------------------------------------- RGD family
class ProjBlock(_BasicBlock):
    """BasicBlock with an optional projection ``downsample`` (RGD, §6.2)."""

    def __init__(self, cin, cout, stride=1):
        super().__init__(cin, cout, stride)
        self.downsample = None
        if stride != 1 or cin != cout:
            # RGD projects with a 3x3 stride-2 conv (not the usual 1x1).
            self.downsample = nn.Sequential(conv3x3(cin, cout, stride), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.residual(x)
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu2(out + identity)


class ResNetProj(nn.Module):
    """RGD CIFAR ResNet-(6n+2) with projection shortcuts (§6.2)."""

    def __init__(self, depth, num_classes=10):
        super().__init__()
        _add_stem_and_stages(self, ProjBlock, depth)
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(64, num_classes)
        _init(self)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = self.avgpool(x)
        return self.fc(x.flatten(1))


# -------------------------------------------------------------- HRank family
class ShortcutA(nn.Module):
    """Option-A shortcut: slice every 2nd pixel, pad channels symmetrically.

    Pad amounts are plain ints stored at construction so the traced graph holds
    literals (``F.pad(x, (0, 0, 0, 0, p, q))``); negative amounts crop, as in HRank.
    """

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.stride = stride
        self.pad_front = (cout - cin) // 2
        self.pad_back = cout - cin - self.pad_front

    def forward(self, x):
        if self.stride != 1:  # construction-time constant, not data-dependent
            x = x[:, :, ::2, ::2]
        return F.pad(x, (0, 0, 0, 0, self.pad_front, self.pad_back))


class OptionABlock(_BasicBlock):
    """HRank BasicBlock: conv-bn-relu-conv-bn, + shortcut, relu (§6.1)."""

    def __init__(self, cin, cout, stride=1):
        super().__init__(cin, cout, stride)
        self.shortcut = nn.Sequential()  # identity; fx traces it away (no node)
        if stride != 1 or cin != cout:
            self.shortcut = ShortcutA(cin, cout, stride)

    def forward(self, x):
        return self.relu2(self.residual(x) + self.shortcut(x))


class ResNetOptionA(nn.Module):
    """HRank CIFAR ResNet-56/110 (§6.1); ``fc_name`` is 'fc' (56) or 'linear' (110)."""

    def __init__(self, depth, num_classes=10, fc_name="fc"):
        super().__init__()
        _add_stem_and_stages(self, OptionABlock, depth)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc_name = fc_name
        setattr(self, fc_name, nn.Linear(64, num_classes))
        _init(self)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = self.avgpool(x).flatten(1)
        return getattr(self, self.fc_name)(x)


def _blocks_per_stage(depth):
    """depth = 6n + 2 for BasicBlock CIFAR ResNets."""
    if (depth - 2) % 6 != 0:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
    return (depth - 2) // 6


def _add_stem_and_stages(model, block, depth):
    """The layout both families share: a conv1/bn1/relu stem, then ``layer1..3`` of ``block``s
    (16/32/64 wide; the first block of stages 2 and 3 halves the resolution)."""
    n = _blocks_per_stage(depth)
    model.conv1 = conv3x3(3, 16)
    model.bn1 = nn.BatchNorm2d(16)
    model.relu = nn.ReLU()
    cin = 16
    for s, w in enumerate(WIDTHS, start=1):
        stride = 1 if s == 1 else 2
        blocks = [block(cin if b == 0 else w, w, stride if b == 0 else 1) for b in range(n)]
        setattr(model, f"layer{s}", nn.Sequential(*blocks))
        cin = w


def _proj(depth):
    def build(num_classes=10):
        return ResNetProj(depth, num_classes)

    build.__name__ = build.__qualname__ = f"resnet{depth}"
    build.__doc__ = f"RGD ResNet-{depth} (projection shortcuts, §6.2)."
    return build


resnet20, resnet32, resnet44, resnet56, resnet110 = (_proj(d) for d in (20, 32, 44, 56, 110))


def hrank_resnet56(num_classes=10):
    """HRank ResNet-56 (option-A shortcuts, FC named ``fc``)."""
    return ResNetOptionA(56, num_classes, fc_name="fc")


def hrank_resnet110(num_classes=10):
    """HRank ResNet-110 (option-A shortcuts, FC named ``linear``)."""
    return ResNetOptionA(110, num_classes, fc_name="linear")
