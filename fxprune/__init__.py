"""fxprune: structured pruning for PyTorch models, as a torch.fx compiler.

    import fxprune, torchvision
    small = fxprune.prune(torchvision.models.resnet50(), criterion="graph", threshold=0.7)
    fxprune.verify(model, small)          # the compact model equals the masked original
    fxprune.report(model, small)          # params and MACs before/after
"""
from passes.errors import (FxPruneError, PlanError, UnsupportedOpError, UntraceableModelError,
                          VacuousVerificationWarning, VerificationError)
from passes.plan import Plan

from .api import analyze, apply, criteria, plan, prune, register_criterion, verify
from .export import export, load, save
from .iterative import prune_iteratively
from .recalibrate import recalibrate_bn
from .report import report
from .sensitivity import Sensitivity, sensitivity
from .soft import SoftFilterPruning

__all__ = [
    "prune", "prune_iteratively", "plan", "apply", "analyze", "verify", "report", "export", "save", "load",
    "criteria", "register_criterion", "recalibrate_bn", "sensitivity", "Sensitivity", "SoftFilterPruning",
    "Plan", "FxPruneError", "PlanError", "UnsupportedOpError", "UntraceableModelError", "VerificationError",
    "VacuousVerificationWarning",
]
__version__ = "0.1.0"
