"""One error hierarchy, so callers can catch fxprune's failures without catching torch's; warnings that
point at the caller's line."""
import contextlib
import os
import sys
import warnings

__all__ = ["FxPruneError", "UntraceableModelError", "UnsupportedOpError", "PlanError", "VerificationError",
           "VacuousVerificationWarning", "warn_caller", "PASSES_DIR", "FXPRUNE_DIR"]


class FxPruneError(Exception):
    """Base class of every error fxprune raises on purpose."""


class UntraceableModelError(FxPruneError):
    """torch.fx could not trace the model (names the module and the source line)."""


class UnsupportedOpError(FxPruneError):
    """An operation the dependency analysis has no rule for was asked to be pruned."""


class PlanError(FxPruneError, ValueError):
    """A plan or a budget does not fit the model (bad ratio, conflicting keys, mismatched plan)."""


class VerificationError(FxPruneError, AssertionError):
    """The compact model does not compute what the masked original computes."""


class VacuousVerificationWarning(UserWarning):
    """Verify passed, but the original's output barely depends on its input, so the check proves little
    (an untrained model whose activations vanish through default BatchNorm statistics, say)."""


#: The passes' and the user-facing package's folders (with the separator: ``fxprune_run.py`` beside them is not theirs).
PASSES_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
FXPRUNE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fxprune") + os.sep
#: Frames a warning must not point at: fxprune's packages, and the context managers its entry points run in.
_OWN_FILES = (PASSES_DIR, FXPRUNE_DIR, contextlib.__file__)


def warn_caller(warning: Warning) -> None:
    """``warnings.warn`` pointing at the first frame outside fxprune: the user's call, whichever entry
    point (``prune``, ``plan``, ``analyze``, ``verify``, the CLI) led here."""
    level, frame = 2, sys._getframe(1)  # stacklevel 2: warn_caller's caller
    while frame is not None and frame.f_code.co_filename.startswith(_OWN_FILES):
        level, frame = level + 1, frame.f_back
    warnings.warn(warning, stacklevel=level)
