"""Pure-PyTorch twin of the C++ local attention kernel (local_attention.h): same inputs, outputs and saved tensors.

Loops over the k_a^2 window offsets; every step is a whole-tensor op on strided
views of the padded maps, so no unfolded (k_a^2 x C x H' x W') tensor exists.
Runs on any device and dtype; the fallback when the C++ extension is unavailable.
"""
from __future__ import annotations

import torch


def _window(t: torch.Tensor, i: int, b: int, Ho: int, Wo: int, dil: int) -> torch.Tensor:
    """View of the padded, phase-split map t (..., Hp, S, Wq) read by window offset (i, b)."""
    S = t.shape[-2]
    r0, c = i * dil, b * dil
    return t[..., r0:r0 + S * (Ho - 1) + 1:S, c % S, c // S:c // S + Wo]


def _offsets(ka: int):
    return [(i, b) for i in range(ka) for b in range(ka)]


def forward(q, kd, grid, vd, ka: int, dil: int):
    BN, Cq, Ho, Wo = q.shape
    Ck = kd.shape[1]
    qk, qg = q[:, :Ck], q[:, Ck:]
    logits = q.new_empty(BN, ka * ka, Ho, Wo)
    for j, (i, b) in enumerate(_offsets(ka)):
        lj = (qk * _window(kd, i, b, Ho, Wo, dil)).sum(1)
        if qg.shape[1]:
            lj = lj + (qg * _window(grid, i, b, Ho, Wo, dil)).sum(1)
        logits[:, j] = lj
    weights = logits.softmax(dim=1)
    out = torch.zeros(BN, vd.shape[1], Ho, Wo, dtype=q.dtype, device=q.device)
    for j, (i, b) in enumerate(_offsets(ka)):
        out += weights[:, j:j + 1] * _window(vd, i, b, Ho, Wo, dil)
    return out, weights


def backward(dout, q, kd, grid, vd, weights, ka: int, dil: int):
    BN, Cq, Ho, Wo = q.shape
    Ck = kd.shape[1]
    offs = _offsets(ka)
    dw = torch.stack([(dout * _window(vd, i, b, Ho, Wo, dil)).sum(1) for i, b in offs], dim=1)
    dlog = weights * (dw - (weights * dw).sum(1, keepdim=True))
    dq = torch.zeros_like(q)
    dkd = torch.zeros_like(kd)
    dvd = torch.zeros_like(vd)
    for j, (i, b) in enumerate(offs):
        dl = dlog[:, j:j + 1]
        dq[:, :Ck] += dl * _window(kd, i, b, Ho, Wo, dil)
        if Cq > Ck:
            dq[:, Ck:] += dl * _window(grid, i, b, Ho, Wo, dil)
        _window(dkd, i, b, Ho, Wo, dil).add_(dl * q[:, :Ck])
        _window(dvd, i, b, Ho, Wo, dil).add_(weights[:, j:j + 1] * dout)
    return dq, dkd, dvd
