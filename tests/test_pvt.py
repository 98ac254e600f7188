"""PVT v1 and PVT-ACmix: reference parameter counts, fast == reference (values, gradients, float64),
the conv path's k/v choice, shapes and errors, per-stage counts (formula == fvcore), small stems, match."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.flops import count_model
from modules import create_model, set_stage2_impl
from modules.backbones.pvt import clamp_sr_ratio
from modules.pvt_attention import SpatialReductionAttention, SRACmix, sra_fast, sra_reference
from modules.shift import SHIFT_IMPLS

ALL_ON = "bias=on,softmax=on,activations=on,norms=on,shift_adds=on"


def _reference_pvt_params(depths, num_classes=1000):
    """Parameter count of the reference PVT v1 classifier (whai362/PVT classification/pvt.py), layer by
    layer as that code builds it: per stage a patch-embed conv (with bias) + LayerNorm and a position
    embedding (the last stage one more, for the class token); per block norm1, q (C -> C), kv (C -> 2C)
    and proj (C -> C), all with bias, the R x R sr conv (with bias) + LayerNorm where R > 1, norm2 and
    the MLP C -> rC -> C; then the final norm, the class token and the head."""
    dims, mlp, R = (64, 128, 320, 512), (8, 8, 4, 4), (8, 4, 2, 1)
    tokens, c_in, patch = (56 * 56, 28 * 28, 14 * 14, 7 * 7 + 1), (3, 64, 128, 320), (4, 2, 2, 2)
    n = 0
    for i, C in enumerate(dims):
        n += c_in[i] * C * patch[i] ** 2 + C + 2 * C + tokens[i] * C
        block = 2 * C + (C * C + C) + (2 * C * C + 2 * C) + (C * C + C) + 2 * C
        block += (C * C * R[i] ** 2 + C + 2 * C) if R[i] > 1 else 0
        block += C * mlp[i] * C + mlp[i] * C + mlp[i] * C * C + C
        n += depths[i] * block
    return n + 2 * 512 + 512 + 512 * num_classes + num_classes


def test_reference_parameter_counts():
    # 13,229,288 and 24,485,864: the published 13.2M and 24.5M
    assert _reference_pvt_params((2, 2, 2, 2)) == 13_229_288
    assert _reference_pvt_params((3, 4, 6, 3)) == 24_485_864
    for name, depths in (("pvt_t-sa", (2, 2, 2, 2)), ("pvt_s-sa", (3, 4, 6, 3))):
        with torch.device("meta"):  # shapes only
            m = create_model(name)
        assert sum(p.numel() for p in m.parameters()) == _reference_pvt_params(depths), name
        assert m.stage_maps == [56, 28, 14, 7] and m.sr_ratios == [8, 4, 2, 1]


def test_acmix_adds_only_the_conv_path_parameters():
    # per block: light FC 3N -> 9 with bias (27 N + 9), multigroup kernels C * 81, alpha and beta
    heads, dims = (1, 2, 5, 8), (64, 128, 320, 512)
    for bb, depths in (("pvt_t", (2, 2, 2, 2)), ("pvt_s", (3, 4, 6, 3))):
        extra = sum(D * (27 * N + 9 + 81 * C + 2) for D, N, C in zip(depths, heads, dims))
        with torch.device("meta"):
            sa = sum(p.numel() for p in create_model(f"{bb}-sa").parameters())
            ac = sum(p.numel() for p in create_model(f"{bb}-acmix").parameters())
        assert ac - sa == extra


def _literal_sra(op: SpatialReductionAttention, x, H, W):
    """PVT's attention written from its definition with plain layers (the class token, if any, in front)."""
    s1, att = op.stage1, op.stage2.attention
    B, L, C = x.shape
    N, d = op.num_heads, C // op.num_heads
    q = F.linear(x, s1.q.weight, s1.q.bias)
    if op.sr_ratio > 1:
        m = x.transpose(1, 2).reshape(B, C, H, W)
        r = F.conv2d(m, att.sr.weight, att.sr.bias, stride=op.sr_ratio).flatten(2).transpose(1, 2)
        r = F.layer_norm(r, (C,), att.norm.weight, att.norm.bias, att.norm.eps)
    else:
        r = x
    k, v = F.linear(r, s1.kv.weight, s1.kv.bias).split(C, dim=-1)
    outs = []
    for n in range(N):
        sl = slice(n * d, (n + 1) * d)
        w = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / d ** 0.5, dim=-1)
        outs.append(w @ v[..., sl])
    return F.linear(torch.cat(outs, -1), op.proj.weight, op.proj.bias)


def _randomise(m: nn.Module, scale=0.1):
    with torch.no_grad():
        for p in m.parameters():
            p.add_(scale * torch.randn_like(p))
    return m


@pytest.mark.parametrize("C,N,R,H,W,cls", [(8, 2, 2, 4, 6, False), (6, 3, 3, 6, 3, False), (8, 1, 1, 3, 5, True),
                                             (4, 2, 1, 2, 2, False)])
def test_sra_equals_literal_definition_and_fast_equals_reference(C, N, R, H, W, cls):
    torch.manual_seed(0)
    op = _randomise(SpatialReductionAttention(C, N, R, cls_token=cls)).double()
    x = torch.randn(2, H * W + int(cls), C, dtype=torch.float64, requires_grad=True)
    fast = op(x, H, W)
    g_fast = torch.autograd.grad(fast.square().sum(), [x, *op.parameters()])
    assert torch.allclose(fast, _literal_sra(op, x, H, W), atol=1e-12, rtol=0)
    set_stage2_impl(op, "reference")
    ref = op(x, H, W)
    g_ref = torch.autograd.grad(ref.square().sum(), [x, *op.parameters()])
    assert torch.allclose(fast, ref, atol=1e-12, rtol=0)
    for a, b in zip(g_fast, g_ref):
        assert torch.allclose(a, b, atol=1e-11, rtol=0)


def test_sra_kernels_gradcheck():
    torch.manual_seed(0)
    q = torch.randn(1, 5, 4, dtype=torch.float64, requires_grad=True)
    kv = torch.randn(1, 3, 8, dtype=torch.float64, requires_grad=True)
    for fn in (sra_fast, sra_reference):
        assert torch.autograd.gradcheck(lambda a, b: fn(a, b, 2, 0.5), (q, kv))
    assert torch.allclose(sra_fast(q, kv, 2, 0.5), sra_reference(q, kv, 2, 0.5), atol=1e-13, rtol=0)


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_operator_gradcheck(impl):
    torch.manual_seed(0)
    op = _randomise(SRACmix(4, 2, 2, shift="learnable")).double()
    set_stage2_impl(op, impl)
    x = torch.randn(1, 8, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: op(t, 2, 4), (x,))


@pytest.mark.parametrize("shift", SHIFT_IMPLS)
@pytest.mark.parametrize("R,cls,conv_kv,mixing", [(2, False, "upsample", "learnable"), (2, False, "full", "half"),
                                                  (1, True, "upsample", "learnable"), (3, False, "upsample", "att")])
def test_sracmix_fast_equals_reference_float64(shift, R, cls, conv_kv, mixing):
    torch.manual_seed(0)
    H, W = (6, 6) if R == 3 else (4, 6)
    op = _randomise(SRACmix(8, 2, R, cls_token=cls, shift=shift, conv_kv=conv_kv, mixing=mixing)).double()
    x = torch.randn(2, H * W + int(cls), 8, dtype=torch.float64, requires_grad=True)
    params = [p for p in op.parameters() if p.requires_grad]
    fast = op(x, H, W)
    g_fast = torch.autograd.grad(fast.square().sum(), [x, *params])
    set_stage2_impl(op, "reference")
    ref = op(x, H, W)
    g_ref = torch.autograd.grad(ref.square().sum(), [x, *params])
    assert torch.allclose(fast, ref, atol=1e-11, rtol=0)
    for a, b in zip(g_fast, g_ref):
        assert torch.allclose(a, b, atol=1e-10, rtol=0)


@pytest.mark.parametrize("conv_kv", ["upsample", "full"])
def test_conv_path_reads_the_documented_keys_and_values(conv_kv):
    """G = alpha * SRA + beta * ConvPath(q, k, v): k, v the reduced ones repeated over R x R cells
    ("upsample") or the kv projection of the full map ("full"); the class token gets no conv term."""
    torch.manual_seed(0)
    C, N, R, H, W = 6, 3, 2, 4, 6
    op = _randomise(SRACmix(C, N, R, conv_kv=conv_kv)).double()
    sa = SpatialReductionAttention(C, N, R).double()
    sa.load_state_dict({k: v for k, v in op.state_dict().items() if not k.startswith("stage2.conv")}, strict=False)
    x = torch.randn(2, H * W, C, dtype=torch.float64)
    s1, att = op.stage1, op.stage2.attention
    q = s1.q(x).reshape(2, H, W, C)
    if conv_kv == "full":
        kv = s1.kv(x).reshape(2, H, W, 2 * C)
    else:
        small = s1.kv(att.reduce(x, H, W)).reshape(2, H // R, W // R, 2 * C)
        kv = small.repeat_interleave(R, dim=1).repeat_interleave(R, dim=2)
    maps = torch.cat([q, kv], -1).permute(0, 3, 1, 2)  # (B, 3C, H, W): [q | k | v], head n at n*d
    f_all = maps.reshape(2, 3 * N, C // N, H, W)
    conv = op.stage2.conv(f_all).flatten(2).transpose(1, 2)
    with torch.no_grad():
        op.stage2.alpha.fill_(0.3)
        op.stage2.beta.fill_(-0.7)
    want = 0.3 * sa(x, H, W) - 0.7 * conv
    assert torch.allclose(op(x, H, W), want, atol=1e-12, rtol=0)
    # with a class token (R = 1) its row is alpha * attention only
    op1 = _randomise(SRACmix(C, N, 1, cls_token=True)).double()
    sa1 = SpatialReductionAttention(C, N, 1, cls_token=True).double()
    sa1.load_state_dict({k: v for k, v in op1.state_dict().items() if not k.startswith("stage2.conv")}, strict=False)
    x1 = torch.randn(1, H * W + 1, C, dtype=torch.float64)
    assert torch.allclose(op1(x1, H, W)[:, 0], op1.stage2.alpha * sa1(x1, H, W)[:, 0], atol=1e-12, rtol=0)


def test_stage_children_and_paths():
    names = dict(SRACmix(8, 2, 2).named_modules())
    for path in ("stage1", "stage1.q", "stage1.kv", "stage2", "stage2.attention", "stage2.attention.sr",
                 "stage2.attention.norm", "stage2.conv", "stage2.conv.fc", "stage2.conv.shift", "proj"):
        assert path in names, path
    att_only = dict(SRACmix(8, 2, 1, mixing="att").named_modules())
    assert "stage2.conv" not in att_only and "stage2.attention.sr" not in att_only
    m = create_model("pvt_t-acmix", stem="small", img_size=16)
    mods = dict(m.named_modules())
    assert "stages.0.blocks.1.attn.stage2.conv" in mods and "stages.3.blocks.0.attn.stage1" in mods
    assert isinstance(mods["stages.3.blocks.0.attn"], SRACmix) and mods["stages.3.blocks.0.attn"].cls_token


def test_bad_shapes_and_arguments():
    op = SRACmix(8, 2, 2)
    x = torch.randn(1, 24, 8)
    with pytest.raises(ValueError, match=r"expected L = H\*W = 20 tokens for H=4, W=5"):
        op(x, 4, 5)
    with pytest.raises(ValueError, match="sr_ratio=2 must divide the 3x8 token map"):
        op(x, 3, 8)
    with pytest.raises(ValueError, match=r"expected tokens \(B, L, C\)"):
        op(torch.randn(1, 4, 6, 8), 4, 6)
    with pytest.raises(ValueError, match="expected 8 channels"):
        op(torch.randn(1, 24, 6), 4, 6)
    with pytest.raises(ValueError, match="give the token map's H and W"):
        op(x, None, None)
    with pytest.raises(ValueError, match="class token needs sr_ratio=1"):
        SpatialReductionAttention(8, 2, 2, cls_token=True)
    with pytest.raises(ValueError, match="divisible by num_heads"):
        SRACmix(10, 4)
    with pytest.raises(ValueError, match="mixing 'conv' is not available"):
        SRACmix(8, 2, mixing="conv")
    with pytest.raises(ValueError, match="unknown conv_kv"):
        SRACmix(8, 2, conv_kv="bilinear")
    with pytest.raises(ValueError, match="unknown shift implementation"):
        SRACmix(8, 2, shift="roll")
    with pytest.raises(ValueError, match="img_size=30 is not a multiple of patch_size=4"):
        create_model("pvt_t-sa", img_size=30)
    with pytest.raises(ValueError, match="stage 4 would have an empty token map"):
        create_model("pvt_t-sa", stem="small", img_size=8)
    with pytest.raises(ValueError, match=r"stage 3 dim=32 must be divisible by heads\[2\]=5"):
        create_model("pvt_t-sa", widths=[64, 128, 32, 512])
    with pytest.raises(ValueError, match="unknown override"):
        create_model("pvt_t-sa", window_size=7)
    with pytest.raises(ValueError, match=r"built for input \(B, 1, 16, 16\)"):
        create_model("pvt_t-sa", stem="small", img_size=16, in_chans=1)(torch.randn(1, 1, 32, 32))


def test_sr_ratio_clamp():
    assert [clamp_sr_ratio(8, s) for s in (56, 16, 8, 4, 14, 7, 1)] == [8, 8, 8, 4, 7, 7, 1]
    assert clamp_sr_ratio(4, 7) == 1 and clamp_sr_ratio(2, 3) == 1
    m = create_model("pvt_s-acmix", stem="small", in_chans=1, img_size=28, num_classes=10)
    assert m.stage_maps == [14, 7, 3, 1] and m.sr_ratios == [7, 1, 1, 1]


@pytest.mark.parametrize("name,size", [("pvt_t-sa", 16), ("pvt_t-acmix", 16), ("pvt_s-acmix", 32),
                                       ("pvt_t-acmix", 28)])
def test_small_stem_fashion_mnist_shapes(name, size):
    torch.manual_seed(0)
    m = create_model(name, stem="small", in_chans=1, img_size=size, num_classes=10)
    out = m(torch.randn(2, 1, size, size))
    assert out.shape == (2, 10)
    out.sum().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None]
    assert not missing  # DDP needs no unused parameters


@pytest.mark.parametrize("name", ["pvt_t-sa", "pvt_t-acmix"])
def test_whole_network_fast_equals_reference_float64(name):
    torch.manual_seed(0)
    m = create_model(name, stem="small", in_chans=1, img_size=16, num_classes=5, widths=[8, 8, 16, 16],
                     heads=[2, 2, 4, 4]).double().eval()
    _randomise(m, 0.05)
    x = torch.randn(2, 1, 16, 16, dtype=torch.float64, requires_grad=True)
    fast = m(x)
    g_fast, = torch.autograd.grad(fast.sum(), x)
    set_stage2_impl(m, "reference")
    ref = m(x)
    g_ref, = torch.autograd.grad(ref.sum(), x)
    assert torch.allclose(fast, ref, atol=1e-10, rtol=0)
    assert torch.allclose(g_fast, g_ref, atol=1e-10, rtol=0)


# ----------------------------------------------------------------------------- counting


class _OnMap(nn.Module):
    """A token operator run on a fixed H x W map (count_model feeds one tensor)."""

    def __init__(self, op, H, W):
        super().__init__()
        self.op, self.H, self.W = op, H, W

    def forward(self, x):
        return self.op(x, self.H, self.W)


def _agree(res):
    f, v = res.stages("formula"), res.stages("fvcore")
    assert f == v, f"formula {f} != fvcore {v}"
    pf = {r["stage"]: r["params"] for r in res.rows if r["voice"] == "formula"}
    pv = {r["stage"]: r["params"] for r in res.rows if r["voice"] == "fvcore"}
    assert pf == pv
    assert [a for a in res.audit if a["voice"] == "fvcore"] == []


@pytest.mark.parametrize("conventions", [None, ALL_ON])
@pytest.mark.parametrize("make", [
    lambda s: SpatialReductionAttention(8, 2, 2),
    lambda s: SpatialReductionAttention(8, 2, 1, cls_token=True),
    *[(lambda sh: (lambda s: SRACmix(8, 2, 2, shift=sh)))(sh) for sh in SHIFT_IMPLS],
    lambda s: SRACmix(8, 2, 2, conv_kv="full", mixing="half"),
    lambda s: SRACmix(8, 2, 1, cls_token=True, shift="tensor"),
    lambda s: SRACmix(8, 4, 4, mixing="att"),
])
def test_formula_equals_fvcore_per_stage_operators(make, conventions):
    op = make(None)
    H, W = 4, 8
    L = H * W + int(op.cls_token)
    res = count_model(_OnMap(op, H, W), inputs=torch.randn(1, L, 8), voices=("formula", "fvcore"),
                      conventions=conventions)
    _agree(res)
    assert res.get("stage2.attention", "fvcore") > 0 and res.get("stage1", "fvcore") > 0
    if hasattr(op.stage2, "conv"):
        assert res.get("stage2.conv", "fvcore") > 0


def test_closed_form_stage_terms():
    """Stage I = q on L tokens + kv on Lr; the attention path = reduction conv + 2 L Lr C; conv path as ACmix."""
    C, N, R, H, W = 8, 2, 2, 4, 8
    L, Lr = H * W, (H // R) * (W // R)
    res = count_model(_OnMap(SRACmix(C, N, R), H, W), inputs=torch.randn(1, L, C), voices=("formula", "fvcore"),
                      conventions="norms=off")
    assert res.get("stage1", "fvcore") == C * C * L + 2 * C * C * Lr
    assert res.get("stage2.attention", "fvcore") == C * C * R * R * Lr + 2 * L * Lr * C
    assert res.get("stage2.conv", "fvcore") == 9 * 3 * N * (C // N) * H * W + C * 81 * H * W
    full = count_model(_OnMap(SRACmix(C, N, R, conv_kv="full"), H, W), inputs=torch.randn(1, L, C),
                       voices=("formula", "fvcore"), conventions="norms=off")
    _agree(full)
    assert full.get("stage1", "fvcore") - res.get("stage1", "fvcore") == 2 * C * C * H * W


@pytest.mark.parametrize("name", ["pvt_t-sa", "pvt_t-acmix"])
def test_formula_equals_fvcore_per_stage_backbones(name):
    model = create_model(name, stem="small", img_size=16, in_chans=1, widths=[8, 16, 16, 32], heads=[1, 2, 2, 4])
    for conventions in (None, ALL_ON):
        res = count_model(model, input_size=(1, 16, 16), voices=("formula", "fvcore"), conventions=conventions)
        _agree(res)
        assert res.get("stage2", "fvcore") > 0


def test_match_across_families():
    from bench.match import match_widths
    res = match_widths("resnet26-conv", ["pvt_t-acmix"], 16, tol=0.02,
                       reference_overrides={"stem": "small", "in_chans": 1},
                       overrides={"stem": "small", "in_chans": 1})
    r = res[0]
    assert abs(r.rel_error) <= 0.02
    assert all(w % h == 0 for w, h in zip(r.widths, (1, 2, 5, 8)))
    m = create_model("pvt_t-acmix", stem="small", in_chans=1, img_size=16, widths=r.widths)
    total = count_model(m, input_size=(1, 16, 16), voices=("formula",)).total("formula")
    assert total == r.macs
