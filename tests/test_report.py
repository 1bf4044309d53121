"""fxprune.report: hand-checked params/MACs, paper-style reductions, table, no side effects."""

import copy
import json

import pytest
import torch
import torchvision
from torch import fx, nn
from torch.nn import functional as F

import fxprune
from fxprune.models import get_model
from fxprune.report import Counts, Report, count, human, report
from conftest import randomize


class TwoLayer(nn.Module):
    """conv(3->c, 3x3, pad 1) -> BN -> ReLU -> flatten -> linear(c*8*8 -> 10) on 8x8 inputs."""

    def __init__(self, c: int = 8):
        super().__init__()
        self.conv = nn.Conv2d(3, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(c * 8 * 8, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.relu(self.bn(self.conv(x))), 1))


X8 = torch.zeros(1, 3, 8, 8)


def expected(c: int) -> dict[str, int]:
    """The counts worked out by hand for TwoLayer(c) on one 3x8x8 input."""
    conv_params = c * 3 * 3 * 3 + c
    fc_params = c * 64 * 10 + 10
    conv_macs = c * 3 * 3 * 3 * 8 * 8  # Cout * Cin * k * k * Hout * Wout, one MAC per fused multiply-add
    fc_macs = c * 64 * 10
    bn_macs = 2 * c * 8 * 8  # fvcore: eval-mode affine BN = 2 ops per element
    return {
        "params": conv_params + 2 * c + fc_params,
        "params_conv_linear": conv_params + fc_params,
        "macs": conv_macs + fc_macs + bn_macs,
        "macs_conv_linear": conv_macs + fc_macs,
    }


def shrunk_two_layer(original: fx.GraphModule | None = None, keep: int = 4) -> fx.GraphModule:
    """A copy of a traced TwoLayer(8) with conv output channels cut to ``keep`` by hand (names kept)."""
    gm = copy.deepcopy(original if original is not None else fx.symbolic_trace(TwoLayer(8).eval()))
    idx = torch.arange(keep)
    conv, bn, fc = nn.Conv2d(3, keep, 3, padding=1), nn.BatchNorm2d(keep), nn.Linear(keep * 64, 10)
    conv.weight.data, conv.bias.data = gm.conv.weight.data[idx].clone(), gm.conv.bias.data[idx].clone()
    bn.load_state_dict({k: v[idx] if v.ndim else v for k, v in gm.bn.state_dict().items()})
    fc.weight.data = gm.fc.weight.data.view(10, 8, 64)[:, idx].reshape(10, keep * 64).clone()
    fc.bias.data = gm.fc.bias.data.clone()
    gm.conv, gm.bn, gm.fc = conv, bn, fc
    return gm.eval()


def test_single_conv_macs_match_hand_count():
    # fvcore's "flop" is one fused multiply-add: a conv costs Cout*Cin/groups*k*k*Hout*Wout, not 2x that.
    conv = nn.Conv2d(4, 6, kernel_size=3, stride=2, padding=1, groups=2, bias=True)
    c = count(conv, torch.zeros(2, 4, 10, 10))
    assert c.macs == c.macs_conv_linear == 2 * 6 * (4 // 2) * 3 * 3 * 5 * 5
    assert c.params == c.params_conv_linear == 6 * 2 * 3 * 3 + 6
    assert dict(c.by_operator) == {"conv": c.macs}


@pytest.mark.parametrize("c", [8, 4])
def test_two_layer_counts_by_hand(c):
    got = count(fx.symbolic_trace(TwoLayer(c)), X8)
    assert isinstance(got, Counts)
    assert {k: getattr(got, k) for k in expected(c)} == expected(c)
    assert dict(got.by_operator) == {"conv": c * 27 * 64, "linear": c * 640, "batch_norm": 2 * c * 64}


def test_reductions_for_hand_shrunk_model():
    original = fx.symbolic_trace(TwoLayer(8).eval())
    small = shrunk_two_layer(original, 4)
    r = report(original, small, X8, print_table=False)
    e8, e4 = expected(8), expected(4)
    assert r.before.params_conv_linear == e8["params_conv_linear"] and r.after.macs == e4["macs"]
    pct = lambda k: (e8[k] - e4[k]) / e8[k] * 100  # noqa: E731  seed 000's FR/PR
    assert r.flops_reduction_pct == pytest.approx(pct("macs_conv_linear"))
    assert r.params_reduction_pct == pytest.approx(pct("params_conv_linear"))
    assert r.flops_reduction_pct_all == pytest.approx(pct("macs"))
    assert r.params_reduction_pct_all == pytest.approx(pct("params"))
    assert r.flops_reduction_pct == pytest.approx(50.0)  # both layers' MACs scale with the width
    # The shrunk model still computes what the kept channels of the original compute.
    with torch.no_grad():
        x = torch.randn(2, 3, 8, 8)
        full = original.relu(original.bn(original.conv(x)))
        assert torch.allclose(small.relu(small.bn(small.conv(x))), full[:, :4])


def test_printed_table_contains_numbers(capsys):
    r = report(fx.symbolic_trace(TwoLayer(8).eval()), shrunk_two_layer(keep=4), X8)
    out = capsys.readouterr().out
    assert out == str(r) + "\n"
    e8, e4 = expected(8), expected(4)
    for label in ("Params", "Params (conv+linear)", "MACs", "MACs (conv+linear)"):
        assert label in out
    for key in e8:
        assert human(e8[key]) in out and human(e4[key]) in out
    assert f"{r.flops_reduction_pct:.2f}%" in out and f"{r.params_reduction_pct:.2f}%" in out
    assert human(18944) == "18.94K" and human(1_814_073_344) == "1.81G" and human(999) == "999"


def test_print_table_false_prints_nothing(capsys):
    report(TwoLayer(8), TwoLayer(4), X8, print_table=False)
    assert capsys.readouterr() == ("", "")


def test_to_dict_is_json_safe():
    r = report(TwoLayer(8), TwoLayer(4), X8, print_table=False)
    d = json.loads(json.dumps(r.to_dict()))
    assert d["before"]["macs_conv_linear"] == expected(8)["macs_conv_linear"]
    assert d["flops_reduction_pct"] == pytest.approx(r.flops_reduction_pct)
    assert set(d) == {"before", "after", "flops_reduction_pct", "params_reduction_pct",
                      "flops_reduction_pct_all", "params_reduction_pct_all"}
    assert Report(r.before, r.before).flops_reduction_pct == 0.0


def test_users_model_is_not_modified():
    model = fx.symbolic_trace(TwoLayer(8))
    model.train()
    model.fc.eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    count(model, torch.randn(4, 3, 8, 8))
    assert model.training and model.bn.training and not model.fc.training
    after = model.state_dict()
    assert list(after) == list(before)
    for k, v in before.items():
        assert torch.equal(after[k], v), k  # a train-mode forward would have moved BN statistics
    assert all(p.grad is None for p in model.parameters())


def test_default_input_is_224_and_matches_published_resnet18():
    torch.manual_seed(0)
    traced = fx.symbolic_trace(torchvision.models.resnet18())
    r = report(traced, traced, print_table=False)
    # ResNet-18: 11.69M params, 1.82G MACs (papers' "1.8 GFLOPs") at 224x224.
    assert r.before.params == 11_689_512
    assert r.before.macs_conv_linear == 1_813_561_344 + 512_000
    assert r.flops_reduction_pct == 0.0 and r.params_reduction_pct == 0.0


def test_default_input_is_what_the_model_was_pruned_for_in_its_dtype():
    """A CIFAR model pruned at 32x32 is counted at 32x32; a bfloat16 model gets bfloat16 inputs."""
    model = randomize(get_model("resnet20")).to(torch.bfloat16)
    x = torch.randn(1, 3, 32, 32, dtype=torch.bfloat16)
    small = fxprune.prune(model, x, criterion="l1", ratio=0.3)
    by_default = report(model, small, print_table=False).to_dict()
    assert by_default == report(model, small, x, print_table=False).to_dict()


class UnrolledLSTM(nn.Module):
    """One LSTM layer written as two linear layers per step: fvcore's own linear rule counts its MACs."""

    def __init__(self, lstm: nn.LSTM):
        super().__init__()
        self.ih = nn.Linear(lstm.input_size, 4 * lstm.hidden_size)
        self.hh = nn.Linear(lstm.hidden_size, 4 * lstm.hidden_size)

    def forward(self, x):  # (T, N, in)
        h = c = x.new_zeros(x.shape[1], self.hh.in_features)
        for step in x:
            i, f, g, o = (self.ih(step) + self.hh(h)).chunk(4, 1)
            c = f.sigmoid() * c + i.sigmoid() * g.tanh()
            h = o.sigmoid() * c.tanh()
        return h


def test_a_recurrent_layer_counts_the_macs_of_its_gate_products():
    """fvcore has no rule for aten::lstm/gru (it would count 0): an LSTM counts what the same LSTM unrolled
    into linear layers counts, and a 2-layer bidirectional GRU the products worked out by hand."""
    lstm = nn.LSTM(8, 16)
    x = torch.randn(5, 2, 8)
    assert count(lstm, x).by_operator["lstm"] == count(UnrolledLSTM(lstm), x).by_operator["linear"] == 15_360
    gru = nn.GRU(8, 16, num_layers=2, bidirectional=True, batch_first=True)
    # per step and sequence, each direction: layer 0 (48x8 + 48x16), layer 1 (48x32 + 48x16); 2 x 5 steps
    per_step = 2 * (48 * 8 + 48 * 16) + 2 * (48 * 32 + 48 * 16)
    assert count(gru, torch.randn(2, 5, 8)).by_operator["gru"] == 10 * per_step
    assert count(gru, torch.randn(2, 5, 8)).params_conv_linear == sum(p.numel() for p in gru.parameters())


class Attention(nn.Module):
    def __init__(self, fused: bool):
        super().__init__()
        self.fused = fused

    def forward(self, q, k, v):
        if self.fused:
            return F.scaled_dot_product_attention(q, k, v)
        return torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, -1) @ v


def test_fused_attention_counts_what_its_unfused_matmuls_count():
    q, k, v = torch.randn(2, 3, 10, 8), torch.randn(2, 3, 12, 8), torch.randn(2, 3, 12, 5)
    fused, unfused = count(Attention(True), (q, k, v)), count(Attention(False), (q, k, v))
    assert fused.by_operator["scaled_dot_product_attention"] == unfused.by_operator["matmul"] == 2 * 3 * 10 * 12 * 13
    assert fused.macs_conv_linear == unfused.macs_conv_linear


def test_multihead_attention_counts_its_projections_and_products():
    """In eval mode under no_grad, nn.MultiheadAttention runs one fused kernel that fvcore counts as 0 MACs,
    projections included: the count runs it unfused, and leaves torch's fast-path setting as it was."""
    model = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2,
                                                 hidden_dim=16, mlp_dim=32, num_classes=10).eval()
    c = count(model, torch.randn(1, 3, 32, 32))
    tokens = 4 * 4 + 1
    assert c.by_operator["linear"] == tokens * 16 * (3 * 16 + 16 + 2 * 32) + 16 * 10  # qkv, out, mlp, head
    assert c.by_operator["scaled_dot_product_attention"] == 2 * tokens * tokens * (8 + 8)  # heads of 8 dims
    assert c.params_conv_linear == sum(p.numel() for n, p in model.named_parameters()
                                       if "ln" not in n and n not in ("class_token", "encoder.pos_embedding"))
    assert torch.backends.mha.get_fastpath_enabled()


def test_the_table_names_heavy_ops_no_rule_counts():
    """A layer no MAC rule covers (nn.Bilinear) is named under the table, not silently counted as free."""

    class Gate(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv, self.mix = nn.Conv2d(3, c, 3, padding=1), nn.Bilinear(c, c, 4)

        def forward(self, x):
            f = self.conv(x).mean((2, 3))
            return self.mix(f, f)

    model = randomize(Gate(8))
    small = fxprune.prune(model, X8, criterion="l1", ratio=0.5)
    r = report(model, small, X8, print_table=False)
    assert dict(r.before.uncounted) == dict(r.after.uncounted) == {"aten::bilinear": 1}
    assert r.to_dict()["after"]["uncounted"] == {"aten::bilinear": 1}
    assert str(r).splitlines()[-1] == "MACs leave out aten::bilinear: no MAC rule for them"
    assert "leave out" not in str(report(TwoLayer(8), TwoLayer(4), X8, print_table=False))
