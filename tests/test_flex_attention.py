"""FlexAttention as the sliding-window Stage II (modules/flex_attention.py) and `speed --impl flex`.

flex masks the real tokens where the suite reflection-pads, so it must equal the reference on the
interior pixels and differ on every border pixel. One shape throughout, so the compiled function
compiles once per test process.
"""
from __future__ import annotations

import copy
import csv
import io
import sys

import pytest
import torch

from bench.cli import main
from modules import ACmix, LocalSelfAttention, set_stage2_impl
from modules.flex_attention import FlexAttentionPath, interior, neighbourhood_mask, use_flex

pytest.importorskip("torch.nn.attention.flex_attention")

SHAPE = (2, 8, 12, 13)  # B, C, H, W
KA, HEADS = 5, 2
FAST = ["--min-run-time", "0.01", "--repeats", "2"]


def _outputs(op):
    torch.manual_seed(0)
    x = torch.randn(*SHAPE)
    ref = set_stage2_impl(copy.deepcopy(op), "reference")
    flex = use_flex(copy.deepcopy(op))
    with torch.no_grad():
        return ref(x), flex(x)


@pytest.mark.parametrize("kind", ["sa", "acmix"])
def test_flex_equals_reference_inside_and_differs_at_the_border(kind):
    torch.manual_seed(1)
    C = SHAPE[1]
    op = (LocalSelfAttention(C, C, kernel_att=KA, head=HEADS) if kind == "sa"
          else ACmix(C, C, kernel_att=KA, head=HEADS, kernel_conv=3))
    with torch.no_grad():  # a positional conv that matters: the default init is small
        for m in op.modules():
            if hasattr(m, "pe"):
                m.pe.weight.normal_(0, 1.0)
    ref, flex = _outputs(op)
    assert flex.shape == ref.shape
    inside = interior(SHAPE[2], SHAPE[3], KA)
    assert int(inside.sum()) == (12 - 4) * (13 - 4)
    torch.testing.assert_close(flex[..., inside], ref[..., inside], rtol=1e-5, atol=1e-5)
    # every pixel within (k_a - 1) / 2 of an edge sees reflected duplicates in the reference window
    border_diff = (flex - ref).abs().amax(dim=(0, 1))[~inside]
    assert border_diff.numel() == 12 * 13 - 8 * 9 and bool((border_diff > 1e-4).all())


@pytest.mark.parametrize("stride,dilation", [(1, 1), (2, 1), (2, 2), (3, 2)])
def test_mask_is_the_neighbourhood(stride, dilation):
    """The block mask keeps exactly the key pixels at offsets |dy|, |dx| <= dilation (k_a - 1) / 2, spaced by
    the dilation, around each (strided) query pixel."""
    from torch.nn.attention.flex_attention import create_mask

    H, W, ka = 9, 11, 3
    mask = neighbourhood_mask(H, W, ka, stride, dilation)
    dense = create_mask(mask.mask_mod, None, None, mask.seq_lengths[0], mask.seq_lengths[1], device="cpu")[0, 0]
    Ho, Wo = (H - 1) // stride + 1, (W - 1) // stride + 1
    qy, qx = [t.reshape(-1) * stride for t in torch.meshgrid(torch.arange(Ho), torch.arange(Wo), indexing="ij")]
    ky, kx = [t.reshape(-1) for t in torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")]
    dy, dx = ky[None] - qy[:, None], kx[None] - qx[:, None]
    pad = dilation * (ka - 1) // 2
    expect = (dy.abs() <= pad) & (dx.abs() <= pad) & (dy % dilation == 0) & (dx % dilation == 0)
    assert dense.shape == (Ho * Wo, H * W) and torch.equal(dense, expect)
    assert int(dense[(Ho // 2) * Wo + Wo // 2].sum()) == ka * ka  # an interior query sees the whole window


def test_set_stage2_impl_switches_flex_paths_back():
    torch.manual_seed(0)
    op = ACmix(8, 8, kernel_att=KA, head=HEADS)
    flex = use_flex(copy.deepcopy(op))
    assert isinstance(flex.stage2.attention, FlexAttentionPath) and flex.stage2.attention.impl == "flex"
    assert torch.equal(flex.stage2.attention.pe.weight, op.stage2.attention.pe.weight)
    set_stage2_impl(flex, "reference")
    set_stage2_impl(op, "reference")
    x = torch.randn(*SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(flex(x), op(x), rtol=0, atol=0)


def test_cpu_backward_is_refused_before_the_compiled_function(monkeypatch):
    """torch 2.14 has no CPU backward for FlexAttention; the refusal must not reach the compiled function,
    whose failed trace would leave every later forward running eagerly."""
    from modules import flex_attention

    if flex_attention.cpu_backward_error() is None:
        pytest.skip("this torch differentiates flex_attention on CPU")
    monkeypatch.setattr(flex_attention, "_compiled", lambda: pytest.fail("compiled function called with grad"))
    op = use_flex(LocalSelfAttention(8, 8, kernel_att=KA, head=HEADS))
    with pytest.raises(NotImplementedError, match="backward"):
        op(torch.randn(*SHAPE, requires_grad=True))


def test_use_flex_needs_a_sliding_window_path():
    with pytest.raises(ValueError, match="has none"):
        use_flex(torch.nn.Conv2d(4, 4, 3))


def _speed_csv(capsys, argv):
    assert main(["speed", *argv, "--format", "csv", "--no-memory", *FAST]) == 0
    return list(csv.DictReader(io.StringIO(capsys.readouterr().out)))


def test_speed_flex_rows_compile_time_and_backward_note(capsys):
    rows = _speed_csv(capsys, ["--op", "sa", "--impl", "fast,flex", "--shape", ",".join(map(str, SHAPE)),
                               "--kernel-att", str(KA), "--heads", str(HEADS), "--rounds", "2"])
    got = {(r["impl"], r["pass"]): r for r in rows}
    assert set(got) == {(i, p) for i in ("nn.Conv2d", "fast", "flex", "reference") for p in ("fwd", "fwd+bwd")}
    fwd = got["flex", "fwd"]
    assert float(fwd["median_ms"]) > 0 and float(fwd["compile_s"]) > 0 and fwd["backend"] == "inductor"
    assert float(fwd["speedup_vs_ref"]) > 0 and fwd["note"] == ""
    # torch 2.14 has no CPU backward for FlexAttention: that row says so, the rest of the run is measured
    bwd = got["flex", "fwd+bwd"]
    assert bwd["median_ms"] == "" and bwd["x_conv"] == "" and bwd["speedup_vs_ref"] == ""
    assert bwd["note"].startswith("not run: ") and "backward" in bwd["note"] and "\n" not in bwd["note"]
    assert all(float(r["median_ms"]) > 0 for k, r in got.items() if k != ("flex", "fwd+bwd"))


def test_speed_table_states_the_border_caveat(capsys):
    assert main(["speed", "--op", "sa", "--impl", "flex", "--pass", "fwd", "--shape", ",".join(map(str, SHAPE)),
                 "--kernel-att", str(KA), "--heads", str(HEADS), "--no-memory", *FAST]) == 0
    out = capsys.readouterr().out
    assert "different function within (k_a - 1) / 2 pixels of the border" in out
    assert "sa flex fwd 2x8x12x13 s=1: compile_s " in out


@pytest.mark.parametrize("argv,msg", [
    (["--op", "conv", "--impl", "flex"], "--impl flex: FlexAttention replaces the sliding-window attention of --op sa"),
    (["--op", "window-sa", "--impl", "fast,flex"], "got --op window-sa"),
    (["--op", "sa", "--impl", "flex", "--dtype", "float64"], "flex_attention on CPU runs float32"),
    (["--op", "sa", "--impl", "flexx"], "--impl: unknown flexx"),
])
def test_flex_bad_input_is_one_line(capsys, argv, msg):
    assert main(["speed", *argv, "--shape", "1,8,12,12", "--no-memory", *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and len(err.splitlines()) == 1


def test_flex_without_flex_attention_names_the_torch_needed(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.nn.attention.flex_attention", None)  # import raises ImportError
    assert main(["speed", "--op", "sa", "--impl", "flex", "--shape", "1,8,12,12", "--no-memory", *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert "needs torch.nn.attention.flex_attention (torch >= 2.6" in err and len(err.splitlines()) == 1
    assert torch.__version__ in err
