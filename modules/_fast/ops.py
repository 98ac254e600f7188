"""The fast Stage II kernels as torch operators (namespace `acmix`, torch.library.custom_op).

Each op has a real kernel (C++ extension, Triton, or the pure-PyTorch twin, as its `backend`
argument or the tensor says), a fake kernel (shapes only: meta tensors, torch.compile's tracing),
and an autograd formula that calls its backward op, so that the dispatcher, not Python, sees every
call: torch.compile traces them into one graph, models run on the meta device, and
torch.utils.flop_counter counts them with the formulas in flop_formulas.py.

  acmix::local_attention(q, kd, grid, vd, ka, dil, backend) -> (out, weights)
      softmax attention of each query over its k_a x k_a window (local_attention.h for the layout);
      backend "cpp" | "triton" | "torch"; weights (BN, k_a^2, H', W') only for "torch" (its backward
      reads them), an empty tensor otherwise (cpp and triton recompute them in backward)
  acmix::local_attention_backward(dout, q, kd, grid, vd, weights, ka, dil, backend) -> (dq, dkd, dvd)
  acmix::grouped_conv(x, w, stride) -> out
      the conv path's grouped k x k conv read in place from (B, C, d, H, W) (conv_path.py); C++ only
  acmix::grouped_conv_backward(dout, x, w, stride, need_dx, need_dw) -> (dx, dw)
  acmix::acmix_stage2(qkv, pe_w, pe_b, grid, wconv, alpha, heads, ka, stride, dil, keep_att, lanes)
      -> (out, q_ext, kd, vd, att)
      ACmix's Stage II as one node (acmix_stage2.py): attention path, fused conv path (wconv: the
      folded conv weight times beta, or None for the attention alone) and mixing (alpha, None = 1);
      q_ext, kd, vd (and att where alpha needs a gradient) are what its backward reads; lanes: the
      attention kernel's small-map layout, which reads keys and values from qkv (kd and vd empty). An
      argument, not a setting read inside: the fake kernel's shapes and a compiled graph follow it
  acmix::acmix_stage2_backward(g, qkv, pe_w, q_ext, kd, grid, vd, wconv, alpha, att, heads, ka, stride,
      dil, need_pw, need_w, need_alpha) -> (dqkv, dpw, dw, dalpha)

Outputs that a backward does not need are empty tensors (an op cannot return None), each its own
(outputs may not share storage). The ops are differentiable once: the backward ops have no autograd
formula of their own.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import load_extension, torch_impl
from .acmix_stage2 import stage2_backward, stage2_forward
from .flop_formulas import register as _register_flop_formulas

_EMPTY = (0,)


def _ext(kernel: str):
    ext = load_extension(kernel)
    if ext is None:
        raise RuntimeError(f"the C++ {kernel} extension is not available; use ACMIX_FAST_BACKEND=torch")
    return ext


def _c(*ts):
    """The kernels read contiguous memory; a compiled graph may hand an op other strides than eager."""
    return tuple(None if t is None else t.contiguous() for t in ts)


# ----------------------------------------------------------------------------- local attention


@torch.library.custom_op("acmix::local_attention", mutates_args=())
def local_attention(q: Tensor, kd: Tensor, grid: Tensor, vd: Tensor, ka: int, dil: int,
                    backend: str) -> tuple[Tensor, Tensor]:
    if backend == "cpp":
        out, _ = _ext("local_attention").forward(*_c(q, kd, grid, vd), ka, dil, False)
        return out, q.new_empty(_EMPTY)
    q, kd, grid, vd = _c(q, kd, grid, vd)
    if backend == "triton":
        from . import triton_impl
        return triton_impl.forward(q, kd, grid, vd, ka, dil), q.new_empty(_EMPTY)
    return torch_impl.forward(q, kd, grid, vd, ka, dil)


@local_attention.register_fake
def _(q, kd, grid, vd, ka, dil, backend):
    BN, _, Ho, Wo = q.shape
    weights = q.new_empty((BN, ka * ka, Ho, Wo) if backend == "torch" else _EMPTY)
    return q.new_empty((BN, vd.shape[1], Ho, Wo)), weights


@torch.library.custom_op("acmix::local_attention_backward", mutates_args=())
def local_attention_backward(dout: Tensor, q: Tensor, kd: Tensor, grid: Tensor, vd: Tensor, weights: Tensor,
                             ka: int, dil: int, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    dout, q, kd, grid, vd = _c(dout, q, kd, grid, vd)
    if backend == "cpp":
        dq, dkd, dvd = _ext("local_attention").backward(dout, q, kd, grid, vd, ka, dil)
    elif backend == "triton":
        from . import triton_impl
        dq, dkd, dvd = triton_impl.backward(dout, q, kd, grid, vd, ka, dil)
    else:
        dq, dkd, dvd = torch_impl.backward(dout, q, kd, grid, vd, weights, ka, dil)
    return dq, dkd, dvd


@local_attention_backward.register_fake
def _(dout, q, kd, grid, vd, weights, ka, dil, backend):
    return torch.empty_like(q), torch.empty_like(kd), torch.empty_like(vd)


def _local_attention_setup(ctx, inputs, output):
    q, kd, grid, vd, ka, dil, backend = inputs
    weights = output[1]
    ctx.mark_non_differentiable(weights)
    ctx.save_for_backward(q, kd, grid, vd, weights)
    ctx.ka, ctx.dil, ctx.backend = ka, dil, backend


def _local_attention_grad(ctx, dout, _dweights):
    q, kd, grid, vd, weights = ctx.saved_tensors
    dq, dkd, dvd = local_attention_backward(dout.contiguous(), q, kd, grid, vd, weights, ctx.ka, ctx.dil,
                                            ctx.backend)
    return dq, dkd, None, dvd, None, None, None


local_attention.register_autograd(_local_attention_grad, setup_context=_local_attention_setup)


# ----------------------------------------------------------------------------- conv path


def _conv_out_shape(x: Tensor, w: Tensor, stride: int) -> tuple:
    B, _, _, H, W = x.shape
    return (B, w.shape[0], (H - 1) // stride + 1, (W - 1) // stride + 1)


@torch.library.custom_op("acmix::grouped_conv", mutates_args=())
def grouped_conv(x: Tensor, w: Tensor, stride: int) -> Tensor:
    return _ext("conv_path").forward(*_c(x, w), stride)


@grouped_conv.register_fake
def _(x, w, stride):
    return x.new_empty(_conv_out_shape(x, w, stride))


@torch.library.custom_op("acmix::grouped_conv_backward", mutates_args=())
def grouped_conv_backward(dout: Tensor, x: Tensor, w: Tensor, stride: int, need_dx: bool,
                          need_dw: bool) -> tuple[Tensor, Tensor]:
    dx, dwp = _ext("conv_path").backward(*_c(dout, x, w), stride, need_dx, need_dw)
    # per-(chunk, group) partial sums of dW, added here in a fixed order: no dependence on the threads
    dw = dwp.sum(0).reshape(w.shape) if need_dw else w.new_empty(_EMPTY)
    return (dx if need_dx else x.new_empty(_EMPTY)), dw


@grouped_conv_backward.register_fake
def _(dout, x, w, stride, need_dx, need_dw):
    return (torch.empty_like(x) if need_dx else x.new_empty(_EMPTY)), (torch.empty_like(w) if need_dw
                                                                        else w.new_empty(_EMPTY))


def _grouped_conv_setup(ctx, inputs, output):
    x, w, stride = inputs
    ctx.save_for_backward(x, w)  # x is a view of the Stage I output: no new activation
    ctx.stride = stride


def _grouped_conv_grad(ctx, dout):
    x, w = ctx.saved_tensors
    need_dx, need_dw = ctx.needs_input_grad[:2]
    dx, dw = grouped_conv_backward(dout.contiguous(), x, w, ctx.stride, need_dx, need_dw)
    return (dx if need_dx else None), (dw if need_dw else None), None


grouped_conv.register_autograd(_grouped_conv_grad, setup_context=_grouped_conv_setup)


# ----------------------------------------------------------------------------- Stage II as one node


@torch.library.custom_op("acmix::acmix_stage2", mutates_args=())
def acmix_stage2(qkv: Tensor, pe_w: Tensor, pe_b: Tensor, grid: Tensor, wconv: Tensor | None, alpha: Tensor | None,
                 heads: int, ka: int, stride: int, dil: int,
                 keep_att: bool, lanes: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    qkv, pe_w, grid, wconv = _c(qkv, pe_w, grid, wconv)
    return stage2_forward(qkv, pe_w, grid, wconv, alpha, heads, ka, stride, dil, keep_att, lanes)


def _stage2_shapes(qkv: Tensor, heads: int, ka: int, stride: int, dil: int, lanes: bool):
    B, C3, H, W = qkv.shape
    C = C3 // 3
    pad = dil * (ka - 1) // 2
    Ho, Wo = (H - 1) // stride + 1, (W - 1) // stride + 1
    Wq = (W + 2 * pad + stride - 1) // stride
    kd = (B * heads, C // heads, H + 2 * pad, stride, Wq)
    if lanes:
        kd = _EMPTY
    return (B, C, Ho, Wo), (B * heads, C // heads + 2, Ho, Wo), kd


@acmix_stage2.register_fake
def _(qkv, pe_w, pe_b, grid, wconv, alpha, heads, ka, stride, dil, keep_att, lanes):
    out, q_ext, kd = _stage2_shapes(qkv, heads, ka, stride, dil, lanes)
    return (qkv.new_empty(out), qkv.new_empty(q_ext), qkv.new_empty(kd), qkv.new_empty(kd),
            qkv.new_empty(out if keep_att else _EMPTY))


@torch.library.custom_op("acmix::acmix_stage2_backward", mutates_args=())
def acmix_stage2_backward(g: Tensor, qkv: Tensor, pe_w: Tensor, q_ext: Tensor, kd: Tensor, grid: Tensor, vd: Tensor,
                          wconv: Tensor | None, alpha: Tensor | None, att: Tensor, heads: int, ka: int, stride: int,
                          dil: int, need_pw: bool, need_w: bool,
                          need_alpha: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    g, qkv, pe_w, q_ext, kd, grid, vd, wconv, att = _c(g, qkv, pe_w, q_ext, kd, grid, vd, wconv, att)
    return stage2_backward(g, qkv, pe_w, q_ext, kd, grid, vd, wconv, alpha, att, heads, ka, stride, dil,
                           need_pw, need_w, need_alpha)


@acmix_stage2_backward.register_fake
def _(g, qkv, pe_w, q_ext, kd, grid, vd, wconv, alpha, att, heads, ka, stride, dil, need_pw, need_w, need_alpha):
    return (torch.empty_like(qkv), torch.empty_like(pe_w) if need_pw else pe_w.new_empty(_EMPTY),
            torch.empty_like(wconv) if need_w else qkv.new_empty(_EMPTY),
            qkv.new_empty((1,) if need_alpha else _EMPTY))


def _stage2_setup(ctx, inputs, output):
    qkv, pe_w, pe_b, grid, wconv, alpha, heads, ka, stride, dil, keep_att, _lanes = inputs
    _, q_ext, kd, vd, att = output
    ctx.mark_non_differentiable(q_ext, kd, vd, att)
    ctx.save_for_backward(qkv, pe_w, q_ext, kd, grid, vd, wconv, alpha, att)
    ctx.geo = (heads, ka, stride, dil)
    ctx.pe_b_shape = pe_b.shape


def _stage2_grad(ctx, g, *_unused):
    qkv, pe_w, q_ext, kd, grid, vd, wconv, alpha, att = ctx.saved_tensors
    need_x, need_pw, need_pb, _, need_w, need_a = ctx.needs_input_grad[:6]
    need_w = bool(need_w and wconv is not None)
    need_a = bool(need_a and alpha is not None)
    if need_a and att.numel() == 0:
        raise RuntimeError("acmix::acmix_stage2: alpha needs a gradient but keep_att was False (the "
                           "attention output its gradient reads was not kept)")
    dqkv, dpw, dw, da = acmix_stage2_backward(g.contiguous(), qkv, pe_w, q_ext, kd, grid, vd, wconv, alpha, att,
                                              *ctx.geo, bool(need_pw), need_w, need_a)
    dpb = qkv.new_zeros(ctx.pe_b_shape) if need_pb else None  # exact: pe's bias cancels in the logits
    return ((dqkv if need_x else None), (dpw if need_pw else None), dpb, None, (dw if need_w else None),
            (da if need_a else None), None, None, None, None, None, None)


acmix_stage2.register_autograd(_stage2_grad, setup_context=_stage2_setup)


_register_flop_formulas()
