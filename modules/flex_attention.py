"""Sliding-window attention's Stage II as PyTorch's FlexAttention, for speed comparisons.

With the rewrite of docs/operators.md section 4 (the positional term as two extra query
channels per head dotted with the coordinate grid), Stage II is plain softmax attention of
q_ext = [d^-1/2 q, -d^-1/2 W_p^T q] (d + 2 channels) against k_ext = [k, P] over the k_a x k_a
neighbourhood of each query pixel. `local_attention_flex` runs exactly that as
`torch.nn.attention.flex_attention` over the H*W tokens of each (image, head), with a block mask
that keeps key pixels at offsets (dy, dx), |dy|, |dx| <= dilation (k_a - 1) / 2, multiples of the
dilation; compiled with torch.compile (one compiled function, shapes specialised).

Not the same function at the border. The suite reflection-pads k, v and the grid, so a window
reaching past the edge holds reflected duplicates of real pixels (they count twice); a mask over
the real tokens can only drop the missing offsets. The two agree on every output pixel whose
window lies inside the map (at least dilation (k_a - 1) / 2 pixels from each edge, `interior`)
and differ within that distance of the border. It is a benchmark of FlexAttention, not an
implementation the operators can train with.

Limits of torch 2.14.1 on CPU, as torch reports them: inference only (FlexAttention has no CPU
backward: any input requiring grad raises NotImplementedError; `cpu_backward_error` asks torch),
float32 / bfloat16 / float16.

`use_flex(model)` puts this Stage II into every sliding-window attention path of a model
(LocalSelfAttention, ACmix's attention path); `set_stage2_impl(model, "fast" | "reference")`
switches those paths back.
"""
from __future__ import annotations

import functools
import importlib
import warnings

import torch
import torch.nn as nn

from .local_attention import LocalAttentionPath, attention_padding, check_window, position_grid
from .shift import out_size

IMPL = "flex"
CPU_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _flex_module():
    """torch.nn.attention.flex_attention, or a one-line ValueError naming the torch it needs."""
    try:
        fa = importlib.import_module("torch.nn.attention.flex_attention")
    except ImportError:
        fa = None
    if fa is None or not hasattr(fa, "create_block_mask"):
        raise ValueError(f"--impl flex needs torch.nn.attention.flex_attention (torch >= 2.6 for CPU inference); "
                         f"this is torch {torch.__version__}")
    return fa


def check_flex(dtype: torch.dtype, device) -> None:
    """ValueError (one line) where flex_attention cannot run: old torch, or a dtype CPU flex lacks."""
    _flex_module()
    if torch.device(device).type == "cpu" and dtype not in CPU_DTYPES:
        raise ValueError(f"--impl flex: flex_attention on CPU runs float32, bfloat16 or float16, got {dtype}; "
                         "use --dtype float32")


@functools.lru_cache(maxsize=None)
def _compiled():
    fa = _flex_module()
    # shapes specialised: every map size compiles once (the benchmark's warm-up), no dynamic kernels
    return torch.compile(fa.flex_attention, dynamic=False)


@functools.lru_cache(maxsize=None)
def cpu_backward_error() -> str | None:
    """None if torch's flex_attention can differentiate on CPU, else torch's own error message (first line).

    Asked of the eager function on a tiny input: a call the compiled function cannot trace (torch
    raising inside it) leaves that function running eagerly for every later call, forward included."""
    fa = _flex_module()
    q = torch.zeros(1, 1, 16, 8, requires_grad=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fa.flex_attention(q, q.detach(), q.detach()).sum().backward()
    except NotImplementedError as err:
        return (str(err).strip().splitlines() or ["no CPU backward"])[0]
    return None


@functools.lru_cache(maxsize=32)
def neighbourhood_mask(H: int, W: int, kernel_att: int, stride: int = 1, dilation: int = 1, device: str = "cpu"):
    """BlockMask of the k_a x k_a neighbourhoods: query token i is output pixel (i // W', i % W') at input
    pixel (y s, x s); key token j is pixel (j // W, j % W). Shared by all images and heads; cached, so the
    compiled function sees the same mask object (and mask_mod) on every call."""
    fa = _flex_module()
    pad = attention_padding(kernel_att, dilation)
    Ho, Wo = out_size(H, stride), out_size(W, stride)

    def mask_mod(b, h, q_idx, kv_idx):
        dy = kv_idx // W - (q_idx // Wo) * stride
        dx = kv_idx % W - (q_idx % Wo) * stride
        keep = (dy.abs() <= pad) & (dx.abs() <= pad)
        if dilation > 1:
            keep = keep & (dy % dilation == 0) & (dx % dilation == 0)
        return keep

    return fa.create_block_mask(mask_mod, None, None, Ho * Wo, H * W, device=device)


def interior(H: int, W: int, kernel_att: int, stride: int = 1, dilation: int = 1) -> torch.Tensor:
    """(H', W') bool: output pixels whose window lies inside the map, where flex equals the reference."""
    pad = attention_padding(kernel_att, dilation)
    ys = torch.arange(out_size(H, stride)) * stride
    xs = torch.arange(out_size(W, stride)) * stride
    return (((ys >= pad) & (ys < H - pad))[:, None]) & (((xs >= pad) & (xs < W - pad))[None, :])


def local_attention_flex(q, k, v, pe_weight, pe_bias, heads: int, kernel_att: int,
                         stride: int = 1, dilation: int = 1) -> torch.Tensor:
    """Stage II as flex_attention (signature of local_attention_reference; pe_bias leaves the softmax).
    Equal to the reference on `interior` pixels only (module docstring)."""
    B, C, H, W = q.shape
    N, s = heads, stride
    d = C // N
    check_window("local attention", H, W, kernel_att, dilation)
    check_flex(q.dtype, q.device)
    if q.device.type == "cpu" and torch.is_grad_enabled() and any(
            t.requires_grad for t in (q, k, v, pe_weight)) and cpu_backward_error():
        raise NotImplementedError(cpu_backward_error())
    Ho, Wo = out_size(H, s), out_size(W, s)
    scale = d ** -0.5
    qs = (q[..., ::s, ::s] * scale).reshape(B, N, d, Ho * Wo)
    rq = -torch.einsum("bndl,dc->bncl", qs, pe_weight.reshape(d, 2).to(q.dtype))
    q_ext = torch.cat([qs, rq], dim=2).transpose(2, 3)  # (B, N, H'W', d + 2)
    grid = position_grid(H, W, q.dtype, q.device).reshape(1, 1, 2, H * W).expand(B, N, 2, H * W)
    k_ext = torch.cat([k.reshape(B, N, d, H * W), grid], dim=2).transpose(2, 3)  # (B, N, HW, d + 2)
    v_t = v.reshape(B, N, d, H * W).transpose(2, 3)
    mask = neighbourhood_mask(H, W, kernel_att, s, dilation, str(q.device))
    out = _compiled()(q_ext.contiguous(), k_ext.contiguous(), v_t.contiguous(), block_mask=mask, scale=1.0)
    return out.transpose(2, 3).reshape(B, C, Ho, Wo)


class FlexAttentionPath(LocalAttentionPath):
    """LocalAttentionPath whose Stage II is `local_attention_flex` while impl == "flex"
    (set_stage2_impl can switch it to "fast" or "reference")."""

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        if self.impl != IMPL:
            return super().forward(qkv)
        q, k, v = qkv.chunk(3, dim=1)
        return local_attention_flex(q, k, v, self.pe.weight, self.pe.bias, self.heads, self.kernel_att,
                                    self.stride, self.dilation)


def use_flex(model: nn.Module) -> nn.Module:
    """Replace every sliding-window attention path of `model` by a FlexAttentionPath with the same
    weights (in place); ValueError if the model has none."""
    _flex_module()
    found = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LocalAttentionPath):
                new = FlexAttentionPath(child.out_planes, child.heads, child.kernel_att, child.stride, child.dilation)
                new.load_state_dict(child.state_dict())
                new.impl = IMPL
                setattr(parent, name, new.to(child.pe.weight.device, child.pe.weight.dtype))
                found += 1
    if not found:
        raise ValueError(f"--impl flex replaces the sliding-window attention path; {type(model).__name__} has none "
                         "(use it with LocalSelfAttention or ACmix: --op sa or acmix)")
    return model
