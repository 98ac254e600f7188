"""ACmix Stage II (sliding window) as one autograd node on CPU: attention path, fused conv path, mixing.
Also the attention path alone (SASA, `LocalSelfAttention`, and ACmix with mixing "att").

`acmix_stage2(qkv, pe_weight, pe_bias, conv_weight, alpha, beta, ...)` returns
alpha * attention(q, k, v) + beta * grouped_conv(qkv) for the Stage I output qkv (B, 3C, H, W),
the same maths as `local_attention_fast` plus the fused conv path in `ConvPath.forward`
(modules/operators.py), which stay its reference on every other input.

Why one node: as separate autograd ops, the glue between the two C++ kernels cost about a
quarter of the block's fwd+bwd time at 8x128x28x28 (measured with torch.profiler, 2 threads):
the gradient of qkv accumulated from the two paths by an out-of-place add of the whole map, the
`cat` of dq, dk and dv, torch's reflection-padding backward, the mixing products and the `cat`
building the extended query. Here the backward writes one gradient buffer: the conv kernel's
dx is that buffer, the attention kernel adds its key and value gradients into it through the
reflection padding's adjoint (`backward_fold` in local_attention_backward.cpp, per (b, n), no padded
gradient materialised), and the query gradient is added at the strided pixels.

Runs only where both compiled kernels do (CPU float32/float64, contiguous qkv, not under a trace
or FLOP counter, backend auto or cpp): `applies()` says so, and callers fall back otherwise.
"""
from __future__ import annotations

import torch

from .._checks import under_counter
from . import backend_for, load_extension, requested_backend, split_phases


def applies(qkv: torch.Tensor, conv: bool = True) -> bool:
    """Whether the one-node Stage II runs for this Stage I output (conv: with the conv path)."""
    if under_counter() or qkv.device.type != "cpu" or qkv.dtype not in (torch.float32, torch.float64):
        return False
    if not qkv.is_contiguous() or torch.is_autocast_enabled("cpu"):
        return False
    b = requested_backend()
    if b not in ("auto", "cpp"):
        return False
    return backend_for(qkv, b, "local_attention") == "cpp" and (not conv or backend_for(qkv, b, "conv_path") == "cpp")


def _grid(H, W, pad, s, dtype):
    from ..local_attention import _reflect, position_grid
    Hp, Wp = H + 2 * pad, W + 2 * pad
    return split_phases(_reflect(position_grid(H, W, dtype), pad).reshape(2, Hp, Wp), s).contiguous()


class _ACmixStage2(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv, pe_w, pe_b, wconv, alpha, beta, heads, ka, stride, dil):
        att_ext = load_extension("local_attention")
        B, C3, H, W = qkv.shape
        C, N, s = C3 // 3, heads, stride
        d = C // N
        pad = dil * (ka - 1) // 2
        Ho, Wo = -(-H // s), -(-W // s)
        P = Ho * Wo
        scale = d ** -0.5
        x5 = qkv.view(B, 3, N, d, H, W)
        # extended query (B*N, d + 2, H', W'): scale * q at the strided pixels, then -W_p^T (scale q)
        q_ext = qkv.new_empty(B * N, d + 2, Ho, Wo)
        torch.mul(x5[:, 0, :, :, ::s, ::s], scale, out=q_ext.view(B, N, d + 2, Ho, Wo)[:, :, :d])
        qe = q_ext.view(B * N, d + 2, P)
        pw = pe_w.reshape(d, 2)
        torch.bmm(pw.t().neg().expand(B * N, 2, d), qe[:, :d], out=qe[:, d:])
        # k and v reflection-padded and phase-split in one pass each, read in place from qkv
        kd = att_ext.pad_split(qkv, C, C, pad, s).view(B * N, d, H + 2 * pad, s, -1)
        vd = att_ext.pad_split(qkv, 2 * C, C, pad, s).view(B * N, d, H + 2 * pad, s, -1)
        grid = _grid(H, W, pad, s, qkv.dtype)
        att = att_ext.forward(q_ext, kd, grid, vd, ka, dil, False)[0].view(B, C, Ho, Wo)
        # beta rides in the conv weight (the conv path is linear in it) and alpha is one in-place add:
        # out = conv(x; beta W) + alpha att, one pass over the output instead of three
        a = 1.0 if alpha is None else float(alpha)
        if wconv is None:  # attention only (SASA, or ACmix with fixed mixing (1, 0))
            out = att if a == 1.0 else att * a
        else:
            out = load_extension("conv_path").forward(qkv.view(B, 3 * N, d, H, W), wconv * beta, s)
            out.add_(att, alpha=a)
        ctx.save_for_backward(qkv, q_ext, kd, grid, vd, pw, wconv, beta, att if ctx.needs_input_grad[4] else None)
        ctx.geo = (B, C, N, d, H, W, Ho, Wo, ka, s, dil, pad, scale, a)
        ctx.pe_shape = pe_w.shape
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        qkv, q_ext, kd, grid, vd, pw, wconv, beta, att = ctx.saved_tensors
        B, C, N, d, H, W, Ho, Wo, ka, s, dil, pad, scale, a = ctx.geo
        need_x, need_pw, need_pb, need_w, need_a, need_b = ctx.needs_input_grad[:6]
        g = g.contiguous()
        dalpha = (g * att).sum().reshape(1) if need_a else None
        dw = dbeta = None
        if wconv is None:
            dqkv = qkv.new_zeros(B, 3 * C, H, W)
        else:  # the conv kernel's dx is the Stage I output's gradient buffer; the attention adds into it
            dx, dwp = load_extension("conv_path").backward(g, qkv.view(B, 3 * N, d, H, W), wconv * beta, s,
                                                           True, bool(need_w or need_b))
            if need_w or need_b:
                dw_eff = dwp.sum(0).reshape(wconv.shape)  # d loss / d (beta W)
                dw = dw_eff * beta if need_w else None
                dbeta = (dw_eff * wconv).sum().reshape(1) if need_b else None
            dqkv = dx.view(B, 3 * C, H, W)
        dq = load_extension("local_attention").backward_fold(g.view(B * N, d, Ho, Wo), q_ext, kd, grid, vd, ka,
                                                              dil, dqkv, N, C, 2 * C, pad, a)
        dqe = dq.view(B * N, d + 2, Ho * Wo)
        drq = dqe[:, d:]
        # q_ext[:, :d] = scale q (strided), q_ext[:, d:] = -W_p^T q_ext[:, :d]; the output carries alpha
        dqs = torch.baddbmm(dqe[:, :d], pw.neg().expand(B * N, d, 2), drq)
        dqkv[:, :C, ::s, ::s].add_(dqs.view(B, C, Ho, Wo), alpha=scale * a)
        dpw = None
        if need_pw:  # d/dW_p of -W_p^T qs: -sum over (b, n, pixels) of qs drq^T, times alpha
            qs = q_ext.view(B * N, d + 2, Ho * Wo)[:, :d]
            dpw = torch.bmm(qs, drq.transpose(1, 2)).sum(0).mul_(-a).reshape(ctx.pe_shape)
        dpb = torch.zeros(d, dtype=qkv.dtype) if need_pb else None  # exact: pe's bias cancels in the logits
        return (dqkv if need_x else None), dpw, dpb, dw, dalpha, dbeta, None, None, None, None


def acmix_stage2(qkv, pe_weight, pe_bias, conv_weight, alpha, beta, heads: int, kernel_att: int,
                 stride: int = 1, dilation: int = 1) -> torch.Tensor:
    """alpha * attention + beta * fused conv path of the Stage I output qkv (B, 3C, H, W) -> (B, C, H', W').

    pe_weight (d, 2, 1, 1), pe_bias (d,) or None, conv_weight (d*N, 3N, k, k) (light FC folded into the
    grouped conv), alpha and beta (1,) tensors. conv_weight None: attention only (beta unused; alpha
    None = 1). Call only where `applies(qkv, conv=conv_weight is not None)`.
    """
    dt = qkv.dtype
    pe_b = pe_bias if pe_bias is not None else torch.zeros(pe_weight.shape[0], dtype=dt)
    wc = None if conv_weight is None else conv_weight.to(dt).contiguous()
    a = None if alpha is None else alpha.to(dt)
    b = None if (beta is None or wc is None) else beta.to(dt)
    return _ACmixStage2.apply(qkv, pe_weight.to(dt), pe_b, wc, a, b, int(heads), int(kernel_att), int(stride),
                              int(dilation))
