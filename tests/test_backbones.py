"""Backbones: shapes, module paths, published parameter counts, shape policies, gradients,
fast == reference Stage II inside whole networks."""
import pytest
import torch

from modules import create_model, set_stage2_impl
from modules.backbones import ResNet, SwinTransformer, clamp_kernel_att

TINY = dict(stem="small", in_chans=1, img_size=16, num_classes=5, widths=[4, 8, 8, 8])


@pytest.mark.parametrize("op", ["conv", "dconv", "sa", "acmix"])
def test_resnet_small_stem_every_operator(op):
    torch.manual_seed(0)
    m = create_model(f"resnet26-{op}", **TINY)
    y = m(torch.randn(2, 1, 16, 16))
    assert y.shape == (2, 5)
    names = dict(m.named_modules())
    # the operator is the bottleneck's conv2 with its two stages as children
    for path in ("layer1.0.conv2.stage1", "layer1.0.conv2.stage2", "layer3.3.conv2.stage1", "layer4.0.conv2.stage2"):
        assert path in names, path
    assert sum(1 for n in names if n.endswith(".conv2")) == 1 + 2 + 4 + 1


def test_fashion_mnist_shape_28px_one_channel():
    m = create_model("resnet26-acmix", stem="small", in_chans=1, img_size=28, num_classes=10, widths=[4, 4, 8, 8])
    assert m(torch.randn(1, 1, 28, 28)).shape == (1, 10)
    assert m.final_map == 4  # 28 -> 28, 14, 7, 4


def test_kernel_att_clamped_for_small_maps():
    from modules import LocalSelfAttention
    assert [clamp_kernel_att(7, s) for s in (1, 2, 3, 4, 8)] == [1, 3, 5, 7, 7]
    # 8 px: maps entering the ops are 8 | 8, 4 | 4, 2, 2, 2 | 2 (a stride-2 op sees its input map)
    m = create_model("resnet26-sa", **{**TINY, "img_size": 8})
    assert m.kernel_atts == [7, 7, 7, 7, 3, 3, 3, 3]
    assert [b.conv2.stage2.attention.kernel_att for b in m.layer3] == [7, 3, 3, 3]
    assert m(torch.randn(2, 1, 8, 8)).shape == (2, 5)
    with pytest.raises(ValueError, match="kernel_att <= 3"):  # what the rule avoids
        LocalSelfAttention(8, 8, 7, 4)(torch.randn(1, 8, 2, 2))


def test_blocks_per_stage():
    for name, depths in (("resnet26", (1, 2, 4, 1)), ("resnet38", (2, 3, 5, 2)), ("resnet50", (3, 4, 6, 3))):
        m = create_model(f"{name}-conv", **TINY)
        assert tuple(len(getattr(m, f"layer{i}")) for i in range(1, 5)) == depths


def test_resnet50_conv_matches_torchvision_parameter_count():
    import torchvision
    ours = sum(p.numel() for p in create_model("resnet50-conv").parameters())
    ref = sum(p.numel() for p in torchvision.models.resnet50().parameters())
    assert ours == ref == 25_557_032


def test_published_parameter_counts_close():
    # SASA ResNet-26 (10.3M), ACmix ResNet-50 (18.6M, docs/operators.md); within 3 %
    for name, published in (("resnet26-sa", 10.3e6), ("resnet50-acmix", 18.6e6), ("resnet26-acmix", 10.6e6)):
        n = sum(p.numel() for p in create_model(name).parameters())
        assert abs(n - published) / published < 0.03, (name, n)


def test_swin_t_matches_torchvision_parameter_count():
    import torchvision
    ours = create_model("swin_t-sa")
    ref = sum(p.numel() for p in torchvision.models.swin_t().parameters())
    assert sum(p.numel() for p in ours.parameters()) == ref
    assert ours.windows == [7, 7, 7, 7] and ours.stage_maps == [56, 28, 14, 7]
    assert "layers.2.blocks.5.attn.stage2" in dict(ours.named_modules())
    assert ours.layers[0].blocks[1].attn.shift_size == 3 and ours.layers[3].blocks[1].attn.shift_size == 0


@pytest.mark.parametrize("op", ["sa", "acmix"])
def test_swin_small_config_forward(op):
    m = create_model(f"swin_micro-{op}", in_chans=1, num_classes=4)
    assert m.windows == [4, 4, 4, 2]  # last map 2x2 <= window: window = map, no shift
    assert m(torch.randn(2, 1, 32, 32)).shape == (2, 4)


def test_swin_shape_errors_at_construction():
    with pytest.raises(ValueError, match=r"window_size=7 does not divide the 50x50 token map of stage 1"):
        create_model("swin_t-acmix", img_size=200)
    with pytest.raises(ValueError, match=r"patch merging after stage 2 needs an even token map, got 7x7"):
        create_model("swin_micro-sa", img_size=28, window_size=7)
    with pytest.raises(ValueError, match=r"img_size=30 is not a multiple of patch_size=4"):
        create_model("swin_t-sa", img_size=30)
    m = create_model("swin_micro-sa")
    with pytest.raises(ValueError, match=r"built for input \(B, 3, 32, 32\), got \(1, 3, 64, 64\)"):
        m(torch.randn(1, 3, 64, 64))


def test_resnet_bad_arguments():
    with pytest.raises(ValueError, match="widths must be 4"):
        ResNet((1, 1, 1, 1), "conv", widths=[8, 8])
    with pytest.raises(ValueError, match="unknown stem"):
        ResNet((1, 1, 1, 1), "conv", stem="tiny")
    with pytest.raises(ValueError, match="divisible by head"):
        create_model("resnet26-acmix", widths=[6, 8, 8, 8], stem="small", img_size=16)
    with pytest.raises(ValueError, match=r"expected input \(B, 1, H, W\)"):
        create_model("resnet26-conv", **TINY)(torch.randn(1, 3, 16, 16))


@pytest.mark.parametrize("name", ["resnet26-acmix", "swin_micro-acmix"])
def test_every_parameter_gets_a_gradient(name):
    kw = TINY if name.startswith("resnet") else dict(in_chans=1, num_classes=5, img_size=16, depths=(1, 2))
    m = create_model(name, **kw)
    m(torch.randn(2, 1, 16, 16)).sum().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None]
    assert not missing  # DDP needs no unused parameters


@pytest.mark.parametrize("name", ["resnet26-acmix", "resnet26-sa", "swin_micro-acmix"])
def test_whole_network_fast_equals_reference_float64(name):
    kw = TINY if name.startswith("resnet") else dict(in_chans=1, num_classes=5, img_size=16, depths=(1, 2))
    torch.manual_seed(0)
    m = create_model(name, **kw).double().eval()
    with torch.no_grad():  # non-trivial weights everywhere (bn3 starts at zero)
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.randn(2, 1, 16, 16, dtype=torch.float64, requires_grad=True)
    fast = m(x)
    g_fast, = torch.autograd.grad(fast.sum(), x)
    set_stage2_impl(m, "reference")
    ref = m(x)
    g_ref, = torch.autograd.grad(ref.sum(), x)
    assert torch.allclose(fast, ref, atol=1e-10, rtol=0)
    assert torch.allclose(g_fast, g_ref, atol=1e-10, rtol=0)


def test_swin_micro_is_swin_transformer():
    assert isinstance(create_model("swin_micro-sa"), SwinTransformer)
