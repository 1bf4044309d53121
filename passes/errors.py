"""One error hierarchy, so callers can catch fxprune's failures without catching torch's."""

__all__ = ["FxPruneError", "UntraceableModelError", "UnsupportedOpError", "PlanError", "VerificationError",
           "VacuousVerificationWarning"]


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
