"""Stage I's 1x1 convolution as a batched GEMM (modules/pointwise.py) equals F.conv2d."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from modules.local_attention import QKVProjection
from modules.pointwise import pointwise_conv, pointwise_conv_reference, uses_matmul


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(2, 5, 7, 6), (1, 8, 3, 9)])
def test_values_and_gradients_equal_conv2d(bias, shape):
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    w = torch.randn(11, shape[1], 1, 1, dtype=torch.float64, requires_grad=True)
    b = torch.randn(11, dtype=torch.float64, requires_grad=True) if bias else None
    assert uses_matmul(x)
    g = torch.randn(shape[0], 11, *shape[2:], dtype=torch.float64)
    outs, grads = [], []
    for fn in (pointwise_conv, pointwise_conv_reference):
        y = fn(x, w, b)
        params = [x, w] + ([b] if bias else [])
        outs.append(y)
        grads.append(torch.autograd.grad(y, params, g))
    assert torch.allclose(outs[0], outs[1], atol=1e-12)
    for a, r in zip(*grads):
        assert torch.allclose(a, r, atol=1e-11)


def test_gradcheck():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 1, 1, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(pointwise_conv, (x, w, b))


def test_fallbacks_take_conv2d():
    x = torch.randn(2, 4, 5, 5)
    assert not uses_matmul(x.to(memory_format=torch.channels_last))
    assert not uses_matmul(x.transpose(2, 3))
    assert not uses_matmul(x.half())
    w = torch.randn(3, 4, 1, 1)
    cl = x.to(memory_format=torch.channels_last)
    assert torch.allclose(pointwise_conv(cl, w, None), F.conv2d(x, w), atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not uses_matmul(x)
        assert pointwise_conv(x, w, None).dtype == torch.bfloat16


def test_trace_sees_a_convolution():
    proj = QKVProjection(4, 4)
    traced = torch.jit.trace(proj, torch.randn(1, 4, 5, 5))
    kinds = {n.kind() for n in traced.inlined_graph.nodes()}
    assert "aten::_convolution" in kinds and "aten::baddbmm" not in kinds


def test_projection_module_equals_its_conv():
    proj = QKVProjection(6, 8).double()
    x = torch.randn(2, 6, 5, 4, dtype=torch.float64)
    assert torch.allclose(proj(x), proj.qkv(x), atol=1e-12)
