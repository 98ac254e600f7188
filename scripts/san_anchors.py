"""SAN-10/15/19 (pairwise, patchwise) and SAN-ACmix at 224 px beside the published numbers.

    OMP_NUM_THREADS=2 python scripts/san_anchors.py            # markdown table on stdout

Columns (MACs per image; the published "FLOPs" are MACs):
  suite MACs      the formula voice with the suite's default conventions (= fvcore with the suite's
                  handles, and what `acmix-bench flops --model NAME --size 224` prints as total)
  SAN-counter     the same model counted by the rules of the SAN authors' counter (util/complexity.py
                  in hszhao/SAN, ptflops-style module hooks): conv and BN as the suite, plus conv biases,
                  one op per ReLU output, max pool input elements, one op per relation subtraction
                  (x1 - x2 and P - P, pairwise), no softmax, no linear bias. Computed from the formula
                  voice's parts (bias, activation and "elem" terms) and the pool input sizes.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.flops import count_model  # noqa: E402
from modules import create_model  # noqa: E402

PUBLISHED = {  # (params, MACs) as published (SAN README / ACmix paper table)
    "san10-pairwise": (10.5e6, 2.2e9), "san15-pairwise": (14.1e6, 3.0e9), "san19-pairwise": (17.6e6, 3.8e9),
    "san10-patchwise": (11.8e6, 1.9e9), "san15-patchwise": (16.2e6, 2.6e9), "san19-patchwise": (20.5e6, 3.3e9),
    "san10-acmix": (12.1e6, 1.9e9), "san15-acmix": (16.6e6, 2.7e9), "san19-acmix": (21.2e6, 3.4e9),
}
SAN_COUNTER = "bias=on,activations=on,norms=on,softmax=off,shift_adds=on"


def san_counter_macs(model, size: int = 224) -> int:
    res = count_model(model, input_size=(3, size, size), voices=("formula",), conventions=SAN_COUNTER)
    elem = sum(p["macs"] for p in res.parts if p["category"] == "elem")
    # max pools: input elements (the stem's output, then each stage's output but the last)
    pools, s = 0, size
    prev = model.widths[0]
    for i, c in enumerate(model.widths):
        if i > 0 or model.stem_kind == "imagenet":
            pools += prev * s * s
            s //= 2
        prev = c
    return res.total("formula") + elem + pools - model.fc.out_features  # that counter has no linear bias


def main() -> int:
    torch.set_num_threads(2)
    rows = []
    for name, (pp, pm) in PUBLISHED.items():
        with torch.device("meta"):
            model = create_model(name)
        params = sum(p.numel() for p in model.parameters())
        macs = count_model(model, input_size=(3, 224, 224), voices=("formula",)).total("formula")
        ref = san_counter_macs(model)
        rows.append((name, params, pp, macs, ref, pm))
    print("| model | params | published | diff | suite MACs | diff | SAN-counter MACs | published | diff |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, params, pp, macs, ref, pm in rows:
        print(f"| {name} | {params:,} | {pp / 1e6:.1f}M | {100 * (params - pp) / pp:+.1f}% | {macs:,} | "
              f"{100 * (macs - pm) / pm:+.1f}% | {ref:,} | {pm / 1e9:.1f}G | {100 * (ref - pm) / pm:+.1f}% |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
