"""The ``fxprune`` command line end to end on digits (bundled, no files), run as a user would:
``python -m fxprune ...`` in a subprocess. Outputs are checked for content, the TorchScript file
in a process that never imports fxprune, and bad input for exit code 2 with a one-line reason."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import fxprune
from fxprune.experiment import staged

ROOT = Path(__file__).resolve().parents[1]
OUTPUTS = ("model.pt", "plan.json", "report.json", "saved", "meta.json")
RESULT_KEYS = ("top1_before", "top1_after", "flops_reduction", "params_reduction")


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def cli(*args, expect: int = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "fxprune", *map(str, args)], env=_env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == expect, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def pruned_l1(work):
    out = work / "l1"
    proc = cli("prune", "--model", "resnet20", "--criterion", "l1", "--ratio", "0.3", "--out", out, "--json")
    return out, proc


@pytest.fixture(scope="module")
def pruned_graph(work):
    out = work / "graph"
    proc = cli("prune", "--model", "resnet20", "--criterion", "graph", "--threshold", "0.7",
               "--data", "digits", "--calib-samples", "32", "--out", out)
    return out, proc


@pytest.fixture(scope="module", params=["l1", "graph"])
def pruned(request):
    return request.getfixturevalue(f"pruned_{request.param}")


# --------------------------------------------------------------------------- prune

def test_prune_writes_the_outputs(pruned):
    out, _ = pruned
    for name in OUTPUTS:
        assert (out / name).exists(), name
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"
    plan = fxprune.Plan.from_dict(json.loads((out / "plan.json").read_text()))
    assert plan.groups and plan.options["input_shape"] == [[1, 3, 32, 32]]
    report = json.loads((out / "report.json").read_text())
    assert 0 < report["flops_reduction_pct"] < 100 and 0 < report["params_reduction_pct"] < 100
    assert report["verify_error"] < 1e-4
    small = fxprune.load(out / "saved")
    kept = {name: io["out"] for name, io in plan.modules.items() if io["out"] is not None}
    conv = next(n for n in kept if n.endswith("conv1") and n.startswith("layer"))
    assert small.get_submodule(conv).out_channels == len(kept[conv])


def test_prune_json_is_one_object(pruned_l1):
    out, proc = pruned_l1
    result = json.loads(proc.stdout)
    assert result["command"] == "prune" and result["criterion"] == "l1" and result["budget"] == {"ratio": 0.3}
    assert result["model"]["random_init"] is True
    assert result["report"] == {k: v for k, v in json.loads((out / "report.json").read_text()).items()
                                if k in result["report"]}
    assert Path(result["outputs"]["model.pt"]) == out / "model.pt"


def test_prune_text_says_what_happened(pruned_graph):
    _, proc = pruned_graph
    assert "random init" in proc.stdout
    assert "threshold 0.7" in proc.stdout and "32 digits training images" in proc.stdout
    assert "MACs (conv+linear)" in proc.stdout


_RUN_TORCHSCRIPT = textwrap.dedent("""
    import sys, torch
    x = torch.load(sys.argv[1], weights_only=True)
    outs = [torch.jit.load(path, map_location="cpu")(x) for path in sys.argv[3:]]
    assert "fxprune" not in sys.modules and not any(m.startswith("fxprune.") for m in sys.modules)
    torch.save(outs, sys.argv[2])
""")


def test_torchscript_runs_without_fxprune(pruned_l1, pruned_graph, work):
    dirs = [pruned_l1[0], pruned_graph[0]]
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    torch.save(x, work / "x.pt")
    proc = subprocess.run([sys.executable, "-c", _RUN_TORCHSCRIPT, work / "x.pt", work / "y.pt",
                           *[d / "model.pt" for d in dirs]],
                          cwd=work, env=dict(_env(), PYTHONPATH=""), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outs = torch.load(work / "y.pt", weights_only=True)
    for d, y in zip(dirs, outs):
        with torch.no_grad():
            expected = fxprune.load(d / "saved").eval()(x)
        assert y.shape == (4, 10)
        torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)


def test_report_and_eval_read_the_outputs(pruned_l1):
    out, _ = pruned_l1
    proc = cli("report", "--original", "resnet20", "--pruned", out, "--json")
    saved = json.loads((out / "report.json").read_text())
    assert json.loads(proc.stdout)["report"]["flops_reduction_pct"] == pytest.approx(saved["flops_reduction_pct"])
    proc = cli("eval", "--model", out / "model.pt", "--dataset", "digits", "--json")
    result = json.loads(proc.stdout)
    assert result["samples"] == 360 and 0.0 <= result["top1"] <= 100.0


# --------------------------------------------------------------------------- info

def test_info_lists_groups_and_frozen_reasons():
    proc = cli("info", "--model", "resnet20")
    assert "channel groups" in proc.stdout
    assert "prunable: conv1.out" in proc.stdout
    assert "FROZEN" in proc.stdout and "because" in proc.stdout


# --------------------------------------------------------------------------- experiment

def test_experiment_writes_one_results_row(work):
    out = work / "exp"
    proc = cli("experiment", "--arch", "resnet20", "--dataset", "digits", "--criterion", "l1", "--ratio", "0.3",
               "--epochs", "1", "--baseline-epochs", "1", "--batch-size", "32", "--max-steps", "2",
               "--out", out, "--json")
    row = json.loads((out / "results.json").read_text())
    for key in RESULT_KEYS:
        assert key in row
    assert 0.0 <= row["top1_before"] <= 100.0 and 0.0 <= row["top1_after"] <= 100.0
    assert 0.0 < row["flops_reduction"] < 100.0 and 0.0 < row["params_reduction"] < 100.0
    assert row["macs_after"] < row["macs_before"] and row["params_after"] < row["params_before"]
    assert (row["epochs"], row["baseline_epochs"], row["preset"]) == (1, 1, "l1-cifar")
    assert json.loads(proc.stdout)["top1_after"] == pytest.approx(row["top1_after"])
    plan = fxprune.Plan.from_dict(json.loads((out / "plan.json").read_text()))
    assert plan.options["criterion"] == "l1" and plan.options["ratio"] == 0.3
    for sub in ("baseline", "pruned"):
        assert (out / sub / "model.pt").is_file() and (out / sub / "saved" / "modules.json").is_file()


def test_prune_with_trained_weights(work):
    """--weights loads a checkpoint (here a DDP-prefixed state_dict inside {"state_dict": ...}): the compact
    model holds slices of those weights, not of a random init."""
    from fxprune.models import get_model

    torch.manual_seed(123)
    state = get_model("resnet20", num_classes=10).state_dict()
    ckpt = work / "trained.pth"
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in state.items()}}, ckpt)
    out = work / "weights"
    proc = cli("prune", "--model", "resnet20", "--weights", ckpt, "--criterion", "l1", "--ratio", "0.3", "--out", out)
    assert "random init" not in proc.stdout
    small = fxprune.load(out / "saved")
    keep = json.loads((out / "plan.json").read_text())["modules"]["conv1"]
    expected = state["conv1.weight"][torch.as_tensor(keep["out"])]
    assert torch.equal(small.conv1.weight, expected)


@pytest.mark.parametrize("which, words", [
    ("missing", ["no such weights file"]),
    ("other-architecture", ["do not fit this architecture", "unexpected", "layer1.3"]),
], ids=["missing", "other-architecture"])
def test_weights_that_cannot_be_used_exit_2(work, which, words):
    from fxprune.models import get_model

    path = work / f"{which}.pth"
    if which != "missing":
        torch.save(get_model("resnet56").state_dict(), path)  # more blocks than resnet20
    out = work / f"never-{which}"
    proc = cli("prune", "--model", "resnet20", "--weights", path, "--criterion", "l1", "--ratio", "0.3",
               "--out", out, expect=2)
    for w in words:
        assert w in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


# --------------------------------------------------------------------------- errors

@pytest.mark.parametrize("args, words", [
    (["--model", "resnet21", "--ratio", "0.3"], ["unknown model 'resnet21'", "resnet20"]),
    (["--model", "resnet20", "--ratio", "1.5"], ["ratio must be", "1.5"]),
    (["--model", "resnet20", "--ratio", "0.3", "--data", "cifar10", "--data-root", "{missing}"],
     ["cifar10 dataset not found", "{missing}"]),
], ids=["unknown-model", "bad-ratio", "missing-dataset"])
def test_bad_input_exits_2_with_a_reason(work, args, words):
    missing = work / "no-such-dir"
    out = work / "never"
    args = [a.format(missing=missing) for a in args]
    proc = cli("prune", "--criterion", "l1", *args, "--out", out, expect=2)
    first = proc.stderr.strip().splitlines()[0]
    assert first.startswith("fxprune: error: ")
    for w in words:
        assert w.format(missing=missing) in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


# --------------------------------------------------------------------------- atomic outputs

def test_a_failed_write_leaves_nothing(tmp_path):
    (tmp_path / "plan.json").write_text("old")
    with pytest.raises(RuntimeError):
        with staged(tmp_path) as stage:
            (stage / "plan.json").write_text("new")
            (stage / "saved").mkdir()
            raise RuntimeError("export failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json"]
    assert (tmp_path / "plan.json").read_text() == "old"
    with staged(tmp_path) as stage:
        (stage / "plan.json").write_text("new")
        (stage / "saved").mkdir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json", "saved"]
    assert (tmp_path / "plan.json").read_text() == "new"


def test_pruning_with_a_dataset_verifies_on_its_images(monkeypatch):
    """Noise barely moves a trained model's output, so the masked-equivalence check runs on real images
    when there are any (the calibration batches); without them, on the example input."""
    from fxprune import experiment as ex

    calib = ex.calibration_batches("digits", samples=40, batch_size=32)
    seen = []
    real_verify = fxprune.verify
    monkeypatch.setattr(fxprune, "verify", lambda m, s, x, **kw: seen.append(x) or real_verify(m, s, x, **kw))
    source = ex.resolve_model("resnet20", num_classes=10, input_size=32)
    for data in (calib, None):
        ex._prune_and_measure(source, "l1", ex.Budget(ratio=0.3), data, None, ())
    assert torch.equal(seen[0], calib[0][0][:16])
    assert torch.equal(seen[1], ex.example_input(32))


def test_prune_can_recalibrate_batchnorm_after_the_check(work, pruned_l1):
    """--recalibrate-bn N: the saved compact model holds statistics measured on N digits images, not the
    original's slices; the check ran before (its error is still reported) and the text says so."""
    out = work / "recalibrated"
    proc = cli("prune", "--model", "resnet20", "--criterion", "l1", "--ratio", "0.3", "--dataset", "digits",
               "--calib-samples", "32", "--recalibrate-bn", "64", "--out", out)
    assert "re-measured on 64 digits training images" in proc.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["bn_recalibrated_images"] == 64 and report["verify_error"] < 1e-4
    plain = fxprune.load(pruned_l1[0] / "saved")
    small = fxprune.load(out / "saved")
    assert torch.equal(small.conv1.weight, plain.conv1.weight)  # same random init, same slices
    assert not torch.equal(small.bn1.running_mean, plain.bn1.running_mean)
    assert int(small.bn1.num_batches_tracked) == 1  # 64 images: one batch of 64


def test_recalibrate_bn_without_a_dataset_exits_2(work):
    proc = cli("prune", "--model", "resnet20", "--criterion", "l1", "--ratio", "0.3", "--recalibrate-bn", "64",
               "--out", work / "nope", expect=2)
    assert "--recalibrate-bn needs --dataset" in proc.stderr
    assert not (work / "nope").exists()


def test_prune_group_reduction_reaches_the_plan(work):
    out = work / "mean"
    cli("prune", "--model", "resnet20", "--criterion", "l1", "--ratio", "0.3", "--group-reduction", "mean",
        "--out", out, "--json")
    assert json.loads((out / "plan.json").read_text())["options"]["criterion_options"] == {"group_reduction": "mean"}
    proc = cli("prune", "--model", "resnet20", "--criterion", "graph", "--group-reduction", "mean",
               "--out", work / "graph-mean", expect=2)
    assert "has no option 'group_reduction'" in proc.stderr and not (work / "graph-mean").exists()


def test_prune_grouped_convs_within(work):
    """--grouped-convs reaches the plan: RegNet's grouped convs keep every group, narrower."""
    out = work / "regnet"
    cli("prune", "--model", "regnet_x_400mf", "--input-size", "64", "--num-classes", "10", "--criterion", "l1",
        "--ratio", "0.3", "--grouped-convs", "within", "--out", out, "--json")
    plan = json.loads((out / "plan.json").read_text())
    assert plan["options"]["grouped_convs"] == "within"
    conv = fxprune.load(out / "saved").get_submodule("trunk_output.block4.block4-0.f.b.0")
    assert (conv.groups, conv.in_channels) == (25, 25 * int(16 * 0.7))
