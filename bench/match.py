"""FLOPs matching (`acmix-bench match`): widths that put each variant's MACs within tol of a reference.

MACs are counted with the formula voice (bench/flops.py), which counts the true
Stage II costs and agrees exactly with the fvcore voice (tests). Models are
counted on the meta device (shapes only), so a candidate costs one build and
one shape-only forward.

Search, per variant:
  1. widths(m) = each default per-stage width x m, rounded to a multiple of the
     quantum q (the head count for attention operators, per stage for PVT; 1 otherwise; times
     `multiple_of`), at least q: bisection on m in [min_mult, max_mult];
  2. then single-stage moves of +-q while they bring the total closer.
A variant that no width in range brings within tol raises ValueError with
the closest widths found.
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass

import torch

from .formulas import Conventions


@dataclass
class MatchResult:
    model: str
    target_macs: int
    macs: int
    rel_error: float
    widths: list[int]
    evaluations: int

    def as_row(self) -> dict:
        d = asdict(self)
        d.pop("evaluations")
        return d


def _build_meta(name: str, size: int, overrides: dict):
    from .flops import build_model
    try:
        with torch.device("meta"):
            return build_model(name, size, **overrides)
    except (NotImplementedError, RuntimeError):  # a constructor that needs real data: build, then move
        return build_model(name, size, **overrides).to("meta")


def model_macs(name_or_model, size: int, conventions=None, **overrides) -> int:
    """Total MACs per image (formula voice) of a model name, `torchvision:NAME` or module, at size x size
    (input channels: overrides["in_chans"], default 3)."""
    from .flops import count_model
    in_chans = int(overrides.get("in_chans") or 3)  # the input channels the model is built for
    if isinstance(name_or_model, str):
        model = _build_meta(name_or_model, size, overrides)
    else:
        model = name_or_model
    res = count_model(model, input_size=(in_chans, size, size), voices=("formula",), conventions=conventions)
    return res.total("formula")


def _default_widths(name: str, size: int, overrides: dict) -> tuple[list[int], int]:
    """Default per-stage widths of a registry model and its quantum (the divisibility constraint)."""
    from modules import model_spec
    spec = model_spec(name)
    model = _build_meta(name, size, overrides)
    if spec["family"] == "resnet":
        widths = list(model.widths)
        q = int(overrides.get("heads", 4)) if spec["op"] in ("sa", "acmix") else 1
    elif spec["family"] == "san":
        from modules.backbones.san import WIDTH_QUANTUM
        widths, q = list(model.widths), WIDTH_QUANTUM
    elif spec["family"] == "pvt":  # per-stage embed dims, each a multiple of its stage's heads
        widths = list(model.embed_dims)
        q = [blocks.blocks[0].attn.num_heads for blocks in model.stages]
    else:
        widths = [int(model.embed_dim)]
        heads = overrides.get("heads")
        if heads is None:
            from modules.backbones.swin import SWIN_CONFIGS
            heads = SWIN_CONFIGS[spec["backbone"]]["heads"]
        q = int(heads if isinstance(heads, int) else heads[0])
    return widths, q


def match_widths(reference, variants, size: int, tol: float = 0.01, conventions=None, multiple_of: int = 1,
                 min_mult: float = 0.125, max_mult: float = 8.0, reference_overrides: dict | None = None,
                 overrides: dict | None = None, max_evals: int = 60) -> list[MatchResult]:
    """For each variant (registry name), the widths whose total MACs are within +-tol of the reference's.

    reference: registry name, `torchvision:NAME`, an nn.Module, or a MAC count (int).
    overrides: passed to create_model for every variant (e.g. {"stem": "small", "shift": "tensor"}).
    Raises ValueError naming the closest widths when a variant cannot be matched in range.
    """
    if isinstance(variants, str):
        variants = [v.strip() for v in variants.split(",") if v.strip()]
    if not variants:
        raise ValueError("give at least one variant to match, e.g. --variants resnet26-acmix,resnet26-sa")
    if not (0 < tol < 1):
        raise ValueError(f"tol must be a fraction in (0, 1), e.g. 0.01 for +-1%, got {tol}")
    if isinstance(multiple_of, bool) or not isinstance(multiple_of, int) or multiple_of < 1:
        raise ValueError(f"multiple_of must be a positive integer, got {multiple_of!r}")
    conv = Conventions.parse(conventions)
    overrides = dict(overrides or {})
    if isinstance(reference, int) and not isinstance(reference, bool):
        target = reference
    else:
        target = model_macs(reference, size, conv, **(reference_overrides or {}))
    results = []
    for name in variants:
        if name.startswith("torchvision:"):
            raise ValueError(f"variant {name}: only registry models have adjustable widths; "
                             f"use it as --reference instead")
        results.append(_match_one(name, target, size, tol, conv, multiple_of, min_mult, max_mult, overrides, max_evals))
    return results


def _match_one(name, target, size, tol, conv, multiple_of, min_mult, max_mult, overrides, max_evals) -> MatchResult:
    base, q = _default_widths(name, size, overrides)
    qs = [qi * multiple_of for qi in q] if isinstance(q, list) else [q * multiple_of] * len(base)  # per stage
    cache: dict[tuple, int | None] = {}

    def macs(widths) -> int | None:
        key = tuple(widths)
        if key not in cache:
            if len(cache) >= max_evals:
                return None
            try:
                cache[key] = model_macs(name, size, conv, **{**overrides, "widths": list(widths)})
            except ValueError:  # widths the model rejects (a constraint we do not know): skip them
                cache[key] = None
        return cache[key]

    def widths_at(m):
        return [max(q, int(round(b * m / q)) * q) for b, q in zip(base, qs)]

    def err(widths):
        v = macs(widths)
        return math.inf if v is None else abs(v - target) / target

    lo, hi = min_mult, max_mult
    m_lo, m_hi = macs(widths_at(lo)), macs(widths_at(hi))
    if m_lo is not None and m_lo > target * (1 + tol):
        raise ValueError(f"{name}: even the smallest widths {widths_at(lo)} cost {m_lo:,} MACs > target {target:,} "
                         f"(+{100 * tol:g}%); lower min_mult or pick a larger reference")
    if m_hi is not None and m_hi < target * (1 - tol):
        raise ValueError(f"{name}: even the largest widths {widths_at(hi)} cost {m_hi:,} MACs < target {target:,} "
                         f"(-{100 * tol:g}%); raise max_mult or pick a smaller reference")
    best = None
    for _ in range(40):  # bisection in log space on the multiplier
        mid = math.sqrt(lo * hi)
        w = widths_at(mid)
        v = macs(w)
        if v is None:
            break
        if best is None or err(w) < err(best):
            best = w
        if err(w) <= tol / 4 or hi / lo < 1.0005:
            break
        if v < target:
            lo = mid
        else:
            hi = mid
    if best is None:
        raise ValueError(f"{name}: no valid widths found near the default {base}")
    improved = True
    while improved and err(best) > tol / 4:  # single-stage moves by one quantum
        improved = False
        for i in range(len(best)):
            for step in (-qs[i], qs[i]):
                w = list(best)
                w[i] += step
                if w[i] < qs[i]:
                    continue
                if err(w) < err(best):
                    best, improved = w, True
    e = err(best)
    v = macs(best)
    if e > tol:
        raise ValueError(f"{name}: no widths in range match {target:,} MACs within +-{100 * tol:g}%; closest "
                         f"{best} = {v:,} MACs ({100 * (v - target) / target:+.2f}%); loosen --tol or change "
                         f"multiple_of (quantum {qs[0] if len(set(qs)) == 1 else qs})")
    return MatchResult(name, int(target), int(v), (v - target) / target, list(best), len(cache))


# ----------------------------------------------------------------------------- CLI


def run(args) -> int:
    torch.set_num_threads(args.threads)
    overrides = {}
    if args.stem:
        overrides["stem"] = args.stem
    if args.shift:
        overrides["shift"] = args.shift
    ref_over = {} if args.reference.startswith("torchvision:") else dict(overrides)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()] if isinstance(args.variants, str) \
        else list(args.variants)
    # counting takes seconds per model: say where it is (stderr, so csv/json output stays clean)
    print(f"acmix-bench match: counting the reference {args.reference} ...", file=sys.stderr, flush=True)
    target = model_macs(args.reference, args.size, Conventions.parse(args.conventions), **ref_over)
    res = []
    for i, v in enumerate(variants, 1):
        print(f"acmix-bench match: [{i}/{len(variants)}] searching widths for {v} ...", file=sys.stderr, flush=True)
        res += match_widths(target, [v], args.size, tol=args.tol, conventions=args.conventions,
                            multiple_of=args.multiple_of, overrides=overrides)
    if args.format == "json":
        print(json.dumps([{"model": r.model, "target_macs": r.target_macs, "macs": r.macs, "rel_error": r.rel_error,
                           "widths": list(r.widths)} for r in res], indent=1))
        return 0
    if args.format == "csv":
        print("model,target_macs,macs,rel_error,widths")
        for r in res:
            print(f"{r.model},{r.target_macs},{r.macs},{r.rel_error:.6f},{' '.join(map(str, r.widths))}")
        return 0
    print(f"acmix-bench match: reference {args.reference} at {args.size}x{args.size}, tol +-{100 * args.tol:g}% "
          f"(MACs per image, formula voice; FLOPs = 2 MACs)\n")
    head = f"{'model':<24}{'target MACs':>18}{'MACs':>18}{'rel error':>12}  widths"
    print(head)
    print("-" * (len(head) + 16))
    for r in res:
        print(f"{r.model:<24}{r.target_macs:>18,}{r.macs:>18,}{100 * r.rel_error:>+11.3f}%  {r.widths}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("match", help="find widths that match each variant's MACs to a reference (+-tol)",
                       description="Widths (per-stage channels; heads divide them) putting each variant's total "
                                   "MACs (true Stage II costs) within +-tol of the reference's.")
    p.add_argument("--reference", required=True, help="registry model or torchvision:NAME")
    p.add_argument("--variants", required=True, help="comma list of registry models")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--tol", type=float, default=0.01, help="relative tolerance (default 0.01 = +-1%%)")
    p.add_argument("--multiple-of", type=int, default=1, help="widths also a multiple of this (e.g. 8)")
    p.add_argument("--stem", default=None, help="stem override for registry models (imagenet | small)")
    p.add_argument("--shift", default=None, help="shift implementation override for the variants")
    p.add_argument("--conventions", default=None, help="as for acmix-bench flops")
    p.add_argument("--format", default="table", choices=("table", "csv", "json"))
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(func=run)
