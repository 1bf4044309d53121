"""passes.clone: the rewrite's copy of the module tree shares nothing with the user's model."""
from __future__ import annotations

import torch
import torchvision
from torch import nn

from passes.clone import clone_tree, unshare


def _tensor_ids(m: nn.Module) -> set[int]:
    return {id(t) for t in m.parameters()} | {id(t) for t in m.buffers()}


def _storages(m: nn.Module) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in list(m.parameters()) + list(m.buffers())}


class _WithState(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.conv.weight.requires_grad_(False)
        self.register_buffer("scale", torch.ones(4), persistent=False)
        self.table = [[1, 2], [3]]   # nested mutable: must not be shared
        self.sizes = [1, 2, 3]       # flat list of ints: copied shallowly
        self.name = "block"


def test_copy_shares_no_tensor_and_keeps_values():
    model = torchvision.models.resnet18().eval()
    tree = clone_tree(model)
    assert not (_tensor_ids(tree) & _tensor_ids(model))
    assert not (_storages(tree) & _storages(model))
    for (k, a), (_, b) in zip(model.state_dict().items(), tree.state_dict().items()):
        assert torch.equal(a, b), k
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(nn.Sequential(*tree.children())[:-1](x).flatten(1), nn.Sequential(*model.children())[:-1](x).flatten(1))


def test_attributes_and_flags_are_copied_not_shared():
    src = nn.Sequential(_WithState())
    tree = clone_tree(src)
    a, b = src[0], tree._modules["0"]
    assert type(b) is _WithState and b.name == "block"
    assert b.table == a.table and b.table is not a.table and b.table[0] is not a.table[0]
    assert b.sizes == a.sizes and b.sizes is not a.sizes
    assert b.conv.weight.requires_grad is False and isinstance(b.conv.weight, nn.Parameter)
    assert "scale" in b._non_persistent_buffers_set
    b.conv.stride = (2, 2)
    assert a.conv.stride == (1, 1)


def test_module_with_hooks_is_deep_copied_with_its_hooks():
    src = nn.Sequential(nn.Linear(3, 3))
    calls = []
    src[0].register_forward_hook(lambda m, i, o: calls.append(m))
    tree = clone_tree(src)
    tree._modules["0"](torch.randn(1, 3))
    assert len(calls) == 1 and calls[0] is tree._modules["0"]


def test_deferred_tensors_are_shared_until_unshared():
    src = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    deferred = list(src[0].parameters())
    tree = clone_tree(src, deferred)
    assert tree._modules["0"].weight is src[0].weight          # left for the rewrite to slice
    assert tree._modules["1"].weight is not src[1].weight
    unshare(tree.modules(), deferred)
    assert not (_tensor_ids(tree) & _tensor_ids(src))
    assert torch.equal(tree._modules["0"].weight, src[0].weight)
