"""SAN (pairwise, patchwise) and SAN-ACmix: Stage II against per-pixel definitions, fast == reference
(values, gradients, gradcheck in float64), the conv path, the backbones and their parameter counts
as the authors' code (hszhao/SAN, model/san.py) builds them, and bad inputs."""
import pytest
import torch

from modules import SANACmix, SANSelfAttention, create_model, list_models, set_stage2_impl
from modules.san import aggregation_fast, aggregation_reference, footprint_fast, footprint_reference
from modules.shift import SHIFT_IMPLS, shift_aggregate_reference

SAN_NAMES = [f"san{n}-{op}" for n in (10, 15, 19) for op in ("pairwise", "patchwise", "acmix")]
TINY = dict(stem="small", in_chans=1, img_size=16, num_classes=5, widths=[32, 32, 64, 64, 32])


def _reflect(i: int, n: int) -> int:
    """The reference CUDA kernels' reflection of an index outside 0 .. n-1 (one bounce)."""
    if i < 0:
        i = -i
    if i >= n:
        i = 2 * (n - 1) - i
    return i


def _footprint_by_pixel(x, k):
    B, C, H, W = x.shape
    out = torch.empty(B, C, k * k, H, W, dtype=x.dtype)
    for h in range(H):
        for w in range(W):
            for j in range(k * k):
                hi, wi = _reflect(h + j // k - k // 2, H), _reflect(w + j % k - k // 2, W)
                out[:, :, j, h, w] = x[:, :, hi, wi]
    return out


@pytest.mark.parametrize("k,H,W", [(3, 4, 5), (5, 3, 6), (7, 5, 4), (1, 2, 2)])
def test_footprint_and_aggregation_match_per_pixel_definition(k, H, W):
    torch.manual_seed(0)
    x = torch.randn(2, 6, H, W, dtype=torch.float64)
    ref = _footprint_by_pixel(x, k)
    assert torch.equal(footprint_reference(x, k), ref)
    assert torch.equal(footprint_fast(x, k), ref)
    w = torch.randn(2, 3, k * k, H, W, dtype=torch.float64)  # channel c reads weight channel c mod 3
    want = torch.einsum("bcjhw,bcjhw->bchw", w.repeat(1, 2, 1, 1, 1), ref)
    torch.testing.assert_close(aggregation_reference(x, w, k), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(aggregation_fast(x, w, k), want, rtol=1e-12, atol=1e-12)


def test_pairwise_weights_follow_the_definition():
    """w_j(p) = softmax_j gamma([x1[p] - x2[p+o_j]; P[p] - P[p+o_j]]), P = conv_p(grid)."""
    torch.manual_seed(1)
    op = SANSelfAttention(8, 16, "pairwise", kernel_size=3, rel_planes=4, share_planes=4).double().eval()
    x = torch.randn(2, 8, 5, 6, dtype=torch.float64)
    qkv = op.stage1(x)
    x1, x2, x3 = qkv[:, :4], qkv[:, 4:8], qkv[:, 8:]
    path = op.stage2.attention
    from modules import position_grid
    P = path.conv_p(position_grid(5, 6, torch.float64))
    rel = x1.unsqueeze(2) - _footprint_by_pixel(x2, 3)
    pos = (P.unsqueeze(2) - _footprint_by_pixel(P, 3)).expand(2, -1, -1, -1, -1)
    w = path.conv_w(torch.cat([rel, pos], 1).reshape(2, 6, 9, 30)).softmax(2).view(2, 4, 9, 5, 6)
    want = torch.einsum("bcjhw,bcjhw->bchw", w.repeat(1, 4, 1, 1, 1), _footprint_by_pixel(x3, 3))
    for impl in ("reference", "fast"):
        set_stage2_impl(op, impl)
        torch.testing.assert_close(op(x), want, rtol=1e-10, atol=1e-12)


def test_patchwise_weights_follow_the_definition():
    """w = gamma([x1[p]; x2[p+o_0]; ...]) with x2's channel c, offset j at input c k^2 + j; output g k^2 + j."""
    torch.manual_seed(2)
    op = SANSelfAttention(8, 16, "patchwise", kernel_size=3, rel_planes=2, share_planes=8).double().eval()
    x = torch.randn(1, 8, 4, 4, dtype=torch.float64)
    qkv = op.stage1(x)
    x1, x2, x3 = qkv[:, :2], qkv[:, 2:4], qkv[:, 4:]
    fp = _footprint_by_pixel(x2, 3)  # (1, 2, 9, 4, 4)
    feat = torch.cat([x1.reshape(1, 2, 1, 16), fp.reshape(1, 18, 1, 16)], 1)
    w = op.stage2.attention.conv_w(feat).view(1, 2, 9, 4, 4)
    want = torch.einsum("bcjhw,bcjhw->bchw", w.repeat(1, 8, 1, 1, 1), _footprint_by_pixel(x3, 3))
    for impl in ("reference", "fast"):
        set_stage2_impl(op, impl)
        torch.testing.assert_close(op(x), want, rtol=1e-10, atol=1e-12)


def _ops():
    yield "pairwise", SANSelfAttention(8, 16, "pairwise", 5, 4, 4)
    yield "patchwise", SANSelfAttention(8, 16, "patchwise", 3, 4, 8)
    for s in SHIFT_IMPLS:
        yield f"acmix-{s}", SANACmix(8, 16, "patchwise", 3, 4, 8, shift=s)
    yield "acmix-pairwise", SANACmix(8, 16, "pairwise", 5, 4, 4)
    yield "acmix-conv", SANACmix(8, 16, "patchwise", 3, 4, 8, mixing="conv")


@pytest.mark.parametrize("name", [n for n, _ in _ops()])
def test_fast_equals_reference_values_and_gradients_float64(name):
    torch.manual_seed(3)
    op = dict(_ops())[name].double()
    for m in op.modules():  # random kernels, so the multigroup / learnable forms differ from a shift
        if hasattr(m, "weight") and isinstance(m.weight, torch.nn.Parameter) and m.weight.dim() == 4:
            torch.nn.init.normal_(m.weight, std=0.3)
    x = torch.randn(2, 8, 6, 7, dtype=torch.float64)
    outs, grads = [], []
    for impl in ("reference", "fast"):
        set_stage2_impl(op, impl)
        op.zero_grad()
        xi = x.clone().requires_grad_(True)
        y = op(xi)  # train mode: the BNs use batch statistics, same in both
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
        outs.append(y.detach())
        grads.append([xi.grad] + [p.grad.clone() for p in op.parameters() if p.grad is not None])
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-10, atol=1e-12)
    assert len(grads[0]) == len(grads[1]) > 3
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("impl", ["reference", "fast"])
@pytest.mark.parametrize("sa_type", ["pairwise", "patchwise"])
def test_gradcheck_small(sa_type, impl):
    torch.manual_seed(4)
    op = SANACmix(4, 8, sa_type, 3, 2, 4).double().eval()  # eval: BN is an affine map, gradcheck-able
    set_stage2_impl(op, impl)
    x = torch.randn(1, 4, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(op, (x,))
    v = torch.randn(1, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(1, 2, 9, 3, 3, dtype=torch.float64, requires_grad=True)
    fn = aggregation_fast if impl == "fast" else aggregation_reference
    assert torch.autograd.gradcheck(lambda a, b: fn(a, b, 3), (v, w))


def test_acmix_conv_path_is_the_acmix_light_fc_and_shift():
    """mixing "conv": light FC over the 2 + N groups [x1 | x2 | x3 split in N], shift-aggregate, channel i N + n;
    at initialisation all four shift forms give the same output."""
    torch.manual_seed(5)
    outs = []
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64)
    for s in SHIFT_IMPLS:
        torch.manual_seed(6)
        op = SANACmix(8, 16, "patchwise", 3, 4, 8, shift=s, mixing="conv").double()
        outs.append(op(x))
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], rtol=1e-10, atol=1e-12)
    qkv = op.stage1(x).view(2, 6, 4, 5, 5)  # T = 2 + N groups of d = 4
    fc = op.stage2.conv.fc.weight.view(9, 6)
    y = torch.einsum("jt,btdhw->bdjhw", fc, qkv).reshape(2, 36, 5, 5)
    torch.testing.assert_close(outs[0], shift_aggregate_reference(y, 3, 4), rtol=1e-10, atol=1e-12)


def test_acmix_mixing_is_alpha_att_plus_beta_conv():
    torch.manual_seed(7)
    op = SANACmix(8, 16, "pairwise", 3, 4, 8).double()
    assert (op.stage2.alpha.item(), op.stage2.beta.item()) == (0.5, 0.5)
    with torch.no_grad():
        op.stage2.alpha.fill_(0.3)
        op.stage2.beta.fill_(-1.2)
    x = torch.randn(1, 8, 4, 4, dtype=torch.float64)
    qkv = op.stage1(x)
    op.eval()
    want = 0.3 * op.stage2.attention(qkv) - 1.2 * op.stage2.conv(qkv.view(1, 6, 4, 4, 4))
    torch.testing.assert_close(op(x), want, rtol=1e-12, atol=1e-12)
    assert not hasattr(SANACmix(8, 16, mixing="att").stage2, "conv")
    assert not hasattr(SANACmix(8, 16, mixing="conv").stage2, "attention")


def test_dtypes_and_autograd_float32():
    op = SANACmix(8, 16, "pairwise", 3)
    y = op(torch.randn(2, 8, 6, 6))
    assert y.dtype == torch.float32 and y.shape == (2, 16, 6, 6)
    y.sum().backward()
    assert all(p.grad is not None for p in op.parameters())


def test_bad_inputs_are_one_line_value_errors():
    op = SANSelfAttention(8, 16, "pairwise", 7)
    for x, match in ((torch.randn(1, 8, 3, 8), "kernel_size <= 5"), (torch.randn(1, 4, 8, 8), "8 input channels"),
                     (torch.randn(8, 8, 8), "4-D")):
        with pytest.raises(ValueError, match=match) as e:
            op(x)
        assert "\n" not in str(e.value)
    for kwargs, match in ((dict(sa_type="dotproduct"), "SAN attention type"), (dict(kernel_size=4), "odd"),
                          (dict(share_planes=3), "divisible")):
        with pytest.raises(ValueError, match=match):
            SANSelfAttention(8, 16, **kwargs)
    with pytest.raises(ValueError, match="divisible by rel_planes"):
        SANACmix(8, 16, rel_planes=3, share_planes=8)
    with pytest.raises(ValueError, match="multiple of 32"):
        create_model("san10-acmix", widths=[64, 256, 500, 1024, 2048])
    with pytest.raises(ValueError, match="5 per-stage"):
        create_model("san10-pairwise", widths=[64, 256, 512, 1024])
    with pytest.raises(ValueError, match="unknown override"):
        create_model("san10-pairwise", heads=4)
    with pytest.raises(ValueError, match="too small"):
        create_model("san10-pairwise", img_size=16)
    with pytest.raises(ValueError, match="expected input"):
        create_model("san10-pairwise", **TINY)(torch.randn(1, 3, 16, 16))


def test_registry_names():
    assert [n for n in list_models("san*")] == sorted(SAN_NAMES)


# ----------------------------------------------------------------------------- backbones


def _reference_san_params(sa_type: int, layers, kernels=(3, 7, 7, 7, 7), classes=1000) -> int:
    """Parameters of hszhao/SAN model/san.py `san(sa_type, layers, kernels, classes)`, layer by layer
    from its code: SAM convs 1-3 with bias, conv_w and conv_p as listed there, BN (2 per channel)."""
    def block(c, k):
        rel, mid, G = c // 16, c // 4, c // 4 // 8
        n = 2 * c  # bn1
        n += 2 * (c * rel + rel) + c * mid + mid  # SAM conv1, conv2, conv3
        if sa_type == 0:  # BN(rel+2), conv(rel+2 -> rel, no bias), BN(rel), conv(rel -> G), conv_p(2 -> 2)
            n += 2 * (rel + 2) + (rel + 2) * rel + 2 * rel + rel * G + G + 2 * 2 + 2
        else:  # BN(rel(k^2+1)), conv(-> G, no bias), BN(G), conv(G -> k^2 G)
            cin = rel * (k * k + 1)
            n += 2 * cin + cin * G + 2 * G + G * k * k * G + k * k * G
        return n + 2 * mid + mid * c + c  # bn2, conv (bias)
    widths = [64, 256, 512, 1024, 2048]
    n = 3 * 64 + 2 * 64  # conv_in, bn_in
    prev = 64
    for c, L, k in zip(widths, layers, kernels):
        n += prev * c + 2 * c + L * block(c, k)  # conv_i (conv0: 64 -> 64), bn_i, blocks
        prev = c
    return n + 2048 * classes + classes


@pytest.mark.parametrize("depth,layers,published", [
    (10, (2, 1, 2, 4, 1), (10.5e6, 11.8e6)), (15, (3, 2, 3, 5, 2), (14.1e6, 16.2e6)),
    (19, (3, 3, 4, 6, 3), (17.6e6, 20.5e6))])
def test_san_parameter_counts_equal_the_reference_code(depth, layers, published):
    for sa_type, name, pub in ((0, "pairwise", published[0]), (1, "patchwise", published[1])):
        ours = sum(p.numel() for p in create_model(f"san{depth}-{name}").parameters())
        ref = _reference_san_params(sa_type, layers)
        assert ours == ref
        assert round(ours / 1e5) == round(pub / 1e5)  # the README's 10.5M, 11.8M, ... to its last digit


def test_pinned_parameter_counts_224():
    counts = {n: sum(p.numel() for p in create_model(n).parameters()) for n in SAN_NAMES}
    assert counts == {
        "san10-pairwise": 10_531_848, "san10-patchwise": 11_841_124, "san10-acmix": 11_994_612,
        "san15-pairwise": 14_065_436, "san15-patchwise": 16_181_310, "san15-acmix": 16_414_134,
        "san19-pairwise": 17_596_156, "san19-patchwise": 20_518_470, "san19-acmix": 20_829_278}
    # SAN-ACmix = patchwise + per block: light FC (2 + 4) x 9, multigroup kernels (c/4) x 81, alpha, beta
    for d in (10, 15, 19):
        m = create_model(f"san{d}-acmix")
        extra = sum(6 * 9 + (b.sam.out_planes * 81) + 2 for i in range(5) for b in getattr(m, f"layer{i}"))
        assert counts[f"san{d}-acmix"] - counts[f"san{d}-patchwise"] == extra


@pytest.mark.parametrize("op", ["pairwise", "patchwise", "acmix"])
def test_small_stem_fashion_mnist_shapes_and_paths(op):
    torch.manual_seed(8)
    m = create_model(f"san10-{op}", **{**TINY, "img_size": 28})
    x = torch.randn(2, 1, 28, 28)
    y = m(x)
    assert y.shape == (2, 5)
    y.sum().backward()
    assert m.final_map == 1 and m.kernels_used == [3, 3, 7, 7, 7, 5, 5, 5, 5, 1]  # maps 28, 14, 7, 3, 1
    names = dict(m.named_modules())
    for p in ("layer0.0.sam.stage1", "layer0.0.sam.stage2.attention", "layer4.0.sam.stage2"):
        assert p in names
    assert ("layer3.3.sam.stage2.conv" in names) == (op == "acmix")


def test_whole_network_fast_equals_reference():
    torch.manual_seed(9)
    for name in ("san10-pairwise", "san10-acmix"):
        m = create_model(name, **TINY).double().eval()
        x = torch.randn(2, 1, 16, 16, dtype=torch.float64)
        y_fast = m(x)
        y_ref = set_stage2_impl(m, "reference")(x)
        set_stage2_impl(m, "fast")
        torch.testing.assert_close(y_fast, y_ref, rtol=1e-10, atol=1e-12)


def test_acmix_on_pairwise_and_overrides():
    m = create_model("san10-acmix", sa_type="pairwise", shift="tensor", mixing="half", **TINY)
    assert m.sa_type == "pairwise" and m.layer1[0].sam.stage2.conv.shift.shift == "tensor"
    assert m(torch.randn(2, 1, 16, 16)).shape == (2, 5)
    w = create_model("san10-patchwise", width_mult=0.25, stem="small", img_size=16).widths
    assert w == [32, 64, 128, 256, 512]
