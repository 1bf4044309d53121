"""Soft filter pruning: the hook zeroes exactly the lowest-L2 classes of every group, ASFP's schedule,
and hard_prune gives the compact model that equals the soft one (masked; unmasked without BN)."""
import numpy as np
import pytest
import torch
from torch import nn

import fxprune
from fxprune.data import load_dataset
from fxprune.models import get_model
from fxprune.runner import finetune
from fxprune.soft import SoftFilterPruning, asymptotic_fraction
from passes.criteria import ScoringContext
from passes.criteria.l2 import filter_l2
from passes.select import kept_count
from conftest import randomize

X32 = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


class Plain(nn.Module):
    """conv+bias -> ReLU chains, no BN: a zeroed filter's channel is exactly 0 where it is read."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 24, 3, padding=1), nn.Conv2d(24, 8, 1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.c2(torch.relu(self.c1(x))))
        return self.fc(torch.relu(self.c3(x)).mean((2, 3)))


def producer_rows(sfp: SoftFilterPruning):
    """(group index, module name, output rows) of every producer in every zeroed group."""
    ctx = ScoringContext(sfp.analysis)
    for gi, drop in sfp.zeroed.items():
        for p in ctx.producers(sfp.analysis.groups[gi]):
            zero = np.isin(p.classes, drop)
            yield gi, p.role.name, np.flatnonzero(zero), np.flatnonzero(~zero & (p.classes >= 0))


def check_zeroed(model: nn.Module, sfp: SoftFilterPruning, ratio: float) -> int:
    """Zeroed rows are exactly 0 (weights and bias), kept rows are not, and counts match int(N(1-r))."""
    groups = sfp.analysis.groups
    expected = {gi for gi, g in enumerate(groups) if not g.frozen and kept_count(g.n_classes, ratio) < g.n_classes}
    assert set(sfp.zeroed) == expected
    for gi, drop in sfp.zeroed.items():
        assert len(drop) == groups[gi].n_classes - kept_count(groups[gi].n_classes, ratio)
    rows_checked = 0
    for _, name, zero, keep in producer_rows(sfp):
        mod = model.get_submodule(name)
        assert torch.count_nonzero(mod.weight.detach()[zero]) == 0, name
        if mod.bias is not None:
            assert torch.count_nonzero(mod.bias.detach()[zero]) == 0, name
        assert all(torch.count_nonzero(mod.weight.detach()[i]) > 0 for i in keep), name
        rows_checked += len(zero)
    return rows_checked


def test_asymptotic_schedule_anchors():
    t = np.arange(0, 41)
    f = np.array([asymptotic_fraction(s, 40) for s in t])
    assert f[0] == 0.0 and f[40] == 1.0 and abs(f[10] - 0.75) < 1e-12
    assert np.all(np.diff(f) > 0) and asymptotic_fraction(50, 40) == 1.0


def test_hook_zeroes_the_lowest_l2_classes_and_not_bn():
    model = randomize(get_model("resnet20"))
    bn_before = {k: v.clone() for k, v in model.state_dict().items() if "bn" in k}
    sfp = SoftFilterPruning(model, X32, ratio=0.3)
    ctx = ScoringContext(sfp.analysis)
    expected = {}
    for gi, g in enumerate(sfp.analysis.groups):
        if not g.frozen:
            n_drop = g.n_classes - kept_count(g.n_classes, 0.3)
            expected[gi] = np.sort(np.argsort(ctx.class_sum(g, filter_l2))[:n_drop])
    sfp(model, 0)
    assert check_zeroed(model, sfp, 0.3) > 0
    assert {gi: d.tolist() for gi, d in sfp.zeroed.items()} == {gi: d.tolist() for gi, d in expected.items()}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in bn_before.items())


def test_zeroed_filters_can_regrow():
    """A zeroed filter that training makes the strongest is kept the next epoch (soft pruning)."""
    model = randomize(Plain())
    sfp = SoftFilterPruning(model, X32, ratio=0.5)
    sfp.start(model)
    assert sfp.zeroed and check_zeroed(model, sfp, 0.5)
    zeroed_c2 = [c for gi, name, zero, _ in producer_rows(sfp) if name == "c2" for c in zero.tolist()]
    with torch.no_grad():
        model.c2.weight[zeroed_c2[0]] = 10.0
    sfp(model, 0)
    assert model.c2.weight[zeroed_c2[0]].abs().min() == 10.0
    assert zeroed_c2[0] not in [c for gi, name, zero, _ in producer_rows(sfp) if name == "c2" for c in zero.tolist()]
    check_zeroed(model, sfp, 0.5)


def test_asfp_ratio_grows_to_the_target():
    model = randomize(Plain())
    sfp = SoftFilterPruning(model, X32, ratio=0.5, asymptotic=True, total_epochs=4)
    sfp.start(model)
    assert sfp.zeroed == {}
    counts = []
    for epoch in range(4):
        sfp(model, epoch)
        counts.append(sum(len(d) for d in sfp.zeroed.values()))
        check_zeroed(model, sfp, sfp.ratio_at(epoch + 1))
    assert counts == sorted(counts) and counts[0] > 0
    assert sfp.ratio_at(4) == 0.5 and abs(sfp.ratio_at(1) - 0.375) < 1e-12


def test_soft_equals_compact_without_bn():
    """No BN: zeroed weights and biases make the channels exactly 0, so even the unmasked soft model
    equals the compact one."""
    model = randomize(Plain())
    sfp = SoftFilterPruning(model, X32, ratio=0.4)
    sfp(model, 0)
    small = sfp.hard_prune(model)
    fxprune.verify(model, small, X32)
    with torch.no_grad():
        a, b = model.eval()(X32), small.eval()(X32)
    assert float((a - b).norm() / a.norm()) <= 1e-5
    assert small.get_submodule("c2").out_channels == kept_count(24, 0.4)


def test_soft_pruning_zeroes_a_transposed_convs_filters_which_are_weight_columns():
    from test_op_rules import Decoder

    model = randomize(Decoder())
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    sfp = SoftFilterPruning(model, x, ratio=0.5)
    sfp(model, 0)
    zeroed = [c for c in range(12) if not model.up.weight[:, c].any()]
    assert len(zeroed) == 12 - kept_count(12, 0.5) and not model.up.bias[zeroed].any()
    small = sfp.hard_prune(model)
    assert small.up.out_channels == kept_count(12, 0.5)
    assert sorted(set(range(12)) - set(small.meta["fxprune.plan"].modules["up"]["out"])) == zeroed


def test_errors():
    model = randomize(Plain())
    with pytest.raises(fxprune.PlanError, match="total_epochs"):
        SoftFilterPruning(model, X32, ratio=0.3, asymptotic=True)
    with pytest.raises(fxprune.PlanError, match="ratio"):
        SoftFilterPruning(model, X32, ratio=1.5)
    with pytest.raises(fxprune.PlanError, match="hook"):
        SoftFilterPruning(model, X32, ratio=0.3).hard_prune(model)


def test_finetune_with_sfp_then_hard_prune_on_digits():
    """Two short epochs on digits with the hook: zeros are exact after every epoch, the compact model
    removes exactly the zeroed classes and equals the soft model with them masked (fxprune.verify)."""
    torch.manual_seed(0)
    model = get_model("resnet20")
    sfp = SoftFilterPruning(model, X32, ratio=0.3)
    seen = []
    train, val = load_dataset("digits", split="train"), load_dataset("digits", split="test")
    finetune(model, train, val, epochs=2, batch_size=32, lr=0.05, device="cpu", progress=False,
             max_steps_per_epoch=3, epoch_end_hooks=[sfp, lambda m, e: seen.append(check_zeroed(m, sfp, 0.3))])
    assert len(seen) == 2 and all(n > 0 for n in seen)

    x = torch.stack([val[i][0] for i in range(8)])
    small = sfp.hard_prune(model)
    assert fxprune.verify(model, small, x) <= 1e-5
    plan = small.meta["fxprune.plan"].modules
    for _, name, zero, keep in producer_rows(sfp):
        assert plan[name]["out"] == sorted(keep.tolist()), name
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
