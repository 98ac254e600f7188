"""Registry: names, overrides, errors."""
import pytest

from modules import ACmix, WindowACmix, create_model, list_models, model_spec


def test_all_names():
    names = list_models()
    for bb in ("resnet26", "resnet38", "resnet50"):
        for op in ("conv", "dconv", "sa", "acmix"):
            assert f"{bb}-{op}" in names
    for bb in ("swin_t", "swin_s", "swin_mini", "swin_micro"):
        for op in ("sa", "acmix"):
            assert f"{bb}-{op}" in names
    assert list_models("resnet38-*") == ["resnet38-acmix", "resnet38-conv", "resnet38-dconv", "resnet38-sa"]


def test_model_spec():
    s = model_spec("resnet50-acmix")
    assert (s["family"], s["backbone"], s["op"], tuple(s["depths"])) == ("resnet", "resnet50", "acmix", (3, 4, 6, 3))
    assert model_spec("swin_s-sa")["depths"] == (2, 2, 18, 2)


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match=r"unknown model 'resnet27-conv'; valid names: resnet26-acmix, .*swin_t-sa"):
        create_model("resnet27-conv")


def test_unknown_override():
    with pytest.raises(ValueError, match=r"unknown override\(s\) window_size; allowed: .*kernel_att"):
        create_model("resnet26-conv", window_size=7)
    with pytest.raises(ValueError, match=r"unknown override\(s\) kernel_att"):
        create_model("swin_t-sa", kernel_att=7)


SMALL = dict(stem="small", img_size=16, widths=[8, 8, 8, 8])


def test_resnet_overrides_reach_every_operator():
    m = create_model("resnet26-acmix", shift="tensor", mixing="half", heads=2, kernel_att=5, num_classes=7,
                     in_chans=2, **SMALL)
    ops = [x for x in m.modules() if isinstance(x, ACmix)]
    assert len(ops) == 8
    assert all(o.stage2.conv.shift.shift == "tensor" and o.stage2.mixing == "half" and o.head == 2
               and o.kernel_att == 5 for o in ops)
    assert m.fc.out_features == 7 and m.stem[0].in_channels == 2 and m.stem[0].stride == (1, 1)
    att_only = create_model("resnet26-acmix", mixing="att", **SMALL)
    assert not any(hasattr(o.stage2, "conv") for o in att_only.modules() if isinstance(o, ACmix))


def test_width_mult_rounds_to_heads():
    m = create_model("resnet26-acmix", width_mult=0.1, stem="small", img_size=16)
    assert m.widths == [8, 12, 24, 52]  # 6.4, 12.8, 25.6, 51.2 -> multiples of 4 heads
    assert create_model("resnet26-conv", width_mult=0.5, stem="small", img_size=16).widths == [32, 64, 128, 256]
    assert create_model("resnet26-conv").stem[0].kernel_size == (7, 7)


def test_swin_overrides():
    m = create_model("swin_micro-acmix", widths=16, heads=2, shift="fixed", mixing="learnable", num_classes=3)
    assert m.embed_dim == 16 and m.head.out_features == 3
    ops = [x for x in m.modules() if isinstance(x, WindowACmix)]
    assert [o.num_heads for o in ops] == [2, 4, 8, 8, 16]
    assert all(o.stage2.conv.shift.shift == "fixed" for o in ops)
    small = create_model("swin_t-sa", stem="small", img_size=56, depths=(2, 2))
    assert small.stage_maps == [28, 14] and small.windows == [7, 7]
    assert create_model("swin_micro-sa", width_mult=2.0).embed_dim == 48
