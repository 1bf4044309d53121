"""Pipelines behind the ``fxprune`` command line, importable and returning plain dicts.

Why a module of its own: the CLI only parses arguments, so notebooks and benchmarks can run the
very pipelines the command line runs. :func:`run_experiment` is one row of the seeds' tables:
train (or load) a baseline, plan and save the plan (the seeds' ``generate_prune_info``), prune,
fine-tune with the seed's recipe and record top-1 before/after with FR/PR.

Output directories (``prune``, ``train``, ``finetune`` and an experiment's ``baseline/`` and
``pruned/``) hold ``model.pt`` (TorchScript: needs only torch), ``saved/`` (:func:`fxprune.save`:
code + weights, no pickle), ``meta.json`` (input size, classes, where the model came from), plus
``plan.json``/``report.json`` after pruning or ``train.json``/``metrics.jsonl``/``checkpoints/``
after training. Finished outputs are built in a temporary folder and then moved into place with
``os.replace``, so a failure never leaves half-written files.

Top-1 accuracies are percentages (the seeds' tables), taken from the best epoch's weights on the
test split, as the seeds keep their best-test-accuracy checkpoint.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import json
import logging
import math
import os
import secrets
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

import fxprune
from fxprune import data as fxdata
from fxprune import runner
from fxprune.export import export as _export, load as _load, save as _save
from fxprune.report import report as _report
from passes.hooks import mask_like

__all__ = [
    "InputError", "ModelSource", "Budget", "TrainOptions", "ExperimentConfig", "resolve_model", "load_weights",
    "example_input", "calibration_batches", "prune_model", "prune_to_dir", "info", "report_models",
    "report_plan", "export_model", "evaluate_model", "train", "finetune_dir", "run_experiment",
    "default_preset", "dataset_input_size", "BASELINE_RECIPE", "write_json", "write_text_atomic",
]

log = logging.getLogger(__name__)

SEED_INPUT_SIZE, TORCHVISION_INPUT_SIZE = 32, 224
META, SAVED, TORCHSCRIPT = "meta.json", "saved", "model.pt"

# RGD's train.py (spec §1.6): the baseline recipe of the seeds' CIFAR tables.
BASELINE_RECIPE = dict(epochs=200, batch_size=256, lr=0.1, step_size=50, gamma=0.1, momentum=0.9,
                       weight_decay=5e-4)

_DATASET_SIZE = {"cub200": 448, "imagenet": 224}  # the others are 32x32 (see fxprune.data)

# Which seed's fine-tune recipe (runner.PRESETS) belongs to a criterion, per dataset family.
_FAMILY = {"graph": "rgd", "l1": "l1", "l2": "sfp", "sfp": "sfp", "coring": "coring", "fmc": "fmc"}


class InputError(ValueError):
    """The user named something fxprune cannot use (unknown model, wrong kind of file)."""


# --------------------------------------------------------------------------- models

@dataclass
class ModelSource:
    """A model plus what the pipelines need to know about it."""

    model: nn.Module
    name: str
    kind: str  # "seed" | "torchvision" | "saved" | "torchscript"
    input_size: int
    num_classes: int | None = None
    random_init: bool = False

    def describe(self) -> str:
        what = {"seed": "bundled seed architecture", "torchvision": "torchvision model",
                "saved": "fxprune save", "torchscript": "TorchScript file"}[self.kind]
        init = ", random init: no trained weights given" if self.random_init else ""
        return f"{self.name} ({what}{init}), input 1x3x{self.input_size}x{self.input_size}"

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "input_size": self.input_size,
                "num_classes": self.num_classes, "random_init": self.random_init}


def example_input(size: int, batch: int = 1) -> torch.Tensor:
    """A fixed (seeded) image batch: shapes for tracing, the same numbers on every run."""
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


def dataset_input_size(dataset: str | None) -> int | None:
    """Image side the dataset's transforms produce (None for no dataset)."""
    return None if dataset is None else _DATASET_SIZE.get(fxdata._canonical(dataset), SEED_INPUT_SIZE)


def resolve_model(spec: str, *, num_classes: int | None = None, input_size: int | None = None, seed: int = 0,
                  dataset: str | None = None, weights: str | os.PathLike | None = None) -> ModelSource:
    """A path (save directory or TorchScript file), a seed architecture or a torchvision name.

    Seed names win over torchvision's (``googlenet``); prefix ``torchvision:`` or ``seed:`` to
    choose. Named models get the ``weights`` checkpoint (a state_dict file, see :func:`load_weights`),
    else random weights, seeded so runs repeat. The input size is ``input_size``, else the saved one,
    else the dataset's, else 32 (seeds) / 224 (torchvision).
    """
    path = Path(spec)
    if path.exists():
        if weights is not None:
            raise InputError(f"--weights goes with a model name (resnet50, resnet56, ...), not with a file: {spec!r}")
        return _load_path(path, input_size, dataset_input_size(dataset))
    if os.sep in spec or path.suffix in (".pt", ".pth", ".ts", ".pt2"):
        raise InputError(f"no such file or directory: {spec!r}")
    source = _build_named(spec, num_classes, input_size or dataset_input_size(dataset), seed)
    if weights is not None:
        load_weights(source.model, weights)
        source.random_init = False
    return source


#: Where common training scripts keep the state_dict inside a checkpoint dict.
_CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "net", "module", "weights")


def load_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Load trained weights into a named architecture: a ``state_dict`` saved with ``torch.save``, or a
    checkpoint dict holding one (under "state_dict", "model", ...); a ``module.`` prefix left by
    DataParallel/DDP is dropped, and the masks of a model masked with torch.nn.utils.prune
    (``weight_orig``/``weight_mask`` keys) are put back on. Read with ``weights_only=True``: no code in
    the file runs."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no such weights file: {str(path)!r}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for foreign or pickled-code files
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InputError(f"cannot read weights from {str(path)!r} ({first}); save them with "
                         "torch.save(model.state_dict(), path)") from e
    state = _state_dict_in(checkpoint, path)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    mask_like(model, state)  # weights saved from a model masked with torch.nn.utils.prune
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        detail = " ".join(str(e).split())[:400]
        raise InputError(f"the weights in {str(path)!r} do not fit this architecture: {detail} "
                         "(a different --num-classes?)") from e
    if missing or unexpected:
        raise InputError(f"the weights in {str(path)!r} do not fit this architecture: {len(missing)} missing "
                         f"(e.g. {', '.join(missing[:3]) or '-'}), {len(unexpected)} unexpected "
                         f"(e.g. {', '.join(unexpected[:3]) or '-'})")


def _state_dict_in(checkpoint: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(checkpoint, dict) and checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return checkpoint
    if isinstance(checkpoint, dict):
        for key in _CHECKPOINT_KEYS:
            if isinstance(checkpoint.get(key), dict):
                return _state_dict_in(checkpoint[key], path)
    raise InputError(f"{str(path)!r} holds no state_dict (a dict of tensors, or one under "
                     f"{', '.join(repr(k) for k in _CHECKPOINT_KEYS)})")


def _torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _build_named(spec: str, num_classes: int | None, input_size: int | None, seed: int) -> ModelSource:
    from fxprune.models import get_model as seed_model, list_models

    prefix, _, bare = spec.partition(":") if ":" in spec else ("", "", spec)
    key = bare.lower().replace("-", "_")
    if prefix in ("", "seed") and key in list_models():
        torch.manual_seed(seed)
        k = num_classes or 10
        return ModelSource(seed_model(key, num_classes=k), key, "seed", input_size or SEED_INPUT_SIZE, k, True)
    if prefix in ("", "torchvision", "tv") and bare in _torchvision_names():
        import torchvision

        torch.manual_seed(seed)
        k = num_classes or 1000
        model = torchvision.models.get_model(bare, weights=None, num_classes=k)
        return ModelSource(model, bare, "torchvision", input_size or TORCHVISION_INPUT_SIZE, k, True)
    raise InputError(_unknown_model_message(spec, list_models(), _torchvision_names()))


def _unknown_model_message(spec: str, seeds: list[str], tv: list[str]) -> str:
    close = difflib.get_close_matches(spec.split(":")[-1].lower(), seeds + tv, n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    seed_some = [n for n in ("resnet20", "resnet56", "vgg16_bn", "densenet40", "googlenet", "mobilenetv2") if n in seeds]
    tv_some = [n for n in ("resnet18", "resnet50", "mobilenet_v2", "vgg16_bn") if n in tv]
    return (f"unknown model {spec!r}: not a file, a bundled seed architecture or a torchvision "
            f"classification model; {hint}seed architectures: {', '.join(seed_some)}, ... "
            f"({len(seeds)} in all); torchvision: {', '.join(tv_some)}, ... ({len(tv)} in all)")


def _load_path(path: Path, input_size: int | None, data_size: int | None) -> ModelSource:
    """A directory with saved/ (or a save itself), else a TorchScript file."""
    if path.is_dir():
        saved = path / SAVED if (path / SAVED / "modules.json").is_file() else path
        if not (saved / "modules.json").is_file():
            raise InputError(f"{str(path)!r} is not a model directory: expected an fxprune save "
                             f"(modules.json) or an output folder of `fxprune prune/train/finetune` (saved/)")
        model, kind, home = _load(saved).eval(), "saved", (path if saved != path else path.parent)
    else:
        model, kind, home = _jit_load(path), "torchscript", path.parent
    meta = _read_json(home / META) or {}
    size = input_size or meta.get("input_size") or data_size or _size_from_plan(home / "plan.json")
    if size is None:
        log.warning("input size of %s unknown (no meta.json): using %d; pass --input-size", path,
                    TORCHVISION_INPUT_SIZE)
        size = TORCHVISION_INPUT_SIZE
    return ModelSource(model, str(path), kind, int(size), meta.get("num_classes"), bool(meta.get("random_init")))


def _jit_load(path: Path) -> nn.Module:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*is deprecated", category=FutureWarning)
        try:
            return torch.jit.load(str(path), map_location="cpu").eval()
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise InputError(f"{str(path)!r} is not a TorchScript file or fxprune save ({first})") from e


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _size_from_plan(path: Path) -> int | None:
    shapes = ((_read_json(path) or {}).get("options") or {}).get("input_shape")
    return int(shapes[0][-1]) if shapes else None


def _require_fx(source: ModelSource, what: str) -> None:
    """TorchScript runs but cannot be traced, counted or saved: say so instead of a torch error."""
    if isinstance(source.model, torch.jit.ScriptModule):
        raise InputError(f"cannot {what} a TorchScript file ({source.name}): torch.fx cannot trace it; "
                         f"pass the fxprune save next to it (the output folder or its saved/) or a model name")


# --------------------------------------------------------------------------- outputs

def _main_process() -> bool:
    """Under torchrun every rank runs the pipeline; only rank 0 writes files (as the runner does)."""
    return int(os.environ.get("RANK", 0)) == 0


@contextlib.contextmanager
def staged(out_dir: str | os.PathLike) -> Iterator[Path]:
    """A temporary folder inside ``out_dir``; on success its entries replace ``out_dir``'s."""
    out = Path(out_dir)
    main = _main_process()
    if main:
        out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".fxprune-tmp-", dir=out if main else None))
    try:
        yield tmp
        for entry in sorted(tmp.iterdir()) if main else ():
            _replace(entry, out / entry.name, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _replace(src: Path, dst: Path, trash: Path) -> None:
    """os.replace, but an existing directory is first moved into ``trash`` (replace needs it gone)."""
    if dst.is_dir() and not dst.is_symlink():
        os.replace(dst, trash / f".old-{secrets.token_hex(4)}")
    os.replace(src, dst)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write JSON atomically (:func:`write_text_atomic`), from the main process only."""
    path = Path(path)
    if _main_process():
        write_text_atomic(path, json.dumps(json_safe(obj), indent=1) + "\n")
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write under a temporary name, then rename: readers never see half a file, and a failure leaves none."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def json_safe(obj: Any) -> Any:
    """NaN/inf become None and tuples lists, so the output is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def _as_graph_module(model: nn.Module, x: torch.Tensor) -> torch.fx.GraphModule:
    """fxprune.save stores GraphModules; a plain nn.Module is traced (sharing its weights)."""
    if isinstance(model, torch.fx.GraphModule):
        return model
    from passes.trace import trace

    return trace(model, (x,))[0]


def write_model(stage: Path, model: nn.Module, x: torch.Tensor, meta: dict) -> None:
    """model.pt (TorchScript), saved/ (pickle-free fxprune save) and meta.json into ``stage``."""
    model = model.cpu().eval()
    _export(model, stage / TORCHSCRIPT, format="torchscript", example_inputs=x)
    _save(_as_graph_module(model, x), stage / SAVED)
    write_json(stage / META, meta)


def _meta(source: ModelSource, **extra) -> dict:
    """What loading the folder later needs (input size) and where its weights came from."""
    return {"format": "fxprune-cli", "input_size": source.input_size, "num_classes": source.num_classes,
            "random_init": source.random_init and not extra.get("trained"), "source": source.to_dict(), **extra}


# --------------------------------------------------------------------------- data

def calibration_batches(dataset: str, root=None, samples: int = 128, batch_size: int = 64,
                        seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled training images for data-driven criteria; a list, so criteria may read it twice."""
    ds = fxdata.load_dataset(dataset, root, "train", seed=seed)
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:samples].tolist()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # augmentation draws from the global RNG
        items = [ds[i] for i in idx]
    xs = torch.stack([x for x, _ in items])
    ys = torch.tensor([int(y) for _, y in items])
    return [(xs[i:i + batch_size], ys[i:i + batch_size]) for i in range(0, len(xs), batch_size)]


# --------------------------------------------------------------------------- pruning

@dataclass(frozen=True)
class Budget:
    """How much to prune: exactly one of these, or none (graph's default threshold)."""

    ratio: float | dict | None = None
    threshold: float | None = None
    flops_reduction: float | None = None

    def kwargs(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


def prune_model(model: nn.Module, x: torch.Tensor, criterion: str, budget: Budget, data=None,
                round_to: int | None = None, ignore=(), grouped_convs: str = "whole",
                criterion_options: dict | None = None) -> torch.fx.GraphModule:
    """fxprune.prune with the budget's keywords (and the criterion's options, e.g. group_reduction)."""
    return fxprune.prune(model, x, criterion=criterion, data=data, round_to=round_to, ignore=tuple(ignore),
                         grouped_convs=grouped_convs, **budget.kwargs(), **(criterion_options or {}))


def _prune_and_measure(source: ModelSource, criterion: str, budget: Budget, data, round_to, ignore,
                       grouped_convs: str = "whole", criterion_options: dict | None = None):
    """Prune, check masked equivalence, count: the shared core of `prune` and experiments."""
    _require_fx(source, "prune")
    x = example_input(source.input_size)
    model = source.model.cpu().eval()
    small = prune_model(model, x, criterion, budget, data, round_to, ignore, grouped_convs, criterion_options)
    err = fxprune.verify(model, small, _verification_images(data, x), rtol=1e-4)
    rep = _report(model, small, x, print_table=False)
    return small, x, err, rep


def _verification_images(data, fallback: torch.Tensor, count: int = 16) -> torch.Tensor:
    """Real images when there are calibration batches: a trained model's output barely moves between two
    noise inputs, which leaves the masked-equivalence check little to tell apart (fxprune warns then)."""
    first = next(iter(data), None) if isinstance(data, (list, tuple)) else None
    images = first[0] if isinstance(first, (list, tuple)) else first
    return images[:count] if isinstance(images, torch.Tensor) and images.dim() == fallback.dim() else fallback


def prune_to_dir(source: ModelSource, criterion: str, budget: Budget, out, *, data=None,
                 round_to: int | None = None, ignore=(), grouped_convs: str = "whole", bn_data=None,
                 bn_images: int = 0, criterion_options: dict | None = None) -> dict:
    """Prune ``source`` and write model.pt, plan.json, report.json, saved/ and meta.json to ``out``.

    ``bn_images > 0``: after the check, the compact model's BatchNorm statistics are measured anew on that
    many images of ``bn_data`` (:func:`fxprune.recalibrate_bn`)."""
    small, x, err, rep = _prune_and_measure(source, criterion, budget, data, round_to, ignore, grouped_convs,
                                            criterion_options)
    plan = small.meta["fxprune.plan"]
    recalibrated = fxprune.recalibrate_bn(small, bn_data, images=bn_images) if bn_images else 0
    report = {**rep.to_dict(), "input_shape": list(x.shape), "verify_error": err,
              "bn_recalibrated_images": recalibrated}
    with staged(out) as stage:
        write_model(stage, small, x, _meta(source, pruned=True, criterion=criterion))
        write_json(stage / "plan.json", plan.to_dict())
        write_json(stage / "report.json", report)
    return {"model": source.to_dict(), "criterion": criterion, "budget": budget.kwargs(),
            "calibration_data": data is not None, "pruned_groups": len(plan.groups),
            "verify_error": err, "bn_recalibrated_images": recalibrated, "report": rep.to_dict(), "table": str(rep),
            "outputs": _outputs(out, "model.pt", "plan.json", "report.json", "saved", "meta.json")}


def _outputs(out, *names) -> dict:
    return {n: str(Path(out) / n) for n in names}


def sensitivity_to_dir(source: ModelSource, dataset: str, criterion: str, ratios, max_drop: float, out, *,
                       root=None, eval_images: int = 1000, data=None, bn_data=None, bn_images: int = 0) -> dict:
    """:func:`fxprune.sensitivity` with top-1 (percent) on ``eval_images`` test images (a seeded sample: the
    scan evaluates once per group and ratio); writes sensitivity.json and ratios.json (the ``--ratio`` of
    ``fxprune prune`` that keeps each group within ``max_drop`` points) to ``out``. ``bn_images > 0``: every
    model's BatchNorm statistics, the baseline's too (on a copy), are measured anew on ``bn_data`` before it is
    evaluated, so that a drop compares like with like."""
    _require_fx(source, "scan")
    test = fxdata.load_dataset(dataset, root, "test")
    pick = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:eval_images].tolist()
    test = torch.utils.data.Subset(test, pick)
    model = source.model.eval()

    def top1(net: nn.Module) -> float:
        if bn_images:
            net = copy.deepcopy(net) if net is model else net  # the compact models are the scan's own
            fxprune.recalibrate_bn(net, bn_data, images=bn_images)
        return 100.0 * runner.evaluate(net, test, device="cuda" if torch.cuda.is_available() else "cpu")[1]

    scan = fxprune.sensitivity(model, top1, example_input(source.input_size), criterion=criterion, ratios=ratios,
                               data=data)
    chosen = scan.ratios(max_drop)
    with staged(out) as stage:
        write_json(stage / "sensitivity.json", {**scan.to_dict(), "metric": "top-1 %", "dataset": dataset,
                                                "eval_images": len(test), "bn_recalibrated_images": bn_images,
                                                "max_drop": max_drop, "ratios": chosen})
        write_json(stage / "ratios.json", chosen)
    return {"model": source.to_dict(), "criterion": criterion, "baseline_top1": scan.baseline,
            "groups": len(scan.groups), "ratios": chosen, "table": str(scan),
            "outputs": _outputs(out, "sensitivity.json", "ratios.json")}


# --------------------------------------------------------------------------- info / report / export / eval

def info(source: ModelSource) -> tuple[dict, str]:
    """Channel groups and why frozen ones are frozen (fxprune.analyze)."""
    _require_fx(source, "analyze")
    analysis = fxprune.analyze(source.model.eval(), example_input(source.input_size))
    groups = [{"id": g.id, "channels": g.n_classes, "prunable": not g.frozen,
               "members": [list(m) for m in g.members], "reasons": [str(r) for r in g.reasons]}
              for g in analysis.groups]
    result = {"model": source.to_dict(), "groups": groups,
              "prunable": sum(g["prunable"] for g in groups),
              "frozen": sum(not g["prunable"] for g in groups)}
    return result, str(analysis)


def report_models(original: ModelSource, pruned: ModelSource) -> dict:
    """Params/MACs before and after on the original's input size."""
    _require_fx(original, "count")
    _require_fx(pruned, "count")
    x = example_input(original.input_size)
    rep = _report(original.model.eval(), pruned.model.eval(), x, print_table=False)
    return {"original": original.to_dict(), "pruned": pruned.to_dict(), "report": rep.to_dict(),
            "table": str(rep)}


def report_plan(source: ModelSource, plan_path) -> dict:
    """Apply a saved plan to ``source`` and count: what a plan costs before any training."""
    _require_fx(source, "count")
    plan = fxprune.Plan.from_dict(json.loads(Path(plan_path).read_text()))
    size = _size_from_plan(Path(plan_path)) or source.input_size
    x = example_input(size)
    small = fxprune.apply(source.model.eval(), plan, x)
    rep = _report(source.model, small, x, print_table=False)
    return {"original": source.to_dict(), "plan": str(plan_path), "report": rep.to_dict(), "table": str(rep)}


def export_model(source: ModelSource, fmt: str, out, dynamic_batch: bool = True) -> dict:
    """One deployable file (torchscript / export / onnx) at ``out``; see :func:`fxprune.export`."""
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    path = _export(source.model.eval(), out, format=fmt, example_inputs=example_input(source.input_size),
                   dynamic_batch=dynamic_batch)
    return {"model": source.to_dict(), "format": fmt, "path": str(path), "dynamic_batch": dynamic_batch}


def evaluate_model(source: ModelSource, dataset: str, root=None, batch_size: int = 256) -> dict:
    """Top-1 (percent) and mean cross-entropy on the dataset's test split."""
    ds = fxdata.load_dataset(dataset, root, "test")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    loss, acc = runner.evaluate(source.model.eval(), ds, device=device, batch_size=batch_size)
    source.model.cpu()
    return {"model": source.to_dict(), "dataset": dataset, "top1": 100.0 * acc, "loss": loss,
            "samples": len(ds)}


# --------------------------------------------------------------------------- training

@dataclass
class TrainOptions:
    """Optimisation settings shared by train, finetune and experiments (None: recipe's value)."""

    epochs: int | None = None
    preset: str | None = None
    lr: float | None = None
    batch_size: int | None = None
    workers: int | None = None
    max_steps: int | None = None
    data_root: str | None = None
    seed: int = 0
    resume: bool = False
    progress: bool = False
    scale_schedule: bool = False  # a shortened run steps its learning rate at the recipe's fractions of its epochs


def default_preset(criterion: str, dataset: str) -> str:
    """The seed recipe for a criterion on a dataset family (e.g. graph on CIFAR -> rgd-cifar)."""
    family = _FAMILY.get(criterion, "rgd")
    scale = {"imagenet": "imagenet", "cub200": "cub200"}.get(fxdata._canonical(dataset), "cifar")
    name = f"{family}-{scale}"
    if name not in runner.PRESETS:
        log.info("no %s recipe for %s; using %s", family, scale, f"rgd-{scale}")
        name = f"rgd-{scale}"
    return name


def _preset_kwargs(opts: TrainOptions) -> dict:
    """The preset with explicit overrides; a step schedule shorter than one step is constant."""
    kw = dict(preset=opts.preset, epochs=opts.epochs, lr=opts.lr, batch_size=opts.batch_size,
              scale_schedule=opts.scale_schedule)
    p = runner.PRESETS[opts.preset]
    epochs = opts.epochs if opts.epochs is not None else p["epochs"]
    unscaled = not opts.scale_schedule or opts.epochs is None
    if unscaled and p.get("step_size") and p.get("milestones") is None and epochs <= p["step_size"]:
        kw["schedule"] = "constant"  # StepLR never fires within the run: same learning rates
    return kw


def _baseline_kwargs(opts: TrainOptions) -> dict:
    """RGD train.py: SGD lr 0.1, x0.1 every 50 epochs, batch 256, wd 5e-4."""
    r = BASELINE_RECIPE
    epochs = opts.epochs if opts.epochs is not None else r["epochs"]
    milestones = list(range(r["step_size"], r["epochs"] if opts.scale_schedule else epochs, r["step_size"]))
    if opts.scale_schedule:
        milestones = [m for m in runner.scale_milestones(milestones, r["epochs"], epochs) if m < epochs]
    return dict(epochs=epochs, lr=opts.lr or r["lr"], batch_size=opts.batch_size or r["batch_size"],
                schedule="step" if milestones else "constant", milestones=milestones or None,
                gamma=r["gamma"], momentum=r["momentum"], weight_decay=r["weight_decay"])


def _fit(model: nn.Module, dataset: str, opts: TrainOptions, recipe: dict, out: Path) -> dict:
    """runner.finetune on the dataset, then the best epoch's weights back into ``model`` (CPU)."""
    root = opts.data_root
    train_ds = fxdata.load_dataset(dataset, root, "train", seed=opts.seed)
    val_ds = fxdata.load_dataset(dataset, root, "test", seed=opts.seed)
    workers = opts.workers if opts.workers is not None else (0 if fxdata._canonical(dataset) == "digits"
                                                             else min(4, os.cpu_count() or 1))
    out.mkdir(parents=True, exist_ok=True)
    summary = runner.finetune(model, train_ds, val_ds, **recipe, workers=workers,
                              checkpoint_dir=out / "checkpoints", metrics_path=out / "metrics.jsonl",
                              resume=opts.resume, seed=opts.seed, progress=opts.progress,
                              max_steps_per_epoch=opts.max_steps)
    best = out / "checkpoints" / "best.pt"
    if best.is_file():
        model.load_state_dict(runner.load_checkpoint(best)["model"])
    model.cpu().eval()
    return summary


def _train_record(summary: dict) -> dict:
    final = summary.get("final") or {}
    return {"top1": 100.0 * summary["best_acc"] if summary["best_epoch"] >= 0 else None,
            "best_epoch": summary["best_epoch"],
            "top1_final": 100.0 * final["val_acc"] if final else None,
            "recipe": summary["recipe"], "history": summary["history"],
            "device": summary["device"], "world_size": summary["world_size"]}


def _train_into(source: ModelSource, dataset: str, opts: TrainOptions, recipe: dict, out) -> dict:
    """Train ``source.model`` and write the model outputs plus train.json to ``out``."""
    out = Path(out)
    summary = _fit(source.model, dataset, opts, recipe, out)
    record = {**_train_record(summary), "dataset": dataset}
    if record["top1"] is None:  # no epoch ran (epochs=0): the model as it is
        record["top1"] = evaluate_model(source, dataset, opts.data_root)["top1"]
    x = example_input(source.input_size)
    with staged(out) as stage:
        write_model(stage, source.model, x, _meta(source, dataset=dataset, trained=True))
        write_json(stage / "train.json", record)
    return {"model": source.to_dict(), **record,
            "outputs": _outputs(out, "model.pt", "saved", "meta.json", "train.json", "metrics.jsonl")}


def train(source: ModelSource, dataset: str, opts: TrainOptions, out) -> dict:
    """Train from scratch with the seeds' baseline recipe (or ``opts.preset``)."""
    _require_fx(source, "train")
    recipe = _preset_kwargs(opts) if opts.preset else _baseline_kwargs(opts)
    return _train_into(source, dataset, opts, recipe, out)


def finetune_dir(source: ModelSource, dataset: str, opts: TrainOptions, out) -> dict:
    """Fine-tune a (pruned) model with a seed preset."""
    _require_fx(source, "fine-tune")
    if opts.preset is None:
        raise InputError(f"fine-tuning needs a preset; known: {', '.join(sorted(runner.PRESETS))}")
    return _train_into(source, dataset, opts, _preset_kwargs(opts), out)


# --------------------------------------------------------------------------- experiment

@dataclass
class ExperimentConfig:
    """One row of a seed table: arch x dataset x criterion x budget."""

    arch: str
    dataset: str
    criterion: str
    out: str
    budget: Budget = Budget()
    baseline: str | None = None  # a trained model to load instead of training one
    baseline_epochs: int | None = None
    finetune: TrainOptions = dataclasses.field(default_factory=TrainOptions)
    input_size: int | None = None
    calib_samples: int = 128
    round_to: int | None = None


def _baseline(cfg: ExperimentConfig, out: Path, calib) -> tuple[ModelSource, dict | None]:
    """Load ``cfg.baseline`` or train ``cfg.arch`` from scratch into out/baseline."""
    if cfg.baseline:
        loaded = resolve_model(cfg.baseline, input_size=cfg.input_size, dataset=cfg.dataset)
        _require_fx(loaded, "prune")
        return loaded, None
    source = resolve_model(cfg.arch, num_classes=fxdata.num_classes(cfg.dataset), input_size=cfg.input_size,
                           seed=cfg.finetune.seed, dataset=cfg.dataset)
    _require_fx(source, "train")
    if cfg.baseline_epochs == 0:
        return source, None
    # A bad criterion or budget should fail now, not after hours of baseline training.
    log.info("checking criterion %s and the budget on the untrained %s", cfg.criterion, source.name)
    prune_model(source.model.eval(), example_input(source.input_size), cfg.criterion, cfg.budget, calib,
                cfg.round_to)
    opts = dataclasses.replace(cfg.finetune, epochs=cfg.baseline_epochs, preset=None, lr=None)
    return source, _train_into(source, cfg.dataset, opts, _baseline_kwargs(opts), out / "baseline")


def run_experiment(cfg: ExperimentConfig) -> dict:
    """Baseline -> plan.json -> prune -> fine-tune -> results.json (top-1 before/after, FR, PR)."""
    out = Path(cfg.out)
    root, opts = cfg.finetune.data_root, cfg.finetune
    calib = calibration_batches(cfg.dataset, root, cfg.calib_samples, seed=opts.seed)
    source, trained = _baseline(cfg, out, calib)
    top1_before = evaluate_model(source, cfg.dataset, root)["top1"]
    log.info("baseline %s: top-1 %.2f%%", source.name, top1_before)
    small, x, err, rep = _prune_and_measure(source, cfg.criterion, cfg.budget, calib, cfg.round_to, ())
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "plan.json", small.meta["fxprune.plan"].to_dict())
    log.info("pruned: FLOPs -%.2f%%, params -%.2f%%", rep.flops_reduction_pct, rep.params_reduction_pct)
    tune = dataclasses.replace(opts, preset=opts.preset or default_preset(cfg.criterion, cfg.dataset))
    tuned = _train_into(_pruned_source(source, small), cfg.dataset, tune, _preset_kwargs(tune), out / "pruned")
    row = _results_row(cfg, source, rep, top1_before, tuned, tune.preset, err, trained)
    write_json(out / "report.json", {**rep.to_dict(), "input_shape": list(x.shape), "verify_error": err})
    write_json(out / "results.json", row)
    return {**row, "table": str(rep), "outputs": _outputs(out, "results.json", "plan.json", "report.json",
                                                           "pruned", *(["baseline"] if trained else []))}


def _pruned_source(source: ModelSource, small: torch.fx.GraphModule) -> ModelSource:
    return ModelSource(small, f"{source.name} (pruned)", "saved", source.input_size, source.num_classes)


def _results_row(cfg, source, rep, top1_before, tuned, preset, err, trained) -> dict:
    """The seed-table row: accuracies in percent, FR/PR on conv+linear layers (fxprune.report)."""
    top1_after = tuned["top1"]
    b, a = rep.before, rep.after
    return {
        "arch": cfg.arch if not cfg.baseline else source.name, "dataset": cfg.dataset,
        "criterion": cfg.criterion, "budget": cfg.budget.kwargs(),
        "top1_before": top1_before, "top1_after": top1_after, "top1_drop": top1_before - top1_after,
        "flops_reduction": rep.flops_reduction_pct, "params_reduction": rep.params_reduction_pct,
        "params_before": b.params_conv_linear, "params_after": a.params_conv_linear,
        "macs_before": b.macs_conv_linear, "macs_after": a.macs_conv_linear,
        "params_before_all": b.params, "params_after_all": a.params,
        "macs_before_all": b.macs, "macs_after_all": a.macs,
        "epochs": tuned["recipe"]["epochs"], "preset": preset, "device": tuned["device"],
        "world_size": tuned["world_size"],
        "baseline_epochs": trained["recipe"]["epochs"] if trained else (None if cfg.baseline else 0),
        "baseline": cfg.baseline, "input_size": source.input_size, "seed": cfg.finetune.seed,
        "max_steps_per_epoch": cfg.finetune.max_steps, "verify_error": err,
    }
