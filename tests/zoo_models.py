"""The torchvision classification zoo as fxprune sees it: names, input sizes, fast random models.

Shared by ``tests/test_zoo.py`` and ``bench/zoo.py``. Every model is built with ``weights=None`` and
the architecture torchvision names; only the input is made as small as the model accepts (ViTs get
``image_size=`` so their position embedding is shorter: no other parameter changes).

Random weights are chosen so that a wrong channel is visible and float32 stays meaningful:

* the constructors' own initializers are skipped (they cost ~2 minutes over the zoo and are
  overwritten anyway);
* conv/linear weights are He-normal, biases small, norm affines around 1, other weight matrices
  (MultiheadAttention's packed in_proj_weight) LeCun-normal, every other parameter (layer scales,
  position embeddings, class tokens, relative-position tables, logit scales) is drawn from
  U(0.5, 1.5), so a ConvNeXt layer scale is not the 1e-6 that would hide its block;
* BatchNorm statistics are calibrated on a random batch (the mean and variance each BN really
  sees, as training would give), so deep residual nets do not blow activations up to 1e6, where
  any relative error of 1e-16 grows into a verify failure.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torchvision
from torch import nn

__all__ = ["MODELS", "input_size", "build_kwargs", "build", "example_input", "init_random"]

MODELS: list[str] = sorted(torchvision.models.list_models(module=torchvision.models))

_VIT_PATCH = {"vit_b_16": 16, "vit_b_32": 32, "vit_l_16": 16, "vit_l_32": 32, "vit_h_14": 14}


def input_size(name: str) -> int:
    """The smallest square input (pixels) the named architecture accepts, within reason.

    CNNs take 64x64 (their pooling is adaptive); inception_v3 needs 75x75. ViTs are built for a
    4x4 patch grid (``image_size=4*patch``), which only shortens the position embedding. Swin takes
    any size but shifted windows need feature maps larger than the window: 224 keeps every shift
    path the named model has. MaxViT's partitions need 224.
    """
    if name in _VIT_PATCH:
        return 4 * _VIT_PATCH[name]
    if name.startswith(("swin", "maxvit")):
        return 224
    if name == "inception_v3":
        return 75
    return 64


def build_kwargs(name: str) -> dict:
    if name in _VIT_PATCH:
        return {"image_size": input_size(name)}
    return {}


# torch.nn.init functions torchvision's constructors call; skipped while building (see module doc)
_INIT_FUNCTIONS = ("normal_", "trunc_normal_", "uniform_", "kaiming_normal_", "kaiming_uniform_",
                   "xavier_normal_", "xavier_uniform_", "zeros_", "ones_", "constant_", "orthogonal_")


@contextlib.contextmanager
def skip_default_init() -> Iterator[None]:
    saved = {f: getattr(nn.init, f) for f in _INIT_FUNCTIONS}
    try:
        for f in _INIT_FUNCTIONS:
            setattr(nn.init, f, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for f, fn in saved.items():
            setattr(nn.init, f, fn)


_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def init_random(model: nn.Module, x: torch.Tensor, seed: int = 0) -> nn.Module:
    """Overwrite every floating parameter (see module doc), calibrate BN statistics on ``x``."""
    g = torch.Generator().manual_seed(seed)
    done: set[int] = set()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.normal_(0.0, (2.0 / fan_in) ** 0.5, generator=g)
                if m.bias is not None:
                    m.bias.normal_(0.0, 0.1, generator=g)
            elif isinstance(m, _NORMS):
                if getattr(m, "weight", None) is not None:
                    m.weight.uniform_(0.5, 1.5, generator=g)
                if getattr(m, "bias", None) is not None:
                    m.bias.normal_(0.0, 0.1, generator=g)
            else:
                continue
            done.update(id(p) for p in m.parameters(recurse=False))
        for name, p in model.named_parameters():
            if id(p) in done or not p.is_floating_point():
                continue
            if name.endswith("weight") and p.dim() >= 2:  # e.g. MultiheadAttention.in_proj_weight
                p.normal_(0.0, (1.0 / p[0].numel()) ** 0.5, generator=g)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.1, generator=g)
            else:
                p.uniform_(0.5, 1.5, generator=g)
    _calibrate_batchnorm(model, x, g)
    return model.eval()


def _calibrate_batchnorm(model: nn.Module, x: torch.Tensor, g: torch.Generator) -> None:
    """Set each BN's running statistics to those of its actual input (in order, one eval pass)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return

    def pre_hook(bn, args):
        t = args[0].detach()
        dims = [d for d in range(t.dim()) if d != 1]
        mean = t.mean(dims)
        var = t.var(dims, unbiased=False)
        var = var + 0.1 * var.mean() + 1e-3  # no channel is blown up by a near-zero variance
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var * torch.empty_like(var).uniform_(0.8, 1.25, generator=g))

    handles = [bn.register_forward_pre_hook(pre_hook) for bn in bns]
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()


def example_input(name: str, batch: int = 1, seed: int = 1) -> torch.Tensor:
    s = input_size(name)
    return torch.randn(batch, 3, s, s, generator=torch.Generator().manual_seed(seed))


def build(name: str, seed: int = 0) -> nn.Module:
    """The named torchvision model, random weights as described in the module doc, eval mode."""
    with skip_default_init():
        model = torchvision.models.get_model(name, weights=None, **build_kwargs(name))
    calib = torch.randn(2, 3, input_size(name), input_size(name), generator=torch.Generator().manual_seed(seed + 7))
    return init_random(model, calib, seed)
