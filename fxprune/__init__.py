"""fxprune: structured pruning for PyTorch models, as a torch.fx compiler.

    import fxprune, torchvision
    small = fxprune.prune(torchvision.models.resnet50(), criterion="graph", threshold=0.7)
    fxprune.verify(model, small)          # the compact model equals the masked original
    fxprune.report(model, small)          # params and MACs before/after
"""
from passes.errors import FxPruneError, PlanError, UnsupportedOpError, UntraceableModelError, VerificationError
from passes.plan import Plan

from .api import analyze, apply, criteria, plan, prune, register_criterion, verify

__all__ = [
    "prune", "plan", "apply", "analyze", "verify", "report", "export", "save", "load", "criteria",
    "register_criterion", "Plan", "FxPruneError", "PlanError", "UnsupportedOpError", "UntraceableModelError",
    "VerificationError",
]
__version__ = "0.1.0"


def report(*args, **kwargs):
    """Params and MACs before/after (fvcore); see fxprune.report_module.report."""
    from .report import report as _report

    return _report(*args, **kwargs)


def export(*args, **kwargs):
    """Export to TorchScript, torch.export or ONNX; see fxprune.export."""
    from .export import export as _export

    return _export(*args, **kwargs)


def save(*args, **kwargs):
    """Save a GraphModule as code + weights, without pickle."""
    from .export import save as _save

    return _save(*args, **kwargs)


def load(*args, **kwargs):
    """Load what :func:`save` wrote."""
    from .export import load as _load

    return _load(*args, **kwargs)
