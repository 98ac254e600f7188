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


# every path of pointwise_conv: per-image bmm (more than SMALL_MAP pixels), one mm (at most SMALL_MAP
# pixels), each with and without bias and at strides 1 and 2 (odd sides: ceil(H / s) rows, as F.conv2d)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("hw", [(5, 7), (4, 4), (2, 2), (3, 3), (1, 1)])
def test_paths_and_strides_equal_conv2d(bias, stride, hw):
    torch.manual_seed(1)
    x = torch.randn(3, 6, *hw, dtype=torch.float64, requires_grad=True)
    w = torch.randn(10, 6, 1, 1, dtype=torch.float64, requires_grad=True)
    b = torch.randn(10, dtype=torch.float64, requires_grad=True) if bias else None
    params = [x, w] + ([b] if bias else [])
    y = pointwise_conv(x, w, b, stride)
    r = pointwise_conv_reference(x, w, b, stride)
    assert y.shape == r.shape and y.is_contiguous()
    assert torch.allclose(y, r, atol=1e-12)
    g = torch.randn_like(r)
    for a, e in zip(torch.autograd.grad(y, params, g), torch.autograd.grad(r, params, g)):
        assert torch.allclose(a, e, atol=1e-11)
    assert torch.autograd.gradcheck(lambda *p: pointwise_conv(p[0], p[1], p[2] if bias else None, stride),
                                    tuple(params) if bias else tuple(params) + (None,))


def test_small_map_threshold_switches_path():
    from modules import pointwise

    x = torch.randn(2, 3, 2, 2)
    w = torch.randn(5, 3, 1, 1)
    assert 2 * 2 <= pointwise.SMALL_MAP < 3 * 3  # both products are exercised by the shapes above
    with torch.autograd.profiler.profile() as prof:
        pointwise_conv(x, w, None)
        pointwise_conv(torch.randn(2, 3, 3, 3), w, None)
    names = [e.name for e in prof.function_events]
    assert "aten::mm" in names and "aten::bmm" in names


def test_pointwise_conv2d_module_is_a_conv2d():
    from modules.pointwise import PointwiseConv2d

    torch.manual_seed(0)
    m = PointwiseConv2d(6, 8, 1, stride=2, bias=False).double()
    ref = torch.nn.Conv2d(6, 8, 1, stride=2, bias=False).double()
    assert isinstance(m, torch.nn.Conv2d)
    assert list(m.state_dict()) == list(ref.state_dict()) == ["weight"]
    ref.load_state_dict(m.state_dict())
    x = torch.randn(2, 6, 9, 9, dtype=torch.float64, requires_grad=True)
    y, r = m(x), ref(x)
    assert torch.allclose(y, r, atol=1e-12)
    gy = torch.autograd.grad(y.square().sum(), [x, m.weight])
    gr = torch.autograd.grad(r.square().sum(), [x, ref.weight])
    for a, e in zip(gy, gr):
        assert torch.allclose(a, e, atol=1e-10)
    with pytest.raises(ValueError, match="1x1 conv"):
        PointwiseConv2d(6, 8, 3)


def test_pointwise_conv2d_runs_conv2d_under_counters():
    from torch.utils.flop_counter import FlopCounterMode

    from modules.pointwise import PointwiseConv2d

    m = PointwiseConv2d(4, 6, 1, bias=False)
    with FlopCounterMode(display=False) as c:
        m(torch.randn(2, 4, 5, 5))
    assert c.get_total_flops() == 2 * 2 * 4 * 6 * 25
    assert "convolution" in str(list(c.get_flop_counts()["Global"]))
    traced = torch.jit.trace(m, torch.randn(1, 4, 5, 5))
    assert "aten::_convolution" in {n.kind() for n in traced.inlined_graph.nodes()}


def test_resnet_bottleneck_convs_are_pointwise_and_keys_unchanged():
    from modules import create_model
    from modules.pointwise import PointwiseConv2d

    m = create_model("resnet26-conv", stem="small", img_size=16, widths=[8, 8, 8, 8], in_chans=1, num_classes=10)
    blk = m.layer2[0]
    assert all(isinstance(c, PointwiseConv2d) for c in (blk.conv1, blk.conv3, blk.downsample[0]))
    assert {"layer2.0.conv1.weight", "layer2.0.conv3.weight", "layer2.0.downsample.0.weight",
            "layer2.0.downsample.1.running_mean"} <= set(m.state_dict())
