"""Round trips for fxprune.export: TorchScript, torch.export, ONNX, and pickle-free save/load.

Pruned models are stood in for by traced torchvision models and a traced small
CNN whose widths are reduced by hand (the shapes fxprune.prune produces).
"""

import copy
import importlib
import json
import operator
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import fx, nn

from passes.errors import FxPruneError

# The module, not the same-named function that fxprune/__init__.py re-exports.
fxe = importlib.import_module("fxprune.export")

HELPER = Path(__file__).parent / "helpers" / "load_torchscript.py"
INPUT = (1, 3, 64, 64)


# ----------------------------------------------------------------- stand-in models


class SmallCNN(nn.Module):
    """Exercises what pruned graphs contain: add, cat, F.pad, flatten/view/reshape, get_attr."""

    def __init__(self, c1: int = 16, c2: int = 32, classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, c1, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c1)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c1, c1, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(c1)
        self.conv3 = nn.Conv2d(2 * c1, c2, 3, stride=2)
        self.scale = nn.Parameter(torch.rand(1, c2, 1, 1) + 0.5)
        self.offset = torch.full((1,), 0.25)  # plain tensor attribute -> get_attr constant
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(4 * c2, classes)

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        z = self.bn2(self.conv2(y)) + y
        z = torch.cat([z, y], dim=1)
        z = F.pad(z, (1, 1, 1, 1))
        z = F.relu(self.conv3(z)) * self.scale + self.offset
        z = torch.flatten(self.pool(z), 1)
        z = z.view(z.size(0), -1).reshape(z.shape[0], -1)
        return self.fc(z)


def _keep(t: torch.Tensor, idx: torch.Tensor, dim: int) -> torch.Tensor:
    return t.detach().index_select(dim, idx).clone()


def hand_shrink(gm: fx.GraphModule, c1: int = 16, c2: int = 32) -> fx.GraphModule:
    """Physically drop half the channels of a traced SmallCNN, keeping qualified names."""
    k1 = torch.arange(0, c1, 2)
    k2 = torch.arange(1, c2, 2)
    k1cat = torch.cat([k1, k1 + c1])
    kfc = (k2[:, None] * 4 + torch.arange(4)).flatten()
    n2 = len(k2)

    def conv(old, out_idx, in_idx):
        new = nn.Conv2d(len(in_idx), len(out_idx), old.kernel_size, old.stride, old.padding, bias=old.bias is not None)
        new.weight.data = _keep(_keep(old.weight, out_idx, 0), in_idx, 1)
        if old.bias is not None:
            new.bias.data = _keep(old.bias, out_idx, 0)
        return new

    def bn(old, idx):
        new = nn.BatchNorm2d(len(idx))
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(new, name).data = _keep(getattr(old, name), idx, 0)
        return new

    gm.conv1 = conv(gm.conv1, k1, torch.arange(3))
    gm.bn1 = bn(gm.bn1, k1)
    gm.conv2 = conv(gm.conv2, k1, k1)
    gm.bn2 = bn(gm.bn2, k1)
    gm.conv3 = conv(gm.conv3, k2, k1cat)
    gm.scale = nn.Parameter(_keep(gm.scale, k2, 1))
    fc = nn.Linear(4 * n2, gm.fc.out_features)
    fc.weight.data = _keep(gm.fc.weight, kfc, 1)
    fc.bias.data = gm.fc.bias.detach().clone()
    gm.fc = fc
    return gm.eval()  # fresh modules start in training mode


def _randomise_bn(model: nn.Module) -> None:
    """Non-trivial BN statistics so that wrong BN handling shows up in the outputs."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


def _traced(model: nn.Module) -> fx.GraphModule:
    torch.manual_seed(0)
    _randomise_bn(model)
    return fx.symbolic_trace(model.eval())


@pytest.fixture(scope="module")
def models() -> dict[str, fx.GraphModule]:
    torch.manual_seed(0)
    return {
        "resnet18": _traced(torchvision.models.resnet18()),
        "mobilenet_v2": _traced(torchvision.models.mobilenet_v2()),
        "small_cnn_shrunk": hand_shrink(_traced(SmallCNN())),
    }


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(*INPUT, generator=torch.Generator().manual_seed(0))


MODEL_NAMES = ["resnet18", "mobilenet_v2", "small_cnn_shrunk"]


def _reference(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def test_hand_shrunk_model_is_smaller_and_runs(models, x):
    small = models["small_cnn_shrunk"]
    assert small.conv1.out_channels == 8 and small.conv3.in_channels == 16 and small.fc.in_features == 64
    assert _reference(small, x).shape == (1, 10)
    ops = {n.op for n in small.graph.nodes}
    assert {"call_function", "call_method", "get_attr", "call_module"} <= ops


# ----------------------------------------------------------------- TorchScript


def test_torchscript_runs_in_fresh_process_without_fxprune(models, x, tmp_path):
    jobs = []
    torch.save((x,), tmp_path / "input.pt")
    for name in MODEL_NAMES:
        path = fxe.export(models[name], tmp_path / f"{name}.ts", format="torchscript", example_inputs=x)
        jobs.append({"model": str(path), "input": str(tmp_path / "input.pt"), "output": str(tmp_path / f"{name}.out")})
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, str(HELPER), str(tmp_path / "jobs.json")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in MODEL_NAMES:
        got = torch.load(tmp_path / f"{name}.out", weights_only=True)
        torch.testing.assert_close(got, _reference(models[name], x), rtol=0, atol=1e-5)


# ----------------------------------------------------------------- torch.export


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_torch_export_roundtrip(models, x, tmp_path, name):
    path = fxe.export(models[name], tmp_path / "model.pt2", format="export", example_inputs=(x,))
    program = torch.export.load(path)
    for batch in (x, _batch3()):  # exported from a batch-1 example, the batch dimension is free
        with torch.no_grad():
            got = program.module()(batch)
        torch.testing.assert_close(got, _reference(models[name], batch), rtol=0, atol=1e-5)


def _batch3() -> torch.Tensor:
    return torch.randn(3, *INPUT[1:], generator=torch.Generator().manual_seed(3))


# ----------------------------------------------------------------- ONNX


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_onnx_roundtrip_in_onnxruntime(models, x, tmp_path, name):
    import onnx
    import onnxruntime as ort

    path = fxe.export(models[name], tmp_path / "model.onnx", format="onnx", example_inputs=x)
    onnx.checker.check_model(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == "batch"
    for batch in (x, _batch3()):
        (got,) = session.run(None, {session.get_inputs()[0].name: batch.numpy()})
        torch.testing.assert_close(torch.from_numpy(got), _reference(models[name], batch), rtol=0, atol=1e-4)
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no sidecar/temp files


def test_static_batch_on_request(models, x, tmp_path):
    import onnxruntime as ort

    model = models["small_cnn_shrunk"]
    path = fxe.export(model, tmp_path / "model.onnx", format="onnx", example_inputs=x, dynamic_batch=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == list(INPUT)
    program = torch.export.load(fxe.export(model, tmp_path / "m.pt2", format="export", example_inputs=x,
                                           dynamic_batch=False))
    with pytest.raises(Exception, match="batch|size|shape|Guard"):
        program.module()(_batch3())


# ----------------------------------------------------------------- export behaviour


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_export_default_input_and_training_flags_restored(tmp_path):
    model = _traced(SmallCNN())
    model.train()
    model.bn1.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fxe.export(model, tmp_path / "m.ts")  # default: 1x3x224x224, TorchScript
    assert model.training and not model.bn1.training and model.bn2.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # BN running stats untouched: exported in eval mode
    loaded = torch.jit.load(str(tmp_path / "m.ts"))
    assert loaded(torch.zeros(1, 3, 224, 224)).shape == (1, 10)


def test_unknown_format_is_a_clear_error(models, tmp_path):
    with pytest.raises(fxe.UnknownFormatError, match=r"'tflite'.*export.*onnx.*torchscript") as info:
        fxe.export(models["small_cnn_shrunk"], tmp_path / "m.bin", format="tflite")
    assert isinstance(info.value, ValueError) and isinstance(info.value, FxPruneError)
    assert list(tmp_path.iterdir()) == []


class _Broken(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(x[:, :2])  # channel mismatch: fails inside every exporter


@pytest.mark.parametrize("fmt", sorted(fxe.FORMATS))
def test_failing_export_leaves_no_file(tmp_path, fmt):
    (tmp_path / "keep.txt").write_text("unrelated")
    with pytest.raises(fxe.ExportError) as info:
        fxe.export(fx.symbolic_trace(_Broken()), tmp_path / "broken.out", format=fmt, example_inputs=torch.zeros(1, 3, 8, 8))
    assert info.value.__cause__ is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_interrupted_write_leaves_no_file_and_keeps_old_one(models, x, tmp_path, monkeypatch):
    target = tmp_path / "m.ts"
    target.write_bytes(b"previous good export")

    def half_write(module, path):
        Path(path).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch.jit, "save", half_write)
    with pytest.raises(fxe.ExportError, match="disk full"):
        fxe.export(models["small_cnn_shrunk"], target, example_inputs=x)
    assert [p.name for p in tmp_path.iterdir()] == ["m.ts"]
    assert target.read_bytes() == b"previous good export"


# ----------------------------------------------------------------- save / load


def _assert_same_model(original: fx.GraphModule, loaded: fx.GraphModule, x: torch.Tensor) -> None:
    assert isinstance(loaded, fx.GraphModule)
    assert type(loaded).__name__ == type(original).__name__
    torch.testing.assert_close(_reference(loaded, x), _reference(original, x), rtol=0, atol=1e-6)
    kinds = lambda gm: {n: type(m) for n, m in gm.named_modules() if n}  # noqa: E731 (root: per-instance class)
    assert kinds(loaded) == kinds(original)
    sd_a, sd_b = original.state_dict(), loaded.state_dict()
    assert list(sd_a) == list(sd_b)
    for k in sd_a:
        assert torch.equal(sd_a[k], sd_b[k]) and sd_a[k].dtype == sd_b[k].dtype, k
    assert loaded.training == original.training


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_save_load_roundtrip(models, x, tmp_path, name):
    directory = fxe.save(models[name], tmp_path / "saved")
    assert sorted(p.name for p in directory.iterdir()) == ["code.py", "modules.json", "weights.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved"]  # temp dir renamed away
    weights = torch.load(directory / "weights.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in weights.values())
    json.loads((directory / "modules.json").read_text())
    loaded = fxe.load(directory)
    _assert_same_model(models[name], loaded, x)
    # The loaded module is a working GraphModule: it can be traced and saved again.
    fxe.save(loaded, tmp_path / "again")
    _assert_same_model(models[name], fxe.load(tmp_path / "again"), x)


@pytest.mark.filterwarnings("ignore:Attempted to insert a get_attr Node:UserWarning")
def test_save_load_keeps_get_attr_tensors(models, x, tmp_path):
    small = copy.deepcopy(models["small_cnn_shrunk"])
    # A get_attr on a plain tensor attribute (neither parameter nor buffer), as graph rewrites make.
    small._tensor_constant0 = torch.linspace(0, 1, 10)
    output = next(n for n in small.graph.nodes if n.op == "output")
    with small.graph.inserting_before(output):
        const = small.graph.get_attr("_tensor_constant0")
        output.args = (small.graph.call_function(operator.add, (output.args[0], const)),)
    small.recompile()
    assert "_tensor_constant0" not in small.state_dict()

    loaded = fxe.load(fxe.save(small, tmp_path / "s"))
    weights = torch.load(tmp_path / "s" / "weights.pt", weights_only=True)
    assert {"_tensor_constant0", "offset", "scale"} <= set(weights)
    assert torch.equal(loaded._tensor_constant0, small._tensor_constant0)
    assert "_tensor_constant0" not in loaded.state_dict()
    assert isinstance(loaded.scale, nn.Parameter) and loaded.scale.shape == (1, 16, 1, 1)
    assert "offset" in dict(loaded.named_buffers())  # GraphModule registers tensor attributes as buffers
    _assert_same_model(small, loaded, x)


class _Zoo(nn.Module):
    """Less common pieces: attention, layer norm, a wrapped torchvision function, ties, buffers."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.norm = nn.LayerNorm(16)
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.act = nn.GELU(approximate="tanh")
        self.head = nn.Linear(16, 16)
        self.tail = nn.Linear(16, 16, bias=False)
        self.tail.weight = self.head.weight  # tied
        self.blocks = nn.Sequential(nn.Hardswish(), nn.Dropout(0.1), nn.Identity())
        self.register_buffer("shift", torch.linspace(-1, 1, 16), persistent=False)
        self.frozen = nn.Parameter(torch.ones(16), requires_grad=False)
        self.drop_path = torchvision.ops.StochasticDepth(0.5, "row")  # traced into an fx-wrapped function

    def forward(self, x):
        h = self.norm(self.embed(x))
        a, _ = self.attn(h, h, h, need_weights=False)
        h = self.drop_path(h + a)
        h = self.blocks(self.act(self.head(h)) + self.shift) * self.frozen
        return self.tail(h).softmax(-1)


def test_save_load_zoo_model(tmp_path):
    torch.manual_seed(0)
    gm = fx.symbolic_trace(_Zoo().eval())
    x = torch.randn(2, 5, 8)
    loaded = fxe.load(fxe.save(gm, tmp_path / "zoo"))
    _assert_same_model(gm, loaded, x)
    assert loaded.tail.weight is loaded.head.weight
    assert not loaded.frozen.requires_grad and loaded.head.weight.requires_grad
    assert "shift" not in loaded.state_dict() and torch.equal(loaded.shift, gm.shift)
    assert loaded.act.approximate == "tanh" and loaded.attn.batch_first and loaded.attn.num_heads == 4
    targets = {str(n.target) for n in loaded.graph.nodes if n.op == "call_function"}
    assert any("stochastic_depth" in t for t in targets)  # kept as one call, not inlined


def test_save_refuses_existing_directory_unless_overwrite(models, x, tmp_path):
    small = models["small_cnn_shrunk"]
    fxe.save(small, tmp_path / "s")
    with pytest.raises(FileExistsError):
        fxe.save(small, tmp_path / "s")
    fxe.save(small, tmp_path / "s", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]
    _assert_same_model(small, fxe.load(tmp_path / "s"), x)


class _CustomLeaf(nn.Module):
    def forward(self, x):
        return x * 2


class _UsesCustomLeaf(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 3, 1), _CustomLeaf())

    def forward(self, x):
        return self.body(x)


class _LeafTracer(fx.Tracer):
    def is_leaf_module(self, m, qualname):
        return isinstance(m, _CustomLeaf) or super().is_leaf_module(m, qualname)


def test_unknown_module_type_on_save_names_path_and_type(tmp_path):
    root = _UsesCustomLeaf()
    gm = fx.GraphModule(root, _LeafTracer().trace(root))
    with pytest.raises(fxe.UnsupportedModuleError, match=r"'body\.1'.*_CustomLeaf") as info:
        fxe.save(gm, tmp_path / "s")
    assert isinstance(info.value, FxPruneError)
    assert list(tmp_path.iterdir()) == []  # no partial directory


def test_unknown_module_type_on_load_is_a_clear_error(models, tmp_path):
    directory = fxe.save(models["small_cnn_shrunk"], tmp_path / "s")
    spec = json.loads((directory / "modules.json").read_text())
    entry = next(e for e in spec["modules"] if e["name"] == "conv2")
    entry["type"] = "os.system"
    (directory / "modules.json").write_text(json.dumps(spec))
    with pytest.raises(fxe.UnsupportedModuleError, match=r"'conv2'.*os\.system"):
        fxe.load(directory)


def test_save_requires_graph_module(tmp_path):
    with pytest.raises(TypeError, match="GraphModule"):
        fxe.save(SmallCNN(), tmp_path / "s")


ALLOW_LIST_SAMPLES = [
    nn.Conv2d(4, 6, (3, 5), stride=2, padding="valid", dilation=1, groups=2, bias=False, padding_mode="zeros"),
    nn.Conv1d(2, 4, 3, padding="same", padding_mode="reflect"),
    nn.ConvTranspose2d(4, 2, 3, stride=2, output_padding=1),
    nn.Linear(5, 3, bias=False),
    nn.BatchNorm2d(7, eps=1e-3, momentum=None, affine=False),
    nn.BatchNorm1d(3, track_running_stats=False),
    nn.GroupNorm(2, 6, eps=1e-4),
    nn.LayerNorm((4, 5), elementwise_affine=True, bias=False),
    nn.PReLU(3),
    nn.Hardtanh(-2.0, 3.0),
    nn.LeakyReLU(0.2, inplace=True),
    nn.GELU("tanh"),
    nn.Softmax(dim=1),
    nn.MaxPool2d(3, 2, 1, ceil_mode=True),
    nn.AvgPool2d(3, 1, 1, count_include_pad=False, divisor_override=2),
    nn.AdaptiveAvgPool2d((None, 3)),
    nn.Flatten(2, -1),
    nn.Unflatten(1, (2, 3)),
    nn.Upsample(scale_factor=2.0, mode="bilinear", align_corners=False),
    nn.Embedding(10, 4, padding_idx=0),
    nn.MultiheadAttention(8, 2, dropout=0.1, bias=False, add_bias_kv=True, kdim=6, vdim=5, batch_first=True),
]


@pytest.mark.parametrize("module", ALLOW_LIST_SAMPLES, ids=lambda m: type(m).__name__)
def test_allow_listed_modules_rebuild_from_json(module):
    entry = json.loads(json.dumps(fxe._describe_module("m", module)))
    rebuilt = fxe._new_module(entry)
    assert repr(rebuilt) == repr(module)
    shapes = lambda m: {k: tuple(v.shape) for k, v in m.state_dict().items()}  # noqa: E731
    assert shapes(rebuilt) == shapes(module)


def test_interrupted_save_leaves_nothing(models, tmp_path, monkeypatch):
    def half_save(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", half_save)
    with pytest.raises(OSError, match="disk full"):
        fxe.save(models["small_cnn_shrunk"], tmp_path / "s")
    assert list(tmp_path.iterdir()) == []
