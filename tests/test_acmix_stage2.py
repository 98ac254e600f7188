"""ACmix Stage II as one autograd node (modules/_fast/acmix_stage2.py) against its references.

The node runs by default for sliding-window ACmix on CPU float32/float64 with both C++ kernels; its
references are the same block with the node switched off (the two paths as separate autograd ops)
and `impl="reference"` (docs/operators.md's formulas). Values and the gradients of the input and of every
parameter in float64 over strides, dilations, window sizes, odd maps, heads and fixed mixing;
gradcheck of the node; the kernel's reflection-folded key/value gradient against torch's padding
backward; when the node must not run (counters, other backends, dtypes, one path, other shifts).
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck

import modules.operators as ops
from modules import _fast, set_stage2_impl
from modules._fast import acmix_stage2 as node
from modules.operators import ACmix, LocalSelfAttention

f64 = torch.float64
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(
    _fast.load_extension("local_attention") is None or _fast.load_extension("conv_path") is None,
    reason=f"C++ extensions could not be built here: {_fast.extension_error()}")


def _block(C, heads, ka, stride, dil, mixing="learnable", seed=0, dtype=f64):
    torch.manual_seed(seed)
    m = ACmix(C, C, kernel_att=ka, head=heads, stride=stride, dilation=dil, mixing=mixing).to(dtype)
    with torch.no_grad():  # away from the symmetric init, so a swapped or dropped term shows
        if mixing == "learnable":
            m.stage2.alpha.fill_(0.7)
            m.stage2.beta.fill_(-0.4)
        m.stage2.attention.pe.weight.normal_()
        m.stage2.attention.pe.bias.normal_()
    return m


def _run(m, x, gy):
    m.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_(True)
    y = m(x)
    y.backward(gy)
    grads = {"x": x.grad.clone()}
    grads.update({n: p.grad.clone() for n, p in m.named_parameters() if p.requires_grad})
    return y.detach(), grads


def _without_node(monkeypatch):
    monkeypatch.setattr(ops, "stage2_node_applies", lambda qkv, conv=True: False)


CASES = [  # (B, C, H, W), heads, k_a, stride, dilation
    ((2, 16, 9, 11), 4, 7, 1, 1),
    ((2, 16, 9, 11), 4, 7, 2, 1),
    ((2, 16, 10, 12), 4, 5, 2, 1),
    ((1, 8, 13, 9), 2, 3, 3, 2),
    ((2, 16, 8, 8), 4, 1, 1, 1),
    ((1, 24, 7, 15), 3, 3, 1, 3),
    ((3, 8, 12, 12), 1, 7, 2, 1),
]


def _node_equals_split_and_reference(m, x, monkeypatch):
    """m's output and gradients with the node equal those of its split fast path and of the reference."""
    assert m.stage2_one_node(m.stage1(x)), "the one-node Stage II should run here"
    y, g = _run(m, x, gy := torch.randn_like(m(x)))
    with monkeypatch.context() as mp:
        _without_node(mp)
        assert not m.stage2_one_node(m.stage1(x))
        y_split, g_split = _run(m, x, gy)
    set_stage2_impl(m, "reference")
    y_ref, g_ref = _run(m, x, gy)
    torch.testing.assert_close(y, y_split, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    assert set(g) == set(g_ref)
    for name in g:
        torch.testing.assert_close(g[name], g_split[name], rtol=1e-10, atol=1e-10, msg=lambda s: f"{name}: {s}")
        torch.testing.assert_close(g[name], g_ref[name], rtol=1e-9, atol=1e-9, msg=lambda s: f"{name}: {s}")
    return g


@pytest.fixture(params=["rows", "lanes"])
def layout(request, monkeypatch):
    """The node's two kernel layouts (acmix_stage2: attention and conv path), each forced in turn."""
    monkeypatch.setattr(node, "LAYOUT", request.param)
    return request.param


@pytest.mark.parametrize("shape,heads,ka,stride,dil", CASES)
def test_node_equals_split_paths_and_reference_float64(shape, heads, ka, stride, dil, layout, monkeypatch):
    m = _block(shape[1], heads, ka, stride, dil)
    g = _node_equals_split_and_reference(m, torch.randn(*shape, dtype=f64), monkeypatch)
    assert g["stage2.attention.pe.bias"].abs().max() == 0  # cancels in the logits (docs/operators.md)


@pytest.mark.parametrize("mixing", ["half", "alpha frozen"])
def test_node_with_fixed_mixing(mixing):
    m = _block(16, 4, 5, 1, 1, mixing="half" if mixing == "half" else "learnable")
    if mixing == "alpha frozen":
        m.stage2.alpha.requires_grad_(False)
    x = torch.randn(2, 16, 9, 9, dtype=f64)
    assert m.stage2_one_node(m.stage1(x))
    y, g = _run(m, x, gy := torch.randn(2, 16, 9, 9, dtype=f64))
    set_stage2_impl(m, "reference")
    y_ref, g_ref = _run(m, x, gy)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    for name in g:
        torch.testing.assert_close(g[name], g_ref[name], rtol=1e-9, atol=1e-9)


def test_node_float32_close_to_reference():
    m = _block(32, 4, 7, 1, 1, dtype=torch.float32)
    x = torch.randn(2, 32, 14, 14)
    y, g = _run(m, x, gy := torch.randn(2, 32, 14, 14))
    set_stage2_impl(m, "reference")
    y_ref, g_ref = _run(m, x, gy)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
    for name in g:
        torch.testing.assert_close(g[name], g_ref[name], rtol=2e-3, atol=2e-3, msg=lambda s: f"{name}: {s}")


@pytest.mark.parametrize("stride,dil", [(1, 1), (2, 1), (1, 2)])
def test_node_gradcheck(stride, dil, layout):
    torch.manual_seed(1)
    B, N, d, H, W, ka, k = 1, 2, 3, 7, 6, 3, 3
    C = N * d
    qkv = torch.randn(B, 3 * C, H, W, dtype=f64, requires_grad=True)
    pe_w = torch.randn(d, 2, 1, 1, dtype=f64, requires_grad=True)
    pe_b = torch.randn(d, dtype=f64, requires_grad=True)
    wc = torch.randn(d * N, 3 * N, k, k, dtype=f64, requires_grad=True)
    a = torch.tensor([0.8], dtype=f64, requires_grad=True)
    b = torch.tensor([-0.6], dtype=f64, requires_grad=True)
    assert node.applies(qkv)
    fn = lambda *t: node.acmix_stage2(*t, heads=N, kernel_att=ka, stride=stride, dilation=dil)  # noqa: E731
    assert gradcheck(fn, (qkv, pe_w, pe_b, wc, a, b), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_backward_fold_equals_padding_backward(stride):
    """backward_fold adds into dst exactly what the plain backward's padded dk/dv give through
    torch's reflection padding (autograd of F.pad), at the right channels, keeping dst's contents."""
    from modules.local_attention import _reflect, position_grid

    ext = _fast.load_extension("local_attention")
    torch.manual_seed(2)
    B, N, d, H, W, ka, dil = 2, 3, 4, 9, 11, 5, 1
    C, pad, s = N * d, dil * (ka - 1) // 2, stride
    Ho, Wo = -(-H // s), -(-W // s)
    k = torch.randn(B, C, H, W, dtype=f64, requires_grad=True)
    v = torch.randn(B, C, H, W, dtype=f64, requires_grad=True)
    Hp, Wp = H + 2 * pad, W + 2 * pad
    kd = _fast.split_phases(_reflect(k, pad).reshape(B * N, d, Hp, Wp), s).contiguous()
    vd = _fast.split_phases(_reflect(v, pad).reshape(B * N, d, Hp, Wp), s).contiguous()
    grid = _fast.split_phases(_reflect(position_grid(H, W, f64), pad).reshape(2, Hp, Wp), s).contiguous()
    q = torch.randn(B * N, d + 2, Ho, Wo, dtype=f64)
    dout = torch.randn(B * N, d, Ho, Wo, dtype=f64)
    dq, dkd, dvd = ext.backward(dout, q, kd.detach(), grid, vd.detach(), ka, dil)
    dk, dv = torch.autograd.grad((kd, vd), (k, v), (dkd, dvd))
    prior = torch.randn(B, 3 * C + 1, H, W, dtype=f64)
    dst = prior.clone()
    dq2 = ext.backward_fold(dout, q, kd.detach(), grid, vd.detach(), ka, dil, dst, N, 1, 1 + 2 * C, pad, -0.75)
    torch.testing.assert_close(dq2, dq, rtol=0, atol=0)  # dq is returned unscaled
    want = prior.clone()
    want[:, 1:1 + C] += -0.75 * dk
    want[:, 1 + 2 * C:] += -0.75 * dv
    torch.testing.assert_close(dst, want, rtol=1e-12, atol=1e-12)
    n = torch.get_num_threads()  # each (b, n) folds into its own channels: bitwise the same for any thread count
    try:
        runs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            d_t = prior.clone()
            runs.append((ext.backward_fold(dout, q, kd.detach(), grid, vd.detach(), ka, dil, d_t, N, 1, 1 + 2 * C,
                                           pad, 0.5), d_t))
    finally:
        torch.set_num_threads(n)
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


def test_backward_fold_rejects_mismatched_destination():
    ext = _fast.load_extension("local_attention")
    q, kd = torch.zeros(2, 6, 4, 4), torch.zeros(2, 4, 8, 1, 8)
    grid, vd, dout = torch.zeros(2, 8, 1, 8), torch.zeros(2, 4, 8, 1, 8), torch.zeros(2, 4, 4, 4)
    with pytest.raises(RuntimeError, match="batch must be B \\* heads"):
        ext.backward_fold(dout, q, kd, grid, vd, 5, 1, torch.zeros(3, 12, 4, 4), 1, 0, 4, 2, 1.0)
    with pytest.raises(RuntimeError, match="channels leave dst"):
        ext.backward_fold(dout, q, kd, grid, vd, 5, 1, torch.zeros(1, 10, 4, 4), 2, 0, 4, 2, 1.0)


def test_node_does_not_run_where_its_references_must(monkeypatch):
    x = torch.randn(1, 16, 9, 9)
    m = _block(16, 4, 7, 1, 1, dtype=torch.float32)
    assert m.stage2_one_node(m.stage1(x))
    assert _block(16, 4, 7, 1, 1, mixing="att", dtype=torch.float32).stage2_one_node(m.stage1(x))  # attention alone
    assert not ACmix(16, 16, mixing="conv").stage2_one_node(m.stage1(x))  # no attention: the conv kernel alone
    tensor_shift = ACmix(16, 16, shift="tensor")  # per-offset shifts: the FC cannot fold into the conv
    assert not tensor_shift.stage2_one_node(tensor_shift.stage1(x))
    ref = _block(16, 4, 7, 1, 1, dtype=torch.float32)
    set_stage2_impl(ref, "reference")
    assert not ref.stage2_one_node(m.stage1(x))
    assert not m.stage2_one_node(m.stage1(x).half())
    assert not m.stage2_one_node(m.stage1(x)[:, :, :, :8])  # not contiguous
    monkeypatch.setenv("ACMIX_FAST_BACKEND", "torch")
    assert not m.stage2_one_node(m.stage1(x))
    monkeypatch.setenv("ACMIX_FAST_BACKEND", "cpp")
    assert m.stage2_one_node(m.stage1(x))
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False):
        assert not m.stage2_one_node(m.stage1(x))


def test_node_results_do_not_depend_on_the_thread_count():
    """1 and 2 threads agree to rounding (a race or a lost partial sum would differ at O(1)). Not bitwise:
    the node's small batched BLAS products (the positional term, 2 x d per head) and torch's reductions
    may order their sums by thread count; the C++ kernels themselves do not (tested bitwise in
    test_fast_local_attention.py and test_fast_conv_path.py)."""
    # one process per thread count (set before any work), each running both strides from the same seed
    code = (
        "import sys, torch; sys.path.insert(0, {repo!r}); torch.set_num_threads(int(sys.argv[1]))\n"
        "from modules.operators import ACmix\n"
        "res = {{}}\n"
        "for stride in (1, 2):\n"
        "    torch.manual_seed(0); m = ACmix(32, 32, stride=stride).double()\n"
        "    x = torch.randn(3, 32, 13, 11, dtype=torch.float64, requires_grad=True)\n"
        "    assert m.stage2_one_node(m.stage1(x))\n"
        "    y = m(x); y.backward(torch.randn_like(y))\n"
        "    out = dict(y=y, x=x.grad, **{{n: p.grad for n, p in m.named_parameters()}})\n"
        "    res[stride] = {{k: v.detach().flatten().tolist() for k, v in out.items()}}\n"
        "print(repr(res))\n"
    ).format(repo=REPO)
    by_threads = []
    for n in ("1", "2"):
        o = subprocess.run([sys.executable, "-c", code, n], capture_output=True, text=True, timeout=300)
        assert o.returncode == 0, o.stderr[-2000:]
        by_threads.append(eval(o.stdout.strip().splitlines()[-1]))
    assert list(by_threads[0]) == list(by_threads[1]) == [1, 2]
    for stride in (1, 2):
        outs = [by_threads[0][stride], by_threads[1][stride]]
        assert outs[0].keys() == outs[1].keys()
        for k in outs[0]:
            assert outs[0][k] == pytest.approx(outs[1][k], rel=1e-11, abs=1e-13), (stride, k)


@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("pad", [0, 1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, f64])
def test_pad_split_equals_reflect_pad_then_phase_split(stride, pad, dtype):
    ext = _fast.load_extension("local_attention")
    for shape, c0, c in (((2, 11, 7, 9), 3, 6), ((3, 70, 5, 8), 5, 60)):  # planes per thread chunk: 1, and several
        src = torch.randn(*shape, dtype=dtype)
        got = ext.pad_split(src, c0, c, pad, stride)
        part = src[:, c0:c0 + c]
        want = _fast.split_phases(F.pad(part, (pad,) * 4, mode="reflect") if pad else part, stride)
        assert got.shape == want.shape
        assert torch.equal(got, want.contiguous())  # a copy: bitwise, zeros beyond the padded width included


def test_pad_split_rejects_bad_arguments():
    ext = _fast.load_extension("local_attention")
    with pytest.raises(RuntimeError, match="pad < H"):
        ext.pad_split(torch.zeros(1, 4, 3, 8), 0, 4, 3, 1)
    with pytest.raises(RuntimeError, match="channel range"):
        ext.pad_split(torch.zeros(1, 4, 8, 8), 2, 3, 1, 1)


@pytest.mark.parametrize("shape,heads,ka,stride,dil", CASES[:4])
def test_attention_alone_node_sa_and_att_mixing(shape, heads, ka, stride, dil, layout, monkeypatch):
    """LocalSelfAttention and ACmix with mixing "att" run the node without the conv path: same values and
    gradients as their split fast path and the reference."""
    torch.manual_seed(3)
    C = shape[1]
    sa = LocalSelfAttention(C, C, kernel_att=ka, head=heads, stride=stride, dilation=dil).double()
    att_only = _block(C, heads, ka, stride, dil, mixing="att")
    for m in (sa, att_only):
        with torch.no_grad():
            m.stage2.attention.pe.weight.normal_()
        _node_equals_split_and_reference(m, torch.randn(*shape, dtype=f64), monkeypatch)


def test_attention_alone_node_gradcheck(layout):
    torch.manual_seed(4)
    B, N, d, H, W = 1, 2, 3, 7, 6
    qkv = torch.randn(B, 3 * N * d, H, W, dtype=f64, requires_grad=True)
    pe_w = torch.randn(d, 2, 1, 1, dtype=f64, requires_grad=True)
    a = torch.tensor([1.3], dtype=f64, requires_grad=True)
    assert node.applies(qkv, conv=False)
    plain = lambda q, w: node.acmix_stage2(q, w, None, None, None, None, heads=N, kernel_att=3, stride=2)  # noqa: E731
    scaled = lambda q, w, al: node.acmix_stage2(q, w, None, None, al, None, heads=N, kernel_att=3, stride=2)  # noqa: E731
    assert gradcheck(plain, (qkv, pe_w), eps=1e-6, atol=1e-7)
    assert gradcheck(scaled, (qkv, pe_w, a), eps=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------- the lanes layout


def _lane_inputs(B, N, d, H, W, ka, s, dil, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    C, pad = N * d, dil * (ka - 1) // 2
    qkv = torch.randn(B, 3 * C, H, W, generator=g, dtype=dtype)
    pe_w = torch.randn(d, 2, 1, 1, generator=g, dtype=dtype)
    return qkv, pe_w, node._grid(H, W, pad, s, dtype, "cpu"), pad


# head dims with their own compiled instance (2, 4, 5, 8, 9, 13, 16) and run-time ones (1, 3, 12); planes
# (B * heads) below, at and past one vector's lanes, not a multiple of them; strides 1-3, dilation, odd maps
LANE_CASES = [  # B, heads, d, H, W, k_a, stride, dilation
    (3, 4, 2, 16, 16, 7, 1, 1), (5, 3, 4, 9, 7, 7, 2, 1), (2, 4, 5, 8, 8, 7, 1, 1), (4, 4, 8, 8, 8, 7, 2, 1),
    (3, 3, 9, 4, 4, 7, 1, 1), (9, 4, 13, 4, 4, 7, 2, 1), (4, 4, 16, 4, 4, 7, 2, 1), (2, 2, 16, 5, 6, 3, 1, 2),
    (1, 3, 3, 7, 6, 3, 3, 1), (6, 1, 12, 6, 6, 5, 1, 1), (2, 5, 1, 9, 9, 3, 2, 2), (1, 1, 2, 4, 4, 3, 1, 1),
]


@pytest.mark.parametrize("B,N,d,H,W,ka,s,dil", LANE_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, f64])
def test_lanes_kernel_equals_row_kernel(B, N, d, H, W, ka, s, dil, dtype):
    """lanes_forward / lanes_backward_fold against the row kernel's forward and backward_fold on the same
    inputs: output, query gradient and the folded key/value gradient added into a map that already holds
    values (the conv path's gradient in the node); the same bits at 1 and 2 threads."""
    ext = _fast.load_extension("local_attention")
    qkv, pe_w, grid, pad = _lane_inputs(B, N, d, H, W, ka, s, dil, dtype)
    out, q_ext, kd, vd, _ = node.stage2_forward(qkv, pe_w, grid, None, None, N, ka, s, dil, False, False)
    assert kd.numel() > 0
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == f64 else dict(rtol=2e-5, atol=2e-6)
    gy = torch.randn_like(out)
    held = torch.randn_like(qkv)
    dst_rows = held.clone()
    dq_rows = ext.backward_fold(gy.view(B * N, d, *out.shape[-2:]), q_ext, kd, grid, vd, ka, dil, dst_rows, N,
                                N * d, 2 * N * d, pad, 0.6)
    runs, threads = [], torch.get_num_threads()
    try:
        for nt in (1, 2):  # groups of planes are tasks: the same bits at any thread count
            torch.set_num_threads(nt)
            dst_lanes = held.clone()
            dq_lanes = ext.lanes_backward_fold(gy, qkv, q_ext, grid, dst_lanes, N, ka, s, dil, pad, 0.6)
            runs.append((ext.lanes_forward(qkv, q_ext, grid, N, ka, s, dil, pad), dq_lanes, dst_lanes))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*runs):
        assert torch.equal(a, b)
    lanes, dq_lanes, dst_lanes = runs[0]
    torch.testing.assert_close(lanes, out, **tol)
    torch.testing.assert_close(dq_lanes, dq_rows, **tol)
    torch.testing.assert_close(dst_lanes, dst_rows, **tol)
    assert torch.equal(dst_lanes[:, :N * d], held[:, :N * d])  # query channels: the caller adds dq


def test_lanes_kernel_gradcheck_and_reference():
    """The node in the lanes layout against docs/operators.md's formulas (local_attention_reference) through
    autograd, and gradcheck of the lanes node itself, float64, planes not a multiple of the lanes."""
    from modules.local_attention import local_attention_reference
    torch.manual_seed(5)
    B, N, d, H, W, ka, s = 3, 3, 2, 6, 5, 3, 2
    C = N * d
    qkv = torch.randn(B, 3 * C, H, W, dtype=f64, requires_grad=True)
    pe_w = torch.randn(d, 2, 1, 1, dtype=f64, requires_grad=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(node, "LAYOUT", "lanes")
        fn = lambda q, w: node.acmix_stage2(q, w, None, None, None, None, heads=N, kernel_att=ka, stride=s)  # noqa: E731
        y = fn(qkv, pe_w)
        gy = torch.randn_like(y)
        got = torch.autograd.grad(y, (qkv, pe_w), gy)
        assert gradcheck(fn, (qkv, pe_w), eps=1e-6, atol=1e-7)
    q, k, v = qkv.chunk(3, dim=1)
    y_ref = local_attention_reference(q, k, v, pe_w, None, N, ka, s)
    want = torch.autograd.grad(y_ref, (qkv, pe_w), gy)
    torch.testing.assert_close(y, y_ref, rtol=1e-11, atol=1e-11)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_layout_choice_and_its_errors(monkeypatch):
    assert node.use_lanes(128, 4, 2, 16, 16) and node.use_lanes(128, 4, 16, 4, 4)  # the default cells' maps
    assert not node.use_lanes(32, 4, 8, 32, 32)  # a group's buffers past L2: rows
    assert not node.use_lanes(1, 4, 2, 4, 4)  # fewer planes than lanes
    assert node.conv_lanes(128, 8, 8) and node.conv_lanes(128, 4, 4) and not node.conv_lanes(128, 16, 16)
    assert not node.conv_lanes(4, 4, 4)
    monkeypatch.setenv("ACMIX_KERNEL_LAYOUT", "lanes")
    assert node.use_lanes(1, 4, 2, 4, 4) and node.conv_lanes(1, 32, 32)
    monkeypatch.setenv("ACMIX_KERNEL_LAYOUT", "rows")
    assert not node.use_lanes(128, 4, 2, 16, 16) and not node.conv_lanes(128, 4, 4)
    monkeypatch.setenv("ACMIX_KERNEL_LAYOUT", "diagonal")
    with pytest.raises(ValueError, match="ACMIX_KERNEL_LAYOUT='diagonal': use one of auto, rows, lanes"):
        node.use_lanes(128, 4, 2, 16, 16)
    ext = _fast.load_extension("local_attention")
    qkv, _, grid, pad = _lane_inputs(2, 2, 3, 6, 6, 3, 1, 1, torch.float32)
    with pytest.raises(RuntimeError, match="q must be"):
        ext.lanes_forward(qkv, torch.zeros(4, 3, 6, 6), grid, 2, 3, 1, 1, pad)
    with pytest.raises(RuntimeError, match="dst must be"):
        ext.lanes_backward_fold(torch.zeros(2, 6, 6, 6), qkv, torch.zeros(4, 5, 6, 6), grid, torch.zeros(2, 6, 6, 6),
                                2, 3, 1, 1, pad, 1.0)
    with pytest.raises(RuntimeError, match="pad < H"):
        ext.lanes_forward(qkv, torch.zeros(4, 5, 6, 6), grid, 2, 3, 1, 1, 6)
