"""passes.trace: the lean tracer records the graph torch.fx.Tracer records, node for node."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from passes.trace import trace


class _Args(nn.Module):
    """Calls with keyword arguments, literal tuples, lists of proxies, constants and a parameter."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.scale = nn.Parameter(torch.ones(1, 8, 1, 1))

    def forward(self, x):
        y = self.conv(x)
        y = F.interpolate(y, scale_factor=2.0, mode="nearest")
        y = torch.cat([y, y * self.scale], dim=1)
        y = F.pad(y, (1, 1, 0, 0), value=0.5)
        return torch.flatten(F.adaptive_avg_pool2d(y, output_size=(1, 1)), start_dim=1), {"a": y.sum()}


_MODELS = {
    "resnet18": lambda: torchvision.models.resnet18(),
    "densenet121": lambda: torchvision.models.densenet121(),
    "googlenet": lambda: torchvision.models.googlenet(init_weights=False, aux_logits=False),
    "mobilenet_v3_small": lambda: torchvision.models.mobilenet_v3_small(),
    "efficientnet_b0": lambda: torchvision.models.efficientnet_b0(),
    "vit": lambda: torchvision.models.VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=2,
                                                       hidden_dim=16, mlp_dim=32),
    "args": _Args,
}


@pytest.mark.parametrize("name", list(_MODELS))
def test_same_graph_as_torch_fx(name):
    model = _MODELS[name]().eval()
    gm, _ = trace(model, torch.randn(1, 3, 32, 32))
    reference = torch.fx.Tracer().trace(model)
    assert str(gm.graph) == str(reference)


# ---- torch.nn layer subclasses ---------------------------------------------------------------------
class _BuiltConv(nn.Conv2d):
    """Changes only how the layer is built (like torchvision's Conv3DSimple): one node, pruned as a conv."""

    def __init__(self, cin, cout):
        super().__init__(cin, cout, 3, padding=1, bias=False)

    @staticmethod
    def describe() -> str:
        return "a helper the conv's forward never calls"


class _ScaledConv(nn.Conv2d):
    def forward(self, x):
        return super().forward(x) * 2.0


class _OwnConvForward(nn.Conv2d):
    def _conv_forward(self, x, weight, bias):
        return F.conv2d(x, weight.flip(-1), bias, self.stride, self.padding)


class _SubclassNet(nn.Module):
    def __init__(self, conv_type):
        super().__init__()
        self.conv1 = conv_type(3, 8)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = conv_type(8, 8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.conv2(torch.relu(self.bn(self.conv1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _conv(cls):
    return lambda cin, cout: cls(cin, cout, 3, padding=1) if cls is not _BuiltConv else cls(cin, cout)


@pytest.mark.parametrize("cls, leaf", [(_BuiltConv, True), (_ScaledConv, False), (_OwnConvForward, False)])
def test_layer_subclass_is_one_node_only_when_it_runs_the_layers_own_forward(cls, leaf):
    from passes.trace import computes_as_torch_layer

    model = _SubclassNet(_conv(cls)).eval()
    gm, _ = trace(model, torch.randn(1, 3, 16, 16))
    modules = [n.target for n in gm.graph.nodes if n.op == "call_module"]
    assert computes_as_torch_layer(cls) is leaf
    assert ("conv1" in modules) is leaf
    assert not computes_as_torch_layer(type("Stack", (nn.Sequential,), {}))  # containers are traced through


@pytest.mark.parametrize("cls", [_BuiltConv, _ScaledConv, _OwnConvForward])
def test_layer_subclasses_prune_to_the_masked_original(cls):
    """A build-only subclass is pruned like its layer; the others are traced through, to ``F.conv2d`` on
    weights read by get_attr: pruned like a conv where it reads the layer's own weight, left unpruned where
    it computes one (a flipped kernel); either way the result equals the masked original."""
    import fxprune
    from conftest import prune_and_check, randomize

    model = randomize(_SubclassNet(_conv(cls)))
    x = torch.randn(2, 3, 16, 16)
    small, _ = prune_and_check(model, x, criterion="l1", ratio=0.5)
    built_only = cls is _BuiltConv
    assert ("conv1" in small.meta["fxprune.plan"].modules) is (cls is not _OwnConvForward)
    assert isinstance(small.get_submodule("conv1"), cls) is built_only


# ---- forwards that write to their module --------------------------------------------------------------
class _CachingAttention(nn.Module):
    """timm's LeViT: outside training, a table computed in forward is cached in a dict on the module."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 1)
        self.biases = nn.Parameter(torch.randn(8, 4))
        self.register_buffer("idxs", torch.tensor([0, 1, 2, 3, 0, 1, 2, 3]))
        self.cache = {}
        self.calls = []

    def table(self, device):
        if self.training:
            return self.biases[:, self.idxs]
        if str(device) not in self.cache:
            self.cache[str(device)] = self.biases[:, self.idxs]
        return self.cache[str(device)]

    def forward(self, x):
        self.calls.append("forward")
        self.last_input = x
        return self.conv(x) + self.table(x.device).sum(1).view(1, -1, 1, 1)


class _CachingNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.attn = _CachingAttention()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.attn(torch.relu(self.stem(x))), 1).flatten(1))


def test_a_forward_that_writes_to_its_module_leaves_the_users_model_as_it_was():
    import fxprune
    from conftest import prune_and_check, randomize

    model = randomize(_CachingNet())
    x = torch.randn(2, 3, 8, 8)
    for _ in range(2):  # the second trace must not read a Proxy the first one left in the cache
        small = fxprune.prune(model, x, criterion="l1", ratio=0.5)
        assert model.attn.cache == {} and model.attn.calls == [] and "last_input" not in vars(model.attn)
    assert small.stem.out_channels == 4
    prune_and_check(model, x, criterion="l1", ratio=0.5)
