"""Ship pruned models: deployment exports and a pickle-free save/load.

``export`` writes one deployable file (TorchScript, ``torch.export`` .pt2, or
ONNX). ``save``/``load`` round-trip a ``torch.fx.GraphModule`` without pickle:
generated Python code + a JSON module description + a ``weights_only`` state
dict. Every write is atomic (temporary name in the same directory, then
rename), so a failure never leaves a half-written file or directory behind.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import logging
import os
import secrets
import shutil
import types
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from passes.attention_rules import PrunedMultiheadAttention
from passes.branches import GUARD
from torch import nn

from fxprune.report import as_example_args
from passes.errors import FxPruneError
from passes.hooks import masked_names
from passes.modes import eval_mode

__all__ = [
    "FORMATS",
    "SerializationError",
    "UnknownFormatError",
    "UnsupportedModuleError",
    "ExportError",
    "export",
    "save",
    "load",
]

logger = logging.getLogger(__name__)


class SerializationError(FxPruneError):
    """Base class for export/save/load failures raised by fxprune."""


class UnknownFormatError(SerializationError, ValueError):
    """``export`` was asked for a format it does not write."""


class UnsupportedModuleError(SerializationError, TypeError):
    """``save`` met a submodule (or global) that it cannot describe without pickle."""


class ExportError(SerializationError, RuntimeError):
    """The underlying torch exporter failed; the cause is chained."""


# --------------------------------------------------------------------------- atomic writes


def _tmp_sibling(path: Path, tag: str) -> Path:
    """A fresh name next to ``path`` (same filesystem, so rename is atomic); keeps the suffix."""
    return path.with_name(f".{path.name}.{tag}-{secrets.token_hex(4)}{path.suffix}")


def _remove(path: Path) -> None:
    """Delete a file or directory tree if present; cleanup must never mask the real error."""
    with contextlib.suppress(FileNotFoundError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


@contextlib.contextmanager
def _atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path; move it onto ``path`` on success, delete it on failure."""
    if not path.parent.is_dir():
        raise FileNotFoundError(f"directory {str(path.parent)!r} does not exist")
    tmp = _tmp_sibling(path, "tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


@contextlib.contextmanager
def _quiet_deprecations() -> Iterator[None]:
    """Silence torch's deprecation notices for exporters chosen on purpose (see ``export``)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*is deprecated", category=FutureWarning)
        yield


# --------------------------------------------------------------------------- export


def _write_torchscript(model: nn.Module, args: tuple, tmp: Path, dynamic_batch: bool) -> None:
    """Trace (not script): a GraphModule's forward is straight-line tensor code. The traced module
    reads sizes from its input at run time, so any batch runs (``dynamic_batch`` has nothing to add)."""
    if _has_guards(model):
        logger.warning("%s branches on its input's shape: the TorchScript trace fixes those branches (and "
                       "the sizes they compute) at the example's shape; use format='export' to keep them checked",
                       type(model).__name__)
    with torch.no_grad(), _quiet_deprecations():
        traced = torch.jit.trace(model, args, check_trace=False)
        torch.jit.save(traced, str(tmp))


def _has_guards(model: nn.Module) -> bool:
    """Does the graph hold guards on branches taken while tracing (passes.branches)?"""
    graph = getattr(model, "graph", None)
    return graph is not None and any(n.op == "call_function" and n.target is GUARD for n in graph.nodes)


def _write_exported_program(model: nn.Module, args: tuple, tmp: Path, dynamic_batch: bool) -> None:
    """``torch.export.export`` + ``torch.export.save`` (.pt2 archive)."""
    args, shapes = _batch_shapes(args, dynamic_batch)
    program = torch.export.export(model, args, dynamic_shapes=shapes)
    torch.export.save(program, str(tmp))


def _write_onnx(model: nn.Module, args: tuple, tmp: Path, dynamic_batch: bool) -> None:
    """torch.export-based ONNX exporter (``dynamo=True``), one self-contained file; see ``export``."""
    names = ["input"] if len(args) == 1 else [f"input_{i}" for i in range(len(args))]
    args, shapes = _batch_shapes(args, dynamic_batch)
    with _quiet_deprecations():
        torch.onnx.export(
            model, args, str(tmp), dynamo=True, external_data=False, verbose=False, input_names=names, optimize=True,
            dynamic_shapes=shapes,
        )


def _batch_shapes(args: tuple, dynamic_batch: bool) -> tuple[tuple, tuple | None]:
    """Example args and ``dynamic_shapes`` with dim 0 of every tensor input free (named "batch").

    torch.export specializes a size-1 dimension to the constant 1, so a batch-1 example is repeated
    to batch 2 for the export (the exported program still accepts batch 1)."""
    if not dynamic_batch:
        return args, None
    batch = torch.export.Dim("batch", min=1)
    widened, shapes = [], []
    for a in args:
        if isinstance(a, torch.Tensor) and a.dim() > 0:
            widened.append(torch.cat([a, a]) if a.shape[0] == 1 else a)
            shapes.append({0: batch})
        else:
            widened.append(a)
            shapes.append(None)
    return tuple(widened), tuple(shapes)


FORMATS: dict[str, Callable[[nn.Module, tuple, Path, bool], None]] = {
    "torchscript": _write_torchscript,
    "export": _write_exported_program,
    "onnx": _write_onnx,
}


def export(model: nn.Module, path: str | os.PathLike, format: str = "torchscript", example_inputs: Any = None,
           dynamic_batch: bool = True) -> Path:
    """Write ``model`` as one deployable file at ``path``; returns the path.

    Formats (input shapes are taken from ``example_inputs``, default 1x3x224x224; with
    ``dynamic_batch`` the batch dimension of ``export`` and ``onnx`` files is free, named "batch", as
    deployment expects; ``dynamic_batch=False`` fixes it to the example's):

    * ``"torchscript"`` -- ``torch.jit.trace`` + ``torch.jit.save``. Tracing, not
      scripting: a GraphModule's forward is generated straight-line tensor code,
      so one trace records exactly the ops it runs. ``torch.jit.script`` must
      instead type-check the Python source FX emitted, and fails on some
      (e.g. traced GoogLeNet: the annotated namedtuple return vs. the Tensor
      actually returned). No fallback to scripting: tracing only fails on
      non-tensor inputs/outputs, and a silent switch would hide which path
      wrote the file.
    * ``"export"`` -- ``torch.export.export`` + ``torch.export.save`` (use ``.pt2``).
    * ``"onnx"`` -- ``torch.onnx.export(dynamo=True, external_data=False)``: the
      torch.export-based exporter. It runs fully offline (onnxscript), and it
      exports graphs the legacy TorchScript-based exporter (``dynamo=False``)
      rejects (e.g. adaptive pooling after a broadcast with a get_attr
      constant: "input size not accessible"). It is slower (~1-3 s vs ~0.3 s
      for a ResNet-18). ``external_data=False`` keeps the weights inside the
      one file (no ``.data`` sidecar to break the atomic rename; 2 GB limit).
      Every dimension but the batch is static.

    The model is exported in eval mode (every module's training flag is
    restored afterwards). The file appears atomically; on failure nothing is
    left behind and ``ExportError`` chains the exporter's exception.
    """
    writer = FORMATS.get(format)
    if writer is None:
        raise UnknownFormatError(f"unknown export format {format!r}; expected one of {sorted(FORMATS)}")
    path = Path(path)
    if format == "export" and path.suffix != ".pt2":
        logger.warning("torch.export archives are expected to end in .pt2, got %s", path)
    args = as_example_args(model, example_inputs)
    with eval_mode(model), _atomic_file(path) as tmp:
        try:
            writer(model, args, tmp, dynamic_batch)
        except Exception as exc:
            hint = " (with a free batch dimension; dynamic_batch=False fixes it to the example's)" \
                if dynamic_batch and format != "torchscript" else ""
            raise ExportError(f"{format} export of {type(model).__name__} failed{hint}: {exc}") from exc
    logger.info("exported %s as %s to %s", type(model).__name__, format, path)
    return path


# --------------------------------------------------------------------------- save/load: module allow-list

_FORMAT_TAG = "fxprune-graphmodule"
_FORMAT_VERSION = 1
CODE_FILE, MODULES_FILE, WEIGHTS_FILE = "code.py", "modules.json", "weights.pt"

_ALLOWED_NAMES = """
Conv1d Conv2d Conv3d ConvTranspose1d ConvTranspose2d ConvTranspose3d Linear Bilinear Identity
BatchNorm1d BatchNorm2d BatchNorm3d SyncBatchNorm GroupNorm LayerNorm RMSNorm LocalResponseNorm
InstanceNorm1d InstanceNorm2d InstanceNorm3d
ReLU ReLU6 LeakyReLU PReLU ELU SELU CELU GELU SiLU Mish Hardswish Hardsigmoid Hardtanh Sigmoid Tanh
Softmax LogSoftmax Softplus GLU
Dropout Dropout1d Dropout2d Dropout3d AlphaDropout
MaxPool1d MaxPool2d MaxPool3d AvgPool1d AvgPool2d AvgPool3d
AdaptiveAvgPool1d AdaptiveAvgPool2d AdaptiveAvgPool3d AdaptiveMaxPool1d AdaptiveMaxPool2d AdaptiveMaxPool3d
Flatten Unflatten Upsample UpsamplingNearest2d UpsamplingBilinear2d PixelShuffle PixelUnshuffle ChannelShuffle
ZeroPad2d ConstantPad1d ConstantPad2d ConstantPad3d ReflectionPad1d ReflectionPad2d ReplicationPad1d ReplicationPad2d
Embedding MultiheadAttention RNN LSTM GRU
""".split()

#: Leaf module types rebuilt from constructor arguments (name -> class).
ALLOWED_MODULES: dict[str, type[nn.Module]] = {n: getattr(nn, n) for n in _ALLOWED_NAMES if hasattr(nn, n)}
ALLOWED_MODULES["NonDynamicallyQuantizableLinear"] = nn.modules.linear.NonDynamicallyQuantizableLinear
# modules the rewrite itself swaps in (a pruned nn.MultiheadAttention)
ALLOWED_MODULES["PrunedMultiheadAttention"] = PrunedMultiheadAttention

#: Containers rebuilt empty and filled child by child.
CONTAINERS: dict[str, type[nn.Module]] = {
    "Module": nn.Module,
    "Sequential": nn.Sequential,
    "ModuleList": nn.ModuleList,
    "ModuleDict": nn.ModuleDict,
}

#: Constructor arguments that are not stored under their own name on the module.
_ARG_GETTERS: dict[str, Callable[[nn.Module], Any]] = {
    "MultiheadAttention.bias": lambda m: m.in_proj_bias is not None,
    "MultiheadAttention.add_bias_kv": lambda m: m.bias_k is not None,
}

_SKIPPED_ARGS = {"self", "device", "dtype"}

#: Constructor arguments of classes whose ``__init__`` takes ``*args, **kwargs`` (each kept as an attribute).
_RECURRENT_ARGS = ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional")
_NAMED_ARGS: dict[str, tuple[str, ...]] = {
    "LSTM": _RECURRENT_ARGS + ("proj_size",),
    "GRU": _RECURRENT_ARGS,
    "RNN": _RECURRENT_ARGS + ("nonlinearity",),
}


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _encode_value(value: Any, where: str) -> Any:
    """JSON-encode a constructor argument; tuples are tagged so they come back as tuples."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, tuple):
        return {"__tuple__": [_encode_value(v, where) for v in value]}
    if isinstance(value, list):
        return [_encode_value(v, where) for v in value]
    raise UnsupportedModuleError(f"{where}: constructor argument of type {type(value).__name__} cannot be saved")


def _decode_value(value: Any) -> Any:
    """Inverse of ``_encode_value``."""
    if isinstance(value, dict):
        return tuple(_decode_value(v) for v in value["__tuple__"])
    if isinstance(value, list):
        return [_decode_value(v) for v in value]
    return value


def _ctor_args(name: str, module: nn.Module) -> dict[str, Any]:
    """Recover constructor arguments from attributes, guided by the ``__init__`` signature."""
    cls = type(module)
    named = _NAMED_ARGS.get(cls.__name__)
    if named is not None:
        return {p: _encode_value(getattr(module, p), f"module {name!r} argument {p!r}") for p in named}
    args: dict[str, Any] = {}
    for pname, param in inspect.signature(cls.__init__).parameters.items():
        if pname in _SKIPPED_ARGS or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        getter = _ARG_GETTERS.get(f"{cls.__name__}.{pname}")
        if getter is not None:
            value = getter(module)
        elif pname == "bias" and isinstance(getattr(module, "bias", None), (torch.Tensor, type(None))):
            value = module.bias is not None
        elif hasattr(module, pname) and not isinstance(getattr(module, pname), torch.Tensor):
            value = getattr(module, pname)
        elif param.default is not param.empty:
            continue  # not recorded on the module (e.g. PReLU's init value); weights carry the state
        else:
            raise UnsupportedModuleError(f"module {name!r} ({_qualname(cls)}): cannot recover argument {pname!r}")
        args[pname] = _encode_value(value, f"module {name!r} ({_qualname(cls)}) argument {pname!r}")
    return args


def _describe_module(name: str, module: nn.Module) -> dict[str, Any]:
    """JSON entry for one module: type, constructor args, direct tensors, training flag."""
    cls = type(module)
    entry: dict[str, Any] = {"name": name}
    if name == "":
        entry["type"] = "GraphModule"
    elif CONTAINERS.get(cls.__name__) is cls:
        entry["type"] = cls.__name__
    elif ALLOWED_MODULES.get(cls.__name__) is cls:
        entry["type"] = cls.__name__
        entry["args"] = _ctor_args(name, module)
    else:
        raise UnsupportedModuleError(
            f"cannot save module {name!r} of type {_qualname(cls)}: not in the allow-list of torch.nn "
            f"modules (fxprune.export.ALLOWED_MODULES / CONTAINERS)"
        )
    masked = masked_names(module)
    if masked:
        raise UnsupportedModuleError(
            f"module {name!r} is masked by torch.nn.utils.prune ({masked[0]} = {masked[0]}_orig * {masked[0]}_mask, "
            f"computed by a hook that save cannot keep): make the mask permanent first, with "
            f"torch.nn.utils.prune.remove(module, {masked[0]!r}) on the module"
        )
    buffers = [b for b, t in module._buffers.items() if t is not None]
    entry["training"] = module.training
    entry["parameters"] = [p for p, t in module._parameters.items() if t is not None]
    entry["buffers"] = buffers
    entry["nonpersistent_buffers"] = sorted(set(buffers) & module._non_persistent_buffers_set)
    return entry


def _module_entries(gm: nn.Module) -> list[dict[str, Any]]:
    """Entries for every module, parents first; shared modules become ``alias_of`` entries."""
    first_name: dict[int, str] = {}
    entries = []
    for name, module in gm.named_modules(remove_duplicate=False):
        if id(module) in first_name:
            entries.append({"name": name, "alias_of": first_name[id(module)]})
            continue
        first_name[id(module)] = name
        entries.append(_describe_module(name, module))
    return entries


# --------------------------------------------------------------------------- save/load: tensors


def _get_attr_constants(gm: torch.fx.GraphModule) -> dict[str, torch.Tensor]:
    """Tensors reached by get_attr nodes that are plain attributes, not params/buffers."""
    registered = {n for n, _ in gm.named_parameters(remove_duplicate=False)}
    registered |= {n for n, _ in gm.named_buffers(remove_duplicate=False)}
    constants = {}
    for node in gm.graph.nodes:
        if node.op != "get_attr" or node.target in registered:
            continue
        value = _resolve_attr(gm, node.target)
        if isinstance(value, nn.Module):
            continue
        if not isinstance(value, torch.Tensor):
            raise UnsupportedModuleError(f"get_attr {node.target!r} is a {type(value).__name__}, not a tensor")
        constants[node.target] = value.detach()
    return constants


def _resolve_attr(root: nn.Module, qualname: str) -> Any:
    obj: Any = root
    for atom in qualname.split("."):
        obj = getattr(obj, atom)
    return obj


def _owner(root: nn.Module, qualname: str) -> tuple[nn.Module, str]:
    """(module holding the attribute, attribute name) for a dotted name."""
    prefix, _, attr = qualname.rpartition(".")
    return (_resolve_attr(root, prefix) if prefix else root), attr


def _tied_groups(gm: nn.Module) -> list[list[str]]:
    """Names under which one Parameter/buffer object is registered more than once."""
    groups: dict[int, list[str]] = {}
    for name, t in [*gm.named_parameters(remove_duplicate=False), *gm.named_buffers(remove_duplicate=False)]:
        groups.setdefault(id(t), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


# --------------------------------------------------------------------------- save/load: code globals


def _encode_global(name: str, value: Any) -> dict[str, Any]:
    """Describe a global of the generated code by import path (modules, functions, classes)."""
    if isinstance(value, float):  # inf / nan
        return {"float": repr(value)}
    if value is type(None):
        return {"nonetype": True}
    if isinstance(value, types.ModuleType):
        spec: dict[str, Any] = {"module": value.__name__}
    else:
        module, qual = getattr(value, "__module__", None), getattr(value, "__qualname__", None)
        if not (isinstance(module, str) and isinstance(qual, str)) or "<locals>" in qual:
            raise UnsupportedModuleError(f"generated code uses global {name!r} ({value!r}) that is not importable")
        spec = {"object": [module, qual]}
    try:
        same = _decode_global(spec) is value
    except (ImportError, AttributeError):
        same = False
    if not same:
        raise UnsupportedModuleError(f"generated code uses global {name!r} ({value!r}) that does not re-import")
    return spec


def _decode_global(spec: dict[str, Any]) -> Any:
    if "module" in spec:
        return importlib.import_module(spec["module"])
    if "nonetype" in spec:
        return type(None)
    if "float" in spec:
        return float(spec["float"])
    module, qual = spec["object"]
    obj: Any = importlib.import_module(module)
    for atom in qual.split("."):
        obj = getattr(obj, atom)
    return obj


# --------------------------------------------------------------------------- save


def _require_graph_module(model: Any) -> torch.fx.GraphModule:
    if not isinstance(model, torch.fx.GraphModule):
        raise TypeError(
            f"save() needs a torch.fx.GraphModule (e.g. fxprune.prune's output or torch.fx.symbolic_trace(model)), "
            f"got {type(model).__name__}"
        )
    return model


def _description(gm: torch.fx.GraphModule) -> tuple[str, dict[str, Any], dict[str, torch.Tensor]]:
    """(code, JSON spec, tensors for weights.pt) describing ``gm`` completely."""
    python_code = gm.graph.python_code(root_module="self")
    if python_code.src != gm.code:
        logger.warning("graph was edited without recompile(); saving the code of the current graph")
    constants = _get_attr_constants(gm)
    tensors = dict(gm.state_dict())
    nonpersistent = [n for n, b in gm.named_buffers(remove_duplicate=False) if n not in tensors]
    for n in nonpersistent:
        tensors[n] = _resolve_attr(gm, n).detach()
    tensors.update(constants)
    spec = {
        "format": _FORMAT_TAG,
        "version": _FORMAT_VERSION,
        "torch_version": torch.__version__,
        "class_name": type(gm).__name__,
        "globals": {k: _encode_global(k, v) for k, v in python_code.globals.items()},
        "modules": _module_entries(gm),
        "extra_tensors": {"nonpersistent_buffers": nonpersistent, "constants": sorted(constants)},
        "ties": _tied_groups(gm),
        "frozen": [n for n, p in gm.named_parameters(remove_duplicate=False) if not p.requires_grad],
    }
    return python_code.src, spec, tensors


def save(model: torch.fx.GraphModule, directory: str | os.PathLike, overwrite: bool = False) -> Path:
    """Save a GraphModule to ``directory`` without pickle: code.py, modules.json, weights.pt.

    The directory is written as ``<dir>.tmp-<random>`` and renamed into place, so
    readers never see a partial save. Submodules must be allow-listed torch.nn
    types (``UnsupportedModuleError`` names the offender). Hooks and non-tensor
    attributes are not saved.
    """
    gm = _require_graph_module(model)
    directory = Path(directory)
    if directory.exists() and not overwrite:
        raise FileExistsError(f"{str(directory)!r} exists; pass overwrite=True to replace it")
    code, spec, tensors = _description(gm)
    tmp = directory.with_name(f"{directory.name}.tmp-{secrets.token_hex(4)}")
    try:
        tmp.mkdir()
        (tmp / CODE_FILE).write_text(code)
        (tmp / MODULES_FILE).write_text(json.dumps(spec, indent=1))
        torch.save(tensors, tmp / WEIGHTS_FILE)
        _move_into_place(tmp, directory)
    except BaseException:
        _remove(tmp)
        raise
    logger.info("saved %s to %s", spec["class_name"], directory)
    return directory


def _move_into_place(tmp: Path, directory: Path) -> None:
    """Rename ``tmp`` to ``directory``; an existing one is moved aside first, then deleted."""
    old = None
    if directory.exists():
        old = directory.with_name(f"{directory.name}.old-{secrets.token_hex(4)}")
        os.rename(directory, old)
    try:
        os.rename(tmp, directory)
    except BaseException:
        if old is not None:
            os.rename(old, directory)
        raise
    if old is not None:
        _remove(old)


# --------------------------------------------------------------------------- load


def _new_module(entry: dict[str, Any]) -> nn.Module:
    """Instantiate one allow-listed module or container from its JSON entry."""
    kind = entry["type"]
    if kind in CONTAINERS:
        return CONTAINERS[kind]()
    if kind not in ALLOWED_MODULES:
        raise UnsupportedModuleError(f"cannot load module {entry['name']!r} of unknown type {kind!r}")
    args = {k: _decode_value(v) for k, v in entry.get("args", {}).items()}
    return ALLOWED_MODULES[kind](**args)


def _attach(root: torch.fx.GraphModule, built: dict[str, nn.Module], entry: dict[str, Any]) -> nn.Module:
    """Create (or, for children a constructor already made, check) the module named by ``entry``."""
    name = entry["name"]
    parent_name, _, attr = name.rpartition(".")
    parent = built[parent_name]
    if "alias_of" in entry:
        module = built[entry["alias_of"]]
    elif attr in parent._modules:  # made by the parent's constructor (e.g. MultiheadAttention.out_proj)
        module = parent._modules[attr]
        if type(module).__name__ != entry["type"]:
            raise UnsupportedModuleError(f"module {name!r}: constructor made {type(module).__name__}, saved {entry['type']}")
        return module
    else:
        module = _new_module(entry)
    parent.add_module(attr, module)
    return module


def _register_direct_tensors(module: nn.Module, entry: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """Register saved params/buffers the constructor did not create (e.g. on plain containers)."""
    prefix = f"{entry['name']}." if entry["name"] else ""
    for p in entry["parameters"]:
        if module._parameters.get(p) is None:
            module.register_parameter(p, nn.Parameter(tensors[prefix + p]))
    for b in entry["buffers"]:
        if module._buffers.get(b) is None:
            module.register_buffer(b, tensors[prefix + b], persistent=b not in entry["nonpersistent_buffers"])


def _build_modules(spec: dict[str, Any], tensors: dict[str, torch.Tensor]) -> torch.fx.GraphModule:
    """Rebuild the module tree; constructor-made tensors live on 'meta' until weights are assigned."""
    with torch.device("meta"):
        root = torch.fx.GraphModule(nn.Module(), torch.fx.Graph(), class_name=spec["class_name"])
        built: dict[str, nn.Module] = {"": root}
        for entry in spec["modules"]:
            module = root if entry["name"] == "" else _attach(root, built, entry)
            built[entry["name"]] = module
            if "alias_of" not in entry:
                _register_direct_tensors(module, entry, tensors)
                module.training = entry["training"]
    return root


def _assign_weights(gm: nn.Module, spec: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """Strict state-dict load, then extras, weight ties and requires_grad flags."""
    extras = spec["extra_tensors"]
    extra_names = [*extras["nonpersistent_buffers"], *extras["constants"]]
    state = {k: v for k, v in tensors.items() if k not in set(extra_names)}
    gm.load_state_dict(state, strict=True, assign=True)
    for name in extras["nonpersistent_buffers"]:
        owner, attr = _owner(gm, name)
        owner._buffers[attr] = tensors[name]
    for name in extras["constants"]:
        owner, attr = _owner(gm, name)
        setattr(owner, attr, tensors[name])
    for names in spec["ties"]:
        shared = _resolve_attr(gm, names[0])
        for alias in names[1:]:
            owner, attr = _owner(gm, alias)
            (owner._parameters if attr in owner._parameters else owner._buffers)[attr] = shared
    for name in spec["frozen"]:
        _resolve_attr(gm, name).requires_grad_(False)
    _check_materialised(gm, extras["constants"])


def _check_materialised(gm: nn.Module, constants: list[str]) -> None:
    """Fail loudly if any tensor was left on 'meta' (i.e. missing from weights.pt)."""
    named = [*gm.named_parameters(remove_duplicate=False), *gm.named_buffers(remove_duplicate=False)]
    named += [(n, _resolve_attr(gm, n)) for n in constants]
    missing = [n for n, t in named if t.is_meta]
    if missing:
        raise SerializationError(f"weights.pt lacks tensors for {missing}")


class _ReplayTracer(torch.fx.Tracer):
    """Re-trace saved code: every module it calls was a leaf when the code was generated."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True


def _bind_code(gm: torch.fx.GraphModule, code: str, spec: dict[str, Any], filename: str) -> None:
    """Exec the saved forward, re-trace it against ``gm`` and install the graph."""
    namespace = {name: _decode_global(g) for name, g in spec["globals"].items()}
    # dont_inherit: this module's `from __future__ import annotations` must not turn
    # the saved code's annotations into strings (they would leak into the graph).
    exec(compile(code, filename, "exec", dont_inherit=True), namespace)
    type(gm).forward = namespace["forward"]  # each GraphModule instance has its own class
    wrapped = tuple(v for v in namespace.values() if isinstance(v, types.FunctionType) and v is not namespace["forward"])
    gm.graph = _ReplayTracer(autowrap_functions=wrapped).trace(gm)


@torch.inference_mode(False)  # trainable weights even when loaded under inference mode (see passes.rewrite)
def load(directory: str | os.PathLike, map_location: Any = "cpu") -> torch.fx.GraphModule:
    """Load a directory written by ``save`` and return a ``torch.fx.GraphModule``.

    No pickle is involved (weights use ``weights_only=True``), but ``code.py``
    is executed: load only directories you would import Python code from.
    The graph is rebuilt by re-tracing that code with every called module a
    leaf, so node names may differ and dead ``getattr`` nodes vanish; the
    computation is the same.
    """
    directory = Path(directory)
    spec = json.loads((directory / MODULES_FILE).read_text())
    if spec.get("format") != _FORMAT_TAG or spec.get("version") != _FORMAT_VERSION:
        raise SerializationError(f"{str(directory)!r} is not an fxprune save (format/version {spec.get('format')}/{spec.get('version')})")
    tensors = torch.load(directory / WEIGHTS_FILE, map_location=map_location, weights_only=True)
    gm = _build_modules(spec, tensors)
    _assign_weights(gm, spec, tensors)
    code_path = directory / CODE_FILE
    _bind_code(gm, code_path.read_text(), spec, str(code_path.resolve()))
    return gm
