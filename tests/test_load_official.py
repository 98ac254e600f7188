"""load_official: whole release checkpoints (ResNet-ACmix, Swin-ACmix) in the registry models.

The expected logits come from the release's whole-model forward written here from
the release's structure (its `ResNet/ResNet_ImageNet.py` + `ACmix` block and its
`SwinTransformer_acmix`), with torch primitives only, explicit reflection indices
and the release's key names, every parameter and BatchNorm statistic random. The
suite's code is used only through `load_official` / `create_model(pretrained=)`.
"""
import pytest
import torch
import torch.nn.functional as F

from modules import create_model, load_official
from modules.official import fold_keys

f64 = torch.float64

# ----------------------------------------------------------------------------- release ResNet-ACmix


def _bn_state(sd, prefix, c, g):
    sd[prefix + "weight"] = 1 + 0.2 * torch.randn(c, generator=g, dtype=f64)
    sd[prefix + "bias"] = 0.2 * torch.randn(c, generator=g, dtype=f64)
    sd[prefix + "running_mean"] = 0.2 * torch.randn(c, generator=g, dtype=f64)
    sd[prefix + "running_var"] = 0.5 + torch.rand(c, generator=g, dtype=f64)
    sd[prefix + "num_batches_tracked"] = torch.tensor(7)


def release_resnet_state(layers, widths, k_conv=3, head=4, num_classes=10, seed=0):
    """Keys and shapes of the release's ACmix_ResNet(layers) (base widths as `widths`, stem = widths[0])."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, fan=None):
        fan = fan or (shape[1] * (shape[2] * shape[3] if len(shape) == 4 else 1) if len(shape) > 1 else 1)
        return torch.randn(*shape, generator=g, dtype=f64) / fan ** 0.5

    sd = {"conv1.weight": rnd(widths[0], 3, 7, 7)}
    _bn_state(sd, "bn1.", widths[0], g)
    inplanes = widths[0]
    for i, (n, w) in enumerate(zip(layers, widths)):
        for b in range(n):
            p = f"layer{i + 1}.{b}."
            sd[p + "conv1.weight"] = rnd(w, inplanes, 1, 1)
            _bn_state(sd, p + "bn1.", w, g)
            a = p + "conv2."  # the release's ACmix(width, width, k_att, head, k_conv, stride)
            sd[a + "rate1"] = 0.5 + 0.3 * torch.randn(1, generator=g, dtype=f64)
            sd[a + "rate2"] = 0.5 + 0.3 * torch.randn(1, generator=g, dtype=f64)
            for c in ("conv1", "conv2", "conv3"):
                sd[a + c + ".weight"] = rnd(w, w, 1, 1)
                sd[a + c + ".bias"] = 0.1 * rnd(w)
            sd[a + "conv_p.weight"] = rnd(w // head, 2, 1, 1)
            sd[a + "conv_p.bias"] = 0.1 * rnd(w // head)
            sd[a + "fc.weight"] = rnd(k_conv ** 2, 3 * head, 1, 1)
            sd[a + "dep_conv.weight"] = rnd(w, k_conv ** 2, k_conv, k_conv)
            _bn_state(sd, p + "bn2.", w, g)
            sd[p + "conv3.weight"] = rnd(4 * w, w, 1, 1)
            _bn_state(sd, p + "bn3.", 4 * w, g)
            if b == 0:  # stride 2 (stages 2-4) or inplanes != 4 * planes: every stage's first block
                sd[p + "downsample.0.weight"] = rnd(4 * w, inplanes, 1, 1)
                _bn_state(sd, p + "downsample.1.", 4 * w, g)
            inplanes = 4 * w
    sd["fc.weight"] = rnd(num_classes, inplanes)
    sd["fc.bias"] = 0.1 * rnd(num_classes)
    return sd


def _bn(x, sd, p):
    shape = (1, -1, 1, 1)
    return (x - sd[p + "running_mean"].view(shape)) / (sd[p + "running_var"].view(shape) + 1e-5).sqrt() \
        * sd[p + "weight"].view(shape) + sd[p + "bias"].view(shape)


def _reflect(i, n):
    i = i.abs()
    return torch.where(i > n - 1, 2 * (n - 1) - i, i)


def release_acmix(x, sd, a, head, k_att, k_conv, stride):
    """The release's ACmix.forward: 1x1 q, k, v; reflection-padded k_att window attention with the
    positional term; fc 3N -> k^2 + grouped conv; rate1 * att + rate2 * conv."""
    B, _, H, W = x.shape
    one = lambda c: torch.einsum("oc,bchw->bohw", sd[a + c + ".weight"][:, :, 0, 0], x) \
        + sd[a + c + ".bias"].view(1, -1, 1, 1)  # noqa: E731
    q, k, v = one("conv1"), one("conv2"), one("conv3")
    C = q.shape[1]
    d = C // head
    loc = torch.stack([torch.linspace(-1, 1, W, dtype=f64).view(1, W).expand(H, W),
                       torch.linspace(-1, 1, H, dtype=f64).view(H, 1).expand(H, W)])
    pe = torch.einsum("dc,chw->dhw", sd[a + "conv_p.weight"][:, :, 0, 0], loc) + sd[a + "conv_p.bias"].view(d, 1, 1)
    Ho, Wo, pad = H // stride, W // stride, (k_att - 1) // 2
    off = torch.arange(k_att) - pad
    ys = _reflect(torch.arange(Ho)[:, None] * stride + off[None, :], H)  # (Ho, k_att)
    xs = _reflect(torch.arange(Wo)[:, None] * stride + off[None, :], W)  # (Wo, k_att)
    Y, X = ys[:, None, :, None], xs[None, :, None, :]  # window (Ho, Wo, k_att, k_att)
    qs = q[..., ::stride, ::stride].reshape(B, head, d, Ho, Wo, 1, 1) * d ** -0.5
    kw = k.reshape(B, head, d, H, W)[..., Y, X]  # (B, N, d, Ho, Wo, ka, ka)
    vw = v.reshape(B, head, d, H, W)[..., Y, X]
    pe_q = pe[:, ::stride, ::stride].reshape(1, 1, d, Ho, Wo, 1, 1)
    logits = (qs * (kw + pe_q - pe[:, Y, X])).sum(2).reshape(B, head, Ho, Wo, k_att * k_att)
    w = logits.softmax(-1).reshape(B, head, 1, Ho, Wo, k_att, k_att)
    att = (w * vw).sum((-1, -2)).reshape(B, C, Ho, Wo)
    stacked = torch.cat([t.reshape(B, head, d, H * W) for t in (q, k, v)], 1)
    f = torch.einsum("jt,btdl->bjdl", sd[a + "fc.weight"][:, :, 0, 0], stacked).permute(0, 2, 1, 3)
    conv = F.conv2d(f.reshape(B, d * k_conv ** 2, H, W), sd[a + "dep_conv.weight"], stride=stride,
                    padding=1, groups=d)
    return sd[a + "rate1"] * att + sd[a + "rate2"] * conv


def release_resnet_forward(sd, x, layers, k_att=7, head=4, k_conv=3):
    x = F.conv2d(x, sd["conv1.weight"], stride=2, padding=3)
    x = F.max_pool2d(torch.relu(_bn(x, sd, "bn1.")), 3, 2, 1)
    for i, n in enumerate(layers):
        for b in range(n):
            p = f"layer{i + 1}.{b}."
            stride = 2 if i > 0 and b == 0 else 1
            out = torch.relu(_bn(F.conv2d(x, sd[p + "conv1.weight"]), sd, p + "bn1."))
            out = release_acmix(out, sd, p + "conv2.", head, k_att, k_conv, stride)
            out = _bn(F.conv2d(torch.relu(_bn(out, sd, p + "bn2.")), sd[p + "conv3.weight"]), sd, p + "bn3.")
            if p + "downsample.0.weight" in sd:
                x = _bn(F.conv2d(x, sd[p + "downsample.0.weight"], stride=stride), sd, p + "downsample.1.")
            x = torch.relu(out + x)
    return x.mean((2, 3)) @ sd["fc.weight"].T + sd["fc.bias"]


def _rel(a, b):
    return ((a.double() - b).norm() / b.norm()).item()


RESNET_CASES = [  # (name, layers, widths, k_att, img): k_att 3 where the release's 7 cannot pad 2x2 maps
    ("resnet26-acmix", (1, 2, 4, 1), [8, 16, 16, 32], 7, 64),
    ("resnet38-acmix", (2, 3, 5, 2), [8, 8, 16, 16], 3, 64),
    ("resnet50-acmix", (3, 4, 6, 3), [8, 8, 16, 16], 3, 64),
]


@pytest.mark.parametrize("name,layers,widths,k_att,img", RESNET_CASES)
def test_resnet_release_checkpoint_gives_release_logits(name, layers, widths, k_att, img):
    sd = release_resnet_state(layers, widths, num_classes=7, seed=len(name) + sum(layers))
    x = torch.randn(2, 3, img, img, generator=torch.Generator().manual_seed(1), dtype=f64)
    expected = release_resnet_forward(sd, x, layers, k_att=k_att)
    sd32 = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    model = load_official(sd32, name, widths=widths, kernel_att=k_att, img_size=img).eval()
    assert model.fc.out_features == 7  # num_classes read from the checkpoint
    with torch.no_grad():
        got = model(x.float())
    assert got.dtype == torch.float32
    assert _rel(got, expected) < 1e-4
    if name == "resnet26-acmix":  # float64 checkpoint: a float64 model, exact up to rounding
        model64 = load_official(sd, name, widths=widths, kernel_att=k_att, img_size=img).eval()
        with torch.no_grad():
            assert _rel(model64(x), expected) < 1e-10


# ----------------------------------------------------------------------------- release Swin-ACmix


def _swin_index(M):
    coords = torch.stack(torch.meshgrid(torch.arange(M), torch.arange(M), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (M - 1)
    return rel[..., 0] * (2 * M - 1) + rel[..., 1]


def _swin_attn_mask(H, M, s):
    img = torch.zeros(H, H)
    cnt = 0
    for hs in (slice(0, -M), slice(-M, -s), slice(-s, None)):
        for ws in (slice(0, -M), slice(-M, -s), slice(-s, None)):
            img[hs, ws] = cnt
            cnt += 1
    win = img.view(H // M, M, H // M, M).permute(0, 2, 1, 3).reshape(-1, M * M)
    diff = win[:, None, :] - win[:, :, None]
    return torch.where(diff != 0, -100.0, 0.0)


def _swin_plan(embed, depths, heads, window, patch, img):
    """Per stage (dim, heads, resolution, window, shift of odd blocks) as the release decides them."""
    plan = []
    res = img // patch
    for i, depth in enumerate(depths):
        M, s = window, window // 2
        if res <= window:  # the release: no partition, no shift
            M, s = res, 0
        plan.append((embed * 2 ** i, heads[i], res, M, s))
        res //= 2
    return plan


def release_swin_state(embed, depths, heads, window, patch, img, num_classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=None):
        scale = scale if scale is not None else (shape[-1] ** -0.5 if len(shape) > 1 else 0.1)
        return torch.randn(*shape, generator=g, dtype=f64) * scale

    def ln(p, c):
        sd[p + "weight"] = 1 + rnd(c, scale=0.1)
        sd[p + "bias"] = rnd(c, scale=0.1)

    sd = {"patch_embed.proj.weight": rnd(embed, 3, patch, patch, scale=(3 * patch * patch) ** -0.5),
          "patch_embed.proj.bias": rnd(embed)}
    ln("patch_embed.norm.", embed)
    plan = _swin_plan(embed, depths, heads, window, patch, img)
    for i, (depth, (dim, N, res, M, s)) in enumerate(zip(depths, plan)):
        for b in range(depth):
            p = f"layers.{i}.blocks.{b}."
            ln(p + "norm1.", dim)
            a = p + "attn."
            sd[a + "relative_position_bias_table"] = rnd((2 * M - 1) ** 2, N, scale=0.5)
            sd[a + "relative_position_index"] = _swin_index(M)
            sd[a + "qkv.weight"], sd[a + "qkv.bias"] = rnd(3 * dim, dim), rnd(3 * dim)
            sd[a + "proj.weight"], sd[a + "proj.bias"] = rnd(dim, dim), rnd(dim)
            sd[a + "fc.weight"], sd[a + "fc.bias"] = rnd(9, 3 * N, 1, 1, scale=0.3), rnd(9)
            sd[a + "dep_conv.weight"] = rnd(dim, 9, 3, 3, scale=0.1)
            sd[a + "rate1"], sd[a + "rate2"] = 0.5 + rnd(1, scale=0.3), 0.5 + rnd(1, scale=0.3)
            ln(p + "norm2.", dim)
            sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"] = rnd(4 * dim, dim), rnd(4 * dim)
            sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"] = rnd(dim, 4 * dim), rnd(dim)
            if b % 2 and s:
                sd[p + "attn_mask"] = _swin_attn_mask(res, M, s)
        if i < len(depths) - 1:
            ln(f"layers.{i}.downsample.norm.", 4 * dim)
            sd[f"layers.{i}.downsample.reduction.weight"] = rnd(2 * dim, 4 * dim)
    ln("norm.", plan[-1][0])
    sd["head.weight"], sd["head.bias"] = rnd(num_classes, plan[-1][0]), rnd(num_classes)
    return sd


def _ln(x, sd, p):
    return F.layer_norm(x, x.shape[-1:], sd[p + "weight"], sd[p + "bias"], 1e-5)


def release_window_acmix(x, sd, a, N, M, mask):
    """The release's WindowAttention_acmix.forward on (B, H, W, C) tokens."""
    B, H, W, C = x.shape
    d = C // N
    qkv = x @ sd[a + "qkv.weight"].T + sd[a + "qkv.bias"]
    f = qkv.reshape(B, H * W, 3 * N, d).permute(0, 2, 1, 3)  # (B, 3N, HW, d)
    f = torch.einsum("jt,btld->bjld", sd[a + "fc.weight"][:, :, 0, 0], f) + sd[a + "fc.bias"].view(1, 9, 1, 1)
    f = f.permute(0, 3, 1, 2).reshape(B, 9 * d, H, W)
    conv = F.conv2d(f, sd[a + "dep_conv.weight"], padding=1, groups=d).permute(0, 2, 3, 1)
    table, index = sd[a + "relative_position_bias_table"], sd[a + "relative_position_index"]
    att = torch.zeros(B, H, W, C, dtype=x.dtype)
    for wi, wy in enumerate(range(0, H, M)):  # windows visited one by one, row-major (mask order)
        for wj, wx in enumerate(range(0, W, M)):
            t = qkv[:, wy:wy + M, wx:wx + M].reshape(B, M * M, 3, N, d)
            logits = torch.einsum("blnd,bmnd->bnlm", t[:, :, 0] * d ** -0.5, t[:, :, 1])
            logits = logits + table[index].permute(2, 0, 1)
            if mask is not None:
                logits = logits + mask[wi * (W // M) + wj]
            out = torch.einsum("bnlm,bmnd->blnd", logits.softmax(-1), t[:, :, 2])
            att[:, wy:wy + M, wx:wx + M] = out.reshape(B, M, M, C)
    att = att @ sd[a + "proj.weight"].T + sd[a + "proj.bias"]
    return sd[a + "rate1"] * att + sd[a + "rate2"] * conv


def release_swin_forward(sd, x, embed, depths, heads, window, patch):
    t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=patch)
    t = _ln(t.permute(0, 2, 3, 1), sd, "patch_embed.norm.")  # (B, H, W, C)
    plan = _swin_plan(embed, depths, heads, window, patch, x.shape[-1])
    for i, (depth, (dim, N, res, M, s)) in enumerate(zip(depths, plan)):
        for b in range(depth):
            p = f"layers.{i}.blocks.{b}."
            shift = s if b % 2 else 0
            y = _ln(t, sd, p + "norm1.")
            if shift:
                y = torch.roll(y, (-shift, -shift), (1, 2))
            y = release_window_acmix(y, sd, p + "attn.", N, M, sd.get(p + "attn_mask"))
            if shift:
                y = torch.roll(y, (shift, shift), (1, 2))
            t = t + y
            h = F.gelu(_ln(t, sd, p + "norm2.") @ sd[p + "mlp.fc1.weight"].T + sd[p + "mlp.fc1.bias"])
            t = t + h @ sd[p + "mlp.fc2.weight"].T + sd[p + "mlp.fc2.bias"]
        if i < len(depths) - 1:
            cat = torch.cat([t[:, 0::2, 0::2], t[:, 1::2, 0::2], t[:, 0::2, 1::2], t[:, 1::2, 1::2]], -1)
            t = _ln(cat, sd, f"layers.{i}.downsample.norm.") @ sd[f"layers.{i}.downsample.reduction.weight"].T
    return _ln(t, sd, "norm.").mean((1, 2)) @ sd["head.weight"].T + sd["head.bias"]


SWIN_CASES = [  # embed 12 (heads 3-6-12-24 as Swin-T/S), 32 px, patch 2, window 4: shifted windows in 2 stages
    ("swin_t-acmix", (2, 2, 6, 2)),
    ("swin_s-acmix", (2, 2, 18, 2)),
]


@pytest.mark.parametrize("name,depths", SWIN_CASES)
def test_swin_release_checkpoint_gives_release_logits(name, depths):
    embed, heads, window, patch, img = 12, (3, 6, 12, 24), 4, 2, 32
    sd = release_swin_state(embed, depths, heads, window, patch, img, num_classes=5, seed=len(depths) + sum(depths))
    assert sum(k.endswith("attn_mask") for k in sd) == sum(d // 2 for d in depths[:2])  # maps 4, 2: no shift
    x = torch.randn(2, 3, img, img, generator=torch.Generator().manual_seed(2), dtype=f64)
    expected = release_swin_forward(sd, x, embed, depths, heads, window, patch)
    sd32 = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    model = load_official({"model": sd32}, name, widths=embed, window_size=window, patch_size=patch,
                          img_size=img).eval()
    with torch.no_grad():
        got = model(x.float())
    assert got.dtype == torch.float32 and got.shape == (2, 5)
    assert _rel(got, expected) < 1e-4
    if name == "swin_t-acmix":
        model64 = load_official(sd, name, widths=embed, window_size=window, patch_size=patch, img_size=img).eval()
        with torch.no_grad():
            assert _rel(model64(x), expected) < 1e-10


# ----------------------------------------------------------------------------- errors and wrappers

SMALL = dict(widths=[8, 8, 16, 16], kernel_att=3, img_size=32)


@pytest.fixture(scope="module")
def r26():
    return release_resnet_state((1, 2, 4, 1), SMALL["widths"], num_classes=3)


def test_bad_keys_are_listed_in_one_error(r26):
    sd = dict(r26)
    for k in ("layer1.0.conv2.rate1", "layer3.1.conv2.rate1", "layer3.2.conv2.rate1", "fc.bias"):
        del sd[k]
    sd["layer2.0.conv2.dep_conv.bias"] = torch.zeros(8)
    sd["extra"] = torch.zeros(1)
    sd["layer4.0.conv2.conv_p.weight"] = torch.zeros(5, 2, 1, 1)
    with pytest.raises(ValueError) as e:
        load_official(sd, "resnet26-acmix", **SMALL)
    msg = str(e.value)
    assert "\n" not in msg
    assert "missing 4: layer1.0.conv2.rate1, layer3.{1,2}.conv2.rate1, fc.bias" in msg
    assert "unexpected 2: layer2.0.conv2.dep_conv.bias, extra" in msg
    assert "shape (5, 2, 1, 1) where (4, 2, 1, 1) is expected: layer4.0.conv2.conv_p.weight" in msg


def test_wrong_model_or_sizes_name_every_key(r26):
    with pytest.raises(ValueError, match=r"missing 102: .*bn1\.weight.*; unexpected 70: stem\.\{0,1\}\.weight, .*"
                                         r"layer3\.\{0-3\}\.conv2\.stage1"):  # the suite's keys are not the release's
        load_official(create_model("resnet26-acmix", num_classes=3, **SMALL).state_dict(), "resnet26-acmix", **SMALL)
    with pytest.raises(ValueError, match=r"missing 116: layer1\.1\.conv2\.rate1, .*layer4\.1\.bn3\.num_batches_tracked; "
                                         r"check the model name"):  # ResNet-26 weights for ResNet-38
        load_official(r26, "resnet38-acmix", **SMALL)
    with pytest.raises(ValueError, match=r"shape \(32, 8, 1, 1\) where \(64, 16, 1, 1\)"):
        load_official(r26, "resnet26-acmix", widths=[16, 16, 16, 16], kernel_att=3, img_size=64)
    with pytest.raises(ValueError, match="ResNet-ACmix and Swin-ACmix only.*allowed: resnet26-acmix"):
        load_official(r26, "san10-acmix")
    with pytest.raises(ValueError, match="release's mixing is 'learnable'"):
        load_official(r26, "resnet26-acmix", mixing="half", **SMALL)


def test_swin_mask_and_index_values_are_checked():
    sd = release_swin_state(8, (2, 2), (2, 4), 4, 2, 32, num_classes=3)
    kw = dict(widths=8, depths=[2, 2], heads=[2, 4], window_size=4, patch_size=2, img_size=32)
    load_official(sd, "swin_t-acmix", **kw)
    bad = dict(sd)
    bad["layers.0.blocks.1.attn_mask"] = torch.zeros_like(sd["layers.0.blocks.1.attn_mask"])
    bad["layers.1.blocks.0.attn.relative_position_index"] = sd["layers.1.blocks.0.attn.relative_position_index"].flip(0)
    with pytest.raises(ValueError, match=r"values differ .*: layers\.0\.blocks\.1\.attn_mask, "
                                         r"layers\.1\.blocks\.0\.attn\.relative_position_index; check"):
        load_official(bad, "swin_t-acmix", **kw)
    with pytest.raises(ValueError, match=r"shape \(16, 16, 16\) where \(4, 16, 16\) is expected: "
                                         r"layers\.0\.blocks\.1\.attn_mask"):  # built for 32 px, loaded at 16
        load_official(sd, "swin_t-acmix", **{**kw, "img_size": 16})


def test_wrappers_and_files_load(r26, tmp_path):
    ref = load_official(r26, "resnet26-acmix", **SMALL).state_dict()
    ddp = {"module." + k: v for k, v in r26.items()}
    torch.save({"epoch": 3, "arch": "acmix", "state_dict": ddp}, tmp_path / "resnet.pth.tar")
    torch.save({"model": r26, "epoch": 1}, tmp_path / "swin_style.pth")
    for src in ({"model": r26}, {"state_dict": r26}, ddp, tmp_path / "resnet.pth.tar", str(tmp_path / "swin_style.pth")):
        got = load_official(src, "resnet26-acmix", **SMALL).state_dict()
        assert got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in ref)
    x = torch.randn(1, 3, 32, 32, dtype=f64)
    via_registry = create_model("resnet26-acmix", pretrained=tmp_path / "resnet.pth.tar", **SMALL).eval()
    assert torch.equal(via_registry(x), load_official(r26, "resnet26-acmix", **SMALL).eval()(x))
    with pytest.raises(ValueError, match="not found"):
        load_official(tmp_path / "nope.pth", "resnet26-acmix")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read .*junk.pth"):
        load_official(tmp_path / "junk.pth", "resnet26-acmix")
    with pytest.raises(ValueError, match="not a state dict of tensors"):
        load_official({"a": 1}, "resnet26-acmix")


def test_fold_keys_is_exact():
    keys = [f"layers.{i}.blocks.{j}.attn.rate1" for i in range(2) for j in range(2)] + ["layers.2.blocks.0.attn.rate1"]
    assert fold_keys(keys) == "layers.{0,1}.blocks.{0,1}.attn.rate1, layers.2.blocks.0.attn.rate1"
    assert fold_keys([f"l.{i}.w" for i in range(18)] + ["fc.bias"]) == "l.{0-17}.w, fc.bias"
    assert fold_keys([]) == ""


RELEASE_PARAMS = {"resnet26-acmix": 10_487_816, "resnet38-acmix": 14_410_896, "resnet50-acmix": 18_333_976,
                  "swin_t-acmix": 28_649_908, "swin_s-acmix": 50_345_080}
BUFFERS = ("running_mean", "running_var", "num_batches_tracked", "relative_position_index", "attn_mask")


@pytest.mark.parametrize("name", list(RELEASE_PARAMS))
def test_registry_counts_equal_the_release_code(name):
    """docs/models.md: the suite's counts are the release code's, not the published 10.6M ... 51M."""
    try:
        with torch.device("meta"):  # shapes only: no memory, no initialisation time
            model = create_model(name)
    except NotImplementedError:  # a constructor that copies real data
        model = create_model(name)
    assert sum(p.numel() for p in model.parameters()) == RELEASE_PARAMS[name]


def test_release_resnet26_layout_has_the_release_count():
    release = release_resnet_state((1, 2, 4, 1), [64, 128, 256, 512], num_classes=1000)
    assert sum(v.numel() for k, v in release.items() if not k.endswith(BUFFERS)) == RELEASE_PARAMS["resnet26-acmix"]
