"""The attention-based operators: local and window self-attention, and ACmix in
its sliding-window (ResNet) and window (Swin) forms.

Every operator holds `stage1` (the 1x1 projections) and `stage2` (a container
with the aggregation paths `attention` and/or `conv`, and for ACmix the mixing
weights `alpha`, `beta`). Anything else (Swin's output projection `proj`) is
"other" for per-stage accounting.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import _checks
from ._fast.acmix_stage2 import acmix_stage2, applies as stage2_node_applies
from ._fast.conv_path import grouped_conv, kernel_backend as conv_kernel_backend
from .local_attention import LocalAttentionPath, QKVProjection, check_window
from .names import MIXING_MODES, SHIFT_IMPLS, STAGE2_IMPLS
from .pointwise import pointwise_conv
from .shift import ShiftAggregation, shift_aggregate_reference
from .window_attention import (TokenQKV, WindowAttentionPath, check_window_args, check_windows,
                               tokens_to_map)

_MIXING_ALIASES = {(1.0, 0.0): "att", (0.0, 1.0): "conv", (0.5, 0.5): "half"}


def parse_mixing(mixing) -> str:
    """Canonical mixing name from a name, an "a,b" string or an (a, b) pair."""
    if isinstance(mixing, str) and mixing in MIXING_MODES:
        return mixing
    try:
        pair = tuple(float(t) for t in (mixing.split(",") if isinstance(mixing, str) else mixing))
    except (TypeError, ValueError):
        pair = None
    if pair in _MIXING_ALIASES:
        return _MIXING_ALIASES[pair]
    raise ValueError(f"unknown mixing {mixing!r}; allowed: {', '.join(MIXING_MODES)} "
                     f"(or the pairs (1,0), (0,1), (0.5,0.5))")


class Stage2(nn.Module):
    """Container for the Stage II paths and, for two paths, their mixing.

    Fixed mixings build only the paths they use, so no parameter sits unused
    (DDP) and counted costs are the costs that run.
    """

    def __init__(self, attention: nn.Module | None = None, conv: nn.Module | None = None,
                 mixing: str | None = None, mix_init: float = 0.5):
        super().__init__()
        if attention is not None:
            self.attention = attention
        if conv is not None:
            self.conv = conv
        self.mixing = mixing
        if mixing == "learnable":
            self.alpha = nn.Parameter(torch.full((1,), float(mix_init)))
            self.beta = nn.Parameter(torch.full((1,), float(mix_init)))
        elif mixing is not None:
            a, b = MIXING_MODES[mixing]
            self.register_buffer("alpha", torch.tensor([a]), persistent=False)
            self.register_buffer("beta", torch.tensor([b]), persistent=False)

    def mix(self, att: torch.Tensor | None, conv: torch.Tensor | None) -> torch.Tensor:
        if self.mixing in (None, "att") or conv is None:
            return att
        if self.mixing == "conv" or att is None:
            return conv
        return self.alpha.to(att.dtype) * att + self.beta.to(conv.dtype) * conv

    def extra_repr(self) -> str:
        return f"mixing={self.mixing!r}" if self.mixing else ""


class ConvPath(nn.Module):
    """ACmix convolution path: light FC 3N -> k^2 over the stacked q, k, v, then shift-aggregate.

    Input (B, 3N, d, H, W), index t*N + n for t in (q, k, v). The FC output
    (B, k^2, d, H, W) is reordered to (B, d*k^2, H, W), channel i*k^2 + j, and
    aggregated by `shift` into (B, N*d, H', W'), channel i*N + n.
    `in_groups` (default 3N) is the number of d-channel maps the light FC mixes (SAN-ACmix: 2 + N).
    """

    def __init__(self, heads: int, head_dim: int, kernel_conv: int = 3, stride: int = 1,
                 fc_bias: bool = False, shift: str = "multigroup", impl: str = "fast", in_groups: int | None = None):
        super().__init__()
        _checks.choice("Stage II implementation", impl, STAGE2_IMPLS)
        self.heads, self.head_dim, self.kernel_conv, self.impl = heads, head_dim, kernel_conv, impl
        self.in_groups = 3 * heads if in_groups is None else _checks.positive_int("in_groups", in_groups)
        self.fc = nn.Conv2d(self.in_groups, kernel_conv ** 2, 1, bias=fc_bias)
        self.shift = ShiftAggregation(head_dim, kernel_conv, copies=heads, stride=stride, shift=shift)

    def forward(self, f_all: torch.Tensor) -> torch.Tensor:
        B, T, d, H, W = f_all.shape
        k2 = self.kernel_conv ** 2
        if self.impl == "reference":
            y = torch.einsum("kt,btdhw->bkdhw", self.fc.weight.reshape(k2, T).to(f_all.dtype), f_all)
            if self.fc.bias is not None:
                y = y + self.fc.bias.to(f_all.dtype).view(1, k2, 1, 1, 1)
            y = y.permute(0, 2, 1, 3, 4).reshape(B, d * k2, H, W)
            w = self.shift.full_weight()
            return shift_aggregate_reference(y, self.kernel_conv, self.heads, self.shift.stride,
                                             None if w is None else w.to(y.dtype))
        if self.fuses(H, W):
            # Light FC and grouped conv fused (exact: both are linear and the FC has no bias):
            # W'[i*N+n, t] = sum_j W[i*N+n, j] fc[j, t], one grouped conv (groups = d, 3N -> N per
            # group) on (B, d*3N, H, W): no (B, d*k^2, H, W) intermediate, never more MACs (fuses()).
            # grouped_conv reads f_all in place (C++ kernel, modules/_fast/conv_path.cpp); its
            # pure-PyTorch twin (other devices/dtypes, tracing, no compiler) is F.conv2d on a
            # channels-last copy
            return grouped_conv(f_all, self.fused_weight(f_all.dtype), self.shift.stride)
        fc_w = self.fc.weight.to(f_all.dtype)
        fc_b = None if self.fc.bias is None else self.fc.bias.to(f_all.dtype)
        if self.shift.shift == "multigroup" and self.shift.impl == "fast" and conv_kernel_backend(f_all) == "cpp":
            # unfused, C++ kernel: the FC output (B, k^2, d, H, W) is already the kernel's grouped
            # layout (group i = [:, :, i]): no reorder copy
            y = pointwise_conv(f_all.reshape(B, T, d, H * W), fc_w, fc_b)
            return grouped_conv(y.view(B, k2, d, H, W), self.shift.weight.to(f_all.dtype), self.shift.stride)
        y = F.conv2d(f_all.reshape(B, T, d, H * W), fc_w, fc_b)
        y = y.reshape(B, k2, d, H, W).transpose(1, 2).reshape(B, d * k2, H, W)
        return self.shift(y)

    def fused_weight(self, dtype) -> torch.Tensor:
        """(d*N, T, k, k): the light FC folded into the grouped conv (see forward; valid where fuses())."""
        k, N, d, k2 = self.kernel_conv, self.heads, self.head_dim, self.kernel_conv ** 2
        T = self.in_groups
        wg = self.shift.weight.to(dtype).reshape(d * N, k2, k * k)
        fused = torch.einsum("ojs,jt->ots", wg, self.fc.weight.to(dtype).reshape(k2, T))
        return fused.reshape(d * N, T, k, k)

    def fuses(self, H: int, W: int) -> bool:
        """Whether the fast path folds the light FC into the grouped conv for an H x W input.

        Exact only without FC bias and with per-output kernels ("multigroup"); taken only where
        it costs no more MACs than FC + grouped conv, so matched-FLOPs budgets never grow:
        fused T * d*N * k^2 * H'W'  <=  FC T * k^2 * d * HW + grouped conv d*N * k^2 * k^2 * H'W' (T = in_groups).
        """
        if self.impl != "fast" or self.shift.impl != "fast" or self.fc.bias is not None \
                or self.shift.shift != "multigroup":
            return False
        s, N, k2, T = self.shift.stride, self.heads, self.kernel_conv ** 2, self.in_groups
        out_px = ((H - 1) // s + 1) * ((W - 1) // s + 1)
        return T * N * out_px <= T * H * W + N * k2 * out_px

    def extra_repr(self) -> str:
        return f"heads={self.heads}, d={self.head_dim}, kernel_conv={self.kernel_conv}, impl={self.impl!r}"


def _check_conv_args(in_planes, out_planes, head, kernel_att, kernel_conv, stride, dilation, shift):
    _checks.positive_int("in_planes", in_planes)
    _checks.positive_int("out_planes", out_planes)
    _checks.positive_int("head", head)
    _checks.odd_kernel("kernel_att", kernel_att)
    _checks.odd_kernel("kernel_conv", kernel_conv)
    _checks.positive_int("stride", stride)
    _checks.positive_int("dilation", dilation)
    _checks.divisible("out_planes", out_planes, "head", head)
    _checks.choice("shift implementation", shift, SHIFT_IMPLS)


class LocalSelfAttention(nn.Module):
    """Pure sliding-window self-attention (SASA-style, the ACmix attention path on its own)."""

    def __init__(self, in_planes: int, out_planes: int, kernel_att: int = 7, head: int = 4,
                 stride: int = 1, dilation: int = 1):
        super().__init__()
        _check_conv_args(in_planes, out_planes, head, kernel_att, 3, stride, dilation, "tensor")
        self.in_planes, self.out_planes, self.head, self.stride = in_planes, out_planes, head, stride
        self.stage1 = QKVProjection(in_planes, out_planes)
        self.stage2 = Stage2(attention=LocalAttentionPath(out_planes, head, kernel_att, stride, dilation))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _checks.input_4d(type(self).__name__, x, self.in_planes)
        path = self.stage2.attention
        check_window(type(self).__name__, x.shape[-2], x.shape[-1], path.kernel_att, path.dilation)
        qkv = self.stage1(x)
        if self.stage2_one_node(qkv):  # one autograd node, one gradient buffer (modules/_fast/acmix_stage2.py)
            return acmix_stage2(qkv, path.pe.weight, path.pe.bias, None, None, None, path.heads, path.kernel_att,
                                path.stride, path.dilation)
        return path(qkv)

    def stage2_one_node(self, qkv: torch.Tensor) -> bool:
        """Whether the attention runs as the one-node Stage II (CPU C++ kernel) for this Stage I output."""
        return self.stage2.attention.impl == "fast" and stage2_node_applies(qkv, conv=False)

    def extra_repr(self) -> str:
        return f"{self.in_planes} -> {self.out_planes}, head={self.head}, stride={self.stride}"


class ACmix(nn.Module):
    """ACmix, sliding-window form (ResNet-ACmix), docs/operators.md section 4.

    G = alpha * attention(q, k, v) + beta * conv(q, k, v), alpha = beta = 0.5 at init.
    `shift` picks the conv path's shift implementation (the release: "multigroup").
    """

    def __init__(self, in_planes: int, out_planes: int, kernel_att: int = 7, head: int = 4,
                 kernel_conv: int = 3, stride: int = 1, dilation: int = 1, shift: str = "multigroup",
                 mixing="learnable"):
        super().__init__()
        _check_conv_args(in_planes, out_planes, head, kernel_att, kernel_conv, stride, dilation, shift)
        mixing = parse_mixing(mixing)
        self.in_planes, self.out_planes, self.head, self.stride = in_planes, out_planes, head, stride
        self.kernel_att, self.kernel_conv, self.dilation = kernel_att, kernel_conv, dilation
        d = out_planes // head
        self.stage1 = QKVProjection(in_planes, out_planes)
        att = None if mixing == "conv" else LocalAttentionPath(out_planes, head, kernel_att, stride, dilation)
        conv = None if mixing == "att" else ConvPath(head, d, kernel_conv, stride, fc_bias=False, shift=shift)
        self.stage2 = Stage2(att, conv, mixing, mix_init=0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _checks.input_4d("ACmix", x, self.in_planes)
        B, _, H, W = x.shape
        qkv = self.stage1(x)
        s2 = self.stage2
        att = None
        if hasattr(s2, "attention"):
            check_window("ACmix", H, W, self.kernel_att, self.dilation)
            if self.stage2_one_node(qkv):
                # both paths and the mixing as one autograd node (modules/_fast/acmix_stage2.py): one
                # gradient buffer for qkv; the separate paths below stay its reference
                a = s2.attention
                if not hasattr(s2, "conv"):  # mixing (1, 0): the attention path alone
                    return acmix_stage2(qkv, a.pe.weight, a.pe.bias, None, None, None, self.head,
                                        self.kernel_att, self.stride, self.dilation)
                return acmix_stage2(qkv, a.pe.weight, a.pe.bias, s2.conv.fused_weight(qkv.dtype), s2.alpha,
                                    s2.beta, self.head, self.kernel_att, self.stride, self.dilation)
            att = s2.attention(qkv)
        conv = s2.conv(qkv.view(B, 3 * self.head, self.out_planes // self.head, H, W)) if hasattr(s2, "conv") else None
        return s2.mix(att, conv)

    def stage2_one_node(self, qkv: torch.Tensor) -> bool:
        """Whether Stage II runs as the one fused autograd node for this Stage I output (CPU C++ kernels)."""
        s2 = self.stage2
        if not hasattr(s2, "attention") or s2.attention.impl != "fast":
            return False
        if not hasattr(s2, "conv"):  # mixing "att"
            return stage2_node_applies(qkv, conv=False)
        if s2.mixing in (None, "att", "conv") or not s2.conv.fuses(qkv.shape[-2], qkv.shape[-1]):
            return False
        return stage2_node_applies(qkv)

    def extra_repr(self) -> str:
        return (f"{self.in_planes} -> {self.out_planes}, head={self.head}, kernel_att={self.kernel_att}, "
                f"kernel_conv={self.kernel_conv}, stride={self.stride}")


class WindowSelfAttention(nn.Module):
    """Swin W-MSA / SW-MSA on tokens (B, H, W, C); cyclic shift by `shift_size` inside.

    forward(x, H=None, W=None, mask=None): x is (B, H, W, C) or (B, H*W, C); the
    output has the input's layout. A given `mask` (num_windows, M^2, M^2) replaces
    the one built from shift_size (the release's convention: caller shifts and masks).
    """

    def __init__(self, dim: int, window_size: int = 7, num_heads: int = 4, shift_size: int = 0,
                 qkv_bias: bool = True, qk_scale: float | None = None):
        super().__init__()
        if isinstance(window_size, (tuple, list)):
            if len(set(window_size)) != 1:
                raise ValueError(f"window_size must be square, got {tuple(window_size)}")
            window_size = window_size[0]
        check_window_args(dim, window_size, num_heads, shift_size)
        self.dim, self.window_size, self.num_heads, self.shift_size = dim, window_size, num_heads, shift_size
        self.stage1 = TokenQKV(dim, qkv_bias)
        self.stage2 = self._make_stage2(WindowAttentionPath(dim, window_size, num_heads, qk_scale))
        self.proj = nn.Linear(dim, dim)

    def _make_stage2(self, attention):
        return Stage2(attention=attention)

    def _attention(self, qkv, mask):
        shift = self.shift_size if mask is None else 0
        return self.proj(self.stage2.attention(qkv, mask=mask, shift=shift))

    def _conv(self, qkv):
        return None

    def forward(self, x: torch.Tensor, H: int | None = None, W: int | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        name = type(self).__name__
        x, flat = tokens_to_map(name, x, self.dim, H, W)
        B, H, W, C = x.shape
        check_windows(name, H, W, self.window_size)
        s = self.shift_size
        if s:
            x = torch.roll(x, shifts=(-s, -s), dims=(1, 2))
        qkv = self.stage1(x)
        out = self.stage2.mix(self._attention(qkv, mask), self._conv(qkv))
        if s:
            out = torch.roll(out, shifts=(s, s), dims=(1, 2))
        return out.reshape(B, H * W, C) if flat else out

    def extra_repr(self) -> str:
        return f"dim={self.dim}, window_size={self.window_size}, num_heads={self.num_heads}, shift_size={self.shift_size}"


class WindowACmix(WindowSelfAttention):
    """ACmix, window form (Swin-ACmix), docs/operators.md section 5.

    Output = alpha * proj(window attention) + beta * conv path (kernel 3, FC with
    bias); alpha = beta = 0.5 at init (mix_init), as the release initialises its two
    rates (its helper is named `ones` but fills 0.5). In shifted blocks both paths see the
    cyclically shifted tokens; the conv path bypasses the output projection.
    """

    def __init__(self, dim: int, window_size: int = 7, num_heads: int = 4, shift_size: int = 0,
                 qkv_bias: bool = True, qk_scale: float | None = None, shift: str = "multigroup",
                 mixing="learnable", kernel_conv: int = 3, mix_init: float = 0.5):
        _checks.choice("shift implementation", shift, SHIFT_IMPLS)
        _checks.odd_kernel("kernel_conv", kernel_conv)
        self._mixing, self._shift, self._kernel_conv, self._mix_init = parse_mixing(mixing), shift, kernel_conv, mix_init
        super().__init__(dim, window_size, num_heads, shift_size, qkv_bias, qk_scale)
        if self._mixing == "conv":
            del self.proj  # the conv path bypasses the projection: it would be an unused parameter

    def _make_stage2(self, attention):
        m = self._mixing
        conv = None if m == "att" else ConvPath(self.num_heads, self.dim // self.num_heads, self._kernel_conv,
                                                 1, fc_bias=True, shift=self._shift)
        return Stage2(None if m == "conv" else attention, conv, m, mix_init=self._mix_init)

    def _attention(self, qkv, mask):
        return super()._attention(qkv, mask) if hasattr(self.stage2, "attention") else None

    def _conv(self, qkv):
        if not hasattr(self.stage2, "conv"):
            return None
        B, H, W, C3 = qkv.shape
        N = self.num_heads
        f_all = qkv.reshape(B, H, W, 3 * N, C3 // (3 * N)).permute(0, 3, 4, 1, 2)  # (B, 3N, d, H, W)
        return self.stage2.conv(f_all).permute(0, 2, 3, 1)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", mixing={self._mixing!r}, shift={self._shift!r}"


def set_stage2_impl(model: nn.Module, impl: str) -> nn.Module:
    """Switch every Stage II path in `model` to "fast" or "reference" (in place)."""
    _checks.choice("Stage II implementation", impl, STAGE2_IMPLS)
    for m in model.modules():
        if hasattr(m, "impl") and m.__class__.__module__.startswith(__package__):
            m.impl = impl
    return model
