"""`acmix-bench speed`: time and memory of operators, against a 3x3 conv and the reference.

For every case (operator variant x implementation x pass) it reports:
  median_ms, iqr_ms  torch.utils.benchmark (blocked_autorange, at least --repeats runs), fixed threads
  peak_mem_mb        peak memory of one pass above what the model and input already hold:
                     CPU: a fresh subprocess per case (after a batch-1 warm-up, large blocks
                     mmap-allocated), peak resident set (VmHWM, reset before the pass) minus
                     the resident set before it (tracemalloc does not see torch's allocations);
                     CUDA: torch.cuda.max_memory_allocated minus memory_allocated before the pass.
Each run includes the baselines `nn.Conv2d` 3x3 of the same width (impl "nn.Conv2d") and the
reference Stage II of the operator (impl "reference": the formulas as written, i.e. the
release's unfold-based algorithm for the sliding-window attention), and ratios to both.

Passes: "fwd" (inference, no autograd graph) and "fwd+bwd" (input and parameters require
grad; backward of the output against a fixed random gradient; parameter grads reset to None).

impl "flex" (opt-in, --op sa and acmix): the sliding-window attention as torch's compiled
FlexAttention with a neighbourhood block mask (modules/flex_attention.py). It masks the real
tokens where the suite reflection-pads, so it computes a different function within
(k_a - 1) / 2 pixels of the border (equal inside). Its first call (torch.compile, block mask)
is timed once (compile_s) and kept out of the timings by the warm-up; a pass it cannot run
(torch has no CPU backward for it) becomes a row with a note instead of timings.

Functions for other code: `time_fn`, `make_case`, `measure_case`, `run_speed`.
"""
from __future__ import annotations

import gc
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn

from modules.names import OPERATOR_ALIASES, OPERATOR_KINDS, SHIFT_IMPLS as SHIFTS, STAGE2_IMPLS

# the operator kinds, and the shift-and-sum of the conv path on its own
OPS = OPERATOR_KINDS + ("shift",)
PASSES = ("fwd", "fwd+bwd")
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}
CONV = "nn.Conv2d"
FLEX = "flex"
# --impl: the operators' Stage II implementations, and FlexAttention for the sliding-window attention
SPEED_IMPLS = STAGE2_IMPLS + (FLEX,)
FLEX_OPS = ("sa", "acmix")
FLEX_NOTE = ("flex = torch's FlexAttention, compiled, over the real tokens with a k_a x k_a neighbourhood block "
             "mask: equal to the reference inside, but a different function within (k_a - 1) / 2 pixels of the "
             "border (the suite's windows reflection-pad there); compile_s = its first call (torch.compile, block "
             "mask, one pass), kept out of the timings by the warm-up")
CSV_COLUMNS = ["op", "impl", "pass", "median_ms", "iqr_ms", "peak_mem_mb", "runs", "shift", "backend", "shape",
               "stride", "dtype", "device", "threads", "x_conv", "speedup_vs_ref", "mem_vs_ref", "ms_per_mpix",
               "x_stride1", "rounds", "torch", "compile_s", "note"]


@dataclass
class Case:
    """One thing to time: an operator variant, its Stage II implementation and a pass."""
    op: str
    impl: str  # "fast" | "reference" | "flex" | "nn.Conv2d"
    pass_: str
    shape: tuple  # (B, C, H, W)
    stride: int = 1
    shift: str = "multigroup"
    heads: int = 4
    kernel_att: int = 7
    kernel_conv: int = 3
    window: int = 7
    dtype: str = "float32"
    device: str = "cpu"
    seed: int = 0
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.op = OPERATOR_ALIASES.get(self.op, self.op)


def parse_shape(text: str) -> tuple:
    try:
        shape = tuple(int(t) for t in str(text).split(","))
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) <= 0:
        raise ValueError(f"--shape must be B,C,H,W with positive integers (e.g. 8,64,56,56), got {text!r}")
    return shape


def _build(case: Case):
    """(module, input) for a case, on its device and dtype, Stage II impl set."""
    from modules import ShiftAggregation, create_op, set_stage2_impl
    from modules.names import op_layout

    B, C, H, W = case.shape
    N, s = case.heads, case.stride
    torch.manual_seed(case.seed)
    layout = "map"
    if case.impl == CONV:
        mod = nn.Conv2d(C, C, 3, stride=s, padding=1)
    elif case.op == "shift":
        if C % N:
            raise ValueError(f"--op shift: C={C} must be divisible by --heads={N} (input is (B, C/N * k^2, H, W))")
        mod = ShiftAggregation(C // N, case.kernel_conv, copies=N, stride=s, shift=case.shift)
        C = mod.in_channels
    elif case.op in OPERATOR_KINDS:
        # conv keeps nn.Conv2d's default bias, as the layer it times
        mod = create_op(case.op, C, C, stride=s, heads=N, kernel_att=case.kernel_att, kernel_conv=case.kernel_conv,
                        shift=case.shift, window=case.window, bias=case.op == "conv")
        layout = op_layout(case.op)
    else:
        raise ValueError(f"unknown --op {case.op!r}; allowed: {', '.join(OPS)}")
    if case.impl in ("fast", "reference"):
        set_stage2_impl(mod, case.impl)
    dtype, device = DTYPES[case.dtype], torch.device(case.device)
    if case.impl == FLEX:
        from modules.flex_attention import check_flex, use_flex

        if case.op not in FLEX_OPS:
            raise ValueError(f"--impl flex: FlexAttention replaces the sliding-window attention of --op "
                             f"{' and '.join(FLEX_OPS)}; got --op {case.op}")
        check_flex(dtype, device)
        use_flex(mod)
    mod = mod.to(device=device, dtype=dtype)
    x = torch.randn(B, C, H, W, device=device, dtype=dtype)
    if layout == "tokens":
        x = x.permute(0, 2, 3, 1).contiguous()
    return mod, x


def make_case(case: Case):
    """A zero-argument callable running one pass of the case, plus the module (kept alive)."""
    mod, x = _build(case)
    if case.pass_ == "fwd":
        mod.eval()

        def run():
            with torch.no_grad():
                return mod(x)
        return run, mod
    mod.train()
    x.requires_grad_(True)
    params = [p for p in mod.parameters() if p.requires_grad]
    with torch.no_grad():
        grad = torch.randn_like(mod(x))

    def run():
        for p in params:
            p.grad = None
        x.grad = None
        mod(x).backward(grad)
    return run, mod


def _measure(fn, threads: int, min_run_time: float, repeats: int):
    """One torch.utils.benchmark Measurement of fn(): blocked_autorange, topped up to `repeats` runs."""
    import torch.utils.benchmark as tb

    timer = tb.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)
    m = timer.blocked_autorange(min_run_time=min_run_time)
    while len(m.times) < repeats:
        m = tb.Measurement.merge([m, timer.timeit(1)])[0]
    return m


def _summary(ms: list) -> dict:
    import torch.utils.benchmark as tb

    m = tb.Measurement.merge(ms)[0] if len(ms) > 1 else ms[0]
    return {"median_ms": m.median * 1e3, "iqr_ms": m.iqr * 1e3, "runs": len(m.times)}


def time_fn(fn, threads: int, min_run_time: float = 1.0, repeats: int = 5, device: str = "cpu") -> dict:
    """Median and IQR (ms) of fn() with torch.utils.benchmark, at least `repeats` measurements."""
    fn()  # warm-up: first-call allocations, extension load, autotuning
    return _summary([_measure(fn, threads, min_run_time, repeats)])


def time_interleaved(fns: list, threads: int, min_run_time: float = 1.0, repeats: int = 5,
                     rounds: int = 3) -> list[dict]:
    """Time several callables in `rounds` alternating rounds (A B C, A B C, ...), each round
    min_run_time / rounds per callable, and pool each one's runs: a slow spell of a shared machine
    then lands on every case instead of on whichever ran during it. Median and IQR (ms) per callable."""
    rounds = max(1, int(rounds))
    for fn in fns:
        fn()  # warm-up
    per_round = [[] for _ in fns]
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            per_round[i].append(_measure(fn, threads, min_run_time / rounds, -(-repeats // rounds)))
    return [_summary(ms) for ms in per_round]


def _proc_status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {key}: peak memory on CPU needs Linux")


def _reset_peak_rss() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0); harmless where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_memory_here(case: Case) -> float:
    """Peak MB of one pass above the memory held before it, measured in this process.

    CPU: only sound in a fresh process (ru_maxrss is a high-water mark for the whole
    process), hence `peak_memory` runs this in a subprocess. CUDA: allocator statistics."""
    if not case.device.startswith("cuda") and case.impl != FLEX:
        # lazy one-time costs (thread pools, oneDNN kernels, extension load) happen in a batch-1
        # warm-up whose high-water mark stays below the measured pass
        warm, _m = make_case(Case(**{**asdict(case), "shape": (1,) + tuple(case.shape[1:])}))
        warm()
        del warm, _m
    fn, _mod = make_case(case)
    if case.impl == FLEX and not case.device.startswith("cuda"):
        fn()  # compiled for this very shape: torch.compile's memory is not the pass's
    if case.device.startswith("cuda"):
        fn()  # first call: workspaces and autotuning do not count as the operator's memory
        torch.cuda.synchronize()
        gc.collect()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    # VmHWM (peak RSS of this process's own address space, reset just before the pass), not
    # ru_maxrss: Linux carries the parent's high-water mark into ru_maxrss across exec
    gc.collect()
    _reset_peak_rss()
    base = _proc_status_kb("VmRSS")
    fn()
    return max(_proc_status_kb("VmHWM") - base, 0) / 1024


def peak_memory(case: Case, threads: int) -> float | None:
    """CPU: one fresh subprocess per case (see peak_memory_here); CUDA: in process."""
    if case.device.startswith("cuda"):
        return peak_memory_here(case)
    # large blocks straight from mmap: freed memory leaves the resident set, so RSS tracks live memory
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MALLOC_MMAP_THRESHOLD_="65536")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-m", "bench.speed", "--child", json.dumps(asdict(case))],
                          capture_output=True, text=True, env=env, cwd=root)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"memory subprocess for {case.op}/{case.impl}/{case.pass_} failed: {tail}")
    return float(proc.stdout.strip().splitlines()[-1])


def environment(threads: int, device: str) -> dict:
    from modules import _fast

    env = {"torch": torch.__version__, "python": platform.python_version(), "threads": threads,
           "machine": platform.processor() or platform.machine(), "device": device}
    try:
        with open("/proc/cpuinfo") as f:
            env["cpu"] = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "")
        env["cpus"] = os.cpu_count()
    except OSError:
        pass
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    err = _fast.extension_error() if device == "cpu" else "CPU only"
    env["fast_backend"] = _fast.requested_backend() + (f" (C++ extension unavailable: {err})" if err else "")
    return env


def _backend(case: Case) -> str:
    if case.impl == FLEX:
        return "inductor"  # torch.compile's CPU/GPU code for flex_attention
    if case.impl != "fast" or case.op in ("conv", "shift", "dconv", "window-sa") or case.impl == CONV:
        return ""
    from modules import _fast
    probe = torch.empty(0, dtype=DTYPES[case.dtype], device=case.device)
    if probe.dtype not in (torch.float32, torch.float64) and probe.device.type == "cpu":
        probe = probe.float()
    return _fast.backend_for(probe)


def cases_for(op: str, shape, impls, passes, shifts, strides=None, **kw) -> list[Case]:
    """The cases of one run: for every stride and pass, the conv baseline, then op x shift x impl."""
    if strides is None:
        strides = [kw.pop("stride", 1)]
    kw.pop("stride", None)
    out = []
    for st in strides:
        for p in passes:
            out.append(Case("conv3x3", CONV, p, shape, stride=st, **kw))
            for sh in shifts:
                for impl in impls:
                    if op == "conv":
                        impl = "nn.Conv2d(k)"
                    out.append(Case(op, impl, p, shape, shift=sh, stride=st, **kw))
                    if op == "conv":
                        break
                if op in ("conv", "sa", "window-sa"):
                    break
    return out


def _one_line(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return f"{type(err).__name__}: {lines[0] if lines else ''}"


def _first_calls(cases: list[Case], log) -> dict:
    """{case index: {"compile_s": seconds} or {"note": why not}} for the flex cases: each one's first call
    (module, torch.compile at this shape, block mask, one pass), which the timings' warm-up then skips;
    a case torch cannot run (no CPU backward) gets a one-line note and is not timed."""
    out = {}
    for i, case in enumerate(cases):
        if case.impl != FLEX:
            continue
        if log:
            log(f"  {case.op} flex {case.pass_} s={case.stride}: first call (torch.compile) ...")
        t0 = time.perf_counter()
        try:
            fn, _mod = make_case(case)
            fn()
            out[i] = {"compile_s": time.perf_counter() - t0}
        except (RuntimeError, NotImplementedError) as err:  # torch._dynamo's errors are RuntimeErrors
            out[i] = {"note": f"not run: {_one_line(err)}"}
        fn = _mod = None
        gc.collect()
    return out


def _timings(cases: list[Case], threads: int, min_run_time: float, repeats: int, rounds: int, log) -> list[dict]:
    """Timings of every case. rounds > 1: the cases of one (stride, pass) group, which are compared
    with each other (conv baseline, fast, reference), are timed in alternating rounds. flex cases
    first get their first call (_first_calls): compile_s, or a note and no timings."""
    first = _first_calls(cases, log)
    skip = {i for i, f in first.items() if "note" in f}
    empty = {"median_ms": None, "iqr_ms": None, "runs": 0}
    if rounds <= 1:
        out = []
        for i, case in enumerate(cases):
            if i in skip:
                out.append({**empty, **first[i]})
                continue
            if log:
                log(f"  {case.op} {case.impl} {case.pass_} s={case.stride} shift={case.shift} ...")
            fn, _mod = make_case(case)
            out.append({**time_fn(fn, threads, min_run_time, repeats, case.device), **first.get(i, {})})
            del fn, _mod
            gc.collect()
        return out
    groups: dict = {}
    out = [None] * len(cases)
    for i, c in enumerate(cases):
        if i in skip:
            out[i] = {**empty, **first[i]}
        else:
            groups.setdefault((c.stride, c.pass_), []).append(i)
    for (st, p), idx in groups.items():
        if log:
            log(f"  stride {st} {p}: {len(idx)} cases, {rounds} interleaved rounds ...")
        built = [make_case(cases[i]) for i in idx]
        for i, t in zip(idx, time_interleaved([fn for fn, _ in built], threads, min_run_time, repeats, rounds)):
            out[i] = {**t, **first.get(i, {})}
        del built
        gc.collect()
    return out


def run_speed(cases: list[Case], threads: int = 2, min_run_time: float = 1.0, repeats: int = 5,
              memory: bool = True, log=None, rounds: int = 1) -> list[dict]:
    """Measure every case; rows with ratios against the conv and reference rows of the same
    stride/pass/shift, and per output pixel against the same case at stride 1 (x_stride1)."""
    torch.set_num_threads(threads)
    rows = []
    times = _timings(cases, threads, min_run_time, repeats, rounds, log)
    for case, t in zip(cases, times):
        ran = t["median_ms"] is not None
        mem = peak_memory(case, threads) if memory and ran else None
        B, C, H, W = case.shape
        Ho, Wo = (H - 1) // case.stride + 1, (W - 1) // case.stride + 1
        rows.append({"op": case.op, "impl": case.impl, "pass": case.pass_, **t, "peak_mem_mb": mem,
                     "shift": case.shift if case.op in ("acmix", "shift", "dconv", "window-acmix") else "",
                     "backend": _backend(case), "shape": "x".join(map(str, case.shape)), "stride": case.stride,
                     "dtype": case.dtype, "device": case.device, "threads": threads,
                     "ms_per_mpix": t["median_ms"] / (B * Ho * Wo / 1e6) if ran else None,
                     "rounds": max(1, int(rounds)), "torch": torch.__version__})
    ratio = lambda a, b: a / b if a is not None and b else None  # noqa: E731
    for r in rows:
        same = [c for c in rows if c["pass"] == r["pass"] and c["stride"] == r["stride"]]
        conv = next((c for c in same if c["impl"] == CONV), None)
        ref = next((c for c in same if c["impl"] == "reference" and c["op"] == r["op"] and c["shift"] == r["shift"]),
                   None)
        s1 = next((c for c in rows if c["stride"] == 1 and c["pass"] == r["pass"] and c["op"] == r["op"]
                   and c["impl"] == r["impl"] and c["shift"] == r["shift"]), None)
        r["x_stride1"] = ratio(r["ms_per_mpix"], s1["ms_per_mpix"]) if s1 and r["stride"] != 1 else None
        r["x_conv"] = ratio(r["median_ms"], conv["median_ms"]) if conv else None
        r["speedup_vs_ref"] = ratio(ref["median_ms"], r["median_ms"]) if ref else None
        r["mem_vs_ref"] = (r["peak_mem_mb"] / ref["peak_mem_mb"]
                           if ref and r["peak_mem_mb"] is not None and ref["peak_mem_mb"] else None)
    return rows


def _fmt(v, nd=1):
    if v is None or v == "":
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}" if abs(v) < 1e6 else f"{v:.3g}"
    return str(v)


def format_table(rows: list[dict], env: dict) -> str:
    lines = [f"acmix-bench speed: torch {env['torch']}, python {env['python']}, {env['threads']} threads, "
             f"device {env.get('gpu', env['device'])}, cpu {env.get('cpu', env['machine'])} ({env.get('cpus')} cores), "
             f"fast backend {env['fast_backend']}",
             "times: torch.utils.benchmark median and IQR (ms); peak memory: "
             + ("CUDA allocator peak above the pre-pass allocation" if env["device"].startswith("cuda")
                else "peak RSS (VmHWM) of a fresh subprocess per case minus its RSS before the pass") + " (MB)",
             "baselines: nn.Conv2d 3x3 of the same width (x_conv = time / its time); reference = the formulas as "
             "written (sliding window: the release's unfold algorithm); speedup_vs_ref = reference time / time; "
             "x_stride1 = ms per output pixel / the same case's at stride 1",
             f"timing: cases compared with each other timed in {rows[0]['rounds'] if rows else 1} alternating "
             "round(s), runs pooled"]
    head = ["op", "impl", "backend", "shift", "pass", "shape", "s", "median_ms", "iqr_ms", "peak_mem_mb", "x_conv",
            "speedup_vs_ref", "mem_vs_ref", "ms/Mpix", "x_stride1"]
    body = [[r["op"], r["impl"], r["backend"] or "-", r["shift"] or "-", r["pass"], r["shape"], str(r["stride"]),
             _fmt(r["median_ms"]), _fmt(r["iqr_ms"]), _fmt(r["peak_mem_mb"]), _fmt(r["x_conv"], 2),
             _fmt(r["speedup_vs_ref"], 1), _fmt(r["mem_vs_ref"], 3), _fmt(r["ms_per_mpix"], 1),
             _fmt(r.get("x_stride1"), 2)] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i < 7 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    flex = [r for r in rows if r["impl"] == FLEX]
    if flex:
        lines.append(FLEX_NOTE)
    foot = [f"{r['op']} {r['impl']} {r['pass']} {r['shape']} s={r['stride']}: "
            + (f"compile_s {r['compile_s']:.1f}" if r.get("compile_s") is not None else r.get("note") or "")
            for r in flex]
    return "\n".join(lines + ["", fmt(head), fmt(["-" * w for w in widths])] + [fmt(b) for b in body]
                     + ([""] + foot if foot else []))


def format_csv(rows: list[dict]) -> str:
    import csv
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else (round(r[k], 4) if isinstance(r[k], float) else r[k]))
                    for k in CSV_COLUMNS})
    return buf.getvalue()


# ---------------------------------------------------------------- preset: the default cells' blocks

PRESETS = ("default-cells",)
PRESET_OPS = ("conv", "sa", "acmix")
PRESET_COLUMNS = ["preset", "part", "batch", "pass", "conv_shape", "sa_shape", "acmix_shape", "conv_ms", "sa_ms",
                  "acmix_ms", "conv_iqr_ms", "sa_iqr_ms", "acmix_iqr_ms", "sa_vs_conv", "acmix_vs_conv", "threads",
                  "rounds", "torch"]


def preset_models(config: str = "configs/default.yaml") -> tuple[dict, dict]:
    """(validated config, {op: (model, cell)}) for conv, sa and acmix (the config's first shift and mixing) as the runner builds
    them: the config's model settings and widths matched to the group reference (bench.runner)."""
    from bench.runner.cells import expand
    from bench.runner.config import load_config
    from bench.runner.execute import build_model, resolve_widths

    cfg = load_config(config)
    out = {}
    for cell in expand(cfg):
        op = cell["op"]
        if op in PRESET_OPS and op not in out and (op != "acmix" or (
                cell["shift"] == cfg["matrix"]["shifts"][0] and cell["mixing"] == cfg["matrix"]["mixings"][0])):
            widths, _ = resolve_widths(cell, cfg)
            torch.manual_seed(0)
            out[op] = (build_model(cell, widths), cell)
    missing = [op for op in PRESET_OPS if op not in out]
    if missing:
        raise ValueError(f"--preset default-cells: {config} has no {', '.join(missing)} cells; it compares "
                         f"{', '.join(PRESET_OPS)} (matrix.operators)")
    return cfg, out


def _block_inputs(model, x) -> dict:
    """{block path: its input} of a ResNet for input x (one forward, hooks on every Bottleneck)."""
    from modules.backbones.resnet import Bottleneck

    seen, hooks = {}, []
    for name, m in model.named_modules():
        if isinstance(m, Bottleneck):
            hooks.append(m.register_forward_pre_hook(lambda mod, inp, name=name: seen.__setitem__(name, inp[0].detach())))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _train_step(model, x, y):
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True, weight_decay=5e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return step


def _fwd_bwd(mod, x):
    x = x.clone().requires_grad_(True)
    with torch.no_grad():
        g = torch.randn_like(mod(x))

    def run():
        for p in mod.parameters():
            p.grad = None
        x.grad = None
        mod(x).backward(g)
    return run


def run_preset(name: str, batches, threads: int = 2, min_run_time: float = 1.0, repeats: int = 5, rounds: int = 3,
               config: str = "configs/default.yaml", log=None) -> list[dict]:
    """The default cells' training step and every bottleneck block (and its spatial operator alone), conv, sa
    and acmix at their matched widths side by side, fwd+bwd, timed in alternating rounds. *_vs_conv = conv
    time / op time: the op's throughput as a fraction of conv's (the issue's >= 0.75 target is on the step)."""
    if name not in PRESETS:
        raise ValueError(f"unknown --preset {name!r}; allowed: {', '.join(PRESETS)}")
    torch.set_num_threads(threads)
    from bench.runner.cells import input_size

    cfg, models = preset_models(config)
    size = input_size(cfg, models["conv"][1]["dataset"])
    rows = []
    for B in batches:
        torch.manual_seed(0)
        x = torch.randn(B, *size)
        y = torch.randint(0, 10, (B,))
        parts = [("train step", {op: _train_step(m, x, y) for op, (m, _) in models.items()},
                 {op: "x".join(map(str, x.shape)) for op in PRESET_OPS})]
        inputs = {op: _block_inputs(m, x) for op, (m, _) in models.items()}
        for path in inputs["conv"]:
            mods = {op: dict(models[op][0].named_modules())[path] for op in PRESET_OPS}
            shapes = {op: "x".join(map(str, inputs[op][path].shape[1:])) + f" s{mods[op].conv2.stride}"
                      for op in PRESET_OPS}
            parts.append((path, {op: _fwd_bwd(mods[op], inputs[op][path]) for op in PRESET_OPS}, shapes))
            # the spatial operator alone, fed what its block feeds it
            mid = {}
            for op in PRESET_OPS:
                blk = mods[op]
                with torch.no_grad():
                    mid[op] = blk.relu(blk.bn1(blk.conv1(inputs[op][path])))
            parts.append((path + ".conv2", {op: _fwd_bwd(mods[op].conv2, mid[op]) for op in PRESET_OPS},
                          {op: "x".join(map(str, mid[op].shape[1:])) for op in PRESET_OPS}))
        for part, fns, shapes in parts:
            if log:
                log(f"  batch {B} {part} ...")
            for m, _ in models.values():
                m.train()
            ts = dict(zip(PRESET_OPS, time_interleaved([fns[op] for op in PRESET_OPS], threads, min_run_time,
                                                       repeats, rounds)))
            row = {"preset": name, "part": part, "batch": B, "pass": "train step" if part == "train step" else "fwd+bwd",
                   "threads": threads, "rounds": rounds, "torch": torch.__version__}
            for op in PRESET_OPS:
                row[f"{op}_shape"] = shapes[op]
                row[f"{op}_ms"] = ts[op]["median_ms"]
                row[f"{op}_iqr_ms"] = ts[op]["iqr_ms"]
            for op in ("sa", "acmix"):
                row[f"{op}_vs_conv"] = ts["conv"]["median_ms"] / ts[op]["median_ms"]
            rows.append(row)
    return rows


def format_preset_table(rows: list[dict], env: dict, config: str) -> str:
    lines = [f"acmix-bench speed --preset {rows[0]['preset'] if rows else '?'} ({config}): torch {env['torch']}, "
             f"python {env['python']}, {env['threads']} threads, cpu {env.get('cpu', env['machine'])} "
             f"({env.get('cpus')} cores), fast backend {env['fast_backend']}",
             "conv, sa and acmix at the config's matched widths (same MACs per image); each part fwd+bwd (the train "
             "step: forward, backward and an SGD step), torch.utils.benchmark medians (ms) pooled over "
             f"{rows[0]['rounds'] if rows else 1} alternating rounds; *_vs_conv = conv time / op time (throughput as a "
             "fraction of conv's); shapes are the input (C x H x W, s = the block's stride)"]
    head = ["batch", "part", "conv", "sa", "acmix", "conv_ms", "sa_ms", "acmix_ms", "sa_vs_conv", "acmix_vs_conv"]
    body = [[str(r["batch"]), r["part"], r["conv_shape"], r["sa_shape"], r["acmix_shape"], _fmt(r["conv_ms"], 2),
             _fmt(r["sa_ms"], 2), _fmt(r["acmix_ms"], 2), _fmt(r["sa_vs_conv"], 2), _fmt(r["acmix_vs_conv"], 2)]
            for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i < 5 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join(lines + ["", fmt(head), fmt(["-" * w for w in widths])] + [fmt(b) for b in body])


def run_preset_cli(args) -> int:
    try:
        batches = [int(t) for t in str(args.batch).split(",") if t.strip()]
    except ValueError:
        batches = []
    if not batches or min(batches) <= 0:
        raise ValueError(f"--batch must be positive integers, comma separated (e.g. 32,128), got {args.batch!r}")
    if args.threads <= 0:
        raise ValueError(f"--threads must be positive, got {args.threads}")
    if args.rounds <= 0:
        raise ValueError(f"--rounds must be positive, got {args.rounds}")
    log = (lambda m: print(m, file=sys.stderr, flush=True)) if args.verbose else None
    env = environment(args.threads, "cpu")
    rows = run_preset(args.preset, batches, args.threads, args.min_run_time, args.repeats, args.rounds,
                      args.config, log)
    if args.format == "csv":
        import csv
        import io

        buf = io.StringIO()
        w = csv.DictWriter(buf, PRESET_COLUMNS, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: (round(r[k], 4) if isinstance(r.get(k), float) else r.get(k, "")) for k in PRESET_COLUMNS})
        text = buf.getvalue()
    elif args.format == "json":
        text = json.dumps({"env": env, "rows": rows}, indent=1)
    else:
        text = format_preset_table(rows, env, args.config)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text if text.endswith("\n") else text + "\n")
    print(text.rstrip("\n"))
    return 0


def _list(text: str, allowed, name: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if items == ["all"]:
        return list(allowed)
    bad = [t for t in items if t not in allowed]
    if bad or not items:
        raise ValueError(f"{name}: unknown {', '.join(bad) or 'empty value'}; allowed: {', '.join(allowed)} (or all)")
    return items


def _strides(text) -> list[int]:
    try:
        out = [int(t) for t in str(text).split(",") if t.strip()]
    except ValueError:
        out = []
    if not out or min(out) <= 0:
        raise ValueError(f"--stride must be positive integers, comma separated (e.g. 1 or 1,2), got {text!r}")
    return sorted(set(out))


def run(args) -> int:
    if getattr(args, "preset", None):
        return run_preset_cli(args)
    shape = parse_shape(args.shape)
    op = OPERATOR_ALIASES.get(args.op, args.op)
    if op not in OPS:
        raise ValueError(f"unknown --op {args.op!r}; allowed: {', '.join(OPS)}")
    if args.dtype not in DTYPES:
        raise ValueError(f"unknown --dtype {args.dtype!r}; allowed: {', '.join(DTYPES)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is visible to torch; use --device cpu")
    if args.threads <= 0:
        raise ValueError(f"--threads must be positive, got {args.threads}")
    # "all" stays the operators' implementations; flex (torch.compile) is asked for by name
    impls = list(STAGE2_IMPLS) if args.impl.strip() == "all" else _list(args.impl, SPEED_IMPLS, "--impl")
    if FLEX in impls and op not in FLEX_OPS:
        raise ValueError(f"--impl flex: FlexAttention replaces the sliding-window attention of --op "
                         f"{' and '.join(FLEX_OPS)}; got --op {op}")
    if "reference" not in impls:
        impls.append("reference")  # the reference is a baseline of every run
    passes = _list(args.passes, PASSES, "--pass")
    shifts = _list(args.shift, SHIFTS, "--shift")
    strides = _strides(args.stride)
    if args.rounds <= 0:
        raise ValueError(f"--rounds must be positive, got {args.rounds}")
    kw = dict(strides=strides, heads=args.heads, kernel_att=args.kernel_att, kernel_conv=args.kernel_conv,
              window=args.window, dtype=args.dtype, device=args.device)
    cases = cases_for(op, shape, impls, passes, shifts, **kw)
    for c in cases:  # fail fast on bad shapes/arguments, before any timing
        _build(Case(**{**asdict(c), "shape": (1,) + tuple(c.shape[1:])}))
    log = (lambda m: print(m, file=sys.stderr, flush=True)) if args.verbose else None
    env = environment(args.threads, args.device)
    rows = run_speed(cases, args.threads, args.min_run_time, args.repeats, memory=not args.no_memory, log=log,
                     rounds=args.rounds)
    text = format_csv(rows) if args.format == "csv" else (json.dumps({"env": env, "rows": rows}, indent=1)
                                                           if args.format == "json" else format_table(rows, env))
    if args.output:
        with open(args.output, "w") as f:
            f.write(text if text.endswith("\n") else text + "\n")
    print(text.rstrip("\n"))
    return 0


def register(sub) -> None:
    p = sub.add_parser("speed", help="time and peak memory of an operator vs nn.Conv2d 3x3 and its reference",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=PRESETS,
                   help="default-cells: the training step and every bottleneck block of configs/default.yaml's conv, "
                        "sa and acmix cells at their matched widths, side by side (ignores --op/--shape/--stride)")
    p.add_argument("--config", default="configs/default.yaml", help="matrix config of --preset (default %(default)s)")
    p.add_argument("--batch", default="32,128", help="batch size(s) of --preset, e.g. 32,128 (default %(default)s)")
    p.add_argument("--op", default="acmix", help=f"operator: {', '.join(OPS)} (default acmix; swin-sa and "
                                                 "swin-acmix name the window kinds)")
    p.add_argument("--shape", default="8,64,56,56", help="B,C,H,W (default 8,64,56,56)")
    p.add_argument("--impl", default="fast,reference",
                   help="Stage II implementations: fast, reference (always included), flex (--op sa and acmix: torch's "
                        "compiled FlexAttention with a neighbourhood block mask; masks the real tokens where the suite "
                        "reflection-pads, so it differs within (k_a - 1) / 2 pixels of the border; no CPU backward in "
                        "torch 2.14)")
    p.add_argument("--pass", dest="passes", default="fwd,fwd+bwd", help="fwd, fwd+bwd or both (default both)")
    p.add_argument("--shift", default="multigroup", help=f"shift implementation(s): {', '.join(SHIFTS)} or all")
    p.add_argument("--stride", default="1", help="stride(s), e.g. 1 or 1,2 (x_stride1 compares per output pixel)")
    p.add_argument("--rounds", type=int, default=3,
                   help="alternating timing rounds over the cases compared with each other (default 3; 1 = one "
                        "case after the other)")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kernel-att", type=int, default=7)
    p.add_argument("--kernel-conv", type=int, default=3)
    p.add_argument("--window", type=int, default=7, help="Swin window size (window-* ops)")
    p.add_argument("--dtype", default="float32", help=f"{', '.join(DTYPES)}")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (recorded)")
    p.add_argument("--min-run-time", type=float, default=1.0, help="seconds of timing per case (blocked_autorange)")
    p.add_argument("--repeats", type=int, default=5, help="minimum timed runs per case")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.add_argument("--output", help="also write the output to this file")
    p.add_argument("-v", "--verbose", action="store_true", help="log each case to stderr")
    p.set_defaults(func=run)


def _child(spec: str) -> None:
    d = json.loads(spec)
    d["shape"] = tuple(d["shape"])
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    print(f"{peak_memory_here(Case(**d)):.3f}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        _child(sys.argv[2])
    else:
        from bench.cli import main
        sys.exit(main(["speed"] + sys.argv[1:]))
