"""from_official: release checkpoints ported into the suite's operators.

Expected outputs are computed here, independently of the suite's code, from
docs/operators.md's description of the release (explicit reflection indices, the
release's tensor layouts, torch primitives only), with every parameter random.
"""
import pytest
import torch
import torch.nn.functional as F

from modules import from_official
from modules.window_attention import shifted_window_mask

f64 = torch.float64


def _rand(shape, g):
    return torch.randn(*shape, generator=g, dtype=f64)


def release_resnet_state(Cin, Cout, N, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = Cout // N
    sd = {"rate1": _rand((1,), g), "rate2": _rand((1,), g)}
    for i in (1, 2, 3):
        sd[f"conv{i}.weight"] = _rand((Cout, Cin, 1, 1), g) * 0.3
        sd[f"conv{i}.bias"] = _rand((Cout,), g) * 0.3
    sd["conv_p.weight"] = _rand((d, 2, 1, 1), g)
    sd["conv_p.bias"] = _rand((d,), g)
    sd["fc.weight"] = _rand((k * k, 3 * N, 1, 1), g)
    sd["dep_conv.weight"] = _rand((Cout, k * k, k, k), g)
    return sd


def expected_resnet(sd, x, N, ka, k, stride):
    """docs/operators.md section 4, written with explicit index arithmetic."""
    B, Cin, H, W = x.shape
    conv1x1 = lambda name: torch.einsum("oc,bchw->bohw", sd[name + ".weight"][:, :, 0, 0], x) \
        + sd[name + ".bias"].view(1, -1, 1, 1)  # noqa: E731
    q, kk, v = conv1x1("conv1"), conv1x1("conv2"), conv1x1("conv3")
    Cout = q.shape[1]
    d = Cout // N
    pad = (ka - 1) // 2
    scale = d ** -0.5
    # positional encoding: grid channel 0 = linspace over width, channel 1 = over height
    gx = torch.linspace(-1, 1, W, dtype=f64).view(1, W).expand(H, W)
    gy = torch.linspace(-1, 1, H, dtype=f64).view(H, 1).expand(H, W)
    wp, bp = sd["conv_p.weight"][:, :, 0, 0], sd["conv_p.bias"]
    pe = wp[:, 0, None, None] * gx + wp[:, 1, None, None] * gy + bp[:, None, None]  # (d, H, W)

    def refl(i, n):
        return -i if i < 0 else (2 * (n - 1) - i if i >= n else i)

    Ho, Wo = (H - 1) // stride + 1, (W - 1) // stride + 1
    att = torch.zeros(B, Cout, Ho, Wo, dtype=f64)
    offs = [(a - pad, b - pad) for a in range(ka) for b in range(ka)]
    for oy in range(Ho):
        for ox in range(Wo):
            py, px = oy * stride, ox * stride
            ys = torch.tensor([refl(py + dy, H) for dy, _ in offs])
            xs = torch.tensor([refl(px + dx, W) for _, dx in offs])
            for n in range(N):
                sl = slice(n * d, (n + 1) * d)
                qv = q[:, sl, py, px] * scale  # (B, d)
                keys = kk[:, sl][:, :, ys, xs] + pe[:, py, px].view(1, d, 1) - pe[:, ys, xs].unsqueeze(0)  # (B, d, ka^2)
                w = torch.einsum("bc,bcj->bj", qv, keys).softmax(-1)
                att[:, sl, oy, ox] = torch.einsum("bj,bcj->bc", w, v[:, sl][:, :, ys, xs])
    # conv path: stack (B, 3N, d, HW), fc 3N -> k^2, reorder to (B, d*k^2, H, W), grouped conv
    stacked = torch.cat([t.reshape(B, N, d, H * W) for t in (q, kk, v)], 1)
    f = torch.einsum("jt,btdl->bjdl", sd["fc.weight"][:, :, 0, 0], stacked)
    f = f.permute(0, 2, 1, 3).reshape(B, d * k * k, H, W)
    conv = F.conv2d(f, sd["dep_conv.weight"], stride=stride, padding=k // 2, groups=d)
    return sd["rate1"] * att + sd["rate2"] * conv


@pytest.mark.parametrize("Cin,Cout,N,ka,k,stride,H,W", [
    (6, 8, 2, 3, 3, 1, 6, 5),
    (8, 12, 3, 5, 3, 2, 8, 6),
    (4, 8, 4, 3, 3, 2, 7, 5),   # odd sizes at stride 2: the release crashes, docs/operators.md's maths is defined
    (4, 8, 2, 3, 5, 1, 6, 6),   # kernel_conv = 5: the release pads 1 (crash); the maths pads 2
])
def test_from_official_resnet_matches_release_formulas(Cin, Cout, N, ka, k, stride, H, W):
    sd = release_resnet_state(Cin, Cout, N, k, seed=H + W)
    op = from_official(sd, "resnet", in_planes=Cin, out_planes=Cout, kernel_att=ka, head=N, kernel_conv=k, stride=stride)
    x = torch.randn(2, Cin, H, W, dtype=f64)
    assert torch.allclose(op(x), expected_resnet(sd, x, N, ka, k, stride), atol=1e-10)
    assert op.stage2.conv.shift.shift == "multigroup"


def test_from_official_float32_checkpoint_stays_float32():
    sd = {k: v.float() for k, v in release_resnet_state(4, 8, 2, 3).items()}
    op = from_official(sd, "resnet", in_planes=4, out_planes=8, kernel_att=3, head=2, kernel_conv=3, stride=1)
    x = torch.randn(1, 4, 6, 6)
    exp = expected_resnet({k: v.double() for k, v in sd.items()}, x.double(), 2, 3, 3, 1)
    assert op(x).dtype == torch.float32
    assert torch.allclose(op(x).double(), exp, atol=1e-4)


def test_from_official_prefix_and_key_errors():
    sd = release_resnet_state(4, 8, 2, 3)
    wrapped = {"layer1.0.conv2." + k: v for k, v in sd.items()}
    op = from_official(wrapped, "resnet", prefix="layer1.0.conv2.", in_planes=4, out_planes=8, kernel_att=3, head=2)
    assert op.stage2.alpha.item() == sd["rate1"].item()
    bad = dict(sd)
    bad["dep_conv.bias"] = torch.zeros(8, dtype=f64)
    with pytest.raises(ValueError, match="unexpected keys \\['dep_conv.bias'\\]"):
        from_official(bad, "resnet", in_planes=4, out_planes=8, kernel_att=3, head=2)
    missing = {k: v for k, v in sd.items() if k != "conv_p.bias"}
    with pytest.raises(ValueError, match="missing keys \\['conv_p.bias'\\]"):
        from_official(missing, "resnet", in_planes=4, out_planes=8, kernel_att=3, head=2)
    with pytest.raises(ValueError, match="has shape .* expected"):
        from_official(sd, "resnet", in_planes=4, out_planes=8, kernel_att=3, head=4)
    with pytest.raises(ValueError, match="unknown layout 'vit'; allowed: resnet, swin"):
        from_official(sd, "vit", in_planes=4)


# ----------------------------------------------------------------------------- Swin


def release_swin_state(C, M, N, seed=0):
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(M), torch.arange(M), indexing="ij")
    coords = torch.stack([ys.flatten(), xs.flatten()])  # (2, M^2)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (M - 1)
    index = rel[..., 0] * (2 * M - 1) + rel[..., 1]
    return {
        "qkv.weight": _rand((3 * C, C), g) * 0.4, "qkv.bias": _rand((3 * C,), g) * 0.4,
        "proj.weight": _rand((C, C), g) * 0.4, "proj.bias": _rand((C,), g),
        "relative_position_bias_table": _rand(((2 * M - 1) ** 2, N), g),
        "relative_position_index": index,
        "fc.weight": _rand((9, 3 * N, 1, 1), g), "fc.bias": _rand((9,), g),
        "dep_conv.weight": _rand((C, 9, 3, 3), g), "rate1": _rand((1,), g), "rate2": _rand((1,), g),
    }


def expected_swin(sd, x, H, W, M, N, mask=None):
    """docs/operators.md section 5: windows visited one by one; conv path on the full map."""
    B, _, _, C = x.shape
    d = C // N
    qkv = x @ sd["qkv.weight"].T + sd["qkv.bias"]  # (B, H, W, 3C)
    f = qkv.reshape(B, H * W, 3 * N, d).permute(0, 2, 1, 3)  # (B, 3N, HW, d)
    f = torch.einsum("jt,btld->bjld", sd["fc.weight"][:, :, 0, 0], f) + sd["fc.bias"].view(1, 9, 1, 1)
    f = f.permute(0, 3, 1, 2).reshape(B, 9 * d, H, W)
    conv = F.conv2d(f, sd["dep_conv.weight"], padding=1, groups=d).permute(0, 2, 3, 1)

    table, index = sd["relative_position_bias_table"], sd["relative_position_index"]
    att = torch.zeros(B, H, W, C, dtype=f64)
    win_id = 0
    for wy in range(0, H, M):
        for wx in range(0, W, M):
            tok = qkv[:, wy:wy + M, wx:wx + M].reshape(B, M * M, 3, N, d)
            for n in range(N):
                qn, kn, vn = tok[:, :, 0, n], tok[:, :, 1, n], tok[:, :, 2, n]
                logits = (qn * d ** -0.5) @ kn.transpose(1, 2) + table[index, n]
                if mask is not None:
                    logits = logits + mask[win_id]
                out = logits.softmax(-1) @ vn
                att[:, wy:wy + M, wx:wx + M, n * d:(n + 1) * d] = out.reshape(B, M, M, d)
            win_id += 1
    proj = att @ sd["proj.weight"].T + sd["proj.bias"]
    return sd["rate1"] * proj + sd["rate2"] * conv


def swin_mask(H, W, M, s):
    img = torch.zeros(H, W)
    cnt = 0
    for hs in (slice(0, -M), slice(-M, -s), slice(-s, None)):
        for ws in (slice(0, -M), slice(-M, -s), slice(-s, None)):
            img[hs, ws] = cnt
            cnt += 1
    win = img.view(H // M, M, W // M, M).permute(0, 2, 1, 3).reshape(-1, M * M)
    diff = win[:, None, :] - win[:, :, None]
    return torch.where(diff != 0, -100.0, 0.0).double()


@pytest.mark.parametrize("H,W,M,s", [(8, 8, 4, 2), (6, 9, 3, 1)])
def test_suite_shift_mask_equals_swin_slices(H, W, M, s):
    assert torch.equal(shifted_window_mask(H, W, M, s, torch.float64), swin_mask(H, W, M, s))


@pytest.mark.parametrize("C,M,N,H,W,masked", [(8, 2, 2, 4, 6, False), (12, 3, 3, 6, 6, True), (8, 4, 2, 8, 4, True)])
def test_from_official_swin_matches_release_formulas(C, M, N, H, W, masked):
    sd = release_swin_state(C, M, N, seed=C + M)
    op = from_official(sd, "swin", dim=C, window_size=(M, M), num_heads=N)
    x = torch.randn(2, H, W, C, dtype=f64)
    mask = swin_mask(H, W, M, M // 2) if masked else None
    got = op(x, H, W, mask=mask)
    assert torch.allclose(got, expected_swin(sd, x, H, W, M, N, mask), atol=1e-10)


def test_swin_operator_with_internal_shift_equals_release_block_convention():
    """shift_size > 0 inside the operator == release convention (caller rolls, masks, rolls back)."""
    C, M, N, H, W = 8, 4, 2, 8, 8
    sd = release_swin_state(C, M, N, seed=3)
    shifted = from_official(sd, "swin", dim=C, window_size=M, num_heads=N, shift_size=2)
    x = torch.randn(2, H, W, C, dtype=f64)
    rolled = torch.roll(x, (-2, -2), (1, 2))
    exp = torch.roll(expected_swin(sd, rolled, H, W, M, N, swin_mask(H, W, M, 2)), (2, 2), (1, 2))
    assert torch.allclose(shifted(x), exp, atol=1e-10)


def test_from_official_swin_rejects_foreign_index():
    sd = release_swin_state(8, 2, 2)
    sd["relative_position_index"] = sd["relative_position_index"].flip(0)
    with pytest.raises(ValueError, match="relative_position_index differs"):
        from_official(sd, "swin", dim=8, window_size=2, num_heads=2)
