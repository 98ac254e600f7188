"""Matrix config: YAML in, a validated plain-dict config out.

A matrix config names the axes (backbones x operators x shift implementations x
mixing modes x datasets x seeds), the model overrides every cell shares, the
trainer / data / optimiser / measurement settings, and the matched-FLOPs
groups. Validation is strict: an unknown key or a bad value raises a
ValueError whose one-line message names the key path, the value received and
what is allowed, so a user fixes the YAML without reading code.
"""
from __future__ import annotations

import copy
import os
from typing import Any

import yaml

OPERATORS = ("conv", "dconv", "sa", "acmix")
SHIFTS = ("tensor", "fixed", "learnable", "multigroup")
MIXINGS = ("learnable", "half", "att", "conv")
# dataset name -> (in_chans, image size, num_classes); the datamodules own the data itself
DATASETS = {
    "fashion_mnist": (1, 28, 10),
    "cifar10": (3, 32, 10),
    "cifar100": (3, 32, 100),
    "imagenet": (3, 224, 1000),
    "synthetic": (3, 32, 10),
}
STRATEGIES = ("auto", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true", "fsdp", "deepspeed")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
PRECISIONS = ("32-true", "32", "16-mixed", "bf16-mixed", "bf16-true", "16-true", "64-true", "64")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "none")
CELL_KEYS = ("backbone", "op", "model", "shift", "mixing", "dataset", "seed")


class _Spec:
    """One scalar setting: type check, range check, default."""

    def __init__(self, kind, default=None, *, choices=None, lo=None, hi=None, nullable=False, doc=""):
        self.kind, self.default, self.choices = kind, default, choices
        self.lo, self.hi, self.nullable, self.doc = lo, hi, nullable, doc

    def allowed(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(map(repr, self.choices)) + (" or null" if self.nullable else "")
        words = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
                 list: "a list", dict: "a mapping", "ratio": "an integer count or a fraction in (0, 1]",
                 "threads": "an integer >= 1 or 'auto' (physical cores)"}
        s = words.get(self.kind, str(self.kind))
        if self.lo is not None and self.hi is not None:
            s += f" in [{self.lo}, {self.hi}]"
        elif self.lo is not None:
            s += f" >= {self.lo}"
        return s + (" or null" if self.nullable else "")

    def check(self, path: str, value):
        if value is None:
            if self.nullable:
                return None
            _fail(path, value, self.allowed())
        if self.choices is not None:
            if value not in self.choices:
                _fail(path, value, self.allowed())
            return value
        kind = self.kind
        if kind == "threads":  # a positive count or "auto" (the machine's physical cores)
            if value == "auto":
                return value
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                _fail(path, value, self.allowed())
            return value
        if kind == "ratio":  # Lightning's limit_*_batches: int count or float fraction
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                _fail(path, value, self.allowed())
            if isinstance(value, float) and not (0.0 < value <= 1.0):
                _fail(path, value, self.allowed())
            if isinstance(value, int) and value < 0:
                _fail(path, value, self.allowed())
            return value
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if kind in (int, float) and isinstance(value, bool):
            _fail(path, value, self.allowed())
        if not isinstance(value, kind):
            _fail(path, value, self.allowed())
        if self.lo is not None and value < self.lo:
            _fail(path, value, self.allowed())
        if self.hi is not None and value > self.hi:
            _fail(path, value, self.allowed())
        return value


def _fail(path: str, value, allowed: str):
    raise ValueError(f"config key {path!r}: got {value!r}; allowed: {allowed}")


SECTIONS: dict[str, dict[str, _Spec]] = {
    "trainer": {
        "accelerator": _Spec(str, "auto", choices=ACCELERATORS),
        "devices": _Spec(int, 1, lo=1),
        "strategy": _Spec(str, "auto", choices=STRATEGIES),
        "num_nodes": _Spec(int, 1, lo=1),
        "precision": _Spec(str, "32-true", choices=PRECISIONS),
        "max_epochs": _Spec(int, 1, lo=1, nullable=True),
        "max_steps": _Spec(int, -1, lo=-1),
        "limit_train_batches": _Spec("ratio", None, nullable=True),
        "limit_val_batches": _Spec("ratio", None, nullable=True),
        "limit_test_batches": _Spec("ratio", None, nullable=True),
        "accumulate_grad_batches": _Spec(int, 1, lo=1),
        "gradient_clip_val": _Spec(float, None, lo=0.0, nullable=True),
        "log_every_n_steps": _Spec(int, 10, lo=1),
        "deterministic": _Spec(bool, False),
        "checkpoint_every_n_steps": _Spec(int, 50, lo=1),   # resume granularity inside an epoch
        "keep_checkpoints": _Spec(bool, False),             # keep last.ckpt after a cell finishes
    },
    "data": {
        "root": _Spec(str, None, nullable=True),
        "batch_size": _Spec(int, 64, lo=1),
        "num_workers": _Spec(int, 0, lo=0),
        "val_fraction": _Spec(float, 0.1, lo=0.0, hi=0.9),
        "image_size": _Spec(int, None, lo=8, nullable=True),
        "train_subset": _Spec(int, None, lo=1, nullable=True),
        "val_subset": _Spec(int, None, lo=1, nullable=True),
        "test_subset": _Spec(int, None, lo=1, nullable=True),
        "augment": _Spec(bool, True),
        "eval_batch_size": _Spec(int, None, lo=1, nullable=True),
    },
    "optim": {  # ImageClassifier's optimisation arguments (modules/lightning.py)
        "optimizer": _Spec(str, "sgd", choices=OPTIMIZERS),
        "lr": _Spec(float, 0.1, lo=1e-12),
        "weight_decay": _Spec(float, 5e-4, lo=0.0),
        "momentum": _Spec(float, 0.9, lo=0.0, hi=1.0),
        "nesterov": _Spec(bool, True),
        "schedule": _Spec(str, "cosine", choices=SCHEDULES),
        "warmup_epochs": _Spec(float, 0.0, lo=0.0),
        "min_lr": _Spec(float, 0.0, lo=0.0),
        "label_smoothing": _Spec(float, 0.0, lo=0.0, hi=0.99),
    },
    "measure": {
        "counts": _Spec(bool, True),
        "voices": _Spec(list, ["formula", "fvcore"]),
        "speed": _Spec(bool, True),
        # torch intra-op threads: "auto" = the physical cores this process may use (shared by the DDP
        # processes of one machine), an integer, or null (leave torch's setting alone)
        "threads": _Spec("threads", "auto", nullable=True),
        "batch_size": _Spec(int, 32, lo=1),
        "latency": _Spec(bool, True),
        "min_run_time": _Spec(float, 0.5, lo=0.0),
        "repeats": _Spec(int, 5, lo=1),
    },
    "model": {
        "stem": _Spec(str, None, choices=("imagenet", "small"), nullable=True),
        "widths": _Spec(list, None, nullable=True),
        "width_mult": _Spec(float, None, lo=0.0, nullable=True),
        "kernel_att": _Spec(int, None, lo=1, nullable=True),
        "heads": _Spec(int, None, lo=1, nullable=True),
        "img_size": _Spec(int, None, lo=8, nullable=True),
        "num_classes": _Spec(int, None, lo=1, nullable=True),
        "in_chans": _Spec(int, None, lo=1, nullable=True),
        "kernel_size": _Spec(int, None, lo=1, nullable=True),
        "window_size": _Spec(int, None, lo=1, nullable=True),
        "patch_size": _Spec(int, None, lo=1, nullable=True),
        "depths": _Spec(list, None, nullable=True),
        "mlp_ratio": _Spec(float, None, lo=0.0, nullable=True),
        "drop_path_rate": _Spec(float, None, lo=0.0, hi=1.0, nullable=True),
    },
}

MATRIX_KEYS = {
    "backbones": "a non-empty list of backbone names, e.g. [resnet26]",
    "operators": f"a non-empty list drawn from {list(OPERATORS)}",
    "shifts": f"a non-empty list drawn from {list(SHIFTS)} (ACmix cells only)",
    "mixings": f"a non-empty list drawn from {list(MIXINGS)} (ACmix cells only)",
    "datasets": f"a non-empty list drawn from {list(DATASETS)}",
    "seeds": "a non-empty list of integers >= 0",
    "exclude": "a list of selectors, e.g. [{op: sa, seed: 2}]",
}
TOP_KEYS = ("name", "description", "matrix", "groups", "report") + tuple(SECTIONS)
GROUP_KEYS = ("name", "reference", "members", "tolerance")


def _check_selector(path: str, sel) -> dict:
    if not isinstance(sel, dict) or not sel:
        _fail(path, sel, f"a non-empty mapping over {list(CELL_KEYS)}")
    for k, v in sel.items():
        if k not in CELL_KEYS:
            _fail(f"{path}.{k}", v, f"keys {list(CELL_KEYS)}")
    return dict(sel)


def _check_list(path: str, value, allowed=None, kind=str) -> list:
    if not isinstance(value, list) or not value:
        _fail(path, value, MATRIX_KEYS.get(path.split(".")[-1], "a non-empty list"))
    seen = set()
    for i, v in enumerate(value):
        if kind is int and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            _fail(f"{path}[{i}]", v, "an integer >= 0")
        if kind is str and not isinstance(v, str):
            _fail(f"{path}[{i}]", v, "a string")
        if allowed is not None and v not in allowed:
            _fail(f"{path}[{i}]", v, "one of " + ", ".join(map(repr, allowed)))
        if v in seen:
            _fail(f"{path}[{i}]", v, "each value once (duplicate)")
        seen.add(v)
    return list(value)


def validate_config(raw: Any, *, known_models=None) -> dict:
    """Check a raw config mapping and return it with every default filled in.

    known_models: names the registry offers (when available); each
    backbone-operator model name is then checked against it.
    """
    if not isinstance(raw, dict):
        raise ValueError(f"config must be a YAML mapping with keys {list(TOP_KEYS)}, got {type(raw).__name__}")
    for k in raw:
        if k not in TOP_KEYS:
            _fail(k, raw[k], f"top-level keys {list(TOP_KEYS)}")
    cfg: dict = {"name": raw.get("name", "matrix"), "description": raw.get("description", "")}
    if not isinstance(cfg["name"], str) or not cfg["name"]:
        _fail("name", cfg["name"], "a non-empty string")

    m = raw.get("matrix")
    if not isinstance(m, dict):
        _fail("matrix", m, "a mapping with keys " + ", ".join(MATRIX_KEYS))
    for k in m:
        if k not in MATRIX_KEYS:
            _fail(f"matrix.{k}", m[k], "keys " + ", ".join(MATRIX_KEYS))
    for req in ("backbones", "operators", "datasets"):
        if req not in m:
            _fail(f"matrix.{req}", None, MATRIX_KEYS[req])
    matrix = {
        "backbones": _check_list("matrix.backbones", m["backbones"]),
        "operators": _check_list("matrix.operators", m["operators"], OPERATORS),
        "shifts": _check_list("matrix.shifts", m.get("shifts", ["multigroup"]), SHIFTS),
        "mixings": _check_list("matrix.mixings", m.get("mixings", ["learnable"]), MIXINGS),
        "datasets": _check_list("matrix.datasets", m["datasets"], tuple(DATASETS)),
        "seeds": _check_list("matrix.seeds", m.get("seeds", [0]), kind=int),
        "exclude": [],
    }
    excl = m.get("exclude", []) or []
    if not isinstance(excl, list):
        _fail("matrix.exclude", excl, MATRIX_KEYS["exclude"])
    matrix["exclude"] = [_check_selector(f"matrix.exclude[{i}]", s) for i, s in enumerate(excl)]
    cfg["matrix"] = matrix
    if known_models is not None:
        known = set(known_models)
        for b in matrix["backbones"]:
            for op in matrix["operators"]:
                if f"{b}-{op}" not in known:
                    # Swin has no plain-conv form: list what the registry does have for this backbone
                    have = sorted(n for n in known if n.startswith(b + "-"))
                    raise ValueError(
                        f"config key 'matrix': model {b}-{op!s} (backbone {b!r} x operator {op!r}) is not in the "
                        f"registry; allowed for {b!r}: {', '.join(have) or 'none (unknown backbone)'}; "
                        f"use matrix.exclude or drop the operator")

    for sec, specs in SECTIONS.items():
        given = raw.get(sec) or {}
        if not isinstance(given, dict):
            _fail(sec, given, "a mapping with keys " + ", ".join(specs))
        out = {}
        for k, v in given.items():
            if k not in specs:
                _fail(f"{sec}.{k}", v, "keys " + ", ".join(specs))
        for k, spec in specs.items():
            out[k] = spec.check(f"{sec}.{k}", copy.deepcopy(given[k]) if k in given else copy.deepcopy(spec.default))
        cfg[sec] = out
    t = cfg["trainer"]
    if t["max_epochs"] is None and t["max_steps"] == -1:
        _fail("trainer.max_epochs", None, "an integer >= 1 (or set trainer.max_steps)")
    w = cfg["model"]["widths"]
    if w is not None and (not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in w)):
        _fail("model.widths", w, "a list of positive integers (4 per-stage widths for ResNet, [embed_dim] for Swin)")
    voices = cfg["measure"]["voices"]
    if not voices or not all(isinstance(v, str) for v in voices):
        _fail("measure.voices", voices, "a non-empty list of counter names, e.g. [formula, fvcore]")

    groups = raw.get("groups") or []
    if not isinstance(groups, list):
        _fail("groups", groups, "a list of {name, reference, members, tolerance}")
    cfg["groups"] = []
    names = set()
    for i, g in enumerate(groups):
        p = f"groups[{i}]"
        if not isinstance(g, dict):
            _fail(p, g, "a mapping with keys " + ", ".join(GROUP_KEYS))
        for k in g:
            if k not in GROUP_KEYS:
                _fail(f"{p}.{k}", g[k], "keys " + ", ".join(GROUP_KEYS))
        name = g.get("name")
        if not isinstance(name, str) or not name or name in names:
            _fail(f"{p}.name", name, "a unique non-empty string")
        names.add(name)
        tol = _Spec(float, 0.01, lo=0.0, hi=1.0).check(f"{p}.tolerance", g.get("tolerance", 0.01))
        ref = _check_selector(f"{p}.reference", g.get("reference"))
        mem = _check_selector(f"{p}.members", g.get("members")) if g.get("members") is not None else {}
        cfg["groups"].append({"name": name, "reference": ref, "members": mem, "tolerance": tol})

    report = raw.get("report", True)
    if not isinstance(report, bool):
        _fail("report", report, "true or false (run the report command after the matrix)")
    cfg["report"] = report
    return cfg


def _registry_names():
    try:
        from modules import list_models
    except ImportError:
        return None
    return list_models()


def load_config(path: str | os.PathLike, overrides: dict | None = None, *, check_registry: bool = True) -> dict:
    """Read and validate a matrix YAML. overrides: {"trainer.max_epochs": 1, ...} applied before validation."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path!r} not found; pass a YAML file such as configs/default.yaml")
    with open(path) as f:
        try:
            raw = yaml.safe_load(f)
        except yaml.YAMLError as e:
            msg = " ".join(str(e).split())
            raise ValueError(f"config file {path!r} is not valid YAML: {msg}") from None
    raw = apply_overrides(raw, overrides or {})
    return validate_config(raw, known_models=_registry_names() if check_registry else None)


def apply_overrides(raw, overrides: dict):
    """Set dotted keys ("trainer.max_epochs") in a raw config; the result is validated like the file."""
    if not overrides:
        return raw
    raw = copy.deepcopy(raw) if isinstance(raw, dict) else raw
    if not isinstance(raw, dict):
        return raw
    for dotted, value in overrides.items():
        sec, _, key = dotted.partition(".")
        node = raw.setdefault(sec, {})
        if node is None:
            node = raw[sec] = {}
        node[key] = value
    return raw
