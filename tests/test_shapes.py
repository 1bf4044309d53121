"""The shape pass: its formulas give exactly what torch's own kernels give.

The oracle is the fake-tensor engine, which runs every op through torch's shape logic (no formulas
of ours): on each model below both engines must record the same shape for every node.
"""
from __future__ import annotations

import pytest
import torch
import torch.fx
import torch.nn.functional as F
import torchvision
from torch import nn

from passes.shapes import SHAPE, VALUE, _run_for_real, _run_on_fake, _run_on_meta
from passes.trace import trace

# cat (densenet), ceil-mode max pools (squeezenet, googlenet, inception), adaptive pools to 6x6
# (alexnet), SE mul (efficientnet), grouped convs (regnet, shufflenet), LayerNorm (convnext),
# attention through functional_call with meta parameters (vit).
MODELS = ["resnet18", "densenet121", "squeezenet1_0", "googlenet", "alexnet", "efficientnet_b0",
          "regnet_y_400mf", "shufflenet_v2_x0_5", "convnext_tiny", "mnasnet0_5", "vit_b_32"]


def _recorded(gm: torch.fx.GraphModule) -> dict:
    return {n.name: (_no_weights(n.meta.get(SHAPE)), n.meta.get(VALUE)) for n in gm.graph.nodes}


def _no_weights(shape):
    """nn.MultiheadAttention's fused CPU path (taken for real and fake tensors, not meta) returns an
    empty tensor where the other path returns None for the attention weights: the same thing."""
    if shape == torch.Size([0]):
        return None
    if isinstance(shape, tuple) and not isinstance(shape, torch.Size):
        return tuple(_no_weights(s) for s in shape)
    return shape


def _clear(gm: torch.fx.GraphModule) -> None:
    for n in gm.graph.nodes:
        n.meta.pop(SHAPE, None)
        n.meta.pop(VALUE, None)


def _check_engines_agree(model: nn.Module, x: torch.Tensor) -> None:
    gm, inputs = trace(model.eval(), x)
    _clear(gm)
    _run_on_meta(gm, inputs)
    fast = _recorded(gm)
    _clear(gm)
    _run_on_fake(gm, inputs)
    oracle = _recorded(gm)
    diff = {k: (fast[k], oracle[k]) for k in oracle if fast[k] != oracle[k]}
    assert not diff, f"formula shapes differ from torch's kernels: {list(diff.items())[:3]}"
    assert sum(s is not None for s, _ in fast.values()) > 10


@pytest.mark.parametrize("name", MODELS)
def test_formulas_match_kernels_on_torchvision(name):
    size = 224 if name.startswith("vit") else 197  # odd sizes exercise floor/ceil rounding
    _check_engines_agree(torchvision.models.get_model(name, weights=None), torch.randn(1, 3, size, size))


class _OddLayers(nn.Module):
    """Padding modes, dilation, strides, ceil-mode pools, unbatched-free 1-D/3-D convs, flatten ranges."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, (3, 5), stride=(2, 3), padding=(1, 2), dilation=(2, 1), padding_mode="reflect")
        self.c2 = nn.Conv2d(8, 8, 3, padding="same", groups=4)
        self.c3 = nn.Conv2d(8, 6, 2, padding="valid")
        self.p1 = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True, dilation=1)
        self.p2 = nn.AvgPool2d((2, 3), stride=(2, 1), ceil_mode=True, count_include_pad=False)
        self.p3 = nn.AdaptiveAvgPool2d((None, 3))
        self.flat = nn.Flatten(1, 2)
        self.c1d = nn.Conv1d(6, 4, 3, stride=2)
        self.c3d = nn.Conv3d(1, 2, (1, 3, 3), padding=(0, 1, 1))
        self.fc = nn.Linear(3, 5)

    def forward(self, x):
        y = self.p2(self.p1(self.c3(self.c2(self.c1(x)))))
        z = self.p3(y)                      # (N, 6, h, 3)
        w = self.fc(z)                      # linear over the last dim
        v = self.c1d(self.flat(z.transpose(2, 3)).transpose(1, 2).reshape(1, 6, -1))
        u = self.c3d(y[:, :1].unsqueeze(1))
        return w.sum() + v.sum() + u.sum() + torch.cat([y, y * 2.0, y + y], 1).sum()


def test_formulas_match_kernels_on_odd_layers():
    _check_engines_agree(_OddLayers(), torch.randn(1, 3, 41, 57))


def test_engines_leave_every_module_training_flag_as_it_was():
    model = torchvision.models.resnet18().train()
    model.layer2.eval()  # mixed modes: only the user decides them
    flags = {name: m.training for name, m in model.named_modules()}
    gm, inputs = trace(model, torch.randn(2, 3, 32, 32))
    stats = model.bn1.running_mean.clone()
    for engine in (_run_on_meta, _run_on_fake, _run_for_real):
        engine(gm, inputs)
        assert {name: m.training for name, m in model.named_modules()} == flags, engine.__name__
    assert torch.equal(model.bn1.running_mean, stats)  # data-carrying runs are in eval mode


@pytest.mark.parametrize("layer, shape", [
    (nn.Conv2d(3, 8, (3, 5), stride=(2, 3), padding=(1, 2), dilation=(2, 1), padding_mode="reflect"), (2, 3, 41, 57)),
    (nn.Conv2d(8, 8, 3, padding="same", groups=4), (1, 8, 9, 10)),
    (nn.Conv2d(8, 6, 2, padding="valid"), (8, 9, 10)),
    (nn.Conv1d(6, 4, 3, stride=2), (1, 6, 33)),
    (nn.Conv3d(1, 2, (1, 3, 3), padding=(0, 1, 1)), (1, 1, 2, 7, 7)),
    (nn.Linear(7, 5), (2, 3, 7)),
    (nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True), (1, 4, 10, 11)),
    (nn.MaxPool2d(2, ceil_mode=True, dilation=2), (1, 4, 11, 12)),
    (nn.AvgPool2d((2, 3), stride=(2, 1), ceil_mode=True, count_include_pad=False), (1, 4, 9, 9)),
    (nn.AdaptiveAvgPool2d((None, 3)), (1, 4, 9, 8)),
    (nn.AdaptiveMaxPool2d(1), (4, 9, 8)),
    (nn.Flatten(1, 2), (2, 3, 4, 5)),
])
def test_each_formula_gives_the_kernels_shape(layer, shape):
    from passes.shapes import _MODULE_SHAPES

    formula = _MODULE_SHAPES[type(layer)](layer, torch.Size(shape))
    assert formula is not None, "the formula declined a layer it is meant to cover"
    expected = layer.to("meta")(torch.empty(shape, device="meta")).shape
    assert tuple(formula) == tuple(expected)


@torch.fx.wrap
def _fill_window(window: list, sizes: list) -> list:
    """Writes into its list argument, as torchvision's video Swin does with a literal [0, 0, 0]."""
    for i, s in enumerate(sizes):
        window[i] = min(s, 4)
    return window


class _WritesIntoLiteralList(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        window = _fill_window([0, 0], [y.shape[2], y.shape[3]])
        return F.avg_pool2d(y, window)


def test_a_function_may_write_into_a_literal_list_argument():
    """The generated code passes a new list per call; the shape pass must too (the graph's own lists are read-only)."""
    gm, _ = trace(_WritesIntoLiteralList().eval(), torch.randn(1, 3, 8, 8))
    out = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    assert tuple(out.meta[SHAPE]) == (1, 8, 2, 2)
