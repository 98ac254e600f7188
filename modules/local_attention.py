"""Sliding-window (SASA-style) self-attention: the attention path of ResNet-ACmix.

Stage I: q, k, v 1x1 convs (with bias), run as one conv with 3 * C_out outputs
(channels [q | k | v], head n of each at n*d .. n*d+d-1).
Stage II: per head and output pixel p (every stride-th pixel), logits over the
k_a x k_a window (reflection padded, dilation spacing), softmax, weighted sum of
v. Positional encoding as in docs/operators.md section 4.

Two Stage II implementations with one signature:
  local_attention_reference  the formulas as written: unfolded keys, values and
                             positional encodings (k_a^2 x C x H x W tensors)
  local_attention_fast       the algebra of docs/operators.md: the positional term becomes
                             two extra query channels per head dotted with the
                             padded coordinate grid; no unfolded tensors
Policy for inputs the release crashes on:
  * odd H or W with stride 2 (any stride): output ceil(H / stride), the pixels
    0, s, 2s, ... as in the conv path; both paths agree in shape.
  * dilation > 1: true dilated windows (offsets spaced by `dilation`, padding
    dilation * (k_a - 1) / 2); the release pads for dilation but unfolds without it.
  * maps not larger than the padding: reflection is undefined there, so
    ValueError naming the constraint and the largest kernel_att that fits.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import _checks
from .pointwise import pointwise_conv
from .shift import STAGE2_IMPLS, out_size


def position_grid(H: int, W: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """(1, 2, H, W): channel 0 = linspace(-1, 1, W) along width, channel 1 = along height.
    Built in the caller's dtype and device (the release hard-codes float32 and .cuda())."""
    loc_w = torch.linspace(-1.0, 1.0, W, dtype=dtype, device=device).view(1, W).expand(H, W)
    loc_h = torch.linspace(-1.0, 1.0, H, dtype=dtype, device=device).view(H, 1).expand(H, W)
    return torch.stack([loc_w, loc_h]).unsqueeze(0)


def attention_padding(kernel_att: int, dilation: int) -> int:
    return dilation * (kernel_att - 1) // 2


def check_window(op: str, H: int, W: int, kernel_att: int, dilation: int) -> None:
    pad = attention_padding(kernel_att, dilation)
    if pad >= H or pad >= W:
        largest = 2 * ((min(H, W) - 1) // dilation) + 1
        raise ValueError(
            f"{op}: reflection padding {pad} (kernel_att={kernel_att}, dilation={dilation}) needs "
            f"H and W > {pad}, got {H}x{W}; use kernel_att <= {largest} for this map, or a larger input"
        )


def _reflect(x: torch.Tensor, pad: int) -> torch.Tensor:
    return F.pad(x, (pad, pad, pad, pad), mode="reflect") if pad else x


def local_attention_reference(q, k, v, pe_weight, pe_bias, heads: int, kernel_att: int,
                              stride: int = 1, dilation: int = 1) -> torch.Tensor:
    """docs/operators.md section 4 as written. q, k, v: (B, C, H, W), q not yet scaled.
    pe_weight (d, 2, 1, 1), pe_bias (d,) or None. Returns (B, C, H', W')."""
    B, C, H, W = q.shape
    N, ka, s = heads, kernel_att, stride
    d = C // N
    pad = attention_padding(ka, dilation)
    check_window("local attention", H, W, ka, dilation)
    Ho, Wo = out_size(H, s), out_size(W, s)
    scale = d ** -0.5

    grid = position_grid(H, W, q.dtype, q.device)
    pe = torch.einsum("dc,bchw->bdhw", pe_weight.reshape(d, 2).to(q.dtype), grid)
    if pe_bias is not None:
        pe = pe + pe_bias.to(q.dtype).view(1, d, 1, 1)

    def windows(t):  # (b, c, H, W) -> (b, c, k_a^2, H', W'): the reflection-padded neighbourhoods
        u = F.unfold(_reflect(t, pad), ka, dilation=dilation, stride=s)
        return u.view(t.shape[0], t.shape[1], ka * ka, Ho, Wo)

    q_att = (q * scale)[..., ::s, ::s].reshape(B, N, d, 1, Ho, Wo)
    k_win = windows(k).view(B, N, d, ka * ka, Ho, Wo)
    v_win = windows(v).view(B, N, d, ka * ka, Ho, Wo)
    pe_win = windows(pe).view(1, 1, d, ka * ka, Ho, Wo)
    pe_q = pe[..., ::s, ::s].reshape(1, 1, d, 1, Ho, Wo)

    logits = (q_att * (k_win + pe_q - pe_win)).sum(2)  # (B, N, k_a^2, H', W')
    weights = logits.softmax(dim=2)
    out = (weights.unsqueeze(2) * v_win).sum(3)  # (B, N, d, H', W')
    return out.reshape(B, C, Ho, Wo)


def local_attention_fast(q, k, v, pe_weight, pe_bias, heads: int, kernel_att: int,
                         stride: int = 1, dilation: int = 1) -> torch.Tensor:
    """Same result as the reference without any unfolded tensor.

    logits_j(p) = scale q[p].K[p+o_j] - (W_p^T scale q[p]).P~[p+o_j] + const(p); the
    constant (and pe_bias) leave the softmax. The windowed softmax-aggregation runs in
    modules/_fast (C++ kernel, or its pure-PyTorch twin) with a hand-written backward: the C++
    backward saves only q, padded k and padded v and recomputes the softmax weights block by
    block; the torch twin also saves the weights (B*N, k_a^2, H', W').
    """
    from ._fast import local_attention, split_phases

    B, C, H, W = q.shape
    N, ka, s, dil = heads, kernel_att, stride, dilation
    d = C // N
    pad = attention_padding(ka, dil)
    check_window("local attention", H, W, ka, dil)
    Ho, Wo = out_size(H, s), out_size(W, s)
    Hp, Wp = H + 2 * pad, W + 2 * pad
    scale = d ** -0.5
    dtype = orig_dtype = q.dtype
    if dtype not in (torch.float32, torch.float64) and q.device.type == "cpu":
        dtype = torch.float32  # CPU half/bfloat16 (autocast): compute in float32, return the input dtype
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)

    qs = (q[..., ::s, ::s] * scale).reshape(B, N, d, Ho, Wo)
    rq = -torch.einsum("bndhw,dc->bnchw", qs, pe_weight.reshape(d, 2).to(dtype))
    if pe_bias is not None:  # exact zero gradient, as in the reference (keeps the parameter in the graph)
        rq = rq + 0 * pe_bias.to(dtype).sum()
    q_ext = torch.cat([qs, rq], dim=2).reshape(B * N, d + 2, Ho, Wo)
    grid = split_phases(_reflect(position_grid(H, W, dtype, q.device), pad).reshape(2, Hp, Wp), s)
    kd = split_phases(_reflect(k, pad).reshape(B * N, d, Hp, Wp), s)
    vd = split_phases(_reflect(v, pad).reshape(B * N, d, Hp, Wp), s)
    out = local_attention(q_ext, kd, grid, vd, ka, dil)
    return out.reshape(B, C, Ho, Wo).to(orig_dtype)


LOCAL_ATTENTION_IMPLS = {"reference": local_attention_reference, "fast": local_attention_fast}


class QKVProjection(nn.Module):
    """Stage I of attention and ACmix: the three 1x1 convs q, k, v as one conv.

    Output (B, 3 * C_out, H, W) = [q | k | v]; `split` returns the three maps.
    """

    def __init__(self, in_planes: int, out_planes: int, bias: bool = True):
        super().__init__()
        self.in_planes, self.out_planes = in_planes, out_planes
        self.qkv = nn.Conv2d(in_planes, 3 * out_planes, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the 1x1 conv as one batched GEMM on CPU (modules/pointwise.py; same values as self.qkv(x))
        return pointwise_conv(x, self.qkv.weight, self.qkv.bias)


class LocalAttentionPath(nn.Module):
    """Stage II attention path: positional 1x1 conv (2 -> d) and windowed softmax aggregation."""

    def __init__(self, out_planes: int, heads: int, kernel_att: int = 7, stride: int = 1,
                 dilation: int = 1, impl: str = "fast"):
        super().__init__()
        _checks.choice("Stage II implementation", impl, STAGE2_IMPLS)
        self.out_planes, self.heads, self.kernel_att = out_planes, heads, kernel_att
        self.stride, self.dilation, self.impl = stride, dilation, impl
        self.head_dim = out_planes // heads
        self.pe = nn.Conv2d(2, self.head_dim, 1)

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        q, k, v = qkv.chunk(3, dim=1)
        fn = LOCAL_ATTENTION_IMPLS[self.impl]
        return fn(q, k, v, self.pe.weight, self.pe.bias, self.heads, self.kernel_att, self.stride, self.dilation)

    def extra_repr(self) -> str:
        return (f"heads={self.heads}, d={self.head_dim}, kernel_att={self.kernel_att}, stride={self.stride}, "
                f"dilation={self.dilation}, impl={self.impl!r}")
