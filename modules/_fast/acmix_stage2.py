"""ACmix Stage II (sliding window) as one operator on CPU: attention path, fused conv path, mixing.
Also the attention path alone (SASA, `LocalSelfAttention`, and ACmix with mixing "att").

`acmix_stage2(qkv, pe_weight, pe_bias, conv_weight, alpha, beta, ...)` returns
alpha * attention(q, k, v) + beta * grouped_conv(qkv) for the Stage I output qkv (B, 3C, H, W),
the same maths as `local_attention_fast` plus the fused conv path in `ConvPath.forward`
(modules/operators.py), which stay its reference on every other input. It runs as the operator
acmix::acmix_stage2 (ops.py) with its backward acmix::acmix_stage2_backward; `stage2_forward` and
`stage2_backward` below are their CPU kernels.

Why one node: as separate autograd ops, the glue between the two C++ kernels cost about a
quarter of the block's fwd+bwd time at 8x128x28x28 (measured with torch.profiler, 2 threads):
the gradient of qkv accumulated from the two paths by an out-of-place add of the whole map, the
`cat` of dq, dk and dv, torch's reflection-padding backward, the mixing products and the `cat`
building the extended query. Here the backward writes one gradient buffer: the conv kernel's
dx is that buffer, the attention kernel adds its key and value gradients into it through the
reflection padding's adjoint (`backward_fold`, local_attention_backward.cpp, per (b, n), no padded
gradient materialised), and the query gradient is added at the strided pixels.

Runs where both compiled kernels do (CPU float32/float64, or meta tensors for shapes only;
contiguous qkv; backend auto or cpp) and not under a trace or a FLOP counter: `applies()` says so,
and callers run the separate paths otherwise. Under counters the separate paths run because counters
attribute each op to the module running it (Stage II attention vs conv path), and this node spans
both; its registered formula (flop_formulas.py) counts the same total.
"""
from __future__ import annotations

import os

import torch

from .._checks import under_counter
from . import backend_for, load_extension, requested_backend, split_phases


def applies(qkv: torch.Tensor, conv: bool = True) -> bool:
    """Whether the one-node Stage II runs for this Stage I output (conv: with the conv path)."""
    if under_counter() or qkv.device.type not in ("cpu", "meta") or qkv.dtype not in (torch.float32, torch.float64):
        return False
    if not qkv.is_contiguous() or torch.is_autocast_enabled("cpu"):
        return False
    b = requested_backend()
    if b not in ("auto", "cpp"):
        return False
    return backend_for(qkv, b, "local_attention") == "cpp" and (not conv or backend_for(qkv, b, "conv_path") == "cpp")


def _grid(H, W, pad, s, dtype, device):
    from ..local_attention import _reflect, position_grid
    Hp, Wp = H + 2 * pad, W + 2 * pad
    return split_phases(_reflect(position_grid(H, W, dtype, device), pad).reshape(2, Hp, Wp), s).contiguous()


def _geometry(qkv: torch.Tensor, heads: int, ka: int, stride: int, dil: int):
    B, C3, H, W = qkv.shape
    C = C3 // 3
    d = C // heads
    pad = dil * (ka - 1) // 2
    Ho, Wo = -(-H // stride), -(-W // stride)
    return B, C, d, H, W, pad, Ho, Wo, d ** -0.5


# Both kernels of the node have two layouts. "rows" runs vectors along a row (attention) or the flat
# pixel index (conv path) of one plane; "lanes" puts the same pixel of L planes in one vector: (b, n)
# planes for the attention (local_attention_lanes.cpp), images for the conv path (conv_path_lanes.cpp),
# so every lane works on small maps. At the default cells' shapes (batch 128, 1 thread) the attention in
# lanes runs forward 1.9-13x and backward 1.4-5x the row kernel (maps 16 to 2), and loses once a group's
# four key/value buffers (d * H * W * L values each) outgrow L2 (backward 0.81x at 32x32, d = 8); the
# conv path in lanes wins up to 64 output pixels (8x8, or 16x16 at stride 2) and loses at 16x16 and
# above. LAYOUT None: the environment's ACMIX_KERNEL_LAYOUT, else by shape; "rows" / "lanes" force one
# (tests, A/B benchmarks).
LAYOUTS = ("auto", "rows", "lanes")
LAYOUT: str | None = None


def _layout() -> str:
    layout = LAYOUT or os.environ.get("ACMIX_KERNEL_LAYOUT") or "auto"
    if layout not in LAYOUTS:
        raise ValueError(f"ACMIX_KERNEL_LAYOUT={layout!r}: use one of {', '.join(LAYOUTS)}")
    return layout


def use_lanes(B: int, heads: int, d: int, H: int, W: int) -> bool:
    """Whether the attention of this shape runs in the lanes layout (`acmix_stage2` passes the answer to the
    op as an argument: the saved tensors differ)."""
    layout = _layout()
    if layout != "auto":
        return layout == "lanes"
    return B * heads >= 8 and d * H * W <= 4096


def conv_lanes(B: int, Ho: int, Wo: int) -> bool:
    """Whether the conv path of this shape runs in the lanes layout (same saved tensors either way)."""
    layout = _layout()
    if layout != "auto":
        return layout == "lanes"
    return B >= 8 and Ho * Wo <= 64


def stage2_forward(qkv, pe_w, grid, wconv, alpha, heads: int, ka: int, stride: int, dil: int, keep_att: bool,
                   lanes: bool):
    """(out, q_ext, kd, vd, att): the output and what the backward reads (att only with keep_att; kd and vd
    empty where the lanes layout ran, which reads keys and values from qkv)."""
    att_ext = load_extension("local_attention")
    B, C, d, H, W, pad, Ho, Wo, scale = _geometry(qkv, heads, ka, stride, dil)
    N, s = heads, stride
    x5 = qkv.view(B, 3, N, d, H, W)
    # extended query (B*N, d + 2, H', W'): scale * q at the strided pixels, then -W_p^T (scale q)
    q_ext = qkv.new_empty(B * N, d + 2, Ho, Wo)
    torch.mul(x5[:, 0, :, :, ::s, ::s], scale, out=q_ext.view(B, N, d + 2, Ho, Wo)[:, :, :d])
    qe = q_ext.view(B * N, d + 2, Ho * Wo)
    torch.bmm(pe_w.reshape(d, 2).t().neg().expand(B * N, 2, d), qe[:, :d], out=qe[:, d:])
    if lanes:  # keys and values read from qkv by the kernel: nothing padded is saved
        kd, vd = qkv.new_empty(0), qkv.new_empty(0)  # (an op's outputs may not share storage)
        att = att_ext.lanes_forward(qkv, q_ext, grid, N, ka, s, dil, pad)
    else:  # k and v reflection-padded and phase-split in one pass each, read in place from qkv
        kd = att_ext.pad_split(qkv, C, C, pad, s).view(B * N, d, H + 2 * pad, s, -1)
        vd = att_ext.pad_split(qkv, 2 * C, C, pad, s).view(B * N, d, H + 2 * pad, s, -1)
        att = att_ext.forward(q_ext, kd, grid, vd, ka, dil, False)[0].view(B, C, Ho, Wo)
    # beta rides in the conv weight (the conv path is linear in it) and alpha is one in-place add:
    # out = conv(x; beta W) + alpha att, one pass over the output instead of three
    a = 1.0 if alpha is None else float(alpha)
    if wconv is None:  # attention only (SASA, or ACmix with fixed mixing (1, 0))
        out = att if a == 1.0 and not keep_att else att * a
    else:
        conv_ext = load_extension("conv_path")
        conv = conv_ext.lanes_forward if conv_lanes(B, Ho, Wo) else conv_ext.forward
        out = conv(qkv.view(B, 3 * N, d, H, W), wconv, s)
        out.add_(att, alpha=a)
    return out, q_ext, kd, vd, (att if keep_att else qkv.new_empty(0))


def stage2_backward(g, qkv, pe_w, q_ext, kd, grid, vd, wconv, alpha, att, heads: int, ka: int, stride: int,
                    dil: int, need_pw: bool, need_w: bool, need_alpha: bool):
    """(dqkv, dpe_w, dwconv, dalpha); the last three empty where not needed."""
    B, C, d, H, W, pad, Ho, Wo, scale = _geometry(qkv, heads, ka, stride, dil)
    N, s = heads, stride
    a = 1.0 if alpha is None else float(alpha)
    dalpha = (g * att).sum().reshape(1) if need_alpha else qkv.new_empty(0)
    dw = qkv.new_empty(0)  # (an op's outputs may not share storage: one empty tensor each)
    if wconv is None:
        dqkv = qkv.new_zeros(B, 3 * C, H, W)
    else:  # the conv kernel's dx is the Stage I output's gradient buffer; the attention adds into it
        conv_ext = load_extension("conv_path")
        conv_bwd = conv_ext.lanes_backward if conv_lanes(B, Ho, Wo) else conv_ext.backward
        dx, dwp = conv_bwd(g, qkv.view(B, 3 * N, d, H, W), wconv, s, True, need_w)
        if need_w:
            dw = dwp.sum(0).reshape(wconv.shape)
        dqkv = dx.view(B, 3 * C, H, W)
    att_ext = load_extension("local_attention")
    if kd.numel() == 0:  # the forward ran in the lanes layout
        dq = att_ext.lanes_backward_fold(g, qkv, q_ext, grid, dqkv, N, ka, s, dil, pad, a)
    else:
        dq = att_ext.backward_fold(g.view(B * N, d, Ho, Wo), q_ext, kd, grid, vd, ka, dil, dqkv, N, C, 2 * C, pad, a)
    dqe = dq.view(B * N, d + 2, Ho * Wo)
    drq = dqe[:, d:]
    # q_ext[:, :d] = scale q (strided), q_ext[:, d:] = -W_p^T q_ext[:, :d]; the output carries alpha
    dqs = torch.baddbmm(dqe[:, :d], pe_w.reshape(d, 2).neg().expand(B * N, d, 2), drq)
    dqkv[:, :C, ::s, ::s].add_(dqs.view(B, C, Ho, Wo), alpha=scale * a)
    dpw = qkv.new_empty(0)
    if need_pw:  # d/dW_p of -W_p^T qs: -sum over (b, n, pixels) of qs drq^T, times alpha
        qs = q_ext.view(B * N, d + 2, Ho * Wo)[:, :d]
        dpw = torch.bmm(qs, drq.transpose(1, 2)).sum(0).mul_(-a).reshape(pe_w.shape)
    return dqkv, dpw, dw, dalpha


def acmix_stage2(qkv, pe_weight, pe_bias, conv_weight, alpha, beta, heads: int, kernel_att: int,
                 stride: int = 1, dilation: int = 1) -> torch.Tensor:
    """alpha * attention + beta * fused conv path of the Stage I output qkv (B, 3C, H, W) -> (B, C, H', W').

    pe_weight (d, 2, 1, 1), pe_bias (d,) or None, conv_weight (d*N, 3N, k, k) (light FC folded into the
    grouped conv), alpha and beta (1,) tensors. conv_weight None: attention only (beta unused; alpha
    None = 1). Call only where `applies(qkv, conv=conv_weight is not None)`.
    """
    dt = qkv.dtype
    heads, ka, s, dil = int(heads), int(kernel_att), int(stride), int(dilation)
    pe_b = pe_bias.to(dt) if pe_bias is not None else qkv.new_zeros(pe_weight.shape[0])
    wc = None
    if conv_weight is not None:  # beta rides in the conv weight; autograd of this product gives dW and dbeta
        wc = conv_weight.to(dt) if beta is None else conv_weight.to(dt) * beta.to(dt)
        wc = wc.contiguous()
    a = None if alpha is None else alpha.to(dt)
    keep_att = a is not None and a.requires_grad and torch.is_grad_enabled()
    H, W = qkv.shape[-2:]
    grid = _grid(H, W, dil * (ka - 1) // 2, s, dt, qkv.device)
    lanes = use_lanes(qkv.shape[0], heads, qkv.shape[1] // (3 * heads), H, W)
    return torch.ops.acmix.acmix_stage2(qkv, pe_weight.to(dt), pe_b, grid, wc, a, heads, ka, s, dil, keep_att,
                                        lanes)[0]
