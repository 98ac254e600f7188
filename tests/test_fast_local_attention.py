"""The fast sliding-window attention (modules/_fast) against the reference, in both backends.

cpp: the C++ extension (skipped, with the build error as reason, where it cannot be built);
torch: the pure-PyTorch twin, which is also the automatic fallback. Values and gradients in
float64, gradcheck on small shapes, float32 accuracy, inference mode, fallback selection.
"""
from __future__ import annotations


import pytest
import torch

from modules import ACmix, LocalSelfAttention, _fast, local_attention_fast, local_attention_reference, set_stage2_impl
from modules.operators import ConvPath

BACKENDS = ["cpp", "torch"]


def _need(backend):
    if backend == "cpp" and _fast.load_extension() is None:
        pytest.skip(f"C++ extension could not be built here: {_fast.extension_error()}")


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    _need(request.param)
    monkeypatch.setenv("ACMIX_FAST_BACKEND", request.param)
    return request.param


def _inputs(B, C, H, W, heads, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = C // heads
    ts = [torch.randn(B, C, H, W, dtype=dtype, generator=g) for _ in range(3)]
    ts += [torch.randn(d, 2, 1, 1, dtype=dtype, generator=g), torch.randn(d, dtype=dtype, generator=g)]
    return [t.requires_grad_() for t in ts]


CASES = [  # B, C, heads, H, W, k_a, stride, dilation
    (1, 8, 2, 9, 7, 3, 1, 1),
    (2, 8, 2, 10, 11, 5, 2, 1),
    (2, 12, 3, 11, 9, 3, 2, 2),
    (1, 8, 4, 8, 13, 3, 3, 1),
    (3, 8, 2, 13, 12, 7, 2, 1),
    (1, 4, 1, 9, 9, 3, 1, 3),
]


@pytest.mark.parametrize("B,C,heads,H,W,ka,stride,dil", CASES)
def test_fast_equals_reference_float64(backend, B, C, heads, H, W, ka, stride, dil):
    inputs = _inputs(B, C, H, W, heads)
    args = (heads, ka, stride, dil)
    fast = local_attention_fast(*inputs, *args)
    ref = local_attention_reference(*inputs, *args)
    assert fast.shape == ref.shape == (B, C, (H - 1) // stride + 1, (W - 1) // stride + 1)
    assert (fast - ref).abs().max().item() < 1e-12
    w = torch.randn(fast.shape, dtype=fast.dtype, generator=torch.Generator().manual_seed(5))
    gf = torch.autograd.grad((fast * w).sum(), inputs, materialize_grads=True)
    gr = torch.autograd.grad((ref * w).sum(), inputs, materialize_grads=True)
    for name, a, b in zip(("q", "k", "v", "pe_weight", "pe_bias"), gf, gr):
        assert (a - b).abs().max().item() < 1e-11, name


@pytest.mark.parametrize("stride,dil,H,W,B", [(1, 1, 4, 3, 1), (2, 1, 5, 4, 2), (2, 2, 6, 5, 1)])
def test_fast_gradcheck(backend, stride, dil, H, W, B):
    q, k, v, pw, _ = _inputs(B, 4, H, W, 2)
    f = lambda q, k, v, pw: local_attention_fast(q, k, v, pw, None, 2, 3, stride, dil)
    assert torch.autograd.gradcheck(f, (q, k, v, pw), eps=1e-6, atol=1e-7, fast_mode=(B > 1))


def test_backends_agree_float32(monkeypatch):
    _need("cpp")
    inputs = _inputs(2, 32, 23, 19, 4, dtype=torch.float32, seed=3)
    ref = local_attention_reference(*[t.double() for t in inputs], 4, 7, 1, 1)
    outs, grads = {}, {}
    for b in BACKENDS:
        monkeypatch.setenv("ACMIX_FAST_BACKEND", b)
        outs[b] = local_attention_fast(*inputs, 4, 7, 1, 1)
        grads[b] = torch.autograd.grad(outs[b].square().sum(), inputs[:4])
        assert (outs[b].double() - ref).abs().max().item() < 2e-5  # float32 with the kernel's exp
    assert (outs["cpp"] - outs["torch"]).abs().max().item() < 2e-5
    for a, c in zip(grads["cpp"], grads["torch"]):
        assert torch.allclose(a, c, rtol=1e-4, atol=1e-4)


def test_inference_mode_same_output(backend):
    inputs = _inputs(2, 8, 11, 9, 2, dtype=torch.float32)
    with_grad = local_attention_fast(*inputs, 2, 5, 2, 1)
    with torch.no_grad():
        without = local_attention_fast(*inputs, 2, 5, 2, 1)
    assert torch.equal(with_grad.detach(), without)


def test_bfloat16_input_runs_in_float32_and_keeps_dtype(backend):
    inputs = [t.detach().bfloat16() for t in _inputs(1, 8, 9, 9, 2, dtype=torch.float32)]
    out = local_attention_fast(*inputs, 2, 3, 1, 1)
    assert out.dtype == torch.bfloat16
    ref = local_attention_reference(*[t.double() for t in inputs], 2, 3, 1, 1)
    assert (out.double() - ref).abs().max().item() < 0.05


@pytest.mark.parametrize("shift,stride,H,W", [("multigroup", 1, 10, 9), ("multigroup", 2, 11, 8),
                                              ("tensor", 2, 9, 10), ("learnable", 1, 9, 8)])
def test_acmix_block_fast_equals_reference(backend, shift, stride, H, W):
    torch.manual_seed(0)
    op = ACmix(8, 8, kernel_att=5, head=2, kernel_conv=3, stride=stride, shift=shift).double()
    with torch.no_grad():
        for p in op.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, 8, H, W, dtype=torch.float64, requires_grad=True)
    params = [x] + list(op.parameters())
    fast = op(x)
    gf = torch.autograd.grad(fast.sin().sum(), params)
    set_stage2_impl(op, "reference")
    ref = op(x)
    gr = torch.autograd.grad(ref.sin().sum(), params)
    assert (fast - ref).abs().max().item() < 1e-12
    for a, b in zip(gf, gr):
        assert (a - b).abs().max().item() < 1e-11


@pytest.mark.parametrize("stride,H,W", [(1, 7, 6), (2, 7, 9)])
def test_conv_path_fused_equals_unfused(stride, H, W):
    """The fast conv path fuses the light FC into the grouped conv (multigroup, no FC bias)."""
    torch.manual_seed(1)
    path = ConvPath(heads=2, head_dim=3, kernel_conv=3, stride=stride, fc_bias=False, shift="multigroup").double()
    with torch.no_grad():
        path.shift.weight.add_(0.2 * torch.randn_like(path.shift.weight))
    f = torch.randn(2, 6, 3, H, W, dtype=torch.float64, requires_grad=True)
    params = [f, path.fc.weight, path.shift.weight]
    fused = path(f)
    g1 = torch.autograd.grad(fused.cos().sum(), params)
    path.shift.impl = "reference"  # the unfused fast path: FC, reorder, ShiftAggregation
    set_stage2_impl(path, "reference")
    ref = path(f)
    g2 = torch.autograd.grad(ref.cos().sum(), params)
    assert (fused - ref).abs().max().item() < 1e-12
    for a, b in zip(g1, g2):
        assert (a - b).abs().max().item() < 1e-11


def test_local_self_attention_module_both_backends(monkeypatch):
    _need("cpp")
    op = LocalSelfAttention(8, 8, 3, 2, stride=2).double()
    x = torch.randn(1, 8, 9, 10, dtype=torch.float64)
    outs = []
    for b in BACKENDS:
        monkeypatch.setenv("ACMIX_FAST_BACKEND", b)
        outs.append(op(x))
    assert (outs[0] - outs[1]).abs().max().item() < 1e-12


def test_fallback_when_extension_cannot_build(monkeypatch):
    monkeypatch.setattr(_fast, "_exts", {})
    monkeypatch.setattr(_fast, "_errors", {})

    def broken(kernel="local_attention"):
        raise RuntimeError("no compiler found (simulated)")
    monkeypatch.setattr(_fast, "_build", broken)
    monkeypatch.setenv("ACMIX_FAST_BACKEND", "auto")
    x = torch.zeros(1)
    with pytest.warns(RuntimeWarning, match="pure-PyTorch"):
        assert _fast.backend_for(x) == "torch"
    assert "simulated" in _fast.extension_error()
    inputs = _inputs(1, 4, 7, 6, 2)
    assert torch.allclose(local_attention_fast(*inputs, 2, 3, 1, 1), local_attention_reference(*inputs, 2, 3, 1, 1),
                          atol=1e-12)
    monkeypatch.setenv("ACMIX_FAST_BACKEND", "cpp")
    with pytest.raises(ValueError, match="could not be built"):
        _fast.backend_for(x)


def test_bad_backend_name(monkeypatch):
    monkeypatch.setenv("ACMIX_FAST_BACKEND", "fortran")
    with pytest.raises(ValueError, match="ACMIX_FAST_BACKEND"):
        local_attention_fast(*_inputs(1, 4, 7, 6, 2), 2, 3, 1, 1)


def test_cpp_backend_rejects_cuda_or_half(monkeypatch):
    _need("cpp")
    with pytest.raises(ValueError, match="CPU float32/float64"):
        _fast.backend_for(torch.zeros(1, dtype=torch.float16), "cpp")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_fast_equals_reference():
    inputs = [t.detach().cuda().requires_grad_() for t in _inputs(2, 16, 12, 11, 4)]
    fast = local_attention_fast(*inputs, 4, 7, 2, 1)
    ref = local_attention_reference(*inputs, 4, 7, 2, 1)
    assert (fast - ref).abs().max().item() < 1e-12
    for a, b in zip(torch.autograd.grad(fast.sum(), inputs[:4]), torch.autograd.grad(ref.sum(), inputs[:4])):
        assert (a - b).abs().max().item() < 1e-11



def test_graph_can_be_differentiated_twice(backend):
    """retain_graph: the C++ backward recomputes its buffers, so a second pass gives the same grads."""
    inputs = _inputs(1, 4, 7, 6, 2)
    out = local_attention_fast(*inputs, 2, 3, 1, 1)
    first = torch.autograd.grad(out.sum(), inputs[:3], retain_graph=True)
    second = torch.autograd.grad(out.sum(), inputs[:3])
    assert all(torch.equal(a, b) for a, b in zip(first, second))


# The C++ kernel straight on its inputs (q, kd, grid, vd) against the torch twin, float64: shapes that
# exercise its tiling. Columns run in whole vectors (8 doubles / 16 floats) with the lanes past W'
# discarded (W' = 1, 7, 8, 9, 17, 33); output rows in blocks (8 rows at stride 1, 5 at stride 2, 4 at 3)
# whose last block is short (H' = 1, 9, 11, 13); window columns in register tiles of at most 7
# (k_a = 9: 7 + 2); no grid channels (G = 0); one (b, n) only (its reads come from the slack copy).
KERNEL_CASES = [  # BN, Ck, G, Ho, Wo, ka, stride, dil
    (1, 3, 2, 1, 1, 3, 1, 1),
    (2, 4, 2, 9, 7, 7, 1, 1),
    (3, 5, 0, 11, 17, 5, 2, 1),
    (1, 2, 2, 13, 33, 9, 1, 1),
    (2, 3, 2, 9, 8, 3, 3, 2),
    (2, 4, 1, 6, 9, 7, 2, 1),
    (1, 16, 2, 17, 16, 7, 1, 1),
    # the backward's taller, balanced blocks (at most 14 rows at stride 1, 8 at stride 2): H' = 29 -> 10 + 10 + 9,
    # H' = 17 at stride 2 -> 6 + 6 + 5; W' = 14 and 15: row tails copied by one masked move (14 of 16 floats,
    # 6 and 7 of 8 doubles)
    (2, 3, 2, 29, 14, 7, 1, 1),
    (1, 4, 2, 17, 15, 7, 2, 1),
    (1, 2, 2, 15, 3, 5, 1, 2),
]


def _kernel_inputs(BN, Ck, G, Ho, Wo, ka, S, dil, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    Hp = (Ho - 1) * S + (ka - 1) * dil + 1 + 1  # one spare row: the kernel must not depend on exact fits
    Wq = Wo + ((ka - 1) * dil) // S + 1
    q = torch.randn(BN, Ck + G, Ho, Wo, dtype=dtype, generator=g)
    kd = torch.randn(BN, Ck, Hp, S, Wq, dtype=dtype, generator=g)
    grid = torch.randn(G, Hp, S, Wq, dtype=dtype, generator=g)
    vd = torch.randn(BN, Ck + 1, Hp, S, Wq, dtype=dtype, generator=g)  # Cv != Ck
    dout = torch.randn(BN, Ck + 1, Ho, Wo, dtype=dtype, generator=g)
    return q, kd, grid, vd, dout


@pytest.mark.parametrize("BN,Ck,G,Ho,Wo,ka,S,dil", KERNEL_CASES)
def test_cpp_kernel_tiling_edges_equal_torch_twin(BN, Ck, G, Ho, Wo, ka, S, dil):
    _need("cpp")
    ext = _fast.load_extension()
    q, kd, grid, vd, dout = _kernel_inputs(BN, Ck, G, Ho, Wo, ka, S, dil)
    out, weights = ext.forward(q, kd, grid, vd, ka, dil, True)
    out_t, weights_t = _fast.torch_impl.forward(q, kd, grid, vd, ka, dil)
    assert (out - out_t).abs().max().item() < 1e-12
    assert (weights - weights_t).abs().max().item() < 1e-12
    out_nw, _ = ext.forward(q, kd, grid, vd, ka, dil, False)
    assert torch.equal(out, out_nw)
    grads = ext.backward(dout, q, kd, grid, vd, ka, dil)
    grads_t = _fast.torch_impl.backward(dout, q, kd, grid, vd, weights_t, ka, dil)
    for name, a, b in zip(("q", "kd", "vd"), grads, grads_t):
        assert a.shape == b.shape, name
        assert (a - b).abs().max().item() < 1e-12, name


@pytest.mark.parametrize("case", [KERNEL_CASES[2], KERNEL_CASES[6], KERNEL_CASES[7], KERNEL_CASES[8]])
def test_cpp_kernel_float32_and_thread_count(case):
    """float32 (16-lane vectors, the kernel's own exp) close to float64; results independent of threads."""
    _need("cpp")
    ext = _fast.load_extension()
    BN, Ck, G, Ho, Wo, ka, S, dil = case
    x64 = _kernel_inputs(*case)
    x32 = [t.float() for t in x64]
    out64, _ = ext.forward(*x64[:4], ka, dil, False)
    g64 = ext.backward(x64[4], *x64[:4], ka, dil)
    n = torch.get_num_threads()
    try:
        runs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            runs.append((ext.forward(*x32[:4], ka, dil, False)[0], ext.backward(x32[4], *x32[:4], ka, dil)))
    finally:
        torch.set_num_threads(n)
    assert torch.equal(runs[0][0], runs[1][0])
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))
    out32, g32 = runs[0]
    assert (out32.double() - out64).abs().max().item() < 1e-5
    for a, b in zip(g32, g64):
        assert (a.double() - b).abs().max().item() < 1e-4 * max(1.0, b.abs().max().item())


def test_cpp_kernel_rejects_bad_shapes():
    _need("cpp")
    ext = _fast.load_extension()
    q, kd, grid, vd, dout = _kernel_inputs(1, 3, 2, 5, 6, 3, 1, 1)
    with pytest.raises(RuntimeError, match="key channels"):
        ext.forward(q[:, :4], kd, grid, vd, 3, 1, False)
    with pytest.raises(RuntimeError, match="padded rows"):
        ext.forward(q, kd[:, :, :5].contiguous(), grid[:, :5].contiguous(), vd[:, :, :5].contiguous(), 3, 1, False)
    with pytest.raises(RuntimeError, match="output gradient"):
        ext.backward(dout[:, :2], q, kd, grid, vd, 3, 1)


# backward_fold applies the reflection padding's adjoint inside its per-(b, n) buffers (border rows, then
# border columns) and adds the interior once into dst: against the plain backward's padded dk/dv folded by
# autograd through F.pad (reflect) and the phase split. Narrow (W = 14 at k_a = 7, pad 3), odd sizes,
# strides 1 to 3, pad as large as allowed (pad = H - 1), and float32 bitwise across thread counts.
FOLD_CASES = [  # B, N, d, H, W, ka, stride
    (2, 2, 3, 14, 14, 7, 1),
    (1, 3, 2, 13, 15, 7, 2),
    (2, 1, 4, 11, 9, 5, 3),
    (1, 2, 2, 5, 6, 9, 2),
    (1, 1, 3, 9, 30, 3, 1),
]


@pytest.mark.parametrize("B,N,d,H,W,ka,S", FOLD_CASES)
def test_cpp_backward_fold_equals_padding_adjoint(B, N, d, H, W, ka, S):
    _need("cpp")
    import torch.nn.functional as F
    ext = _fast.load_extension()
    g = torch.Generator().manual_seed(4)
    C, pad = N * d, (ka - 1) // 2
    Ho, Wo = -(-H // S), -(-W // S)
    x = torch.randn(B, 3 * C, H, W, dtype=torch.float64, generator=g)
    kd = ext.pad_split(x, C, C, pad, S).view(B * N, d, H + 2 * pad, S, -1)
    vd = ext.pad_split(x, 2 * C, C, pad, S).view(B * N, d, H + 2 * pad, S, -1)
    grid = torch.randn(2, *kd.shape[2:], dtype=torch.float64, generator=g)
    q = torch.randn(B * N, d + 2, Ho, Wo, dtype=torch.float64, generator=g)
    dout = torch.randn(B * N, d, Ho, Wo, dtype=torch.float64, generator=g)
    dq, dkd, dvd = ext.backward(dout, q, kd, grid, vd, ka, 1)
    src = torch.zeros(B, 2 * C, H, W, dtype=torch.float64, requires_grad=True)
    padded = _fast.split_phases(F.pad(src, (pad,) * 4, mode="reflect"), S)
    dkv = torch.cat([dkd.reshape(B, C, *kd.shape[2:]), dvd.reshape(B, C, *kd.shape[2:])], 1)
    (want_kv,) = torch.autograd.grad(padded, src, dkv)
    prior = torch.randn(B, 3 * C, H, W, dtype=torch.float64, generator=g)
    dst = prior.clone()
    dq2 = ext.backward_fold(dout, q, kd, grid, vd, ka, 1, dst, N, C, 2 * C, pad, 0.25)
    assert torch.equal(dq2, dq)
    assert torch.equal(dst[:, :C], prior[:, :C])
    assert (dst[:, C:] - (prior[:, C:] + 0.25 * want_kv)).abs().max().item() < 1e-12
    n = torch.get_num_threads()
    try:
        runs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            d32 = prior.float()
            runs.append((ext.backward_fold(dout.float(), q.float(), kd.float(), grid.float(), vd.float(), ka, 1, d32,
                                           N, C, 2 * C, pad, 0.25), d32))
    finally:
        torch.set_num_threads(n)
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    assert (runs[0][1].double() - dst).abs().max().item() < 1e-4 * max(1.0, dst.abs().max().item())
