"""Seed CIFAR architectures (32x32 input), exactly as the papers' code builds them.

The pruning papers use slightly different networks under the same name, and the
published params/FLOPs only match the right one (spec §6, §7.2), so each
variant is named after the family it follows:

=================  =========================  ================================================
name               family                     what distinguishes it
=================  =========================  ================================================
resnet20..110      RGD (§6.2)                 projection shortcut: 3x3/2 conv + BN
                                              (``layer{2,3}.0.downsample``), AvgPool2d(8), fc
hrank_resnet56     HRank/HRankPlus/CORING/    option-A shortcut (slice ::2 + symmetric zero
hrank_resnet110    FP-FMC (§6.1)              channel pad), FC ``fc`` (56) / ``linear`` (110)
vgg16_bn           HRank family and RGD       conv bias, 4 pools, 512-BN1d-512 classifier
densenet40         HRank family and RGD       stem 24, growth 12, compression 1, 456 -> fc
googlenet          HRank family (bias=True);  same channel plan; RGD convs have no bias
                   RGD: ``bias=False``
mobilenetv2        CORING (§6.1)              stride-1 stem and 24-stage, features.{i}.conv.{j}
=================  =========================  ================================================

Not included: the rethinking/L1 and SFP ResNets (AvgPool shortcut, §6.3/6.4) and
RGD's MobileNet-V1/V2 variants.
"""
from .cifar_resnet import (
    hrank_resnet56,
    hrank_resnet110,
    resnet20,
    resnet32,
    resnet44,
    resnet56,
    resnet110,
)
from .densenet import densenet40
from .googlenet import googlenet
from .mobilenetv2 import mobilenetv2
from .vgg import vgg16_bn

_REGISTRY = {
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet44": resnet44,
    "resnet56": resnet56,
    "resnet110": resnet110,
    "hrank_resnet56": hrank_resnet56,
    "hrank_resnet110": hrank_resnet110,
    "vgg16_bn": vgg16_bn,
    "densenet40": densenet40,
    "googlenet": googlenet,
    "mobilenetv2": mobilenetv2,
}


def list_models():
    """Names accepted by :func:`get_model`, sorted."""
    return sorted(_REGISTRY)


def get_model(name, num_classes=10, **kw):
    """Build a seed model by name; extra keywords go to its builder (e.g. ``bias``)."""
    key = name.lower().replace("-", "_")
    if key not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; choose from {', '.join(list_models())}")
    return _REGISTRY[key](num_classes=num_classes, **kw)


__all__ = ["get_model", "list_models", *_REGISTRY]
