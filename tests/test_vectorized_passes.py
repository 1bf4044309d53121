"""The passes that work on all module sides at once agree with a plain loop over the sides.

The references below are the straightforward per-side formulations; the passes compute the same
in one numpy pass (see passes.dependency._build_groups, passes.select.layer_classes and
keep_every_layer_alive, passes.layout.UnionFind.snapshot).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from passes.dependency import analyze
from passes.layout import UnionFind
from passes.select import keep_every_layer_alive, layer_classes
from passes.trace import trace

MODELS = {
    "mobilenet_v3_small": 224,  # SE broadcasts, hardswish
    "densenet121": 64,  # concatenations: sides spanning several groups
    "googlenet": 64,  # inception branches
    "regnet_x_400mf": 64,  # grouped convs
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def analysis(request):
    model = getattr(torchvision.models, request.param)(**({"aux_logits": False, "init_weights": False}
                                                          if request.param == "googlenet" else {}))
    size = MODELS[request.param]
    gm, inputs = trace(model.eval(), torch.randn(1, 3, size, size))
    return analyze(gm, inputs)


def _sides(an):
    for role in an.roles.values():
        yield (role.name, "in"), role.in_elems
        yield (role.name, "out"), role.out_elems
    for target, (_, elems) in an.attr_slices.items():
        yield (target, "attr"), elems


def test_groups_hold_the_members_and_classes_a_loop_over_sides_finds(analysis):
    members, roots = {}, {}
    for member, elems in _sides(analysis):
        if elems is None:
            continue
        elems = np.asarray(elems, dtype=np.int64).ravel()
        for g in np.unique(analysis.group_of[elems]):
            members.setdefault(g, []).append(member)
            roots.setdefault(g, set()).update(analysis.root_of[elems[analysis.group_of[elems] == g]].tolist())
    want = sorted((sorted(r), members[g]) for g, r in roots.items())
    got = sorted((g.roots.tolist(), g.members) for g in analysis.groups)
    assert got == want
    assert len(analysis.groups) > 5


def test_layer_classes_match_a_loop_over_sides(analysis):
    gpos, cpos = analysis.class_positions()
    want = {}
    for role in analysis.roles.values():
        for elems in (role.out_elems, role.in_elems):
            if elems is None:
                continue
            r = analysis.roots(elems)
            if len(set(gpos[r].tolist())) == 1:
                want.setdefault(int(gpos[r][0]), []).append(sorted(set(cpos[r].tolist())))
    got = {g: [c.tolist() for c in sides] for g, sides in layer_classes(analysis).items()}
    assert got == want


def _keep_alive_reference(kept, scores, layers):
    keep = set(kept.tolist())
    for mine in layers:
        if keep.isdisjoint(mine.tolist()):
            keep.add(int(mine[np.argmax(scores[mine])] if scores is not None else mine[0]))
    return sorted(keep)


@pytest.mark.parametrize("seed", range(20))
def test_keep_every_layer_alive_matches_the_loop(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 40))
    layers = [np.unique(rng.choice(n, size=int(rng.integers(1, 6)))) for _ in range(int(rng.integers(0, 8)))]
    kept = np.unique(rng.choice(n, size=int(rng.integers(0, 4)))).astype(np.int64)
    scores = rng.normal(size=n) if seed % 2 else None
    assert keep_every_layer_alive(kept, scores, layers).tolist() == _keep_alive_reference(kept, scores, layers)


def test_union_find_groups_are_the_spaces_chains_of_unions_link():
    uf = UnionFind()
    a, b, c, d = uf.new_space(3), uf.new_space(2), uf.new_space(4), uf.new_space(1)
    uf.union_arrays(a[:1], b[1:])  # links spaces a and b through one element pair
    uf.union_arrays(c[2:], c[:2])  # unites elements inside c only
    roots, groups = uf.snapshot()
    assert roots.tolist() == [0, 1, 2, 3, 0, 5, 6, 5, 6, 9]
    assert len({groups[i] for i in (*a, *b)}) == 1
    assert len({groups[i] for i in c}) == 1
    assert len(set(groups[[a[0], c[0], d[0]]].tolist())) == 3
