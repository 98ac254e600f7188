"""Triton twin of the C++ local attention kernel / torch_impl.py: the sliding-window attention for CUDA.

VERIFIED ONLY IN TRITON'S INTERPRETER (TRITON_INTERPRET=1, CPU tensors, numpy-backed), NEVER ON A GPU:
nothing here has been run on a CUDA device, and no GPU timing of it exists. What was checked (tests/test_fast_triton.py, triton 3.8.0):
  - interpreter: forward and backward equal to torch_impl.forward/backward on tiny maps: strides 1, 2, 3;
    dilations 1, 2, 3; k_a 1, 3, 5, 7; batch 1 and 3 (BN up to 6); non-square maps; float64 (max error
    ~4e-15), float32 (~1e-6), float16 (~5e-4) and bfloat16 (~1.5e-2, input rounding) inputs, the last
    three accumulated in float32; a float64 gradcheck of forward/backward as an autograd Function;
    one-line ValueErrors for bad input; every output element written (torch's NaN fill of empty tensors);
    and local_attention_fast with ACMIX_FAST_BACKEND=triton (through the acmix::local_attention
    operator, ops.py) against the reference (float64 values and gradients).
  - compile: all three kernels for float32/float64/float16/bfloat16 compile ahead of time to sm_90
    cubin with Triton's bundled ptxas (no GPU needed), at the launch configurations of k_a 7 over
    output widths 56, 28, 14 (_config); none spills registers (no stack frame, no local memory in
    cuobjdump --dump-resource-usage), which the test asserts.
Not checked: launching on a GPU, speed, the choice of BLOCK_X/num_warps (a heuristic, not tuned).
The CUDA test in tests/test_fast_triton.py (marked cuda) and scripts/gpu_check.sh are the first things
to run on a machine with a GPU.

Same inputs and outputs as the other backends (header of local_attention.h):
  q  (BN, Cq, Ho, Wo) scaled queries; the last G = Cq - Ck channels pair with grid (G, Hp, S, Wq)
  kd (BN, Ck, Hp, S, Wq), vd (BN, Cv, Hp, S, Wq) padded, phase-split keys and values
  out (BN, Cv, Ho, Wo). Window offset j = a*ka + b reads padded row y*S + a*dil, column phase
  (b*dil) % S, position x + (b*dil)//S.

Kernels (one program per (bn, output row y, block of BLOCK_X output columns); the k_a^2 logits of
a block live in registers as a (K2P, BLOCK_X) tile, K2P = k_a^2 rounded up to a power of two, and
channels are looped one at a time, each step a (K2P, BLOCK_X) gather of the window):
  _fwd       logits over the Cq channels, exact (two-pass: max, then exp/sum) softmax in registers,
             aggregation over the Cv channels. Saves nothing.
  _bwd_q     recomputes logits and softmax weights w, dw_j = dout . v_j (Cv loop),
             dlog = w * (dw - sum_j w dw), dq = sum_j dlog_j k_j (Cq loop); writes w and dlog to two
             transient (BN, K2, Ho, Wo) buffers that live only inside backward (freed on return:
             nothing k_a^2-sized is kept between forward and backward, as in the C++ kernel).
  _bwd_kv    one program per (bn, padded row r, phase p, block of positions m): dkd and dvd as
             gathers over the windows that read the padded pixel (a with r - a*dil = y*S, b with
             (b*dil) % S = p, x = m - (b*dil)//S): dkd = sum_j dlog_j q, dvd = sum_j w_j dout.
             Gathers rather than tl.atomic_add: every gradient element is written once by one
             program, so the result is deterministic (no run-to-run float differences, which the
             backends-agree tests would otherwise see), needs no zero-fill, and works for every
             dtype (no float16/bfloat16/float64 atomics, no float32 scratch for half inputs); the
             cost is the two transient buffers and a third kernel.
Accumulation: float64 for float64 inputs, float32 for float32/float16/bfloat16 (outputs and gradients
are stored in the input dtype). float64 runs in the interpreter and compiles for sm_90 (exp through
libdevice); never run on a GPU, like everything else here.
"""
from __future__ import annotations

import os

import torch

try:  # optional dependency: absent on most CPU-only installs
    import triton
    import triton.language as tl
    _IMPORT_ERROR = None
except Exception as e:  # ImportError, or a broken install
    triton = tl = None
    _IMPORT_ERROR = f"{type(e).__name__}: {e}".splitlines()[0][:200]

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def interpreting() -> bool:
    """True when Triton kernels run in its CPU interpreter (TRITON_INTERPRET=1 before import)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def available() -> tuple[bool, str]:
    """(whether the Triton kernels can run here, why not / on what)."""
    if triton is None:
        return False, f"triton is not importable ({_IMPORT_ERROR}); pip install triton"
    if interpreting():
        return True, f"triton {triton.__version__} interpreter (TRITON_INTERPRET=1): CPU tensors, slow, for tests"
    if not torch.cuda.is_available():
        return False, "no CUDA device visible to torch (set TRITON_INTERPRET=1 to run the kernels on CPU for tests)"
    return True, f"triton {triton.__version__} on {torch.cuda.get_device_name()}"


if triton is not None:

    @triton.jit
    def _logits(q_ptr, kd_ptr, g_ptr, bn, y, xs, xmask, row_off, col_off, jmask,
                Ck, G, Ho, Wo, plane, ACC: tl.constexpr):
        """(K2P, BLOCK_X) logits of output row y, columns xs; rows j >= K2 are -inf."""
        qrow = q_ptr + bn * (Ck + G) * Ho * Wo + y * Wo + xs            # (BLOCK_X,) channel 0
        win = row_off[:, None] + col_off[:, None] + xs[None, :]        # (K2P, BLOCK_X) offsets in a plane
        m2 = jmask[:, None] & xmask[None, :]
        kbase = kd_ptr + bn * Ck * plane + win
        acc = tl.zeros(win.shape, dtype=ACC)
        for c in range(0, Ck):
            qv = tl.load(qrow + c * Ho * Wo, mask=xmask, other=0.0).to(ACC)
            kv = tl.load(kbase + c * plane, mask=m2, other=0.0).to(ACC)
            acc += qv[None, :] * kv
        qrow = qrow + Ck * Ho * Wo
        gbase = g_ptr + win
        for c in range(0, G):
            qv = tl.load(qrow + c * Ho * Wo, mask=xmask, other=0.0).to(ACC)
            gv = tl.load(gbase + c * plane, mask=m2, other=0.0).to(ACC)
            acc += qv[None, :] * gv
        return tl.where(jmask[:, None], acc, float("-inf"))

    @triton.jit
    def _softmax(logits):
        mx = tl.max(logits, axis=0)
        e = tl.exp(logits - mx[None, :])       # exp(-inf) = 0 for the padding rows
        return e / tl.sum(e, axis=0)[None, :]

    @triton.jit
    def _geometry(pid_x, y, ka, dil, S, Wq, Wo, K2P: tl.constexpr, BLOCK_X: tl.constexpr):
        j = tl.arange(0, K2P)
        jmask = j < ka * ka
        a = j // ka
        db = (j % ka) * dil
        row_off = (y * S + a * dil) * (S * Wq)
        col_off = (db % S) * Wq + db // S
        xs = pid_x * BLOCK_X + tl.arange(0, BLOCK_X)
        return j, jmask, row_off, col_off, xs, xs < Wo

    @triton.jit
    def _fwd(q_ptr, kd_ptr, g_ptr, vd_ptr, out_ptr, Ck, G, Cv, Ho, Wo, Hp, S, Wq, ka, dil,
             K2P: tl.constexpr, BLOCK_X: tl.constexpr, ACC: tl.constexpr):
        bn = tl.program_id(0).to(tl.int64)
        y = tl.program_id(1)
        plane = Hp * S * Wq
        j, jmask, row_off, col_off, xs, xmask = _geometry(tl.program_id(2), y, ka, dil, S, Wq, Wo, K2P, BLOCK_X)
        w = _softmax(_logits(q_ptr, kd_ptr, g_ptr, bn, y, xs, xmask, row_off, col_off, jmask,
                             Ck, G, Ho, Wo, plane, ACC))
        vbase = vd_ptr + bn * Cv * plane + row_off[:, None] + col_off[:, None] + xs[None, :]
        m2 = jmask[:, None] & xmask[None, :]
        orow = out_ptr + bn * Cv * Ho * Wo + y * Wo + xs
        for c in range(0, Cv):
            vv = tl.load(vbase + c * plane, mask=m2, other=0.0).to(ACC)
            o = tl.sum(w * vv, axis=0)
            tl.store(orow + c * Ho * Wo, o.to(out_ptr.dtype.element_ty), mask=xmask)

    @triton.jit
    def _bwd_q(dout_ptr, q_ptr, kd_ptr, g_ptr, vd_ptr, dq_ptr, w_ptr, dl_ptr,
               Ck, G, Cv, Ho, Wo, Hp, S, Wq, ka, dil,
               K2P: tl.constexpr, BLOCK_X: tl.constexpr, ACC: tl.constexpr):
        bn = tl.program_id(0).to(tl.int64)
        y = tl.program_id(1)
        plane = Hp * S * Wq
        j, jmask, row_off, col_off, xs, xmask = _geometry(tl.program_id(2), y, ka, dil, S, Wq, Wo, K2P, BLOCK_X)
        w = _softmax(_logits(q_ptr, kd_ptr, g_ptr, bn, y, xs, xmask, row_off, col_off, jmask,
                             Ck, G, Ho, Wo, plane, ACC))
        win = row_off[:, None] + col_off[:, None] + xs[None, :]
        m2 = jmask[:, None] & xmask[None, :]
        # dw_j = sum_c dout_c v_c,j
        vbase = vd_ptr + bn * Cv * plane + win
        drow = dout_ptr + bn * Cv * Ho * Wo + y * Wo + xs
        dw = tl.zeros(win.shape, dtype=ACC)
        for c in range(0, Cv):
            dv = tl.load(drow + c * Ho * Wo, mask=xmask, other=0.0).to(ACC)
            vv = tl.load(vbase + c * plane, mask=m2, other=0.0).to(ACC)
            dw += dv[None, :] * vv
        dlog = w * (dw - tl.sum(w * dw, axis=0)[None, :])
        # the two transient (BN, K2, Ho, Wo) buffers for _bwd_kv
        boff = (bn * ka * ka + j[:, None]) * (Ho * Wo) + y * Wo + xs[None, :]
        tl.store(w_ptr + boff, w, mask=m2)
        tl.store(dl_ptr + boff, dlog, mask=m2)
        # dq_c = sum_j dlog_j k_c,j (then the grid channels)
        kbase = kd_ptr + bn * Ck * plane + win
        qrow = dq_ptr + bn * (Ck + G) * Ho * Wo + y * Wo + xs
        for c in range(0, Ck):
            kv = tl.load(kbase + c * plane, mask=m2, other=0.0).to(ACC)
            tl.store(qrow + c * Ho * Wo, tl.sum(dlog * kv, axis=0).to(dq_ptr.dtype.element_ty), mask=xmask)
        qrow = qrow + Ck * Ho * Wo
        gbase = g_ptr + win
        for c in range(0, G):
            gv = tl.load(gbase + c * plane, mask=m2, other=0.0).to(ACC)
            tl.store(qrow + c * Ho * Wo, tl.sum(dlog * gv, axis=0).to(dq_ptr.dtype.element_ty), mask=xmask)

    @triton.jit
    def _bwd_kv(dout_ptr, q_ptr, w_ptr, dl_ptr, dkd_ptr, dvd_ptr,
                Ck, G, Cv, Ho, Wo, Hp, S, Wq, ka, dil,
                K2P: tl.constexpr, BLOCK_X: tl.constexpr, ACC: tl.constexpr):
        """Program (bn, r*S + p, block of m): dkd/dvd at padded row r, phase p, positions m."""
        bn = tl.program_id(0).to(tl.int64)
        rp = tl.program_id(1)
        r = rp // S
        p = rp % S
        ms = tl.program_id(2) * BLOCK_X + tl.arange(0, BLOCK_X)
        j = tl.arange(0, K2P)
        a = j // ka
        db = (j % ka) * dil
        t = r - a * dil                                  # = y*S when window row a of output row y reads r
        tpos = tl.maximum(t, 0)
        y = tpos // S
        jmask = (j < ka * ka) & (t >= 0) & (tpos % S == 0) & (y < Ho) & (db % S == p)
        x = ms[None, :] - (db // S)[:, None]             # (K2P, BLOCK_X) output column reading (r, p, m)
        m2 = jmask[:, None] & (x >= 0) & (x < Wo)
        pix = y[:, None] * Wo + tl.where(m2, x, 0)       # output pixel of each (window offset, m)
        boff = (bn * ka * ka + j[:, None]) * (Ho * Wo) + pix
        w = tl.load(w_ptr + boff, mask=m2, other=0.0)
        dlog = tl.load(dl_ptr + boff, mask=m2, other=0.0)
        plane = Hp * S * Wq
        mmask = ms < Wq                                  # destination (r, p, m): offset rp*Wq + m
        qbase = q_ptr + bn * (Ck + G) * Ho * Wo + pix
        for c in range(0, Ck):
            qv = tl.load(qbase + c * Ho * Wo, mask=m2, other=0.0).to(ACC)
            tl.store(dkd_ptr + bn * Ck * plane + c * plane + rp * Wq + ms,
                     tl.sum(dlog * qv, axis=0).to(dkd_ptr.dtype.element_ty), mask=mmask)
        dbase = dout_ptr + bn * Cv * Ho * Wo + pix
        for c in range(0, Cv):
            dv = tl.load(dbase + c * Ho * Wo, mask=m2, other=0.0).to(ACC)
            tl.store(dvd_ptr + bn * Cv * plane + c * plane + rp * Wq + ms,
                     tl.sum(w * dv, axis=0).to(dvd_ptr.dtype.element_ty), mask=mmask)


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _config(ka: int, Wo: int, dtype: torch.dtype = torch.float32) -> tuple[int, int, int]:
    """(K2P, BLOCK_X, num_warps). The (K2P, BLOCK_X) tile holds at most 4096 elements (2048 for float64),
    BLOCK_X in [16, 64];
    num_warps keeps 16 tile elements per thread (8 for float64): at K2P=64 the kernels then compile for
    sm_90 to 128-181 registers per thread (float32) without spills, where 4 warps on a 64x64 float32
    tile use 255 and spill 264 bytes in _bwd_q (ptxas -v via Triton; never timed on a GPU)."""
    K2P = _next_pow2(ka * ka)
    wide = dtype == torch.float64  # twice the registers per element: half the tile
    bx = max(16, min(64, _next_pow2(Wo), (2048 if wide else 4096) // K2P))
    return K2P, bx, max(1, min(8, K2P * bx // (32 * (8 if wide else 16))))


def _check(q, kd, grid, vd, ka: int, dil: int, dout=None):
    ok, why = available()
    if not ok:
        raise ValueError(f"the triton backend cannot run here: {why}; use ACMIX_FAST_BACKEND=torch or auto")
    ts = {"q": q, "kd": kd, "grid": grid, "vd": vd} | ({"dout": dout} if dout is not None else {})
    dev = q.device
    if interpreting() and dev.type != "cpu":
        raise ValueError(f"TRITON_INTERPRET=1 runs the triton backend on CPU tensors only, got {dev}; unset it")
    if not interpreting() and dev.type != "cuda":
        raise ValueError(f"the triton backend runs CUDA tensors, got {dev}; use ACMIX_FAST_BACKEND=cpp, torch or auto")
    if q.dtype not in DTYPES:
        raise ValueError(f"the triton backend runs float32/float64/float16/bfloat16, got {q.dtype}")
    for name, t in ts.items():
        if t.dtype != q.dtype or t.device != dev or not t.is_contiguous():
            raise ValueError(f"triton window attention: {name} must be contiguous {q.dtype} on {dev} like q, "
                             f"got {t.dtype} on {t.device} (contiguous={t.is_contiguous()}); call .contiguous().to(...)")
    if q.dim() != 4 or kd.dim() != 5 or vd.dim() != 5 or grid.dim() != 4:
        raise ValueError("triton window attention: expected q (BN,Cq,Ho,Wo), kd/vd (BN,C,Hp,S,Wq), grid (G,Hp,S,Wq)")
    BN, Cq, Ho, Wo = q.shape
    _, Ck, Hp, S, Wq = kd.shape
    G = grid.shape[0]
    if (kd.shape[0] != BN or vd.shape[0] != BN or vd.shape[2:] != kd.shape[2:] or grid.shape[1:] != kd.shape[2:]
            or Cq != Ck + G):
        raise ValueError(f"triton window attention: inconsistent shapes q {tuple(q.shape)}, kd {tuple(kd.shape)}, "
                         f"grid {tuple(grid.shape)}, vd {tuple(vd.shape)} (need Cq = Ck + G and one padded map)")
    if ka < 1 or dil < 1:
        raise ValueError(f"triton window attention: kernel_att and dilation must be >= 1, got {ka}, {dil}")
    # the last window must stay inside the padded map (no bounds checks inside the kernels)
    if (Ho - 1) * S + (ka - 1) * dil >= Hp or (Wo - 1) + ((ka - 1) * dil) // S >= Wq:
        raise ValueError(f"triton window attention: padded map {Hp}x{S}x{Wq} too small for output {Ho}x{Wo}, "
                         f"k_a={ka}, dilation={dil}, stride={S}")
    if dout is not None and dout.shape != (BN, vd.shape[1], Ho, Wo):
        raise ValueError(f"triton window attention: dout must be {(BN, vd.shape[1], Ho, Wo)}, got {tuple(dout.shape)}")
    acc = tl.float64 if q.dtype == torch.float64 else tl.float32
    return (BN, Cq, Ck, G, vd.shape[1], Ho, Wo, Hp, S, Wq), acc


def forward(q, kd, grid, vd, ka: int, dil: int) -> torch.Tensor:
    """out (BN, Cv, Ho, Wo); saves nothing (backward recomputes the softmax weights)."""
    (BN, Cq, Ck, G, Cv, Ho, Wo, Hp, S, Wq), acc = _check(q, kd, grid, vd, ka, dil)
    out = torch.empty(BN, Cv, Ho, Wo, dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    K2P, BX, nw = _config(ka, Wo, q.dtype)
    _fwd[(BN, Ho, triton.cdiv(Wo, BX))](q, kd, grid, vd, out, Ck, G, Cv, Ho, Wo, Hp, S, Wq, ka, dil,
                                         K2P=K2P, BLOCK_X=BX, ACC=acc, num_warps=nw)
    return out


def backward(dout, q, kd, grid, vd, ka: int, dil: int):
    """(dq, dkd, dvd) for out = forward(q, kd, grid, vd): softmax weights recomputed here."""
    (BN, Cq, Ck, G, Cv, Ho, Wo, Hp, S, Wq), acc = _check(q, kd, grid, vd, ka, dil, dout)
    dq, dkd, dvd = torch.empty_like(q), torch.empty_like(kd), torch.empty_like(vd)
    if q.numel() == 0 or kd.numel() + vd.numel() == 0:
        return dq.zero_(), dkd.zero_(), dvd.zero_()
    bdt = torch.float64 if q.dtype == torch.float64 else torch.float32
    w = torch.empty(BN, ka * ka, Ho, Wo, dtype=bdt, device=q.device)   # transient: freed on return
    dlog = torch.empty_like(w)
    K2P, BX, nw = _config(ka, Wo, q.dtype)
    _bwd_q[(BN, Ho, triton.cdiv(Wo, BX))](dout, q, kd, grid, vd, dq, w, dlog, Ck, G, Cv, Ho, Wo, Hp, S, Wq,
                                           ka, dil, K2P=K2P, BLOCK_X=BX, ACC=acc, num_warps=nw)
    _, BM, nw = _config(ka, Wq, q.dtype)
    _bwd_kv[(BN, Hp * S, triton.cdiv(Wq, BM))](dout, q, w, dlog, dkd, dvd, Ck, G, Cv, Ho, Wo, Hp, S, Wq,
                                                ka, dil, K2P=K2P, BLOCK_X=BM, ACC=acc, num_warps=nw)
    return dq, dkd, dvd
