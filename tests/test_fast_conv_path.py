"""The ACmix conv path's grouped convolution (modules/_fast/conv_path) against the reference.

cpp: the C++ kernel (skipped, with the build error as reason, where it cannot be built);
torch: the pure-PyTorch twin (F.conv2d on a channels-last copy), also the automatic fallback.
ConvPath values and gradients (f_all, FC weight, shift weight) against `impl="reference"` in
float64 over heads, head width, kernel size, stride, map shapes and batch, both the fused path
(FC folded into the conv) and the unfused one (FC bias, or many heads); gradcheck; float32
agreement of the backends; thread-count independence; counters see the conv; fallback; errors.
"""
from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck

from modules import _fast, set_stage2_impl
from modules._fast import conv_path as cp
from modules.operators import ConvPath

f64 = torch.float64
BACKENDS = ["cpp", "torch"]


def _need(backend):
    if backend == "cpp" and _fast.load_extension("conv_path") is None:
        pytest.skip(f"C++ conv_path extension could not be built here: {_fast.extension_error('conv_path')}")


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    _need(request.param)
    monkeypatch.setenv("ACMIX_FAST_BACKEND", request.param)
    return request.param


def _rand(*shape, dtype=f64, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, dtype=dtype, generator=g).requires_grad_(requires_grad)


def _path(N, d, k, s, fc_bias=False, seed=0, dtype=f64):
    path = ConvPath(N, d, k, s, fc_bias=fc_bias, shift="multigroup").to(dtype)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in path.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
    return path


def _fast_and_reference(path, f_all):
    params = [f_all] + list(path.parameters())
    fast = path(f_all)
    gout = _rand(*fast.shape, seed=7)
    g_fast = torch.autograd.grad(fast, params, gout)
    set_stage2_impl(path, "reference")
    ref = path(f_all)
    g_ref = torch.autograd.grad(ref, params, gout)
    set_stage2_impl(path, "fast")
    return fast, ref, g_fast, g_ref


# N, d, k, stride, B, H, W: every N in {1,2,4}, d in {1,3,8}, k in {1,3,5}, stride 1 and 2,
# odd/even/non-square maps, batch 1 and 3 (fused: N <= 4 at stride 1)
CASES = [
    (1, 1, 1, 1, 1, 5, 5), (1, 3, 3, 2, 3, 7, 6), (1, 8, 5, 1, 1, 6, 9),
    (2, 1, 3, 1, 3, 8, 8), (2, 3, 5, 2, 1, 9, 7), (2, 8, 1, 2, 3, 4, 6),
    (4, 1, 5, 2, 3, 6, 6), (4, 3, 3, 1, 1, 7, 10), (4, 8, 3, 2, 1, 11, 5),
    (4, 3, 1, 1, 3, 3, 4), (2, 3, 5, 1, 1, 3, 2), (1, 3, 3, 2, 1, 1, 1),
    (4, 1, 3, 2, 1, 5, 37), (2, 1, 5, 2, 1, 4, 34),  # wide rows: the vector (de)interleave of stride 2
    (2, 8, 3, 1, 5, 5, 6), (1, 16, 3, 2, 3, 4, 5),  # backward sums dW over chunks of 2 / 3 images
]


@pytest.mark.parametrize("N,d,k,s,B,H,W", CASES)
def test_conv_path_equals_reference(backend, N, d, k, s, B, H, W):
    path = _path(N, d, k, s, seed=N + d + k)
    f_all = _rand(B, 3 * N, d, H, W, requires_grad=True, seed=s)
    fast, ref, g_fast, g_ref = _fast_and_reference(path, f_all)
    assert fast.shape == (B, d * N, (H - 1) // s + 1, (W - 1) // s + 1)
    assert (fast - ref).abs().max().item() < 1e-12
    for a, b in zip(g_fast, g_ref):
        assert (a - b).abs().max().item() < 1e-11


@pytest.mark.parametrize("N,d,k,s,fc_bias", [(8, 2, 3, 1, False), (2, 3, 3, 2, True), (4, 2, 5, 1, True),
                                             (8, 1, 3, 2, False)])
def test_unfused_conv_path_equals_reference(backend, N, d, k, s, fc_bias):
    """FC bias, or more heads than fusing pays for: FC (as a GEMM), then the grouped conv on its output."""
    path = _path(N, d, k, s, fc_bias=fc_bias, seed=3)
    H, W = 7, 6
    assert not path.fuses(H, W)
    f_all = _rand(2, 3 * N, d, H, W, requires_grad=True, seed=4)
    fast, ref, g_fast, g_ref = _fast_and_reference(path, f_all)
    assert (fast - ref).abs().max().item() < 1e-12
    for a, b in zip(g_fast, g_ref):
        assert (a - b).abs().max().item() < 1e-11


@pytest.mark.parametrize("k,s", [(3, 1), (3, 2), (1, 2)])
def test_gradcheck(k, s):
    _need("cpp")
    x = _rand(2, 3, 2, 5, 4, requires_grad=True)
    w = _rand(4, 3, k, k, requires_grad=True, seed=1)
    assert gradcheck(lambda a, b: cp.grouped_conv(a, b, s, backend="cpp"), (x, w), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("N,d,k,s,H,W", [(4, 5, 3, 1, 21, 19), (4, 4, 3, 2, 20, 23), (3, 2, 5, 2, 13, 17),
                                         (1, 2, 3, 1, 40, 3), (2, 1, 3, 2, 9, 50), (2, 1, 5, 2, 6, 67)])
def test_backends_agree_float32(N, d, k, s, H, W):
    _need("cpp")
    x = _rand(2, 3 * N, d, H, W, dtype=torch.float32, requires_grad=True)
    w = _rand(d * N, 3 * N, k, k, dtype=torch.float32, requires_grad=True, seed=1)
    gout = _rand(2, d * N, (H - 1) // s + 1, (W - 1) // s + 1, dtype=torch.float32, seed=2)
    outs = {}
    for b in BACKENDS:
        y = cp.grouped_conv(x, w, s, backend=b)
        outs[b] = (y,) + torch.autograd.grad(y, (x, w), gout)
    for a, b in zip(outs["cpp"], outs["torch"]):
        assert a.dtype == torch.float32
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())


def test_result_does_not_depend_on_thread_count():
    _need("cpp")
    x = _rand(3, 12, 4, 9, 10, requires_grad=True)
    w = _rand(16, 12, 3, 3, requires_grad=True, seed=1)
    runs = []
    threads = torch.get_num_threads()
    try:
        for nt in (1, 2, 3):
            torch.set_num_threads(nt)
            y = cp.grouped_conv(x, w, 1, backend="cpp")
            runs.append((y,) + torch.autograd.grad(y.sin().sum(), (x, w)))
    finally:
        torch.set_num_threads(threads)
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a, b)


@pytest.mark.parametrize("need", ["x", "w"])
def test_gradient_of_one_input_only(need):
    _need("cpp")
    x = _rand(1, 6, 2, 5, 5, requires_grad=need == "x")
    w = _rand(4, 6, 3, 3, requires_grad=need == "w", seed=1)
    t = x if need == "x" else w
    g_cpp = torch.autograd.grad(cp.grouped_conv(x, w, 2, backend="cpp").sum(), t)[0]
    g_torch = torch.autograd.grad(cp.grouped_conv(x, w, 2, backend="torch").sum(), t)[0]
    assert torch.allclose(g_cpp, g_torch, atol=1e-12)


def test_kernel_runs_in_conv_path_and_counters_see_the_conv(monkeypatch):
    """ACMIX_FAST_BACKEND=cpp runs the kernel; a TorchDispatchMode (FLOP counter) gets the F.conv2d twin."""
    _need("cpp")
    from torch.utils.flop_counter import FlopCounterMode
    monkeypatch.setenv("ACMIX_FAST_BACKEND", "cpp")
    calls = []
    ext = _fast.load_extension("conv_path")

    class Spy:  # the compiled module, counting forward calls (acmix::grouped_conv's kernel calls it)
        def forward(self, *a):
            calls.append(1)
            return ext.forward(*a)

        def backward(self, *a):
            return ext.backward(*a)
    monkeypatch.setitem(_fast._exts, "conv_path", Spy())
    path = _path(4, 2, 3, 1)
    f_all = _rand(1, 12, 2, 6, 6)
    y = path(f_all)
    assert calls == [1]
    with FlopCounterMode(display=False) as counter:
        y2 = path(f_all)
    assert calls == [1]
    assert torch.allclose(y, y2, atol=1e-12)
    # fused: 3N in, N out per group, 3x3, 36 pixels, d = 2 groups; the einsum folding the weights
    assert counter.get_total_flops() == 2 * (2 * 4 * 12 * 9 * 36) + 2 * (2 * 4 * 9 * 9 * 12)


def test_fallback_when_extension_cannot_build(monkeypatch):
    monkeypatch.setattr(_fast, "_exts", {})
    monkeypatch.setattr(_fast, "_errors", {})

    def broken(kernel="local_attention"):
        raise RuntimeError("no compiler found (simulated)")
    monkeypatch.setattr(_fast, "_build", broken)
    monkeypatch.setenv("ACMIX_FAST_BACKEND", "auto")
    x = torch.zeros(1)
    with pytest.warns(RuntimeWarning, match="pure-PyTorch"):
        assert cp.kernel_backend(x) == "torch"
    assert "simulated" in _fast.extension_error("conv_path")
    path = _path(2, 3, 3, 2)
    f_all = _rand(1, 6, 3, 7, 6, requires_grad=True)
    fast, ref, g_fast, g_ref = _fast_and_reference(path, f_all)
    assert (fast - ref).abs().max().item() < 1e-12
    monkeypatch.setenv("ACMIX_FAST_BACKEND", "cpp")
    with pytest.raises(ValueError, match="could not be built"):
        cp.kernel_backend(x)


def test_cpp_backend_rejects_half():
    _need("cpp")
    x = torch.zeros(1, 3, 1, 4, 4, dtype=torch.float16)
    with pytest.raises(ValueError, match="CPU float32/float64"):
        cp.grouped_conv(x, torch.zeros(1, 3, 3, 3, dtype=torch.float16), 1, backend="cpp")


@pytest.mark.parametrize("x_shape,w_shape,stride,match", [
    ((1, 3, 2, 4, 4), (4, 3, 2, 2), 1, "odd k"),
    ((1, 3, 2, 4, 4), (3, 3, 3, 3), 1, "d=2"),
    ((1, 3, 2, 4, 4), (4, 2, 3, 3), 1, r"\(d\*N, 3, k, k\)"),
    ((3, 2, 4, 4), (4, 3, 3, 3), 1, r"\(B, C, d, H, W\)"),
    ((1, 3, 2, 4, 4), (4, 3, 3, 3), 0, "stride"),
])
def test_bad_arguments(x_shape, w_shape, stride, match):
    with pytest.raises(ValueError, match=match):
        cp.grouped_conv(torch.zeros(x_shape), torch.zeros(w_shape), stride)


def test_dtype_mismatch():
    with pytest.raises(ValueError, match="dtype"):
        cp.grouped_conv(torch.zeros(1, 3, 1, 4, 4), torch.zeros(1, 3, 3, 3, dtype=f64), 1)


def test_inference_mode_and_no_grad():
    _need("cpp")
    x = _rand(2, 6, 3, 8, 7)
    w = _rand(6, 6, 3, 3, seed=1)
    ref = cp.grouped_conv_torch(x, w, 2)
    with torch.inference_mode():
        assert torch.allclose(cp.grouped_conv(x, w, 2, backend="cpp"), ref, atol=1e-12)
    with torch.no_grad():
        assert torch.allclose(cp.grouped_conv(x, w, 2, backend="cpp"), ref, atol=1e-12)


def test_triton_backend_request_takes_the_twin(monkeypatch):
    """ACMIX_FAST_BACKEND=triton selects Triton for the attention; the conv path has no Triton kernel."""
    monkeypatch.setenv("ACMIX_FAST_BACKEND", "triton")
    x = _rand(1, 6, 2, 5, 5)
    w = _rand(4, 6, 3, 3, seed=1)
    assert cp.kernel_backend(x) == "torch"
    assert torch.allclose(cp.grouped_conv(x, w, 1), cp.grouped_conv_torch(x, w, 1), atol=1e-12)


# The main job's Stage II shapes (N=4 heads, k=3; C = d*N = 8..52 on 16x16, 8x8 and 4x4 maps, stride 1
# and 2): full register tiles of 4 outputs, their single-vector tails, and many (image, group) tasks
# per thread reusing one scratch (its zero padding written once per call), in float64 and float32.
@pytest.mark.parametrize("d,H,s", [(2, 16, 1), (4, 16, 2), (4, 8, 1), (8, 8, 2), (8, 4, 1), (13, 4, 1), (13, 4, 2)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_suite_shapes_match_the_twin(d, H, s, dtype):
    _need("cpp")
    N, B = 4, 5
    x = _rand(B, 3 * N, d, H, H, dtype=dtype, requires_grad=True)
    w = _rand(d * N, 3 * N, 3, 3, dtype=dtype, requires_grad=True, seed=1)
    Ho = (H - 1) // s + 1
    gout = _rand(B, d * N, Ho, Ho, dtype=dtype, seed=2)
    outs = {}
    for b in BACKENDS:
        y = cp.grouped_conv(x, w, s, backend=b)
        outs[b] = (y,) + torch.autograd.grad(y, (x, w), gout)
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    for a, b in zip(outs["cpp"], outs["torch"]):
        assert torch.allclose(a, b, rtol=tol, atol=tol * b.abs().max().item())


@pytest.mark.parametrize("s", [1, 2])
def test_gradcheck_suite_head_count(s):
    _need("cpp")
    x = _rand(2, 12, 1, 4, 4, requires_grad=True)
    w = _rand(4, 12, 3, 3, requires_grad=True, seed=1)
    assert gradcheck(lambda a, b: cp.grouped_conv(a, b, s, backend="cpp"), (x, w), eps=1e-6, atol=1e-5,
                     fast_mode=True)


# ----------------------------------------------------------------------------- the lanes layout

# B, C (= 3N), d, H, W, N, k, stride: images below, at and past one vector's lanes and not a multiple of
# them; N of 1 to 5 (register blocks of 4 output channels and their remainders); k 1, 3, 5; strides 1 to 3;
# odd, non-square and 1-pixel maps
LANE_CASES = [
    (3, 12, 2, 9, 7, 4, 3, 1), (9, 12, 3, 9, 7, 4, 3, 2), (10, 9, 4, 5, 6, 3, 3, 3), (8, 6, 2, 4, 4, 2, 5, 1),
    (17, 15, 2, 6, 6, 5, 3, 2), (2, 3, 3, 3, 3, 1, 1, 1), (16, 12, 13, 4, 4, 4, 3, 2), (5, 3, 1, 1, 1, 1, 3, 1),
]


@pytest.mark.parametrize("B,C,d,H,W,N,k,s", LANE_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, f64])
def test_lanes_kernel_equals_row_kernel(B, C, d, H, W, N, k, s, dtype):
    """lanes_forward / lanes_backward (images in the vector lanes) against the row kernel: output, dx and the
    summed dW partials; each gradient alone; the same values at 1 and 2 threads, bitwise."""
    _need("cpp")
    ext = _fast.load_extension("conv_path")
    x = _rand(B, C, d, H, W, dtype=dtype)
    w = _rand(d * N, C, k, k, dtype=dtype, seed=1)
    want = ext.forward(x, w, s)
    gout = _rand(*want.shape, dtype=dtype, seed=2)
    dx_want, dwp_want = ext.backward(gout, x, w, s, True, True)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == f64 else dict(rtol=2e-5, atol=2e-5)
    threads = torch.get_num_threads()
    runs = []
    try:
        for nt in (1, 2):
            torch.set_num_threads(nt)
            got = ext.lanes_forward(x, w, s)
            dx, dwp = ext.lanes_backward(gout, x, w, s, True, True)
            runs.append((got, dx, dwp))
    finally:
        torch.set_num_threads(threads)
    got, dx, dwp = runs[0]
    torch.testing.assert_close(got, want, **tol)
    torch.testing.assert_close(dx, dx_want, **tol)
    torch.testing.assert_close(dwp.sum(0).reshape(w.shape), dwp_want.sum(0).reshape(w.shape), **tol)
    for a, b in zip(runs[0], runs[1]):
        assert torch.equal(a, b)
    dx_only, none = ext.lanes_backward(gout, x, w, s, True, False)
    assert none.numel() == 0 and torch.equal(dx_only, dx)
    none, dw_only = ext.lanes_backward(gout, x, w, s, False, True)
    assert none.numel() == 0 and torch.equal(dw_only, dwp)


def test_lanes_kernel_rejects_bad_arguments():
    _need("cpp")
    ext = _fast.load_extension("conv_path")
    x, w = torch.zeros(2, 6, 2, 5, 5), torch.zeros(4, 6, 3, 3)
    with pytest.raises(RuntimeError, match="odd k"):
        ext.lanes_forward(x, torch.zeros(4, 6, 2, 2), 1)
    with pytest.raises(RuntimeError, match="output gradient must be"):
        ext.lanes_backward(torch.zeros(2, 4, 4, 4), x, w, 1, True, True)
