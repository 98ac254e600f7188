"""MAC counts of the `acmix` operators (ops.py), registered with torch.utils.flop_counter.

torch's FlopCounterMode (and every tool built on its registry) counts an operator only through a
formula registered for it; these give the kernels' multiply-accumulates as run, in torch's own
conventions (2 FLOPs per MAC; products and their sums only: no softmax, exp, bias or scaling).

  local_attention           logits over the Cq = Ck + G query channels (the G = 2 positional channels
                            per head of the fast path included: counts are as run) and the weighted
                            sum over Cv channels: BN H'W' k_a^2 (Cq + Cv)
  local_attention_backward  dW = dout . v (Cv), dv (Cv), dq (Cq), dk (Ck) per window entry, plus the
                            recomputed logits (Cq) for the backends that recompute them (cpp, triton;
                            as torch counts flash attention's backward)
  grouped_conv(_backward)   as torch counts a grouped convolution (forward; dx and dW each the same)
  acmix_stage2(_backward)   the attention above with Cq = d + 2, Ck = Cv = d, the positional
                            projection W_p^T q (2 C H'W', and its two adjoint products in backward),
                            and the grouped conv where the conv path is fused in

The same closed forms are the formula voice of bench/flops (bench/formulas.py); tests hold the two equal.
`fvcore_handles()` gives fvcore (jit trace) the same count for acmix::local_attention, the one op of
these that runs under a trace (conv path and Stage II node use their plain twins there).
"""
from __future__ import annotations

from collections import Counter

import torch
from torch.utils.flop_counter import register_flop_formula


def _prod(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def local_attention_macs(q_shape, vd_shape, ka: int) -> int:
    BN, Cq, Ho, Wo = (int(s) for s in q_shape)
    return BN * Ho * Wo * ka * ka * (Cq + int(vd_shape[1]))


def local_attention_backward_macs(q_shape, kd_shape, vd_shape, ka: int, backend: str) -> int:
    BN, Cq, Ho, Wo = (int(s) for s in q_shape)
    Ck, Cv = int(kd_shape[1]), int(vd_shape[1])
    per_entry = 2 * Cv + Cq + Ck + (Cq if backend != "torch" else 0)
    return BN * Ho * Wo * ka * ka * per_entry


def grouped_conv_macs(x_shape, w_shape, stride: int) -> int:
    B, C, _, H, W = (int(s) for s in x_shape)
    k = int(w_shape[-1])
    Ho, Wo = (H - 1) // stride + 1, (W - 1) // stride + 1
    return B * int(w_shape[0]) * C * k * k * Ho * Wo


def _stage2_geometry(qkv_shape, heads: int, stride: int):
    B, C3, H, W = (int(s) for s in qkv_shape)
    C = C3 // 3
    d = C // heads
    P = ((H - 1) // stride + 1) * ((W - 1) // stride + 1)
    return B, C, d, P


def stage2_macs(qkv_shape, wconv_shape, heads: int, ka: int, stride: int) -> int:
    B, C, d, P = _stage2_geometry(qkv_shape, heads, stride)
    macs = B * heads * 2 * d * P  # W_p^T (scale q): 2 positional channels per head
    macs += local_attention_macs((B * heads, d + 2, P, 1), (B * heads, d), ka)
    if wconv_shape is not None:
        macs += B * _prod(wconv_shape) * P  # grouped conv: d*N outputs x 3N inputs x k^2 taps per pixel
    return macs


def stage2_backward_macs(qkv_shape, wconv_shape, heads: int, ka: int, stride: int, need_pw: bool,
                         need_w: bool) -> int:
    B, C, d, P = _stage2_geometry(qkv_shape, heads, stride)
    BN = B * heads
    macs = local_attention_backward_macs((BN, d + 2, P, 1), (BN, d), (BN, d), ka, "cpp")
    macs += BN * 2 * d * P * (2 if need_pw else 1)  # dq += W_p dq_pos; dW_p = sum q dq_pos^T
    if wconv_shape is not None:
        conv = B * _prod(wconv_shape) * P
        macs += conv * (2 if need_w else 1)  # dx always (it is the gradient buffer), dW where needed
    return macs


# ----------------------------------------------------------------------------- registration

_registered = False


def register() -> None:
    """Register the formulas with torch.utils.flop_counter (once; ops.py calls it on import)."""
    global _registered
    if _registered:
        return
    ops = torch.ops.acmix

    @register_flop_formula(ops.local_attention)
    def _(q, kd, grid, vd, ka, dil, backend, out_shape=None, **kw):
        return 2 * local_attention_macs(q, vd, ka)

    @register_flop_formula(ops.local_attention_backward)
    def _(dout, q, kd, grid, vd, weights, ka, dil, backend, out_shape=None, **kw):
        return 2 * local_attention_backward_macs(q, kd, vd, ka, backend)

    @register_flop_formula(ops.grouped_conv)
    def _(x, w, stride, out_shape=None, **kw):
        return 2 * grouped_conv_macs(x, w, stride)

    @register_flop_formula(ops.grouped_conv_backward)
    def _(dout, x, w, stride, need_dx, need_dw, out_shape=None, **kw):
        return 2 * grouped_conv_macs(x, w, stride) * (int(need_dx) + int(need_dw))

    @register_flop_formula(ops.acmix_stage2)
    def _(qkv, pe_w, pe_b, grid, wconv, alpha, heads, ka, stride, dil, keep_att, lanes, out_shape=None, **kw):
        return 2 * stage2_macs(qkv, wconv, heads, ka, stride)

    @register_flop_formula(ops.acmix_stage2_backward)
    def _(g, qkv, pe_w, q_ext, kd, grid, vd, wconv, alpha, att, heads, ka, stride, dil, need_pw, need_w,
          need_alpha, out_shape=None, **kw):
        return 2 * stage2_backward_macs(qkv, wconv, heads, ka, stride, need_pw, need_w)

    _registered = True


def _fvcore_local_attention(inputs, outputs) -> Counter:
    """fvcore handle of acmix::local_attention(q, kd, grid, vd, ka, dil, backend): logits and aggregation
    MACs, and one softmax entry per window position (a category of bench/flops' conventions)."""
    from fvcore.nn.jit_handles import get_shape
    q, vd = get_shape(inputs[0]), get_shape(inputs[3])
    ka = int(inputs[4].toIValue())
    BN, _, Ho, Wo = (int(s) for s in q)
    return Counter({"local_attention|mac": local_attention_macs(q, vd, ka),
                    "local_attention|softmax": BN * Ho * Wo * ka * ka})


def fvcore_handles() -> dict:
    """jit op name -> fvcore handle returning Counter({"<op>|<category>": MACs}) (bench/flops' handle form)."""
    return {"acmix::local_attention": _fvcore_local_attention}
