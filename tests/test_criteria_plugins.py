"""The papers' criteria as plug-ins: known answers on hand-built weights, masked equivalence on
ResNet-18 / ResNet-20 for every criterion, the model untouched, and the registry."""
import copy
import logging

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import fxprune
from fxprune.models import get_model
from passes import criteria as registry
from passes.criteria import ScoringContext
from passes.criteria.fmc import fmc_scores
from passes.criteria.taylor import taylor_scores
from conftest import assert_state_unchanged, prune_and_check, randomize, state_copy

X8 = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
Y8 = torch.tensor([0, 1, 2, 3])


class TwoConv(nn.Module):
    """conv1 -> (bn) -> relu -> conv2 -> mean: only conv1's output group is prunable."""

    def __init__(self, c: int = 8, bn: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c) if bn else nn.Identity()
        self.conv2 = nn.Conv2d(c, 4, 3, padding=1)

    def forward(self, x):
        return self.conv2(torch.relu(self.bn(self.conv1(x)))).mean((2, 3))


class Residual(nn.Module):
    """Two conv+BN branches added: one coupled group normalized by two BNs."""

    def __init__(self):
        super().__init__()
        self.conv_a, self.bn_a = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv_b, self.bn_b = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.head(torch.relu(self.bn_a(self.conv_a(x)) + self.bn_b(self.conv_b(x)))).mean((2, 3))


def dropped(model, criterion, ratio, module="conv1", **kw):
    """Output channels of ``module`` the plan removes."""
    p = fxprune.plan(model, X8, criterion=criterion, ratio=ratio, **kw)
    n = model.get_submodule(module).weight.shape[0]
    return sorted(set(range(n)) - set(p.modules[module]["out"]))


def test_registry_lists_every_criterion():
    assert {"l1", "l2", "bn", "taylor", "random", "coring", "fmc", "graph", "nonzero"} <= set(fxprune.criteria())


def test_register_criterion_function():
    fxprune.register_criterion("mine", lambda ctx, group: -np.arange(group.n_classes, dtype=float))
    try:
        assert "mine" in fxprune.criteria()
        assert dropped(TwoConv().eval(), "mine", 0.5) == [4, 5, 6, 7]
    finally:
        registry._REGISTRY.pop("mine")


# ---- weight norms ----------------------------------------------------------------------------------
def test_l2_differs_from_l1_on_a_known_answer():
    """All-ones filter: L1 27, L2 5.2; one-spike filter: L1 6, L2 6. l2 drops the first, l1 the second."""
    model = TwoConv().eval()
    with torch.no_grad():
        model.conv1.weight.copy_(torch.randn(8, 3, 3, 3, generator=torch.Generator().manual_seed(0)) * 10)
        model.conv1.weight[2] = 1.0
        model.conv1.weight[6] = 0.0
        model.conv1.weight[6, 0, 0, 0] = 6.0
    assert dropped(model, "l2", 0.125) == [2]
    assert dropped(model, "l1", 0.125) == [6]
    assert dropped(model, "l2", 0.25) == [2, 6]


def test_bn_gamma_magnitude_single_norm():
    model = TwoConv(bn=True).eval()
    with torch.no_grad():
        model.bn.weight.copy_(torch.tensor([1.0, 2.0, -3.0, 0.01, 0.5, 1.5, -0.2, 4.0]))
    assert dropped(model, "bn", 0.25) == [3, 6]  # |γ| = 0.01 and 0.2; -3 counts as 3


def test_bn_sums_the_norms_of_a_coupled_group():
    """|γ_a| + |γ_b| = [3.2, 3.5, 2.2, 2.0]: neither BN's own minimum (a: 1, b: 0) is dropped."""
    model = Residual().eval()
    with torch.no_grad():
        model.bn_a.weight.copy_(torch.tensor([3.0, 0.5, 1.0, 1.0]))
        model.bn_b.weight.copy_(torch.tensor([0.2, 3.0, 1.2, 1.0]))
    assert dropped(model, "bn", 0.25, module="conv_a") == [3]
    assert dropped(model, "bn", 0.25, module="conv_b") == [3]


def test_bn_without_norm_falls_back_to_l1_and_warns(caplog):
    from passes.criteria import bn

    bn._warned.clear()
    model = randomize(TwoConv())
    with caplog.at_level(logging.WARNING, logger="passes.criteria.bn"):
        got = dropped(model, "bn", 0.5)
        dropped(model, "bn", 0.5)
    assert got == dropped(model, "l1", 0.5)
    assert sum("scoring such groups by l1" in r.getMessage() for r in caplog.records) == 1


# ---- taylor ------------------------------------------------------------------------------------------
def test_taylor_known_answers_and_hand_computed_values():
    """A zero filter (w = 0) and a filter nobody reads (∂L/∂w = 0) score 0 and go first."""
    model = randomize(TwoConv())
    with torch.no_grad():
        model.conv1.weight[3] = 0.0
        model.conv2.weight[:, 5] = 0.0
    data = [(X8[:2], Y8[:2]), (X8[2:], Y8[2:])]
    assert dropped(model, "taylor", 0.25, data=data) == [3, 5]

    ref = copy.deepcopy(model)
    loss = sum(nn.functional.cross_entropy(ref(x), y, reduction="sum") for x, y in data) / 4
    loss.backward()
    want = (ref.conv1.weight * ref.conv1.weight.grad).sum((1, 2, 3)).abs().detach().double().numpy()
    ctx = ScoringContext(fxprune.analyze(model, X8), data=data)
    np.testing.assert_allclose(taylor_scores(ctx)["conv1"], want, rtol=1e-6, atol=1e-12)


def test_taylor_leaves_the_model_and_its_grads_untouched():
    model = randomize(TwoConv(bn=True)).train()
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    before = state_copy(model)
    fxprune.plan(model, X8, criterion="taylor", ratio=0.5, data=[(X8, Y8)])
    assert_state_unchanged(model, before)
    assert model.training
    assert all(torch.equal(p.grad, torch.full_like(p, 7.0)) for p in model.parameters())


def test_taylor_needs_labelled_data():
    with pytest.raises(fxprune.PlanError, match="taylor"):
        fxprune.plan(TwoConv(), X8, criterion="taylor", ratio=0.5)
    with pytest.raises(fxprune.PlanError, match="targets"):
        fxprune.plan(TwoConv(), X8, criterion="taylor", ratio=0.5, data=[X8])


def test_taylor_takes_a_loss_for_outputs_that_are_not_class_logits():
    """A sequence recognizer's (N, T, classes) output: the default cross-entropy cannot read it, and says so
    with both shapes; loss= scores with the user's loss, equal to the default on a flattened copy of it."""
    from test_op_rules import CRNN

    model = randomize(CRNN("GRU"))
    x = torch.randn(4, 1, 16, 24, generator=torch.Generator().manual_seed(0))
    targets = torch.randint(0, 7, (4, 12), generator=torch.Generator().manual_seed(1))  # 24 / 2 columns
    with pytest.raises(fxprune.PlanError, match=r"output \(4, 12, 7\) and the targets \(4, 12\).*loss=fn"):
        fxprune.plan(model, x, criterion="taylor", ratio=0.5, data=[(x, targets)])

    def sequence_loss(out, y):
        return nn.functional.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="sum")

    small, _ = prune_and_check(model, x, criterion="taylor", ratio=0.5, data=[(x, targets)], loss=sequence_loss)
    ctx = ScoringContext(fxprune.analyze(model, x), data=[(x, targets)], options={"loss": sequence_loss})
    ref = copy.deepcopy(model)
    sequence_loss(ref(x), targets).backward()
    w = ref.get_submodule("cnn.4").weight
    want = (w.double() * w.grad.double()).sum((1, 2, 3)).abs().detach().numpy() / 4
    np.testing.assert_allclose(taylor_scores(ctx)["cnn.4"], want, rtol=1e-5, atol=1e-12)
    with pytest.raises(fxprune.PlanError, match="loss= must be a function"):
        fxprune.plan(model, x, criterion="taylor", ratio=0.5, data=[(x, targets)], loss="ctc")


# ---- random ------------------------------------------------------------------------------------------
def test_random_is_seeded_and_deterministic():
    model = randomize(TwoConv(c=32))
    a, b = dropped(model, "random", 0.5), dropped(model, "random", 0.5)
    c = dropped(model, "random", 0.5, seed=1)
    assert a == b and len(a) == 16 and a != c


# ---- coring and fmc ------------------------------------------------------------------------------------
def _repeated_filters(model: TwoConv, distinct: int, seed: int = 0) -> torch.Tensor:
    """conv1 holds ``distinct`` random filters, each repeated, shuffled; returns the filter id per channel."""
    g = torch.Generator().manual_seed(seed)
    n = model.conv1.out_channels
    ids = (torch.arange(n) % distinct)[torch.randperm(n, generator=g)]
    base = torch.randn(distinct, 3, 3, 3, generator=g)
    with torch.no_grad():
        model.conv1.weight.copy_(base[ids])
        model.conv1.bias.copy_(torch.randn(distinct, generator=g)[ids] * 0.1)
    return ids


@pytest.mark.parametrize("distance", ["V", "E", "C"])
def test_coring_keeps_one_of_each_repeated_filter(distance):
    """16 distinct filters x 4 copies, 75% pruned: CORING removes copies first, so one of each stays."""
    model = TwoConv(c=64).eval()
    ids = _repeated_filters(model, 16)
    p = fxprune.plan(model, X8, criterion="coring", ratio=0.75, distance=distance)
    kept = p.modules["conv1"]["out"]
    assert sorted(ids[kept].tolist()) == list(range(16))


def test_fmc_scores_relu_maps_of_the_producer():
    """Known answer for the wiring: the plan keeps the top -RI of fmc_scores(ReLU(conv1(x))).

    (FP-FMC cannot deduplicate: copies of a filter have the same maps, so they are clustered alike and
    get the same redundancy index; it ranks by consistent cluster membership, not by nearest copies.)
    """
    model = randomize(TwoConv(c=16))
    with torch.no_grad():
        want = fmc_scores(torch.relu(model.conv1(X8)), seed=0, k=3)
    p = fxprune.plan(model, X8, criterion="fmc", ratio=0.5, data=[(X8[:2], Y8[:2]), (X8[2:], Y8[2:])], k=3)
    assert p.modules["conv1"]["out"] == sorted(np.argsort(-want, kind="stable")[:8].tolist())


def test_fmc_needs_data():
    with pytest.raises(fxprune.PlanError, match="fmc"):
        fxprune.plan(TwoConv(), X8, criterion="fmc", ratio=0.5)
    with pytest.raises(fxprune.PlanError, match="at least 2"):
        fxprune.plan(TwoConv(), X8, criterion="fmc", ratio=0.5, data=[X8[:1]], k=2)


# ---- every criterion on real architectures -------------------------------------------------------------
def _options(criterion: str, x: torch.Tensor) -> dict:
    """Data-driven criteria get one labelled batch; fmc a fixed K (the K search is slow on wide layers)."""
    y = torch.arange(x.shape[0]) % 10
    return {"taylor": {"data": [(x, y)]}, "fmc": {"data": [(x, y)], "k": 4}}.get(criterion, {})


CRITERIA = ["l2", "bn", "taylor", "random", "coring", "fmc"]


@pytest.mark.parametrize("criterion", CRITERIA)
def test_every_criterion_on_resnet18(criterion):
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    model = randomize(torchvision.models.resnet18(num_classes=10))
    small, err = prune_and_check(model, x, criterion=criterion, ratio=0.3, **_options(criterion, x))
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("criterion", CRITERIA)
def test_every_criterion_on_resnet20(criterion):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    model = randomize(get_model("resnet20"))
    small, err = prune_and_check(model, x, criterion=criterion, ratio=0.3, **_options(criterion, x))
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())


class ConvThenChannelLinear(nn.Module):
    """conv1 -> a Linear over the channels (channels-last) -> conv2: both conv1 and lin are prunable."""

    def __init__(self):
        super().__init__()
        self.conv1, self.lin, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 6), nn.Conv2d(6, 4, 1)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = self.lin(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.conv2(x).mean((2, 3))


def test_observed_maps_of_convs_are_read_by_their_own_reducer():
    """A Linear's reducer (features on the last axis) asked for first must not be applied to the convs:
    only a conv's request fetches the other convs' maps in the same pass."""
    model = randomize(ConvThenChannelLinear())
    ctx = ScoringContext(fxprune.analyze(model, X8), data=[X8])
    ctx.observe(["lin"], lambda out: out.movedim(-1, 1), "maps", 4)
    got = ctx.observe(["conv1"], lambda out: out.clone(), "maps", 4)
    with torch.no_grad():
        assert torch.equal(got["conv1"], model.conv1(X8))
