"""The ``fxprune`` command line (also ``python -m fxprune``): argument parsing only.

Every subcommand calls one function of :mod:`fxprune.experiment` and prints its result, as text
by default or, with ``--json``, as one JSON object on stdout (anything else the libraries print
goes to stderr then). Bad input (an unknown model, a missing dataset, an out-of-range budget)
ends with a one-line ``fxprune: error: ...`` on stderr and exit code 2; ``--traceback`` shows
where it came from.

    fxprune prune --model resnet56 --criterion graph --threshold 0.7 --data cifar10 --out runs/r56
    fxprune experiment --arch resnet56 --dataset cifar10 --criterion l1 --ratio 0.3 --out runs/l1
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Callable

__all__ = ["main", "build_parser"]

EXIT_USAGE = 2


# --------------------------------------------------------------------------- argument types

def _ratio(text: str):
    """A number, or a JSON object / .json file of {module glob: ratio}; fxprune checks the range."""
    if _is_number(text):
        return float(text)
    try:
        raw = Path(text).read_text() if text.endswith(".json") and Path(text).is_file() else text
        value = json.loads(raw)
    except (OSError, ValueError):
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number, a JSON object {{\"module glob\": ratio}} or a .json file of one")
    return value


def _ratio_list(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 0.25,0.5,0.75, got {text!r}")
    if not values or not all(0.0 <= v < 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"ratios must be numbers in [0, 1), got {text!r}")
    return values


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _dataset(text: str) -> str:
    from fxprune.data import DATASETS, num_classes

    try:
        num_classes(text)
    except (KeyError, ValueError):
        raise argparse.ArgumentTypeError(f"unknown dataset {text!r}; supported: {', '.join(DATASETS)}")
    return text


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


# --------------------------------------------------------------------------- parser

def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("output")
    g.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    g.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    g.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    g.add_argument("--traceback", action="store_true", help="show the traceback of errors")
    return p


def _model_args(p, flag: str = "--model", required: bool = True) -> None:
    p.add_argument(flag, required=required, dest="model",
                   help="a seed architecture (resnet56, vgg16_bn, ...), a torchvision name (resnet50), "
                        "an output folder / fxprune save, or a TorchScript file (eval, export)")
    p.add_argument("--input-size", type=_positive, help="image side (default 32 for seed architectures, "
                                                         "224 for torchvision, recorded for saved models)")
    p.add_argument("--num-classes", type=_positive, help="classes of a named model (default: the dataset's)")
    p.add_argument("--seed", type=int, default=0, help="random init and data order (default 0)")
    p.add_argument("--weights", help="trained weights for a named model: a state_dict saved with torch.save "
                                     "(or a checkpoint dict holding one); without it the model is random")


def _data_args(p, required: bool) -> None:
    p.add_argument("--dataset", "--data", dest="dataset", type=_dataset, required=required,
                   help="digits, fashion-mnist, cifar10, cifar100, cub200, imagenet (never downloaded)")
    p.add_argument("--data-root", help="dataset folder (default: $FXPRUNE_DATA/<dataset>)")


def _budget_args(p) -> None:
    p.add_argument("--criterion", required=True, help="importance criterion (fxprune.criteria(): l1, graph, ...)")
    b = p.add_mutually_exclusive_group()
    b.add_argument("--ratio", type=_ratio, help="fraction of channels removed, or a JSON {glob: ratio}")
    b.add_argument("--threshold", type=float, help="similarity threshold of the graph criterion (default 0.7)")
    b.add_argument("--flops-reduction", type=float, help="target FLOPs reduction (fxprune.prune flops_reduction=)")
    p.add_argument("--round-to", type=_positive, help="keep channel counts multiples of this")
    _calib_arg(p)


def _calib_arg(p) -> None:
    p.add_argument("--calib-samples", type=_positive, default=128,
                   help="training images used as calibration data by data-driven criteria (default 128)")


def _train_args(p, preset_required: bool = False, experiment: bool = False) -> None:
    from fxprune.runner import PRESETS

    stage = "fine-tuning " if experiment else ""
    p.add_argument("--epochs", type=_count, help=f"{stage}epochs (default: the recipe's)")
    p.add_argument("--preset", choices=sorted(PRESETS), required=preset_required,
                   help="a seed's fine-tuning recipe (fxprune.runner.PRESETS)"
                        + ("; default: the criterion's seed recipe, e.g. graph -> rgd-cifar" if experiment else ""))
    p.add_argument("--lr", type=float, help="learning rate (default: the recipe's)")
    p.add_argument("--batch-size", type=_positive, help="global batch size (default: the recipe's)")
    p.add_argument("--workers", type=_count, help="data-loading workers (default 4; 0 for digits)")
    p.add_argument("--max-steps", type=_positive, help="stop each epoch after this many steps (smoke tests)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoints/last.pt under OUT")
    p.add_argument("--scale-schedule", action="store_true",
                   help="with fewer (or more) epochs than the recipe, step the learning rate at the recipe's "
                        "fractions of the run (default: at the recipe's epochs, which a short run may never reach)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fxprune", description="Structured pruning for PyTorch, as a torch.fx compiler.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = _common()

    def add(name: str, handler: Callable, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help, description=help)
        p.set_defaults(handler=handler)
        return p

    p = add("prune", _cmd_prune, "prune a model; write model.pt, plan.json, report.json and saved/")
    _model_args(p)
    _budget_args(p)
    _data_args(p, required=False)
    p.add_argument("--ignore", action="append", default=[],
                   help="module name, container (layer4) or glob to leave unpruned (repeatable)")
    p.add_argument("--grouped-convs", choices=["whole", "within", "auto"], default="whole",
                   help="grouped convs lose whole groups (default), or the same channels in every group (as "
                        "Torch-Pruning); auto: whichever gives the conv more choices")
    p.add_argument("--group-reduction", choices=["sum", "mean"],
                   help="l1, l2, bn, taylor: a class scores the sum (default) or the mean over the filters writing it")
    p.add_argument("--recalibrate-bn", type=_positive, metavar="N",
                   help="after the check, re-measure BatchNorm statistics on N training images of --dataset")
    p.add_argument("--out", required=True, help="output folder")

    p = add("sensitivity", _cmd_sensitivity, "prune each channel group alone at several ratios and measure top-1; "
            "write the table and ratios.json, the --ratio that keeps every group within --max-drop")
    _model_args(p)
    _data_args(p, required=True)
    p.add_argument("--criterion", default="l1", help="importance criterion (default l1)")
    _calib_arg(p)
    p.add_argument("--ratios", type=_ratio_list, default=(0.25, 0.5, 0.75),
                   help="comma-separated ratios to try per group (default 0.25,0.5,0.75)")
    p.add_argument("--max-drop", type=float, default=1.0, help="top-1 points a group may lose (default 1.0)")
    p.add_argument("--eval-images", type=_positive, default=1000,
                   help="test images per evaluation (default 1000; the scan evaluates once per group and ratio)")
    p.add_argument("--recalibrate-bn", type=_positive, metavar="N",
                   help="re-measure each pruned model's BatchNorm statistics on N training images before evaluating")
    p.add_argument("--out", required=True, help="output folder")

    p = add("info", _cmd_info, "list a model's channel groups and why frozen ones cannot be pruned")
    _model_args(p)

    p = add("report", _cmd_report, "params and MACs before/after: --original A --pruned B, or --model M --plan P")
    p.add_argument("--original", help="the unpruned model")
    p.add_argument("--pruned", help="the pruned model")
    _model_args(p, required=False)
    p.add_argument("--plan", help="plan.json to apply to --model")

    p = add("export", _cmd_export, "write a deployable file: torchscript, export (.pt2) or onnx")
    _model_args(p)
    p.add_argument("--format", default="torchscript", choices=["torchscript", "export", "onnx"])
    p.add_argument("--static-batch", action="store_true",
                   help="fix the batch dimension of export/onnx files to 1 (default: free)")
    p.add_argument("--out", required=True, help="output file")

    p = add("eval", _cmd_eval, "top-1 accuracy on a dataset's test split")
    _model_args(p)
    _data_args(p, required=True)
    p.add_argument("--batch-size", type=_positive, default=256)

    p = add("train", _cmd_train, "train a model from scratch (the seeds' train.py recipe by default)")
    _model_args(p, flag="--arch")
    _data_args(p, required=True)
    _train_args(p)
    p.add_argument("--out", required=True, help="output folder")

    p = add("finetune", _cmd_finetune, "fine-tune a (pruned) model with a seed recipe")
    _model_args(p)
    _data_args(p, required=True)
    _train_args(p, preset_required=True)
    p.add_argument("--out", required=True, help="output folder")

    p = add("experiment", _cmd_experiment, "baseline -> plan -> prune -> fine-tune -> results.json")
    _model_args(p, flag="--arch", required=False)
    _data_args(p, required=True)
    _budget_args(p)
    _train_args(p, experiment=True)
    p.add_argument("--baseline", help="a trained model to prune instead of training --arch")
    p.add_argument("--baseline-epochs", type=_count, help="epochs of baseline training (default 200)")
    p.add_argument("--out", required=True, help="output folder")
    return parser


# --------------------------------------------------------------------------- handlers

def _source(args, spec: str | None = None):
    from fxprune import data as fxdata
    from fxprune.experiment import resolve_model

    dataset = getattr(args, "dataset", None)
    classes = args.num_classes
    if classes is None and dataset:
        classes = fxdata.num_classes(dataset)
    return resolve_model(spec or args.model, num_classes=classes, input_size=args.input_size, seed=args.seed,
                         dataset=dataset, weights=getattr(args, "weights", None) if spec is None else None)


def _budget(args):
    from fxprune.experiment import Budget

    return Budget(ratio=args.ratio, threshold=args.threshold, flops_reduction=args.flops_reduction)


def _train_options(args):
    from fxprune.experiment import TrainOptions

    return TrainOptions(epochs=args.epochs, preset=args.preset, lr=args.lr, batch_size=args.batch_size,
                        workers=args.workers, max_steps=args.max_steps, data_root=args.data_root,
                        seed=args.seed, resume=args.resume, progress=sys.stderr.isatty() and not args.json,
                        scale_schedule=args.scale_schedule)


def _bn_data(args):
    """The un-augmented training images ``--recalibrate-bn`` measures BatchNorm statistics on (None without it)."""
    from fxprune.data import load_dataset

    return load_dataset(args.dataset, args.data_root, "train", augment=False) if args.recalibrate_bn else None


def _cmd_prune(args) -> tuple[dict, str]:
    from fxprune import experiment as ex

    if args.recalibrate_bn and not args.dataset:
        raise ex.InputError("--recalibrate-bn needs --dataset: the training images the statistics are measured on")
    calib = (ex.calibration_batches(args.dataset, args.data_root, args.calib_samples, seed=args.seed)
             if args.dataset else None)
    source = _source(args)
    r = ex.prune_to_dir(source, args.criterion, _budget(args), args.out, data=calib,
                        round_to=args.round_to, ignore=args.ignore, grouped_convs=args.grouped_convs,
                        bn_data=_bn_data(args), bn_images=args.recalibrate_bn or 0,
                        criterion_options={"group_reduction": args.group_reduction} if args.group_reduction else None)
    budget = ", ".join(f"{k} {v}" for k, v in r["budget"].items()) or "default budget"
    data = f"calibration: {args.calib_samples} {args.dataset} training images" if calib else \
        "calibration: none (data-driven criteria score random inputs)"
    text = "\n".join([
        f"model: {source.describe()}",
        f"criterion: {args.criterion}, {budget}; {r['pruned_groups']} channel groups pruned; {data}",
        r["table"],
        f"check: relative error {r['verify_error']:.2e} against the original with removed channels masked",
        *([f"BatchNorm statistics re-measured on {r['bn_recalibrated_images']} {args.dataset} training images "
           "(after the check)"] if r["bn_recalibrated_images"] else []),
        "wrote: " + ", ".join(r["outputs"].values()),
    ])
    return r, text


def _cmd_sensitivity(args) -> tuple[dict, str]:
    from fxprune import experiment as ex

    calib = ex.calibration_batches(args.dataset, args.data_root, args.calib_samples, seed=args.seed)
    source = _source(args)
    r = ex.sensitivity_to_dir(source, args.dataset, args.criterion, args.ratios, args.max_drop, args.out,
                              root=args.data_root, eval_images=args.eval_images, data=calib, bn_data=_bn_data(args),
                              bn_images=args.recalibrate_bn or 0)
    chosen = json.dumps(r["ratios"]) if r["ratios"] else "{} (no group stays within the drop)"
    text = "\n".join([f"model: {source.describe()}", r["table"],
                      f"within {args.max_drop} top-1 points: --ratio '{chosen}'",
                      "wrote: " + ", ".join(r["outputs"].values())])
    return r, text


def _cmd_info(args) -> tuple[dict, str]:
    from fxprune.experiment import info

    source = _source(args)
    result, text = info(source)
    return result, f"model: {source.describe()}\n{text}"


def _cmd_report(args) -> tuple[dict, str]:
    from fxprune.experiment import InputError, report_models, report_plan

    if args.original and args.pruned:
        r = report_models(_source(args, args.original), _source(args, args.pruned))
    elif args.model and args.plan:
        r = report_plan(_source(args), args.plan)
    else:
        raise InputError("report needs --original A --pruned B, or --model M --plan plan.json")
    return r, r["table"]


def _cmd_export(args) -> tuple[dict, str]:
    from fxprune.experiment import export_model

    r = export_model(_source(args), args.format, args.out, dynamic_batch=not args.static_batch)
    return r, f"wrote {r['path']} ({args.format})"


def _cmd_eval(args) -> tuple[dict, str]:
    from fxprune.experiment import evaluate_model

    source = _source(args)
    r = evaluate_model(source, args.dataset, args.data_root, args.batch_size)
    return r, f"{source.describe()}\n{args.dataset} test: top-1 {r['top1']:.2f}% (loss {r['loss']:.4f}, {r['samples']} images)"


def _training_text(source, r: dict) -> str:
    top1 = "n/a" if r["top1"] is None else f"{r['top1']:.2f}%"
    return (f"model: {source.describe()}\n{r['dataset']}: best top-1 {top1} at epoch {r['best_epoch'] + 1}/"
            f"{r['recipe']['epochs']}\nwrote: " + ", ".join(r["outputs"].values()))


def _cmd_train(args) -> tuple[dict, str]:
    from fxprune.experiment import train

    source = _source(args)
    r = train(source, args.dataset, _train_options(args), args.out)
    return r, _training_text(source, r)


def _cmd_finetune(args) -> tuple[dict, str]:
    from fxprune.experiment import finetune_dir

    source = _source(args)
    r = finetune_dir(source, args.dataset, _train_options(args), args.out)
    return r, _training_text(source, r)


def _cmd_experiment(args) -> tuple[dict, str]:
    from fxprune.experiment import ExperimentConfig, InputError, run_experiment

    if not (args.model or args.baseline):
        raise InputError("experiment needs --arch (trained here) or --baseline (a trained model)")
    cfg = ExperimentConfig(arch=args.model, dataset=args.dataset, criterion=args.criterion, out=args.out,
                           budget=_budget(args), baseline=args.baseline, baseline_epochs=args.baseline_epochs,
                           finetune=_train_options(args), input_size=args.input_size,
                           calib_samples=args.calib_samples, round_to=args.round_to)
    r = run_experiment(cfg)
    budget = ", ".join(f"{k} {v}" for k, v in r["budget"].items()) or "default budget"
    text = "\n".join([
        f"{r['arch']} on {r['dataset']}, {r['criterion']} ({budget}), fine-tuned {r['epochs']} epochs ({r['preset']})",
        r["table"],
        f"top-1 {r['top1_before']:.2f}% -> {r['top1_after']:.2f}% (drop {r['top1_drop']:.2f}); "
        f"FR {r['flops_reduction']:.2f}%, PR {r['params_reduction']:.2f}%",
        "wrote: " + ", ".join(r["outputs"].values()),
    ])
    return r, text


# --------------------------------------------------------------------------- main

def _setup_logging(args) -> None:
    """Warnings by default, plus the training progress lines (epochs take long; silence with -q)."""
    logging.basicConfig(format="fxprune: %(levelname)s: %(message)s", stream=sys.stderr, level=logging.WARNING)
    if args.verbose:
        for name in ("fxprune", "passes"):
            logging.getLogger(name).setLevel(logging.DEBUG)
    elif not args.quiet:
        for name in ("fxprune.runner", "fxprune.experiment"):
            logging.getLogger(name).setLevel(logging.INFO)


def _usage_errors() -> tuple[type[BaseException], ...]:
    """Errors caused by the input, not by fxprune: reported in one line with exit code 2."""
    from fxprune import FxPruneError
    from fxprune.experiment import InputError

    return (FxPruneError, InputError, FileNotFoundError, NotADirectoryError, IsADirectoryError)


def _fail(args, exc: BaseException) -> int:
    message = str(exc) or type(exc).__name__
    print(f"fxprune: error: {message}", file=sys.stderr)
    if args.json:
        from fxprune.experiment import json_safe

        print(json.dumps(json_safe({"error": message, "type": type(exc).__name__, "exit_code": EXIT_USAGE})))
    return EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    """Parse, run one subcommand, print; returns the exit code."""
    args = build_parser().parse_args(argv)
    _setup_logging(args)
    stdout = sys.stdout
    try:
        # In --json mode stdout carries only the result; stray prints go to stderr.
        with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
            result, text = args.handler(args)
    except _usage_errors() as exc:
        if args.traceback:
            raise
        return _fail(args, exc)
    try:
        _emit(args, result, text, stdout)
    except BrokenPipeError:  # `fxprune ... | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), stdout.fileno())
    return 0


def _emit(args, result: dict, text: str, stdout) -> None:
    if args.json:
        from fxprune.experiment import json_safe

        result = {k: v for k, v in result.items() if k != "table"}
        print(json.dumps(json_safe({"command": args.command, **result})), file=stdout, flush=True)
    else:
        print(text, file=stdout, flush=True)


if __name__ == "__main__":
    sys.exit(main())
