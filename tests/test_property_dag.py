"""Property: plan -> apply -> verify holds on random *graphs* (branches that merge again), not only chains.

Each generated network keeps a pool of tensors (same spatial size) and appends ops that read one or
two of them: convs (plain, grouped, depthwise, 1x1), batch norm, activations, residual add and
multiply, SE gating, channel concat, chunk (halves added, or swapped: pruned apart), uneven split, a view
into two heads then chunked along the head dim or indexed by head, channel slices (strided ones freeze),
channel shuffle, repeat, roll and flip, channel pad, ``torch.where`` on a comparison, a clamp bounded by
another tensor's spatial means per channel, a masked fill, a stack with a lerp, a cat of one node holding
the pieces, a conv sharing an earlier conv's weight, ``F.conv2d`` on an earlier conv's weight, a transposed
conv, a linear layer over channels (permute - linear - permute), flatten -> linear, LayerNorm over channels, channel means (which mix
channels and must freeze), pooling and upsampling. A head reads a random subset of the pool. Pruned
with ``l1`` at a random ratio, per group or network-wide, optionally ``round_to``, and ``strict``
(mixing groups frozen, so verify is exact).

``FXPRUNE_FUZZ_EXAMPLES=2000`` runs a longer search than CI's.
"""
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from torch import nn

import fxprune
from conftest import fuzz_examples, prune_and_check, randomize, rejecting_vacuous_examples

OPS = ["conv3", "conv1", "grouped", "depthwise", "bn", "relu", "add", "mul", "se", "cat", "chunk", "slice",
       "shuffle", "pad", "linear", "layernorm", "chanmean", "pool", "repeat", "roll", "flip", "split", "where",
       "stride", "upsample", "dense", "tied", "fconv", "upconv", "shift", "halves", "heads", "pick", "clamp",
       "maskfill", "stack", "catpieces"]


class RandomGraphNet(nn.Module):
    """A DAG of channel ops over a pool of tensors; ``steps`` are (op, input picks, width) triples."""

    def __init__(self, steps, head_picks):
        super().__init__()
        self.layers = nn.ModuleDict()
        self.program = []  # (op, input indices, layer name or None, extra)
        widths = [8]  # the stem's output
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        for i, (op, picks, w) in enumerate(steps):
            self._add(i, op, [p % len(widths) for p in picks], max(2, w), widths)
        chosen = sorted({p % len(widths) for p in head_picks}) or [len(widths) - 1]
        self.head_inputs = chosen
        self.head = nn.Linear(sum(widths[j] for j in chosen), 6)

    def _add(self, i, op, picks, w, widths):
        a, b = picks[0], picks[1]
        ca, name = widths[a], f"l{i}"
        if op in ("conv3", "conv1"):
            self.layers[name] = nn.Conv2d(ca, w, 3 if op == "conv3" else 1, padding=1 if op == "conv3" else 0)
            out = w
        elif op == "grouped":  # groups of 2-3 input channels, often spanning the pieces of a concat
            g = next((g for g in (4, 3, 2) if ca % g == 0 and ca > g), 1)
            out = g * max(1, w // g)
            self.layers[name] = nn.Conv2d(ca, out, 3, padding=1, groups=g)
        elif op == "depthwise":
            self.layers[name] = nn.Conv2d(ca, ca, 3, padding=1, groups=ca)
            out = ca
        elif op == "bn":
            self.layers[name] = nn.BatchNorm2d(ca)
            out = ca
        elif op in ("add", "mul"):
            if widths[b] != ca:  # project b to a's width first
                self.layers[name] = nn.Conv2d(widths[b], ca, 1)
            out = ca
        elif op == "se":
            self.layers[name] = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(ca, 3, 1), nn.ReLU(),
                                              nn.Conv2d(3, ca, 1))
            out = ca
        elif op == "cat":
            out = ca + widths[b]
        elif op in ("chunk", "shuffle", "halves", "pick", "catpieces") and ca % 2 or op == "heads" and ca % 4 or op in ("slice", "split") and ca <= 2:
            return self._add(i, "relu", picks, w, widths)
        elif op in ("chunk", "heads", "pick"):
            out = ca // 2
        elif op == "slice":
            out = ca - 2
        elif op == "pad":
            out = ca + 2
        elif op == "linear":
            self.layers[name] = nn.Linear(ca, w)
            out = w
        elif op == "layernorm":
            self.layers[name] = nn.LayerNorm(ca)
            out = ca
        elif op == "repeat":
            out = 2 * ca
        elif op == "split":
            out = ca - 1  # the larger part of sections (1, C - 1)
        elif op == "stride":
            out = (ca + 1) // 2
        elif op in ("where", "clamp", "maskfill", "stack"):  # b's channels meet a's: projected to a's width
            if widths[b] != ca:
                self.layers[name] = nn.Conv2d(widths[b], ca, 1)
            out = ca
        elif op == "upconv":  # a transposed conv keeping the size (stride 1, padding 1)
            self.layers[name] = nn.ConvTranspose2d(ca, w, 3, padding=1)
            out = w
        elif op in ("tied", "fconv"):
            earlier = self._conv_reading(ca)
            if earlier is None:
                return self._add(i, "conv3" if op == "tied" else "relu", picks, w, widths)
            if op == "fconv":  # F.conv2d on the earlier layer's own weight, that layer not called here
                self.program.append((op, (a, b), earlier))
                widths.append(self.layers[earlier].out_channels)
                return
            conv = self.layers[earlier]
            self.layers[name] = nn.Conv2d(ca, conv.out_channels, conv.kernel_size, padding=conv.padding)
            self.layers[name].weight = conv.weight  # a weight-shared layer
            out = conv.out_channels
        elif op == "dense":  # flatten -> linear -> back to a 1x1 map: every channel owns H*W features
            self.layers[name] = nn.Linear(ca * 8 * 8, w)
            out = w
        else:  # relu, shuffle, pool, chanmean, roll, flip, upsample, shift, halves, catpieces
            out = ca
        self.program.append((op, (a, b), name if name in self.layers else None))
        widths.append(out)

    def _conv_reading(self, channels):
        """An earlier ungrouped conv layer reading ``channels`` channels, if any."""
        return next((n for n, m in self.layers.items()
                     if isinstance(m, nn.Conv2d) and m.groups == 1 and m.in_channels == channels), None)

    def forward(self, x):
        pool = [self.stem(x)]
        for op, (a, b), name in self.program:
            pool.append(self._run(op, pool[a], pool[b], self.layers[name] if name else None))
        feats = [F.adaptive_avg_pool2d(pool[j], 1).flatten(1) for j in self.head_inputs]
        return self.head(torch.cat(feats, 1))

    @staticmethod
    def _run(op, x, y, layer):
        if op in ("conv3", "conv1", "grouped", "depthwise", "bn", "tied", "upconv"):
            return layer(x)
        if op == "fconv":
            return F.conv2d(x, layer.weight, layer.bias, padding=layer.padding)
        if op == "relu":
            return F.relu(x)
        if op in ("add", "mul"):
            y = layer(y) if layer is not None else y
            return x + y if op == "add" else x * torch.sigmoid(y)
        if op == "se":
            return x * torch.sigmoid(layer(x))
        if op == "cat":
            return torch.cat([x, y], 1)
        if op == "chunk":
            first, second = x.chunk(2, 1)
            return first + second
        if op == "halves":
            first, second = x.chunk(2, 1)
            return torch.cat([F.relu(second), first], 1)
        if op in ("heads", "pick"):
            n, c, h, w = x.shape
            if op == "pick":
                return x.view(n, 2, c // 2, h, w)[:, 1]
            q, v = x.view(n, 2, c // 2, h * w).chunk(2, dim=2)
            return (torch.sigmoid(q) * v).reshape(n, c // 2, h, w)
        if op == "slice":
            return x[:, 1:-1]
        if op == "shuffle":
            n, c, h, w = x.shape
            return x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        if op == "pad":
            return F.pad(x, (0, 0, 0, 0, 1, 1))
        if op in ("linear", "layernorm"):
            return layer(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        if op == "chanmean":
            return x - x.mean(1, keepdim=True)
        if op == "repeat":
            return x.repeat(1, 2, 1, 1)
        if op == "roll":
            return torch.roll(x, 1, 1)
        if op == "shift":  # a spatial roll (shifted windows): channels pass
            return x.roll((1, -2), (2, 3))
        if op == "flip":
            return x.flip(1)
        if op == "split":
            return torch.split(x, [1, x.shape[1] - 1], 1)[1]
        if op == "stride":
            return x[:, ::2]
        if op == "where":
            y = layer(y) if layer is not None else y
            return torch.where(y > 0, x, -x)
        if op in ("clamp", "maskfill"):
            y = layer(y) if layer is not None else y
            if op == "clamp":  # a per-channel bound computed from another tensor
                return x.clamp(min=F.adaptive_avg_pool2d(y, 1))
            return x.masked_fill(y.abs() > 1, 0.0).pow(2)
        if op == "stack":
            y = layer(y) if layer is not None else y
            return torch.stack([x, torch.lerp(x, y, 0.25)], 1).amax(1)
        if op == "catpieces":  # one node holding the pieces: the halves swapped
            return torch.cat(x.chunk(2, 1)[::-1], 1)
        if op == "upsample":
            return F.interpolate(F.avg_pool2d(x, 2), scale_factor=2.0, mode="nearest")
        if op == "dense":
            n = x.shape[0]
            return layer(x.flatten(1)).view(n, -1, 1, 1).expand(n, -1, 8, 8)
        return F.max_pool2d(x, 3, 1, 1)


GRAPHS = dict(
    steps=st.lists(st.tuples(st.sampled_from(OPS), st.tuples(st.integers(0, 50), st.integers(0, 50)),
                             st.integers(2, 10)), min_size=1, max_size=10),
    head_picks=st.lists(st.integers(0, 50), min_size=1, max_size=3),
    seed=st.integers(0, 1000),
    grouped_convs=st.sampled_from(["whole", "within", "auto"]),
)


def _net_and_input(steps, head_picks, seed, grouped_convs):
    """The generated network, its example input, and whether to plan ``strict`` (mixing groups frozen, so
    verify is exact; which groups mix depends on how grouped convs couple channels)."""
    net = randomize(RandomGraphNet(steps, head_picks), seed)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    return net, x, bool(fxprune.analyze(net, x, grouped_convs=grouped_convs).mixing_groups())


@settings(max_examples=fuzz_examples(100), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**GRAPHS, ratio=st.floats(0.0, 0.8), round_to=st.sampled_from([None, 2]), global_ratio=st.booleans())
@example(  # a LayerNorm group that mixes only when grouped convs couple positions within their groups
    steps=[("conv3", (0, 0), 2), ("conv3", (0, 0), 2), ("chanmean", (0, 0), 2), ("grouped", (0, 0), 8),
           ("layernorm", (24, 0), 2)],
    head_picks=[29], ratio=0.5, round_to=None, global_ratio=False, seed=0, grouped_convs="within")
def test_plan_apply_verify_on_random_graphs(steps, head_picks, ratio, round_to, global_ratio, seed, grouped_convs):
    net, x, strict = _net_and_input(steps, head_picks, seed, grouped_convs)
    with rejecting_vacuous_examples():
        small, _ = prune_and_check(net, x, criterion="l1", ratio=ratio, round_to=round_to,
                                   global_ratio=global_ratio, strict=strict, grouped_convs=grouped_convs)
    assert small(x).shape == (2, 6)


@settings(max_examples=fuzz_examples(40), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**GRAPHS, criterion=st.sampled_from(fxprune.criteria()), ratio=st.floats(0.0, 0.8),
       global_ratio=st.booleans(), threshold=st.none() | st.floats(0.05, 1.0))
def test_every_criterion_keeps_the_compact_model_exact_on_random_graphs(steps, head_picks, seed, grouped_convs,
                                                                        criterion, ratio, global_ratio, threshold):
    """Whatever a criterion scores (weights, BN scales, feature maps and gradients of calibration batches,
    tensor decompositions, clusters), the compact model it plans is the masked original."""
    net, x, strict = _net_and_input(steps, head_picks, seed, grouped_convs)
    g = torch.Generator().manual_seed(seed)
    data = [(torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 6, (4,), generator=g))]
    budget = {"threshold": threshold} if criterion == "graph" and threshold is not None else \
        {"ratio": ratio, "global_ratio": global_ratio}
    with rejecting_vacuous_examples():
        small, _ = prune_and_check(net, x, criterion=criterion, data=data, strict=strict,
                                   grouped_convs=grouped_convs, **budget)
    assert small(x).shape == (2, 6)
