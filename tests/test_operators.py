"""Equivalences the suite rests on: decomposed conv, shift implementations,
and every Stage II held equal to its reference (values and gradients)."""
import itertools

import pytest
import torch
import torch.nn as nn
from torch.autograd import gradcheck

from modules import (ACmix, Conv, ConvPath, DecomposedConv, LocalSelfAttention, SHIFT_IMPLS, ShiftAggregation,
                     WindowACmix, WindowSelfAttention, local_attention_fast, local_attention_reference,
                     set_stage2_impl, shift_aggregate_reference, window_attention_fast, window_attention_reference)
from modules.lightning import mixing_weights
from modules.shift import _tensor_shift_sum_traced, tensor_shift_sum
from modules.window_attention import relative_position_index, shifted_window_mask

f64 = torch.float64


def rand(*shape, dtype=f64, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, dtype=dtype, generator=g).requires_grad_(requires_grad)


def randomize_(module, seed=0):
    """Move every parameter away from its initial value (one-hot kernels, 0.5 rates...)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
    return module


# ----------------------------------------------------------------------------- decomposition of conv


@pytest.mark.parametrize("k,stride,bias", list(itertools.product((1, 3, 5, 7), (1, 2), (False, True))))
def test_decomposed_conv_equals_conv2d_float64(k, stride, bias):
    torch.manual_seed(k * 10 + stride)
    conv = nn.Conv2d(5, 7, k, stride=stride, padding=k // 2, bias=bias).double()
    x = rand(2, 5, 13, 10, seed=k)
    for shift in SHIFT_IMPLS:
        dec = DecomposedConv.from_conv2d(conv, shift=shift)
        assert dec.stage1.kernel_size == (1, 1)
        err = (conv(x) - dec(x)).abs().max().item()
        assert err < 1e-10, (shift, err)


def test_decomposed_conv_gradients_match_conv2d():
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=True).double()
    dec = DecomposedConv.from_conv2d(conv)
    x = rand(2, 4, 9, 8, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    conv(x).square().sum().backward()
    dec(x2).square().sum().backward()
    assert torch.allclose(x.grad, x2.grad, atol=1e-10)
    # the stage-1 weight gradient is the conv's weight gradient, reordered
    g = dec.stage1.weight.grad.reshape(6, 9, 4).permute(0, 2, 1).reshape(6, 4, 3, 3)
    assert torch.allclose(g, conv.weight.grad, atol=1e-10)
    assert torch.allclose(dec.stage2.bias.grad, conv.bias.grad, atol=1e-10)


def test_fresh_decomposed_conv_has_conv_like_scale():
    torch.manual_seed(0)
    dec, conv = DecomposedConv(32, 32, 3), Conv(32, 32, 3)
    ratio = dec.stage1.weight.std() / conv.stage1.weight.std()
    assert 0.8 < ratio < 1.25


def test_fused_conv_matches_nn_conv():
    op = Conv(6, 8, 5, stride=2, bias=True).double()
    x = rand(2, 6, 11, 7)
    ref = nn.functional.conv2d(x, op.stage1.weight, op.stage1.bias, stride=2, padding=2)
    assert torch.equal(op(x), ref)


# ----------------------------------------------------------------------------- shift implementations


@pytest.mark.parametrize("k,stride,copies", [(3, 1, 4), (3, 2, 2), (5, 1, 1), (1, 2, 3), (7, 2, 2)])
def test_tensor_shift_equals_fixed_group_conv_float32(k, stride, copies):
    x = rand(3, 6 * k * k, 12, 9, dtype=torch.float32, seed=k)
    t = ShiftAggregation(6, k, copies, stride, shift="tensor")(x)
    f = ShiftAggregation(6, k, copies, stride, shift="fixed")(x)
    assert t.shape == (3, 6 * copies, (12 - 1) // stride + 1, (9 - 1) // stride + 1)
    assert (t - f).abs().max().item() <= 1e-6


@pytest.mark.parametrize("shift", ["learnable", "multigroup"])
@pytest.mark.parametrize("stride", [1, 2])
def test_learnable_shifts_equal_tensor_shift_at_init(shift, stride):
    x = rand(2, 4 * 9, 10, 11, dtype=torch.float32)
    t = ShiftAggregation(4, 3, 3, stride, shift="tensor")(x)
    y = ShiftAggregation(4, 3, 3, stride, shift=shift)(x)
    assert (t - y).abs().max().item() <= 1e-6


def test_shift_semantics_one_map():
    """Offset j reads the input at (j // k - k//2, j % k - k//2), zero outside."""
    k = 3
    x = torch.zeros(1, 9, 5, 5, dtype=f64)
    x[0, 0, 2, 2] = 1.0  # j = 0: offset (-1, -1)
    y = ShiftAggregation(1, k, 1, 1, shift="tensor")(x)
    assert y[0, 0, 3, 3] == 1.0 and y.sum() == 1.0


@pytest.mark.parametrize("shift", SHIFT_IMPLS)
@pytest.mark.parametrize("stride,H,W,B", [(1, 7, 7, 1), (2, 7, 6, 2), (2, 8, 5, 1)])
def test_shift_fast_equals_reference(shift, stride, H, W, B):
    op = randomize_(ShiftAggregation(3, 3, 2, stride, shift=shift).double(), seed=stride)
    x = rand(B, 27, H, W, requires_grad=True)
    fast = op(x)
    set_stage2_impl(op, "reference")
    ref = op(x)
    assert torch.allclose(fast, ref, atol=1e-12)
    gf = torch.autograd.grad(fast.sin().sum(), [x] + list(op.parameters()))
    gr = torch.autograd.grad(ref.sin().sum(), [x] + list(op.parameters()))
    for a, b in zip(gf, gr):
        assert torch.allclose(a, b, atol=1e-12)


@pytest.mark.parametrize("k,stride", [(1, 1), (5, 1), (5, 2), (3, 3)])
def test_tensor_shift_adjoint_backward_equals_reference(k, stride):
    """tensor_shift_sum's hand-written backward (dout written into one padded buffer) against autograd
    through the reference's per-offset shifts."""
    x = rand(2, 2 * k * k, 7, 6, requires_grad=True)
    fast = tensor_shift_sum(x, k, stride)
    ref = shift_aggregate_reference(x, k, 1, stride)
    assert torch.allclose(fast, ref, atol=1e-12)
    g = torch.randn_like(fast)
    assert torch.allclose(torch.autograd.grad(fast, x, g)[0], torch.autograd.grad(ref, x, g)[0], atol=1e-12)
    assert gradcheck(lambda t: tensor_shift_sum(t, k, stride), (x,), eps=1e-6, atol=1e-5)
    # the plain twin that traces and FLOP counters see computes the same sum
    assert torch.allclose(_tensor_shift_sum_traced(x, k, stride), fast, atol=1e-12)


@pytest.mark.parametrize("shift", SHIFT_IMPLS)
@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_shift_gradcheck(shift, impl):
    op = randomize_(ShiftAggregation(2, 3, 2, 2, shift=shift, impl=impl).double())
    x = rand(1, 18, 5, 4, requires_grad=True)
    params = [p for p in op.parameters()]
    fn = lambda x, *ps: op(x)  # noqa: E731 - parameters enter through the module
    assert gradcheck(fn, (x, *params), eps=1e-6, atol=1e-5)


def test_shift_reference_literal_definition():
    """shift_aggregate_reference against a per-pixel loop over the definition."""
    k, s = 3, 2
    x = rand(1, 2 * 9, 5, 6)
    w = rand(2 * 2, 9, 3, 3, seed=3)
    out = shift_aggregate_reference(x, k, 2, s, w)
    Ho, Wo = 3, 3
    exp = torch.zeros(1, 4, Ho, Wo, dtype=f64)
    for o in range(4):
        i = o // 2
        for p in range(Ho):
            for q in range(Wo):
                acc = 0.0
                for j in range(9):
                    for a in range(3):
                        for b in range(3):
                            yy, xx = s * p + a - 1, s * q + b - 1
                            if 0 <= yy < 5 and 0 <= xx < 6:
                                acc += w[o, j, a, b] * x[0, i * 9 + j, yy, xx]
                exp[0, o, p, q] = acc
    assert torch.allclose(out, exp, atol=1e-12)


# ----------------------------------------------------------------------------- local attention


LOCAL_CASES = [  # (B, C, heads, H, W, k_a, stride, dilation)
    (1, 8, 2, 7, 7, 3, 1, 1),
    (2, 8, 2, 9, 6, 5, 2, 1),
    (2, 12, 3, 7, 8, 3, 2, 1),
    (1, 8, 4, 10, 9, 3, 1, 2),
    (2, 8, 2, 11, 11, 7, 2, 1),
]


def _local_inputs(B, C, heads, H, W, seed=0):
    d = C // heads
    q, k, v = (rand(B, C, H, W, seed=seed + i, requires_grad=True) for i in range(3))
    pw = rand(d, 2, 1, 1, seed=seed + 7, requires_grad=True)
    pb = rand(d, seed=seed + 8, requires_grad=True)
    return q, k, v, pw, pb


@pytest.mark.parametrize("B,C,heads,H,W,ka,stride,dil", LOCAL_CASES)
def test_local_attention_fast_equals_reference(B, C, heads, H, W, ka, stride, dil):
    inputs = _local_inputs(B, C, heads, H, W)
    args = (heads, ka, stride, dil)
    fast = local_attention_fast(*inputs, *args)
    ref = local_attention_reference(*inputs, *args)
    assert fast.shape == (B, C, (H - 1) // stride + 1, (W - 1) // stride + 1)
    assert torch.allclose(fast, ref, atol=1e-12)
    w = rand(*fast.shape, seed=99)
    gf = torch.autograd.grad((fast * w).sum(), inputs, allow_unused=True, materialize_grads=True)
    gr = torch.autograd.grad((ref * w).sum(), inputs)
    for name, a, b in zip("q k v pe_w pe_b".split(), gf, gr):
        assert torch.allclose(a, b, atol=1e-10), name
    # docs/operators.md: the positional conv's bias cancels in the softmax, so its gradient is zero
    assert gf[4].abs().max().item() < 1e-12
    assert gr[4].abs().max().item() < 1e-10


@pytest.mark.parametrize("fn", [local_attention_fast, local_attention_reference])
@pytest.mark.parametrize("stride,dil", [(1, 1), (2, 1), (1, 2)])
def test_local_attention_gradcheck(fn, stride, dil):
    inputs = _local_inputs(1, 4, 2, 5, 6, seed=stride + dil)
    # pe_bias cancels in the softmax: the fast path does not use it at all (zero gradient)
    inputs = inputs[:4] if fn is local_attention_fast else inputs
    f = (lambda *t: fn(*t, None, 2, 3, stride, dil)) if fn is local_attention_fast else (lambda *t: fn(*t, 2, 3, stride, dil))
    assert gradcheck(f, inputs, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("s,dil", [(2, 1), (1, 2)])
def test_local_attention_against_per_pixel_loop(s, dil):
    """The reference against explicit loops over the docs/operators.md formula with reflection indices
    (dilation: window offsets spaced by `dil`, padding dil * (k_a - 1) / 2)."""
    B, C, N, H, W, ka = 1, 4, 2, 5, 4, 3
    d, pad = C // N, dil * (ka // 2)
    q, k, v, pw, pb = (t.detach() for t in _local_inputs(B, C, N, H, W, seed=5))
    out = local_attention_reference(q, k, v, pw, pb, N, ka, s, dil)

    def refl(i, n):
        return -i if i < 0 else (2 * (n - 1) - i if i >= n else i)

    gx = torch.linspace(-1, 1, W, dtype=f64)
    gy = torch.linspace(-1, 1, H, dtype=f64)
    pe = lambda c, y, x: pw[c, 0, 0, 0] * gx[x] + pw[c, 1, 0, 0] * gy[y] + pb[c]  # noqa: E731
    for n in range(N):
        for oy in range(0, H, s):
            for ox in range(0, W, s):
                logits, vals = [], []
                for a in range(ka):
                    for b in range(ka):
                        yy, xx = refl(oy + a * dil - pad, H), refl(ox + b * dil - pad, W)
                        lg = sum(d ** -0.5 * q[0, n * d + c, oy, ox] * (k[0, n * d + c, yy, xx] + pe(c, oy, ox) - pe(c, yy, xx))
                                 for c in range(d))
                        logits.append(lg)
                        vals.append(v[0, n * d:(n + 1) * d, yy, xx])
                wts = torch.stack(logits).softmax(0)
                exp = sum(wi * vi for wi, vi in zip(wts, vals))
                assert torch.allclose(out[0, n * d:(n + 1) * d, oy // s, ox // s], exp, atol=1e-12)


# ----------------------------------------------------------------------------- window attention


WINDOW_CASES = [  # (B, H, W, C, heads, M, shift)
    (1, 4, 4, 8, 2, 2, 0),
    (2, 6, 9, 6, 3, 3, 1),
    (1, 8, 4, 8, 2, 4, 2),
    (2, 8, 8, 8, 4, 4, 0),
]


def _window_inputs(B, H, W, C, heads, M, seed=0):
    qkv = rand(B, H, W, 3 * C, seed=seed, requires_grad=True)
    table = rand((2 * M - 1) ** 2, heads, seed=seed + 1, requires_grad=True)
    return qkv, table


@pytest.mark.parametrize("B,H,W,C,heads,M,shift", WINDOW_CASES)
def test_window_attention_fast_equals_reference(B, H, W, C, heads, M, shift):
    qkv, table = _window_inputs(B, H, W, C, heads, M)
    idx, scale = relative_position_index(M), (C // heads) ** -0.5
    mask = shifted_window_mask(H, W, M, shift, f64)
    fast = window_attention_fast(qkv, heads, M, table, idx, scale, mask)
    ref = window_attention_reference(qkv, heads, M, table, idx, scale, shift=shift)
    assert torch.allclose(fast, ref, atol=1e-12)
    w = rand(*fast.shape, seed=3)
    for a, b in zip(torch.autograd.grad((fast * w).sum(), (qkv, table)),
                    torch.autograd.grad((ref * w).sum(), (qkv, table))):
        assert torch.allclose(a, b, atol=1e-10)


def test_window_reference_uses_a_given_mask_like_the_release():
    B, H, W, C, heads, M = 1, 4, 4, 4, 2, 2
    qkv, table = _window_inputs(B, H, W, C, heads, M)
    idx, scale = relative_position_index(M), (C // heads) ** -0.5
    mask = shifted_window_mask(H, W, M, 1, f64)
    fast = window_attention_fast(qkv, heads, M, table, idx, scale, mask)
    ref = window_attention_reference(qkv, heads, M, table, idx, scale, mask=mask)
    assert torch.allclose(fast, ref, atol=1e-12)


@pytest.mark.parametrize("fn", [window_attention_fast, window_attention_reference])
@pytest.mark.parametrize("shift", [0, 1])
def test_window_attention_gradcheck(fn, shift):
    B, H, W, C, heads, M = 1, 4, 4, 4, 2, 2
    qkv, table = _window_inputs(B, H, W, C, heads, M, seed=shift)
    idx, scale = relative_position_index(M), 0.7
    if fn is window_attention_fast:
        mask = shifted_window_mask(H, W, M, shift, f64)
        f = lambda a, b: fn(a, heads, M, b, idx, scale, mask)  # noqa: E731
    else:
        f = lambda a, b: fn(a, heads, M, b, idx, scale, shift=shift)  # noqa: E731
    assert gradcheck(f, (qkv, table), eps=1e-6, atol=1e-5)


# ----------------------------------------------------------------------------- ACmix conv path


@pytest.mark.parametrize("shift", SHIFT_IMPLS)
@pytest.mark.parametrize("stride,fc_bias,k", [(1, False, 3), (2, False, 3), (1, True, 3), (2, False, 5)])
def test_conv_path_fast_equals_reference(shift, stride, fc_bias, k):
    path = randomize_(ConvPath(2, 3, k, stride, fc_bias=fc_bias, shift=shift).double(), seed=k)
    f_all = rand(2, 6, 3, 7, 6, requires_grad=True)
    fast = path(f_all)
    set_stage2_impl(path, "reference")
    ref = path(f_all)
    assert torch.allclose(fast, ref, atol=1e-12)
    params = [f_all] + list(path.parameters())
    for a, b in zip(torch.autograd.grad(fast.cos().sum(), params), torch.autograd.grad(ref.cos().sum(), params)):
        assert torch.allclose(a, b, atol=1e-10)


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_conv_path_gradcheck(impl):
    path = randomize_(ConvPath(2, 2, 3, 2, fc_bias=True, shift="multigroup", impl=impl).double())
    path.shift.impl = impl
    f_all = rand(1, 6, 2, 5, 4, requires_grad=True)
    params = list(path.parameters())
    assert gradcheck(lambda x, *p: path(x), (f_all, *params), eps=1e-6, atol=1e-5)


# ----------------------------------------------------------------------------- whole operators


def _map_ops():
    yield "acmix", lambda: ACmix(8, 8, kernel_att=3, head=2, stride=2)
    yield "acmix-k5-fixed", lambda: ACmix(6, 8, kernel_att=5, head=2, kernel_conv=5, shift="fixed")
    yield "acmix-tensor-half", lambda: ACmix(8, 8, kernel_att=3, head=4, shift="tensor", mixing="half")
    yield "acmix-dilated", lambda: ACmix(8, 8, kernel_att=3, head=2, dilation=2)
    yield "sa", lambda: LocalSelfAttention(8, 12, kernel_att=3, head=3, stride=2)
    yield "decomposed", lambda: DecomposedConv(8, 6, 3, stride=2, bias=True, shift="learnable")


@pytest.mark.parametrize("name,make", list(_map_ops()))
@pytest.mark.parametrize("B,H,W", [(1, 7, 7), (2, 9, 6)])
def test_operator_fast_equals_reference(name, make, B, H, W):
    torch.manual_seed(0)
    op = randomize_(make().double())
    x = rand(B, op.stage1.qkv.in_channels if hasattr(op.stage1, "qkv") else op.stage1.in_channels, H, W,
             requires_grad=True)
    fast = op(x)
    gf = torch.autograd.grad(fast.sum(), [x] + list(op.parameters()), allow_unused=True)
    set_stage2_impl(op, "reference")
    ref = op(x)
    gr = torch.autograd.grad(ref.sum(), [x] + list(op.parameters()), allow_unused=True)
    assert torch.allclose(fast, ref, atol=1e-11)
    for a, b in zip(gf, gr):
        # a parameter one path does not use has no gradient there: the other path's must then be zero
        if a is None or b is None:
            assert a is not None or b is not None
            assert (a if a is not None else b).abs().max() < 1e-10
            continue
        assert torch.allclose(a, b, atol=1e-9)


@pytest.mark.parametrize("cls", [WindowSelfAttention, WindowACmix])
@pytest.mark.parametrize("shift_size,H,W", [(0, 4, 8), (2, 8, 8), (1, 4, 4)])
def test_window_operator_fast_equals_reference(cls, shift_size, H, W):
    torch.manual_seed(1)
    op = randomize_(cls(8, 4 if H % 4 == 0 and W % 4 == 0 and shift_size != 1 else 2, 2, shift_size=shift_size).double())
    x = rand(2, H, W, 8, requires_grad=True)
    fast = op(x)
    gf = torch.autograd.grad(fast.sum(), [x] + list(op.parameters()))
    set_stage2_impl(op, "reference")
    ref = op(x)
    gr = torch.autograd.grad(ref.sum(), [x] + list(op.parameters()))
    assert torch.allclose(fast, ref, atol=1e-11)
    for a, b in zip(gf, gr):
        assert torch.allclose(a, b, atol=1e-9)


def test_window_operator_accepts_flat_tokens():
    op = WindowACmix(8, 2, 2, shift_size=1)
    x = torch.randn(2, 4, 6, 8)
    y = op(x)
    y_flat = op(x.reshape(2, 24, 8), 4, 6)
    assert y_flat.shape == (2, 24, 8)
    assert torch.allclose(y.reshape(2, 24, 8), y_flat)


def test_acmix_resnet_parameter_count_matches_spec():
    """docs/operators.md section 4: 17,822 parameters at C_in = C_out = 64, N = 4, k = 3, k_a = 7."""
    op = ACmix(64, 64, kernel_att=7, head=4, kernel_conv=3)
    assert sum(p.numel() for p in op.parameters()) == 17822


@pytest.mark.parametrize("make", [lambda: Conv(4, 4), lambda: DecomposedConv(4, 4), lambda: LocalSelfAttention(4, 4, 3, 2),
                                  lambda: ACmix(4, 4, 3, 2), lambda: WindowSelfAttention(4, 2, 2),
                                  lambda: WindowACmix(4, 2, 2)])
def test_every_operator_has_named_stages(make):
    op = make()
    names = dict(op.named_children())
    assert "stage1" in names and "stage2" in names
    # no parameter lives outside stage1, stage2 and the (Swin) output projection
    for n, _ in op.named_parameters():
        assert n.split(".")[0] in ("stage1", "stage2", "proj"), n


def test_acmix_paths_live_under_stage2():
    op = ACmix(8, 8, 3, 2)
    names = {n for n, _ in op.named_modules()}
    assert {"stage2.attention", "stage2.conv", "stage2.conv.fc", "stage2.conv.shift", "stage2.attention.pe"} <= names


# ----------------------------------------------------------------------------- mixing


def test_mixing_modes_build_only_used_paths():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 7, 7)
    full = ACmix(8, 8, 3, 2, mixing="learnable")
    assert full.stage2.alpha.requires_grad and full.stage2.alpha.item() == 0.5
    parts = {}
    for mode in ("att", "conv", "half"):
        op = ACmix(8, 8, 3, 2, mixing=mode)
        op.load_state_dict(full.state_dict(), strict=False)
        parts[mode] = op(x)
    att_only = full.stage2.attention(full.stage1(x))
    assert not hasattr(ACmix(8, 8, 3, 2, mixing="att").stage2, "conv")
    assert not hasattr(ACmix(8, 8, 3, 2, mixing="conv").stage2, "attention")
    assert torch.allclose(parts["att"], att_only)
    assert torch.allclose(parts["half"], 0.5 * parts["att"] + 0.5 * parts["conv"], atol=1e-6)
    assert torch.allclose(full(x), parts["half"], atol=1e-6)  # learnable starts at (0.5, 0.5)


def test_mixing_aliases():
    assert ACmix(8, 8, 3, 2, mixing=(1, 0)).stage2.mixing == "att"
    assert ACmix(8, 8, 3, 2, mixing="0,1").stage2.mixing == "conv"
    assert ACmix(8, 8, 3, 2, mixing=[0.5, 0.5]).stage2.mixing == "half"
    with pytest.raises(ValueError, match="allowed: learnable, half, att, conv"):
        ACmix(8, 8, 3, 2, mixing=(0.3, 0.7))


# LeapLabTHU/ACmix, Swin-Transformer/models/swin_transformer_acmix.py: reset_parameters() calls its helper
# `ones` on rate1 and rate2, and that helper fills 0.5
RELEASE_SWIN_RATE_INIT = 0.5


def test_swin_acmix_mixing_init_and_conv_only():
    op = WindowACmix(8, 2, 2)
    assert op.stage2.alpha.item() == RELEASE_SWIN_RATE_INIT and op.stage2.beta.item() == RELEASE_SWIN_RATE_INIT
    assert WindowACmix(8, 2, 2, mix_init=1.0).stage2.alpha.item() == 1.0  # still settable
    # the whole backbone keeps it (no model-wide init overwrites the rates)
    from modules import create_model

    m = create_model("swin_micro-acmix", num_classes=10)
    rows = mixing_weights(m)
    assert rows and all(r["alpha"] == RELEASE_SWIN_RATE_INIT == r["beta"] for r in rows)
    conv_only = WindowACmix(8, 2, 2, mixing="conv")
    assert not hasattr(conv_only, "proj") and not hasattr(conv_only.stage2, "attention")
    x = torch.randn(1, 4, 4, 8)
    y = conv_only(x)
    y.sum().backward()
    assert all(p.grad is not None for p in conv_only.parameters())


# ----------------------------------------------------------------------------- dtypes and devices


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_operators_run_in_float32_and_float64(dtype):
    for op, x in ((ACmix(8, 8, 3, 2, stride=2), torch.randn(2, 8, 9, 7)),
                  (LocalSelfAttention(8, 8, 3, 2), torch.randn(2, 8, 6, 6)),
                  (WindowACmix(8, 2, 2, shift_size=1), torch.randn(2, 4, 4, 8))):
        op = op.to(dtype)
        y = op(x.to(dtype))
        assert y.dtype == dtype and torch.isfinite(y).all()


def test_cpu_autocast_bfloat16_runs():
    op = ACmix(8, 8, 3, 2)
    w = WindowACmix(8, 2, 2, shift_size=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = op(torch.randn(2, 8, 8, 8))
        z = w(torch.randn(2, 4, 4, 8))
    assert torch.isfinite(y.float()).all() and torch.isfinite(z.float()).all()
    (y.float().sum() + z.float().sum()).backward()


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


@cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_autocast(dtype):
    op = ACmix(16, 16, 7, 4, stride=2).cuda()
    w = WindowACmix(16, 4, 2, shift_size=2).cuda()
    with torch.autocast("cuda", dtype=dtype):
        y = op(torch.randn(2, 16, 14, 14, device="cuda"))
        z = w(torch.randn(2, 8, 8, 16, device="cuda"))
    (y.float().sum() + z.float().sum()).backward()
    assert torch.isfinite(y.float()).all() and torch.isfinite(z.float()).all()


@cuda
def test_cuda_matches_cpu_float64():
    for make, x in ((lambda: ACmix(8, 8, 3, 2, stride=2), rand(2, 8, 9, 7)),
                    (lambda: WindowACmix(8, 2, 2, shift_size=1), rand(2, 4, 6, 8))):
        op = randomize_(make().double())
        cpu = op(x)
        gpu = op.cuda()(x.cuda())
        assert torch.allclose(cpu, gpu.cpu(), atol=1e-10)


@pytest.mark.parametrize("heads,stride,fused", [(4, 1, True), (2, 1, True), (8, 1, False), (6, 2, True), (8, 2, False)])
def test_conv_path_fuses_only_where_it_costs_no_more(heads, stride, fused):
    path = randomize_(ConvPath(heads, 2, 3, stride, fc_bias=False, shift="multigroup").double())
    assert path.fuses(8, 8) is fused
    f_all = rand(1, 3 * heads, 2, 8, 8)
    fast = path(f_all)
    set_stage2_impl(path, "reference")
    assert torch.allclose(fast, path(f_all), atol=1e-12)
    assert not path.fuses(8, 8)  # the reference never fuses
