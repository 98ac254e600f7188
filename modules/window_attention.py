"""Window self-attention (Swin W-MSA / SW-MSA): the attention path of Swin-ACmix.

Tokens (B, H, W, C). Stage I: qkv = Linear(C, 3C) (channels [q | k | v], head n
at n*d .. n*d+d-1). Stage II: non-overlapping M x M windows, per head
softmax(q k^T * scale + relative position bias [+ shift mask]) v. The output
projection Linear(C, C) is not part of either stage ("other").

Reference: a dense (H*W x H*W) attention in which tokens outside the query's
window are excluded, with the bias and the shifted-window mask computed from
pixel coordinates and region labels directly, no window partitioning.
Fast: window partition + scaled_dot_product_attention.
"""
from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import _checks
from .shift import STAGE2_IMPLS

MASK_VALUE = -100.0  # what the release adds between tokens of different regions


def relative_position_index(M: int) -> torch.Tensor:
    """(M^2, M^2) long: row-major index into the ((2M-1)^2, N) bias table."""
    ys, xs = torch.meshgrid(torch.arange(M), torch.arange(M), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[:, None] - ys[None, :] + M - 1
    dx = xs[:, None] - xs[None, :] + M - 1
    return dy * (2 * M - 1) + dx


def _region_labels(n: int, M: int, shift: int) -> torch.Tensor:
    """Per row (or column) of a cyclically shifted map: 0, 1, 2 for the slices
    [0, n-M), [n-M, n-shift), [n-shift, n): pixels that were not neighbours before the roll."""
    idx = torch.arange(n)
    return (idx >= n - M).long() + (idx >= n - shift).long()


@functools.lru_cache(maxsize=64)
def _shifted_window_mask_cpu(H: int, W: int, M: int, shift: int) -> torch.Tensor:
    region = (_region_labels(H, M, shift)[:, None] * 3 + _region_labels(W, M, shift)[None, :]).float()
    windows = region.view(H // M, M, W // M, M).permute(0, 2, 1, 3).reshape(-1, M * M)
    diff = windows[:, None, :] - windows[:, :, None]
    return torch.where(diff != 0, torch.tensor(MASK_VALUE), torch.tensor(0.0))


def shifted_window_mask(H: int, W: int, M: int, shift: int, dtype=torch.float32, device=None):
    """(num_windows, M^2, M^2) additive mask for SW-MSA, or None when shift == 0."""
    if shift == 0:
        return None
    return _shifted_window_mask_cpu(H, W, M, shift).to(dtype=dtype, device=device)


def check_windows(op: str, H: int, W: int, M: int) -> None:
    if H % M or W % M:
        raise ValueError(f"{op}: window_size={M} must divide the token map, got {H}x{W}; "
                         f"use a window size that divides both, or resize the input to a multiple of {M}")


def window_attention_fast(qkv: torch.Tensor, heads: int, window: int, bias_table: torch.Tensor,
                          rel_index: torch.Tensor, scale: float, mask: torch.Tensor | None = None):
    """qkv (B, H, W, 3C) -> (B, H, W, C), before the output projection."""
    B, H, W, C3 = qkv.shape
    C, N, M = C3 // 3, heads, window
    d = C // N
    nh, nw = H // M, W // M
    L = M * M
    x = qkv.reshape(B, nh, M, nw, M, 3, N, d).permute(5, 0, 1, 3, 6, 2, 4, 7).reshape(3, B, nh * nw, N, L, d)
    q, k, v = x[0], x[1], x[2]
    bias = bias_table[rel_index.reshape(-1)].reshape(L, L, N).permute(2, 0, 1).to(qkv.dtype)  # (N, L, L)
    attn_mask = bias.unsqueeze(0)
    if mask is not None:
        attn_mask = attn_mask + mask.to(qkv.dtype).unsqueeze(1)  # (nW, N, L, L)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)  # (B, nW, N, L, d)
    out = out.reshape(B, nh, nw, N, M, M, d).permute(0, 1, 4, 2, 5, 3, 6)
    return out.reshape(B, H, W, C)


def window_attention_reference(qkv: torch.Tensor, heads: int, window: int, bias_table: torch.Tensor,
                               rel_index: torch.Tensor, scale: float, mask: torch.Tensor | None = None,
                               shift: int = 0):
    """Dense form: every token attends to the tokens of its own window.

    `mask` is accepted for signature compatibility; the reference builds the
    shifted-window mask itself from region labels (`shift`) and ignores rel_index,
    computing table rows from coordinate differences. A caller-given mask is used
    only when shift == 0 (the release's calling convention).
    """
    B, H, W, C3 = qkv.shape
    C, N, M = C3 // 3, heads, window
    d = C // N
    t = qkv.reshape(B, H * W, 3, N, d).permute(2, 0, 3, 1, 4)  # (3, B, N, HW, d)
    q, k, v = t[0], t[1], t[2]
    logits = (q * scale) @ k.transpose(-1, -2)  # (B, N, HW, HW)

    ys = torch.arange(H, device=qkv.device).repeat_interleave(W)
    xs = torch.arange(W, device=qkv.device).repeat(H)
    same = ((ys[:, None] // M) == (ys[None, :] // M)) & ((xs[:, None] // M) == (xs[None, :] // M))
    row = (ys[:, None] - ys[None, :] + M - 1).clamp(0, 2 * M - 2)
    col = (xs[:, None] - xs[None, :] + M - 1).clamp(0, 2 * M - 2)
    bias = bias_table.to(qkv.dtype)[row * (2 * M - 1) + col]  # (HW, HW, N); used only where `same`
    logits = logits + bias.permute(2, 0, 1).unsqueeze(0)

    if shift > 0:
        region = (_region_labels(H, M, shift)[:, None] * 3 + _region_labels(W, M, shift)[None, :]).flatten()
        region = region.to(qkv.device)
        logits = logits + torch.where(region[:, None] != region[None, :], MASK_VALUE, 0.0).to(qkv.dtype)
    elif mask is not None:  # a caller's (nW, L, L) mask, laid out on the dense grid
        win = (ys // M) * (W // M) + (xs // M)
        pos = (ys % M) * M + (xs % M)
        dense = mask.to(qkv.dtype)[win[:, None], pos[:, None], pos[None, :]]
        logits = logits + dense
    logits = logits.masked_fill(~same, float("-inf"))
    out = logits.softmax(-1) @ v  # (B, N, HW, d)
    return out.permute(0, 2, 1, 3).reshape(B, H, W, C)


class WindowAttentionPath(nn.Module):
    """Stage II attention path of Swin: relative position bias table and windowed softmax."""

    def __init__(self, dim: int, window_size: int, num_heads: int, qk_scale: float | None = None,
                 impl: str = "fast"):
        super().__init__()
        _checks.choice("Stage II implementation", impl, STAGE2_IMPLS)
        self.dim, self.window_size, self.num_heads, self.impl = dim, window_size, num_heads, impl
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        M = window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * M - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(M), persistent=False)

    def forward(self, qkv: torch.Tensor, mask: torch.Tensor | None = None, shift: int = 0) -> torch.Tensor:
        args = (qkv, self.num_heads, self.window_size, self.relative_position_bias_table,
                self.relative_position_index, self.scale)
        if self.impl == "reference":
            return window_attention_reference(*args, mask=mask, shift=shift)
        if mask is None and shift:
            mask = shifted_window_mask(qkv.shape[1], qkv.shape[2], self.window_size, shift, qkv.dtype, qkv.device)
        return window_attention_fast(*args, mask=mask)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, window_size={self.window_size}, num_heads={self.num_heads}, impl={self.impl!r}"


def check_window_args(dim, window_size, num_heads, shift_size):
    _checks.positive_int("dim", dim)
    _checks.positive_int("window_size", window_size)
    _checks.positive_int("num_heads", num_heads)
    _checks.divisible("dim", dim, "num_heads", num_heads)
    if isinstance(shift_size, bool) or not isinstance(shift_size, int) or not 0 <= shift_size < window_size:
        raise ValueError(f"shift_size must be an integer in [0, window_size={window_size}), got {shift_size!r}")


def tokens_to_map(op: str, x: torch.Tensor, dim: int, H: int | None, W: int | None):
    """Accept (B, H, W, C) or (B, H*W, C) with H, W; return (B, H, W, C) and whether it was flat."""
    if x.dim() == 4:
        if x.shape[-1] != dim:
            raise ValueError(f"{op}: expected {dim} channels in the last dim of (B, H, W, C), got shape {tuple(x.shape)}")
        if (H is not None and H != x.shape[1]) or (W is not None and W != x.shape[2]):
            raise ValueError(f"{op}: H, W = {H}, {W} do not match tokens of shape {tuple(x.shape)}")
        return x, False
    if x.dim() == 3:
        if H is None or W is None or x.shape[1] != H * W:
            raise ValueError(f"{op}: (B, L, C) tokens need H and W with L = H * W, got shape {tuple(x.shape)}, "
                             f"H={H}, W={W}")
        if x.shape[-1] != dim:
            raise ValueError(f"{op}: expected {dim} channels, got {x.shape[-1]}")
        return x.reshape(x.shape[0], H, W, dim), True
    raise ValueError(f"{op}: expected tokens (B, H, W, C) or (B, H*W, C), got shape {tuple(x.shape)}")


class TokenQKV(nn.Module):
    """Stage I of Swin attention: qkv = Linear(C, 3C)."""

    def __init__(self, dim: int, bias: bool = True):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.qkv(x)
