"""Parameters and MACs per stage from five voices, and a zero-op audit (`acmix-bench flops`).

Voices (one column each; MACs inside, FLOPs = 2 MACs only in labelled output):

    formula          closed forms (bench/formulas.py, from the spec) per operator and standard layer
    fvcore           fvcore's FlopCountAnalysis (jit trace) with handles registered for every op the
                     suite's modules run, tagged by cost category and filtered by `Conventions`
    ptflops-pytorch  ptflops, backend "pytorch" (module hooks + patched functionals), no extra hooks
    ptflops-aten     ptflops, backend "aten" (dispatch mode), no extra hooks
    torch            torch.utils.flop_counter.FlopCounterMode, FLOPs / 2 = MACs
    fvcore-default   (optional) fvcore with only its default handles: what a plain fvcore call reports

Per-stage accounting comes from module paths only: an op (or parameter) belongs
to the innermost module running it; a module path with a component `stage1` is
Stage I, `stage2.<child>` is that Stage II path ("stage2" alone: ops and
parameters of the stage2 container itself, e.g. the mixing weights), anything
else is "other". The operator's own forward (the alpha/beta mixing, Swin's
roll) is therefore "other"; with the default conventions it costs nothing.

`formula` and `fvcore` follow the same conventions and agree exactly, per
stage, for every operator, shift implementation and backbone of the suite
(tests/test_flops.py). The other voices use their own conventions (ptflops
counts conv/linear biases, norms and activations its own way) and miss Stage II
ops; the audit lists, per voice, every Stage II op it counts as zero.

Counting runs the model once per voice at batch 1 in eval mode, as it is built
(Stage II `impl` "fast" unless the caller switched it). The fast sliding-window
attention runs as the torch operator `acmix::local_attention` (modules/_fast/ops.py):
fvcore counts it through the handle modules/_fast/flop_formulas.py gives, the torch
voice through the formula registered there with torch.utils.flop_counter (as run:
2 extra query channels per head); ptflops-aten has no rule for it.

Layout: stages.py (stage of a module path, parameters per stage, PathTracker),
handles.py (fvcore op handles), voices.py (the counters), audit.py (the
zero-op audit), result.py (CountResult, table and CSV), count.py
(count_model, count_op, build_op, build_model), layers.py (per-module tree,
`--per-layer`), cli.py (`acmix-bench flops`).
"""
from .audit import audit_rows
from .cli import register, run
from .count import BACKWARD_MODES, STAGE2_IMPLS, build_model, build_op, count_model, count_op
from .layers import DEFAULT_DEPTH, PER_LAYER_VOICES, LayerCounts, format_layers_csv, format_layers_table, layer_counts
from .handles import ACTIVATIONS, FREE_OPS, suite_handles
from .result import CountResult, format_csv, format_table
from .stages import PathTracker, param_stage_counts, stage_of, stage_order
from .voices import OPTIONAL_VOICES, VOICES

__all__ = ["ACTIVATIONS", "BACKWARD_MODES", "CountResult", "DEFAULT_DEPTH", "FREE_OPS", "LayerCounts",
           "OPTIONAL_VOICES", "PER_LAYER_VOICES", "PathTracker", "format_layers_csv", "format_layers_table",
           "layer_counts",
           "STAGE2_IMPLS", "VOICES", "audit_rows", "build_model", "build_op", "count_model", "count_op",
           "format_csv", "format_table", "param_stage_counts", "register", "run", "stage_of", "stage_order",
           "suite_handles"]
