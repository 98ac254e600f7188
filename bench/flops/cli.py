"""`acmix-bench flops`: parameters and MACs per stage and voice for an operator or a model."""
from __future__ import annotations

import sys
import time

import torch

from modules import names
from modules.names import OPERATOR_ALIASES, OPERATOR_KINDS, SHIFT_IMPLS

from .count import BACKWARD_MODES, build_model, build_op, count_model, count_op
from .layers import (DEFAULT_DEPTH, PER_LAYER_VOICES, check_per_layer, format_layers_csv, format_layers_table,
                     layer_counts)
from .result import format_csv, format_table
from .voices import OPTIONAL_VOICES, VOICES


def run(args) -> int:
    voices = tuple(v.strip() for v in args.voices.split(",") if v.strip())
    if bool(args.op) == bool(args.model):
        raise ValueError("give exactly one of --op NAME or --model NAME (e.g. --op acmix --channels 64 --size 56, "
                         "or --model resnet50-acmix --size 224, or --model torchvision:resnet50)")
    torch.set_num_threads(args.threads)
    if args.per_layer:
        return _run_per_layer(args)
    if args.voice is not None or args.depth is not None:
        raise ValueError("--voice and --depth go with --per-layer (for the per-stage table use --voices)")
    t0, c0 = time.perf_counter(), time.process_time()
    if args.op:
        res = count_op(args.op, args.size, voices, args.conventions, args.backward, channels=args.channels,
                       heads=args.heads, kernel_att=args.kernel_att, kernel_conv=args.kernel_conv, stride=args.stride,
                       shift=args.shift, mixing=args.mixing, window=args.window, shift_size=args.shift_size,
                       in_channels=args.in_channels, bias=args.bias, stage2_impl=args.stage2_impl)
        what = f"--op {args.op}"
    else:
        overrides = {}
        if args.shift_override:
            overrides["shift"] = args.shift_override
        if args.stem:
            overrides["stem"] = args.stem
        model = build_model(args.model, None if args.model.startswith("torchvision:") else args.size, **overrides)
        res = count_model(model, input_size=(3, args.size, args.size), voices=voices, conventions=args.conventions,
                          backward=args.backward, stage2_impl=args.stage2_impl)
        what = f"--model {args.model}"
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    if args.format == "csv":
        print(format_csv(res, args.flops))
    elif args.format == "json":
        print(res.to_json())
    else:
        print(f"acmix-bench flops {what} at {args.size}x{args.size}: torch {torch.__version__}\n")
        print(format_table(res, args.flops))
    if args.time:
        per = ", ".join(f"{v} {s:.2f} s" for v, s in res.seconds.items())
        print(f"time: {elapsed:.2f} s wall, {cpu:.2f} s CPU (this process, all threads) in all ({per}); "
              f"{torch.get_num_threads()} threads", file=sys.stderr)
    return 0


def _run_per_layer(args) -> int:
    voice = args.voice or "formula"
    depth = DEFAULT_DEPTH if args.depth is None else args.depth
    check_per_layer(voice, depth, args.backward)  # before building the model
    if args.op:
        module, layout = build_op(args.op, channels=args.channels, heads=args.heads, kernel_att=args.kernel_att,
                                  kernel_conv=args.kernel_conv, stride=args.stride, shift=args.shift,
                                  mixing=args.mixing, window=args.window, shift_size=args.shift_size,
                                  in_channels=args.in_channels, bias=args.bias)
        c = args.in_channels or args.channels
        shape = (1, c, args.size, args.size) if layout == "map" else (1, args.size, args.size, args.channels)
        what = f"--op {args.op}"
    else:
        overrides = {k: v for k, v in (("shift", args.shift_override), ("stem", args.stem)) if v}
        module = build_model(args.model, None if args.model.startswith("torchvision:") else args.size, **overrides)
        shape = (3, args.size, args.size)
        what = f"--model {args.model}"
    lc = layer_counts(module, input_size=shape, voice=voice, depth=depth, conventions=args.conventions,
                      backward=args.backward, stage2_impl=args.stage2_impl)
    if args.format == "csv":
        print(format_layers_csv(lc, args.flops))
    elif args.format == "json":
        print(lc.to_json())
    else:
        print(f"acmix-bench flops {what} at {args.size}x{args.size} --per-layer: torch {torch.__version__}\n")
        print(format_layers_table(lc, args.flops))
    return 0


def register(sub) -> None:
    p = sub.add_parser("flops", help="params and MACs per stage from formulas, fvcore, ptflops (2 backends) and torch",
                       description="Params and MACs per stage (MACs per image; FLOPs = 2 MACs with --flops). "
                                   "Give --op NAME with its shape options, or --model NAME (registry name or "
                                   "torchvision:NAME).")
    p.add_argument("--op", choices=OPERATOR_KINDS + tuple(OPERATOR_ALIASES),
                   metavar="{" + ",".join(OPERATOR_KINDS) + "}", help="one operator")
    p.add_argument("--model", help="registry model (e.g. resnet50-acmix) or torchvision:NAME")
    p.add_argument("--size", type=int, default=56, help="input height = width (default 56; use 224 for models)")
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--in-channels", type=int, default=None, help="operator input channels (default: --channels)")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kernel-att", type=int, default=7)
    p.add_argument("--kernel-conv", type=int, default=3)
    p.add_argument("--stride", type=int, default=1)
    p.add_argument("--shift", default=None,
                   help=f"shift implementation: {' | '.join(SHIFT_IMPLS)} (default: the operator's own)")
    p.add_argument("--mixing", default="learnable")
    p.add_argument("--window", type=int, default=7, help="window size (window-sa, window-acmix)")
    p.add_argument("--shift-size", type=int, default=0, help="Swin cyclic shift (window ops)")
    p.add_argument("--bias", action="store_true", help="conv/dconv with bias")
    p.add_argument("--shift-override", default=None, help="models: shift implementation override")
    p.add_argument("--stem", default=None, help="models: stem override (imagenet | small)")
    p.add_argument("--voices", default=",".join(VOICES),
                   help=f"comma list from {', '.join(VOICES + OPTIONAL_VOICES)}")
    p.add_argument("--conventions", default=None,
                   help="e.g. bias=on,softmax=on,activations=on,norms=off,shift_adds=off (formula and fvcore voices)")
    p.add_argument("--backward", default="none", choices=BACKWARD_MODES,
                   help="none: forward; x2: training step = 3 x forward; counted: torch voice counts the backward")
    p.add_argument("--stage2-impl", default=None, choices=names.STAGE2_IMPLS,
                   help="count as built (default), all-fast, or with the sliding-window attention as the spec "
                        "writes it (reference)")
    p.add_argument("--per-layer", action="store_true",
                   help="a module tree instead: params and MACs per module (a row holds its module and all below "
                        "it), MACs split into Stage I / Stage II / other, for one --voice; every voice supports it "
                        f"({', '.join(PER_LAYER_VOICES)}); --backward counted does not")
    p.add_argument("--voice", default=None,
                   help="with --per-layer: the one voice to count (default formula)")
    p.add_argument("--depth", type=int, default=None,
                   help=f"with --per-layer: rows down to this module depth (root 0; default {DEFAULT_DEPTH}); "
                        "deeper modules are folded into their ancestor")
    p.add_argument("--flops", action="store_true", help="show FLOPs (= 2 MACs) instead of MACs, labelled")
    p.add_argument("--format", default="table", choices=("table", "csv", "json"))
    p.add_argument("--time", action="store_true", help="print the counting time (stderr)")
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(func=run)
