"""passes.graph_module: the fast GraphModule build gives the layout ``torch.fx.GraphModule`` gives."""
from __future__ import annotations

import pytest
import torch
import torch.fx
import torchvision
from torch import nn

from passes.graph_module import build_graph_module


def _layout(gm: nn.Module) -> list:
    """Every module name with its type, every tensor name with its identity and persistence."""
    mods = [(n, type(m).__name__) for n, m in gm.named_modules()]
    tensors = [(n, id(t)) for n, t in list(gm.named_parameters()) + list(gm.named_buffers())]
    return [mods, tensors, sorted(gm.state_dict().keys()), gm.training]


class _Odd(nn.Module):
    """A get_attr on a nested parameter, a non-persistent buffer, an unused child and a plain tensor attribute."""

    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.head = nn.Linear(4, 2)
        self.unused = nn.Linear(7, 7)
        self.register_buffer("scale", torch.ones(4), persistent=False)

    def forward(self, x):
        x = self.block(x) * self.scale.view(1, -1, 1, 1)
        return torch.nn.functional.linear(x.mean((2, 3)), self.head.weight, self.head.bias)


@pytest.mark.parametrize("make", [torchvision.models.resnet18, torchvision.models.mobilenet_v3_small,
                                  torchvision.models.googlenet, _Odd], ids=lambda f: getattr(f, "__name__", "odd"))
def test_same_layout_and_output_as_torch(make):
    kwargs = {"init_weights": False, "aux_logits": False} if make is torchvision.models.googlenet else {}
    model = make(**kwargs).eval()
    graph = torch.fx.Tracer().trace(model)
    ours = build_graph_module(model, graph, "M")
    theirs = torch.fx.GraphModule(model, graph, "M")
    assert _layout(ours) == _layout(theirs)
    assert "unused" not in dict(ours.named_children())
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(ours(x), theirs(x))
    assert ours.code == theirs.code


def test_plain_attribute_target_falls_back_to_torch():
    class WithConstant(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.offset = torch.ones(1, 4, 1, 1)  # a plain attribute, not a registered buffer

        def forward(self, x):
            return self.conv(x) + self.offset

    model = WithConstant().eval()
    graph = torch.fx.Tracer().trace(model)
    ours = build_graph_module(model, graph, "M")
    assert _layout(ours) == _layout(torch.fx.GraphModule(model, graph, "M"))
    assert "offset" in dict(ours.named_buffers())
