"""fvcore op handles for every op the suite's modules run, tagged by cost category.

A handle returns Counter({"<op>|<category>": MACs}); the fvcore voice keeps the categories apart
and `Conventions` (bench/formulas.py) decides which ones count. Ops in FREE_OPS cost nothing.
"""
from __future__ import annotations

import math
from collections import Counter


def _shape(v):
    from fvcore.nn.jit_handles import get_shape
    try:
        return get_shape(v)
    except Exception:
        return None


def _numel(shape) -> int:
    return math.prod(int(s) for s in shape) if shape is not None else 0


def _is_tensor(v) -> bool:
    return _shape(v) is not None


def _big_tensor(v) -> bool:
    s = _shape(v)
    return s is not None and _numel(s) > 1


def _h_conv(inputs, outputs):
    w, out = _shape(inputs[1]), _shape(outputs[0])
    c = Counter({"conv|mac": _numel(out) * _numel(w[1:])})
    if _is_tensor(inputs[2]):
        c["conv|bias"] = _numel(out)
    return c


def _h_linear(inputs, outputs):
    w, out = _shape(inputs[1]), _shape(outputs[0])
    c = Counter({"linear|mac": _numel(out) * int(w[-1])})
    if len(inputs) > 2 and _is_tensor(inputs[2]):
        c["linear|bias"] = _numel(out)
    return c


def _h_addmm(inputs, outputs):
    a, out = _shape(inputs[1]), _shape(outputs[0])
    c = Counter({"addmm|mac": _numel(out) * int(a[-1])})
    if _is_tensor(inputs[0]):
        c["addmm|bias"] = _numel(out)
    return c


def _h_baddbmm(inputs, outputs):
    """baddbmm(bias, a, b): a batched product plus a broadcast bias (the suite's 1x1 convs on CPU)."""
    a, out = _shape(inputs[1]), _shape(outputs[0])
    c = Counter({"baddbmm|mac": _numel(out) * int(a[-1])})
    if _is_tensor(inputs[0]):
        c["baddbmm|bias"] = _numel(out)
    return c


def _h_matmul(name):
    def h(inputs, outputs):
        a, out = _shape(inputs[0]), _shape(outputs[0])
        return Counter({f"{name}|mac": _numel(out) * int(a[-1])})
    return h


def _h_einsum(inputs, outputs):
    """Two-operand einsum: one MAC per point of the joint index space (the naive loop)."""
    eq = inputs[0].toIValue().replace(" ", "")
    operands = list(inputs[1].node().inputs())
    lhs = eq.split("->")[0].split(",")
    if len(operands) < 2:
        return Counter()
    sizes = {}
    for letters, op in zip(lhs, operands):
        for ch, n in zip(letters, _shape(op)):
            sizes[ch] = int(n)
    return Counter({"einsum|mac": math.prod(sizes.values())})


def _h_sdpa(inputs, outputs):
    q, k, v = (_shape(x) for x in inputs[:3])
    rows = _numel(q[:-1]) * int(k[-2])
    return Counter({"scaled_dot_product_attention|mac": rows * (int(q[-1]) + int(v[-1])),
                    "scaled_dot_product_attention|softmax": rows})


def _h_mul(inputs, outputs):
    # a product of two tensors is a MAC (its accumulation is the following sum or add); a scaling
    # by a scalar or a one-element tensor is not counted
    if _big_tensor(inputs[0]) and _big_tensor(inputs[1]):
        return Counter({"mul|mac": _numel(_shape(outputs[0]))})
    return Counter()


def _h_elem(name):
    def h(inputs, outputs):
        if len(inputs) > 1 and _big_tensor(inputs[0]) and _big_tensor(inputs[1]):
            return Counter({f"{name}|elem": _numel(_shape(outputs[0]))})
        return Counter()
    return h


def _h_numel(name, category, which="out", scale=1):
    def h(inputs, outputs):
        v = outputs[0] if which == "out" else inputs[0]
        return Counter({f"{name}|{category}": scale * _numel(_shape(v))})
    return h


def _h_batch_norm(inputs, outputs):
    affine = _is_tensor(inputs[1])
    return Counter({"batch_norm|norm": _numel(_shape(inputs[0])) * (2 if affine else 1)})


def _h_norm(name, affine_index):
    def h(inputs, outputs):
        affine = _is_tensor(inputs[affine_index])
        return Counter({f"{name}|norm": _numel(_shape(inputs[0])) * (5 if affine else 4)})
    return h


# data movement, integer/index arithmetic, creation, comparisons, reductions that only accumulate
FREE_OPS = (
    "Int ScalarImplicit __and__ __or__ arange bitwise_not cat chunk clamp clamp_ constant_pad_nd contiguous copy_ "
    "detach dropout dropout_ empty eq expand expand_as flatten floor floor_divide full full_like gather ge gt index "
    "index_put_ index_select masked_fill masked_fill_ max narrow new_empty new_full new_zeros nonzero ones "
    "ones_like permute remainder reshape roll select size slice split split_with_sizes squeeze stack t to "
    "transpose type_as unbind unflatten unsqueeze unsqueeze_ view view_as zeros zeros_like pad reflection_pad2d "
    "linspace neg ne lt le where sum im2col unfold repeat repeat_interleave clone max_pool2d max_pool1d "
    "adaptive_max_pool2d pow div floor_divide_ mean alias lift_fresh numpy_T"
).split()

ACTIVATIONS = ("relu", "relu_", "gelu", "silu", "silu_", "sigmoid", "tanh", "hardswish", "hardswish_",
               "leaky_relu", "leaky_relu_", "elu", "hardtanh", "hardtanh_", "hardsigmoid", "mish")


def suite_handles() -> dict:
    """fvcore op handles for every op the suite's modules run (jit names -> handle or None = free)."""
    h = {
        "aten::_convolution": _h_conv,
        "aten::conv2d": _h_conv,
        "aten::linear": _h_linear,
        "aten::addmm": _h_addmm,
        "aten::mm": _h_matmul("mm"),
        "aten::matmul": _h_matmul("matmul"),
        "aten::bmm": _h_matmul("bmm"),
        "aten::baddbmm": _h_baddbmm,
        "aten::einsum": _h_einsum,
        "aten::scaled_dot_product_attention": _h_sdpa,
        "aten::mul": _h_mul,
        "aten::mul_": _h_mul,
        "aten::add": _h_elem("add"),
        "aten::add_": _h_elem("add"),
        "aten::sub": _h_elem("sub"),
        "aten::rsub": _h_elem("sub"),
        "aten::softmax": _h_numel("softmax", "softmax", "in"),
        "aten::_softmax": _h_numel("softmax", "softmax", "in"),
        "aten::batch_norm": _h_batch_norm,
        "aten::layer_norm": _h_norm("layer_norm", 2),
        "aten::group_norm": _h_norm("group_norm", 2),
        "aten::adaptive_avg_pool2d": _h_numel("adaptive_avg_pool2d", "pool", "in"),
        "aten::adaptive_avg_pool1d": _h_numel("adaptive_avg_pool1d", "pool", "in"),
        "aten::avg_pool2d": _h_numel("avg_pool2d", "pool", "in"),
    }
    from modules._fast.flop_formulas import fvcore_handles
    h.update(fvcore_handles())  # the kernels' operators (acmix::local_attention)
    for a in ACTIVATIONS:
        h[f"aten::{a}"] = _h_numel(a.rstrip("_"), "act")
    for f in FREE_OPS:
        h.setdefault(f"aten::{f}", None)
    return h


# per-module reinterpretation of uncounted elementwise adds: the adds of a tensor shift are its
# aggregation; the add after a decomposed conv's shift is the conv's bias
def elem_category(module) -> str:
    from modules import ShiftAggregation
    from modules.conv import ShiftSum
    if isinstance(module, ShiftAggregation) and module.shift == "tensor":
        return "shift_add"
    if isinstance(module, ShiftSum):
        return "bias"
    return "elem"
