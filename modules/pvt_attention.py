"""Spatial-reduction attention (PVT v1) and its ACmix form.

Tokens (B, L, C) on an H x W map, L = H*W, or L = 1 + H*W with a class token in
front (PVT's last stage). N heads, d = C / N, sr ratio R.

Spatial-reduction attention (SRA), as PVT v1 defines it:
    q  = x W_q + b_q                                    (B, L, C)
    x' = LayerNorm(Conv_RxR/R(x as a C x H x W map))    (B, Lr, C), Lr = (H/R)(W/R); x' = x when R = 1
    k, v = x' W_kv + b_kv                               (B, Lr, C) each
    per head: softmax(q k^T * d^-0.5) v, heads concatenated, then proj = Linear(C, C)

Stages (the suite's two-stage view): `stage1` holds the 1x1 projections q and kv;
`stage2.attention` is the SRA path (its reduction conv + LayerNorm, the logits,
softmax and weighted sum); `proj` is "other". The kv projection runs on the
reduced map the attention path hands it, so Stage I costs C^2 L + 2 C^2 Lr MACs.

PVT-ACmix (`SRACmix`): Stage I shared, the attention path PVT's SRA, the
convolution path as ACmix's (light FC 3N -> k^2 with bias, then one of the four
shift aggregations) on the spatial tokens reshaped to H x W;
output = alpha * proj(attention) + beta * conv path (the conv path bypasses proj,
as in the released Swin-ACmix), alpha = beta = 0.5 at init. A class token has no
position on the map: its conv-path output is zero (it gets alpha * attention).

The open detail: the conv path needs k and v at every pixel, while PVT computes
them on the reduced map only. `conv_kv` picks how they are made:

    "upsample" (default) the conv path reads the attention's own reduced k and v,
               each value repeated over its R x R cell (nearest upsampling): Stage I
               stays exactly PVT's (no extra projection), the extra cost is the conv
               path alone (light FC 27 C HW + grouped conv 81 C HW MACs per block at
               k = 3, C = N d). At 224 px: 2.027 G / 3.990 G MACs for PVT-T / PVT-S
               ACmix (+84 M / +157 M over PVT-T / PVT-S), against the paper's 2.0 G / 3.9 G.
    "full"     k, v = kv projection of the unreduced tokens (the same weights applied
               to the full map too): full-resolution features at 2 C^2 HW (1 - 1/R^2)
               more Stage I MACs per block: 2.210 G / 4.411 G at 224 px, 10.5 % / 13.1 %
               over the published counts. Identical to "upsample" where R = 1.

Default "upsample" because it is the form whose cost matches what the paper
reports and keeps Stage I literally shared (ACmix's premise: the second path costs
only its light Stage II). Its price: in stages with R > 1 the conv path sees k and v
constant over R x R cells (q stays full resolution).

Every path has a plain reference written from the formulas (`impl="reference"`,
set_stage2_impl) and a fast path held equal to it by the tests:
  attention  reference: the reduction as an explicit sum over each R x R cell (einsum), the
             logits, softmax and weighted sum written out; fast: nn.Conv2d and
             F.scaled_dot_product_attention.
  conv path  modules.operators.ConvPath (its own reference / fast paths).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import _checks
from .operators import ConvPath, Stage2, parse_mixing
from .shift import SHIFT_IMPLS, STAGE2_IMPLS

CONV_KV_MODES = ("upsample", "full")


def check_sra_args(dim, num_heads, sr_ratio) -> None:
    _checks.positive_int("dim", dim)
    _checks.positive_int("num_heads", num_heads)
    _checks.positive_int("sr_ratio", sr_ratio)
    _checks.divisible("dim", dim, "num_heads", num_heads)


def split_tokens(op: str, x: torch.Tensor, dim: int, H, W, cls_token: bool, sr_ratio: int):
    """Check (B, L, C) tokens against H, W (and a leading class token); return (cls or None, spatial)."""
    if x.dim() != 3:
        raise ValueError(f"{op}: expected tokens (B, L, C), got shape {tuple(x.shape)}")
    if x.shape[-1] != dim:
        raise ValueError(f"{op}: expected {dim} channels in the last dim of (B, L, C), got shape {tuple(x.shape)}")
    if isinstance(H, bool) or isinstance(W, bool) or not isinstance(H, int) or not isinstance(W, int) or H < 1 or W < 1:
        raise ValueError(f"{op}: give the token map's H and W as positive ints, got H={H!r}, W={W!r}")
    extra = int(cls_token)
    if x.shape[1] != H * W + extra:
        raise ValueError(f"{op}: expected L = H*W{' + 1 (class token)' if extra else ''} = {H * W + extra} tokens "
                         f"for H={H}, W={W}, got shape {tuple(x.shape)}")
    if H % sr_ratio or W % sr_ratio:
        raise ValueError(f"{op}: sr_ratio={sr_ratio} must divide the {H}x{W} token map; use a ratio dividing both "
                         f"sides (the PVT backbones clamp it per stage)")
    return (x[:, :1], x[:, 1:]) if extra else (None, x)


# ----------------------------------------------------------------------------- attention: reference and fast


def reduce_reference(x: torch.Tensor, H: int, W: int, weight: torch.Tensor, bias: torch.Tensor | None,
                     ratio: int) -> torch.Tensor:
    """Spatial reduction from its definition: output token (a, b) = sum over the R x R cell's pixels
    (i, j) of W[:, :, i, j] x[a R + i, b R + j] + bias. x (B, H*W, C) -> (B, (H/R)(W/R), C)."""
    B, _, C = x.shape
    R = ratio
    cells = x.reshape(B, H // R, R, W // R, R, C)  # (n, a, i, b, j, c)
    y = torch.einsum("naibjc,ocij->nabo", cells, weight.to(x.dtype))
    if bias is not None:
        y = y + bias.to(x.dtype)
    return y.reshape(B, (H // R) * (W // R), -1)


def sra_reference(q: torch.Tensor, kv: torch.Tensor, heads: int, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale) v per head, written out. q (B, L, C), kv (B, Lr, 2C) = [k | v] -> (B, L, C)."""
    B, L, C = q.shape
    d = C // heads
    k, v = kv[..., :C], kv[..., C:]
    out = []
    for n in range(heads):
        qn, kn, vn = q[..., n * d:(n + 1) * d], k[..., n * d:(n + 1) * d], v[..., n * d:(n + 1) * d]
        logits = torch.einsum("bld,bmd->blm", qn, kn) * scale
        out.append(torch.einsum("blm,bmd->bld", logits.softmax(-1), vn))
    return torch.cat(out, dim=-1)


def sra_fast(q: torch.Tensor, kv: torch.Tensor, heads: int, scale: float) -> torch.Tensor:
    """The same through F.scaled_dot_product_attention (one call, all heads)."""
    B, L, C = q.shape
    d = C // heads
    qh = q.reshape(B, L, heads, d).transpose(1, 2)
    kvh = kv.reshape(B, kv.shape[1], 2, heads, d).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(qh, kvh[0], kvh[1], scale=scale)  # (B, N, L, d)
    return out.transpose(1, 2).reshape(B, L, C)


class SRAttentionPath(nn.Module):
    """Stage II attention path of PVT: the spatial reduction (R x R conv, stride R, + LayerNorm; none
    when R = 1) and the softmax attention of q over the reduced keys and values."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int = 1, qk_scale: float | None = None,
                 impl: str = "fast"):
        super().__init__()
        check_sra_args(dim, num_heads, sr_ratio)
        _checks.choice("Stage II implementation", impl, STAGE2_IMPLS)
        self.dim, self.num_heads, self.sr_ratio, self.impl = dim, num_heads, sr_ratio, impl
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def reduce(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """(B, L, C) -> the tokens keys and values are projected from: (B, Lr, C) (x itself when R = 1)."""
        if self.sr_ratio == 1:
            return x
        if self.impl == "reference":
            y = reduce_reference(x, H, W, self.sr.weight, self.sr.bias, self.sr_ratio)
        else:
            B, _, C = x.shape
            y = self.sr(x.transpose(1, 2).reshape(B, C, H, W)).flatten(2).transpose(1, 2)
        return self.norm(y)

    def forward(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        fn = sra_reference if self.impl == "reference" else sra_fast
        return fn(q, kv, self.num_heads, self.scale)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, sr_ratio={self.sr_ratio}, impl={self.impl!r}"


class QKVProjections(nn.Module):
    """Stage I of PVT attention: q = Linear(C, C) on every token, kv = Linear(C, 2C) on the tokens the
    attention path reduced to (and, for PVT-ACmix with conv_kv="full", on the full map as well)."""

    def __init__(self, dim: int, bias: bool = True):
        super().__init__()
        self.q = nn.Linear(dim, dim, bias=bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=bias)


# ----------------------------------------------------------------------------- operators


class SpatialReductionAttention(nn.Module):
    """PVT v1 attention on tokens (B, L, C): forward(x, H, W); L = H*W (+1 with cls_token=True)."""

    def __init__(self, dim: int, num_heads: int = 1, sr_ratio: int = 1, qkv_bias: bool = True,
                 qk_scale: float | None = None, cls_token: bool = False):
        super().__init__()
        check_sra_args(dim, num_heads, sr_ratio)
        self.dim, self.num_heads, self.sr_ratio, self.cls_token = dim, num_heads, sr_ratio, bool(cls_token)
        if self.cls_token and sr_ratio > 1:
            raise ValueError(f"{type(self).__name__}: a class token needs sr_ratio=1 (PVT puts it in the last "
                             f"stage only), got sr_ratio={sr_ratio}")
        self.stage1 = QKVProjections(dim, qkv_bias)
        self.stage2 = self._make_stage2(SRAttentionPath(dim, num_heads, sr_ratio, qk_scale))
        self.proj = nn.Linear(dim, dim)

    def _make_stage2(self, attention):
        return Stage2(attention=attention)

    def _check(self, x, H, W):
        return split_tokens(type(self).__name__, x, self.dim, H, W, self.cls_token, self.sr_ratio)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        self._check(x, H, W)
        att = self.stage2.attention
        q = self.stage1.q(x)
        kv = self.stage1.kv(att.reduce(x, H, W))
        return self.proj(att(q, kv))

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_heads={self.num_heads}, sr_ratio={self.sr_ratio}"
                + (", cls_token=True" if self.cls_token else ""))


class SRACmix(SpatialReductionAttention):
    """PVT-ACmix: SRA and the ACmix convolution path on shared q, k, v (see the module docstring for
    `conv_kv`, the choice of full-resolution keys and values for the conv path, and its cost).

    mixing: learnable | half | att (the conv path reads the attention path's reduction, so a
    conv-only PVT-ACmix is not built: use mixing "att" or a conv backbone for the single-path runs).
    """

    def __init__(self, dim: int, num_heads: int = 1, sr_ratio: int = 1, qkv_bias: bool = True,
                 qk_scale: float | None = None, cls_token: bool = False, shift: str = "multigroup",
                 mixing="learnable", kernel_conv: int = 3, conv_kv: str = "upsample", mix_init: float = 0.5):
        _checks.choice("shift implementation", shift, SHIFT_IMPLS)
        _checks.odd_kernel("kernel_conv", kernel_conv)
        _checks.choice("conv_kv", conv_kv, CONV_KV_MODES)
        mixing = parse_mixing(mixing)
        if mixing == "conv":
            raise ValueError("SRACmix: mixing 'conv' is not available (the conv path reads the attention path's "
                             "reduced keys); use learnable, half or att")
        self._mixing, self._shift, self._kernel_conv, self._mix_init = mixing, shift, kernel_conv, mix_init
        self.conv_kv = conv_kv
        super().__init__(dim, num_heads, sr_ratio, qkv_bias, qk_scale, cls_token)

    def _make_stage2(self, attention):
        conv = None
        if self._mixing != "att":
            conv = ConvPath(self.num_heads, self.dim // self.num_heads, self._kernel_conv, 1, fc_bias=True,
                            shift=self._shift)
        return Stage2(attention, conv, self._mixing, mix_init=self._mix_init)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        cls, spatial = self._check(x, H, W)
        s1, s2 = self.stage1, self.stage2
        att = s2.attention
        q = s1.q(x)
        kv = s1.kv(att.reduce(x, H, W))
        a = self.proj(att(q, kv))
        if not hasattr(s2, "conv"):
            return a
        B, C, R = x.shape[0], self.dim, self.sr_ratio
        extra = 0 if cls is None else 1
        if R == 1:
            kv_full = kv[:, extra:]
        elif self.conv_kv == "full":
            kv_full = s1.kv(spatial)
        else:  # each reduced token repeated over its R x R cell
            kv_full = kv.reshape(B, H // R, 1, W // R, 1, 2 * C).expand(B, H // R, R, W // R, R, 2 * C)
        qkv = torch.cat([q[:, extra:].reshape(B, H, W, C), kv_full.reshape(B, H, W, 2 * C)], dim=-1)
        N = self.num_heads
        f_all = qkv.reshape(B, H, W, 3 * N, C // N).permute(0, 3, 4, 1, 2)  # (B, 3N, d, H, W)
        conv = s2.conv(f_all).flatten(2).transpose(1, 2)  # (B, H*W, C)
        if cls is not None:
            conv = torch.cat([conv.new_zeros(B, 1, C), conv], dim=1)
        return s2.mix(a, conv)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", mixing={self._mixing!r}, shift={self._shift!r}, conv_kv={self.conv_kv!r}"
