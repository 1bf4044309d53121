"""A layer's filters: its weight with one row per output channel, however the layer stores it.

Conv and linear layers keep their weight as (out, in, ...), a transposed conv as (in, out, ...). The
criteria, soft filter pruning and the rewrite read and cut filters through these two functions, so a
layer type needs no case of its own in each of them.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["out_dim", "filters"]


def out_dim(layer: nn.Module) -> int:
    """The weight dim that indexes the layer's output channels."""
    return 1 if isinstance(layer, nn.modules.conv._ConvTransposeNd) else 0


def filters(weight: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """``weight`` (the layer's, or a tensor shaped like it: its gradient) as (out, in, kernel...)."""
    dim = out_dim(layer)
    return weight.movedim(dim, 0) if dim else weight
