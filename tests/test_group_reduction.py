"""``group_reduction``: a class scores the sum (default) or the mean over the filters writing it.

The two differ only where the classes of one group have different numbers of writers, as in a
CSP stage: one half of a conv's channels runs through residual blocks (written by three convs),
the other half goes straight to the concat (written by one).
"""
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import fxprune
from conftest import prune_and_check, randomize
from passes.errors import PlanError


class CrossStage(nn.Module):
    def __init__(self):
        super().__init__()
        self.expand = nn.Conv2d(3, 8, 1)
        self.blocks = nn.ModuleList(nn.Conv2d(4, 4, 3, padding=1) for _ in range(2))
        self.head = nn.Conv2d(8, 5, 1)

    def forward(self, x):
        through, past = self.expand(x).split(4, 1)
        for block in self.blocks:
            through = through + block(F.relu(through))
        return self.head(torch.cat([through, past], 1))


def _cross_stage() -> CrossStage:
    """Every filter writing the stage's channels has L1 norm 1, except that the four filters of the half
    that skips the blocks have 1.2: per filter they weigh more, summed over writers less (1.2 < 3)."""
    model = randomize(CrossStage())
    with torch.no_grad():
        for conv in (model.expand, *model.blocks):
            conv.weight /= conv.weight.abs().sum(dim=(1, 2, 3), keepdim=True)
        model.expand.weight[4:] *= 1.2
    return model


@pytest.mark.parametrize("reduction, through, past", [("sum", 4, 1), ("mean", 1, 4)])
def test_reduction_decides_between_halves_written_by_different_numbers_of_layers(reduction, through, past):
    """4 of the 8 channels are kept, and one more where a half would be left empty."""
    model = _cross_stage()
    x = torch.randn(2, 3, 6, 6)
    small, _ = prune_and_check(model, x, criterion="l1", ratio=0.5, group_reduction=reduction)
    kept = small.meta["fxprune.plan"].modules["expand"]["out"]
    assert (sum(i < 4 for i in kept), sum(i >= 4 for i in kept)) == (through, past)


@pytest.mark.parametrize("criterion", ["l1", "l2", "bn"])
def test_mean_and_sum_keep_the_same_channels_where_every_class_has_the_same_writers(criterion):
    model = randomize(torchvision.models.resnet18(num_classes=10))
    x = torch.randn(1, 3, 64, 64)
    plans = [fxprune.plan(model, x, criterion=criterion, ratio=0.3, group_reduction=r).to_dict()["modules"]
             for r in ("sum", "mean")]
    assert plans[0] == plans[1]


def test_an_unknown_reduction_is_refused():
    with pytest.raises(PlanError, match="group_reduction='max'"):
        fxprune.prune(_cross_stage(), torch.randn(1, 3, 6, 6), criterion="l1", ratio=0.5, group_reduction="max")
