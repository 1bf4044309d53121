"""Shared test helpers: models with live activations, and the prune -> lint -> verify -> slices check."""
from __future__ import annotations

import contextlib
import copy
import os
import warnings

import hypothesis
import pytest
import torch
from torch import nn

import fxprune


def fuzz_examples(ci_default: int) -> int:
    """Examples per property test: CI's count, or ``FXPRUNE_FUZZ_EXAMPLES`` for a longer search."""
    return int(os.environ.get("FXPRUNE_FUZZ_EXAMPLES", ci_default))


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Re-initialize so activations stay O(1) through deep nets and BN statistics are not trivial.

    torchvision's default init can shrink activations towards zero in deep random networks, where any
    pruned model would trivially match; these weights make a wrong channel visible.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, nn.modules.batchnorm._NormBase) and m.affine:
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                if m.running_mean is not None:
                    m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                    m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model.eval()


def state_copy(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_state_unchanged(model: nn.Module, before: dict) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(after[k], v), f"{k} changed"


def assert_slices(original: nn.Module, small: nn.Module) -> int:
    """Every planned conv/linear/bn in `small` holds exactly the original's sliced tensors."""
    plan = small.meta["fxprune.plan"].to_dict()["modules"]
    orig, new = dict(original.named_modules()), dict(small.named_modules())
    checked = 0
    for name, io in plan.items():
        if name not in orig:
            continue
        o, s = orig[name], new[name]
        out = io["out"]
        if isinstance(o, (nn.Conv2d, nn.Linear)):
            w = o.weight.detach()
            if out is not None:
                w = w[out]
            if io["in"] is not None and (isinstance(o, nn.Linear) or o.groups == 1):
                w = w[:, io["in"]]
            elif io["in"] is not None:  # grouped: per output row, the kept inputs of its group, within it
                w = _grouped_slice(o, w, io["in"], range(o.out_channels) if out is None else out)
            assert torch.equal(w, s.weight.detach()), f"{name}: not the original's slice"
            if o.bias is not None:
                b = o.bias.detach() if out is None else o.bias.detach()[out]
                assert torch.equal(b, s.bias.detach())
        elif isinstance(o, nn.modules.batchnorm._NormBase):
            for attr in ("weight", "bias", "running_mean", "running_var"):
                a = getattr(o, attr)
                if a is not None:
                    assert torch.equal(a.detach()[out], getattr(s, attr).detach()), f"{name}.{attr}"
        checked += 1
    return checked


def _grouped_slice(conv: nn.Conv2d, rows: torch.Tensor, keep_in, kept_out) -> torch.Tensor:
    per_in, per_out = conv.in_channels // conv.groups, conv.out_channels // conv.groups
    local = [[i % per_in for i in keep_in if i // per_in == o // per_out] for o in kept_out]
    return torch.stack([row[cols] for row, cols in zip(rows, local)])


def prune_and_check(model: nn.Module, x: torch.Tensor, rtol: float = 1e-5, **kwargs):
    """prune -> the graph lints -> masked-original equivalence -> sliced tensors -> model untouched."""
    before = state_copy(model)
    small = fxprune.prune(model, x, **kwargs)
    small.graph.lint()
    err = fxprune.verify(model, small, x, rtol=rtol)
    assert err <= rtol
    assert_slices(model, small)
    assert_state_unchanged(model, before)
    return small, err


@contextlib.contextmanager
def rejecting_vacuous_examples():
    """A generated network whose output ignores its input (every activation died) tests nothing, since any
    compact model would pass verify on it: hypothesis draws another example instead."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", fxprune.VacuousVerificationWarning)
        try:
            yield
        except fxprune.VacuousVerificationWarning:
            hypothesis.reject()


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.fixture(autouse=True)
def _one_thread():
    """Deterministic, and fair to a 2-core CI machine running pytest."""
    torch.set_num_threads(1)
    yield


def conv_linear_counts(model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """(MACs, params) of conv and linear layers only, per sample: the papers' convention, counted by hand."""
    macs = [0]

    def hook(m, args, out):
        if isinstance(m, nn.Conv2d):
            macs[0] += out[0].numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        else:
            macs[0] += m.in_features * m.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(x[:1])
    for h in handles:
        h.remove()
    params = sum(p.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) for p in m.parameters())
    return macs[0], params


def bench_module(filename: str):
    """Import a script of bench/ (not a package) as a module, for its smoke tests."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / filename
    spec = importlib.util.spec_from_file_location(f"bench_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
