"""Export round trips on *pruned* models, one family of each kind, every format.

TorchScript is loaded in a process that never imports fxprune; torch.export and save/load must match
to 1e-5, ONNX in onnxruntime to 1e-4.
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

import fxprune
from zoo_models import build, example_input

MODELS = ["resnet18", "mobilenet_v3_small", "efficientnet_b0", "shufflenet_v2_x0_5", "regnet_y_400mf",
          "convnext_tiny"]
HELPER = Path(__file__).parent / "helpers" / "load_torchscript.py"


@pytest.fixture(scope="module", params=MODELS)
def pruned(request):
    model = build(request.param)
    x = example_input(request.param)
    small = fxprune.prune(model, x, criterion="l1", ratio=0.3).eval()
    with torch.no_grad():
        expected = small(x)
    return request.param, small, x, expected


def test_torchscript_without_fxprune(pruned, tmp_path):
    name, small, x, expected = pruned
    fxprune.export(small, tmp_path / "m.pt", format="torchscript", example_inputs=x)
    torch.save((x,), tmp_path / "x.pt")
    manifest = [{"model": str(tmp_path / "m.pt"), "input": str(tmp_path / "x.pt"), "output": str(tmp_path / "y.pt")}]
    (tmp_path / "jobs.json").write_text(json.dumps(manifest))
    proc = subprocess.run([sys.executable, str(HELPER), str(tmp_path / "jobs.json")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    got = torch.load(tmp_path / "y.pt", weights_only=True)
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max().clamp_min(1)


def test_torch_export(pruned, tmp_path):
    name, small, x, expected = pruned
    path = fxprune.export(small, tmp_path / "m.pt2", format="export", example_inputs=x)
    program = torch.export.load(str(path))
    got = program.module()(x)
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max().clamp_min(1)


def test_onnx(pruned, tmp_path):
    import onnxruntime

    name, small, x, expected = pruned
    path = fxprune.export(small, tmp_path / "m.onnx", format="onnx", example_inputs=x)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def test_save_load(pruned, tmp_path):
    name, small, x, expected = pruned
    fxprune.save(small, tmp_path / "saved")
    loaded = fxprune.load(tmp_path / "saved")
    with torch.no_grad():
        assert torch.allclose(loaded(x), expected, rtol=1e-5, atol=1e-6)


def test_torch_save_and_load_of_a_pruned_model(tmp_path):
    """The standard ``torch.save(model)`` round trip: the file holds the compact model only (not the trace
    the plan was made from, which shares the original's weights) and refers to no fxprune tracer. (torch's
    GraphModule pickling drops ``meta``, so the loaded model has no plan: ``plan.to_json()`` keeps it.)"""
    import pickle

    model = torchvision.models.mobilenet_v3_small().eval()
    x = torch.randn(2, 3, 64, 64)
    small = fxprune.prune(model, x, criterion="l1", ratio=0.3)
    assert b"passes.trace" not in pickle.dumps(small)
    torch.save(small, tmp_path / "small.pt")
    torch.save(model, tmp_path / "original.pt")
    assert (tmp_path / "small.pt").stat().st_size < (tmp_path / "original.pt").stat().st_size  # no copy of the original
    loaded = torch.load(tmp_path / "small.pt", weights_only=False)
    with torch.no_grad():
        assert torch.equal(loaded(x), small(x))
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in small.parameters())
