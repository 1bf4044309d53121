"""Cross-check: fxprune's channel groups and l1 pruning against Torch-Pruning's DependencyGraph.

Six torchvision CNNs (``weights=None``, eval, one 1x3x64x64 input: every architecture here pools
adaptively, and neither tool's channel coupling depends on the spatial size). For every conv/linear
layer both tools trace, Torch-Pruning's output-channel group
(``DG.get_pruning_group(layer, prune_*_out_channels, idxs=[0])``) becomes a set of
``(module name, "in"|"out")`` members: conv/linear out- and in-channel pruners give "out" and "in",
BatchNorm gives "out" (as fxprune names norms), a depthwise conv (whose in- and out-channels are one
channel) gives both; TP's pseudo-members (element-wise ops, concat, split, reshape) are dropped.
fxprune's group holding ``(layer, "out")`` is restricted to conv/linear/bn members the same way.

Measured on torch 2.14.1, torchvision 0.29.1, torch-pruning 1.6.1:

==================  ===================================  =============================================
model               prunable groups; layers' groups      l1 ratio 0.3: params / conv+linear MACs
==================  ===================================  =============================================
resnet50            37 = TP's 37; 53 layers equal        identical (12,935,549 / 165,484,896)
densenet121         120 = 120; 120 equal                 identical (4,074,155 / 113,563,280)
mobilenet_v2        25 = 25; 52 equal                    identical (2,004,202 / 13,223,612)
efficientnet_b0     40 = 40; 81 equal                    identical (2,899,213 / 17,168,188)
googlenet           57 = 57; 57 equal                    identical (3,439,513 / 61,759,668) [3]
regnet_y_400mf      53 = 53; 85 equal [2]                identical (2,012,838 / 14,912,146) [2]
==================  ===================================  =============================================

(layers: conv/linear layers in both graphs, the classifier [1] not counted.)

Beyond the member sets, the index-level partition is compared too (``test_channel_partition``):
every channel of every conv/linear/bn member, grouped by the class it is pruned with, taking TP's
groups over all of a layer's output indices. It is the same partition in all six models. That
covers the DenseNet concat case: TP maps a layer's channels to *the index range they occupy* in
every later concatenation (``norm1`` of each later dense layer, the transition), while fxprune makes one group per producing layer whose members are
those later modules, at those same positions. So a later ``norm1`` is a member of many groups in
both tools, each group touching only its slice; the sets and positions agree, with no exception.

Differences, each asserted below with its cause:

1. **The classifier** (``fc`` / ``classifier.1`` / ``classifier``): fxprune freezes its output
   group (its channels reach the graph output); TP would prune it unless told, so it gets
   ``ignored_layers=[classifier]``. That is the only frozen fxprune group with a producer in any of
   the six models, and the only TP group left uncompared.
2. **Grouped (non-depthwise) convs, regnet_y_400mf** (group width 8) are analyzed with
   ``grouped_convs="within"``, Torch-Pruning's way: every conv group keeps the same positions, and a
   grouped conv's input and output channels are pruned apart. fxprune's default (``"whole"``) removes
   whole conv groups instead, a group's inputs and outputs being one class (each fxprune group is then
   the union of two of TP's, and at ratio 0.3 fxprune's model keeps 12.55% more params and 17.00% more
   MACs, asserted in ``test_whole_groups_keep_more_than_tp``); ``tests/test_grouped_convs.py`` checks
   the modes.
3. **GoogLeNet's auxiliary heads** (``aux_logits=True``, the default): train-only, so neither tool
   traces them in eval. TP leaves ``aux1``/``aux2`` in the model unpruned (with stale input widths:
   the pruned model fails in train mode), fxprune's GraphModule holds only the modules of the traced
   graph. Conv+linear MACs are identical; params differ by exactly the aux heads (6,379,984).
   The main comparison therefore builds ``googlenet(aux_logits=False)``, the same inference network.
4. **ShuffleNet v2** is not compared: Torch-Pruning cannot build its DependencyGraph (a
   ``ZeroDivisionError`` in the index mapping it gives the channel shuffle's 5-D view), asserted in
   ``test_shufflenet_only_fxprune``, where fxprune prunes every conv output channel of
   shufflenet_v2_x1_0 as a class of its own (the shuffle becomes a gather, each chunk a split into
   its halves' kept counts) and the compact model verifies.
5. **Selection**: both remove ``N - int(N * 0.7)`` channels per group (fxprune ``kept_count``, TP
   local pruning), so widths, params and MACs agree exactly; *which* channels go may differ (TP's
   ``MagnitudeImportance`` averages L1 norms over all members of a group) and is not compared.

Runtime: 20-40 s on one thread (busy 2-core machine).
"""
from __future__ import annotations

import copy
import functools
import warnings

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import fxprune
from conftest import prune_and_check, randomize
from fxprune.report import count
from passes.select import kept_count

tp = pytest.importorskip("torch_pruning")

RATIO = 0.3
SIZE = 64
#: model -> torchvision constructor kwargs (see difference 3 for googlenet)
MODELS = {
    "resnet50": {},
    "densenet121": {},
    "mobilenet_v2": {},
    "efficientnet_b0": {},
    "regnet_y_400mf": {},
    "googlenet": {"aux_logits": False, "init_weights": True},
}
#: fxprune options per model (difference 2)
OPTIONS = {"regnet_y_400mf": {"grouped_convs": "within"}}
KINDS = (nn.Conv2d, nn.Linear, nn.BatchNorm2d)


@functools.lru_cache(maxsize=None)
def _setup(name: str):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = torchvision.models.get_model(name, weights=None, **MODELS[name]).eval()
        x = torch.randn(1, 3, SIZE, SIZE)
        analysis = fxprune.analyze(model, x, **OPTIONS.get(name, {}))
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    return model, x, analysis, dg


def _classifier(model: nn.Module) -> str:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]


def _is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels


def _is_grouped(m: nn.Module) -> bool:
    """A grouped conv that is not depthwise (several channels per conv group)."""
    return isinstance(m, nn.Conv2d) and m.groups > 1 and not _is_depthwise(m)


def _layers(model, dg):
    """(name, module) of every conv/linear layer in TP's graph (GoogLeNet's unused aux heads are not)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and m in dg.module2node]


def _tp_group(dg, layer: nn.Module, idxs):
    fn = tp.prune_conv_out_channels if isinstance(layer, nn.Conv2d) else tp.prune_linear_out_channels
    return dg.get_pruning_group(layer, fn, idxs=idxs)


def _tp_items(dg, group, names):
    """(name, io, root index, index) of each conv/linear/bn channel a TP group prunes."""
    for item in group:
        mod, handler = item.dep.target.module, item.dep.handler
        if not isinstance(mod, KINDS):
            assert type(mod).__module__.startswith("torch_pruning"), f"unexpected TP member {type(mod)}"
            continue  # TP's pseudo-members: element-wise, concat, split, reshape
        if isinstance(mod, nn.BatchNorm2d):
            ios = ("out",)
        elif _is_depthwise(mod):
            ios = ("in", "out")
        elif dg.is_out_channel_pruning_fn(handler):
            ios = ("out",)
        else:
            assert dg.is_in_channel_pruning_fn(handler), handler
            ios = ("in",)
        for io in ios:
            for r, j in zip(item.root_idxs, item.idxs):
                yield names[mod], io, int(r), int(j)


def _fx_members(model, group) -> frozenset:
    return frozenset((n, io) for n, io in group.members
                     if io in ("in", "out") and isinstance(model.get_submodule(n), KINDS))


@pytest.mark.parametrize("name", list(MODELS))
def test_channel_groups(name):
    """Per layer: TP's output-channel group == fxprune's, as (module, in|out) member sets."""
    model, _, analysis, dg = _setup(name)
    names = {m: n for n, m in model.named_modules()}
    fx_sets = [_fx_members(model, g) for g in analysis.groups]

    frozen_producers = {n for g in analysis.groups if g.frozen for n, io in g.members
                        if io == "out" and isinstance(model.get_submodule(n), (nn.Conv2d, nn.Linear))}
    assert frozen_producers == {_classifier(model)}, "difference 1: only the classifier is frozen"

    mismatches = []
    compared = 0
    for lname, layer in _layers(model, dg):
        tp_set = frozenset((n, io) for n, io, _, _ in _tp_items(dg, _tp_group(dg, layer, [0]), names))
        holders = [gi for gi, s in enumerate(fx_sets) if (lname, "out") in s]
        assert len(holders) == 1, f"{lname}.out is in {len(holders)} fxprune groups"
        gi = holders[0]
        if analysis.groups[gi].frozen:
            continue  # the classifier (difference 1)
        compared += 1
        if tp_set != fx_sets[gi]:
            mismatches.append((lname, sorted(fx_sets[gi] - tp_set)[:4], sorted(tp_set - fx_sets[gi])[:4]))
    assert not mismatches, f"{len(mismatches)} groups differ (layer, only fxprune, only TP): {mismatches[:3]}"

    # every prunable fxprune group was compared through at least one of its producers
    prunable = [gi for gi, g in enumerate(analysis.groups) if not g.frozen]
    producers = {gi for gi in prunable if any(
        io == "out" and isinstance(model.get_submodule(n), (nn.Conv2d, nn.Linear)) for n, io in fx_sets[gi])}
    assert producers == set(prunable)
    assert compared >= len(prunable)

    tp_groups = list(dg.get_all_groups(ignored_layers=[model.get_submodule(_classifier(model))]))
    assert len(tp_groups) == len(prunable)


class _UnionFind:
    def __init__(self):
        self.parent: dict = {}

    def find(self, a):
        self.parent.setdefault(a, a)
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a, b):
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[ra] = rb


@pytest.mark.parametrize("name", list(MODELS))
def test_channel_partition(name):
    """Index level: which channel of which member is pruned with which, over all output indices."""
    model, _, analysis, dg = _setup(name)
    names = {m: n for n, m in model.named_modules()}
    classifier = _classifier(model)
    uf = _UnionFind()
    for lname, layer in _layers(model, dg):
        if lname == classifier:
            continue
        n_out = layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features
        for n, io, r, j in _tp_items(dg, _tp_group(dg, layer, list(range(n_out))), names):
            uf.union((n, io, j), ("root", lname, r))
    elements = [e for e in uf.parent if e[0] != "root"]
    # difference 2: TP's pruner removes the same positions in every conv group (its in/out_channel_groups);
    # its DependencyGraph leaves each index apart, so the positions are joined here as fxprune's classes join them
    for n, m in model.named_modules():
        if _is_grouped(m) and m in dg.module2node:
            for io, width in (("in", m.in_channels), ("out", m.out_channels)):
                per_group = width // m.groups
                for j in range(width):
                    uf.union((n, io, j), (n, io, j % per_group))
    def fx_class(n, io, j):
        role = analysis.roles[n]
        return int(analysis.root_of[(role.in_elems if io == "in" else role.out_elems)[j]])

    pairs = {(uf.find(e), fx_class(*e)) for e in elements}
    tp_classes = {uf.find(e) for e in elements}
    fx_classes = {c for _, c in pairs}
    assert len(pairs) == len(tp_classes) == len(fx_classes), (
        f"partitions differ: {len(tp_classes)} TP classes, {len(fx_classes)} fxprune classes, {len(pairs)} pairs")

    # and the channels compared are exactly those of fxprune's prunable groups
    prunable_roots = np.concatenate([g.roots for g in analysis.groups if not g.frozen])
    covered = set()
    for n, role in analysis.roles.items():
        if not isinstance(model.get_submodule(n), KINDS):
            continue
        for io, el in (("in", role.in_elems), ("out", role.out_elems)):
            if el is not None:
                covered |= {(n, io, int(j)) for j in np.nonzero(np.isin(analysis.root_of[el], prunable_roots))[0]}
    assert covered == set(elements)


def _tp_prune(model, x):
    model = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tp.pruner.MagnitudePruner(
            model, x, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=RATIO,
            ignored_layers=[model.get_submodule(_classifier(model))],
        ).step()
    return model


def _widths(model) -> dict[str, tuple[int, int]]:
    return {n: (m.in_channels, m.out_channels) if isinstance(m, nn.Conv2d) else (m.in_features, m.out_features)
            for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


@pytest.mark.parametrize("name", list(MODELS))
def test_l1_prune_counts(name):
    """Same l1 ratio: same widths, params and conv+linear MACs."""
    model, x, _, _ = _setup(name)
    small = fxprune.prune(model, x, criterion="l1", ratio=RATIO, **OPTIONS.get(name, {}))
    theirs = _tp_prune(model, x)
    ours_w, theirs_w = _widths(small), _widths(theirs)

    for n in ours_w:
        assert ours_w[n] == theirs_w[n], f"{n}: fxprune {ours_w[n]}, TP {theirs_w[n]}"

    a, b = count(small, x), count(theirs, x)
    assert (a.params, a.macs_conv_linear) == (b.params, b.macs_conv_linear), (
        f"fxprune {a.params} params, {a.macs_conv_linear} MACs; TP {b.params}, {b.macs_conv_linear}")


def test_whole_groups_keep_more_than_tp():
    """Difference 2, fxprune's default: regnet_y_400mf's 16 grouped convs keep ``int(G * 0.7)`` whole groups
    of 8 where TP keeps every group with ``int(8 * 0.7) = 5`` channels, so fxprune's model is larger."""
    model, x, _, _ = _setup("regnet_y_400mf")
    whole, within = (fxprune.prune(model, x, criterion="l1", ratio=RATIO, grouped_convs=m) for m in ("whole", "within"))
    theirs = _tp_prune(model, x)
    for name, conv in model.named_modules():
        if _is_grouped(conv):
            w = conv.out_channels // conv.groups
            assert whole.get_submodule(name).out_channels == kept_count(conv.groups, RATIO) * w
            assert within.get_submodule(name).out_channels == conv.groups * int(w * (1 - RATIO))
    a, b = count(whole, x), count(theirs, x)
    assert abs((a.params - b.params) / b.params - 0.1255) <= 0.005
    assert abs((a.macs_conv_linear - b.macs_conv_linear) / b.macs_conv_linear - 0.1700) <= 0.005


def test_googlenet_aux_heads():
    """Difference 3: with its train-only aux heads, TP keeps them (unpruned), fxprune drops them."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = torchvision.models.googlenet(weights=None, init_weights=True).eval()
    x = torch.randn(1, 3, SIZE, SIZE)
    small = fxprune.prune(model, x, criterion="l1", ratio=RATIO)
    theirs = _tp_prune(model, x)
    a, b = count(small, x), count(theirs, x)
    aux = sum(p.numel() for m in (model.aux1, model.aux2) for p in m.parameters())
    assert a.macs_conv_linear == b.macs_conv_linear
    assert b.params - a.params == aux
    assert theirs.aux1.conv.conv.in_channels == model.aux1.conv.conv.in_channels  # left as it was
    assert not any(n.startswith("aux") for n, _ in small.named_modules())


def test_shufflenet_only_fxprune():
    """Difference 4: Torch-Pruning fails on ShuffleNet v2's channel shuffle; fxprune prunes it channel by
    channel: every prunable group has as many classes as its widest conv has output channels."""
    torch.manual_seed(0)
    model = randomize(torchvision.models.get_model("shufflenet_v2_x1_0", weights=None))
    x = torch.randn(2, 3, SIZE, SIZE)
    with pytest.raises(ZeroDivisionError):
        tp.DependencyGraph().build_dependency(model, example_inputs=x)
    analysis = fxprune.analyze(model, x)
    modules = dict(model.named_modules())
    for g in analysis.groups:
        widths = [modules[m].out_channels for m, io in g.members if io == "out" and isinstance(modules[m], nn.Conv2d)]
        if not g.frozen and widths:
            assert g.n_classes >= max(widths), str(g)
    small, _ = prune_and_check(model, x, criterion="l1", ratio=RATIO)
    assert count(small, x).params < count(model, x).params
