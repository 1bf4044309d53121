"""Modules with forward hooks: torch.nn.utils.prune's masks are sliced with the weights they mask,
any other hook leaves its module's channels unpruned, and nothing crashes copying hook-made tensors."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

import fxprune
from fxprune import models
from fxprune.soft import SoftFilterPruning
from fxprune.export import UnsupportedModuleError, save
from passes.hooks import copy_model
from tests.conftest import assert_state_unchanged, randomize, state_copy


def _masked_resnet20() -> nn.Module:
    """What a user of torch.nn.utils.prune has: a quarter of each conv's filters zeroed by a structured
    L1 mask, half the classifier's weights by an unstructured one."""
    model = randomize(models.resnet20(num_classes=10))
    for mod in model.modules():
        if isinstance(mod, nn.Conv2d):
            torch_prune.ln_structured(mod, "weight", amount=0.25, n=1, dim=0)
    torch_prune.l1_unstructured(model.fc, "weight", amount=0.5)
    return model


def test_a_model_masked_by_torch_prune_becomes_small_and_keeps_its_masks():
    model, x = _masked_resnet20(), torch.randn(4, 3, 32, 32)
    before = state_copy(model)
    small = fxprune.prune(model, x, criterion="l1", ratio=0.25)
    assert fxprune.verify(model, small, x) <= 1e-5
    assert_state_unchanged(model, before)

    plan = small.meta["fxprune.plan"].to_dict()["modules"]
    conv = "layer1.0.conv1"  # its output channels form a group of their own: exactly the masked ones go
    zeroed = (model.get_submodule(conv).weight.abs().sum((1, 2, 3)) == 0).nonzero().flatten().tolist()
    assert sorted(set(range(16)) - set(plan[conv]["out"])) == zeroed

    for name, mod in small.named_modules():
        if isinstance(mod, nn.Conv2d):
            assert mod.weight_orig.shape == mod.weight_mask.shape == mod.weight.shape, name
            assert torch.equal(mod.weight, mod.weight_orig * mod.weight_mask), name
    assert torch_prune.is_pruned(small)


def test_the_compact_model_fine_tunes_with_its_masks_on():
    model, x = _masked_resnet20(), torch.randn(4, 3, 32, 32)
    small = fxprune.prune(model, x, criterion="l1", ratio=0.25).train()
    masked_off = small.fc.weight_mask == 0
    assert masked_off.float().mean() > 0.3
    optimizer = torch.optim.SGD(small.parameters(), lr=0.1)
    small(x).square().mean().backward()
    optimizer.step()
    small(x)  # the mask's hook recomputes the weight
    assert torch.all(small.fc.weight[masked_off] == 0)


def test_save_refuses_a_masked_module_and_says_how_to_fix_it(tmp_path):
    model, x = _masked_resnet20(), torch.randn(2, 3, 32, 32)
    small = fxprune.prune(model, x, criterion="l1", ratio=0.25)
    with pytest.raises(UnsupportedModuleError, match=r"torch\.nn\.utils\.prune\.remove\(module, 'weight'\)"):
        save(small, tmp_path / "small")
    assert list(tmp_path.iterdir()) == []


class _ChannelGain:
    """A user's forward hook that scales each of a conv's 16 output channels by a fixed gain."""

    def __init__(self, channels: int):
        self.gain = torch.linspace(0.5, 2.0, channels).view(1, -1, 1, 1)

    def __call__(self, module, args, out):
        return out * self.gain


def _three_convs() -> nn.Sequential:
    return randomize(nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                                   nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 4, 1)))


@pytest.mark.parametrize("wrap", ["forward hook", "old weight_norm", "old spectral_norm"])
def test_a_hook_fxprune_cannot_see_through_leaves_its_channels_unpruned(wrap):
    model, x = _three_convs(), torch.randn(2, 3, 16, 16)
    if wrap == "forward hook":
        model[2].register_forward_hook(_ChannelGain(16))
    elif wrap == "old weight_norm":  # the deprecated hook API: the norms would change with the input channels
        model[2] = torch.nn.utils.weight_norm(model[2])
    else:
        model[2] = torch.nn.utils.spectral_norm(model[2])
    model(x)  # the hooks leave computed tensors (with autograd history) on the module

    small = fxprune.prune(model, x, criterion="l1", ratio=0.5)
    assert fxprune.verify(model, small, x) <= 1e-5
    assert small.get_submodule("2").weight.shape[:2] == (16, 16)
    assert small.get_submodule("4").out_channels == 8  # the rest of the network is still pruned
    reasons = str(fxprune.analyze(model, x))
    assert "runs around this module" in reasons and "forward" in reasons


def test_copy_model_copies_a_module_whose_hook_left_a_non_leaf_tensor():
    conv = torch.nn.utils.weight_norm(nn.Conv2d(3, 4, 3))
    x = torch.randn(1, 3, 8, 8)
    conv(x)
    with pytest.raises(RuntimeError, match="deepcopy"):
        copy.deepcopy(conv)  # why copy_model exists
    twin = copy_model(conv)
    assert torch.equal(twin(x), conv(x))
    assert twin.weight_v.data_ptr() != conv.weight_v.data_ptr()


@pytest.mark.parametrize("criterion", ["l1", "l2", "bn", "graph", "coring", "taylor"])
def test_every_criterion_scores_a_masked_weight_as_the_weight_it_computes(criterion):
    """An all-ones mask changes nothing the model computes, so it must change nothing fxprune keeps
    (fmc is left out: it reads feature maps only, never a weight, and takes seconds per layer)."""
    x = torch.randn(4, 3, 32, 32)
    data = [(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))) for _ in range(2)]
    budget = {"threshold": 0.7} if criterion == "graph" else {"ratio": 0.3}
    plain = randomize(models.resnet20(num_classes=10))
    masked = copy.deepcopy(plain)
    for mod in masked.modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            torch_prune.identity(mod, "weight")
    kept = [fxprune.prune(m, x, criterion=criterion, data=data, **budget).meta["fxprune.plan"].to_dict()["modules"]
            for m in (plain, masked)]
    assert kept[0] == kept[1]


def test_soft_filter_pruning_zeroes_the_weight_a_mask_computes_from():
    """SFP zeroes filters in place: on a masked conv it must zero weight_orig, or the mask's hook
    brings the filters back on the next call."""
    model, x = _masked_resnet20(), torch.randn(4, 3, 32, 32)
    sfp = SoftFilterPruning(model, x, ratio=0.5)
    sfp.start(model)
    model(x)  # the masks' hooks compute every weight again
    small = sfp.hard_prune(model)
    assert fxprune.verify(model, small, x) <= 1e-5
    conv = model.get_submodule("layer1.0.conv1")
    removed = sorted(set(range(16)) - set(small.meta["fxprune.plan"].to_dict()["modules"]["layer1.0.conv1"]["out"]))
    assert len(removed) == 8 and torch.all(conv.weight[removed] == 0)


def test_hooks_on_a_module_traced_through_are_named_in_a_warning_at_the_callers_line():
    model, x = randomize(models.resnet20(num_classes=10)), torch.randn(2, 3, 32, 32)
    stored = {}
    model.layer3.register_forward_hook(lambda mod, args, out: stored.update(layer3=out))
    with pytest.warns(UserWarning, match="forward hooks on 'layer3' are not kept") as record:
        small = fxprune.prune(model, x, criterion="l1", ratio=0.3)
    assert [w.filename for w in record if "forward hooks" in str(w.message)] == [__file__]
    stored.clear()
    small(x)
    assert stored == {}  # what the warning says: the compact model does not call it


def test_a_model_without_hooks_prunes_and_verifies_without_a_warning():
    model, x = randomize(models.resnet20(num_classes=10)), torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fxprune.verify(model, fxprune.prune(model, x, criterion="l1", ratio=0.3), x)


def test_criteria_read_the_masked_weight_of_the_latest_optimizer_step():
    """After a step, ``weight`` still holds what the last forward computed from the old ``weight_orig``;
    the prune must score what the model's next call computes."""
    model, x = _masked_resnet20(), torch.randn(4, 3, 32, 32)
    conv = model.get_submodule("layer1.0.conv1")
    model(x)
    with torch.no_grad():  # an optimizer step that makes filter 0 the only live one
        conv.weight_orig.mul_(1e-3)
        conv.weight_orig[0] = 1.0
        conv.weight_mask[0] = 1.0
    plan = fxprune.prune(model, x, criterion="l1", ratio={"layer1.0.conv1": 0.9}).meta["fxprune.plan"]
    assert plan.to_dict()["modules"]["layer1.0.conv1"]["out"] == [0]


def test_weights_saved_from_a_masked_model_load_with_their_masks(tmp_path):
    from fxprune.experiment import load_weights

    masked, x = _masked_resnet20(), torch.randn(2, 3, 32, 32)
    torch.save(masked.state_dict(), tmp_path / "masked.pt")
    fresh = models.resnet20(num_classes=10).eval()
    load_weights(fresh, tmp_path / "masked.pt")
    assert torch_prune.is_pruned(fresh)
    small = fxprune.prune(fresh, x, criterion="l1", ratio=0.25)
    assert torch.equal(small(x), fxprune.prune(masked, x, criterion="l1", ratio=0.25)(x))


class _RemembersActivation(nn.Module):
    """A block that keeps its last output (for a plot, say): after a call in grad mode, a non-leaf tensor."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)

    def forward(self, x):
        self.last = torch.relu(self.conv(x))
        return self.last


def test_report_copies_a_model_holding_an_activation_with_autograd_history():
    model = randomize(nn.Sequential(_RemembersActivation(), nn.Conv2d(16, 4, 1)))
    x = torch.randn(2, 3, 8, 8)
    small = fxprune.prune(model, x, criterion="l1", ratio=0.5)
    model(x)  # grad mode: model[0].last now has autograd history, which copy.deepcopy refuses
    with pytest.raises(RuntimeError, match="deepcopy"):
        copy.deepcopy(model)
    numbers = fxprune.report(model, small, x, print_table=False)
    assert numbers.after.macs_conv_linear == numbers.before.macs_conv_linear // 2  # half the channels of both convs
    assert model[0].last.grad_fn is not None  # the user's model is left as it was


# ---- masks on layers whose weight is read functionally or tied ---------------------------------------
class _CalledAndRead(nn.Module):
    """A layer called as a module and its weight read again by ``F.conv2d`` (a second use of its filters)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.mid = nn.Conv2d(16, 16, 1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        y = torch.relu(self.stem(x))
        z = torch.relu(self.mid(y))
        z = torch.nn.functional.conv2d(z, self.mid.weight, self.mid.bias)
        return self.fc(z.mean((2, 3)))


@pytest.mark.parametrize("mask", ["l1_unstructured", "ln_structured"])
def test_verify_masks_a_functional_read_of_a_masked_weight_computed_anew_each_call(mask):
    """The mask's hook makes a new ``mid.weight`` before each call of ``mid``, so the functional read
    after it gets a tensor verify never saw: it is recognised as the layer's weight at the call."""
    from tests.conftest import prune_and_check

    model = randomize(_CalledAndRead())
    if mask == "ln_structured":
        torch_prune.ln_structured(model.mid, "weight", amount=0.25, n=1, dim=0)
    else:
        torch_prune.l1_unstructured(model.mid, "weight", amount=0.3)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    small, _ = prune_and_check(model, x, criterion="l1", ratio=0.5)
    assert small.mid.in_channels == 8 and torch_prune.is_pruned(small)


@pytest.mark.parametrize("masked", [("block",), ("again",), ("block", "again")])
def test_a_tied_weight_masked_on_either_holder_is_sliced_alike_and_stays_tied(masked):
    """With a mask, a holder holds the tied tensor as ``weight_orig``: sliced like ``weight``, so the
    holders' channels are united as without masks (they were frozen, or sliced apart and tied wrongly)."""
    from tests.conftest import prune_and_check
    from tests.test_op_rules import TiedNet

    model = randomize(TiedNet())
    for name in masked:
        torch_prune.l1_unstructured(model.get_submodule(name), "weight", amount=0.3)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    small, _ = prune_and_check(model, x, criterion="l1", ratio=0.5)
    modules = small.meta["fxprune.plan"].modules
    assert modules["block"] == modules["again"] and len(modules["block"]["out"]) == 8
    leaf = {name: ("weight_orig" if name in masked else "weight") for name in ("block", "again")}
    assert getattr(small.block, leaf["block"]) is getattr(small.again, leaf["again"])
