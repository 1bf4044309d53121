"""Seed architectures: shapes, fx-traceability, names, and the analytic counts of spec §7.2.

Counts are taken with a small forward-hook counter (conv MACs without bias adds,
Linear in*out, no BN/pool) so the test does not depend on any FLOPs library.
"""
import pytest
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from fxprune.models import get_model, list_models

ALL = list_models()


def count(model):
    """(conv+fc MACs per 32x32 image, params of conv/linear only, all params)."""
    macs = []

    def hook(mod, _inp, out):
        if isinstance(mod, nn.Conv2d):
            kh, kw = mod.kernel_size
            macs.append(out[0].numel() * mod.in_channels // mod.groups * kh * kw)
        else:
            macs.append(mod.in_features * mod.out_features)

    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    handles = [m.register_forward_hook(hook) for m in layers]
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    for h in handles:
        h.remove()
    no_bn = sum(p.numel() for m in layers for p in m.parameters(recurse=False))
    return sum(macs), no_bn, sum(p.numel() for p in model.parameters())


# name, kwargs, conv+fc MACs (M), params without BN (M), tolerance on params (M)
SPEC = [
    ("vgg16_bn", {}, 313.46, 14.98, 0.01),
    ("hrank_resnet56", {}, 125.49, 0.849, 0.001),
    ("hrank_resnet110", {}, 252.89, 1.720, 0.001),
    ("densenet40", {}, 282.92, 1.041, 0.001),
    ("googlenet", {}, 1521.76, 6.150, 0.001),
    ("mobilenetv2", {}, 87.98, 2.203, 0.001),
]


@pytest.mark.parametrize("name,kw,macs_m,params_m,tol", SPEC, ids=[s[0] for s in SPEC])
def test_counts_match_spec(name, kw, macs_m, params_m, tol):
    macs, no_bn, _ = count(get_model(name, **kw))
    assert macs / 1e6 == pytest.approx(macs_m, abs=0.01)
    assert no_bn / 1e6 == pytest.approx(params_m, abs=tol)


def test_rgd_resnet56_counts():
    """Projection shortcuts add 23,040 conv weights + 192 BN params and 2.36M MACs (§6.2)."""
    macs, no_bn, total = count(get_model("resnet56"))
    hr_macs, hr_no_bn, hr_total = count(get_model("hrank_resnet56"))
    assert no_bn - hr_no_bn == 23_040
    assert total - hr_total == 23_040 + 192
    assert total / 1e6 == pytest.approx(0.876, abs=0.001)
    assert macs / 1e6 == pytest.approx(127.85, abs=0.01)


def test_googlenet_rgd_has_no_conv_bias():
    model = get_model("googlenet", bias=False)
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))
    assert count(model)[0] / 1e6 == pytest.approx(1521.76, abs=0.01)


@pytest.mark.parametrize("name", ALL)
def test_forward_and_trace(name):
    """Eager and symbolically traced modules agree on a (2,3,32,32) batch."""
    torch.manual_seed(0)
    model = get_model(name, num_classes=7).eval()
    x = torch.randn(2, 3, 32, 32)
    gm = fx.symbolic_trace(model)
    with torch.no_grad():
        y = model(x)
        assert y.shape == (2, 7)
        torch.testing.assert_close(gm(x), y)


def test_module_names():
    names = {n: dict(get_model(n).named_modules()) for n in ALL}
    assert isinstance(names["resnet56"]["layer2.0.downsample.0"], nn.Conv2d)
    assert names["resnet56"]["layer2.0.downsample.0"].kernel_size == (3, 3)
    assert "layer1.0.downsample" not in names["resnet56"] or names["resnet56"]["layer1.0.downsample"] is None
    assert isinstance(names["resnet56"]["fc"], nn.Linear)
    assert {"layer3.8.conv1", "layer3.8.bn1", "layer3.8.relu1", "layer3.8.conv2", "layer3.8.bn2",
            "layer3.8.relu2", "fc"} <= set(names["hrank_resnet56"])
    assert "linear" in names["hrank_resnet110"] and "fc" not in names["hrank_resnet110"]
    assert {"features.conv0", "features.norm16", "features.relu16", "classifier.linear1",
            "classifier.norm1", "classifier.relu1", "classifier.linear2"} <= set(names["vgg16_bn"])
    assert isinstance(names["vgg16_bn"]["classifier.norm1"], nn.BatchNorm1d)
    mb = names["mobilenetv2"]
    assert mb["features.1.conv.0"].groups == 32  # t=1 block starts with the depthwise conv
    assert mb["features.2.conv.3"].groups == 96  # t=6 block: expand, BN, ReLU6, depthwise
    assert mb["features.18.0"].out_channels == 1280
    assert names["densenet40"]["fc"].in_features == 456


def test_option_a_shortcut_is_literal_slice_and_pad():
    """HRank shortcuts trace to x[:, :, ::2, ::2] and F.pad with literal amounts."""
    gm = fx.symbolic_trace(get_model("hrank_resnet56"))
    pads = [n.args[1] for n in gm.graph.nodes if n.op == "call_function" and n.target is F.pad]
    assert pads == [(0, 0, 0, 0, 8, 8), (0, 0, 0, 0, 16, 16)]
    assert not [n for n in gm.graph.nodes if n.op == "call_module" and "shortcut" in str(n.target)]


def test_concat_ops_traced():
    """DenseNet/GoogLeNet joins are torch.cat nodes a pruner can see."""
    for name, expected in (("densenet40", 36), ("googlenet", 9)):
        gm = fx.symbolic_trace(get_model(name))
        cats = [n for n in gm.graph.nodes if n.op == "call_function" and n.target is torch.cat]
        assert len(cats) == expected


def test_registry():
    assert set(ALL) >= {"resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "hrank_resnet56",
                        "hrank_resnet110", "vgg16_bn", "densenet40", "googlenet", "mobilenetv2"}
    assert get_model("vgg16_bn", num_classes=100).classifier.linear2.out_features == 100
    with pytest.raises(KeyError):
        get_model("resnet18")
