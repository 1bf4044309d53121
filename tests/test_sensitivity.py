"""fxprune.sensitivity: each entry is the metric of the model prune(ratio={key: r}) returns."""
import json
import math

import pytest
import torch

import fxprune
from fxprune.cli import main
from fxprune.models import get_model
from fxprune.sensitivity import GroupSensitivity, Sensitivity
from conftest import assert_state_unchanged, randomize, state_copy

X = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
PROBE = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def model():
    return randomize(get_model("resnet20")).eval()


@pytest.fixture(scope="module")
def fidelity(model):
    """Minus the mean squared gap to the original's logits on fixed images: 0 for the original, lower when
    pruning changes what the network computes (a metric that needs no training)."""
    with torch.no_grad():
        reference = model(PROBE)

    def metric(net):
        with torch.no_grad():
            return -float(((net(PROBE) - reference) ** 2).mean())

    return metric


def test_each_entry_is_the_metric_of_the_model_prune_returns_for_that_group_alone(model, fidelity):
    before = state_copy(model)
    scan = fxprune.sensitivity(model, fidelity, X, criterion="l1", ratios=(0.5, 0.25))
    assert scan.baseline == 0.0
    assert len(scan.groups) >= 10  # resnet20: the stem stream, 9 inner convs, the stage projections
    for g in scan.groups:
        assert sorted(g.metric) == [0.25, 0.5]
        for r, value in g.metric.items():
            alone = fxprune.prune(model, X, criterion="l1", ratio={g.key: r})
            assert value == fidelity(alone), (g.key, r)
    assert any(g.metric[0.5] < g.metric[0.25] < 0 for g in scan.groups)  # more pruned, further off
    assert_state_unchanged(model, before)


def test_a_ratio_that_removes_no_channel_is_the_baseline_without_an_evaluation(model, fidelity):
    calls = []

    def counted(net):
        calls.append(net)
        return fidelity(net)

    scan = fxprune.sensitivity(model, counted, X, ratios=(0.0, 0.5), round_to=16)
    # ratio 0 keeps every channel; with round_to=16 a 16-channel group keeps all 16 at 0.5 too
    whole_at_half = [g for g in scan.groups if g.channels == 16]
    assert whole_at_half and all(g.metric[0.5] == g.metric[0.0] == scan.baseline for g in whole_at_half)
    assert len(calls) == 1 + len(scan.groups) - len(whole_at_half)


def test_ratios_stop_at_the_first_ratio_past_the_allowed_drop():
    scan = Sensitivity(baseline=90.0, criterion="l1", groups=[
        GroupSensitivity("a", 16, {0.25: 89.8, 0.5: 89.5, 0.75: 80.0}),
        GroupSensitivity("dip", 16, {0.25: 89.9, 0.5: 85.0, 0.75: 89.9}),  # recovers by noise: not trusted
        GroupSensitivity("fragile", 16, {0.25: 85.0, 0.5: 70.0}),
    ])
    assert scan.ratios(max_drop=1.0) == {"a": 0.5, "dip": 0.25}
    assert scan.ratios(max_drop=0.0) == {}
    assert json.loads(json.dumps(scan.to_dict()))["groups"][0] == {"key": "a", "channels": 16,
                                                                     "metric": {"0.25": 89.8, "0.5": 89.5, "0.75": 80.0}}
    assert "dip" in str(scan) and "0.5000" in str(scan)
    with pytest.raises(fxprune.PlanError, match="max_drop must be a number >= 0"):
        scan.ratios(max_drop=-1)


def test_the_chosen_ratios_feed_prune_and_keep_every_group_within_the_drop(model, fidelity):
    scan = fxprune.sensitivity(model, fidelity, X, ratios=(0.25, 0.5))
    drops = sorted(scan.baseline - g.metric[0.25] for g in scan.groups)
    allowed = drops[len(drops) // 2]  # the median group tolerates 0.25, the most sensitive ones do not
    chosen = scan.ratios(max_drop=allowed)
    assert 0 < len(chosen) < len(scan.groups)
    small = fxprune.prune(model, X, criterion="l1", ratio=chosen)
    pruned = small.meta["fxprune.plan"].groups
    assert len(pruned) == len(chosen)  # one group per key, no other
    assert all(any([key, "out"] in g["members"] for g in pruned) for key in chosen)
    assert fxprune.verify(model, small, X) <= 1e-5


@pytest.mark.parametrize("kwargs, message", [
    ({"evaluate": 0.9}, "evaluate must be a function"),
    ({"ratios": (0.5, 1.0)}, r"ratio must be a number in \[0, 1\)"),
    ({"ratios": ()}, "at least one ratio"),
    ({"evaluate": lambda net: float("nan")}, "evaluate returned nan"),
    ({"evaluate": lambda net: "high"}, "evaluate must return a number"),
    ({"criterion": "l1", "ratoi": 0.3}, "has no option 'ratoi'"),
])
def test_bad_input_is_named(model, fidelity, kwargs, message):
    args = {"evaluate": fidelity, **kwargs}
    with pytest.raises(fxprune.PlanError, match=message):
        fxprune.sensitivity(model, args.pop("evaluate"), X, **args)


def test_cli_writes_the_table_and_a_ratio_that_prune_takes(tmp_path, capsys):
    out = tmp_path / "scan"
    rc = main(["sensitivity", "--model", "resnet20", "--dataset", "digits", "--ratios", "0.5", "--eval-images", "64",
               "--recalibrate-bn", "64", "--max-drop", "100", "--json", "--out", str(out)])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    chosen = json.loads((out / "ratios.json").read_text())
    scan = json.loads((out / "sensitivity.json").read_text())
    assert chosen == result["ratios"] and chosen  # a drop of 100 points allows every group
    assert scan["eval_images"] == 64 and scan["bn_recalibrated_images"] == 64 and math.isfinite(scan["baseline"])
    assert set(chosen) == {g["key"] for g in scan["groups"]}
    rc = main(["prune", "--model", "resnet20", "--criterion", "l1", "--ratio", json.dumps(chosen),
               "--out", str(tmp_path / "pruned"), "--json"])
    assert rc == 0
