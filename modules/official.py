"""Port weights of the authors' public ACmix release into the suite's operators.

    from modules import from_official
    op = from_official(state_dict, "resnet", in_planes=64, out_planes=64, kernel_att=7,
                       head=4, kernel_conv=3, stride=1)
    op = from_official(state_dict, "swin", dim=96, window_size=7, num_heads=3)

`state_dict` is the state of one release module (ResNet `ACmix` or Swin
`WindowAttention_acmix`); keys may carry a common prefix (e.g. taken from a
whole-model checkpoint with `prefix=`). The returned module computes the
release's forward for those weights (the Swin one takes tokens (B, H, W, C),
H, W and an optional mask, like the release).
"""
from __future__ import annotations

from collections.abc import Mapping

import torch

from .operators import ACmix, WindowACmix
from .window_attention import relative_position_index

LAYOUTS = ("resnet", "swin")


def _take(sd: Mapping, prefix: str, expected: dict[str, tuple]) -> dict[str, torch.Tensor]:
    got = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {missing}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected}")
        raise ValueError(f"from_official: state_dict does not match the release layout ({'; '.join(parts)}); "
                         f"expected exactly {list(expected)}" + (f" under prefix {prefix!r}" if prefix else ""))
    for k, shape in expected.items():
        if tuple(got[k].shape) != shape:
            raise ValueError(f"from_official: {prefix}{k} has shape {tuple(got[k].shape)}, expected {shape} "
                             f"for the shape arguments given")
    return got


def from_official(state_dict: Mapping, layout: str, prefix: str = "", **shape) -> torch.nn.Module:
    """The suite's operator carrying a release checkpoint's weights (see module doc)."""
    if layout == "resnet":
        return _from_resnet(state_dict, prefix, **shape)
    if layout == "swin":
        return _from_swin(state_dict, prefix, **shape)
    raise ValueError(f"unknown layout {layout!r}; allowed: {', '.join(LAYOUTS)}")


def _from_resnet(sd, prefix, in_planes, out_planes, kernel_att=7, head=4, kernel_conv=3, stride=1, dilation=1):
    op = ACmix(in_planes, out_planes, kernel_att, head, kernel_conv, stride, dilation,
               shift="multigroup", mixing="learnable")
    d, k2 = out_planes // head, kernel_conv ** 2
    expected = {"rate1": (1,), "rate2": (1,)}
    for i in (1, 2, 3):
        expected[f"conv{i}.weight"] = (out_planes, in_planes, 1, 1)
        expected[f"conv{i}.bias"] = (out_planes,)
    expected.update({"conv_p.weight": (d, 2, 1, 1), "conv_p.bias": (d,), "fc.weight": (k2, 3 * head, 1, 1),
                     "dep_conv.weight": (out_planes, k2, kernel_conv, kernel_conv)})
    w = _take(sd, prefix, expected)
    op = op.to(w["conv1.weight"].dtype)  # before copying, so no precision is lost on the way
    with torch.no_grad():
        op.stage1.qkv.weight.copy_(torch.cat([w["conv1.weight"], w["conv2.weight"], w["conv3.weight"]]))
        op.stage1.qkv.bias.copy_(torch.cat([w["conv1.bias"], w["conv2.bias"], w["conv3.bias"]]))
        op.stage2.attention.pe.weight.copy_(w["conv_p.weight"])
        op.stage2.attention.pe.bias.copy_(w["conv_p.bias"])
        op.stage2.conv.fc.weight.copy_(w["fc.weight"])
        op.stage2.conv.shift.weight.copy_(w["dep_conv.weight"])
        op.stage2.alpha.copy_(w["rate1"])
        op.stage2.beta.copy_(w["rate2"])
    return op


def _from_swin(sd, prefix, dim, window_size, num_heads, shift_size=0, qk_scale=None):
    M = window_size[0] if isinstance(window_size, (tuple, list)) else window_size
    op = WindowACmix(dim, M, num_heads, shift_size=shift_size, qk_scale=qk_scale,
                     shift="multigroup", mixing="learnable")
    expected = {"qkv.weight": (3 * dim, dim), "qkv.bias": (3 * dim,), "proj.weight": (dim, dim), "proj.bias": (dim,),
                "relative_position_bias_table": ((2 * M - 1) ** 2, num_heads),
                "relative_position_index": (M * M, M * M),
                "fc.weight": (9, 3 * num_heads, 1, 1), "fc.bias": (9,), "dep_conv.weight": (dim, 9, 3, 3),
                "rate1": (1,), "rate2": (1,)}
    w = _take(sd, prefix, expected)
    if not torch.equal(w["relative_position_index"].long().cpu(), relative_position_index(M)):
        raise ValueError("from_official: relative_position_index differs from Swin's for "
                         f"window_size={M}; the checkpoint was built with another window size")
    op = op.to(w["qkv.weight"].dtype)
    with torch.no_grad():
        op.stage1.qkv.weight.copy_(w["qkv.weight"])
        op.stage1.qkv.bias.copy_(w["qkv.bias"])
        op.proj.weight.copy_(w["proj.weight"])
        op.proj.bias.copy_(w["proj.bias"])
        op.stage2.attention.relative_position_bias_table.copy_(w["relative_position_bias_table"])
        op.stage2.conv.fc.weight.copy_(w["fc.weight"])
        op.stage2.conv.fc.bias.copy_(w["fc.bias"])
        op.stage2.conv.shift.weight.copy_(w["dep_conv.weight"])
        op.stage2.alpha.copy_(w["rate1"])
        op.stage2.beta.copy_(w["rate2"])
    return op
