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
