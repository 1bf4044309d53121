"""The redundancy-graph criterion (seed 000): hashing, vectorized similarity, decomposition, pruning."""
import numpy as np
import pytest
import torch
from torch import nn

import fxprune
from fxprune.models import get_model
from passes.criteria.graph import decompose, phash_bits, similarity
from conftest import prune_and_check, randomize


def _similarity_double_loop(bits):
    """The seed's formulation: Hamming distance summed over images, pair by pair."""
    t, n, b = bits.shape
    s = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            ham = sum(np.count_nonzero(bits[k, i] != bits[k, j]) for k in range(t))
            s[i, j] = 1 - ham / (b * t)
    return s


def test_vectorized_similarity_equals_double_loop():
    maps = torch.randn(5, 12, 16, 16)
    maps[:, 3] = maps[:, 7]  # one exact duplicate
    bits = phash_bits(maps)
    assert bits.shape == (5, 12, 64)
    np.testing.assert_array_equal(similarity(bits), _similarity_double_loop(bits))
    assert similarity(bits)[3, 7] == 1.0


def test_small_maps_hash_k_by_k_bits():
    assert phash_bits(torch.randn(2, 4, 4, 4)).shape == (2, 4, 16)


def test_maps_shorter_than_wide_hash_their_h_by_k_block():
    """A 4 x 16 map has 4 rows of DCT coefficients: its hash is the 4 x 8 low block (it failed to reshape)."""
    assert phash_bits(torch.randn(2, 3, 4, 16)).shape == (2, 3, 32)
    assert phash_bits(torch.randn(2, 3, 16, 4)).shape == (2, 3, 32)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, padding=1),
                              torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 6))
    x = torch.randn(4, 3, 4, 16)
    small = fxprune.prune(net, x, criterion="graph", threshold=0.7, data=[(x,)])
    assert fxprune.verify(net, small, x) <= 1e-5


def test_decompose_keeps_max_l1_of_each_component_and_an_independent_set():
    sim = np.zeros((6, 6))
    for i, j in [(0, 1), (1, 2), (0, 2), (3, 4)]:
        sim[i, j] = 0.9
    l1 = np.array([1.0, 3.0, 2.0, 5.0, 4.0, 1.0])
    kept, removed_at = decompose(sim, l1, 0.8)
    assert kept.tolist() == [1, 3, 5]
    assert removed_at[0] == removed_at[2] == 0  # the triangle is the first (2-)core
    assert decompose(sim, l1, 0.95)[0].tolist() == list(range(6))  # no edge at a higher threshold


class _DupNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(64)
        self.head = nn.Conv2d(64, 8, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.pool(self.head(torch.relu(self.bn(self.conv(x))))).flatten(1)


def test_duplicated_filters_keep_exactly_one_of_each():
    torch.manual_seed(0)
    net = _DupNet().eval()
    with torch.no_grad():
        distinct = torch.randn(16, 3, 3, 3)
        net.conv.weight.copy_(distinct.repeat_interleave(4, 0) + 1e-4 * torch.randn(64, 3, 3, 3))
    x = torch.randn(1, 3, 32, 32)
    small, _ = prune_and_check(net, x, criterion="graph", threshold=0.95)
    kept = small.meta["fxprune.plan"].modules["conv"]["out"]
    assert len(kept) == 16
    assert sorted(k // 4 for k in kept) == list(range(16))
    l1 = net.conv.weight.detach().abs().sum((1, 2, 3))
    for k in kept:  # the kept copy is the largest-L1 one of its four
        assert l1[k] == l1[k // 4 * 4: k // 4 * 4 + 4].max()


@pytest.fixture(scope="module")
def digits_resnet20():
    """ResNet-20 (RGD variant) trained a few steps on scikit-learn's digits, plus calibration data."""
    from fxprune.data import load_dataset

    torch.manual_seed(0)
    ds = load_dataset("digits", split="train")
    loader = torch.utils.data.DataLoader(ds, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    model = get_model("resnet20")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for step, (x, y) in enumerate(loader):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step == 15:
            break
    calib = [x for x, _ in torch.utils.data.DataLoader(ds, batch_size=50)][:2]
    return model.eval(), calib


def test_graph_on_trained_model_verifies(digits_resnet20):
    model, calib = digits_resnet20
    small, err = prune_and_check(model, calib[0][:2], criterion="graph", threshold=0.7, data=calib)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())


def test_lower_threshold_never_keeps_more(digits_resnet20):
    model, calib = digits_resnet20
    x = calib[0][:1]
    kept = []
    for t in (0.5, 0.6, 0.7, 0.8, 0.9, 1.0):
        plan = fxprune.plan(model, x, criterion="graph", threshold=t, data=calib)
        kept.append({g["members"][0][0]: len(g["keep"]) for g in plan.groups})
    for low, high in zip(kept, kept[1:]):
        for key, n in low.items():
            assert n <= high.get(key, 10**9), (key, n, high.get(key))


def test_graph_without_data_falls_back_to_random_inputs(caplog):
    model = randomize(get_model("resnet20"))
    small, _ = prune_and_check(model, torch.randn(2, 3, 32, 32), criterion="graph", threshold=0.7)
    assert small.meta["fxprune.plan"].options["criterion"] == "graph"


def test_graph_with_ratio_budget_ranks_by_removal_round(digits_resnet20):
    model, calib = digits_resnet20
    small, _ = prune_and_check(model, calib[0][:2], criterion="graph", ratio=0.5, data=calib)
    assert small.conv1.out_channels == 8


def test_projection_stage_follows_its_projection_conv(digits_resnet20):
    """Seed 000 on projection ResNets: a stage's stream keeps what the projection conv's own graph keeps."""
    from passes.criteria.graph import monotone_keep

    model, calib = digits_resnet20
    plan = fxprune.plan(model, calib[0][:1], criterion="graph", threshold=0.7, data=calib)
    maps = []
    handle = model.layer2[0].downsample[0].register_forward_hook(lambda m, a, o: maps.append(o.detach()))
    with torch.no_grad():
        for x in calib:
            model(x)
    handle.remove()
    sim = similarity(phash_bits(torch.cat(maps)))
    l1 = model.layer2[0].downsample[0].weight.detach().abs().sum((1, 2, 3)).double().numpy()
    expected, _ = monotone_keep(sim, l1, 0.7)
    stage2 = plan.modules.get("layer2.0.downsample.0", {}).get("out") or list(range(32))
    assert stage2 == expected.tolist()
    for b in range(3):
        assert (plan.modules.get(f"layer2.{b}.conv2", {}).get("out") or list(range(32))) == stage2
