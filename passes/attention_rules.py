"""Dependency rules for attention: contractions (einsum, matmul), nn.MultiheadAttention, windowed
attention functions, and the replacement ops the rewrite swaps in when channel counts change.

**What is pruned in attention, and how.** Three kinds of channels meet in a transformer block:

* the *embedding* (residual stream) width: it passes through every LayerNorm, so its group is
  ``mixing`` (see :mod:`passes.dependency`): prunable by default, frozen with ``strict=True``;
* the *MLP hidden* width: Linear -> GELU -> Linear, per-channel, pruned exactly (verify holds);
* the *head* width. Heads are never removed; instead every head keeps the same number of dims
  (``head_dim`` shrinks equally in all heads, ``num_heads`` stays): dim ``j`` of q, k and v in every
  head is one keep-or-drop unit. This is what following a ``reshape(..., H, head_dim)`` gives on its
  own (the split stays even), it keeps every head's relative-position bias and logit scale as they
  are, and it lets q, k and v stay one packed projection. The attention scores contract q·k over
  these dims, so the group is ``mixing`` as well (frozen with ``strict=True``); the softmax scale
  keeps its original value (removing a dim is then exactly zeroing it in q and k).

``nn.MultiheadAttention`` is a leaf module whose packed ``in_proj_weight`` is no module a criterion
can score: its heads are kept whole (inner width frozen), only its embedding input columns and its
``out_proj`` rows follow the residual stream. Since nn.MultiheadAttention requires its input width
to equal its inner width, the rewrite replaces it by :class:`PrunedMultiheadAttention` (same
parameters and math, widths decoupled) when the embedding is pruned.

Swin's ``shifted_window_attention`` (an ``fx.wrap``-ed function reading ``qkv.weight`` and
``proj.weight`` via ``get_attr``) is followed like the reshape/einsum case above: the ``qkv`` and
``proj`` modules get roles as if they were called, and the rewrite swaps in
:func:`window_attention`, the same computation with the inner width read from the weights.
"""
from __future__ import annotations

import functools
import inspect
import math
import operator
from typing import Any, Optional

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from .layout import Layout
from .op_rules import REGISTRY, _arg, _channel_elems, weight_owner

__all__ = ["PrunedMultiheadAttention", "window_attention", "einsum_rule", "matmul_rule", "mha_rule"]


# ---------------------------------------------------------------------------------------------
# contractions: einsum and matmul
# ---------------------------------------------------------------------------------------------
@REGISTRY.function(torch.einsum)
def einsum_rule(an, node):
    """``torch.einsum``: see :func:`_contract`."""
    eq = an.value(node.args[0])
    ops = list(node.args[1:])
    if len(ops) == 1 and isinstance(ops[0], (list, tuple)):
        ops = list(ops[0])
    if not isinstance(eq, str) or not all(isinstance(o, torch.fx.Node) and an.shape(o) is not None for o in ops):
        return _opaque_if_tracked(an, node, "einsum in a form this rule does not read")
    parsed = _parse_einsum(eq, [len(an.shape(o)) for o in ops])
    if parsed is None:
        return _opaque_if_tracked(an, node, "einsum equation this rule does not read")
    subs, out = parsed
    return _contract(an, node, ops, subs, out)


@REGISTRY.function(torch.matmul, operator.matmul, torch.bmm)
@REGISTRY.method("matmul", "bmm", "__matmul__")
def matmul_rule(an, node):
    """``a @ b`` is the einsum ``...ik,...kj->...ij`` (batch dims broadcast): see :func:`_contract`."""
    a, b = node.args[0], node.args[1]
    if not all(isinstance(t, torch.fx.Node) and an.shape(t) is not None for t in (a, b)):
        return _opaque_if_tracked(an, node, "matmul with a non-tensor operand")
    na, nb = len(an.shape(a)), len(an.shape(b))
    batch = [chr(ord("A") + i) for i in range(max(na, nb) - 2)]
    if na == 1 and nb == 1:
        subs, out = [["k"], ["k"]], []
    elif na == 1:
        subs, out = [["k"], batch[len(batch) - (nb - 2):] + ["k", "j"]], batch + ["j"]
    elif nb == 1:
        subs, out = [batch[len(batch) - (na - 2):] + ["i", "k"], ["k"]], batch + ["i"]
    else:
        subs = [batch[len(batch) - (na - 2):] + ["i", "k"], batch[len(batch) - (nb - 2):] + ["k", "j"]]
        out = batch + ["i", "j"]
    return _contract(an, node, [a, b], subs, out)


@REGISTRY.function(F.scaled_dot_product_attention)
def sdpa_rule(an, node):
    """``F.scaled_dot_product_attention(q, k, v)`` (timm's attention) is ``softmax(q·kᵀ·scale) @ v``: q's and
    k's head dims are summed over (united position by position and marked mixing, see :func:`_contract`);
    v's head dims pass through to the output, every head alike. The rewrite pins ``scale`` to its
    original value, so removing a dim of q and k is zeroing it."""
    q, k, v = (_arg(node, i, name) for i, name in enumerate(("query", "key", "value")))
    mask = _arg(node, 3, "attn_mask")
    tensors = [t for t in (q, k, v) if isinstance(t, torch.fx.Node)]
    if len(tensors) != 3 or any(an.shape(t) is None for t in tensors) or \
            isinstance(mask, torch.fx.Node) and an.layout(mask) is not None:
        return _opaque_if_tracked(an, node, "attention in a form this rule does not read")
    qk = [an.layout(q), an.layout(k)]
    lay_v = an.layout(v)
    if any(lay is not None and (not isinstance(lay, Layout) or lay.ndim - 2 in lay.varying_dims())
           for lay in qk + [lay_v]):
        return an.opaque(node, "attention with channels along the token axis")
    if (qk[0] is None) != (qk[1] is None):
        return an.opaque(node, "attention scores of channels against a constant")
    if qk[0] is not None:
        an.unify(*np.broadcast_arrays(qk[0].index, qk[1].index))
        an.mix([qk[0].index, qk[1].index], node,
               "summed over these channels (attention scores q·k): removing some changes the sum")
        if _arg(node, 6, "scale") is None:
            scale = 1.0 / math.sqrt(an.shape(q)[-1])
            an.add_edit(node, functools.partial(_pin_scale, scale=scale))
    if lay_v is None:
        return None
    _shrink_alike(an, lay_v.index, lay_v.varying_dims()[:-1])  # the head axes: no head disappears
    return lay_v


def _shrink_alike(an, index: np.ndarray, axes: list[int]) -> None:
    """Unite the channels of every slice along ``axes`` with those of the first slice (the heads)."""
    for axis in axes:
        an.unify(np.broadcast_to(np.take(index, [0], axis=axis), index.shape), index)


def _pin_scale(gm, node, analysis, keep, scale: float) -> None:
    node.kwargs = {**node.kwargs, "scale": scale}


def _opaque_if_tracked(an, node, reason):
    if any(an.layout(a) is not None for a in node.all_input_nodes):
        return an.opaque(node, reason)
    return None


def _parse_einsum(eq: str, ndims: list[int]) -> tuple[list[list[str]], list[str]] | None:
    """Letters per operand and of the output, ``...`` expanded to fresh (right-aligned) letters."""
    eq = eq.replace(" ", "")
    lhs, rhs = eq.split("->") if "->" in eq else (eq, None)
    ins = lhs.split(",")
    if len(ins) != len(ndims):
        return None
    n_ell = max([nd - (len(s) - 3) for s, nd in zip(ins, ndims) if "..." in s], default=0)
    ell = [f"_{i}" for i in range(n_ell)]
    subs = []
    for s, nd in zip(ins, ndims):
        if "..." in s:
            head, tail = s.split("...")
            k = nd - len(head) - len(tail)
            letters = list(head) + ell[n_ell - k:] + list(tail)
        else:
            letters = list(s)
        if len(letters) != nd:
            return None
        subs.append(letters)
    if rhs is None:
        counts: dict[str, int] = {}
        for letters in subs:
            for c in letters:
                counts[c] = counts.get(c, 0) + 1
        out = ell + sorted(c for c, n in counts.items() if n == 1 and not c.startswith("_"))
    else:
        head, _, tail = rhs.partition("...")
        out = list(head) + (ell + list(tail) if "..." in rhs else [])
    return subs, out


def _contract(an, node, ops: list[torch.fx.Node], subs: list[list[str]], out: list[str]):
    """Channels through a sum of products (einsum).

    * An operand carrying channels along a *summed* letter (attention's q·k over the head dims)
      is reduced over them: its elements are united position by position with the other such
      operands (q's dim j with k's dim j) and marked mixing; they do not reach the output.
    * Operands carrying channels along output letters only (attn @ v: v's head dims) pass them
      through, element-wise like a broadcast product (several such operands are united). A tensor
      without channels spanning some of their axes (the scores span v's head axis) keeps those
      axes whole: the channels of every slice along them are united with the first slice's.
    * A tensor without channels summed against channels (a weight constant: a functional linear)
      is not followed: opaque.
    """
    letters: list[str] = []
    for s in subs + [out]:
        for c in s:
            if c not in letters:
                letters.append(c)
    pos = {c: i for i, c in enumerate(letters)}
    summed = {c for c in letters if c not in out}
    aligned: list[np.ndarray | None] = []
    varying: list[set[str]] = []
    for op, sub in zip(ops, subs):
        lay = an.layout(op)
        if lay is None:
            aligned.append(None)
            varying.append(set())
            continue
        if not isinstance(lay, Layout) or lay.ndim != len(sub):
            return an.opaque(node, "contraction of a tensor whose channels cannot be followed")
        vary = {sub[d] for d in lay.varying_dims()}
        if len(set(sub)) != len(sub) and any(sub.count(c) > 1 for c in vary):
            return an.opaque(node, "einsum takes a diagonal over channels")
        aligned.append(_to_letters(lay.index, sub, pos))
        varying.append(vary)
    contracted = [i for i, v in enumerate(varying) if v & summed]
    passing = [i for i, a in enumerate(aligned) if a is not None and i not in contracted]
    for i, (op, sub) in enumerate(zip(ops, subs)):
        if aligned[i] is None:
            shape = an.shape(op)
            spans = {c for d, c in enumerate(sub) if shape[d] > 1}
            if any(spans & varying[j] & summed for j in contracted):
                return an.opaque(node, "channels summed against a constant tensor (a functional linear layer)")
    if contracted:
        base = aligned[contracted[0]]
        for j in contracted[1:]:
            an.unify(*np.broadcast_arrays(base, aligned[j]))
        an.mix([aligned[j] for j in contracted], node,
               "summed over these channels (e.g. attention scores q·k): removing some changes the sum")
    carrying = [i for i in passing if varying[i]]
    for i in passing:
        if not varying[i] and carrying:
            an.freeze(aligned[i], node, "single channel broadcast across channels")
    if not carrying:
        return None
    if len({frozenset(varying[i]) for i in carrying}) > 1:
        return an.opaque(node, "operands carry channels along different axes")
    base = aligned[carrying[0]]
    for j in carrying[1:]:
        if aligned[j].shape != base.shape:
            return an.opaque(node, "operands carry channels along different axes")
        an.unify(base, aligned[j])
    channel_letters = varying[carrying[0]]
    for i, (op, sub) in enumerate(zip(ops, subs)):
        if aligned[i] is None:
            shape = an.shape(op)
            spanned = {c for d, c in enumerate(sub) if shape[d] > 1} & channel_letters
            if not spanned:
                continue
            if spanned == channel_letters:
                an.freeze(base, node, f"operand {op.name} spans the channels without carrying them")
                continue
            # attn @ v: the scores span v's head axis, not its head dims. Keep every head: the
            # channels of each head slice are united with those of the first (heads shrink alike)
            _shrink_alike(an, base, [pos[c] for c in spanned])
    out_shape = an.shape(node)
    if out_shape is None or len(out_shape) != len(out):
        return an.opaque(node, "contraction output this rule does not read")
    # drop the summed letters (size 1 in passing operands), then order the axes as the output
    in_order = [c for c in letters if c not in summed]
    arr = base.reshape([base.shape[pos[c]] for c in in_order])
    arr = np.transpose(arr, [in_order.index(c) for c in out])
    return Layout(np.ascontiguousarray(arr))


def _to_letters(index: np.ndarray, sub: list[str], pos: dict[str, int]) -> np.ndarray:
    """Move a layout's axes to the global letter order, size 1 on letters the operand lacks."""
    order = sorted(range(len(sub)), key=lambda d: pos[sub[d]])
    arr = np.transpose(index, order)
    shape = [1] * len(pos)
    for d in order:
        shape[pos[sub[d]]] = index.shape[d]
    return arr.reshape(shape)


# ---------------------------------------------------------------------------------------------
# nn.MultiheadAttention (a leaf module)
# ---------------------------------------------------------------------------------------------
@REGISTRY.module(nn.MultiheadAttention)
def mha_rule(an, node):
    """Self-attention ``mha(x, x, x)``: the input embedding is read by ``in_proj_weight``'s columns,
    the output embedding is new channels written by ``out_proj``; heads and head width stay (see
    the module doc). Other forms (separate q/k/v weights, bias_k, cross-attention, masks) are opaque."""
    mha = an.module(node)
    q, k, v = (_arg(node, i, n) for i, n in enumerate(("query", "key", "value")))
    if not (q is k is v) or not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
        return an.opaque(node, "nn.MultiheadAttention other than packed self-attention")
    masks = [_arg(node, i, n) for i, n in ((3, "key_padding_mask"), (5, "attn_mask"))]
    if any(m is not None for m in masks) or an.value(_arg(node, 7, "is_causal", False)):
        return an.opaque(node, "nn.MultiheadAttention with attention masks")
    in_elems = _channel_elems(an, node, q, -1, "attention input features are not a simple axis")
    if in_elems is None:
        return an.opaque(node, "attention input features are not a simple axis")
    shapes = node.meta.get("fxprune.shape")
    out_shape = shapes[0] if isinstance(shapes, (tuple, list)) else shapes
    out = an.fresh(mha.out_proj.out_features, len(out_shape) - 1, len(out_shape))
    an.record_module(node, "attention", in_elems, None)
    an.record_module(node, "linear", None, out.index.reshape(-1), name=f"{node.target}.out_proj")
    an.add_edit(node, functools.partial(_replace_mha, in_elems=in_elems, out_elems=out.index.reshape(-1),
                                        batched=len(out_shape) == 3))
    return (out, None) if isinstance(shapes, (tuple, list)) else out


def _replace_mha(gm, node, analysis, keep, in_elems, out_elems, batched) -> None:
    keep_in = keep[np.asarray(in_elems)]
    keep_out = keep[np.asarray(out_elems)]
    if keep_in.all() and keep_out.all():
        return
    *path, attr = node.target.split(".")
    owner = gm.get_submodule(".".join(path)) if path else gm
    mha = getattr(owner, attr)
    setattr(owner, attr, PrunedMultiheadAttention.from_mha(mha, np.flatnonzero(keep_in).tolist(), batched))


class PrunedMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` (packed q/k/v) whose embedding width may differ from its inner width
    ``num_heads * head_dim``: same parameter names (``in_proj_weight``, ``in_proj_bias``,
    ``out_proj``), same math, the softmax scale of the original ``head_dim``.

    Made by the rewrite (:meth:`from_mha`) for calls the rule followed: batched input, no attention
    masks. Its forward has no data-dependent control flow, so a pruned model can be traced (and
    pruned) again; its constructor arguments are all attributes of the same name.
    """

    def __init__(self, in_features: int, out_features: int, num_heads: int, head_dim: int, proj_bias: bool = True,
                 batch_first: bool = False, batched: bool = True, dropout: float = 0.0, scale: Optional[float] = None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.num_heads, self.head_dim = num_heads, head_dim
        self.proj_bias, self.batch_first, self.batched = proj_bias, batch_first, batched
        self.dropout = float(dropout)
        self.scale = float(head_dim) ** -0.5 if scale is None else float(scale)
        inner = num_heads * head_dim
        self.in_proj_weight = nn.Parameter(torch.empty(3 * inner, in_features))
        if proj_bias:
            self.in_proj_bias = nn.Parameter(torch.zeros(3 * inner))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = nn.modules.linear.NonDynamicallyQuantizableLinear(inner, out_features, bias=proj_bias)
        nn.init.xavier_uniform_(self.in_proj_weight)

    @classmethod
    def from_mha(cls, mha: nn.MultiheadAttention, keep_in: list[int], batched: bool = True) -> "PrunedMultiheadAttention":
        """``mha`` with only the input columns ``keep_in``; shares ``mha.out_proj`` (sliced separately)."""
        new = cls(len(keep_in), mha.out_proj.out_features, mha.num_heads, mha.head_dim, mha.in_proj_bias is not None,
                  bool(mha.batch_first), batched, float(mha.dropout))
        idx = torch.as_tensor(keep_in, dtype=torch.long, device=mha.in_proj_weight.device)
        new.in_proj_weight = nn.Parameter(mha.in_proj_weight.detach().index_select(1, idx),
                                          requires_grad=mha.in_proj_weight.requires_grad)
        if mha.in_proj_bias is not None:
            new.in_proj_bias = nn.Parameter(mha.in_proj_bias.detach().clone(), requires_grad=mha.in_proj_bias.requires_grad)
        new.out_proj = mha.out_proj
        new.train(mha.training)
        return new

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Optional[Tensor] = None,
                need_weights: bool = True, attn_mask: Optional[Tensor] = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Optional[Tensor]]:
        if key_padding_mask is not None or attn_mask is not None or is_causal:
            raise ValueError("PrunedMultiheadAttention takes no attention masks")
        if not self.batched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        elif self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        # (L, N, E) from here on, as in F.multi_head_attention_forward
        tgt_len, bsz, src_len = query.shape[0], query.shape[1], key.shape[0]
        inner = self.num_heads * self.head_dim
        w_q, w_k, w_v = self.in_proj_weight.split(inner)
        b_q: Optional[Tensor] = None
        b_k: Optional[Tensor] = None
        b_v: Optional[Tensor] = None
        if self.in_proj_bias is not None:
            b_q, b_k, b_v = self.in_proj_bias.split(inner)
        q = F.linear(query, w_q, b_q).reshape(tgt_len, bsz * self.num_heads, self.head_dim).transpose(0, 1)
        k = F.linear(key, w_k, b_k).reshape(src_len, bsz * self.num_heads, self.head_dim).transpose(0, 1)
        v = F.linear(value, w_v, b_v).reshape(src_len, bsz * self.num_heads, self.head_dim).transpose(0, 1)
        attn = F.softmax(torch.bmm(q * self.scale, k.transpose(1, 2)), dim=-1)  # (N*H, L, S)
        if self.training and self.dropout > 0.0:
            attn = F.dropout(attn, p=self.dropout)
        out = torch.bmm(attn, v).transpose(0, 1).reshape(tgt_len * bsz, inner)
        out = self.out_proj(out).reshape(tgt_len, bsz, -1)
        if not self.batched:
            out = out.squeeze(1)
        elif self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        weights = attn.reshape(bsz, self.num_heads, tgt_len, src_len)
        if average_attn_weights:
            weights = weights.mean(dim=1)
        if not self.batched:
            weights = weights.squeeze(0)
        return out, weights


# ---------------------------------------------------------------------------------------------
# windowed attention functions (Swin)
# ---------------------------------------------------------------------------------------------
def window_attention(
    input: Tensor,
    qkv_weight: Tensor,
    proj_weight: Tensor,
    relative_position_bias: Tensor,
    window_size: list[int],
    num_heads: int,
    shift_size: list[int],
    attention_dropout: float = 0.0,
    dropout: float = 0.0,
    qkv_bias: Optional[Tensor] = None,
    proj_bias: Optional[Tensor] = None,
    logit_scale: Optional[Tensor] = None,
    training: bool = True,
    head_scale: Optional[float] = None,
) -> Tensor:
    """torchvision's ``shifted_window_attention`` with the widths read from the weights: input width
    ``C``, inner width ``qkv_weight.shape[0] // 3``, output width ``proj_weight.shape[0]`` may all
    differ. ``head_scale`` (default ``head_dim ** -0.5``) keeps a pruned model's original scale."""
    B, H, W, C = input.shape
    inner = qkv_weight.shape[0] // 3
    c_out = proj_weight.shape[0]
    head_dim = inner // num_heads
    pad_r = (window_size[1] - W % window_size[1]) % window_size[1]
    pad_b = (window_size[0] - H % window_size[0]) % window_size[0]
    x = F.pad(input, (0, 0, 0, pad_r, 0, pad_b))
    _, pad_H, pad_W, _ = x.shape

    shift_size = shift_size.copy()
    if window_size[0] >= pad_H:
        shift_size[0] = 0
    if window_size[1] >= pad_W:
        shift_size[1] = 0

    if sum(shift_size) > 0:
        x = torch.roll(x, shifts=(-shift_size[0], -shift_size[1]), dims=(1, 2))

    num_windows = (pad_H // window_size[0]) * (pad_W // window_size[1])
    x = x.view(B, pad_H // window_size[0], window_size[0], pad_W // window_size[1], window_size[1], C)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(B * num_windows, window_size[0] * window_size[1], C)

    if logit_scale is not None and qkv_bias is not None:
        qkv_bias = qkv_bias.clone()
        length = qkv_bias.numel() // 3
        qkv_bias[length : 2 * length].zero_()
    qkv = F.linear(x, qkv_weight, qkv_bias)
    qkv = qkv.reshape(x.size(0), x.size(1), 3, num_heads, head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    if logit_scale is not None:
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        logit_scale = torch.clamp(logit_scale, max=math.log(100.0)).exp()
        attn = attn * logit_scale
    else:
        q = q * (head_scale if head_scale is not None else head_dim ** -0.5)
        attn = q.matmul(k.transpose(-2, -1))
    attn = attn + relative_position_bias

    if sum(shift_size) > 0:
        attn_mask = x.new_zeros((pad_H, pad_W))
        h_slices = ((0, -window_size[0]), (-window_size[0], -shift_size[0]), (-shift_size[0], None))
        w_slices = ((0, -window_size[1]), (-window_size[1], -shift_size[1]), (-shift_size[1], None))
        count = 0
        for h in h_slices:
            for w in w_slices:
                attn_mask[h[0] : h[1], w[0] : w[1]] = count
                count += 1
        attn_mask = attn_mask.view(pad_H // window_size[0], window_size[0], pad_W // window_size[1], window_size[1])
        attn_mask = attn_mask.permute(0, 2, 1, 3).reshape(num_windows, window_size[0] * window_size[1])
        attn_mask = attn_mask.unsqueeze(1) - attn_mask.unsqueeze(2)
        attn_mask = attn_mask.masked_fill(attn_mask != 0, float(-100.0)).masked_fill(attn_mask == 0, float(0.0))
        attn = attn.view(x.size(0) // num_windows, num_windows, num_heads, x.size(1), x.size(1))
        attn = attn + attn_mask.unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, num_heads, x.size(1), x.size(1))

    attn = F.softmax(attn, dim=-1)
    attn = F.dropout(attn, p=attention_dropout, training=training)

    x = attn.matmul(v).transpose(1, 2).reshape(x.size(0), x.size(1), inner)
    x = F.linear(x, proj_weight, proj_bias)
    x = F.dropout(x, p=dropout, training=training)

    x = x.view(B, pad_H // window_size[0], pad_W // window_size[1], window_size[0], window_size[1], c_out)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(B, pad_H, pad_W, c_out)

    if sum(shift_size) > 0:
        x = torch.roll(x, shifts=(shift_size[0], shift_size[1]), dims=(1, 2))

    x = x[:, :H, :W, :].contiguous()
    return x


torch.fx.wrap("window_attention")


def _swin_functions() -> dict[str, Any]:
    try:
        from torchvision.models import swin_transformer as swin
    except ImportError:  # torchvision is optional for the analysis itself
        return {}
    return {"attention": swin.shifted_window_attention, "merge_pad": swin._patch_merging_pad}


_SWIN = _swin_functions()


@REGISTRY.function(window_attention, *([_SWIN["attention"]] if _SWIN else []))
def window_attention_rule(an, node):
    """Windowed multi-head self-attention reading ``qkv`` and ``proj`` Linear weights (Swin).

    The input channels are ``qkv``'s inputs, the output channels new channels written by ``proj``;
    the inner width is pruned per head equally and is mixing (module doc). The rewrite swaps in
    :func:`window_attention` with the original softmax scale when a width changes."""
    try:
        bound = inspect.signature(node.target).bind(*node.args, **node.kwargs)
    except TypeError:
        return an.opaque(node, "windowed attention called with unexpected arguments")
    bound.apply_defaults()
    args = bound.arguments
    x = args["input"]
    qkv = weight_owner(an, args["qkv_weight"], args["qkv_bias"], ndim=2)
    proj = weight_owner(an, args["proj_weight"], args["proj_bias"], ndim=2)
    num_heads = an.value(args["num_heads"])
    if qkv is None or proj is None or not isinstance(num_heads, int):
        return an.opaque(node, "windowed attention whose weights are not a Linear module's parameters")
    for name in ("relative_position_bias", "logit_scale"):
        if isinstance(args[name], torch.fx.Node):
            an.freeze(an.layout(args[name]), node, "attention bias / scale (per head, heads are kept)")
    in_elems = _channel_elems(an, node, x, -1, "attention input features are not a simple axis")
    (qkv_name, (qkv_out, _)), (proj_name, (proj_out, proj_in)) = qkv, proj
    inner_width = qkv_out // 3
    if in_elems is None or inner_width % num_heads or proj_in != inner_width:
        return an.opaque(node, "windowed attention widths this rule does not read")
    head_dim = inner_width // num_heads
    inner = an.fresh(3 * inner_width, 0, 1).index.reshape(3, num_heads, head_dim)
    an.unify(inner, np.broadcast_to(inner[:1, :1, :], inner.shape))  # dim j of q, k, v in every head
    an.mix(inner, node, "attention scores sum q·k over the head dims")
    shape = an.shape(node)
    out = an.fresh(proj_out, len(shape) - 1, len(shape))
    an.record_module(node, "linear", in_elems, inner.reshape(-1), name=qkv_name)
    an.record_module(node, "linear", inner[2].reshape(-1), out.index.reshape(-1), name=proj_name)
    scale = args.get("head_scale")
    scale = an.value(scale) if scale is not None else head_dim ** -0.5
    elems = np.concatenate([in_elems, inner.reshape(-1), out.index.reshape(-1)])
    an.add_edit(node, functools.partial(_swap_window_attention, elems=elems, scale=float(scale)))
    return out


def _swap_window_attention(gm, node, analysis, keep, elems, scale) -> None:
    if keep[np.asarray(elems)].all():
        return
    node.target = window_attention
    node.kwargs = {**node.kwargs, "head_scale": scale}


if _SWIN:

    @REGISTRY.function(_SWIN["merge_pad"])
    def patch_merging_pad_rule(an, node):
        """Swin's patch merging: pad H and W to even, take the 4 sub-grids, cat them on the channel
        axis: the output's channels are the input's, four times over."""
        src = node.args[0]
        lay, shape = an.layout(src), an.shape(src)
        if lay is None:
            return None
        elems = _channel_elems(an, node, src, -1, "patch merging of a tensor whose channels are not last")
        out_shape = an.shape(node)
        if elems is None or out_shape is None or out_shape[-1] != 4 * shape[-1]:
            return an.opaque(node, "patch merging of a tensor whose channels are not last")
        return Layout.along(np.tile(elems, 4), len(out_shape) - 1, len(out_shape))
