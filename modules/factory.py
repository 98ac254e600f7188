"""`create_op(kind, in_channels, out_channels, ...)`: any operator of the suite by name.

The backbones, `acmix-bench flops`, `speed` and `demo` all build their operators here,
so a name means the same module everywhere. Kinds (see modules/names.py):

    conv          Conv(in, out, kernel_conv, stride, bias)
    dconv         DecomposedConv(in, out, kernel_conv, stride, bias, shift)
    sa            LocalSelfAttention(in, out, kernel_att, heads, stride)
    acmix         ACmix(in, out, kernel_att, heads, kernel_conv, stride, shift, mixing)
    window-sa     WindowSelfAttention(out, window, heads, shift_size)
    window-acmix  WindowACmix(out, window, heads, shift_size, shift, mixing, kernel_conv)

The aliases swin-sa and swin-acmix name the window kinds. Options an operator
does not have are ignored (a `bias` for attention, a `window` for conv), but
`shift` and `mixing` are always checked so a misspelt name never passes
silently. The window kinds keep the token map: in_channels must equal
out_channels and stride must be 1.
"""
from __future__ import annotations

import torch.nn as nn

from . import _checks
from .conv import Conv, DecomposedConv
from .names import OPERATOR_KINDS, SHIFT_IMPLS, TOKEN_KINDS, canonical_op
from .operators import ACmix, LocalSelfAttention, WindowACmix, WindowSelfAttention, parse_mixing

__all__ = ["OPERATOR_KINDS", "create_op"]


def create_op(kind: str, in_channels: int, out_channels: int, *, stride: int = 1, heads: int = 4,
              kernel_att: int = 7, kernel_conv: int = 3, shift: str | None = None, mixing="learnable",
              window: int = 7, shift_size: int = 0, bias: bool = False) -> nn.Module:
    """One operator by kind (module docstring). shift None: the operator's own default (tensor for
    dconv; multigroup, the release's form, for the ACmix kinds). heads is the attention head count
    (ACmix's head groups of the conv path too); kernel_att the sliding window; window and shift_size
    the Swin window and cyclic shift."""
    kind = canonical_op(kind)
    if shift is not None:
        _checks.choice("shift implementation", shift, SHIFT_IMPLS)
    mixing = parse_mixing(mixing)
    if kind in TOKEN_KINDS:
        if in_channels != out_channels:
            raise ValueError(f"{kind} keeps the width: in_channels ({in_channels}) must equal "
                             f"out_channels ({out_channels})")
        if stride != 1:
            raise ValueError(f"{kind} has no stride (it keeps the token map); use stride 1, got {stride}")
    with_shift = {} if shift is None else {"shift": shift}
    if kind == "conv":
        return Conv(in_channels, out_channels, kernel_conv, stride=stride, bias=bias)
    if kind == "dconv":
        return DecomposedConv(in_channels, out_channels, kernel_conv, stride=stride, bias=bias, **with_shift)
    if kind == "sa":
        return LocalSelfAttention(in_channels, out_channels, kernel_att=kernel_att, head=heads, stride=stride)
    if kind == "acmix":
        return ACmix(in_channels, out_channels, kernel_att=kernel_att, head=heads, kernel_conv=kernel_conv,
                     stride=stride, mixing=mixing, **with_shift)
    if kind == "window-sa":
        return WindowSelfAttention(out_channels, window, heads, shift_size=shift_size)
    return WindowACmix(out_channels, window, heads, shift_size=shift_size, mixing=mixing, kernel_conv=kernel_conv,
                       **with_shift)
